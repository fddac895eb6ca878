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
#      offered, none when metrics are off. These renderings have API keys off: no Secret, no
#      secret volume, no [security] in any config. They have the default NetworkPolicies
#      (networkPolicy.enabled, allowExternal): every workload's pods (StatefulSet, router
#      Deployment) must be selected by a NetworkPolicy with policyType Ingress, every port of
#      their containers must admit any source, and the policies, evaluated as a CNI would, must
#      let every such pod reach the node pods' gRPC port (ingress and, where restricted, egress;
#      Raft and the routers' calls), and allow DNS (port 53, UDP and TCP) where egress is
#      restricted.
#   3. Renders 3 nodes with the router, for each Kubernetes version above and each auth setting
#        off | auth.apiKeys (the chart's Secret) | auth.existingSecret with secretKey keys.txt
#      validated as in 2. For every workload (StatefulSet, router Deployment) the file named by
#      the main container's --config must be in a ConfigMap it mounts, parse as TOML and, with
#      auth on, hold security.api_keys_file = /etc/shoal-auth/SECRETKEY; that container must
#      mount the Secret there read-only, as a directory (a subPath mount would not see a
#      rotation), with mode 0440 (the pod's fsGroup reads it), and the sidecar must not. The
#      chart's Secret holds the keys one per line; with existingSecret no Secret renders. The
#      NetworkPolicies are checked as in 2.
#   4. Renders 3 nodes with the router for each Kubernetes version above, validated as in 2:
#      with networkPolicy.enabled=false, where no NetworkPolicy may render; and locked down
#      (allowExternal=false, clients, metricsFrom, egress.enabled with an extra rule, the
#      ServiceMonitor on), where the checks of 2 hold but that of open ports, and no ingress
#      rule may admit every source. Once more on 1.31.0, locked down with no clients and the
#      sidecar off (the routers' policy then admits nobody).
#   5. Checks that `helm template` refuses, with the expected message: an even replicaCount
#      (2, 4: the chart refuses an even number of Raft voters), emptyDir volumes for 3 nodes,
#      and API keys on with no keys, with both existingSecret and apiKeys, with a key shorter
#      than 16 characters (by the schema, and by the templates when the schema is skipped),
#      with whitespace in a key, with a key starting with '#' (a comment in the keys file), a
#      read-only keys (auth.readOnlyKeys) without a full-access one or with whitespace, a
#      misspelled NetworkPolicy peer in networkPolicy.clients (by the schema), and a
#      terminationGracePeriodSeconds shorter than preStopSleepSeconds + config.handoffTimeoutMs
#      (rounded up to seconds) + config.shutdownGraceSecs + 15.
#      Before that (4b): the node and router containers have a preStop `sleep` of
#      preStopSleepSeconds for Kubernetes 1.30 and later, and none for 1.28.
#   6. When checkov is installed (.venv-k8s, `make k8s-venv`), scans two renderings, the
#      default values and one with API keys (chart's Secret) and the router on (namespace
#      "shoal": the release namespace is the installer's choice), with checkov's Kubernetes
#      checks. Accepted findings are skipped through helm/checkov-skips.txt: one check id per
#      line (e.g. CKV_K8S_43), with the reason for accepting it in a `#` comment on that line
#      or above it; blank lines are ignored.
#   7. Checks that deploy/kubernetes/shoal.yaml, the plain manifests, is what
#      scripts/render-manifests.sh renders from the chart now (API keys on, from the Secret
#      shoal-api-keys that the user creates), that it passes the checks of 3 on Kubernetes
#      1.31.0, and that deploy/kubernetes/namespace.yaml is valid.
#   8. When kubectl is installed, checks that `kubectl kustomize deploy/kubernetes` builds
#      (offline) and that its output is valid on Kubernetes 1.31.0.
#
# Prints one line per check and a closing "N passed, N failed" line; exits non-zero when any
# check failed. Environment: HELM (default .tools/bin/helm, `make helm`), VALIDATE (default
# .venv-k8s/bin/kubernetes-validate), PYTHON (a Python with PyYAML; default the one beside
# VALIDATE), CHECKOV (default .venv-k8s/bin/checkov), CHART (default helm/shoal),
# CHECKOV_SKIPS (default helm/checkov-skips.txt), each relative to the top of the checkout, and
# KUBECTL (default: kubectl on the PATH).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HELM=${HELM:-.tools/bin/helm}
VALIDATE=${VALIDATE:-.venv-k8s/bin/kubernetes-validate}
PYTHON=${PYTHON:-$(dirname "$VALIDATE")/python}
CHECKOV=${CHECKOV:-.venv-k8s/bin/checkov}
CHART=${CHART:-helm/shoal}
CHECKOV_SKIPS=${CHECKOV_SKIPS:-helm/checkov-skips.txt}
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}

