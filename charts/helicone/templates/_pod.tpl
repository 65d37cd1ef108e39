{{/*
The one pod template every component renders from (Deployments, the gateway's Rollout): a fix to
probes, security context or volumes lands everywhere at once. Called with (dict "ctx" $ "component" name).
*/}}
{{- define "helicone.podTemplate" -}}
{{- $ctx := .ctx }}
{{- $name := .component }}
{{- $c := fromJson (include "helicone.componentValues" .) }}
{{- $settings := fromJson (include "helicone.settings" .) }}
metadata:
  labels:
    {{- include "helicone.labels" . | nindent 4 }}
    {{- with $c.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include "helicone.settingsEnv" . | sha256sum }}
    checksum/secret: {{ printf "%s%s" (include "helicone.secretData" $ctx) (include "helicone.secretEnv" .) | sha256sum }}
    {{- with $c.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "helicone.serviceAccountName" $ctx }}
  automountServiceAccountToken: false
  {{- with $ctx.Values.image.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  securityContext:
    {{- toYaml $c.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
  {{- with $c.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- if $c.topologySpread.enabled }}
  {{- $hashLabel := ternary "rollouts-pod-template-hash" "pod-template-hash" (and (eq $name "gateway") (eq (include "helicone.gatewayIsRollout" $ctx) "true")) }}
  topologySpreadConstraints:
    - maxSkew: {{ $c.topologySpread.maxSkew }}
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: {{ $c.topologySpread.whenUnsatisfiable }}
      labelSelector:
        matchLabels:
          {{- include "helicone.selectorLabels" . | nindent 10 }}
      matchLabelKeys: [{{ $hashLabel }}]
    - maxSkew: {{ $c.topologySpread.maxSkew }}
      topologyKey: kubernetes.io/hostname
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- include "helicone.selectorLabels" . | nindent 10 }}
      matchLabelKeys: [{{ $hashLabel }}]
  {{- end }}
  {{- with $c.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $c.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $name }}
      image: {{ include "helicone.image" (dict "ctx" $ctx) }}
      imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
      command: ["python", "-m", "helicone_{{ $name }}"]
      envFrom:
        - configMapRef:
            name: {{ include "helicone.componentName" . }}
      {{- $secretEnv := include "helicone.secretEnvList" . }}
      {{- if or $secretEnv $c.extraEnv }}
      env:
        {{- $secretEnv | indent 8 }}
        {{- with $c.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ $c.port }}
          protocol: TCP
        {{- if eq $name "prompts" }}
        - name: grpc
          containerPort: {{ $c.grpcPort }}
          protocol: TCP
        {{- end }}
      {{- $probe := $c.probes }}
      {{- if eq $name "prompts" }}
      {{- /* gRPC probes on the standard health service: SERVING only while its Postgres answers */}}
      startupProbe:
        grpc: {port: {{ $c.grpcPort }}}
        periodSeconds: {{ $probe.periodSeconds }}
        timeoutSeconds: {{ $probe.timeoutSeconds }}
        failureThreshold: {{ $probe.startupFailureThreshold }}
      readinessProbe:
        grpc: {port: {{ $c.grpcPort }}}
        periodSeconds: {{ $probe.periodSeconds }}
        timeoutSeconds: {{ $probe.timeoutSeconds }}
        failureThreshold: {{ $probe.failureThreshold }}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: {{ $probe.periodSeconds }}
        timeoutSeconds: {{ $probe.timeoutSeconds }}
        failureThreshold: {{ $probe.failureThreshold }}
      {{- else }}
      startupProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: {{ $probe.periodSeconds }}
        timeoutSeconds: {{ $probe.timeoutSeconds }}
        failureThreshold: {{ $probe.startupFailureThreshold }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        periodSeconds: {{ $probe.periodSeconds }}
        timeoutSeconds: {{ $probe.timeoutSeconds }}
        failureThreshold: {{ $probe.failureThreshold }}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        periodSeconds: {{ $probe.periodSeconds }}
        timeoutSeconds: {{ $probe.timeoutSeconds }}
        failureThreshold: {{ $probe.failureThreshold }}
      {{- end }}
      {{- if gt (int $c.preStopSeconds) 0 }}
      lifecycle:
        preStop:
          {{- /* keep serving while endpoints and load balancers drop the pod; SIGTERM then drains the publisher */}}
          exec:
            command: ["sleep", "{{ $c.preStopSeconds }}"]
      {{- end }}
      resources:
        {{- toYaml $c.resources | nindent 8 }}
      securityContext:
        {{- toYaml $c.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: {{ include "helicone.dataDir" $ctx }}
        - name: tmp
          mountPath: /tmp
        {{- if and (has "kafka" (fromJsonArray (include "helicone.uses" $name))) $ctx.Values.kafka.tls.caSecret (hasSuffix "SSL" $ctx.Values.kafka.securityProtocol) }}
        - name: kafka-ca
          mountPath: /etc/helicone/kafka-ca
          readOnly: true
        {{- end }}
  volumes:
    - name: data
      emptyDir:
        {{- if eq $name "gateway" }}
        {{- /* the event journals live here: each worker's cap plus one segment being written (gateway_workers > 1: one journal per worker), plus room for the key snapshot */}}
        {{- $perWorker := add (int64 (required "components.gateway.config.journal_max_bytes is required (it sizes the journal volume)" $settings.journal_max_bytes)) (int64 (required "components.gateway.config.journal_segment_bytes is required" $settings.journal_segment_bytes)) }}
        {{- $journal := add (mul $perWorker (int64 ($settings.gateway_workers | default 1))) 67108864 }}
        sizeLimit: {{ div $journal 1048576 }}Mi
        {{- else }}
        sizeLimit: {{ $c.dataSizeLimit }}
        {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if and (has "kafka" (fromJsonArray (include "helicone.uses" $name))) $ctx.Values.kafka.tls.caSecret (hasSuffix "SSL" $ctx.Values.kafka.securityProtocol) }}
    - name: kafka-ca
      secret:
        secretName: {{ $ctx.Values.kafka.tls.caSecret }}
        items:
          - key: ca.crt
            path: ca.crt
    {{- end }}
{{- end }}
