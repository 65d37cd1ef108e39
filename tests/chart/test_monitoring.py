"""The chart's monitoring: PodMonitors, the PrometheusRule (checked and unit-tested by promtool),
runbooks, Grafana dashboards, every metric their PromQL reads held against the /metrics of a
running stack, and every metric the services register shown on a panel of their dashboard."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import httpx
import pytest
import yaml

from tests.chart.promql import (
    CHART,
    analysis_exprs,
    chart_metric_names,
    dashboard_exprs,
    dashboard_files,
    grafana_variable_metric_names,
    promql_metric_names,
    rule_exprs,
)
from tests.chart.render import NAMESPACE, RELEASE, REQUIRED, ROOT, merge, objects
from tests.chart.render import render as render_chart

pytestmark = pytest.mark.chart
MONITORING = {"metrics": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                          "grafanaDashboards": {"enabled": True}}}
ALERTS_TEST = Path(__file__).parent / "promtool" / "alerts_test.yaml"
RUNBOOKS = CHART / "docs" / "runbooks.md"
RUNBOOK_BASE = "https://github.com/helicone-stack/helicone-stack/blob/main/charts/helicone/docs/runbooks.md"


def render(*overrides: dict) -> dict[str, str]:
    return render_chart(REQUIRED, *overrides)


def docs(rendered: dict[str, str], kind: str) -> list[dict]:
    return [o for o in objects(rendered) if o["kind"] == kind]


def the_rule(rendered: dict[str, str]) -> dict:
    (rule,) = docs(rendered, "PrometheusRule")
    return rule


def alerts(rule: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's 'prometheus' package (scripts/setup.sh checks for it)")
    return path


def write_rules(rule: dict, tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render(MONITORING)


# ---- (a) the PrometheusRule ---------------------------------------------------------------------

def test_rules_pass_promtool_check(rendered, tmp_path):
    rules = write_rules(the_rule(rendered), tmp_path)
    out = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts(the_rule(rendered)))} rules found" in out.stdout


def test_every_alert_fires_and_stays_quiet_in_the_promtool_unit_tests(rendered, tmp_path):
    rules = write_rules(the_rule(rendered), tmp_path)
    suite = yaml.safe_load(ALERTS_TEST.read_text())
    suite["rule_files"] = [str(rules)]
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test(rendered):
    suite = yaml.safe_load(ALERTS_TEST.read_text())
    fires, quiet = set(), set()
    for case in suite["tests"]:
        expected: dict[str, bool] = {}
        for check in case["alert_rule_test"]:
            expected[check["alertname"]] = expected.get(check["alertname"], False) or bool(check["exp_alerts"])
            for exp in check["exp_alerts"]:
                assert "severity" in exp["exp_labels"], f"{case['name']}: the severity label is not checked"
                assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url"}, case["name"]
        # quiet: series under which the alert is never expected (not just still pending in a firing case)
        for name, fired in expected.items():
            (fires if fired else quiet).add(name)
    names = set(alerts(the_rule(rendered)))
    assert names - fires == set(), "alerts without a unit test where they fire"
    assert names - quiet == set(), "alerts without a unit test where healthy series keep them quiet"
    assert (fires | quiet) - names == set(), "unit tests of alerts the rule does not have"


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("scaler", [
    {"ingest": {"keda": {"enabled": True, "minReplicas": 0}}},  # KEDA scales an idle ingest to zero
    {"ingest": {"replicas": 0}},
])
def test_service_down_stays_quiet_for_a_component_scaled_to_zero(tmp_path, scaler):
    """No pod of a component that may have none is not a component down: ServiceDown (critical) would
    page every time KEDA scaled an idle ingest to zero. A pod of it that Prometheus cannot scrape still alerts."""
    rule = the_rule(render(MONITORING, {"components": scaler}))
    pods = {"gateway": "gw-1", "api": "api-1", "prompts": "pr-1"}
    series = [{"series": f'helicone_service_up{{namespace="{NAMESPACE}", job="{RELEASE}-helicone-{c}", pod="{pod}", '
                         f'service="{c}"}}', "values": "1x20"} for c, pod in pods.items()]
    down = f'up{{namespace="{NAMESPACE}", job="{RELEASE}-helicone-ingest", pod="in-1", component="ingest", instance="10.0.0.3:8788"}}'
    suite = {"rule_files": [str(write_rules(rule, tmp_path))], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series,
         "alert_rule_test": [{"eval_time": "15m", "alertname": "ServiceDown", "exp_alerts": []}]},
        {"interval": "1m", "input_series": [*series, {"series": down, "values": "0x20"}],
         "alert_rule_test": [{"eval_time": "15m", "alertname": "ServiceDown", "exp_alerts": [{
             "exp_labels": {"severity": "critical", "namespace": NAMESPACE, "job": f"{RELEASE}-helicone-ingest", "pod": "in-1",
                            "component": "ingest", "instance": "10.0.0.3:8788"},
             "exp_annotations": {**alerts(rule)["ServiceDown"]["annotations"], "summary": f"{RELEASE}-helicone-ingest is down",
                                 "description": f"Prometheus cannot scrape in-1 of {RELEASE}-helicone-ingest (namespace "
                                                f"{NAMESPACE}) for 5 minutes."}}]}]},
    ]}
    test_file = tmp_path / "scaled_to_zero_test.yaml"
    test_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_severity_annotations_and_its_runbook_section(rendered):
    sections = {github_anchor(h) for h in re.findall(r"^## (.+)$", RUNBOOKS.read_text(), re.M)}
    rules = alerts(the_rule(rendered))
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name
        url = rule["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{name.lower()}", name
        assert url.rsplit("#", 1)[1] in sections, f"{name}: no `## {name}` section in {RUNBOOKS.name}"
    assert sections == {n.lower() for n in rules}, "runbook sections without an alert"


# The kubelet's (cAdvisor) container series the runbooks read beside the services' own; `container` is the component.
KUBELET_METRICS = frozenset({"container_cpu_usage_seconds_total", "container_cpu_cfs_throttled_periods_total"})


def runbook_queries() -> list[tuple[str, str]]:
    """(section, query) of every line of the runbooks' ```promql blocks, comments left out."""
    queries = []
    for section in re.split(r"^## ", RUNBOOKS.read_text(), flags=re.M)[1:]:
        for block in re.findall(r"^```promql\n(.*?)^```", section, re.M | re.S):
            for line in block.splitlines():
                query = re.sub(r"(^|\s)#.*$", "", line).strip()
                if query:
                    queries.append((section.split("\n", 1)[0], query))
    return queries


