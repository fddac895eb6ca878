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

{{/* The DNS name of ordinal 0, which every pod joins (ordinal 0 itself bootstraps). */}}
{{- define "shoal.seed" -}}
{{- printf "%s-0.%s.%s.svc.cluster.local:%d" (include "shoal.fullname" .) (include "shoal.headless" .) .Release.Namespace (int .Values.ports.grpc) -}}
{{- end -}}

{{- define "shoal.metaVoters" -}}
{{- min (int .Values.replicaCount) 5 -}}
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
{{- if and .Values.router.enabled (lt (int .Values.router.replicaCount) 1) -}}
{{- fail "router.replicaCount must be at least 1 when the router is enabled" -}}
{{- end -}}
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
