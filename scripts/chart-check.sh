#!/usr/bin/env bash
# Checks the Helm chart in helm/shoal offline (`make chart-check` fetches the tools first):
#
#   1. `helm lint --strict` on the chart.
#   2. Renders it (`helm template`) for every combination of
#        replicaCount                   1 3 5
#        metrics.serviceMonitor.enabled true false
#        persistence.enabled            true false
#        Kubernetes version             1.28.0 1.31.0 1.33.0
#      and, when metrics are on, once more with `--api-versions monitoring.coreos.com/v1` (a
#      cluster that has the Prometheus operator's CRDs) so that the ServiceMonitor renders.
#      Each rendering is validated against that Kubernetes version's official OpenAPI schemas:
#        kubernetes-validate --strict -k VERSION -     (the rendering on standard input)
#      --strict rejects unknown fields. A resource for which the validator has no schema fails
#      the check (a mistyped or removed apiVersion, such as policy/v1beta1 on 1.28), except the
#      Prometheus operator's monitoring.coreos.com kinds, which are CRDs with no schema here.
#      Each rendering must also hold a StatefulSet with spec.replicas = replicaCount, with
#      volumeClaimTemplates exactly when persistence.enabled (and no PersistentVolumeClaim
#      when it is off), and a ServiceMonitor when metrics are on and the operator's API is
#      offered, none when metrics are off.
#   3. Checks that an even replicaCount (2, 4) makes `helm template` fail: the chart refuses an
#      even number of Raft voters.
#   5. (below 4) Checks that deploy/kubernetes/shoal.yaml, the plain manifests, is what
#      scripts/render-manifests.sh renders from the chart now.
#   4. When checkov is installed (.venv-k8s, `make k8s-venv`), scans one rendering with the
#      default values (namespace "shoal": the release namespace is the installer's choice) with
#      checkov's Kubernetes checks. Accepted findings are skipped through
#      helm/checkov-skips.txt: one check id per line (e.g. CKV_K8S_43), with the reason for
#      accepting it in a `#` comment on that line or above it; blank lines are ignored.
#
# Prints one line per check and a closing "N passed, N failed" line; exits non-zero when any
# check failed. Environment: HELM (default .tools/bin/helm, `make helm`), VALIDATE (default
# .venv-k8s/bin/kubernetes-validate), PYTHON (a Python with PyYAML; default the one beside
# VALIDATE), CHECKOV (default .venv-k8s/bin/checkov), CHART (default helm/shoal) and
# CHECKOV_SKIPS (default helm/checkov-skips.txt), each relative to the top of the checkout.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HELM=${HELM:-.tools/bin/helm}
VALIDATE=${VALIDATE:-.venv-k8s/bin/kubernetes-validate}
PYTHON=${PYTHON:-$(dirname "$VALIDATE")/python}
CHECKOV=${CHECKOV:-.venv-k8s/bin/checkov}
CHART=${CHART:-helm/shoal}
CHECKOV_SKIPS=${CHECKOV_SKIPS:-helm/checkov-skips.txt}

readonly REPLICAS=(1 3 5)
readonly EVEN_REPLICAS=(2 4)
readonly BOOLS=(true false)
readonly KUBE_VERSIONS=(1.28.0 1.31.0 1.33.0)
readonly MONITORING_API=monitoring.coreos.com/v1

missing=0
if [[ ! -x "$HELM" ]]; then
  echo "chart-check: no helm at $HELM (make helm)" >&2
  missing=1
fi
if [[ ! -x "$VALIDATE" ]]; then
  echo "chart-check: no kubernetes-validate at $VALIDATE (make k8s-venv)" >&2
  missing=1
fi
if [[ ! -x "$PYTHON" ]] || ! "$PYTHON" -c 'import yaml' 2>/dev/null; then
  echo "chart-check: no Python with PyYAML at $PYTHON (make k8s-venv, or set PYTHON)" >&2
  missing=1