def test_runbook_queries_read_metrics_that_exist():
    """A runbook query on a metric nobody exports answers an empty result in the middle of an incident.
    The runbooks promise that the dashboards show every metric they name, and the dashboards' metrics are
    held against a running stack below; the services' registries have no process_* collector."""
    queries = runbook_queries()
    assert {s for s, _ in queries} >= {"GatewayHighErrorRatio", "GatewayRequestsHeldByLogging", "ServiceDown"}
    shown = {name for path in dashboard_files() for _, _, names in dashboard_exprs(path) for name in names}
    for section, query in queries:
        unknown = promql_metric_names(query) - shown - KUBELET_METRICS
        assert unknown == set(), f"runbook {section}: {query!r} reads {sorted(unknown)}, which no dashboard shows"
        for name in promql_metric_names(query) & KUBELET_METRICS:
            assert re.search(name + r'\{[^}]*container="(gateway|ingest|api|prompts)"', query), (section, query)


def test_thresholds_come_from_values(tmp_path):
    rule = the_rule(render(MONITORING, {"metrics": {"prometheusRule": {
        "gatewayErrorRatio": 0.2, "gatewayP95Seconds": 8, "journalBacklogMinutes": 17,
        "consumerLagEvents": 2500000, "deadLettersPerSecond": 0.003, "moderationFailureRatio": 0.3,
        "webhookFailureRatio": 0.8, "llmSecurityFailureRatio": 0.4, "storeErrorRatio": 1.5}}}))
    rules = alerts(rule)
    assert rules["GatewayHighErrorRatio"]["expr"].rstrip().endswith("> 0.2")
    assert rules["GatewayHighLatency"]["expr"].rstrip().endswith("> 8")
    assert rules["GatewayJournalBacklog"]["for"] == "17m"
    assert rules["IngestConsumerLag"]["expr"].rstrip().endswith("> 2500000")  # no exponent (2.5e+06)
    assert rules["IngestDeadLetters"]["expr"].rstrip().endswith("> 0.003")
    assert rules["GatewayModerationFailures"]["expr"].rstrip().endswith("> 0.3")
    assert rules["IngestWebhookDeliveriesFailing"]["expr"].rstrip().endswith("> 0.8")
    assert rules["GatewayLLMSecurityFailures"]["expr"].rstrip().endswith("> 0.4")
    assert "(threshold 0.4)" in rules["GatewayLLMSecurityFailures"]["annotations"]["description"]
    for store in ("GatewayCacheStoreErrors", "GatewayRateLimitStoreErrors"):  # failed calls a lookup/decision: may pass 1
        assert rules[store]["expr"].rstrip().endswith("> 1.5") and "(threshold 1.5)" in rules[store]["annotations"]["description"]
    assert "(threshold 0.8)" in rules["IngestWebhookDeliveriesFailing"]["annotations"]["description"]
    assert "(threshold 0.2)" in rules["GatewayHighErrorRatio"]["annotations"]["description"]
    assert "for 17 minutes" in rules["GatewayJournalBacklog"]["annotations"]["description"]
    out = subprocess.run([promtool(), "check", "rules", str(write_rules(rule, tmp_path))], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("key", "value"), [
    ("journalBacklogMinutes", 2.5), ("journalBacklogMinutes", 0), ("gatewayErrorRatio", "high"), ("gatewayErrorRatio", 0),
    ("consumerLagEvents", -5), ("deadLettersPerSecond", 0), ("moderationFailureRatio", 0), ("webhookFailureRatio", 1.5),
    ("llmSecurityFailureRatio", 0), ("llmSecurityFailureRatio", 1.5), ("storeErrorRatio", 0), ("storeErrorRatio", "often"),
])
def test_thresholds_the_rules_cannot_use_are_refused_naming_them(key, value):
    """A threshold lands in PromQL as it is (a duration for journalBacklogMinutes): the schema keeps it a number above 0."""
    with pytest.raises(helm.HelmError, match=re.escape(f"/metrics/prometheusRule/{key}")):
        render(MONITORING, {"metrics": {"prometheusRule": {key: value}}})


