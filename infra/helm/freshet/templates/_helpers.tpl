{{/* Labels every object of the release carries. */}}
{{- define "freshet.labels" -}}
app.kubernetes.io/part-of: freshet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}

{{/* The image of every workload. */}}
{{- define "freshet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The durable a function works: its configured name, or <function>-<model>. */}}
{{- define "freshet.consumer" -}}
{{- $f := index .root.Values.functions .name -}}
{{- default (printf "%s-%s" .name .root.Values.model) $f.consumer -}}
{{- end }}

{{/* FRESHET_* settings given as a map, as container env entries. */}}
{{- define "freshet.env" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The probes of a function's HTTP port. */}}
{{- define "freshet.probes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: 8080}
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet: {path: /healthz, port: 8080}
  initialDelaySeconds: 5
  periodSeconds: 10
  failureThreshold: 3
{{- end }}
