#!/usr/bin/env bash
# Builds the container images (scripts/build-images.sh) and runs them: a `shoal` node container
# (read-only root, user 10001, only /data writable) serving a search through shoalctl, and a
# `shoal-sidecar` container answering an inference. Containers use the host network on free
# loopback ports (no bridge needed). Without a usable Docker engine it says why and skips
# (exit 0); when root and `dockerd` is installed but not running, it starts a private one
# (no bridge, no iptables) for the duration of the check.
#
# Environment: SHOAL_BIN_DIR, SHOAL_MODEL_REPO, DOCKER_HOST.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

work=$(mktemp -d -t shoal-image-check.XXXXXX)
dockerd_pid=
containers=()
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  if [[ -n "$dockerd_pid" ]]; then kill "$dockerd_pid" 2>/dev/null || true; fi
  rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

skip() {
  echo "image-check: SKIPPED: $*"
  exit 0
}

command -v docker >/dev/null || skip "no docker client (apt-get install docker.io)"
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || skip "no Docker engine reachable and no dockerd to start"
  [[ $EUID -eq 0 ]] || skip "no Docker engine reachable, and starting dockerd needs root"
  export DOCKER_HOST="unix://$work/docker.sock"
  dockerd --bridge=none --iptables=false --ip6tables=false --data-root "$work/data" \
    --exec-root "$work/exec" --pidfile "$work/docker.pid" -H "$DOCKER_HOST" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  deadline=$((SECONDS + 30))
  until docker info >/dev/null 2>&1; do
    kill -0 "$dockerd_pid" 2>/dev/null || skip "dockerd did not start: $(tail -1 "$work/dockerd.log")"
    ((SECONDS < deadline)) || skip "dockerd did not answer within 30 s"
    sleep 0.2
  done
fi

bash scripts/build-images.sh 0.1.0-check

# The node: read-only root, a writable /data owned by the image's user.
read -r grpc_port http_port < <(free_ports)
mkdir -p "$work/node-data"
chown 10001:10001 "$work/node-data" 2>/dev/null || chmod 777 "$work/node-data"
containers+=(shoal-image-check-node)
docker run -d --name shoal-image-check-node --network host --read-only \
  --cap-drop ALL --security-opt no-new-privileges \
  -v "$work/node-data:/data" shoal:0.1.0-check \
  node --data-dir=/data --listen="127.0.0.1:$grpc_port" --http="127.0.0.1:$http_port" >/dev/null
# wait_ready watches a pid: the container is not a child, so watch this script instead.
if ! wait_ready "127.0.0.1:$http_port" "$$" 60; then
  docker logs shoal-image-check-node 2>&1 | tail -20
  echo "image-check: FAILED: the shoal container never became ready" >&2
  exit 1
fi
ctl() { "$BIN_DIR/shoalctl" --addr "127.0.0.1:$grpc_port" "$@"; }
ctl collection create images --dim 2 --metric l2 >/dev/null
printf '{"id": 1, "vector": [0, 0]}\n{"id": 2, "vector": [5, 5]}\n' >"$work/points.jsonl"
ctl points upsert images --file "$work/points.jsonl" >/dev/null
top=$(ctl --output json search images --vector 4,4 --k 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][0]["id"])')
[[ "$top" == 2 ]] || { echo "image-check: FAILED: search in the container found $top" >&2; exit 1; }
echo "image-check: ok: shoal container (read-only root, user $(docker inspect --format '{{.Config.User}}' shoal:0.1.0-check)) served a search"

# The sidecar: the model inside, nothing writable.
read -r side_grpc side_http < <(free_ports)
containers+=(shoal-image-check-sidecar)
docker run -d --name shoal-image-check-sidecar --network host --read-only \
  --cap-drop ALL --security-opt no-new-privileges shoal-sidecar:0.1.0-check \
  --model-repository=/models --grpc="127.0.0.1:$side_grpc" --http="127.0.0.1:$side_http" >/dev/null
deadline=$((SECONDS + 60))
until curl -fsS "http://127.0.0.1:$side_http/v2/health/ready" >/dev/null 2>&1; do
  ((SECONDS < deadline)) || { docker logs shoal-image-check-sidecar 2>&1 | tail -20; echo "image-check: FAILED: sidecar not ready" >&2; exit 1; }
  sleep 0.2
done
shape=$(curl -fsS -X POST "http://127.0.0.1:$side_http/v2/models/all-MiniLM-L6-v2/infer" \
  -d '{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["outputs"][0]["shape"])')
[[ "$shape" == "[1, 384]" ]] || { echo "image-check: FAILED: sidecar answered shape $shape" >&2; exit 1; }
echo "image-check: ok: shoal-sidecar container embedded a text ($shape)"
docker image rm shoal:0.1.0-check shoal-sidecar:0.1.0-check >/dev/null 2>&1 || true