@pytest.mark.parametrize(("values", "message"), [
    ({"metrics": {"podMonitor": {"interval": "3m"}}}, r"metrics\.podMonitor\.interval \(3m\) is more than half of the alerts' 5m"),
    ({"metrics": {"podMonitor": {"interval": "151s"}}}, r"metrics\.podMonitor\.interval \(151s\) is more than half of the alerts' 5m"),
    ({"metrics": {"podMonitor": {"interval": "90s"}}, "components": {"gateway": {"rollout": {"enabled": True}}}},
     r"metrics\.podMonitor\.interval \(90s\) is more than half of components\.gateway\.rollout\.analysis\.window \(2m\)"),
    ({"metrics": {"podMonitor": {"interval": "1m"}},
      "components": {"gateway": {"rollout": {"enabled": True, "analysis": {"window": "90s"}}}}},
     r"metrics\.podMonitor\.interval \(1m\) is more than half of components\.gateway\.rollout\.analysis\.window \(90s\)"),
])
def test_a_scrape_interval_the_rate_windows_cannot_use_is_refused(values, message):
    """rate() needs two scrapes in its window: scraped every 3m, a 5m window mostly holds one, every alert
    on a rate (5xx ratio, dead letters, write failures...) drops out before its `for:` and never fires, and the
    canary analysis (`... or vector(0)`) measures a failing canary as healthy."""
    with pytest.raises(helm.HelmError, match=message):
        render(MONITORING, values)


@pytest.mark.parametrize("values", [
    {"metrics": {"podMonitor": {"interval": "150s"}}},
    {"metrics": {"podMonitor": {"interval": "1m"}}, "components": {"gateway": {"rollout": {"enabled": True}}}},
    # not read by the rules or the analysis: any interval
    {"metrics": {"podMonitor": {"interval": "10m"}, "prometheusRule": {"enabled": False}}},
    {"metrics": {"podMonitor": {"interval": "5m"}, "prometheusRule": {"enabled": False}},
     "components": {"gateway": {"rollout": {"enabled": True, "analysis": {"enabled": False}}}}},
])
def test_scrape_intervals_the_rate_windows_can_use_render(values):
    assert docs(render(MONITORING, values), "PodMonitor")

def test_only_enabled_components_are_monitored():
    rendered = render(MONITORING, {"components": {"ingest": {"enabled": False}, "prompts": {"enabled": False}}})
    rule = the_rule(rendered)
    assert [g["name"] for g in rule["spec"]["groups"]] == ["helicone-gateway", "helicone-services"]
    down = alerts(rule)["ServiceDown"]["expr"]
    assert 'job=~"hc-helicone-gateway|hc-helicone-api"' in down
    assert "ingest" not in down and "prompts" not in down
    assert "GatewayPromptsUnavailable" not in alerts(rule)  # the gateway is given no prompts service to fail
    assert "GatewayPromptsUnavailable" in alerts(the_rule(render(MONITORING)))
    assert sorted(pm["metadata"]["name"] for pm in docs(rendered, "PodMonitor")) == ["hc-helicone-api", "hc-helicone-gateway"]


