{{/* Names, labels and the settings every template shares. */}}

{{- define "dra-driver-gpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dra-driver-gpu.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dra-driver-gpu.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dra-driver-gpu.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dra-driver-gpu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dra-driver-gpu.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: kubelet-plugin
{{- end }}

{{- define "dra-driver-gpu.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dra-driver-gpu.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dra-driver-gpu.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The container path the host's driver root is mounted at (NVIDIA's chart uses the same). */}}
{{- define "dra-driver-gpu.driverRootMount" -}}/driver-root{{- end }}

{{/* The host's /proc/driver/nvidia, mounted outside the container's own /proc: runc refuses
     bind mounts inside /proc ("cannot be mounted because it is inside /proc"). */}}
{{- define "dra-driver-gpu.nvidiaProcMount" -}}/host/proc/driver/nvidia{{- end }}

{{- define "dra-driver-gpu.validate" -}}
{{- if not (regexMatch "^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$" .Values.driverName) }}
{{- fail (printf "driverName %q must be a DNS subdomain with at least one dot, like gpu.nvidia.com" .Values.driverName) }}
{{- end }}
{{- if not (hasPrefix "/" .Values.nvidiaDriverRoot) }}
{{- fail (printf "nvidiaDriverRoot %q must be an absolute host path" .Values.nvidiaDriverRoot) }}
{{- end }}
{{- if not (hasPrefix "/" .Values.kubeletDir) }}
{{- fail (printf "kubeletDir %q must be an absolute host path" .Values.kubeletDir) }}
{{- end }}
{{- if not (hasPrefix "/" .Values.cdiRoot) }}
{{- fail (printf "cdiRoot %q must be an absolute host path" .Values.cdiRoot) }}
{{- end }}
{{- if not (hasPrefix "/" .Values.fakeNvml.hostDir) }}
{{- fail (printf "fakeNvml.hostDir %q must be an absolute host path" .Values.fakeNvml.hostDir) }}
{{- end }}
{{- range $k, $v := .Values.host }}
{{- if not (hasPrefix "/" $v) }}
{{- fail (printf "host.%s %q must be an absolute host path" $k $v) }}
{{- end }}
{{- end }}
{{- if and .Values.stateDir (not (hasPrefix (printf "%s/plugins/" .Values.kubeletDir) .Values.stateDir)) }}
{{- fail (printf "stateDir %q must lie under %s/plugins/ (the only host directory the plugin may write besides cdiRoot)" .Values.stateDir .Values.kubeletDir) }}
{{- end }}
{{- end }}
