{{/* The cluster store of the routers (README, "Cluster state: memory or etcd"): etcd when
etcd.endpoints is set or the trial etcd is on, otherwise each router's memory. */}}

{{- define "tern.etcdName" -}}{{ include "tern.fullname" . }}-etcd{{- end }}

{{/* --cluster-store value: etcd://host:port[,host:port...], or "" for the memory store. */}}
{{- define "tern.etcdStore" -}}
{{- if .Values.etcd.endpoints }}
{{- printf "etcd://%s" (join "," .Values.etcd.endpoints) }}
{{- else if .Values.etcd.trial.enabled }}
{{- printf "etcd://%s.%s.svc.%s:2379" (include "tern.etcdName" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}
{{- end }}

{{/* Values that render but could not work: stop with the reason. */}}
{{- define "tern.validateEtcd" -}}
{{- if and .Values.etcd.endpoints .Values.etcd.trial.enabled }}
{{- fail "etcd.endpoints and etcd.trial.enabled: set one (an existing etcd, or the trial etcd this chart runs), not both" }}
{{- end }}
{{- if and (include "tern.etcdStore" .) (not .Values.router.enabled) }}
{{- fail "etcd.* holds the routers' shared state: it needs router.enabled=true (nodes do not use etcd)" }}
{{- end }}
{{- if and .Values.etcd.auth.existingSecret .Values.etcd.trial.enabled }}
{{- fail "etcd.auth.existingSecret: the trial etcd runs without authentication, so routers could not log in; use etcd.auth with etcd.endpoints (an etcd with auth enabled)" }}
{{- end }}
{{- if and .Values.etcd.tls.existingSecret .Values.etcd.trial.enabled }}
{{- fail "etcd.tls.existingSecret: the trial etcd serves plain text; use etcd.tls with etcd.endpoints (an etcd serving TLS)" }}
{{- end }}
{{- if and .Values.etcd.tls.existingSecret (not (include "tern.etcdStore" .)) }}
{{- fail "etcd.tls.existingSecret needs etcd.endpoints (the routers' etcd)" }}
{{- end }}
{{- if and .Values.etcd.tls.existingSecret (ne (empty .Values.etcd.tls.certKey) (empty .Values.etcd.tls.keyKey)) }}
{{- fail "etcd.tls.certKey and etcd.tls.keyKey go together: set both (a client certificate) or neither" }}
{{- end }}
{{- if and .Values.etcd.auth.existingSecret (not (include "tern.etcdStore" .)) }}
{{- fail "etcd.auth.existingSecret needs etcd.endpoints (the routers' etcd)" }}
{{- end }}
{{- end }}
