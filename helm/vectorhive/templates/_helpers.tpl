{{/* Names and labels. */}}
{{- define "vectorhive.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vectorhive.fullname" -}}
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

{{- define "vectorhive.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vectorhive.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vectorhive.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vectorhive.labels" -}}
helm.sh/chart: {{ include "vectorhive.chart" . }}
{{ include "vectorhive.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vectorhive.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vectorhive.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vectorhive.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "vectorhive.cnpgName" -}}
{{- printf "%s-pg" (include "vectorhive.fullname" .) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/* Where the database is: external (url or existingSecret), cnpg, or embedded (in the pod). */}}
{{- define "vectorhive.databaseMode" -}}
{{- if .Values.cnpg.enabled }}cnpg
{{- else if or .Values.database.url .Values.database.existingSecret }}external
{{- else }}embedded
{{- end }}
{{- end }}

{{/* The most replicas that can run at once. */}}
{{- define "vectorhive.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.maxReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}

{{/* The migration Job runs only against a database outside the pod. */}}
{{- define "vectorhive.migrationJob" -}}
{{- if and .Values.database.migrations.job (ne (include "vectorhive.databaseMode" .) "embedded") }}true{{ end }}
{{- end }}

{{/* Does the chart's own Secret hold anything? */}}
{{- define "vectorhive.ownSecretKeys" -}}
{{- $keys := list }}
{{- if and .Values.database.url (not .Values.database.existingSecret) (not .Values.cnpg.enabled) }}{{ $keys = append $keys "database-url" }}{{ end }}
{{- if and .Values.redis.url (not .Values.redis.existingSecret) }}{{ $keys = append $keys "redis-url" }}{{ end }}
{{- if and .Values.hivehub.apiKey (not .Values.hivehub.existingSecret) }}{{ $keys = append $keys "hivehub-api-key" }}{{ end }}
{{- if and .Values.generation.url .Values.generation.apiKey (not .Values.generation.existingSecret) }}{{ $keys = append $keys "generation-api-key" }}{{ end }}
{{- join "," $keys }}
{{- end }}

{{/* The database URL as an env entry (a secretKeyRef; never a literal). $secret: the chart Secret's name. */}}
{{- define "vectorhive.databaseEnv" -}}
{{- $mode := include "vectorhive.databaseMode" .root }}
{{- if eq $mode "cnpg" }}
- name: VECTORHIVE_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ printf "%s-app" (include "vectorhive.cnpgName" .root) }}
      key: uri
{{- else if eq $mode "external" }}
- name: VECTORHIVE_DATABASE__URL
  valueFrom:
    secretKeyRef:
      {{- if .root.Values.database.existingSecret }}
      name: {{ .root.Values.database.existingSecret }}
      key: {{ .root.Values.database.existingSecretKey }}
      {{- else }}
      name: {{ .secret }}
      key: database-url
      {{- end }}
{{- end }}
{{- end }}

{{/* Every secret the server needs, as env entries from Secrets. */}}
{{- define "vectorhive.secretEnv" -}}
{{- $secret := include "vectorhive.fullname" . }}
{{- include "vectorhive.databaseEnv" (dict "root" . "secret" $secret) }}
{{- if or .Values.redis.url .Values.redis.existingSecret }}
- name: VECTORHIVE_RATE_LIMITING__STORAGE_URI
  valueFrom:
    secretKeyRef:
      name: {{ default $secret .Values.redis.existingSecret }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (not (empty .Values.redis.existingSecret)) }}
{{- end }}
{{- if or .Values.hivehub.apiKey .Values.hivehub.existingSecret }}
- name: VECTORHIVE_CLUSTER__HIVEHUB_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $secret .Values.hivehub.existingSecret }}
      key: {{ ternary .Values.hivehub.existingSecretKey "hivehub-api-key" (not (empty .Values.hivehub.existingSecret)) }}
{{- end }}
{{- if and .Values.generation.url (or .Values.generation.apiKey .Values.generation.existingSecret) }}
- name: VECTORHIVE_GENERATION_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $secret .Values.generation.existingSecret }}
      key: {{ ternary .Values.generation.existingSecretKey "generation-api-key" (not (empty .Values.generation.existingSecret)) }}
{{- end }}
{{- end }}