readonly REPLICAS=(1 3 5)
readonly EVEN_REPLICAS=(2 4)
readonly BOOLS=(true false)
readonly KUBE_VERSIONS=(1.28.0 1.31.0 1.33.0)
readonly MONITORING_API=monitoring.coreos.com/v1
readonly AUTH_MODES=(off chart existing)
# Test keys for the chart's Secret (never used outside this check).
readonly TEST_KEYS=(check-key-0123456789abcdef check-key-fedcba9876543210)

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
# SERVICEMONITOR AUTH [SECRET SECRETKEY [KEY...]], where SERVICEMONITOR is "yes", "no" or "any",
# AUTH is "off", "chart" (the chart makes Secret SECRET holding the KEYs under SECRETKEY) or
# "existing" (the user's Secret SECRET). NETWORK_POLICY in the environment says what the
# NetworkPolicies must do: "open" (the default: networkPolicy.allowExternal=true), "closed"
# (allowExternal=false) or "off" (none rendered). Prints what is wrong.
check_rendering() {
  NETWORK_POLICY=${NETWORK_POLICY:-open} "$PYTHON" - "$@" <<'PY'
import base64
import os
import posixpath
import re
import sys
import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11: the section is still checked, as text.
    tomllib = None

path, replicas, persistence, monitor, auth = sys.argv[1:6]
secret_name, secret_key = (sys.argv[6:8] + ["", ""])[:2]
keys = sys.argv[8:]
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

# API keys. The chart's Secret exactly when it makes one.
secrets = [d for d in docs if d.get("kind") == "Secret"]
if auth == "chart":
    mine = [d for d in secrets if d["metadata"]["name"] == secret_name]
    if len(secrets) != 1 or not mine:
        errors.append(f"auth.apiKeys given: want exactly Secret {secret_name}, got {[d['metadata']['name'] for d in secrets]}")
    else:
        data = mine[0].get("data") or {}
        if mine[0].get("type") != "Opaque":
            errors.append(f"Secret {secret_name} is of type {mine[0].get('type')}, not Opaque")
        if secret_key not in data:
            errors.append(f"Secret {secret_name} has no key {secret_key} (has {sorted(data)})")
        elif base64.b64decode(data[secret_key]).decode().splitlines() != keys:
            errors.append(f"Secret {secret_name}'s {secret_key} does not hold the keys one per line")
elif secrets:
    errors.append(f"auth={auth}, but the chart renders Secret(s) {[d['metadata']['name'] for d in secrets]}")

config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d.get("kind") == "ConfigMap"}
workloads = [d for d in docs if d.get("kind") in ("StatefulSet", "Deployment")]
for w in workloads:
    name = f"{w['kind']} {w['metadata']['name']}"
    pod = w["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    main, *others = pod["containers"]
    config = [a.split("=", 1)[1] for a in main.get("args") or [] if a.startswith("--config=")]
    if len(config) != 1:
        errors.append(f"{name}: container {main['name']} has no single --config=FILE")
        continue
    directory, file = posixpath.split(config[0])
    mount = [m for m in main.get("volumeMounts") or [] if m["mountPath"] == directory]
    volume = volumes.get(mount[0]["name"], {}) if mount else {}
    text = config_maps.get((volume.get("configMap") or {}).get("name"), {}).get(file)
    if text is None:
        errors.append(f"{name}: {config[0]} is not a file of a ConfigMap mounted at {directory}")
        continue
    if tomllib:
        try:
            security = tomllib.loads(text).get("security")
        except tomllib.TOMLDecodeError as e:
            errors.append(f"{name}: {config[0]} is not TOML: {e}")
            continue
        keys_file = (security or {}).get("api_keys_file")
    else:
        security = re.search(r"^\[security\]$", text, re.M)
        found = re.search(r'^api_keys_file = "([^"]*)"$', text, re.M)
        keys_file = found and found.group(1)
    secret_volumes = [v for v in volumes.values() if "secret" in v]
    auth_mounts = [m for c in pod["containers"] for m in c.get("volumeMounts") or []
                   if m["name"] in {v["name"] for v in secret_volumes}]
    if auth == "off":
        if security:
            errors.append(f"{name}: auth off, but {config[0]} has a [security] section")
        if secret_volumes or auth_mounts:
            errors.append(f"{name}: auth off, but the pod mounts a Secret")
        continue
    wanted = f"/etc/shoal-auth/{secret_key}"
    if keys_file != wanted:
        errors.append(f"{name}: {config[0]} has security.api_keys_file = {keys_file!r}, not {wanted!r}")
    keys_volume = [v for v in secret_volumes if v["secret"].get("secretName") == secret_name]
    if not keys_volume:
        errors.append(f"{name}: no volume of Secret {secret_name}")
        continue
    keys_volume = keys_volume[0]
    mode = keys_volume["secret"].get("defaultMode")
    if mode != 0o440:
        errors.append(f"{name}: Secret volume mode {oct(mode) if isinstance(mode, int) else mode!r}, want 0o440")
    items = keys_volume["secret"].get("items")
    if items is not None and {"key": secret_key, "path": secret_key} not in items:
        errors.append(f"{name}: the Secret volume does not project {secret_key} as {secret_key}")
    mounted = [m for m in main.get("volumeMounts") or [] if m["name"] == keys_volume["name"]]
    if len(mounted) != 1 or mounted[0]["mountPath"] != "/etc/shoal-auth":
        errors.append(f"{name}: container {main['name']} does not mount Secret {secret_name} at /etc/shoal-auth")
    elif "subPath" in mounted[0] or "subPathExpr" in mounted[0]:
        errors.append(f"{name}: the keys are a subPath mount, which never sees a rotation")
    elif mounted[0].get("readOnly") is not True:
        errors.append(f"{name}: the keys mount is not readOnly")
    for c in others:
        if any(m["name"] == keys_volume["name"] for m in c.get("volumeMounts") or []):
            errors.append(f"{name}: container {c['name']} mounts the API keys too")
if auth != "off" and not workloads:
    errors.append("no workload in the rendering")

# NetworkPolicies, evaluated as a CNI would for pods of the release's namespace. A peer with a
# namespaceSelector or an ipBlock is taken to match none of them (their namespace's labels are
# unknown here), which can only make a required connection fail, never pass.
network_policy = os.environ["NETWORK_POLICY"]
policies = [d for d in docs if d.get("kind") == "NetworkPolicy"]

def namespace(doc):
    return (doc.get("metadata") or {}).get("namespace")

def selects(selector, labels):
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if ((op == "In" and labels.get(key) not in values)
                or (op == "NotIn" and key in labels and labels[key] in values)
                or (op == "Exists" and key not in labels)
                or (op == "DoesNotExist" and key in labels)):
            return False
    return True

def policy_types(policy):
    spec = policy.get("spec") or {}
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))

