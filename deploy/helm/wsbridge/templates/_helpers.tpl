{{- define "wsbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wsbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "wsbridge.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "wsbridge.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels of every object; pass (dict "ctx" $ "component" "bridge"). */}}
{{- define "wsbridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "wsbridge.selectorLabels" . }}
{{- end }}

{{- define "wsbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wsbridge.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "wsbridge.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "wsbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wsbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wsbridge.secretName" -}}
{{- default (include "wsbridge.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{/*
WSBRIDGE_<KEY> env entries from a list of maps (keys in caps or as flag names), merged in
order: a later map's key wins, so pass the shared config, the component's config, then the
settings the chart manages (addresses the probes and Services depend on).
*/}}
{{- define "wsbridge.env" -}}
{{- $env := dict -}}
{{- range $m := . }}
{{- range $k, $v := $m }}
{{- $s := toString $v }}
{{- if and (kindIs "float64" $v) (eq (float64 (int64 $v)) $v) }}
{{- $s = toString (int64 $v) }}{{/* YAML numbers are floats: 268435456, not 2.68435456e+08 */}}
{{- end }}
{{- $_ := set $env (printf "WSBRIDGE_%s" ($k | upper | replace "-" "_")) $s }}
{{- end }}
{{- end }}
{{- range $k, $v := $env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{/* The Secret's file keys the pods get: (key, WSBRIDGE_ variable) for each present. */}}
{{- define "wsbridge.secretFiles" -}}
{{- $s := .Values.secret -}}
{{- $files := list -}}
{{- range $f := list (list "nats.creds" "NATS_CREDS" $s.natsCreds) (list "nats.nkey" "NATS_NKEY" $s.natsNKey) (list "nats-ca.pem" "NATS_TLS_CA" $s.natsTLSCA) (list "nats-tls.crt" "NATS_TLS_CERT" $s.natsTLSCert) (list "nats-tls.key" "NATS_TLS_KEY" $s.natsTLSKey) }}
{{- if or (and (not $s.existingSecret) (index $f 2)) (and $s.existingSecret (has (index $f 0) $s.existingFiles)) }}
{{- $files = append $files (list (index $f 0) (index $f 1)) }}
{{- end }}
{{- end }}
{{- toJson $files }}
{{- end }}

{{/* The WSBRIDGE_NATS_* file settings for the Secret's file keys, as a JSON map. */}}
{{- define "wsbridge.fileEnv" -}}
{{- $env := dict -}}
{{- range $f := include "wsbridge.secretFiles" . | fromJsonArray }}
{{- $_ := set $env (index $f 1) (printf "/etc/wsbridge/secret/%s" (index $f 0)) }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{- define "wsbridge.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "wsbridge.secretFiles" . | fromJsonArray }}
- name: secret
  mountPath: /etc/wsbridge/secret
  readOnly: true
{{- end }}
{{- end }}

{{- define "wsbridge.volumes" -}}
- name: tmp
  emptyDir: {}
{{- if include "wsbridge.secretFiles" . | fromJsonArray }}
- name: secret
  secret:
    secretName: {{ include "wsbridge.secretName" . }}
    defaultMode: 0440
    items:
    {{- range $f := include "wsbridge.secretFiles" . | fromJsonArray }}
    - key: {{ index $f 0 }}
      path: {{ index $f 0 }}
    {{- end }}
{{- end }}
{{- end }}

{{/* Pod spec parts both Deployments share; pass (dict "ctx" $ "c" .Values.bridge). */}}
{{- define "wsbridge.podCommon" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
serviceAccountName: {{ include "wsbridge.serviceAccountName" .ctx }}
automountServiceAccountToken: false
securityContext:
  {{- $psc := deepCopy .ctx.Values.podSecurityContext }}
  {{- with .c.sysctls }}
  {{- $_ := set $psc "sysctls" (concat ($psc.sysctls | default list) .) }}
  {{- end }}
  {{- toYaml $psc | nindent 2 }}
terminationGracePeriodSeconds: {{ .c.terminationGracePeriodSeconds }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "wsbridge.volumes" .ctx | nindent 2 }}
{{- end }}

{{/* Container parts both share: image, security, env from the Secret, probes on port "ops". */}}
{{- define "wsbridge.containerCommon" -}}
image: {{ include "wsbridge.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
securityContext:
  {{- toYaml .ctx.Values.securityContext | nindent 2 }}
envFrom:
  - secretRef:
      name: {{ include "wsbridge.secretName" .ctx }}
livenessProbe:
  httpGet: {path: /healthz, port: ops}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: ops}
  periodSeconds: 5
  failureThreshold: 2
resources:
  {{- toYaml .c.resources | nindent 2 }}
volumeMounts:
  {{- include "wsbridge.volumeMounts" .ctx | nindent 2 }}
{{- end }}

{{/* Settings the chart sets on the bridge: its ops address, and the push URL when not secret. */}}
{{- define "wsbridge.bridgeManagedEnv" -}}
{{- $c := .Values.bridge -}}
{{- $env := dict "HTTP_ADDR" (printf ":%v" $c.metricsPort) -}}
{{- if $c.pushURL }}
{{- $_ := set $env "PUSH_URL" $c.pushURL }}
{{- else if and .Values.gateway.enabled (not .Values.secret.existingSecret) (not .Values.secret.pushURL) }}
{{- $_ := set $env "PUSH_URL" (printf "http://%s-gateway-push.%s.svc:%v/push" (include "wsbridge.fullname" .) .Release.Namespace .Values.gateway.pushPort) }}
{{- end }}
{{- if .Values.gateway.enabled }}
{{- /* The edge's push listener is plain HTTP on the pod network (its Service is cluster-internal):
       the bridge may send the push token there. Keep the pod network to the cluster (a
       NetworkPolicy on the push port), and the instances bucket writable by gateways only. */}}
{{- $_ := set $env "ALLOW_PLAIN_PUSH" "true" }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{/* Settings the chart sets on the gateway: listeners, its own push URL and instance id, TLS. */}}
{{- define "wsbridge.gatewayManagedEnv" -}}
{{- $c := .Values.gateway -}}
{{- $env := dict "ADDR" (printf ":%v" $c.port) "PUSH_ADDR" (printf ":%v" $c.pushPort) "HTTP_ADDR" (printf ":%v" $c.metricsPort) "PUSH_URL" (printf "http://$(POD_IP):%v/push" $c.pushPort) "INSTANCE_ID" "$(POD_NAME)" -}}
{{- if $c.tls.secretName }}
{{- $_ := set $env "TLS_CERT" "/etc/wsbridge/tls/tls.crt" }}
{{- $_ := set $env "TLS_KEY" "/etc/wsbridge/tls/tls.key" }}
{{- end }}
{{- toJson $env }}
{{- end }}