{{/* vectorhive's config.yml: the chart's own keys win over .Values.config (they must agree with the pod spec). */}}
{{- define "vectorhive.config" -}}
{{- $mode := include "vectorhive.databaseMode" . }}
{{- $chart := dict }}
{{- $_ := set $chart "server" (dict "host" "0.0.0.0" "port" (int .Values.containerPort)) }}
{{- $database := dict "migrate_on_startup" (not (include "vectorhive.migrationJob" .)) "data_dir" "/var/lib/vectorhive/data/postgres" }}
{{- $_ = set $chart "database" $database }}
{{- if .Values.metrics.enabled }}
{{- $_ = set $chart "metrics" (dict "enabled" true "port" (int .Values.metrics.port) "host" "0.0.0.0") }}
{{- else }}
{{- $_ = set $chart "metrics" (dict "enabled" false) }}
{{- end }}
{{- if .Values.hivehub.url }}
{{- $_ = set $chart "cluster" (dict "enabled" true "hivehub_api_url" .Values.hivehub.url) }}
{{- end }}
{{- $_ = set $chart "embeddings" (dict "cache_dir" .Values.models.mountPath) }}
{{- $_ = set $chart "generation" (dict "cache_dir" .Values.models.mountPath) }}
{{- if .Values.generation.url }}
{{- /* One remote chat model, the default; its key comes from the environment (a Secret), read
       by the ${...} interpolation of config.yml, so the ConfigMap never holds it. */}}
{{- $name := default "remote" .Values.generation.model }}
{{- $model := dict "url" .Values.generation.url "api_key" "${VECTORHIVE_GENERATION_API_KEY:-}" }}
{{- if .Values.generation.model }}{{ $_ = set $model "remote_model" .Values.generation.model }}{{ end }}
{{- $_ = set $chart "generation" (dict "cache_dir" .Values.models.mountPath "default_model" $name "models" (dict $name $model)) }}
{{- end }}
{{- $_ = set $chart "mcp" (include "vectorhive.mcpConfig" . | fromYaml) }}
{{- $merged := merge $chart (deepCopy (default (dict) .Values.config)) }}
{{- toYaml $merged }}
{{- end }}

{{/* mcp.* of config.yml: allowed hosts (configured, the Service's names, the ingress hosts),
     allowed origins, and the public URL (configured, or the first ingress host's). */}}
{{- define "vectorhive.mcpConfig" -}}
{{- $hosts := list }}
{{- range .Values.mcp.allowedHosts }}{{ $hosts = append $hosts . }}{{ end }}
{{- if .Values.mcp.addServiceHosts }}
{{- $service := include "vectorhive.fullname" . }}
{{- range list $service (printf "%s.%s" $service .Release.Namespace) (printf "%s.%s.svc" $service .Release.Namespace) (printf "%s.%s.svc.cluster.local" $service .Release.Namespace) }}
{{- $hosts = append $hosts . }}
{{- $hosts = append $hosts (printf "%s:*" .) }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled .Values.mcp.addIngressHosts }}
{{- range .Values.ingress.hosts }}
{{- if .host }}
{{- $hosts = append $hosts .host }}
{{- $hosts = append $hosts (printf "%s:*" .host) }}
{{- end }}
{{- end }}
{{- end }}
{{- $url := .Values.mcp.resourceUrl }}
{{- if and (not $url) .Values.ingress.enabled .Values.ingress.hosts }}
{{- $first := (first .Values.ingress.hosts).host }}
{{- if $first }}
{{- $scheme := "http" }}
{{- range .Values.ingress.tls }}{{ if has $first (default (list) .hosts) }}{{ $scheme = "https" }}{{ end }}{{ end }}
{{- $url = printf "%s://%s/mcp" $scheme $first }}
{{- end }}
{{- end }}
{{- $mcp := dict "enabled" .Values.mcp.enabled "allowed_hosts" (uniq $hosts) "allowed_origins" .Values.mcp.allowedOrigins }}
{{- if $url }}{{ $_ := set $mcp "resource_url" $url }}{{ end }}
{{- toYaml $mcp }}
{{- end }}