def port_allowed(rule, port, protocol, names):
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        number = names.get(p["port"]) if isinstance(p.get("port"), str) else p.get("port")
        if number is None and "port" not in p:
            return True
        if number is not None and number <= port <= p.get("endPort", number):
            return True
    return False

def allowed(direction, pod, ns, peer_labels, port, protocol, names):
    """Whether pod (labels) admits, for direction Ingress, or may make, for Egress, a connection
    with a pod of labels peer_labels in the same namespace on port/protocol; names maps the
    target pod's port names to numbers."""
    field, peers_field = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    applying = [p for p in policies if namespace(p) == ns
                and selects((p.get("spec") or {}).get("podSelector"), pod)
                and direction in policy_types(p)]
    if not applying:
        return True
    for p in applying:
        for rule in p["spec"].get(field) or []:
            peers = rule.get(peers_field)
            from_peer = not peers or any(
                "podSelector" in q and "namespaceSelector" not in q and "ipBlock" not in q
                and selects(q["podSelector"], peer_labels) for q in peers)
            if from_peer and port_allowed(rule, port, protocol, names):
                return True
    return False

def pod_ports(w):
    pod = w["spec"]["template"]["spec"]
    ports = [(c.get("name"), c["containerPort"], c.get("protocol", "TCP"))
             for ct in pod["containers"] for c in ct.get("ports") or []]
    return ports, {name: number for name, number, _ in ports if name}

