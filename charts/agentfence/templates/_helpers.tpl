{{- define "agentfence.name" -}}agentfence{{- end -}}

{{- define "agentfence.controllerName" -}}agentfence-controller{{- end -}}

{{- define "agentfence.labels" -}}
app.kubernetes.io/name: agentfence
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "agentfence.selectorLabels" -}}
app.kubernetes.io/name: agentfence
app.kubernetes.io/component: controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "agentfence.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "agentfence.issuerURL" -}}
https://{{ include "agentfence.controllerName" . }}.{{ .Release.Namespace }}.svc
{{- end -}}
