#!/usr/bin/env bash
# The filtered-search benchmark behind docs/benchmarks.md ("Filtered search"): one node, the
# first LIMIT GloVe-50 vectors in an HNSW32 cosine collection, every point given an int64
# feature `bucket` (0-99, a hash of its id), then `shoalctl bench --filter-percent 1,10,50`:
# the same queries without a filter and with `bucket < P`, recall against the exact top-10 among
# the points each filter keeps (computed by shoalctl by brute force). Results in $OUT (default
# bench-results/filter-<UTC time>/).
#
# Environment: SHOAL_BIN_DIR, SHOAL_GLOVE, LIMIT (400000), QUERIES (1000), CONCURRENCY (1,4).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly LIMIT=${LIMIT:-400000}
readonly QUERIES=${QUERIES:-1000}
readonly CONCURRENCY=${CONCURRENCY:-1,4}
OUT=$(results_dir filter)
[[ -f "$GLOVE" ]] || { echo "$GLOVE not found; run 'make data'" >&2; exit 1; }

work=$(mktemp -d -t shoal-filter-bench.XXXXXX)
node_pid=
cleanup() {
  [[ -n "$node_pid" ]] && kill -KILL "$node_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

read -r grpc_port http_port < <(free_ports)
readonly GRPC=127.0.0.1:$grpc_port HTTP=127.0.0.1:$http_port
"$BIN_DIR/shoal" node --data-dir "$work/data" --listen "$GRPC" --http "$HTTP" >>"$OUT/node.log" 2>&1 &
node_pid=$!
wait_ready "$HTTP" "$node_pid" 120 || { tail -20 "$OUT/node.log" >&2; exit 1; }

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
args=(bench --collection glove --data "$GLOVE" --limit "$LIMIT" --num-queries "$QUERIES" --k 10
  --concurrency "$CONCURRENCY" --filter-percent "1,10,50")
"$BIN_DIR/shoalctl" --addr "$GRPC" --output json "${args[@]}" --create --metric cosine \
  --index HNSW32 --batch-size 1000 --write-concurrency 2 | tee "$OUT/filter.json"
# The same runs again as a table, on the loaded collection.
"$BIN_DIR/shoalctl" --addr "$GRPC" "${args[@]}" --skip-load | tee "$OUT/summary.txt"