fi
if [[ ! -f "$CHART/Chart.yaml" ]]; then
  echo "chart-check: no chart at $CHART" >&2
  missing=1
fi
((missing == 0)) || exit 2

work=$(mktemp -d -t shoal-chart-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
pass() {
  passed=$((passed + 1))
  printf 'ok    %s\n' "$1"
}
# fail LABEL [DETAILS_FILE]: the details are printed indented.
fail() {
  failed=$((failed + 1))
  printf 'FAIL  %s\n' "$1"
  if [[ -n "${2:-}" && -s "$2" ]]; then
    sed 's/^/      /' "$2"
  fi
}

# Checks the rendering in $1 (see the header): check_rendering FILE REPLICAS PERSISTENCE
# SERVICEMONITOR, where SERVICEMONITOR is "yes", "no" or "any". Prints what is wrong.
check_rendering() {
  "$PYTHON" - "$@" <<'PY'
import sys
import yaml

path, replicas, persistence, monitor = sys.argv[1:]
with open(path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
kinds = [d.get("kind") for d in docs]
errors = []
sts = [d for d in docs if d.get("kind") == "StatefulSet"]
with_replicas = [s for s in sts if (s.get("spec") or {}).get("replicas") == int(replicas)]
if not with_replicas:
    got = [(s.get("spec") or {}).get("replicas") for s in sts]
    errors.append(f"no StatefulSet with spec.replicas = {replicas} (StatefulSets' replicas: {got})")
claims = any((s.get("spec") or {}).get("volumeClaimTemplates") for s in with_replicas)
if persistence == "true" and not claims:
    errors.append("persistence.enabled=true but the StatefulSet has no volumeClaimTemplates")
if persistence == "false" and (claims or "PersistentVolumeClaim" in kinds):
    errors.append("persistence.enabled=false but the rendering claims a volume")
if monitor == "yes" and "ServiceMonitor" not in kinds:
    errors.append("metrics on and monitoring.coreos.com/v1 offered, but no ServiceMonitor")
if monitor == "no" and "ServiceMonitor" in kinds:
    errors.append("metrics off, but a ServiceMonitor is rendered")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}

# Validates the rendering in $1 against Kubernetes $2; prints the failures.
validate() {
  local file=$1 version=$2 out status=0
  out=$("$VALIDATE" --strict --quiet -k "$version" - <"$file" 2>&1) || status=$?
  # The validator only warns about a kind it has no schema for; that is a failure here unless
  # the kind is one of the Prometheus operator's CRDs.
  local unknown
  unknown=$(grep -F "Couldn't find schema" <<<"$out" | grep -vF "api version monitoring.coreos.com/" || true)
  if ((status != 0)) || [[ -n "$unknown" ]]; then
    grep -vF "api version monitoring.coreos.com/" <<<"$out" || true
    return 1
  fi
}

echo "chart-check: $CHART with $("$HELM" version --short), kubernetes-validate $("$VALIDATE" --version 2>&1 | awk '{print $NF}')"

if "$HELM" lint --strict "$CHART" >"$work/lint.txt" 2>&1; then
  pass "helm lint --strict $CHART"
else
  fail "helm lint --strict $CHART" "$work/lint.txt"
fi

for version in "${KUBE_VERSIONS[@]}"; do
  for replicas in "${REPLICAS[@]}"; do
    for metrics in "${BOOLS[@]}"; do
      for persistence in "${BOOLS[@]}"; do
        api_variants=("")
        if [[ $metrics == true ]]; then
          api_variants+=("$MONITORING_API")
        fi
        for api in "${api_variants[@]}"; do
          label=$(printf 'k8s %-6s replicas=%s metrics=%-5s persistence=%s%s' "$version" \
            "$replicas" "$metrics" "$persistence" "${api:+ api-versions=$api}")
          args=(template shoal "$CHART" --kube-version "$version" --set persistence.allowEphemeralCluster=true
            --set "replicaCount=$replicas"
            --set "metrics.serviceMonitor.enabled=$metrics"
            --set "persistence.enabled=$persistence")
          monitor=any
          if [[ -n $api ]]; then
            args+=(--api-versions "$api")
            monitor=yes
          fi
          if [[ $metrics == false ]]; then
            monitor=no
          fi
          rendering=$work/rendering.yaml
          details=$work/details.txt
          if ! "$HELM" "${args[@]}" >"$rendering" 2>"$details"; then
            fail "$label: helm template failed" "$details"
          elif ! validate "$rendering" "$version" >"$details" 2>&1; then
            fail "$label: kubernetes-validate" "$details"
          elif ! check_rendering "$rendering" "$replicas" "$persistence" "$monitor" >"$details" 2>&1; then
            fail "$label: rendering" "$details"
          else
            pass "$label"
          fi
        done
      done
    done
  done
done

# refused LABEL SET...: `helm template` with these --set values must fail.
refused() {
  local label=$1 sets=()
  shift
  for value in "$@"; do sets+=(--set "$value"); done
  if "$HELM" template shoal "$CHART" "${sets[@]}" >"$work/refused.yaml" 2>"$work/refused.txt"; then
    echo "helm template succeeded with $*" >"$work/refused.txt"
    fail "$label" "$work/refused.txt"
  else
    pass "$label: $(grep -m1 . "$work/refused.txt" || echo "helm template failed")"
  fi
}
for replicas in "${EVEN_REPLICAS[@]}"; do
  refused "replicas=$replicas (even) is refused" "replicaCount=$replicas"
done
refused "emptyDir volumes for 3 nodes are refused" replicaCount=3 persistence.enabled=false

if [[ -x "$CHECKOV" ]]; then
  skips=()
  if [[ -f "$CHECKOV_SKIPS" ]]; then
    # The first word of each line, comments and blank lines left out.
    mapfile -t skips < <(sed -e 's/#.*//' "$CHECKOV_SKIPS" | awk 'NF {print $1}')
  fi
  skip_list=$(IFS=,; echo "${skips[*]}")
  label="checkov (default values${skip_list:+, skipping $skip_list})"
  checkov_args=(--framework kubernetes --quiet --compact --skip-download
    -f "$work/default.yaml")
  if [[ -n "$skip_list" ]]; then
    checkov_args+=(--skip-check "$skip_list")
  fi
  if ! "$HELM" template shoal "$CHART" --namespace shoal >"$work/default.yaml" 2>"$work/checkov.txt"; then
    fail "$label: helm template failed" "$work/checkov.txt"
  elif "$CHECKOV" "${checkov_args[@]}" >"$work/checkov.txt" 2>&1; then
    pass "$label: $(grep -m1 'Passed checks' "$work/checkov.txt" || echo passed)"
  else
    fail "$label" "$work/checkov.txt"
  fi
else
  echo "skip  checkov: not installed at $CHECKOV (make k8s-venv)"
fi

# 5. The plain manifests (deploy/kubernetes) are the chart's default rendering.
label="deploy/kubernetes/shoal.yaml is the chart's default rendering"
if ! HELM="$HELM" bash scripts/render-manifests.sh "$work/plain.yaml" 2>"$work/plain.txt"; then
  fail "$label: rendering failed" "$work/plain.txt"
elif diff -u deploy/kubernetes/shoal.yaml "$work/plain.yaml" >"$work/plain.txt"; then
  pass "$label"
else
  echo "run scripts/render-manifests.sh after changing the chart" >>"$work/plain.txt"
  fail "$label" "$work/plain.txt"
fi
if "$VALIDATE" --strict --quiet -k 1.31.0 - <deploy/kubernetes/namespace.yaml >"$work/ns.txt" 2>&1; then
  pass "deploy/kubernetes/namespace.yaml is valid"
else
  fail "deploy/kubernetes/namespace.yaml is valid" "$work/ns.txt"
fi

echo "chart-check: $passed passed, $failed failed"
((failed == 0))
