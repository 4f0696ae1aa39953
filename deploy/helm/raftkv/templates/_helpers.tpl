{{/* The chart's name. */}}
{{- define "raftkv.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: the StatefulSet, the client Service, and the prefix of every pod
(<fullname>-<ordinal>). Pod names must stay DNS labels, so it is kept short.
*/}}
{{- define "raftkv.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The headless Service that gives every member its DNS name. */}}
{{- define "raftkv.peerService" -}}
{{- printf "%s-peer" (include "raftkv.fullname" .) -}}
{{- end -}}

{{- define "raftkv.selectorLabels" -}}
app.kubernetes.io/name: {{ include "raftkv.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "raftkv.labels" -}}
{{ include "raftkv.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "raftkv.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "raftkv.clientSecretName" -}}
{{- default (printf "%s-client-tls" (include "raftkv.fullname" .)) .Values.tls.clientSecretName -}}
{{- end -}}

{{- define "raftkv.peerSecretName" -}}
{{- default (printf "%s-peer-tls" (include "raftkv.fullname" .)) .Values.tls.peerSecretName -}}
{{- end -}}

{{/*
A probe of the JSON gateway on `path` (called with dict "root" . "path" "/livez").
Plaintext: an httpGet probe. TLS: the gateway requires a client certificate, which the
kubelet's HTTPS probes do not present, so it is an exec probe that presents the member's own
(the client certificate must allow client authentication, as the gateway's loopback channel
needs anyway). It checks the chain, not the name: the certificate names the pod's DNS name.
*/}}
{{- define "raftkv.probe" -}}
{{- if .root.Values.tls.enabled -}}
exec:
  command:
    - python
    - -c
    - |
      import ssl, sys, urllib.request
      tls = "/etc/raftkv/tls/client/"
      context = ssl.create_default_context(cafile=tls + "ca.crt")
      context.check_hostname = False
      context.load_cert_chain(tls + "tls.crt", tls + "tls.key")
      urllib.request.urlopen("https://127.0.0.1:2381" + sys.argv[1], timeout=4, context=context)
    - {{ .path }}
{{- else -}}
httpGet:
  path: {{ .path }}
  port: http
  scheme: HTTP
{{- end -}}
{{- end -}}