def test_monitoring_is_off_by_default():
    rendered = render()
    for kind in ("PodMonitor", "PrometheusRule"):
        assert docs(rendered, kind) == []
    assert not [cm for cm in docs(rendered, "ConfigMap") if "-dashboard-" in cm["metadata"]["name"]]


def test_chart_lints_with_monitoring_enabled():
    report = helm.lint(CHART, merge(REQUIRED, MONITORING), strict=True, kube_version="v1.33.0")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("reader", [
    {"metrics": {"podMonitor": {"enabled": True}}},
    {"components": {"gateway": {"rollout": {"enabled": True}}}},  # the canary analysis
    {"components": {"gateway": {"autoscaling": {"enabled": True, "requestsPerSecond": 100}}}},  # prometheus-adapter's requests/s
], ids=["podMonitor", "rollout-analysis", "requestsPerSecond"])
def test_gateway_workers_can_be_read_by_prometheus(reader):
    """gateway_workers > 1: every worker's /metrics answers the totals of all the pod's workers (one metrics
    directory per pod: services/gateway/tests/test_workers.py), so the PodMonitor, canary analysis and requests/s
    HPA read the pod's counters whichever worker a scrape lands on; nothing refuses the combination."""
    workers = {"components": {"gateway": {"config": {"gateway_workers": 2}}}}
    render(reader, workers)
    render(reader)


# ---- PodMonitors --------------------------------------------------------------------------------

