{{/* Names are cut to 63 characters: the longest a label value or DNS label may be. */}}

{{- define "petrel.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: the release name alone when it already says "petrel". */}}
{{- define "petrel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "petrel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "petrel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{- define "petrel.labels" -}}
{{ include "petrel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: petrel
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "petrel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "petrel.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "petrel.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "v%s" .Chart.AppVersion) .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Lease the replicas of this release elect a leader with (one per release and mode). */}}
{{- define "petrel.leaseName" -}}
{{- printf "%s-%s" (include "petrel.fullname" .) .Values.mode | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Namespaces whose Secrets the hub may read: the configured ones, else the release's. */}}
{{- define "petrel.hubSecretNamespaces" -}}
{{- $namespaces := .Values.hub.kubeconfigSecretNamespaces | default (list .Release.Namespace) -}}
{{- toJson (uniq $namespaces) -}}
{{- end -}}

{{/* The RBAC subject: petrel's ServiceAccount. */}}
{{- define "petrel.subject" -}}
- kind: ServiceAccount
  name: {{ include "petrel.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end -}}
