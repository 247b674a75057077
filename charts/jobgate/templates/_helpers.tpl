{{/* Names. */}}

{{- define "jobgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jobgate.fullname" -}}
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

{{/* Cluster-scoped objects carry the namespace too: the same release name may be installed in two namespaces. */}}
{{- define "jobgate.clusterScopedName" -}}
{{- printf "%s-%s" .Release.Namespace (include "jobgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jobgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jobgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Who every (Cluster)RoleBinding binds: the operator's ServiceAccount. */}}
{{- define "jobgate.subjects" -}}
- kind: ServiceAccount
  name: {{ include "jobgate.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{- define "jobgate.leaseName" -}}
{{- default (printf "%s-leader" (include "jobgate.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The MutatingWebhookConfiguration, also named by the operator's --webhook-configuration and its RBAC. */}}
{{- define "jobgate.webhookConfigurationName" -}}
{{- include "jobgate.clusterScopedName" . }}
{{- end }}

{{- define "jobgate.tlsSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "jobgate.fullname" .)) .Values.webhook.certificate.existingSecret }}
{{- end }}

{{/* The cert-manager Certificate, also named by the webhook's inject-ca-from annotation. */}}
{{- define "jobgate.certificateName" -}}
{{- printf "%s-webhook" (include "jobgate.fullname" .) }}
{{- end }}

{{/*
The webhook's certificate when the chart makes it (neither existingSecret nor cert-manager), as JSON:
the Secret's base64 data ("ca.crt", "tls.crt", "tls.key") and the webhook's "caBundle".

An existing Secret is reused: a new CA would break the webhook until every pod serves the new
certificate. Made anew (first install, or the Secret was deleted), the caBundle trusts the new CA
and the one the webhook trusted until now, so that pods still serving the old certificate are
trusted while they restart (the pods' checksum annotation changes) or re-read it.

Made once per render and kept in .Values: the Secret, the caBundle and the pods' checksum must
all see the same random CA.
*/}}
{{- define "jobgate.generatedTLS" -}}
{{- if not (hasKey .Values "jobgateGeneratedTLS") }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "jobgate.tlsSecretName" .) }}
{{- $data := dict }}
{{- if and (dig "data" "ca.crt" "" $existing) (dig "data" "tls.crt" "" $existing) (dig "data" "tls.key" "" $existing) }}
{{- $data = pick $existing.data "ca.crt" "tls.crt" "tls.key" }}
{{- $_ := set $data "caBundle" (index $data "ca.crt") }}
{{- else }}
{{- $validity := int .Values.webhook.certificate.validityDays }}
{{- $dnsNames := include "jobgate.serviceDNSNames" . | fromJsonArray }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "jobgate.fullname" .)) $validity }}
{{- $leaf := genSignedCert (index $dnsNames 2) nil $dnsNames $validity $ca }}
{{- $bundle := $ca.Cert }}
{{- $configuration := lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" (include "jobgate.webhookConfigurationName" .) }}
{{- with $configuration.webhooks }}
{{- $trusted := dig "clientConfig" "caBundle" "" (first .) | b64dec }}
{{- $previousCA := regexFind "(?s)-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----" $trusted }}
{{- if $previousCA }}
{{- $bundle = printf "%s%s\n" $ca.Cert $previousCA }}
{{- end }}
{{- end }}
{{- $data = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($leaf.Cert | b64enc) "tls.key" ($leaf.Key | b64enc) "caBundle" ($bundle | b64enc) }}
{{- end }}
{{- $_ := set .Values "jobgateGeneratedTLS" $data }}
{{- end }}
{{- toJson .Values.jobgateGeneratedTLS }}
{{- end }}

{{- define "jobgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The names the API server may use to reach the webhook Service, for the serving certificate. */}}
{{- define "jobgate.serviceDNSNames" -}}
{{- $service := include "jobgate.fullname" . }}
{{- $namespace := .Release.Namespace }}
{{- list $service (printf "%s.%s" $service $namespace) (printf "%s.%s.svc" $service $namespace) (printf "%s.%s.svc.%s" $service $namespace .Values.clusterDomain) | toJson }}
{{- end }}

{{/* Labels. */}}

{{- define "jobgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "jobgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "jobgate.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
What the operator does to the Jobs and policies it governs (operator/jobgate/kube/api.py and Kopf):
Kopf lists and watches Jobs and policies, the engine re-lists them and patches Jobs (admit,
re-suspend, release), writes policy status, and posts Events on Jobs. Nothing else: Kopf runs
with scanning off, standalone, and posts no events of its own. `get` reads nothing that `list`
does not, and keeps single-object reads (kube.KubeApi.get_job) working.
*/}}
{{- define "jobgate.governingRules" -}}
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "patch"]
{{- if .Values.deleteQueuedJobs }}
# Queued Jobs only, pushed out of a full queue (overflow: ReplaceOldest), at the version decided on.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["delete"]
{{- end }}
- apiGroups: ["jobgate.dev"]
  resources: ["concurrencypolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["jobgate.dev"]
  resources: ["concurrencypolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Settings that no schema can check alone; rendered (as nothing) by the Deployment. */}}
{{- define "jobgate.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without a Lease every replica would admit Jobs and exceed the limits" }}
{{- end }}
{{- if and .Values.webhook.certificate.existingSecret .Values.webhook.certificate.certManager.enabled }}
{{- fail "webhook.certificate: set existingSecret or certManager.enabled, not both" }}
{{- end }}
{{- end }}
