#!/usr/bin/env bash
# The sharding benchmark behind docs/benchmarks.md ("Sharding"), all in one run on one machine:
#   1. One node: GloVe-50 400k (cosine, HNSW32,Flat, efConstruction 40, efSearch 64) in a
#      collection of S shards, for each S in SHARDS (1 2 4 8): load, wait for the index, then
#      recall@10, QPS and latency at concurrency 1 and 4, one query per request through the
#      node's router. Each collection is dropped before the next.
#   2. FAISS in-process: the same index, parameters and queries, unsharded.
#   3. Three nodes: a collection of 3 shards with R = 1, then with R = 3, searched through node 1
#      (strong reads; for R = 3 also eventual reads, which any replica answers without a
#      read-index round trip).
# Results go to $OUT (default bench-results/shards-<UTC time>/) as JSON, plus summary.md.
#
# Environment: SHOAL_BIN_DIR, SHOAL_GLOVE, LIMIT (rows, 400000), SHARDS ("1 2 4 8"),
# EF (64), EF_CONSTRUCTION (40), QUERIES (1000), CONCURRENCY (1,4), SKIP_CLUSTER=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly LIMIT=${LIMIT:-400000}
readonly SHARDS=${SHARDS:-1 2 4 8}
readonly EF=${EF:-64}
readonly EF_CONSTRUCTION=${EF_CONSTRUCTION:-40}
readonly QUERIES=${QUERIES:-1000}
readonly CONCURRENCY=${CONCURRENCY:-1,4}
OUT=$(results_dir shards)

require_bins shoal shoalctl faiss-reference
[[ -f "$GLOVE" ]] || { echo "bench: $GLOVE missing; run make data" >&2; exit 1; }

work=$(mktemp -d -t shoal-shards-bench.XXXXXX)
declare -A pid grpc http
cleanup() {
  for p in "${pid[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

stop_nodes() {
  for id in "${!pid[@]}"; do kill -TERM "${pid[$id]}" 2>/dev/null || true; done
  for id in "${!pid[@]}"; do
    while kill -0 "${pid[$id]}" 2>/dev/null; do sleep 0.1; done
  done
  pid=()
  rm -rf "$work"/n*
}

# bench_collection ADDR NAME SHARDS REPLICAS OUTFILE [EVENTUAL_OUTFILE]: loads, searches with
# strong reads (and, given EVENTUAL_OUTFILE, again with eventual reads), then drops.
bench_collection() {
  local addr=$1 name=$2 shards=$3 replicas=$4 out=$5 eventual=${6:-}
  "$BIN_DIR/shoalctl" --addr "$addr" --output json bench --collection "$name" --data "$GLOVE" \
    --limit "$LIMIT" --queries "$OUT/queries.npy" --k 10 --ef "$EF" --concurrency "$CONCURRENCY" \
    --create --metric cosine --index HNSW32,Flat --param "efConstruction=$EF_CONSTRUCTION" \
    --shards "$shards" --replicas "$replicas" >"$out"
  if [[ -n "$eventual" ]]; then
    "$BIN_DIR/shoalctl" --addr "$addr" --output json bench --collection "$name" --data "$GLOVE" \
      --limit "$LIMIT" --queries "$OUT/queries.npy" --k 10 --ef "$EF" \
      --concurrency "$CONCURRENCY" --skip-load --consistency eventual >"$eventual"
  fi
  "$BIN_DIR/shoalctl" --addr "$addr" collection drop "$name" >/dev/null
}

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
python3 scripts/bench_queries.py "$GLOVE" "$OUT/queries.npy" "$QUERIES" "$LIMIT"

echo "bench: [1/3] one node, shards: $SHARDS"
start_node 1
for s in $SHARDS; do
  echo "bench:   $s shard(s)"
  bench_collection "${grpc[1]}" "glove_s$s" "$s" 1 "$OUT/node-shards-$s.json"
done
stop_nodes

echo "bench: [2/3] FAISS in-process, same index and parameters"
"$BIN_DIR/faiss-reference" --data "$GLOVE" --limit "$LIMIT" --index HNSW32,Flat --metric cosine \
  --ef-construction "$EF_CONSTRUCTION" --ef "$EF" --k 10 --queries "$OUT/queries.npy" \
  --concurrency "$CONCURRENCY" >"$OUT/faiss.json"

if [[ "${SKIP_CLUSTER:-0}" != 1 ]]; then
  echo "bench: [3/3] three nodes, 3 shards, R = 1 then R = 3"
  start_node 1
  start_node 2 "${grpc[1]}"
  start_node 3 "${grpc[1]}"
  bench_collection "${grpc[1]}" glove_r1 3 1 "$OUT/cluster-r1.json"
  bench_collection "${grpc[1]}" glove_r3 3 3 "$OUT/cluster-r3.json" "$OUT/cluster-r3-eventual.json"
  stop_nodes
fi

python3 scripts/bench_shards_summary.py "$OUT" | tee "$OUT/summary.md"
echo "bench: results in $OUT"
