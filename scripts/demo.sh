#!/usr/bin/env bash
# Shoal in two minutes: starts a node on a temporary data directory and free loopback ports,
# loads the 400,000 GloVe-50 word vectors into an HNSW collection, benchmarks recall@10 and
# throughput against exact (brute-force) neighbours, shows the collection and one search,
# then stops the node with SIGTERM and checks that it exits cleanly.
#
# Run through `make demo`, which builds the binaries and fetches the data first.
# Environment: SHOAL_BIN_DIR (default $CARGO_TARGET_DIR/debug), SHOAL_GLOVE (default
# data/glove-50.npy), READY_TIMEOUT_SECS (60), STOP_TIMEOUT_SECS (60).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly READY_TIMEOUT_SECS=${READY_TIMEOUT_SECS:-60}
readonly STOP_TIMEOUT_SECS=${STOP_TIMEOUT_SECS:-60}
readonly COLLECTION=glove

die() {
  echo "demo: $*" >&2
  exit 1
}

step() {
  printf '\n==> %s\n' "$*"
}

for bin in shoal shoalctl; do
  [[ -x "$BIN_DIR/$bin" ]] || die "$BIN_DIR/$bin not found; run 'make demo' (or 'make build')"
done
[[ -f "$GLOVE" ]] || die "$GLOVE not found; run 'make data'"

work=$(mktemp -d -t shoal-demo.XXXXXX)
node_pid=

# Stops the node if it still runs (SIGTERM, then SIGKILL after the deadline), removes the
# temporary directory, and shows the node's log when the demo failed.
cleanup() {
  local status=$?
  if [[ -n "$node_pid" ]] && kill -0 "$node_pid" 2>/dev/null; then
    kill -TERM "$node_pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_SECS))
    while kill -0 "$node_pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.2
    done
    kill -KILL "$node_pid" 2>/dev/null || true
    wait "$node_pid" 2>/dev/null || true
  fi
  if ((status != 0)) && [[ -s "$work/node.log" ]]; then
    echo "demo: failed; last lines of the node's log:" >&2
    tail -n 30 "$work/node.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

read -r grpc_port http_port < <(free_ports)
readonly GRPC_ADDR=127.0.0.1:$grpc_port
readonly HTTP_ADDR=127.0.0.1:$http_port

shoalctl() {
  "$BIN_DIR/shoalctl" --addr "$GRPC_ADDR" "$@"
}

step "Starting shoal node (gRPC $GRPC_ADDR, HTTP $HTTP_ADDR, data in $work/data)"
"$BIN_DIR/shoal" node --data-dir "$work/data" --listen "$GRPC_ADDR" --http "$HTTP_ADDR" \
  >"$work/node.log" 2>&1 &
node_pid=$!

wait_ready "$HTTP_ADDR" "$node_pid" "$READY_TIMEOUT_SECS" || case $? in
  1) die "the node exited during startup" ;;
  *) die "the node was not ready within ${READY_TIMEOUT_SECS}s" ;;
esac
echo "ready: http://$HTTP_ADDR/readyz"

step "Creating collection '$COLLECTION' (50 dimensions, cosine, HNSW32,Flat)"
shoalctl collection create "$COLLECTION" --dim 50 --metric cosine --index "HNSW32,Flat" \
  --param efConstruction=40 --param efSearch=64

step "Loading GloVe-50 (400,000 vectors) and benchmarking 1,000 queries, k=10"
shoalctl bench --collection "$COLLECTION" --data "$GLOVE" --num-queries 1000 --k 10 \
  --concurrency 1,4

step "Describing the collection"
shoalctl collection describe "$COLLECTION"

# Row 0 of GloVe 6B is the word "the"; searching with it should return point 0 first.
query=$(python3 - "$GLOVE" <<'PY'
import ast, struct, sys

with open(sys.argv[1], "rb") as f:
    assert f.read(6) == b"\x93NUMPY", "not a .npy file"
    major, _minor = f.read(2)
    size = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
    header = ast.literal_eval(f.read(size).decode("latin1"))
    assert header["descr"] == "<f4" and not header["fortran_order"], header
    dim = header["shape"][1]
    row = struct.unpack(f"<{dim}f", f.read(4 * dim))


def shortest(x):
    """The shortest decimal that reads back as the same float32."""
    for digits in range(1, 10):
        text = f"{x:.{digits}g}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == x:
            return text
    return repr(x)


print(",".join(shortest(x) for x in row))
PY
)
step "Searching for the 5 nearest neighbours of row 0 (the word \"the\")"
shoalctl search "$COLLECTION" --vector="$query" --k 5

step "Stopping the node with SIGTERM"
kill -TERM "$node_pid"
deadline=$((SECONDS + STOP_TIMEOUT_SECS))
while kill -0 "$node_pid" 2>/dev/null; do
  ((SECONDS < deadline)) || die "the node did not stop within ${STOP_TIMEOUT_SECS}s of SIGTERM"
  sleep 0.2
done
node_status=0
wait "$node_pid" || node_status=$?
node_pid=
((node_status == 0)) || die "the node exited with status $node_status after SIGTERM"
echo "the node stopped cleanly"
