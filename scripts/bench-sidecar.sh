#!/usr/bin/env bash
# The inference sidecar benchmark behind docs/benchmarks.md ("Inference sidecar"): shoal-sidecar
# serving all-MiniLM-L6-v2, driven over gRPC by Triton's own client (scripts/bench_sidecar.py):
# texts per second and latency at batch sizes 1, 8 and 32 and concurrency 1 and 4, first with
# dynamic batching (the defaults: up to 32 texts, 2 ms queue delay), then with it off
# (--max-batch-size 1). Results in $OUT (default bench-results/sidecar-<UTC time>/).
#
# Environment: SHOAL_BIN_DIR, SHOAL_MODEL_REPO (models), SHOAL_SIDECAR_PYTHON, SECONDS_PER_RUN (10).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly MODEL_REPO=${SHOAL_MODEL_REPO:-models}
readonly PYTHON=${SHOAL_SIDECAR_PYTHON:-.venv-sidecar/bin/python}
readonly SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
OUT=$(results_dir sidecar)

sidecar_pid=
cleanup() {
  if [[ -n "$sidecar_pid" ]]; then kill "$sidecar_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

# bench LABEL [SIDECAR FLAGS...]: one sidecar, the whole matrix against it.
bench() {
  local label=$1 grpc_port http_port
  shift
  read -r grpc_port http_port < <(free_ports)
  "$BIN_DIR/shoal-sidecar" --model-repository "$MODEL_REPO" --grpc "127.0.0.1:$grpc_port" \
    --http "127.0.0.1:$http_port" "$@" >>"$OUT/sidecar-$label.log" 2>&1 &
  sidecar_pid=$!
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://127.0.0.1:$http_port/v2/health/ready" >/dev/null 2>&1; do
    kill -0 "$sidecar_pid" 2>/dev/null || { tail -20 "$OUT/sidecar-$label.log" >&2; exit 1; }
    ((SECONDS < deadline)) || { echo "sidecar not ready" >&2; exit 1; }
    sleep 0.1
  done
  "$PYTHON" scripts/bench_sidecar.py "127.0.0.1:$grpc_port" "$MODEL_REPO/all-MiniLM-L6-v2" \
    --seconds "$SECONDS_PER_RUN" --label "$label" | tee -a "$OUT/sidecar.jsonl"
  curl -fsS "http://127.0.0.1:$http_port/metrics" >"$OUT/metrics-$label.txt"
  kill "$sidecar_pid"
  wait "$sidecar_pid" || true
  sidecar_pid=
}

echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" | tee "$OUT/machine.txt"
bench batching
bench no-batching --max-batch-size 1
