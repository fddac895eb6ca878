#!/usr/bin/env bash
# The feature-store latency benchmark behind docs/benchmarks.md ("Online features"): one node,
# a collection of SHARDS shards with a feature view of 50 double fields, ENTITIES entities
# pushed, then `shoalctl features bench`: get_online_features of all 50 fields for 1 and for
# 100 random entities per request, one request at a time, over gRPC and over the
# Feast-compatible HTTP API. Results in $OUT (default bench-results/features-<UTC time>/).
#
# Environment: SHOAL_BIN_DIR, ENTITIES (10000), SHARDS (1), REQUESTS (2000).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly ENTITIES=${ENTITIES:-10000}
readonly SHARDS=${SHARDS:-1}
readonly REQUESTS=${REQUESTS:-2000}
OUT=$(results_dir features)

work=$(mktemp -d -t shoal-features-bench.XXXXXX)
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
ctl() { "$BIN_DIR/shoalctl" --addr "$GRPC" "$@"; }

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
ctl collection create drivers --dim 4 --metric l2 --shards "$SHARDS" >/dev/null
fields=()
for i in $(seq 0 49); do fields+=(--field "f$i:double"); done
ctl features view create drivers stats "${fields[@]}" >/dev/null
python3 - "$ENTITIES" >"$work/rows.jsonl" <<'PY'
import json, random, sys
random.seed(7)
for i in range(int(sys.argv[1])):
    print(json.dumps({"id": i, "event_timestamp": "2026-11-26T08:00:00Z",
                      "features": {f"f{j}": random.random() for j in range(50)}}))
PY
ctl features push drivers stats --file "$work/rows.jsonl" >/dev/null
ctl --output json features bench stats --entities "$ENTITIES" --batch 1,100 \
  --requests "$REQUESTS" --http "$HTTP" | tee "$OUT/features.json"
ctl features bench stats --entities "$ENTITIES" --batch 1,100 --requests "$REQUESTS" \
  --http "$HTTP" | tee "$OUT/summary.txt"
