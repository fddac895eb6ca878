"""Load generator for shoal-sidecar (scripts/bench-sidecar.sh): Open Inference Protocol over
gRPC with Triton's own client. For each batch size and concurrency, THREADS clients send
requests of BATCH texts back to back for SECONDS; prints one JSON line per run with texts per
second and request latency percentiles.

Texts are seeded samples of 8-24 whole words from the model's WordPiece vocabulary (no "##"
pieces, no special tokens), so every run embeds the same texts of realistic token counts.

Usage: bench_sidecar.py HOST:PORT MODEL_DIR --batch 1,8,32 --concurrency 1,4 --seconds 10
"""

import argparse
import json
import random
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient


def corpus(model_dir, count, seed=7):
    with open(f"{model_dir}/tokenizer.json", encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    words = [w for w in vocab if w.isalpha() and w.isascii() and len(w) > 1]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(8, 24))) for _ in range(count)]


def run(url, model, texts, batch, threads, seconds):
    meta = grpcclient.InferenceServerClient(url=url).get_model_metadata(model)
    name_in, name_out = meta.inputs[0].name, meta.outputs[0].name
    latencies, lock = [], threading.Lock()
    stop = time.monotonic() + seconds

    def worker(index):
        client = grpcclient.InferenceServerClient(url=url)
        rng = random.Random(index)
        mine = []
        while time.monotonic() < stop:
            chosen = rng.sample(texts, batch)
            tensor = grpcclient.InferInput(name_in, [batch], "BYTES")
            tensor.set_data_from_numpy(np.array([t.encode() for t in chosen], dtype=np.object_))
            started = time.perf_counter()
            result = client.infer(model, [tensor], outputs=[grpcclient.InferRequestedOutput(name_out)])
            mine.append(time.perf_counter() - started)
            assert result.as_numpy(name_out).shape[0] == batch
        with lock:
            latencies.extend(mine)

    began = time.monotonic()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    took = time.monotonic() - began
    ms = np.array(latencies) * 1000.0
    return {
        "batch": batch,
        "concurrency": threads,
        "requests": len(latencies),
        "texts_per_s": round(len(latencies) * batch / took, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("model_dir")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    texts = corpus(args.model_dir, 2000)
    # Warm up: the first run of each shape pays allocation.
    run(args.url, args.model, texts, 8, 1, 1.0)
    for batch in map(int, args.batch.split(",")):
        for threads in map(int, args.concurrency.split(",")):
            report = run(args.url, args.model, texts, batch, threads, args.seconds)
            report["label"] = args.label
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
