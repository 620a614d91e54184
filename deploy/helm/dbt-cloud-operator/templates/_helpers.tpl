{{/* Chart name. */}}
{{- define "dbt-cloud-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, prefixed with the chart name unless it contains it. */}}
{{- define "dbt-cloud-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dbt-cloud-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dbt-cloud-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dbt-cloud-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "dbt-cloud-operator.labels" -}}
helm.sh/chart: {{ include "dbt-cloud-operator.chart" . }}
{{ include "dbt-cloud-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dbt-cloud-operator
{{- end -}}

{{- define "dbt-cloud-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dbt-cloud-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dbt-cloud-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get a Secret-reading Role: the watched ones and the release namespace. */}}
{{- define "dbt-cloud-operator.secretNamespaces" -}}
{{- $all := append (.Values.watchNamespaces | default list) .Release.Namespace -}}
{{- toJson (uniq $all) -}}
{{- end -}}
