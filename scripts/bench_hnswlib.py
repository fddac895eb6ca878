"""hnswlib as a peer in scripts/bench.sh: same data, queries, k and graph parameters, one query
per call from C threads, recall against brute force. Prints JSON like faiss-reference."""

import argparse
import json
import threading
import time

import hnswlib
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--data", required=True)
p.add_argument("--queries", required=True)
p.add_argument("--limit", type=int, default=None)
p.add_argument("--m", type=int, default=32)
p.add_argument("--ef-construction", type=int, default=40)
p.add_argument("--ef", type=int, default=64)
p.add_argument("--k", type=int, default=10)
p.add_argument("--concurrency", default="1,4")
args = p.parse_args()

data = np.load(args.data)[: args.limit].astype(np.float32)
data /= np.linalg.norm(data, axis=1, keepdims=True)
queries = np.load(args.queries).astype(np.float32)
queries /= np.linalg.norm(queries, axis=1, keepdims=True)
truth = [set(np.argpartition(-(data @ q), args.k)[: args.k]) for q in queries]

started = time.perf_counter()
index = hnswlib.Index(space="ip", dim=data.shape[1])
index.init_index(max_elements=len(data), M=args.m, ef_construction=args.ef_construction)
index.add_items(data, np.arange(len(data)))
build_seconds = time.perf_counter() - started
index.set_ef(args.ef)

runs = []
for c in [int(x) for x in args.concurrency.split(",")]:
    latencies, hits, lock, nxt = [], [0], threading.Lock(), [0]

    def worker():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= len(queries):
                return
            t = time.perf_counter()
            labels, _ = index.knn_query(queries[i : i + 1], k=args.k, num_threads=1)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt * 1000)
                hits[0] += len(truth[i] & set(labels[0].tolist()))

    threads = [threading.Thread(target=worker) for _ in range(c)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies)
    runs.append(
        {
            "concurrency": c,
            "queries": len(queries),
            "qps": len(queries) / elapsed,
            "recall_at_k": hits[0] / (len(queries) * args.k),
            "latency_ms": {q: float(np.percentile(lat, v)) for q, v in [("p50", 50), ("p95", 95), ("p99", 99)]} | {"mean": float(lat.mean())},
        }
    )

print(json.dumps({"system": "hnswlib", "n": len(data), "dim": data.shape[1], "k": args.k,
                  "build_seconds": build_seconds, "params": {"M": args.m, "ef_construction": args.ef_construction, "ef": args.ef},
                  "runs": runs}, indent=2))