{{/* Refuse values that cannot work, with a message saying what to set. */}}
{{- define "vectorhive.validate" -}}
{{- $mode := include "vectorhive.databaseMode" . }}
{{- $max := int (include "vectorhive.maxReplicas" .) }}
{{- $config := default (dict) .Values.config }}
{{- $rl := default (dict) (get $config "rate_limiting") }}
{{- /* rate_limiting.enabled unset or null: on in cluster mode only (as the service decides it) */}}
{{- $clusterMode := or .Values.hivehub.url (get (default (dict) (get $config "cluster")) "enabled") }}
{{- $explicit := and (hasKey $rl "enabled") (not (kindIs "invalid" (get $rl "enabled"))) }}
{{- $rateLimiting := ternary (get $rl "enabled") $clusterMode $explicit }}
{{- if and (eq $mode "embedded") (gt $max 1) }}
{{- fail "more than one replica needs an external PostgreSQL: set database.url, database.existingSecret or cnpg.enabled (the embedded database lives inside one pod)" }}
{{- end }}
{{- if and (gt $max 1) $rateLimiting (not (or .Values.redis.url .Values.redis.existingSecret)) }}
{{- fail "more than one replica with rate limiting on (cluster mode, or config.rate_limiting.enabled: true) needs Redis, so that limits and token buckets are shared: set redis.url or redis.existingSecret (or config.rate_limiting.enabled: false)" }}
{{- end }}
{{- if and .Values.cnpg.enabled (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "cnpg.enabled creates the database: leave database.url and database.existingSecret empty" }}
{{- end }}
{{- if and .Values.database.url (not (regexMatch "^postgres(ql)?://" .Values.database.url)) }}
{{- fail "database.url must be a postgresql:// URL" }}
{{- end }}
{{- if and .Values.redis.url (not (regexMatch "^rediss?://" .Values.redis.url)) }}
{{- fail "redis.url must be a redis:// or rediss:// URL" }}
{{- end }}
{{- $db := default (dict) (get $config "database") }}
{{- if get $db "url" }}
{{- fail "config.database.url would put a secret into the ConfigMap: use database.url or database.existingSecret" }}
{{- end }}
{{- if hasKey $rl "storage_uri" }}
{{- fail "config.rate_limiting.storage_uri: use redis.url or redis.existingSecret (a Redis URL may carry a password)" }}
{{- end }}
{{- $cluster := default (dict) (get $config "cluster") }}
{{- if get $cluster "hivehub_api_key" }}
{{- fail "config.cluster.hivehub_api_key would put a secret into the ConfigMap: use hivehub.apiKey or hivehub.existingSecret" }}
{{- end }}
{{- $gen := default (dict) (get $config "generation") }}
{{- if get $gen "api_key" }}
{{- fail "config.generation.api_key would put a secret into the ConfigMap: use generation.apiKey or generation.existingSecret" }}
{{- end }}
{{- range $name, $model := default (dict) (get $gen "models") }}
{{- if and (kindIs "map" $model) (get $model "api_key") }}
{{- fail (printf "config.generation.models.%s.api_key would put a secret into the ConfigMap: use generation.url with generation.apiKey or generation.existingSecret, or an environment variable from a Secret (extraEnv) read as ${NAME} in the value" $name) }}
{{- end }}
{{- end }}
{{- $embeddings := default (dict) (get $config "embeddings") }}
{{- range $name, $model := default (dict) (get $embeddings "models") }}
{{- if and (kindIs "map" $model) (get $model "api_key") }}
{{- fail (printf "config.embeddings.models.%s.api_key would put a secret into the ConfigMap: give it as an environment variable from a Secret (extraEnv) instead" $name) }}
{{- end }}
{{- end }}
{{- $mcpConfig := default (dict) (get $config "mcp") }}
{{- range list "enabled" "allowed_hosts" "allowed_origins" "resource_url" }}
{{- if hasKey $mcpConfig . }}
{{- fail (printf "config.mcp.%s is set by the chart: use the mcp.* values (mcp.enabled, mcp.allowedHosts, mcp.allowedOrigins, mcp.resourceUrl)" .) }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled (eq .Values.service.type "ExternalName") }}
{{- fail "ingress.enabled needs service.type ClusterIP, NodePort or LoadBalancer" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- end }}

{{/* The chart Secret's data (inline values only). */}}
{{- define "vectorhive.secretData" -}}
{{- $keys := splitList "," (include "vectorhive.ownSecretKeys" .) }}
{{- if has "database-url" $keys }}
database-url: {{ .Values.database.url | b64enc | quote }}
{{- end }}
{{- if has "redis-url" $keys }}
redis-url: {{ .Values.redis.url | b64enc | quote }}
{{- end }}
{{- if has "hivehub-api-key" $keys }}
hivehub-api-key: {{ .Values.hivehub.apiKey | b64enc | quote }}
{{- end }}
{{- if has "generation-api-key" $keys }}
generation-api-key: {{ .Values.generation.apiKey | b64enc | quote }}
{{- end }}
{{- end }}
