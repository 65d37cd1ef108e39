{{/*
What the PodMonitors, the PrometheusRule and the runbooks share (one place): the `job` label a
component's series carry and the selector the rules scope every query with.
*/}}

{{/* The scrape job of a component: its workload's name (the PodMonitor's relabeling sets it). Called with (dict "ctx" $ "component" name). */}}
{{- define "helicone.metricsJob" -}}
{{- include "helicone.componentName" . }}
{{- end }}

{{/* PromQL label matchers for one component of this release: `namespace="…", job="…"`. */}}
{{- define "helicone.metricsSelector" -}}
{{- printf "namespace=%q, job=%q" .ctx.Release.Namespace (include "helicone.metricsJob" .) }}
{{- end }}

{{/* Where an alert's runbook section is: docs/runbooks.md of this chart, anchor = the alert's name in lower case. */}}
{{- define "helicone.runbookUrl" -}}
{{- printf "%s/blob/main/charts/%s/docs/runbooks.md#%s" (trimSuffix "/" .ctx.Chart.Home) .ctx.Chart.Name (lower .alert) }}
{{- end }}

{{/* The rate() window of the PrometheusRule's alerts: it must hold two scrapes (podmonitor.yaml checks). */}}
{{- define "helicone.ruleRateWindow" -}}5m{{- end }}

{{/* Seconds of a duration as the schema allows them: "30s", "5m", "1h". */}}
{{- define "helicone.durationSeconds" -}}
{{- $n := int (trimSuffix "s" (trimSuffix "m" (trimSuffix "h" .))) }}
{{- if hasSuffix "h" . }}{{ mul $n 3600 }}{{ else if hasSuffix "m" . }}{{ mul $n 60 }}{{ else }}{{ $n }}{{ end }}
{{- end }}