@pytest.mark.parametrize("rollout", [False, True])
def test_podmonitors_select_each_workloads_pods_and_give_the_labels_the_queries_use(rollout):
    rendered = render(MONITORING, {"metrics": {"podMonitor": {"interval": "15s", "labels": {"release": "kps"}}},
                                   "components": {"gateway": {"rollout": {"enabled": rollout}}}})
    workloads = {w["metadata"]["name"]: w for w in docs(rendered, "Deployment") + docs(rendered, "Rollout")}
    monitors = {pm["metadata"]["name"]: pm for pm in docs(rendered, "PodMonitor")}
    assert monitors.keys() == workloads.keys() == {f"hc-helicone-{c}" for c in ("gateway", "ingest", "api", "prompts")}
    assert workloads["hc-helicone-gateway"]["kind"] == ("Rollout" if rollout else "Deployment")
    rule_jobs = {j for _, expr in rule_exprs(rendered) for j in re.findall(r'\bjob=~?"([^"]+)"', expr)}
    for name, pm in monitors.items():
        spec, pod = pm["spec"], workloads[name]["spec"]["template"]
        assert pm["metadata"]["labels"]["release"] == "kps"
        assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        assert spec["selector"]["matchLabels"] == workloads[name]["spec"]["selector"]["matchLabels"]
        assert set(spec["selector"]["matchLabels"].items()) <= set(pod["metadata"]["labels"].items())
        (endpoint,) = spec["podMetricsEndpoints"]
        assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "15s")
        assert endpoint["port"] in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        relabel = {r["targetLabel"]: r for r in endpoint["relabelings"]}
        assert relabel["job"]["replacement"] == name and "sourceLabels" not in relabel["job"]
        assert any(name == j or re.fullmatch(j, name) for j in rule_jobs), f"the rules never select job {name}"
        assert relabel["namespace"]["sourceLabels"] == ["__meta_kubernetes_namespace"]
        assert relabel["pod"]["sourceLabels"] == ["__meta_kubernetes_pod_name"]
        assert relabel["component"]["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
        assert relabel["rollouts_pod_template_hash"]["sourceLabels"] == ["__meta_kubernetes_pod_label_rollouts_pod_template_hash"]
        assert all(r.get("action", "replace") == "replace" for r in endpoint["relabelings"])
    # the canary analysis selects the canary's series by labels these relabelings set
    for _, query in analysis_exprs(rendered):
        assert {"namespace", "rollouts_pod_template_hash"} <= set(re.findall(r'(\w+)="', query)) <= set(relabel) | {"status_class"}
    assert bool(list(analysis_exprs(rendered))) == rollout


# ---- (b) dashboards and the PromQL scanner ------------------------------------------------------

def test_dashboards_parse_and_every_panel_queries_the_datasource_variable():
    files = dashboard_files()
    assert {f.stem for f in files} >= {"overview", "gateway", "ingest", "api", "cost"}
    uids = set()
    for path in files:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40, path.name
        uids.add(board["uid"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus", path.name
        assert board["panels"], path.name
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        cells: dict[tuple[int, int], str] = {}
        for panel in board["panels"]:
            where = f"{path.name} panel {panel.get('title')!r}"
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
            for cell in ((x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])):
                assert cell not in cells, f"{where} overlaps {cells[cell]}"
                cells[cell] = where
            if panel["type"] == "row":  # a heading: its panels follow it in the list (collapsed, they would hide from every check)
                assert panel["collapsed"] is False and panel.get("panels", []) == [] and "targets" not in panel, where
                assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1), where
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
                assert target["expr"].strip(), where
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"]["uid"] == "${datasource}", f"{path.name} variable {var['name']}"


def test_every_dashboard_query_reads_helicone_metrics():
    for path in dashboard_files():
        for where, expr, names in dashboard_exprs(path):
            assert names or "up{" in expr, f"{where}: no metric in {expr!r}"


def grafana_to_promql(expr: str) -> str:
    """A panel query as Grafana sends it for namespace NAMESPACE (a 30 s scrape: $__rate_interval 2m)."""
    return expr.replace("$namespace", NAMESPACE).replace("$__rate_interval", "2m").replace("$__range", "1h")


def test_ratio_panels_read_0_while_traffic_flows_without_errors(tmp_path):
    """A provider's 5xx series exists only after its first 5xx (a moderation, LLM security or cache result's after its
    first outcome): the ratio panels of a healthy gateway must read 0 (per provider too), not "No data", which an
    operator cannot tell from a broken query. Evaluated by Prometheus' engine (promtool), over two pods."""
    def requests(pod: str, provider: str, status_class: str, per_minute: int) -> dict:
        return {"series": f'helicone_gateway_requests_total{{namespace="{NAMESPACE}", job="{RELEASE}-helicone-gateway", '
                          f'pod="{pod}", provider="{provider}", status_class="{status_class}"}}', "values": f"0+{per_minute}x20"}

    def counted(metric: str, service: str, pod: str, result: str, per_minute: int) -> dict:
        return {"series": f'{metric}{{namespace="{NAMESPACE}", job="{RELEASE}-helicone-{service}", pod="{pod}", '
                          f'result="{result}"}}', "values": f"0+{per_minute}x20"}

    moderations, deliveries = "helicone_gateway_moderations_total", "helicone_ingest_webhook_deliveries_total"
    llm_security, cache = "helicone_gateway_llm_security_total", "helicone_gateway_cache_lookups_total"
    healthy = [requests("gw-1", "openai", "2xx", 120), requests("gw-2", "openai", "2xx", 120),  # never a 5xx
               counted(moderations, "gateway", "gw-1", "passed", 30), counted(moderations, "gateway", "gw-2", "flagged", 15),
               counted(moderations, "gateway", "gw-2", "refused", 50),  # never a failed moderation
               counted(llm_security, "gateway", "gw-1", "passed", 40), counted(llm_security, "gateway", "gw-2", "refused", 20),
               counted(cache, "gateway", "gw-1", "miss", 30),  # never a hit yet: 0, not "No data"
               counted(deliveries, "ingest", "in-1", "delivered", 60), counted(deliveries, "ingest", "in-1", "failed", 0),
               counted(deliveries, "ingest", "in-1", "refused", 30)]
    failing = [*healthy, requests("gw-1", "anthropic", "2xx", 90), requests("gw-2", "anthropic", "2xx", 90),
               requests("gw-2", "anthropic", "5xx", 60),  # anthropic: 1/s of 4/s, all 5xx on one pod
               counted(moderations, "gateway", "gw-2", "failed", 15),  # 15 of 60 calls, refused ones made none
               counted(llm_security, "gateway", "gw-2", "failed", 10),  # 10 of 50 calls, refused ones made none
               counted(cache, "gateway", "gw-2", "hit", 90),  # 90 of 120 lookups
               counted(deliveries, "ingest", "in-2", "failed", 20)]  # 20 of 80 tried, refused ones aside
    expected = {  # every percentunit panel -> its samples for the healthy and the failing series
        ("overview.json", "Gateway 5xx ratio"): ([{"labels": "{}", "value": 0}], [{"labels": "{}", "value": 0.125}]),
        ("gateway.json", "5xx ratio by provider"): (
            [{"labels": '{provider="openai"}', "value": 0}],
            [{"labels": '{provider="openai"}', "value": 0}, {"labels": '{provider="anthropic"}', "value": 0.25}]),
        ("gateway.json", "Moderation calls without a verdict"): ([{"labels": "{}", "value": 0}], [{"labels": "{}", "value": 0.25}]),
        ("gateway.json", "LLM security calls without a verdict"): ([{"labels": "{}", "value": 0}], [{"labels": "{}", "value": 0.2}]),
        ("gateway.json", "Cache hit ratio"): ([{"labels": "{}", "value": 0}], [{"labels": "{}", "value": 0.75}]),
        ("ingest.json", "Webhook deliveries failed"): ([{"labels": "{}", "value": 0}], [{"labels": "{}", "value": 0.25}]),
    }
    panels = {(path.name, p["title"]): p for path in dashboard_files() for p in json.loads(path.read_text())["panels"]}
    assert {k for k, p in panels.items() if p.get("fieldConfig", {}).get("defaults", {}).get("unit") == "percentunit"} == expected.keys()
    tests = [{"name": name, "interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": grafana_to_promql(target["expr"]), "eval_time": "10m", "exp_samples": samples[i]}
        for key, samples in expected.items() for target in panels[key]["targets"]]}
        for i, (name, series) in enumerate([("no 5xx", healthy), ("anthropic 25% 5xx", failing)])]
    test_file = tmp_path / "ratio_panels_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_realtime_panels_show_each_pods_sessions_open_and_refused(tmp_path):
    """The gateway dashboard shows the Realtime sessions each pod holds (helicone_gateway_realtime_sessions_open) and
    the sessions it refused per second, a key at HELICONE_REALTIME_SESSIONS_PER_KEY (..._refused_total), this
    release's only. Evaluated by Prometheus' engine (promtool), over two pods."""
    def series(metric: str, pod: str, values: str, namespace: str = NAMESPACE) -> dict:
        return {"series": f'{metric}{{namespace="{namespace}", job="{RELEASE}-helicone-gateway", pod="{pod}"}}',
                "values": values}

    opened, refused = "helicone_gateway_realtime_sessions_open", "helicone_gateway_realtime_sessions_refused_total"
    inputs = [series(opened, "gw-1", "0+1x10 10x10"), series(opened, "gw-2", "3x20"),
              series(refused, "gw-1", "0x10 0+30x10"), series(refused, "gw-2", "0x20"),  # gw-1: 30 a minute from 10m on
              series(opened, "gw-9", "50x20", namespace="other")]  # another release's: never shown
    panels = {p["title"]: p for p in json.loads((CHART / "dashboards" / "gateway.json").read_text())["panels"]}
    expected = {
        "Realtime sessions open": [{"labels": '{pod="gw-1"}', "value": 10}, {"labels": '{pod="gw-2"}', "value": 3}],
        "Realtime sessions refused / s (key at its session limit)": [{"labels": '{pod="gw-1"}', "value": 0.5},
                                                                    {"labels": '{pod="gw-2"}', "value": 0}],
    }
    checks = [{"expr": grafana_to_promql(target["expr"]), "eval_time": "18m", "exp_samples": samples}
              for title, samples in expected.items() for target in panels[title]["targets"]]
    test_file = tmp_path / "realtime_panels_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"name": "realtime panels", "interval": "1m", "input_series": inputs, "promql_expr_test": checks}]}, sort_keys=False))
    out = subprocess.run([promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar():
    rendered = render(MONITORING, {"metrics": {"grafanaDashboards": {
        "namespace": "monitoring", "labels": {"grafana_dashboard": "1", "team": "llm"}, "annotations": {"grafana_folder": "LLM"}}}})
    maps = {cm["metadata"]["name"]: cm for cm in docs(rendered, "ConfigMap") if "-dashboard-" in cm["metadata"]["name"]}
    assert set(maps) == {f"hc-helicone-dashboard-{f.stem}" for f in dashboard_files()}
    for path in dashboard_files():
        cm = maps[f"hc-helicone-dashboard-{path.stem}"]
        assert cm["metadata"]["namespace"] == "monitoring"
        assert {"grafana_dashboard": "1", "team": "llm", "app.kubernetes.io/instance": RELEASE}.items() <= cm["metadata"]["labels"].items()
        assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
        assert cm["data"] == {path.name: path.read_text().rstrip("\n")}
    default_ns = [cm for cm in docs(render(MONITORING), "ConfigMap") if "-dashboard-" in cm["metadata"]["name"]]
    assert default_ns and all(cm["metadata"]["namespace"] == NAMESPACE for cm in default_ns)


@pytest.mark.parametrize(("expr", "names"), [
    ("up == 0", set()),
    ('sum by (namespace, le) (rate(a_seconds_bucket{le="0.5", job=~"x|y"}[5m]))', {"a_seconds"}),
    ("histogram_quantile(0.95, sum by (le) (rate(b_seconds_bucket[$__rate_interval])))", {"b_seconds"}),
    ("c_seconds_sum / c_seconds_count", {"c_seconds"}),
    ('a > on (pod) group_left (x) b offset 10m or absent(c{ns="$namespace"}) unless up == 0', {"a", "b", "c"}),
    ('sum without (pod) (x_total) > bool 1e+06 * y and ignoring (kind) z', {"x_total", "y", "z"}),
    ('label_replace(max by (pod) (m) == 0, "reason", "kafka_disconnected", "", "")', {"m"}),
    ("sum(rate(s_total[5m:1m])) by (le) and on() vector(1) > time() - 1h", {"s_total"}),
    ('sum(r{hash="{{args.canary-hash}}", a=\'{b}\'}) or vector(0)', {"r"}),
    ("topk($n, sum by (provider, model) (increase(cost_total[$__range])))", {"cost_total"}),
    ("rate(d_total[1h30m] offset -5m) @ start()", {"d_total"}),
    ("sum(namespace:my_rule:rate5m)", {"namespace:my_rule:rate5m"}),
    ("e_total OR f AND g unless Inf > NaN", {"e_total", "f", "g"}),
])
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names


@pytest.mark.parametrize(("expr", "message"), [
    ('rate(x{a="b"[5m])', "unbalanced"),
    ("rate(x[5m)", "unbalanced"),
    ('{__name__=~"helicone_.*"}', "__name__"),
])
def test_promql_metric_names_refuses_what_it_cannot_read(expr, message):
    with pytest.raises(ValueError, match=message):
        promql_metric_names(expr)


def test_grafana_variable_queries():
    assert grafana_variable_metric_names("label_values(helicone_service_up, namespace)") == {"helicone_service_up"}
    assert grafana_variable_metric_names('label_values(x_total{namespace="$namespace"}, pod)') == {"x_total"}
    assert grafana_variable_metric_names("query_result(sum by (pod) (y))") == {"y"}


def test_every_promql_metric_name_follows_the_naming_convention():
    rendered = render(MONITORING, {"components": {"gateway": {"rollout": {"enabled": True}}}})
    used = chart_metric_names(rendered)
    assert any(w.startswith("AnalysisTemplate") for ws in used.values() for w in ws), "the canary analysis was not read"
    for name, where in used.items():
        assert re.fullmatch(r"helicone_(service_(up|info)|(gateway|ingest|api|prompts)_[a-z0-9_]+)", name), (name, where)


# ---- (c) every metric a service registers is on a dashboard -------------------------------------

# Where each service's metrics (helicone_<service>_*) are shown (ingest's tokens and cost on their own dashboard); every
# service's helicone_service_* on the overview.
SERVICE_DASHBOARDS = {"gateway": ("gateway.json",), "ingest": ("ingest.json", "cost.json"), "api": ("api.json",),
                      "prompts": ("api.json",), "service": ("overview.json",)}
# Metrics a service registers that no panel shows, each with the reason (name -> why). None so far: a metric worth
# exporting is worth a panel, and one nobody needs to see should not be exported.
NO_PANEL: dict[str, str] = {}
SOURCES = [*sorted(ROOT.glob("services/*/src")), ROOT / "libs" / "core" / "src"]


def registered_metric_names() -> dict[str, str]:
    """helicone_* name -> where the services' code registers it: every `<metrics>.counter|gauge|histogram(<name>, ...)`
    whose name is a literal (those built at run time are read from a running stack's /metrics below)."""
    found: dict[str, str] = {}
    for src in SOURCES:
        for path in sorted(src.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in {"counter", "gauge", "histogram"} and node.args
                        and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("helicone_")):
                    found[node.args[0].value] = f"{path.relative_to(ROOT)}:{node.lineno}"
    return found


def panel_metric_names() -> dict[str, set[str]]:
    """Dashboard file name -> the metrics its panels read (its variables left out)."""
    return {path.name: {n for where, _, names in dashboard_exprs(path) if " panel " in where for n in names}
            for path in dashboard_files()}


def assert_shown_on_dashboards(registered: dict[str, str]) -> None:
    """Every registered metric (name -> where it is registered) is read by a panel of its service's dashboard."""
    for name, where in registered.items():
        assert re.fullmatch(r"helicone_(service_(up|info)|(gateway|ingest|api|prompts)_[a-z0-9_]+)", name), (name, where)
    shown = panel_metric_names()
    boards = {name: SERVICE_DASHBOARDS[name.split("_")[1]] for name in registered}
    unshown = {name: f"{where} (dashboards/{' or '.join(boards[name])})" for name, where in registered.items()
               if not any(name in shown[b] for b in boards[name]) and name not in NO_PANEL}
    assert unshown == {}, "metrics no panel of their service's dashboard shows (add one, or to NO_PANEL with why):\n" + "\n".join(
        f"  {name}: {where}" for name, where in sorted(unshown.items()))
    # the allowlist stays true: none of its metrics has gained a panel (still registered: checked against a running stack)
    assert {n for n in NO_PANEL if n in set().union(*shown.values())} == set(), "NO_PANEL names a metric a panel shows"


def test_registered_metric_names_reads_the_services_code():
    found = registered_metric_names()
    assert {"helicone_service_up", "helicone_gateway_requests_total", "helicone_gateway_cache_lookups_total",
            "helicone_ingest_events_total", "helicone_api_queries_total", "helicone_prompts_rpc_seconds"} <= found.keys()
    assert found["helicone_gateway_cache_lookups_total"].startswith("services/gateway/src/helicone_gateway/cache.py:")


def test_every_metric_the_code_registers_is_shown_on_its_services_dashboard():
    """A metric without a panel is one an operator never looks at until an incident, when its name has to be
    found in the code: each service's dashboard shows every metric the service registers."""
    assert_shown_on_dashboards(registered_metric_names())


# ---- (d) against a running stack ----------------------------------------------------------------

def exported_metric_names(exposition: str) -> set[str]:
    """Names with a `# TYPE` line: exported even before a labelled metric has its first sample."""
    return {line.split()[2] for line in exposition.splitlines() if line.startswith("# TYPE ")}


def test_exported_metric_names_reads_type_lines():
    text = ("# HELP a_total A\n# TYPE a_total counter\n# HELP h_seconds H\n# TYPE h_seconds histogram\n"
            'h_seconds_bucket{le="+Inf"} 0.0\nh_seconds_count 0.0\n# TYPE g gauge\ng{k="v"} 1.0\n')
    assert exported_metric_names(text) == {"a_total", "h_seconds", "g"}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    from tests.support.stack import running_stack

    with running_stack(tmp_path_factory.mktemp("monitoring"), s3=False) as stack:
        yield stack


@pytest.fixture(scope="module")
def exported(running) -> dict[str, set[str]]:
    """Metric name -> the services whose /metrics export it, on a running stack."""
    # one proxied request, logged end to end, so labelled series appear on gateway and ingest
    r = httpx.post(f"{running.gateway}/v1/chat/completions", timeout=30, headers={
        "Authorization": "Bearer sk-proj-monitoring-test-0123456789", "Helicone-Auth": f"Bearer {running.key}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200, r.text
    running.wait_for_request(r.headers["helicone-id"])

    names: dict[str, set[str]] = {}
    for service, base in (("gateway", running.gateway), ("ingest", running.ingest_ops), ("api", running.api),
                          ("prompts", running.prompts_ops)):
        page = httpx.get(f"{base}/metrics", timeout=10)
        assert page.status_code == 200, (service, page.text[:200])
        for name in exported_metric_names(page.text):
            names.setdefault(name, set()).add(service)
    assert "helicone_gateway_requests_total" in names and "helicone_ingest_events_total" in names
    return names


@pytest.mark.e2e
def test_every_promql_metric_exists_in_the_metrics_of_a_running_stack(exported):
    used = chart_metric_names(render(MONITORING, {"components": {"gateway": {"rollout": {"enabled": True}}}}))
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    assert missing == {}, "metrics the chart's PromQL reads but no service exports:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(missing.items()))


@pytest.mark.e2e
def test_every_metric_a_running_stack_exports_is_shown_on_its_services_dashboard(exported):
    """The names the code builds at run time (the key directory's helicone_<service>_key_directory_*) and any
    registration the scan of the code misses. `<name>_created` is prometheus_client's creation time of a counter or
    histogram, not a metric of its own."""
    own = {name: services for name, services in exported.items()
           if not (name.endswith("_created") and {name[:-len("_created")], name[:-len("_created")] + "_total"} & exported.keys())}
    assert own.keys() < exported.keys() and "helicone_gateway_prompt_rpc_seconds" in own
    assert_shown_on_dashboards({name: f"/metrics of {', '.join(sorted(services))}" for name, services in own.items()})
    assert NO_PANEL.keys() <= exported.keys() | registered_metric_names().keys(), "NO_PANEL names a metric nothing registers"