if network_policy == "off":
    if policies:
        errors.append(f"networkPolicy.enabled=false, but NetworkPolicies render: {[namespace(p) + '/' + p['metadata']['name'] for p in policies]}")
else:
    if not policies:
        errors.append("networkPolicy.enabled=true, but no NetworkPolicy renders")
    nodes = [w for w in workloads if w["kind"] == "StatefulSet"]
    for w in workloads:
        name = f"{w['kind']} {w['metadata']['name']}"
        labels = w["spec"]["template"]["metadata"].get("labels") or {}
        ns = namespace(w)
        mine = [p for p in policies if namespace(p) == ns
                and selects((p.get("spec") or {}).get("podSelector"), labels)]
        if not any("Ingress" in policy_types(p) for p in mine):
            errors.append(f"{name}: its pods are selected by no NetworkPolicy with policyType Ingress")
            continue
        ports, names = pod_ports(w)
        # Every pod (node or router) must reach every node's gRPC port: Raft and forwarding
        # between nodes, the routers' calls.
        for node in nodes:
            node_labels = node["spec"]["template"]["metadata"].get("labels") or {}
            node_ports, node_names = pod_ports(node)
            grpc = [n for pname, n, _ in node_ports if pname == "grpc"]
            if not grpc:
                errors.append(f"StatefulSet {node['metadata']['name']}: no port named grpc")
                continue
            if not allowed("Ingress", node_labels, ns, labels, grpc[0], "TCP", node_names):
                errors.append(f"{name}: the NetworkPolicies keep its pods from node pods' gRPC port {grpc[0]} (ingress)")
            if not allowed("Egress", labels, ns, node_labels, grpc[0], "TCP", node_names):
                errors.append(f"{name}: the NetworkPolicies keep its pods from node pods' gRPC port {grpc[0]} (egress)")
        if any("Egress" in policy_types(p) for p in mine):
            dns = [r for p in mine for r in (p["spec"].get("egress") or []) if not r.get("to")]
            for protocol in ("UDP", "TCP"):
                if not any(port_allowed(r, 53, protocol, {}) for r in dns):
                    errors.append(f"{name}: egress is restricted, but DNS (port 53/{protocol}) is not allowed to any address")
        if network_policy == "open":
            # allowExternal: every port of the pod takes any source.
            open_rules = [r for p in mine if "Ingress" in policy_types(p)
                          for r in p["spec"].get("ingress") or [] if not r.get("from")]
            for pname, number, protocol in ports:
                if not any(port_allowed(r, number, protocol, names) for r in open_rules):
                    errors.append(f"{name}: port {pname or number} ({number}/{protocol}) is closed to clients, though allowExternal is on")
    if network_policy == "closed":
        for p in policies:
            for i, rule in enumerate((p.get("spec") or {}).get("ingress") or []):
                if not rule.get("from"):
                    errors.append(f"NetworkPolicy {p['metadata']['name']}: ingress rule {i} admits every source, though allowExternal is off")
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
          elif ! check_rendering "$rendering" "$replicas" "$persistence" "$monitor" off >"$details" 2>&1; then
            fail "$label: rendering" "$details"
          else
            pass "$label"
          fi
        done
      done
    done
  done
done

