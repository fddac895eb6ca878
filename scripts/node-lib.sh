# shellcheck shell=bash
# Shared by scripts/demo.sh and scripts/bench.sh: free loopback ports and waiting for a node.
# Source it from the repository root; it defines the binary and data locations and functions.

# Where `make build` puts the binaries and `make data` the GloVe matrix (used by the sourcing
# scripts).
# shellcheck disable=SC2034
readonly BIN_DIR=${SHOAL_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/shoal/target}/debug}
readonly GLOVE=${SHOAL_GLOVE:-data/glove-50.npy}

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
