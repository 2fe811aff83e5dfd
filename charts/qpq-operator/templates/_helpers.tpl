{{/* Full name of the release's objects. */}}
{{- define "qpq-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels (the NetworkPolicy of a QpqCluster admits app.kubernetes.io/name=qpq-operator). */}}
{{- define "qpq-operator.selectorLabels" -}}
app.kubernetes.io/name: qpq-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Common labels. */}}
{{- define "qpq-operator.labels" -}}
{{ include "qpq-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "qpq-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qpq-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}