# 3. Nodes and routers with API keys off, from the chart's Secret, and from the user's.
for version in "${KUBE_VERSIONS[@]}"; do
  for auth in "${AUTH_MODES[@]}"; do
    label=$(printf 'k8s %-6s replicas=3 router=true auth=%s' "$version" "$auth")
    args=(template shoal "$CHART" --kube-version "$version" --set replicaCount=3
      --set router.enabled=true)
    expected=(off)
    case $auth in
      chart)
        args+=(--set auth.enabled=true --set "auth.apiKeys={$(IFS=,; echo "${TEST_KEYS[*]}")}")
        expected=(chart shoal-api-keys api-keys "${TEST_KEYS[@]}")
        ;;
      existing)
        args+=(--set auth.enabled=true --set auth.existingSecret=my-keys
          --set auth.secretKey=keys.txt)
        expected=(existing my-keys keys.txt)
        ;;
    esac
    rendering=$work/rendering.yaml
    details=$work/details.txt
    if ! "$HELM" "${args[@]}" >"$rendering" 2>"$details"; then
      fail "$label: helm template failed" "$details"
    elif ! validate "$rendering" "$version" >"$details" 2>&1; then
      fail "$label: kubernetes-validate" "$details"
    elif ! check_rendering "$rendering" 3 true no "${expected[@]}" >"$details" 2>&1; then
      fail "$label: rendering" "$details"
    else
      pass "$label"
    fi
  done
done

# 4. NetworkPolicies off, and locked down (allowExternal=false) with egress restricted.
cat >"$work/locked.yaml" <<'YAML'
router:
  enabled: true
metrics:
  serviceMonitor:
    enabled: true
networkPolicy:
  allowExternal: false
  clients:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: my-app
    - podSelector:
        matchLabels:
          app: feast
  metricsFrom:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: monitoring
      podSelector:
        matchLabels:
          app.kubernetes.io/name: prometheus
  egress:
    enabled: true
    extra:
      - to:
          - ipBlock:
              cidr: 10.0.5.0/24
        ports:
          - port: 8001
            protocol: TCP
YAML
# network_policy_rendering LABEL VERSION MODE MONITOR ARG...: renders 3 nodes with ARGs,
# validates on VERSION and checks it with NETWORK_POLICY=MODE.
network_policy_rendering() {
  local label=$1 version=$2 mode=$3 monitor=$4
  shift 4
  local rendering=$work/rendering.yaml details=$work/details.txt
  if ! "$HELM" template shoal "$CHART" --kube-version "$version" --set replicaCount=3 "$@" \
    >"$rendering" 2>"$details"; then
    fail "$label: helm template failed" "$details"
  elif ! validate "$rendering" "$version" >"$details" 2>&1; then
    fail "$label: kubernetes-validate" "$details"
  elif ! NETWORK_POLICY=$mode check_rendering "$rendering" 3 true "$monitor" off >"$details" 2>&1; then
    fail "$label: rendering" "$details"
  else
    pass "$label"
  fi
}
for version in "${KUBE_VERSIONS[@]}"; do
  network_policy_rendering "$(printf 'k8s %-6s replicas=3 router=true networkPolicy=off' "$version")" \
    "$version" off no --set router.enabled=true --set networkPolicy.enabled=false
  network_policy_rendering "$(printf 'k8s %-6s replicas=3 router=true networkPolicy=locked (clients, metricsFrom, egress) api-versions=%s' \
    "$version" "$MONITORING_API")" "$version" closed yes -f "$work/locked.yaml" --api-versions "$MONITORING_API"
done
network_policy_rendering "k8s 1.31.0 replicas=3 router=true sidecar=false networkPolicy=locked (no clients)" \
  1.31.0 closed no --set router.enabled=true --set sidecar.enabled=false \
  --set networkPolicy.allowExternal=false

# 4b. The preStop sleep (the images have no shell, so a native `sleep` action): in the node and
#     router containers for Kubernetes 1.30 and later, none before (the field does not exist).
for version in "${KUBE_VERSIONS[@]}"; do
  label=$(printf 'k8s %-6s preStop sleep in the node and router containers' "$version")
  if ! "$HELM" template shoal "$CHART" --kube-version "$version" --set router.enabled=true \
    >"$work/prestop.yaml" 2>"$work/details.txt"; then
    fail "$label: helm template failed" "$work/details.txt"
    continue
  fi
  if ! "$PYTHON" - "$work/prestop.yaml" "$version" >"$work/details.txt" 2>&1 <<'PY'
