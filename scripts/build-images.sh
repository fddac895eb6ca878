#!/usr/bin/env bash
# Builds the container images `shoal:TAG` and `shoal-sidecar:TAG` (deploy/Dockerfile.*) from
# the binaries `make build` made, without pulling anything: each image is a rootfs assembled
# here (the stripped binaries, the shared libraries `ldd` says they load, /etc/passwd with user
# 10001, and for the sidecar the model repository of `make model`) on `FROM scratch`.
#
# Usage: build-images.sh [TAG]   (default 0.1.0). Environment: SHOAL_BIN_DIR, SHOAL_MODEL_REPO,
# DOCKER (default docker), BUILD_DIR (default build/images).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/node-lib.sh
source scripts/node-lib.sh

readonly TAG=${1:-0.1.0}
readonly DOCKER=${DOCKER:-docker}
readonly MODEL_REPO=${SHOAL_MODEL_REPO:-models}
readonly BUILD_DIR=${BUILD_DIR:-build/images}

# rootfs DIR BINARY...: the binaries in DIR/rootfs/usr/local/bin, stripped, with every shared
# library they load at the same path as on this machine.
rootfs() {
  local dir=$1 bin lib
  shift
  rm -rf "$dir"
  mkdir -p "$dir/rootfs/usr/local/bin" "$dir/rootfs/etc" "$dir/datadir"
  touch "$dir/datadir/.keep"
  for bin in "$@"; do
    [[ -x "$BIN_DIR/$bin" ]] || { echo "$BIN_DIR/$bin not found: run 'make build'" >&2; exit 1; }
    strip -o "$dir/rootfs/usr/local/bin/$bin" "$BIN_DIR/$bin"
    while read -r lib; do
      mkdir -p "$dir/rootfs$(dirname "$lib")"
      cp -L "$lib" "$dir/rootfs$lib"
    done < <(ldd "$BIN_DIR/$bin" | grep -o '/[^ ]*' | sort -u)
  done
  echo "shoal:x:10001:10001:shoal:/data:/nonexistent" >"$dir/rootfs/etc/passwd"
  echo "shoal:x:10001:" >"$dir/rootfs/etc/group"
}

rootfs "$BUILD_DIR/shoal" shoal shoalctl
"$DOCKER" build --quiet -f deploy/Dockerfile.shoal -t "shoal:$TAG" "$BUILD_DIR/shoal"

rootfs "$BUILD_DIR/sidecar" shoal-sidecar
[[ -f "$MODEL_REPO/all-MiniLM-L6-v2/model.safetensors" ]] ||
  { echo "$MODEL_REPO has no all-MiniLM-L6-v2: run 'make model'" >&2; exit 1; }
mkdir -p "$BUILD_DIR/sidecar/rootfs/models"
cp -r "$MODEL_REPO/all-MiniLM-L6-v2" "$BUILD_DIR/sidecar/rootfs/models/"
"$DOCKER" build --quiet -f deploy/Dockerfile.sidecar -t "shoal-sidecar:$TAG" "$BUILD_DIR/sidecar"
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^shoal(-sidecar)?:$TAG "
