#!/usr/bin/env bash
# The whole-system benchmark behind docs/benchmarks.md, all in one run on one machine:
#   1. Shoal: a node on a temporary data dir; `shoalctl bench` loads GloVe-50 (400k, cosine,
#      HNSW32,Flat), waits for the index, and measures recall@10, QPS and latency at
#      concurrency 1 and 4 (one query per request).
#   2. Restart: SIGTERM, start again on the same data, time until /readyz answers 200, and
#      search again (the sealed index is loaded, not rebuilt).
#   3. FAISS in-process: the same index, parameters and queries (benches/src/faiss_reference.rs).
#   4. hnswlib (Python), the same graph parameters, as a peer.
# Results go to $OUT (default bench-results/<UTC time>/) as JSON, plus summary.md.
#
# Environment: SHOAL_BIN_DIR, SHOAL_GLOVE, LIMIT (rows, default all 400000), EF (64),
# EF_CONSTRUCTION (40), QUERIES (1000), CONCURRENCY (1,4), SKIP_PEER=1 to skip hnswlib.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly LIMIT=${LIMIT:-400000}
readonly EF=${EF:-64}
readonly EF_CONSTRUCTION=${EF_CONSTRUCTION:-40}
readonly QUERIES=${QUERIES:-1000}
readonly CONCURRENCY=${CONCURRENCY:-1,4}
OUT=$(results_dir "")

require_bins shoal shoalctl faiss-reference
[[ -f "$GLOVE" ]] || { echo "bench: $GLOVE missing; run make data" >&2; exit 1; }

work=$(mktemp -d -t shoal-bench.XXXXXX)
node_pid=
cleanup() {
  if [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -KILL "$node_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

read -r grpc_port http_port < <(free_ports)
readonly GRPC=127.0.0.1:$grpc_port HTTP=127.0.0.1:$http_port

start_node() {
  "$BIN_DIR/shoal" node --data-dir "$work/data" --listen "$GRPC" --http "$HTTP" >>"$OUT/node.log" 2>&1 &
  node_pid=$!
  wait_ready "$HTTP" "$node_pid" 600 || {
    echo "bench: node did not become ready" >&2
    tail -20 "$OUT/node.log" >&2
    exit 1
  }
}

stop_node() {
  kill -TERM "$node_pid"
  wait "$node_pid" || true
  node_pid=
}

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"

python3 scripts/bench_queries.py "$GLOVE" "$OUT/queries.npy" "$QUERIES" "$LIMIT"

echo "bench: [1/4] Shoal: load, index, search"
start_node
"$BIN_DIR/shoalctl" --addr "$GRPC" --output json bench --collection glove --data "$GLOVE" \
  --limit "$LIMIT" --queries "$OUT/queries.npy" --k 10 --ef "$EF" --concurrency "$CONCURRENCY" \
  --create --metric cosine --index HNSW32,Flat --param "efConstruction=$EF_CONSTRUCTION" \
  >"$OUT/shoal.json"
"$BIN_DIR/shoalctl" --addr "$GRPC" --output json collection describe glove >"$OUT/describe.json"

echo "bench: [2/4] Shoal: restart to serving"
stop_node
restart_start=$(date +%s.%N)
start_node
restart_end=$(date +%s.%N)
python3 -c "import json,sys; json.dump({'restart_to_ready_seconds': $restart_end - $restart_start}, sys.stdout)" >"$OUT/restart.json"
"$BIN_DIR/shoalctl" --addr "$GRPC" --output json collection describe glove >"$OUT/describe-after-restart.json"
"$BIN_DIR/shoalctl" --addr "$GRPC" --output json bench --collection glove --data "$GLOVE" \
  --limit "$LIMIT" --queries "$OUT/queries.npy" --k 10 --ef "$EF" --concurrency "$CONCURRENCY" \
  --skip-load >"$OUT/shoal-after-restart.json"
stop_node

echo "bench: [3/4] FAISS in-process, same index and parameters"
"$BIN_DIR/faiss-reference" --data "$GLOVE" --limit "$LIMIT" --index HNSW32,Flat --metric cosine \
  --ef-construction "$EF_CONSTRUCTION" --ef "$EF" --k 10 --queries "$OUT/queries.npy" \
  --concurrency "$CONCURRENCY" >"$OUT/faiss.json"

if [[ "${SKIP_PEER:-0}" != 1 ]]; then
  echo "bench: [4/4] hnswlib peer"
  python3 -m venv .venv >/dev/null 2>&1 || true
  .venv/bin/pip install -q numpy hnswlib >/dev/null
  .venv/bin/python scripts/bench_hnswlib.py --data "$GLOVE" --limit "$LIMIT" --m 32 \
    --ef-construction "$EF_CONSTRUCTION" --ef "$EF" --k 10 --queries "$OUT/queries.npy" \
    --concurrency "$CONCURRENCY" >"$OUT/hnswlib.json"
fi

python3 scripts/bench_summary.py "$OUT" | tee "$OUT/summary.md"
echo "bench: results in $OUT"