import sys
import yaml

path, version = sys.argv[1:3]
major, minor = (int(x) for x in version.split(".")[:2])
wanted = 5 if (major, minor) >= (1, 30) else None
errors = []
with open(path) as f:
    for doc in yaml.safe_load_all(f):
        if not doc or doc.get("kind") not in ("StatefulSet", "Deployment"):
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            if c["name"] not in ("shoal", "router"):
                continue
            got = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
            if got != wanted:
                errors.append(f"{doc['kind']} container {c['name']}: preStop sleep {got}, want {wanted}")
print("\n".join(errors))
sys.exit(1 if errors else 0)
PY
  then
    fail "$label" "$work/details.txt"
  else
    pass "$label"
  fi
done

# 5. refused LABEL PATTERN ARG...: `helm template` with these arguments must fail with a message
# that matches the extended regular expression PATTERN.
refused() {
  local label=$1 pattern=$2
  shift 2
  if "$HELM" template shoal "$CHART" "$@" >"$work/refused.yaml" 2>"$work/refused.txt"; then
    echo "helm template succeeded with $*" >"$work/refused.txt"
    fail "$label" "$work/refused.txt"
  elif ! grep -qE -- "$pattern" "$work/refused.txt"; then
    echo "expected a message matching: $pattern" >>"$work/refused.txt"
    fail "$label: refused for another reason" "$work/refused.txt"
  else
    pass "$label: $(grep -m1 -E -- "$pattern" "$work/refused.txt")"
  fi
}
for replicas in "${EVEN_REPLICAS[@]}"; do
  refused "replicas=$replicas (even) is refused" "replicaCount must be odd" \
    --set "replicaCount=$replicas"
done
refused "emptyDir volumes for 3 nodes are refused" "persistence.enabled=false with more" \
  --set replicaCount=3 --set persistence.enabled=false
refused "API keys on without keys are refused" "auth.enabled=true needs the keys" \
  --set auth.enabled=true
refused "both auth.existingSecret and auth.apiKeys are refused" "are both set" \
  --set auth.enabled=true --set auth.existingSecret=my-keys --set "auth.apiKeys={${TEST_KEYS[0]}}"
refused "a 15-character API key is refused by the schema" "auth.apiKeys.0: String length" \
  --set auth.enabled=true --set "auth.apiKeys={0123456789abcde}"
refused "a 15-character API key is refused by the templates" "auth.apiKeys\[0\] is 15 characters" \
  --skip-schema-validation --set auth.enabled=true --set "auth.apiKeys={0123456789abcde}"
refused "an API key with whitespace is refused" "auth.apiKeys\[1\] contains whitespace" \
  --set auth.enabled=true --set "auth.apiKeys={${TEST_KEYS[0]},0123456789 abcdef}"
refused "read-only keys without a full-access key are refused" \
  "auth.readOnlyKeys needs auth.apiKeys too" \
  --set auth.enabled=true --set "auth.readOnlyKeys={${TEST_KEYS[0]}}"
refused "a read-only key with whitespace is refused" "auth.readOnlyKeys\[0\] contains whitespace" \
  --set auth.enabled=true --set "auth.apiKeys={${TEST_KEYS[0]}}" \
  --set "auth.readOnlyKeys={0123456789 abcdef}"
refused "an API key starting with '#' is refused" "auth.apiKeys\[0\] starts with '#'" \
  --set auth.enabled=true --set "auth.apiKeys={#${TEST_KEYS[0]}}"
refused "a grace period shorter than preStop sleep + hand-off + drain is refused" \
  "terminationGracePeriodSeconds 20 is too short" --set terminationGracePeriodSeconds=20
refused "a longer request drain raises the grace period it needs" \
  "terminationGracePeriodSeconds 60 is too short" --set config.shutdownGraceSecs=50
