{{/* Names */}}
{{- define "stockade.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stockade.serversNamespace" -}}
{{- default .Release.Namespace .Values.servers.namespace -}}
{{- end -}}

{{- define "stockade.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Labels: common, and the selector for one component (pass (dict "ctx" $ "component" "x")). */}}
{{- define "stockade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stockade
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "stockade.selectorLabels" -}}
app.kubernetes.io/name: stockade
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/*
The restricted Pod Security Standard, at pod and container level. UID/GID 65534 ("nobody"), as on
one machine. fsGroup lets that user write the emptyDir volumes.
*/}}
{{- define "stockade.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
fsGroup: 65534
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "stockade.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65534
runAsGroup: 65534
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* STOCKADE_* settings shared by the gateway and the control plane. */}}
{{- define "stockade.env" -}}
- name: STOCKADE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: a Secret holding the PostgreSQL URL" .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
- name: STOCKADE_MASTER_KEY
  valueFrom:
    secretKeyRef:
      name: {{ required "masterKey.existingSecret is required: a Secret holding the base64 master key" .Values.masterKey.existingSecret }}
      key: {{ .Values.masterKey.existingSecretKey }}
- name: STOCKADE_GATEWAY_HOST
  value: "0.0.0.0"
- name: STOCKADE_GATEWAY_PORT
  value: {{ .Values.gateway.port | quote }}
- name: STOCKADE_CONTROL_HOST
  value: "0.0.0.0"
- name: STOCKADE_CONTROL_PORT
  value: {{ .Values.controlPlane.port | quote }}
{{- with .Values.gateway.publicUrl }}
- name: STOCKADE_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
- name: STOCKADE_DATA_DIR
  value: /var/lib/stockade
- name: STOCKADE_CACHE_DIR
  value: /var/cache/stockade
- name: STOCKADE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: STOCKADE_INSTALL_ENGINE
  value: "false"
# The gateway discovers servers through the Services in this namespace; `stockade k8s` renders for the proxy URL.
- name: STOCKADE_K8S_SERVERS_NAMESPACE
  value: {{ include "stockade.serversNamespace" . | quote }}
- name: STOCKADE_K8S_EGRESS_PROXY_URL
  value: {{ printf "http://%s-egress-proxy.%s.svc:%v" (include "stockade.fullname" .) .Release.Namespace .Values.egressProxy.port | quote }}
{{- end -}}

{{/* Writable places under a read-only root filesystem. */}}
{{- define "stockade.scratchVolumes" -}}
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
- name: data
  emptyDir:
    sizeLimit: 256Mi
- name: cache
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "stockade.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: /var/lib/stockade
- name: cache
  mountPath: /var/cache/stockade
{{- end -}}

{{/* NetworkPolicy egress rules every Stockade process needs: DNS, the database, the API server. */}}
{{- define "stockade.commonEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .Values.networkPolicy.dns.namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 10 }}
  ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
- ports:
    - {protocol: TCP, port: {{ .Values.database.port }}}
  {{- with .Values.database.networkPolicyPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    {{- range .Values.networkPolicy.kubeApi.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  {{- with .Values.networkPolicy.kubeApi.cidrs }}
  to:
    {{- range . }}
    - ipBlock: {cidr: {{ . }}}
    {{- end }}
  {{- end }}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ include "stockade.serversNamespace" . }}
      podSelector:
        matchLabels:
          app.kubernetes.io/name: stockade-server
  ports:
    - {protocol: TCP, port: {{ .Values.servers.bridgePort }}}
{{- end -}}
