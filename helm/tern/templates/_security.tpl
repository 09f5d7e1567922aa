{{- /*
TLS and bearer tokens (values tls.* and auth.*): the Secrets are mounted read-only as files
and the binaries are given their paths; they re-read them when the kubelet updates a mounted
Secret. Same paths and flags as deploy/k8s/components/{tls,tls-mutual,auth}.
*/ -}}

{{- define "tern.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "tern.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{- define "tern.tlsCaFile" -}}
{{- if .Values.tls.caSecretName }}/etc/tern/tls-ca/ca.crt{{ else }}/etc/tern/tls/ca.crt{{ end }}
{{- end }}

{{/* The name routers and Prometheus verify in node certificates. */}}
{{- define "tern.nodeDomain" -}}
{{- default (printf "%s.%s.svc.%s" (include "tern.nodeHeadlessName" .) .Release.Namespace .Values.clusterDomain) .Values.tls.nodeDomain }}
{{- end }}

{{- define "tern.metricsTls" -}}
{{- if and .Values.tls.enabled .Values.tls.metrics }}true{{ end }}
{{- end }}

{{- define "tern.authPublic" -}}
{{- $public := default list .Values.auth.public }}
{{- if $public }}{{ join "," $public }}{{ else }}none{{ end }}
{{- end }}

{{/* "true" when the metrics group needs a token (Prometheus must send one). */}}
{{- define "tern.metricsProtected" -}}
{{- $public := default list .Values.auth.public }}
{{- if and .Values.auth.enabled (not (has "metrics" $public)) (not (has "*" $public)) }}true{{ end }}
{{- end }}

{{- define "tern.tokenFileSecret" -}}
{{- $root := index . 0 -}}
{{- $s := $root.Values.auth.tokenFileSecret -}}
{{- if and (eq (index . 1) "node") $root.Values.auth.nodeTokenFileSecret.name -}}
{{- $s = $root.Values.auth.nodeTokenFileSecret -}}
{{- end -}}
{{- dict "name" (default (printf "%s-tokens" (include "tern.fullname" $root)) $s.name) "key" $s.key | toJson }}
{{- end }}

{{/* Values that render but could not work: stop with the reason. */}}
{{- define "tern.validateSecurity" -}}
{{- if and .Values.tls.mutual (not .Values.tls.enabled) }}
{{- fail "tls.mutual needs tls.enabled=true (mutual TLS is TLS with client certificates)" }}
{{- end }}
{{- if and .Values.tls.metrics (not .Values.tls.enabled) }}
{{- fail "tls.metrics needs tls.enabled=true (the metrics port uses the same certificate and key)" }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $public := default list .Values.auth.public }}
{{- if not (or (has "health" $public) (has "*" $public)) }}
{{- fail (printf "auth.public must include health (it is %v): the kubelet's startup, liveness and readiness probes carry no token, so without it no pod would ever become ready" $public) }}
{{- end }}
{{- if and (include "tern.metricsProtected" .) .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled (not .Values.metrics.serviceMonitor.tokenSecret.name) }}
{{- fail "auth.public leaves out metrics, so Prometheus needs a token: set metrics.serviceMonitor.tokenSecret.name to a Secret in the ServiceMonitor's namespace holding a token with the metrics group" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Flags of one component: include "tern.securityArgs" (list . "node"|"router"), in the
order the kustomize components tls, tls-mutual and auth append them. */}}
{{- define "tern.securityArgs" -}}
{{- $root := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := $root.Values -}}
{{- if $v.tls.enabled }}
- --grpc-use-ssl=true
- --grpc-server-cert=/etc/tern/tls/tls.crt
- --grpc-server-key=/etc/tern/tls/tls.key
{{- if and $v.tls.metrics (or (eq $component "router") $v.metrics.enabled) }}
- --metrics-use-ssl=true
{{- end }}
{{- if eq $component "router" }}
- --node-tls-ca={{ include "tern.tlsCaFile" $root }}
- --node-tls-domain={{ include "tern.nodeDomain" $root }}
{{- end }}
{{- if $v.tls.mutual }}
- --grpc-use-ssl-mutual=true
- --grpc-root-cert={{ include "tern.tlsCaFile" $root }}
{{- if eq $component "router" }}
- --node-tls-cert=/etc/tern/tls/tls.crt
- --node-tls-key=/etc/tern/tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- if $v.auth.enabled }}
- --auth-token-file=/etc/tern/auth/tokens
- --auth-public={{ include "tern.authPublic" $root }}
{{- if eq $component "router" }}
- --node-token-file=/etc/tern/node-token/token
{{- end }}
{{- end }}
{{- end }}

