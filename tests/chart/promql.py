"""The PromQL the chart ships (alert rules, Grafana dashboards, the gateway canary's analysis) and
the metric names it reads, so tests can hold every one of them against what the services export.

promql_metric_names() is a small scanner, not a PromQL parser: it drops what cannot be a metric
name (strings, label matchers, ranges, grouping label lists, template variables) and keeps the
identifiers that are not function calls or keywords. It rejects what it cannot read reliably.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from tests.chart.render import CHART_DIR as CHART
from tests.chart.render import objects

# Strings first: label values hold anything, even braces ("{{args.canary-hash}}") and `$vars`.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$(?:\{[^{}]*\}|\w+)")  # Grafana variables: $__rate_interval, ${datasource}
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")  # range and subquery selectors, offsets inside are durations
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
# Not preceded by a word character, `:` or `.`: skips the unit of a duration (5m) and exponents (1e+06).
_IDENT = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset({
    "and", "or", "unless", "atan2", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
    "inf", "nan", "le",
})
_HISTOGRAM_SERIES = re.compile(r"_(?:bucket|sum|count)$")
# Scraped by Prometheus itself, not exported by a service.
_SYNTHETIC = frozenset({"up"})
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.S)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads; a histogram's _bucket/_sum/_count series count as its
    own name. Ignores functions, label names, keywords, numbers, durations and `up`."""
    if "__name__" in expr:
        raise ValueError(f"selects metrics by __name__, which this scanner cannot check: {expr!r}")
    text = _STRING.sub('""', expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    if any(c in text for c in "{}[]"):
        raise ValueError(f"unbalanced or nested braces/brackets in PromQL: {expr!r}")
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(0)
        if word.lower() in _KEYWORDS or text[m.end():].lstrip().startswith("("):
            continue
        names.add(_HISTOGRAM_SERIES.sub("", word))
    return names - _SYNTHETIC


def grafana_variable_metric_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query: `label_values(<selector>, <label>)` or PromQL."""
    m = _LABEL_VALUES.match(query)
    return promql_metric_names(m.group(1) if m else query)


# ---- where the chart keeps its PromQL ------------------------------------------------------------

def rule_exprs(rendered: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(alert name, expr) of the rendered PrometheusRule."""
    for doc in _docs(rendered, "PrometheusRule"):
        for group in doc["spec"]["groups"]:
            for rule in group["rules"]:
                yield rule.get("alert") or rule["record"], rule["expr"]


def analysis_exprs(rendered: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(metric name, query) of the rendered Argo Rollouts AnalysisTemplates."""
    for doc in _docs(rendered, "AnalysisTemplate"):
        for metric in doc["spec"]["metrics"]:
            yield metric["name"], metric["provider"]["prometheus"]["query"]


def dashboard_files() -> list[Path]:
    return sorted((CHART / "dashboards").glob("*.json"))


def dashboard_exprs(path: Path) -> Iterator[tuple[str, str, set[str]]]:
    """(where, query, metric names) of every panel target and query variable of a dashboard."""
    board = json.loads(path.read_text())
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            yield f"{path.name} variable {var['name']}", query, grafana_variable_metric_names(query)
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"{path.name} panel {panel['title']!r}", target["expr"], promql_metric_names(target["expr"])


def chart_metric_names(rendered: dict[str, str]) -> dict[str, set[str]]:
    """Every metric name the chart's PromQL reads -> where it is read."""
    used: dict[str, set[str]] = {}
    for alert, expr in rule_exprs(rendered):
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(f"PrometheusRule {alert}")
    for metric, query in analysis_exprs(rendered):
        for name in promql_metric_names(query):
            used.setdefault(name, set()).add(f"AnalysisTemplate {metric}")
    for path in dashboard_files():
        for where, _, names in dashboard_exprs(path):
            for name in names:
                used.setdefault(name, set()).add(where)
    return used


def _docs(rendered: dict[str, str], kind: str) -> Iterator[dict]:
    return (o for o in objects(rendered) if o["kind"] == kind)
