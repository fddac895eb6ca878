"""Turns the JSON files of one scripts/bench.sh run into the Markdown tables of
docs/benchmarks.md, with Shoal/FAISS ratios."""

import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


shoal, faiss, peer = load("shoal.json"), load("faiss.json"), load("hnswlib.json")
after, restart = load("shoal-after-restart.json"), load("restart.json")
print(f"Machine: {open(os.path.join(out, 'machine.txt')).read().strip().removeprefix('bench: machine: ')}\n")
print("| system | concurrency | recall@10 | QPS | p50 ms | p99 ms | QPS vs FAISS |")
print("|---|---|---|---|---|---|---|")
faiss_qps = {r["concurrency"]: r["qps"] for r in faiss["runs"]}
for label, result in [("Shoal (gRPC, 1 query/request)", shoal), ("Shoal after restart", after),
                      ("FAISS in-process", faiss), ("hnswlib (Python)", peer)]:
    if not result:
        continue
    for r in result["runs"]:
        ratio = r["qps"] / faiss_qps[r["concurrency"]]
        lat = r["latency_ms"]
        print(f"| {label} | {r['concurrency']} | {r['recall_at_k']:.4f} | {r['qps']:.0f} | "
              f"{lat['p50']:.3f} | {lat['p99']:.3f} | {ratio:.2f} |")
ingest = shoal.get("ingest") or {}
print()
print(f"- Shoal ingest: {ingest.get('points', 0)} points in {ingest.get('seconds', 0):.1f} s "
      f"= {ingest.get('points_per_sec', 0):.0f} points/s (acknowledged, durable)")
print(f"- Shoal index wait after ingest (seal + merge to one HNSW segment): {shoal.get('index_wait_seconds', 0):.1f} s")
print(f"- FAISS in-process build: {faiss['build_seconds']:.1f} s"
      + (f"; hnswlib build: {peer['build_seconds']:.1f} s" if peer else ""))
if restart:
    print(f"- Shoal restart to serving (SIGTERM, start, /readyz 200): {restart['restart_to_ready_seconds']:.2f} s")