{{/* Message limits (ConfigMap data lines; 0 leaves the binaries' default). */}}
{{- define "tern.limitsEnv" -}}
{{- $root := index . 0 -}}
{{- $l := $root.Values.limits -}}
{{- if gt (int64 $l.grpcMaxMessageSize) 0 }}
TERN_GRPC_MAX_MESSAGE_SIZE: {{ int64 $l.grpcMaxMessageSize | quote }}
{{- end }}
{{- if gt (int64 $l.grpcMaxConcurrentStreams) 0 }}
TERN_GRPC_MAX_CONCURRENT_STREAMS: {{ int64 $l.grpcMaxConcurrentStreams | quote }}
{{- end }}
{{- if gt (int64 $l.grpcHttp2MaxHeaderListSize) 0 }}
TERN_GRPC_HTTP2_MAX_HEADER_LIST_SIZE: {{ int64 $l.grpcHttp2MaxHeaderListSize | quote }}
{{- end }}
{{- if and (eq (index . 1) "router") (gt (int64 $l.grpcMaxConnectionAgeSecs) 0) }}
TERN_GRPC_MAX_CONNECTION_AGE_SECS: {{ int64 $l.grpcMaxConnectionAgeSecs | quote }}
{{- end }}
{{- if eq (index . 1) "node" }}
{{- if gt (int64 $l.maxTensorBytes) 0 }}
TERN_MAX_TENSOR_BYTES: {{ int64 $l.maxTensorBytes | quote }}
{{- end }}
{{- if gt (int64 $l.maxRequestBytes) 0 }}
TERN_MAX_REQUEST_BYTES: {{ int64 $l.maxRequestBytes | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The args that refer to tern.limitsEnv's variables. */}}
{{- define "tern.limitsArgs" -}}
{{- $root := index . 0 -}}
{{- $l := $root.Values.limits -}}
{{- if gt (int64 $l.grpcMaxMessageSize) 0 }}
- --grpc-max-message-size=$(TERN_GRPC_MAX_MESSAGE_SIZE)
{{- end }}
{{- if gt (int64 $l.grpcMaxConcurrentStreams) 0 }}
- --grpc-max-concurrent-streams=$(TERN_GRPC_MAX_CONCURRENT_STREAMS)
{{- end }}
{{- if gt (int64 $l.grpcHttp2MaxHeaderListSize) 0 }}
- --grpc-http2-max-header-list-size=$(TERN_GRPC_HTTP2_MAX_HEADER_LIST_SIZE)
{{- end }}
{{- if and (eq (index . 1) "router") (gt (int64 $l.grpcMaxConnectionAgeSecs) 0) }}
- --grpc-max-connection-age-secs=$(TERN_GRPC_MAX_CONNECTION_AGE_SECS)
{{- end }}
{{- if eq (index . 1) "node" }}
{{- if gt (int64 $l.maxTensorBytes) 0 }}
- --max-tensor-bytes=$(TERN_MAX_TENSOR_BYTES)
{{- end }}
{{- if gt (int64 $l.maxRequestBytes) 0 }}
- --max-request-bytes=$(TERN_MAX_REQUEST_BYTES)
{{- end }}
{{- end }}
{{- end }}

{{/* volumeMounts of one component (container level). */}}
{{- define "tern.securityMounts" -}}
{{- $root := index . 0 -}}
{{- $v := $root.Values -}}
{{- if $v.tls.enabled }}
- name: tls
  mountPath: /etc/tern/tls
  readOnly: true
{{- if and $v.tls.caSecretName (or $v.tls.mutual (eq (index . 1) "router")) }}
- name: tls-ca
  mountPath: /etc/tern/tls-ca
  readOnly: true
{{- end }}
{{- end }}
{{- if $v.auth.enabled }}
- name: auth-tokens
  mountPath: /etc/tern/auth
  readOnly: true
{{- if eq (index . 1) "router" }}
- name: node-token
  mountPath: /etc/tern/node-token
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* Secret volumes of one component: group-readable (fsGroup) for the non-root user only. */}}
{{- define "tern.securityVolumes" -}}
{{- $root := index . 0 -}}
{{- $v := $root.Values -}}
{{- if $v.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "tern.tlsSecretName" $root }}
    defaultMode: 0440
{{- if and $v.tls.caSecretName (or $v.tls.mutual (eq (index . 1) "router")) }}
- name: tls-ca
  secret:
    secretName: {{ $v.tls.caSecretName }}
    items:
      - key: ca.crt
        path: ca.crt
    defaultMode: 0440
{{- end }}
{{- end }}
{{- if $v.auth.enabled }}
{{- $tokens := include "tern.tokenFileSecret" . | fromJson }}
- name: auth-tokens
  secret:
    secretName: {{ $tokens.name }}
    items:
      - key: {{ $tokens.key }}
        path: tokens
    defaultMode: 0440
{{- if eq (index . 1) "router" }}
- name: node-token
  secret:
    secretName: {{ default (printf "%s-router-token" (include "tern.fullname" $root)) $v.auth.routerToNodeTokenSecret.name }}
    items:
      - key: {{ $v.auth.routerToNodeTokenSecret.key }}
        path: token
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* Startup and liveness probe action of the nodes (see node-statefulset.yaml). */}}
{{- define "tern.nodeLiveProbe" -}}
{{- if not .Values.tls.enabled -}}
grpc:
  port: {{ .Values.ports.grpc }}
{{- else if .Values.metrics.enabled -}}
httpGet:
  path: /v2/health/live
  port: metrics
  {{- if include "tern.metricsTls" . }}
  scheme: HTTPS
  {{- end }}
{{- else -}}
tcpSocket:
  port: grpc
{{- end }}
{{- end }}
