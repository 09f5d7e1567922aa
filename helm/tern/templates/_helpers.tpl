{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "tern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of every object: the release name, or release-chart when the release name does not
contain the chart name. Release "tern" gives the names of deploy/k8s (tern-router, tern-node,
tern-node-headless). Suffixed names stay under 63 characters.
*/}}
{{- define "tern.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tern.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tern.routerName" -}}{{ include "tern.fullname" . }}-router{{- end }}
{{- define "tern.nodeName" -}}{{ include "tern.fullname" . }}-node{{- end }}
{{- define "tern.nodeHeadlessName" -}}{{ include "tern.fullname" . }}-node-headless{{- end }}
{{- define "tern.modelsClaimName" -}}
{{- default (printf "%s-models" (include "tern.fullname" .)) .Values.models.pvc.existingClaim }}
{{- end }}

{{/* Labels shared by every object. */}}
{{- define "tern.labels" -}}
helm.sh/chart: {{ include "tern.chart" . }}
app.kubernetes.io/name: {{ include "tern.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tern
{{- end }}

{{/* Selector labels of one component: include "tern.selectorLabels" (list . "node") */}}
{{- define "tern.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "tern.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "tern.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "tern.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Image of the routers: always the CPU image (the router never loads ONNX Runtime). */}}
{{- define "tern.routerImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Image of the nodes: the CUDA image (tag + gpu.image.tagSuffix) when gpu.enabled. */}}
{{- define "tern.nodeImage" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.gpu.enabled -}}
{{- $repo := default .Values.image.repository .Values.gpu.image.repository -}}
{{- $gpuTag := default (printf "%s%s" $tag .Values.gpu.image.tagSuffix) .Values.gpu.image.tag -}}
{{- printf "%s:%s" $repo $gpuTag }}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The nodes' DNS name as the routers resolve it (headless Service, every ready node). */}}
{{- define "tern.nodeDns" -}}
{{- printf "%s.%s.svc.%s:%d" (include "tern.nodeHeadlessName" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.grpc) }}
{{- end }}

{{- define "tern.serviceAccountName" -}}
{{- $root := index . 0 -}}
{{- if $root.Values.serviceAccount.create -}}
{{ include "tern.fullname" $root }}-{{ index . 1 }}
{{- else -}}
{{ default "default" $root.Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds of the nodes: preStop pause + drain timeout + a margin. */}}
{{- define "tern.nodeGracePeriod" -}}
{{- add (int .Values.node.preStopSleepSeconds) (int .Values.node.exitTimeoutSecs) 10 }}
{{- end }}

{{/* OpenTelemetry environment shared by routers and nodes (ConfigMap data lines). */}}
{{- define "tern.tracingEnv" -}}
{{- if .Values.tracing.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ .Values.tracing.endpoint | quote }}
{{- if ne (toString .Values.tracing.sampleRatio) "" }}
OTEL_TRACES_SAMPLER: parentbased_traceidratio
OTEL_TRACES_SAMPLER_ARG: {{ .Values.tracing.sampleRatio | toString | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Service clients reach: the routers', or the nodes' headless one without routers. */}}
{{- define "tern.clientServiceName" -}}
{{- if .Values.router.enabled }}{{ include "tern.routerName" . }}{{ else }}{{ include "tern.nodeHeadlessName" . }}{{ end }}
{{- end }}
