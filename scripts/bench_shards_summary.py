"""Turns the JSON files of one scripts/bench-shards.sh run into the Markdown table of
docs/benchmarks.md ("Sharding"), with ratios to one shard and to FAISS in-process."""

import glob
import json
import os
import re
import sys

out = sys.argv[1]


def load(path):
    return json.load(open(path)) if os.path.exists(path) else None


faiss = load(os.path.join(out, "faiss.json"))
faiss_qps = {r["concurrency"]: r["qps"] for r in faiss["runs"]}
rows = []
for path in sorted(glob.glob(os.path.join(out, "node-shards-*.json")),
                   key=lambda p: int(re.findall(r"(\d+)\.json$", p)[0])):
    shards = int(re.findall(r"(\d+)\.json$", path)[0])
    rows.append((f"1 node, {shards} shard(s)", load(path)))
for name, label in [("cluster-r1.json", "3 nodes, 3 shards, R = 1"),
                    ("cluster-r3.json", "3 nodes, 3 shards, R = 3"),
                    ("cluster-r3-eventual.json", "3 nodes, 3 shards, R = 3, eventual reads")]:
    result = load(os.path.join(out, name))
    if result:
        rows.append((label, result))
rows.append(("FAISS in-process (1 index)", faiss))
base = {r["concurrency"]: r["qps"] for r in rows[0][1]["runs"]}

print(f"Machine: {open(os.path.join(out, 'machine.txt')).read().strip().removeprefix('bench: machine: ')}\n")
print("| setup | concurrency | recall@10 | QPS | p50 ms | p99 ms | QPS vs 1 shard | QPS vs FAISS | index wait s |")
print("|---|---|---|---|---|---|---|---|---|")
for label, result in rows:
    for r in result["runs"]:
        c = r["concurrency"]
        lat = r["latency_ms"]
        wait = result.get("index_wait_seconds")
        print(f"| {label} | {c} | {r['recall_at_k']:.4f} | {r['qps']:.0f} | {lat['p50']:.3f} | "
              f"{lat['p99']:.3f} | {r['qps'] / base[c]:.2f} | {r['qps'] / faiss_qps[c]:.2f} | "
              f"{'' if wait is None else f'{wait:.1f}'} |")