refused "a misspelled NetworkPolicy peer is refused by the schema" \
  "networkPolicy.clients.0: Additional property podSelectors is not allowed" \
  --set networkPolicy.allowExternal=false --set 'networkPolicy.clients[0].podSelectors.app=x'

# 6. checkov, with the accepted skips.
if [[ -x "$CHECKOV" ]]; then
  skips=()
  if [[ -f "$CHECKOV_SKIPS" ]]; then
    # The first word of each line, comments and blank lines left out.
    mapfile -t skips < <(sed -e 's/#.*//' "$CHECKOV_SKIPS" | awk 'NF {print $1}')
  fi
  skip_list=$(IFS=,; echo "${skips[*]}")
  label="checkov (default values; API keys and router on${skip_list:+; skipping $skip_list})"
  checkov_args=(--framework kubernetes --quiet --compact --skip-download
    -f "$work/default.yaml" -f "$work/auth.yaml")
  if [[ -n "$skip_list" ]]; then
    checkov_args+=(--skip-check "$skip_list")
  fi
  if ! "$HELM" template shoal "$CHART" --namespace shoal >"$work/default.yaml" 2>"$work/checkov.txt" ||
    ! "$HELM" template shoal "$CHART" --namespace shoal --set router.enabled=true \
      --set auth.enabled=true --set "auth.apiKeys={${TEST_KEYS[0]}}" >"$work/auth.yaml" 2>"$work/checkov.txt"; then
    fail "$label: helm template failed" "$work/checkov.txt"
  elif "$CHECKOV" "${checkov_args[@]}" >"$work/checkov.txt" 2>&1; then
    pass "$label: $(grep -m1 'Passed checks' "$work/checkov.txt" || echo passed)"
  else
    fail "$label" "$work/checkov.txt"
  fi
else
  echo "skip  checkov: not installed at $CHECKOV (make k8s-venv)"
fi

# 7. The plain manifests (deploy/kubernetes) are what scripts/render-manifests.sh renders.
label="deploy/kubernetes/shoal.yaml is scripts/render-manifests.sh's rendering"
if ! HELM="$HELM" bash scripts/render-manifests.sh "$work/plain.yaml" 2>"$work/plain.txt"; then
  fail "$label: rendering failed" "$work/plain.txt"
elif diff -u deploy/kubernetes/shoal.yaml "$work/plain.yaml" >"$work/plain.txt"; then
  pass "$label"
else
  echo "run scripts/render-manifests.sh after changing the chart" >>"$work/plain.txt"
  fail "$label" "$work/plain.txt"
fi
label="deploy/kubernetes/shoal.yaml is valid and reads its API keys from Secret shoal-api-keys"
if ! validate deploy/kubernetes/shoal.yaml 1.31.0 >"$work/plain.txt" 2>&1; then
  fail "$label: kubernetes-validate" "$work/plain.txt"
elif ! check_rendering deploy/kubernetes/shoal.yaml 3 true no existing shoal-api-keys api-keys \
  >"$work/plain.txt" 2>&1; then
  fail "$label" "$work/plain.txt"
else
  pass "$label"
fi
if "$VALIDATE" --strict --quiet -k 1.31.0 - <deploy/kubernetes/namespace.yaml >"$work/ns.txt" 2>&1; then
  pass "deploy/kubernetes/namespace.yaml is valid"
else
  fail "deploy/kubernetes/namespace.yaml is valid" "$work/ns.txt"
fi

# 8. The kustomization builds offline.
if [[ -n "$KUBECTL" && -x "$KUBECTL" ]]; then
  label="kubectl kustomize deploy/kubernetes builds a valid rendering"
  if ! "$KUBECTL" kustomize deploy/kubernetes >"$work/kustomized.yaml" 2>"$work/kustomize.txt"; then
    fail "$label" "$work/kustomize.txt"
  elif ! validate "$work/kustomized.yaml" 1.31.0 >"$work/kustomize.txt" 2>&1; then
    fail "$label: kubernetes-validate" "$work/kustomize.txt"
  else
    pass "$label"
  fi
else
  echo "skip  kubectl kustomize: no kubectl (set KUBECTL)"
fi

echo "chart-check: $passed passed, $failed failed"
((failed == 0))
