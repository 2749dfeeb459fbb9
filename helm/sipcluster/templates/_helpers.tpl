{{/*
Names, labels and the pieces shared by the edge and worker pod templates.
*/}}

{{- define "sipcluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix; component names add at most "-worker" (7 chars)
and pod names an ordinal or a hash, so keep the prefix at 40 to stay within
the 63-character label and node-id limits. */}}
{{- define "sipcluster.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sipcluster.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sipcluster.edge.name" -}}{{ include "sipcluster.fullname" . }}-edge{{- end }}
{{- define "sipcluster.worker.name" -}}{{ include "sipcluster.fullname" . }}-worker{{- end }}
{{- define "sipcluster.etcd.name" -}}{{ include "sipcluster.fullname" . }}-etcd{{- end }}

{{/* Common labels; call with (dict "root" $ "component" "edge"). */}}
{{- define "sipcluster.labels" -}}
helm.sh/chart: {{ include "sipcluster.chart" .root }}
{{ include "sipcluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: sipcluster
{{- end }}

{{- define "sipcluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sipcluster.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "sipcluster.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sipcluster.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sipcluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "sipcluster.nonceSecretName" -}}
{{- default (printf "%s-nonce" (include "sipcluster.fullname" .)) .Values.worker.nonceSecret.existingSecret }}
{{- end }}

{{/* "host:port" with IPv6 literals bracketed. */}}
{{- define "sipcluster.hostport" -}}
{{- if and (contains ":" .host) (not (hasPrefix "[" .host)) }}[{{ .host }}]:{{ .port }}{{ else }}{{ .host }}:{{ .port }}{{ end }}
{{- end }}

{{/* The worker drain time as a whole number of seconds, rounded up. */}}
{{- define "sipcluster.worker.drainSeconds" -}}
{{- $drain := 32.0 }}
{{- if hasKey .Values.config.worker "drain_timeout" }}{{ $drain = .Values.config.worker.drain_timeout }}{{ end }}
{{- ceil $drain | int }}
{{- end }}

{{/* terminationGracePeriodSeconds of workers: at least preStop + drain. */}}
{{- define "sipcluster.worker.gracePeriod" -}}
{{- $floor := add (int .Values.worker.preStopSleepSeconds) (include "sipcluster.worker.drainSeconds" . | int) }}
{{- if kindIs "invalid" .Values.worker.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else if lt (int .Values.worker.terminationGracePeriodSeconds) $floor }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%v) must be at least worker.preStopSleepSeconds + config.worker.drain_timeout (%d): Kubernetes would kill workers while they drain" .Values.worker.terminationGracePeriodSeconds $floor) }}
{{- else }}
{{- int .Values.worker.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The address edges write in Via and Record-Route. */}}
{{- define "sipcluster.edge.advertise" -}}
{{- if .Values.edge.advertise }}
{{- .Values.edge.advertise }}
{{- else if eq .Values.edge.mode "daemonset" }}
{{- "$(HOST_IP)" }}
{{- else if .Values.edge.service.loadBalancerIP }}
{{- .Values.edge.service.loadBalancerIP }}
{{- else }}
{{- fail "edge.mode=deployment needs edge.advertise (the load balancer's public address or DNS name) or edge.service.loadBalancerIP: SIP peers must be able to send in-dialog requests to the address in Record-Route" }}
{{- end }}
{{- end }}

{{/* edge.listen as SIPCLUSTER_EDGE_LISTEN (comma-separated). */}}
{{- define "sipcluster.edge.listen" -}}
{{- $sip := .Values.edge.sip }}
{{- $out := list }}
{{- if $sip.udp }}{{ $out = append $out (printf "udp:%s" (include "sipcluster.hostport" (dict "host" .Values.edge.bindAddress "port" $sip.port))) }}{{ end }}
{{- if $sip.tcp }}{{ $out = append $out (printf "tcp:%s" (include "sipcluster.hostport" (dict "host" .Values.edge.bindAddress "port" $sip.port))) }}{{ end }}
{{- if $sip.tls.enabled }}{{ $out = append $out (printf "tls:%s" (include "sipcluster.hostport" (dict "host" .Values.edge.bindAddress "port" $sip.tls.port))) }}{{ end }}
{{- if $sip.wss.enabled }}{{ $out = append $out (printf "wss:%s" (include "sipcluster.hostport" (dict "host" .Values.edge.bindAddress "port" $sip.wss.port))) }}{{ end }}
{{- if not $out }}{{ fail "edge.sip: enable at least one of udp, tcp, tls, wss" }}{{ end }}
{{- join "," $out }}
{{- end }}

{{/* etcd client URLs for [cluster] etcd. */}}
{{- define "sipcluster.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "bundled" }}
{{- $name := include "sipcluster.etcd.name" . }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s-headless.%s.svc:2379" $name $i $name $.Release.Namespace) }}
{{- end }}
{{- toJson $urls }}
{{- else }}
{{- if not .Values.etcd.external.endpoints }}{{ fail "etcd.mode=external needs etcd.external.endpoints" }}{{ end }}
{{- toJson .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/* One TOML value. Helm reads numbers from values files as floats, so whole
numbers are written as integers (the config accepts integers for float
fields, not the other way round); strings and string lists are JSON, which is
valid TOML for them. */}}
{{- define "sipcluster.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}{{ toJson . }}
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/* Downward-API and node-identity environment shared by edges and workers;
call with (dict "root" $ "role" "edge"). */}}
{{- define "sipcluster.nodeEnv" -}}
{{- $v := .root.Values -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
# Pod names are unique and stable for StatefulSet workers: the member id in
# etcd and the shard name in traces and metrics.
- name: SIPCLUSTER_CLUSTER_NODE_ID
  value: "$(POD_NAME)"
{{- include "sipcluster.etcdAuthEnv" .root }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "%s-%s" $v.otel.serviceName .role | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ include "sipcluster.otelResource" . | quote }}
{{- if $v.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
{{- else }}
- name: OTEL_TRACES_EXPORTER
  value: "none"
{{- end }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.otel.sampler | quote }}
{{- if $v.otel.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $v.otel.samplerArg | quote }}
{{- end }}
{{- end }}

{{/* etcd user and password from the auth Secret (external etcd with auth):
nodes and the helm test alike. */}}
{{- define "sipcluster.etcdAuthEnv" -}}
{{- $v := .Values -}}
{{- if and (eq $v.etcd.mode "external") $v.etcd.external.auth.existingSecret }}
- name: SIPCLUSTER_CLUSTER_ETCD_USER
  valueFrom:
    secretKeyRef:
      name: {{ $v.etcd.external.auth.existingSecret }}
      key: {{ $v.etcd.external.auth.usernameKey }}
- name: SIPCLUSTER_CLUSTER_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.etcd.external.auth.existingSecret }}
      key: {{ $v.etcd.external.auth.passwordKey }}
{{- end }}
{{- end }}

{{- define "sipcluster.otelResource" -}}
{{- $attrs := list "k8s.pod.name=$(POD_NAME)" "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.node.name=$(NODE_NAME)" (printf "sipcluster.role=%s" .role) }}
{{- range $k, $val := .root.Values.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%s" $k $val) }}
{{- end }}
{{- join "," $attrs }}
{{- end }}

{{/* Volume mounts shared by edges and workers. */}}
{{- define "sipcluster.volumeMounts" -}}
- name: config
  mountPath: /etc/sipcluster/config.toml
  subPath: config.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/sipcluster/etcd-tls
  readOnly: true
{{- end }}
{{- if .Values.link.curve.existingSecret }}
- name: link-keys
  mountPath: /etc/sipcluster/link-keys
  readOnly: true
{{- end }}
{{- end }}

{{- define "sipcluster.volumes" -}}
- name: config
  configMap:
    name: {{ include "sipcluster.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ required "etcd.external.tls.existingSecret is required with etcd.external.tls.enabled" .Values.etcd.external.tls.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.etcd.external.tls.caKey }}
        path: ca.crt
      - key: {{ .Values.etcd.external.tls.certKey }}
        path: tls.crt
      - key: {{ .Values.etcd.external.tls.keyKey }}
        path: tls.key
{{- end }}
{{- if .Values.link.curve.existingSecret }}
- name: link-keys
  secret:
    secretName: {{ .Values.link.curve.existingSecret }}
    defaultMode: 0440
    items:
      - key: link.key
        path: link.key
      - key: link.key_secret
        path: link.key_secret
{{- end }}
{{- end }}

{{/* Probes on the node's HTTP endpoint (nodes/http.py); call with
(dict "readinessPath" "/readyz"). */}}
{{- define "sipcluster.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 2
  failureThreshold: 30
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
# /readyz: member of the ring with etcd reachable; 503 otherwise.
readinessProbe:
  httpGet:
    path: {{ .readinessPath | default "/readyz" }}
    port: http
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{- define "sipcluster.metricsAnnotations" -}}
{{- if .root.Values.metrics.enabled -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
