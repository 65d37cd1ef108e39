{{/*
Names, labels and the per-component facts every template shares.
*/}}

{{- define "helicone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helicone.fullname" -}}
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

{{- define "helicone.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<fullname>-<component>": the name of a component's workload, Service, ConfigMap, HPA, PDB... */}}
{{- define "helicone.componentName" -}}
{{- printf "%s-%s" (include "helicone.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name + instance (+ component, as several components share the release). Never change them: selectors are immutable. */}}
{{- define "helicone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helicone.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "helicone.labels" -}}
helm.sh/chart: {{ include "helicone.chart" .ctx }}
{{ include "helicone.selectorLabels" . }}
app.kubernetes.io/version: {{ include "helicone.imageTag" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: helicone
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "helicone.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "helicone.image" -}}
{{- $img := .ctx.Values.image }}
{{- $repo := $img.repository }}
{{- $ref := printf "%s:%s" $repo (include "helicone.imageTag" .ctx) }}
{{- if $img.digest }}{{ $ref = printf "%s@%s" $repo $img.digest }}{{ end }}
{{- if $img.registry }}{{ printf "%s/%s" $img.registry $ref }}{{ else }}{{ $ref }}{{ end }}
{{- end }}

{{- define "helicone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "helicone.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "helicone.secretName" -}}
{{- include "helicone.fullname" . }}
{{- end }}

{{/*
What each component's code talks to (one place): the backing services whose settings and
secrets it gets, and whose ports its NetworkPolicy opens.
*/}}
{{- define "helicone.uses" -}}
{{- $uses := dict
  "gateway" (list "kafka" "postgres" "prompts" "redis")
  "ingest" (list "kafka" "postgres" "clickhouse" "s3")
  "api" (list "kafka" "postgres" "clickhouse" "s3" "prompts")
  "prompts" (list "postgres")
  "migrations" (list "postgres" "clickhouse") -}}
{{- toJson (get $uses .) }}
{{- end }}

{{/* The components, in a stable order. */}}
{{- define "helicone.componentNames" -}}
{{- toJson (list "gateway" "ingest" "api" "prompts") }}
{{- end }}

{{/* A component's values: components.<name> merged over defaults (component wins). */}}
{{- define "helicone.componentValues" -}}
{{- $c := get .ctx.Values.components .component | default dict }}
{{- toJson (fromJson (include "helicone.merge" (dict "base" .ctx.Values.defaults "over" $c))) }}
{{- end }}

{{/* Deep merge where `over` wins even with false/0/"" (sprig's mergeOverwrite skips those). Lists are replaced. */}}
{{- define "helicone.merge" -}}
{{- $out := deepCopy .base }}
{{- range $k, $v := .over }}
{{- $b := get $out $k }}
{{- if and (kindIs "map" $v) (kindIs "map" $b) }}
{{- $_ := set $out $k (fromJson (include "helicone.merge" (dict "base" $b "over" $v))) }}
{{- else }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The gateway renders as an Argo Rollout instead of a Deployment. */}}
{{- define "helicone.gatewayIsRollout" -}}
{{- if .Values.components.gateway.rollout.enabled }}true{{ end }}
{{- end }}

{{/* Where the chart mounts the services' writable data (journal, key snapshot, Faust state). */}}
{{- define "helicone.dataDir" -}}/var/lib/helicone{{- end }}

{{/*
A component's HELICONE_* settings (not secrets) as a dict: the structured values first, then
`config` (every component) and `components.<name>.config`, whose keys are the settings' own
field names (schema-checked against the code).
*/}}
{{- define "helicone.settings" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $name := .component }}
{{- $c := fromJson (include "helicone.componentValues" .) }}
{{- $uses := fromJsonArray (include "helicone.uses" $name) }}
{{- $s := dict "log_level" $v.logLevel "data_dir" (include "helicone.dataDir" $ctx) }}
{{- if $c.port }}
{{- $_ := set $s "host" "0.0.0.0" }}
{{- $_ := set $s "port" $c.port }}
{{- end }}
{{- if $v.region }}{{ $_ := set $s "region" $v.region }}{{ end }}
{{- if has "kafka" $uses }}
{{- $k := $v.kafka }}
{{- $_ := set $s "kafka_bootstrap" (required "kafka.bootstrap is required (host:port of your Kafka brokers, comma-separated)" $k.bootstrap) }}
{{- $_ := set $s "kafka_topic" $k.topic }}
{{- $_ := set $s "kafka_dlq_topic" $k.dlqTopic }}
{{- $_ := set $s "kafka_topic_partitions" $k.partitions }}
{{- $_ := set $s "consumer_group" $k.consumerGroup }}
{{- if ne $name "api" }}{{/* the api only publishes; it never creates topics */}}
{{- $_ := set $s "kafka_replication_factor" $k.replicationFactor }}
{{- end }}
{{- $_ := set $s "kafka_security_protocol" $k.securityProtocol }}
{{- if hasPrefix "SASL" $k.securityProtocol }}
{{- $_ := set $s "kafka_sasl_mechanism" $k.sasl.mechanism }}
{{- $_ := set $s "kafka_sasl_username" (required (printf "kafka.sasl.%s.username is required when kafka.securityProtocol is SASL_*" $name) (get $k.sasl $name).username) }}
{{- end }}
{{- if and (hasSuffix "SSL" $k.securityProtocol) $k.tls.caSecret }}
{{- $_ := set $s "kafka_ssl_cafile" "/etc/helicone/kafka-ca/ca.crt" }}
{{- end }}
{{- end }}
{{- if has "clickhouse" $uses }}
{{- $_ := set $s "analytics_backend" "clickhouse" }}
{{- $_ := set $s "clickhouse_url" (required "clickhouse.url is required (e.g. http://clickhouse-helicone.helicone-data:8123)" $v.clickhouse.url) }}
{{- $_ := set $s "clickhouse_user" $v.clickhouse.user }}
{{- $_ := set $s "clickhouse_database" $v.clickhouse.database }}
{{- end }}
{{- if and (has "prompts" $uses) $v.components.prompts.enabled }}
{{- $_ := set $s "prompts_target" (printf "%s:%v" (include "helicone.componentName" (dict "ctx" $ctx "component" "prompts")) $v.components.prompts.grpcPort) }}
{{- end }}
{{- if has "s3" $uses }}
{{- $_ := set $s "body_store" "s3" }}
{{- if $v.s3.endpoint }}{{ $_ := set $s "s3_endpoint" $v.s3.endpoint }}{{ end }}
{{- $_ := set $s "s3_bucket" $v.s3.bucket }}
{{- $_ := set $s "s3_region" $v.s3.region }}
{{- end }}
{{- if eq $name "prompts" }}
{{- $_ := set $s "grpc_port" $c.grpcPort }}
{{- end }}
{{- if and (eq $name "gateway") $v.llmSecurity.url }}
{{- $_ := set $s "llm_security_url" $v.llmSecurity.url }}
{{- $_ := set $s "llm_security_model" (required "llmSecurity.model is required with llmSecurity.url (the classifier's model as its server names it, e.g. meta-llama/Llama-Guard-3-8B)" $v.llmSecurity.model) }}
{{- end }}
{{- if ne $name "migrations" }}
{{- range $k, $val := $v.config }}{{ $_ := set $s $k $val }}{{ end }}
{{- range $k, $val := ($c.config | default dict) }}{{ $_ := set $s $k $val }}{{ end }}
{{- end }}
{{- toJson $s }}
{{- end }}

{{/* The settings dict as HELICONE_* environment variables (ConfigMap data / env values). */}}
{{- define "helicone.settingsEnv" -}}
{{- $s := fromJson (include "helicone.settings" .) }}
{{- range $k := keys $s | sortAlpha }}
{{- $val := get $s $k }}
{{ printf "HELICONE_%s" (upper $k) }}: {{ include "helicone.settingValue" $val | quote }}
{{- end }}
{{- end }}

{{/* One setting as the environment spells it: lists/maps as JSON (pydantic-settings parses them), whole numbers without an exponent. */}}
{{- define "helicone.settingValue" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if or (kindIs "slice" .) (kindIs "map" .) }}{{ toJson . }}
{{- else if and (kindIs "float64" .) (eq . (floor .)) }}{{ int64 . }}
{{- else }}{{ toString . }}
{{- end }}
{{- end }}

{{/*
A component's secret settings: a list of {env, secret, key}. Each comes from the backing
service's existingSecret when set, else from the chart's Secret.
*/}}
{{- define "helicone.secretEnv" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $uses := fromJsonArray (include "helicone.uses" .component) }}
{{- $own := .secretName | default (include "helicone.secretName" $ctx) }}
{{- $out := list }}
{{- if has "postgres" $uses }}
{{- if $v.postgres.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_POSTGRES_DSN" "secret" $v.postgres.existingSecret "key" $v.postgres.existingSecretKey) }}
{{- else }}
{{- $_ := required "postgres.dsn or postgres.existingSecret is required (the Postgres connection URI)" $v.postgres.dsn }}
{{- $out = append $out (dict "env" "HELICONE_POSTGRES_DSN" "secret" $own "key" "postgres-dsn") }}
{{- end }}
{{- end }}
{{- if has "clickhouse" $uses }}
{{- if $v.clickhouse.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_CLICKHOUSE_PASSWORD" "secret" $v.clickhouse.existingSecret "key" $v.clickhouse.existingSecretKey) }}
{{- else if $v.clickhouse.password }}
{{- $out = append $out (dict "env" "HELICONE_CLICKHOUSE_PASSWORD" "secret" $own "key" "clickhouse-password") }}
{{- end }}
{{- end }}
{{- if has "s3" $uses }}
{{- if $v.s3.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_S3_ACCESS_KEY_ID" "secret" $v.s3.existingSecret "key" $v.s3.existingSecretAccessKeyIdKey) }}
{{- $out = append $out (dict "env" "HELICONE_S3_SECRET_ACCESS_KEY" "secret" $v.s3.existingSecret "key" $v.s3.existingSecretSecretAccessKeyKey) }}
{{- else if or $v.s3.accessKeyId $v.s3.secretAccessKey }}
{{- if not (and $v.s3.accessKeyId $v.s3.secretAccessKey) }}{{ fail "s3.accessKeyId and s3.secretAccessKey go together (or leave both empty for the pod's cloud identity)" }}{{ end }}
{{- $out = append $out (dict "env" "HELICONE_S3_ACCESS_KEY_ID" "secret" $own "key" "s3-access-key-id") }}
{{- $out = append $out (dict "env" "HELICONE_S3_SECRET_ACCESS_KEY" "secret" $own "key" "s3-secret-access-key") }}
{{- end }}
{{- end }}
{{- if and (has "redis" $uses) (or $v.redis.url $v.redis.existingSecret) }}
{{- if $v.redis.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_REDIS_URL" "secret" $v.redis.existingSecret "key" $v.redis.existingSecretKey) }}
{{- else }}
{{- $out = append $out (dict "env" "HELICONE_REDIS_URL" "secret" $own "key" "redis-url") }}
{{- end }}
{{- end }}
{{- if and (eq .component "gateway") $v.llmSecurity.url (or $v.llmSecurity.apiKey $v.llmSecurity.existingSecret) }}
{{- if $v.llmSecurity.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_LLM_SECURITY_API_KEY" "secret" $v.llmSecurity.existingSecret "key" $v.llmSecurity.existingSecretKey) }}
{{- else }}
{{- $out = append $out (dict "env" "HELICONE_LLM_SECURITY_API_KEY" "secret" $own "key" "llm-security-api-key") }}
{{- end }}
{{- end }}
{{- if and (eq .component "api") (or $v.admin.token $v.admin.existingSecret) }}
{{- if $v.admin.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_ADMIN_TOKEN" "secret" $v.admin.existingSecret "key" $v.admin.existingSecretKey) }}
{{- else }}
{{- $out = append $out (dict "env" "HELICONE_ADMIN_TOKEN" "secret" $own "key" "admin-token") }}
{{- end }}
{{- end }}
{{- if and (has .component (list "api" "gateway")) (or $v.vault.key $v.vault.existingSecret) }}
{{- /* the provider key vault: the api encrypts with it, the gateway decrypts */}}
{{- if $v.vault.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_VAULT_KEY" "secret" $v.vault.existingSecret "key" $v.vault.existingSecretKey) }}
{{- if $v.vault.existingSecretOldKeysKey }}
{{- $out = append $out (dict "env" "HELICONE_VAULT_OLD_KEYS" "secret" $v.vault.existingSecret "key" $v.vault.existingSecretOldKeysKey) }}
{{- end }}
{{- else }}
{{- $out = append $out (dict "env" "HELICONE_VAULT_KEY" "secret" $own "key" "vault-key") }}
{{- if $v.vault.oldKeys }}
{{- $out = append $out (dict "env" "HELICONE_VAULT_OLD_KEYS" "secret" $own "key" "vault-old-keys") }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (has "kafka" $uses) (hasPrefix "SASL" $v.kafka.securityProtocol) }}
{{- $user := get $v.kafka.sasl .component }}
{{- if $user.existingSecret }}
{{- $out = append $out (dict "env" "HELICONE_KAFKA_SASL_PASSWORD" "secret" $user.existingSecret "key" $user.existingSecretKey) }}
{{- else }}
{{- $_ := required (printf "kafka.sasl.%s.password or kafka.sasl.%s.existingSecret is required when kafka.securityProtocol is SASL_*" .component .component) $user.password }}
{{- $out = append $out (dict "env" "HELICONE_KAFKA_SASL_PASSWORD" "secret" $own "key" (printf "kafka-sasl-password-%s" .component)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The chart-owned Secret's data (only the secrets not taken from an existingSecret). */}}
{{- define "helicone.secretData" -}}
{{- $v := .Values }}
{{- $d := dict }}
{{- if and (not $v.postgres.existingSecret) $v.postgres.dsn }}{{ $_ := set $d "postgres-dsn" $v.postgres.dsn }}{{ end }}
{{- if and (not $v.clickhouse.existingSecret) $v.clickhouse.password }}{{ $_ := set $d "clickhouse-password" $v.clickhouse.password }}{{ end }}
{{- if and $v.components.gateway.enabled (not $v.redis.existingSecret) $v.redis.url }}{{ $_ := set $d "redis-url" $v.redis.url }}{{ end }}
{{- if and $v.components.gateway.enabled $v.llmSecurity.url (not $v.llmSecurity.existingSecret) $v.llmSecurity.apiKey }}{{ $_ := set $d "llm-security-api-key" $v.llmSecurity.apiKey }}{{ end }}
{{- if and $v.components.api.enabled (not $v.admin.existingSecret) $v.admin.token }}{{ $_ := set $d "admin-token" $v.admin.token }}{{ end }}
{{- if and $v.vault.oldKeys (not $v.vault.key) (not $v.vault.existingSecret) }}{{ fail "vault.oldKeys needs vault.key: the old keys only decrypt, a current key encrypts" }}{{ end }}
{{- if and (or $v.components.api.enabled $v.components.gateway.enabled) (not $v.vault.existingSecret) $v.vault.key }}
{{- $_ := set $d "vault-key" $v.vault.key }}
{{- if $v.vault.oldKeys }}{{ $_ := set $d "vault-old-keys" $v.vault.oldKeys }}{{ end }}
{{- end }}
{{- if and (not $v.s3.existingSecret) $v.s3.accessKeyId $v.s3.secretAccessKey }}
{{- $_ := set $d "s3-access-key-id" $v.s3.accessKeyId }}
{{- $_ := set $d "s3-secret-access-key" $v.s3.secretAccessKey }}
{{- end }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
{{- range $component := list "gateway" "ingest" "api" }}
{{- $user := get $v.kafka.sasl $component }}
{{- if and (get $v.components $component).enabled (not $user.existingSecret) $user.password }}{{ $_ := set $d (printf "kafka-sasl-password-%s" $component) $user.password }}{{ end }}
{{- end }}
{{- end }}
{{- if and $v.components.ingest.enabled $v.components.ingest.keda.enabled (ne $v.kafka.securityProtocol "PLAINTEXT") }}
{{- /* KEDA's TriggerAuthentication takes these connection facts only from Secrets */}}
{{- $_ := set $d "keda-kafka-tls" (ternary "enable" "disable" (hasSuffix "SSL" $v.kafka.securityProtocol)) }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
{{- $_ := set $d "keda-kafka-sasl" (get (dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512") $v.kafka.sasl.mechanism) }}
{{- $_ := set $d "keda-kafka-username" $v.kafka.sasl.ingest.username }}
{{- end }}
{{- end }}
{{- toJson $d }}
{{- end }}

{{- define "helicone.secretEnvList" -}}
{{- range (fromJsonArray (include "helicone.secretEnv" .)) }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- end }}
