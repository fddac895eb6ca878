# shellcheck shell=bash
# Shared by the demo and benchmark scripts: free loopback ports, waiting for a node, and
# starting cluster nodes.
# Source it from the repository root; it defines the binary and data locations and functions.

# Where `make build` puts the binaries and `make data` the GloVe matrix (used by the sourcing
# scripts).
# shellcheck disable=SC2034
readonly BIN_DIR=${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}/debug}
readonly GLOVE=${SHOAL_GLOVE:-data/glove-50.npy}

# results_dir NAME: prints the absolute path of $OUT, or else of bench-results/NAME-<UTC time>,
# after creating it.
results_dir() {
  local dir=${OUT:-bench-results/${1:+$1-}$(date -u +%Y%m%dT%H%M%SZ)}
  mkdir -p "$dir"
  (cd "$dir" && pwd)
}

# require_bins BIN...: exits with a hint unless each binary is in $BIN_DIR.
require_bins() {
  local bin
  for bin in "$@"; do
    [[ -x "$BIN_DIR/$bin" ]] || { echo "bench: $BIN_DIR/$bin missing; run make build" >&2; exit 1; }
  done
}

# Prints two distinct free loopback ports: the kernel picks them while both sockets are bound.
free_ports() {
  python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))'
}

# wait_ready HTTP_ADDR PID TIMEOUT_SECS: polls /readyz until it answers 200. Returns 1 if the
# process exits first, 2 if the deadline passes.
wait_ready() {
  local http=$1 pid=$2 deadline=$((SECONDS + $3))
  until curl -fsS --max-time 2 "http://$http/readyz" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    ((SECONDS < deadline)) || return 2
    sleep 0.05
  done
}

# start_node ID [SEED]: starts `shoal node` ID in $work/nID (log in $OUT/nodeID.log), joining
# SEED when given; on free ports the first time, on the same ones after (kept in the caller's
# associative arrays grpc, http and pid). SNAPSHOTS (entries between snapshots) overrides the
# default snapshot policy.
# shellcheck disable=SC2004,SC2154  # grpc/http/pid (associative) and work/OUT are the caller's
start_node() {
  local id=$1 seed=${2:-}
  local ports
  if [[ -z "${grpc[$id]:-}" ]]; then
    read -r -a ports < <(free_ports)
    grpc[$id]=127.0.0.1:${ports[0]}
    http[$id]=127.0.0.1:${ports[1]}
  fi
  SHOAL__CLUSTER__NODE_ID=$id \
    SHOAL__RAFT__SNAPSHOT_LOGS_SINCE_LAST=${SNAPSHOTS:-5000} \
    SHOAL__RAFT__LOGS_KEPT_AFTER_SNAPSHOT=${SNAPSHOTS:-1000} \
    "$BIN_DIR/shoal" node --data-dir "$work/n$id" --listen "${grpc[$id]}" --http "${http[$id]}" \
    ${seed:+--join "$seed"} >>"$OUT/node$id.log" 2>&1 &
  pid[$id]=$!
  disown "${pid[$id]}"
  wait_ready "${http[$id]}" "${pid[$id]}" 120 || {
    echo "bench: node $id did not become ready" >&2
    tail -20 "$OUT/node$id.log" >&2
    exit 1
  }
}
