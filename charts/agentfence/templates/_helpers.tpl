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

{{- /*
"true" when the chart should render the CRD named by the second argument: the cluster does not have it, or
this release owns it (Helm's ownership annotations). lookup answers nothing in `helm template`: always true.
*/ -}}
{{- define "agentfence.crdOwned" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" (index . 1) -}}
{{- if not $existing -}}
true
{{- else if and (eq (dig "metadata" "annotations" "meta.helm.sh/release-name" "" $existing) $root.Release.Name) (eq (dig "metadata" "annotations" "meta.helm.sh/release-namespace" "" $existing) $root.Release.Namespace) -}}
true
{{- end -}}
{{- end -}}

{{- /* The webhook's current caBundle, so that a replacing upgrade (helm upgrade --force) keeps it: what the
live configuration has (the controller or cert-manager keeps it current), else the self-managed CA from the
controller's Secret. Empty on first install and in `helm template`. */ -}}
{{- define "agentfence.currentCABundle" -}}
{{- $webhook := lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" "agentfence-sidecar-injector" -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace "agentfence-serving-cert" -}}
{{- $live := "" -}}
{{- if $webhook -}}{{- $live = (index $webhook.webhooks 0).clientConfig.caBundle | default "" -}}{{- end -}}
{{- if $live -}}
{{ $live }}
{{- else if and (eq .Values.certificates.mode "self-managed") $secret -}}
{{ dig "data" "ca.crt" "" $secret }}
{{- end -}}
{{- end -}}
