{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "shoal.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "shoal.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.headless" -}}
{{- printf "%s-headless" (include "shoal.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.selector" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "shoal.routerSelector" -}}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}

{{/* The DNS name of ordinal 0, which every pod joins (ordinal 0 itself bootstraps). */}}
{{- define "shoal.seed" -}}
{{- printf "%s-0.%s.%s.svc.cluster.local:%d" (include "shoal.fullname" .) (include "shoal.headless" .) .Release.Namespace (int .Values.ports.grpc) -}}
{{- end -}}

{{/* Fixed by a value of its own (not derived from replicaCount), so that scaling does not
     change the ConfigMap and roll every pod. */}}
{{- define "shoal.metaVoters" -}}
{{- min (int .Values.replicaCount) (int .Values.config.metaVoters) -}}
{{- end -}}

{{/* Render-time checks of values that would make a broken cluster. */}}
{{- define "shoal.validate" -}}
{{- $n := int .Values.replicaCount -}}
{{- if or (lt $n 1) (eq (mod $n 2) 0) -}}
{{- fail (printf "replicaCount must be odd (1, 3, 5, 7): the meta group needs an odd number of voters to keep a majority; got %d" $n) -}}
{{- end -}}
{{- if gt $n 7 -}}
{{- fail (printf "replicaCount %d: this chart supports up to 7 nodes" $n) -}}
{{- end -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $sleep := int .Values.preStopSleepSeconds -}}
{{- $handoff := div (add (int .Values.config.handoffTimeoutMs) 999) 1000 -}}
{{- $drain := int .Values.config.shutdownGraceSecs -}}
{{- $needed := add $sleep $handoff $drain 15 -}}
{{- if lt $grace $needed -}}
{{- fail (printf "terminationGracePeriodSeconds %d is too short: a stopping node needs preStopSleepSeconds (%d) + its leadership hand-off (%d s) + its request drain (%d s) + 15 s (reconcile loop, CPU pools, flush); give it at least %d" $grace $sleep $handoff $drain $needed) -}}
{{- end -}}
{{- if and (not .Values.persistence.enabled) (gt $n 1) (not .Values.persistence.allowEphemeralCluster) -}}
{{- fail "persistence.enabled=false with more than one node: a restarted pod comes back empty (ordinal 0 would found a second cluster, the others cannot rejoin under their ids); set persistence.allowEphemeralCluster=true only for throwaway clusters" -}}
{{- end -}}
{{- $v := int .Values.config.metaVoters -}}
{{- if or (lt $v 1) (gt $v 7) (eq (mod $v 2) 0) -}}
{{- fail (printf "config.metaVoters must be odd, 1 to 7; got %d" $v) -}}
{{- end -}}
{{- if and .Values.router.enabled (lt (int .Values.router.replicaCount) 1) -}}
{{- fail "router.replicaCount must be at least 1 when the router is enabled" -}}
{{- end -}}
{{- with .Values.auth -}}
{{- if .enabled -}}
{{- if and .existingSecret (or .apiKeys .readOnlyKeys) -}}
{{- fail "auth.existingSecret and auth.apiKeys are both set: give the keys either in a Secret of your own (existingSecret) or to the chart (apiKeys), not both" -}}
{{- end -}}
{{- if and .readOnlyKeys (not .apiKeys) (not .existingSecret) -}}
{{- fail "auth.readOnlyKeys needs auth.apiKeys too: the keys file's first key is the full-access one nodes and routers send each other" -}}
{{- end -}}
{{- if not (or .existingSecret .apiKeys) -}}
{{- fail "auth.enabled=true needs the keys: set auth.existingSecret to a Secret you created (kubectl create secret generic NAME --from-file=api-keys=FILE) or give auth.apiKeys" -}}
{{- end -}}
{{- end -}}
{{- /* Checked even when auth is off: a bad key should not wait to be found until it is. The
       messages give the key's position, never the key, since they end up in CI logs. */ -}}
{{- range $list := list "apiKeys" "readOnlyKeys" -}}
{{- range $i, $key := (get $.Values.auth $list | default list) -}}
{{- $key = toString $key | trim -}}
{{- if lt (len $key) 16 -}}
{{- fail (printf "auth.%s[%d] is %d characters long: API keys need at least 16 (e.g. openssl rand -hex 32)" $list $i (len $key)) -}}
{{- end -}}
{{- if gt (len $key) 512 -}}
{{- fail (printf "auth.%s[%d] is %d characters long: API keys have at most 512" $list $i (len $key)) -}}
{{- end -}}
{{- if not (regexMatch "^[!-~]+$" $key) -}}
{{- fail (printf "auth.%s[%d] contains whitespace or a character outside printable ASCII: it could not be sent in an HTTP header" $list $i) -}}
{{- end -}}
{{- if hasPrefix "#" $key -}}
{{- fail (printf "auth.%s[%d] starts with '#': the keys file would read it as a comment" $list $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret that holds the API keys file: the user's, or the one the chart makes. */}}
{{- define "shoal.authSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-api-keys" (include "shoal.fullname" .)) -}}
{{- end -}}

{{/* The [security] section of nodes' and routers' config when auth is on; empty when off. */}}
{{- define "shoal.securityConfig" -}}
{{- if .Values.auth.enabled -}}
[security]
api_keys_file = "/etc/shoal-auth/{{ .Values.auth.secretKey }}"
reload_secs = {{ int .Values.auth.reloadSecs }}
{{- end -}}
{{- end -}}

{{/* The API keys volume: the whole Secret as a directory, not a subPath mount, so that the
     kubelet's updates of a rotated Secret reach the file. Group-readable: the Secret's
     files belong to root and the pod's fsGroup (10001), the container's group. */}}
{{- define "shoal.authVolume" -}}
- name: api-keys
  secret:
    secretName: {{ include "shoal.authSecret" . }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.secretKey }}
        path: {{ .Values.auth.secretKey }}
{{- end -}}

{{- define "shoal.authVolumeMount" -}}
- name: api-keys
  mountPath: /etc/shoal-auth
  readOnly: true
{{- end -}}

{{- define "shoal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shoal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The inference sidecar container, for node pods and router pods. */}}
{{- define "shoal.sidecarContainer" -}}
- name: inference
  image: "{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.sidecar.image.pullPolicy }}
  args:
    - --model-repository={{ .Values.sidecar.modelRepository }}
    - --grpc=127.0.0.1:{{ .Values.sidecar.ports.grpc }}
    - --http=0.0.0.0:{{ .Values.sidecar.ports.http }}
    {{- range .Values.sidecar.args }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: infer-http
      containerPort: {{ .Values.sidecar.ports.http }}
  startupProbe:
    httpGet:
      path: /v2/health/ready
      port: infer-http
    periodSeconds: 2
    failureThreshold: 60
  livenessProbe:
    httpGet:
      path: /v2/health/live
      port: infer-http
    periodSeconds: 10
  readinessProbe:
    httpGet:
      path: /v2/health/ready
      port: infer-http
    periodSeconds: 5
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 12 }}
  securityContext:
    {{- include "shoal.containerSecurityContext" . | nindent 12 }}
{{- end -}}

{{/* The ports clients use on a node or router pod: gRPC, HTTP and the sidecar's HTTP. */}}
{{- define "shoal.networkPolicyClientPorts" -}}
- port: {{ .Values.ports.grpc }}
  protocol: TCP
{{ include "shoal.networkPolicyMetricsPorts" . }}
{{- end -}}

{{/* The HTTP ports of a node or router pod (/metrics; the sidecar's shoal_sidecar_*). */}}
{{- define "shoal.networkPolicyMetricsPorts" -}}
- port: {{ .Values.ports.http }}
  protocol: TCP
{{- if .Values.sidecar.enabled }}
- port: {{ .Values.sidecar.ports.http }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* Ingress rules for clients and Prometheus, the same for nodes and routers: any source with
     networkPolicy.allowExternal, else networkPolicy.clients and (HTTP ports) metricsFrom.
     Empty when neither is given: a rule with no `from` would admit every source. */}}
{{- define "shoal.networkPolicyClientRules" -}}
{{- with .Values.networkPolicy -}}
{{- if .allowExternal -}}
# Clients from anywhere (allowExternal).
- ports:
    {{- include "shoal.networkPolicyClientPorts" $ | nindent 4 }}
{{- else -}}
{{- with .clients }}
# Clients (networkPolicy.clients).
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    {{- include "shoal.networkPolicyClientPorts" $ | nindent 4 }}
{{- end }}
{{- with .metricsFrom }}
# Prometheus and other readers of the HTTP ports (networkPolicy.metricsFrom).
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    {{- include "shoal.networkPolicyMetricsPorts" $ | nindent 4 }}
{{- end }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Egress rules of nodes and routers (networkPolicy.egress.enabled): DNS, the release's
     nodes on gRPC, and networkPolicy.egress.extra. */}}
{{- define "shoal.networkPolicyEgressRules" -}}
# DNS, wherever the cluster's resolver runs.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# The release's nodes (Raft, replication, forwarding; the routers' calls).
- to:
    - podSelector:
        matchLabels:
          {{- include "shoal.selector" . | nindent 10 }}
  ports:
    - port: {{ .Values.ports.grpc }}
      protocol: TCP
{{- with .Values.networkPolicy.egress.extra }}
# networkPolicy.egress.extra
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The preStop hook of node and router containers: a native sleep (Kubernetes 1.30+). */}}
{{- define "shoal.preStop" -}}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ int .Values.preStopSleepSeconds }}
{{- end }}
{{- end -}}
