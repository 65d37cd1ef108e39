"""The Helm chart rendered with the real Helm engine: every values file and a matrix of feature switches
renders, lints and validates against the Kubernetes and CRD schemas; bad values are refused by the schema
or by the templates with a message naming the value; and the rendered objects do what the docs say."""

from __future__ import annotations

import base64
import itertools
import subprocess
import sys

import helm_python as helm
import pytest
import yaml

from tests.chart.render import CHART_DIR, REQUIRED, ROOT, by_kind, load_chart, merge, objects, render, values_file
from tests.chart.validation import validate_manifest

KUBE_VERSION = "v1.33.0"
COMPONENTS = ("gateway", "ingest", "api", "prompts")
REGIONS = sorted(p.name for p in CHART_DIR.glob("values-*.yaml") if p.name != "values-global.yaml")

EXISTING_SECRETS = {
    "postgres": {"dsn": "", "existingSecret": "pg-app", "existingSecretKey": "uri"},
    "clickhouse": {"existingSecret": "ch", "existingSecretKey": "password"},
    "s3": {"existingSecret": "s3"},
    "kafka": {"sasl": {"gateway": {"password": "", "existingSecret": "kafka-gateway"},
                       "ingest": {"password": "", "existingSecret": "kafka-ingest"},
                       "api": {"password": "", "existingSecret": "kafka-api"}}},
}


def switches(rollout: bool, keda: bool, monitoring: bool, existing: bool) -> dict:
    layer = {
        "components": {"gateway": {"rollout": {"enabled": rollout}}, "ingest": {"keda": {"enabled": keda}}},
        "metrics": {"podMonitor": {"enabled": monitoring}, "prometheusRule": {"enabled": monitoring},
                    "grafanaDashboards": {"enabled": monitoring}},
        "defaults": {"autoscaling": {"enabled": True, "maxReplicas": 12}},
    }
    if existing:
        layer = merge(layer, EXISTING_SECRETS)
    else:
        layer = merge(layer, {"clickhouse": {"password": "ch-pw"}, "s3": {"accessKeyId": "AK", "secretAccessKey": "SK"}})
    return layer


MATRIX = list(itertools.product([False, True], repeat=4))


@pytest.fixture(scope="module")
def chart():
    return load_chart()


def pods(objs: list[dict]) -> dict[str, dict]:
    """component -> pod template of its workload (Deployment or Rollout)."""
    out = {}
    for o in objs:
        if o["kind"] in ("Deployment", "Rollout"):
            out[o["metadata"]["labels"]["app.kubernetes.io/component"]] = o["spec"]["template"]
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def assert_valid(objs: list[dict]) -> None:
    problems = {f'{o["kind"]}/{o["metadata"]["name"]}': errs for o in objs if (errs := validate_manifest(o))}
    assert not problems, problems


# --- every values file and the switch matrix: render, lint, validate -------------------------------------------


@pytest.mark.parametrize("region", REGIONS)
def test_each_region_renders_lints_and_validates_with_only_its_values_files(chart, region):
    layers = [values_file("values-global.yaml"), values_file(region)]
    objs = objects(render(*layers, chart=chart))
    assert_valid(objs)
    report = helm.lint(str(CHART_DIR), merge(*layers), strict=True, kube_version=KUBE_VERSION)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


def test_default_values_render_lint_and_validate(chart):
    objs = objects(render(REQUIRED, chart=chart))
    assert_valid(objs)
    kinds = sorted({o["kind"] for o in objs})
    assert kinds == ["ConfigMap", "Deployment", "Job", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service",
                     "ServiceAccount"]
    report = helm.lint(str(CHART_DIR), REQUIRED, strict=True, kube_version=KUBE_VERSION)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize(("rollout", "keda", "monitoring", "existing"), MATRIX,
                         ids=[f"rollout={r}-keda={k}-monitoring={m}-existing={e}" for r, k, m, e in MATRIX])
def test_feature_matrix_renders_and_validates(chart, rollout, keda, monitoring, existing):
    objs = objects(render(REQUIRED, switches(rollout, keda, monitoring, existing), chart=chart))
    assert_valid(objs)
    kinds = {o["kind"] for o in objs}
    workloads = {o["metadata"]["name"]: o["kind"] for o in objs if o["kind"] in ("Deployment", "Rollout")}
    assert workloads["hc-helicone-gateway"] == ("Rollout" if rollout else "Deployment")
    assert workloads["hc-helicone-ingest"] == "Deployment"  # ingest is never canaried
    assert ("AnalysisTemplate" in kinds) == rollout
    assert ("ScaledObject" in kinds) == keda
    for kind in ("PodMonitor", "PrometheusRule"):
        assert (kind in kinds) == monitoring, kind
    dashboards = [o for o in objs if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {})]
    assert bool(dashboards) == monitoring

    hpas = by_kind(objs, "HorizontalPodAutoscaler")
    gateway_target = hpas["hc-helicone-gateway"]["spec"]["scaleTargetRef"]
    assert gateway_target["kind"] == ("Rollout" if rollout else "Deployment")
    assert gateway_target["apiVersion"] == ("argoproj.io/v1alpha1" if rollout else "apps/v1")
    assert ("hc-helicone-ingest" in hpas) == (not keda)  # KEDA off: a CPU HPA instead

    secret_names = {ref["secretKeyRef"]["name"] for pod in pods(objs).values() for c in pod["spec"]["containers"]
                    for e in c.get("env", []) if (ref := e.get("valueFrom"))}
    own = by_kind(objs, "Secret").get("hc-helicone", {"data": {}})
    if existing:
        assert secret_names >= {"pg-app", "ch", "s3", "kafka-gateway", "kafka-ingest", "kafka-api"}
        assert not {"postgres-dsn", "clickhouse-password", "s3-access-key-id", "kafka-sasl-password-gateway",
                    "kafka-sasl-password-ingest", "kafka-sasl-password-api"} & set(own["data"])
    else:
        assert secret_names == {"hc-helicone"}
        assert {"postgres-dsn", "clickhouse-password", "s3-access-key-id", "s3-secret-access-key",
                "kafka-sasl-password-gateway", "kafka-sasl-password-ingest", "kafka-sasl-password-api"} <= set(own["data"])


def test_lint_of_the_whole_matrix_is_clean():
    for rollout, keda, monitoring, existing in MATRIX:
        report = helm.lint(str(CHART_DIR), merge(REQUIRED, switches(rollout, keda, monitoring, existing)), strict=True,
                           kube_version=KUBE_VERSION)
        assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


# --- bad values: refused with a message naming the value --------------------------------------------------------

BAD_VALUES = [
    ({"bogus": 1}, "bogus"),
    ({"components": {"gateway": {"replicas": "two"}}}, "/components/gateway/replicas"),
    ({"components": {"gateway": {"config": {"no_such_setting": 1}}}}, "no_such_setting"),
    ({"components": {"gateway": {"config": {"postgres_dsn": "x"}}}}, "postgres_dsn"),  # secrets only from Secrets
    ({"components": {"gateway": {"config": {"kafka_bootstrap": "x:1"}}}}, "kafka_bootstrap"),  # set via kafka.bootstrap
    ({"components": {"api": {"config": {"journal_max_bytes": 1}}}}, "journal_max_bytes"),  # a gateway setting
    ({"components": {"gateway": {"config": {"journal_max_bytes": 5}}}}, "journal_max_bytes"),  # below the code's minimum
    ({"config": {"alert_interval": 5}}, "alert_interval"),  # api-only: not for every component
    ({"kafka": {"partitions": 0}}, "/kafka/partitions"),
    ({"kafka": {"bootstrap": ""}}, "/kafka/bootstrap"),
    ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ({"region": "EU West"}, "/region"),
    ({"redis": {"url": "valkey:6379"}}, "/redis/url"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"components": {"gateway": {"port": 70000}}}, "/components/gateway/port"),
    ({"components": {"gateway": {"rollout": {"analysis": {"maxErrorRatio": 2}}}}}, "maxErrorRatio"),
    ({"components": {"ingest": {"keda": {"lagThreshold": 0}}}}, "lagThreshold"),
    ({"components": {"prompts": {"enabled": "yes"}}}, "/components/prompts/enabled"),
    ({"metrics": {"prometheusRule": {"gatewayErrorRatio": 0}}}, "gatewayErrorRatio"),
    ({"networkPolicy": {"providerPorts": []}}, "providerPorts"),
    ({"networkPolicy": {"dataPeers": []}}, "dataPeers"),  # an empty `to` would open those ports to every address
    ({"admin": {"token": "changeme"}}, "/admin/token"),  # the api refuses a token under 32 characters: it would crash-loop
    ({"llmSecurity": {"url": "llama-guard.ml:8000/v1", "model": "m"}}, "/llmSecurity/url"),
    ({"components": {"gateway": {"config": {"llm_security_url": "http://x"}}}}, "llm_security_url"),  # via llmSecurity.url
    ({"components": {"gateway": {"config": {"llm_security_api_key": "k"}}}}, "llm_security_api_key"),  # only from Secrets
    ({"vault": {"key": "changeme"}}, "/vault/key"),  # the api and the gateway refuse a key that is not 32 bytes of base64
    ({"vault": {"oldKeys": "A" * 43 + "=, old"}}, "/vault/oldKeys"),
    ({"components": {"api": {"config": {"vault_key": "A" * 43 + "="}}}}, "vault_key"),  # only from Secrets
]


@pytest.mark.parametrize(("bad", "named"), BAD_VALUES, ids=[n for _, n in BAD_VALUES])
def test_schema_refuses_bad_values_naming_them(chart, bad, named):
    with pytest.raises(helm.HelmError) as err:
        chart.validate_schema(merge(REQUIRED, bad))
    assert named in str(err.value)
    with pytest.raises(helm.HelmError):  # and an install (render) is refused the same way
        render(REQUIRED, bad, chart=chart)


TEMPLATE_ERRORS = [
    ({}, "postgres.dsn or postgres.existingSecret is required"),
    ({"postgres": {"dsn": "x"}}, "kafka.sasl.gateway.password or kafka.sasl.gateway.existingSecret is required"),
    ({"postgres": {"dsn": "x"}, "kafka": {"sasl": {"gateway": {"password": "p"}}}},
     "kafka.sasl.ingest.password or kafka.sasl.ingest.existingSecret is required"),
    ({"postgres": {"dsn": "x"}, "kafka": {"sasl": {"gateway": {"password": "p"}, "ingest": {"password": "p"}}}},
     "kafka.sasl.api.password or kafka.sasl.api.existingSecret is required"),
    (merge(REQUIRED, {"components": {"ingest": {"keda": {"enabled": True, "maxReplicas": 13}}}}), "above kafka.partitions"),
    (merge(REQUIRED, {"components": {"ingest": {"autoscaling": {"enabled": True, "maxReplicas": 20}}}}), "above kafka.partitions"),
    (merge(REQUIRED, {"s3": {"accessKeyId": "AK"}}), "s3.accessKeyId and s3.secretAccessKey go together"),
    (merge(REQUIRED, {"llmSecurity": {"url": "http://llama-guard.ml:8000/v1"}}), "llmSecurity.model is required with llmSecurity.url"),
    (merge(REQUIRED, {"vault": {"oldKeys": "A" * 43 + "="}}), "vault.oldKeys needs vault.key"),
    # an HPA or ScaledObject whose floor is above its ceiling: the API server (or KEDA's webhook) refuses it mid-install
    (merge(REQUIRED, {"defaults": {"autoscaling": {"enabled": True, "minReplicas": 3}}, "components": {"ingest": {
        "autoscaling": {"maxReplicas": 2}}}}), "components.ingest autoscaling.minReplicas (3) is above its maxReplicas (2)"),
    (merge(REQUIRED, {"components": {"ingest": {"keda": {"enabled": True, "minReplicas": 4, "maxReplicas": 3}}}}),
     "components.ingest keda.minReplicas (4) is above its maxReplicas (3)"),
    (merge(REQUIRED, {"components": {"api": {"autoscaling": {"enabled": True, "minReplicas": 11}}}}),
     "components.api autoscaling.minReplicas (11) is above its maxReplicas (10)"),
]


@pytest.mark.parametrize(("values", "message"), TEMPLATE_ERRORS, ids=[m for _, m in TEMPLATE_ERRORS])
def test_values_the_schema_cannot_judge_are_refused_by_the_templates(chart, values, message):
    with pytest.raises(helm.HelmError) as err:
        render(values, chart=chart)
    assert message in str(err.value)


def test_schema_and_readme_table_are_generated_from_values_and_settings():
    done = subprocess.run([sys.executable, "scripts/chart_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- what the rendered objects promise ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full(chart):
    """Everything on: canary, KEDA, monitoring, autoscaling, chart-owned secrets."""
    return objects(render(REQUIRED, switches(True, True, True, False), chart=chart))


def test_every_component_runs_its_own_module_from_the_same_hardened_pod_template(full):
    templates = pods(full)
    assert set(templates) == set(COMPONENTS)
    for name, pod in templates.items():
        spec = pod["spec"]
        (container,) = spec["containers"]
        assert container["command"] == ["python", "-m", f"helicone_{name}"]
        assert container["envFrom"] == [{"configMapRef": {"name": f"hc-helicone-{name}"}}]
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True
        assert sc["seccompProfile"]["type"] == "RuntimeDefault" == spec["securityContext"]["seccompProfile"]["type"]
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        zones = [c for c in spec["topologySpreadConstraints"] if c["topologyKey"] == "topology.kubernetes.io/zone"]
        assert zones and zones[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == name
        assert {v["name"] for v in spec["volumes"]} >= {"data", "tmp"}
        assert all("sizeLimit" in v["emptyDir"] for v in spec["volumes"] if "emptyDir" in v)
        assert {"checksum/config", "checksum/secret"} <= set(pod["metadata"]["annotations"])
        if name == "prompts":  # gRPC probes on the standard health service
            assert container["readinessProbe"]["grpc"]["port"] == container["ports"][1]["containerPort"]
            assert container["startupProbe"]["grpc"]
        else:
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_a_fix_to_the_shared_defaults_lands_in_every_component(chart):
    objs = objects(render(REQUIRED, {"defaults": {"probes": {"timeoutSeconds": 7}, "podLabels": {"team": "llm"}}}, chart=chart))
    for name, pod in pods(objs).items():
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["timeoutSeconds"] == 7, name
        assert pod["metadata"]["labels"]["team"] == "llm", name
    # and a component can still override a default, even with false/0
    objs = objects(render(REQUIRED, {"components": {"api": {"pdb": {"enabled": False}, "replicas": 0}}}, chart=chart))
    assert "hc-helicone-api" not in by_kind(objs, "PodDisruptionBudget")
    assert by_kind(objs, "Deployment")["hc-helicone-api"]["spec"]["replicas"] == 0
    assert by_kind(objs, "Deployment")["hc-helicone-gateway"]["spec"]["replicas"] == 2


def test_config_changes_roll_only_the_pods_they_reach(chart):
    def checksums(layer):
        return {n: p["metadata"]["annotations"] for n, p in pods(objects(render(REQUIRED, layer, chart=chart))).items()}

    base = checksums({})
    gateway_only = checksums({"components": {"gateway": {"config": {"publish_timeout": 9}}}})
    assert gateway_only["gateway"]["checksum/config"] != base["gateway"]["checksum/config"]
    assert all(gateway_only[n] == base[n] for n in ("ingest", "api", "prompts"))
    everyone = checksums({"config": {"readiness_timeout": 2}})
    assert all(everyone[n]["checksum/config"] != base[n]["checksum/config"] for n in COMPONENTS)
    new_password = checksums({"postgres": {"dsn": "postgresql://helicone:rotated@pg:5432/helicone"}})
    assert all(new_password[n]["checksum/secret"] != base[n]["checksum/secret"] for n in COMPONENTS)


def test_gateway_shutdown_and_journal_volume_fit_the_gateway_settings(full):
    from helicone_gateway.settings import GatewaySettings

    pod = pods(full)["gateway"]
    config = by_kind(full, "ConfigMap")["hc-helicone-gateway"]["data"]
    container = pod["spec"]["containers"][0]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    publish_timeout = float(config.get("HELICONE_PUBLISH_TIMEOUT", GatewaySettings.model_fields["publish_timeout"].default))
    assert pod["spec"]["terminationGracePeriodSeconds"] >= pre_stop + publish_timeout + 30  # + in-flight streams
    data = next(v for v in pod["spec"]["volumes"] if v["name"] == "data")
    size_mib = int(data["emptyDir"]["sizeLimit"].removesuffix("Mi"))
    journal = int(config["HELICONE_JOURNAL_MAX_BYTES"]) + int(config["HELICONE_JOURNAL_SEGMENT_BYTES"])
    assert size_mib * 1024 * 1024 > journal  # the journal refuses to grow before the kubelet would evict the pod
    assert config["HELICONE_DATA_DIR"] == container["volumeMounts"][0]["mountPath"]


@pytest.mark.parametrize("workers", [2, 4])
def test_the_journal_volume_holds_every_workers_journal(chart, workers):
    """gateway_workers > 1: each worker keeps its own journal, each up to journal_max_bytes (workers.py), so a Kafka
    outage fills them all; a volume sized for one gets the pod evicted and every journaled event lost with it."""
    objs = objects(render(REQUIRED, {"components": {"gateway": {"config": {"gateway_workers": workers}}}}, chart=chart))
    config = by_kind(objs, "ConfigMap")["hc-helicone-gateway"]["data"]
    assert config["HELICONE_GATEWAY_WORKERS"] == str(workers)
    data = next(v for v in pods(objs)["gateway"]["spec"]["volumes"] if v["name"] == "data")
    size_mib = int(data["emptyDir"]["sizeLimit"].removesuffix("Mi"))
    journal = int(config["HELICONE_JOURNAL_MAX_BYTES"]) + int(config["HELICONE_JOURNAL_SEGMENT_BYTES"])
    assert size_mib * 1024 * 1024 > workers * journal


def test_canary_rollout_uses_both_services_and_the_analysis_from_values(chart):
    steps = [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 100}]
    objs = objects(render(REQUIRED, {"components": {"gateway": {"rollout": {
        "enabled": True, "steps": steps, "analysis": {"maxErrorRatio": 0.01, "maxP95Seconds": 3}}}}}, chart=chart))
    rollout = by_kind(objs, "Rollout")["hc-helicone-gateway"]
    canary = rollout["spec"]["strategy"]["canary"]
    services = by_kind(objs, "Service")
    assert canary["stableService"] in services and canary["canaryService"] in services
    assert canary["steps"] == steps
    template = by_kind(objs, "AnalysisTemplate")[canary["analysis"]["templates"][0]["templateName"]]
    conditions = {m["name"]: m["successCondition"] for m in template["spec"]["metrics"]}
    assert conditions == {"error-ratio": "result[0] <= 0.01", "p95-time-to-first-byte": "result[0] <= 3"}
    assert canary["analysis"]["args"] == [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]
    assert "hc-helicone-gateway" not in by_kind(objs, "Deployment")


def test_keda_scales_ingest_on_its_consumer_group_lag(full):
    scaled = by_kind(full, "ScaledObject")["hc-helicone-ingest"]
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "helicone-ingest"
    assert trigger["metadata"]["topic"] == "helicone.request-logged.v1"
    assert scaled["spec"]["maxReplicaCount"] <= 12  # kafka.partitions
    auth = by_kind(full, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    params = {p["parameter"]: p for p in auth["spec"]["secretTargetRef"]}
    assert set(params) == {"sasl", "username", "password", "tls"}
    secret = by_kind(full, "Secret")["hc-helicone"]["data"]
    for p in params.values():
        assert p["key"] in secret


def test_the_code_defaults_agree_with_the_chart_names():
    from helicone_core.settings import CommonSettings

    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    defaults = CommonSettings()
    assert values["kafka"]["topic"] == defaults.kafka_topic
    assert values["kafka"]["dlqTopic"] == defaults.kafka_dlq_topic
    assert values["kafka"]["consumerGroup"] == defaults.consumer_group


def test_network_policies_deny_by_default_and_allow_each_real_edge(full):
    policies = by_kind(full, "NetworkPolicy")
    deny = policies["hc-helicone-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny

    def egress_ports(name):
        return {p["port"] for rule in policies[name]["spec"]["egress"] for p in rule["ports"]}

    assert egress_ports("hc-helicone-gateway") == {53, 9092, 9093, 5432, 50051, 443}
    assert egress_ports("hc-helicone-ingest") == {53, 9092, 9093, 5432, 8123, 8443, 80, 443, 9000}  # 80, 443: webhooks too
    assert egress_ports("hc-helicone-prompts") == {53, 5432}
    assert egress_ports("hc-helicone-api") == {53, 9092, 9093, 5432, 8123, 8443, 80, 443, 9000, 50051}  # Kafka: async logs
    provider = next(r for r in policies["hc-helicone-gateway"]["spec"]["egress"] if r["ports"] == [{"port": 443, "protocol": "TCP"}])
    assert "169.254.0.0/16" in provider["to"][0]["ipBlock"]["except"]  # never the cloud metadata service
    assert "10.0.0.0/8" in provider["to"][0]["ipBlock"]["except"]
    # the api's alert webhooks and ingest's per-request webhooks: public addresses on 443 and 80, never the cluster or
    # the metadata service
    for component in ("api", "ingest"):
        webhooks = next(r for r in policies[f"hc-helicone-{component}"]["spec"]["egress"]
                        if r["ports"][0]["port"] == 443 and "ipBlock" in r["to"][0])
        assert {p["port"] for p in webhooks["ports"]} == {443, 80}, component
        assert {"169.254.0.0/16", "10.0.0.0/8"} <= set(webhooks["to"][0]["ipBlock"]["except"]), component
        assert webhooks["to"][1]["ipBlock"]["except"] == ["fc00::/7", "fe80::/10"], component
    api_from = policies["hc-helicone-api"]["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}} in api_from
    grpc = next(r for r in policies["hc-helicone-prompts"]["spec"]["ingress"] if r["ports"][0]["port"] == "grpc")
    assert {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in grpc["from"]} == {"gateway", "api"}
    assert policies["hc-helicone-migrations"]["spec"]["ingress"] == []


def test_an_empty_peer_list_lets_nobody_in_not_everyone(chart):
    """A NetworkPolicy rule with an empty (or missing) `from` matches every source: an operator with no Prometheus
    (metricsFrom: []) or no ingress controller (apiFrom: []) must not open the ports to the whole cluster, nor undo
    the gatewayFrom they set."""
    apps = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    objs = objects(render(REQUIRED, {"networkPolicy": {"metricsFrom": [], "apiFrom": [], "gatewayFrom": apps}}, chart=chart))
    assert_valid(objs)
    policies = by_kind(objs, "NetworkPolicy")
    for name in COMPONENTS:
        for rule in policies[f"hc-helicone-{name}"]["spec"]["ingress"]:
            assert rule.get("from"), (name, rule)
    assert [r["from"] for r in policies["hc-helicone-gateway"]["spec"]["ingress"]] == [apps]
    assert policies["hc-helicone-api"]["spec"]["ingress"] == []
    assert policies["hc-helicone-ingest"]["spec"]["ingress"] == []
    # apiFrom alone still lets Prometheus in, and the gateway's empty gatewayFrom still means anyone (documented)
    objs = objects(render(REQUIRED, {"networkPolicy": {"apiFrom": []}}, chart=chart))
    policies = by_kind(objs, "NetworkPolicy")
    assert [r["from"] for r in policies["hc-helicone-api"]["spec"]["ingress"]] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]]
    assert policies["hc-helicone-gateway"]["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_the_ports_named_by_the_connection_values_are_open(chart):
    """A port changed in kafka.bootstrap, clickhouse.url or s3.endpoint is where the services connect: the policies open
    it too, or every pod times out against its own backing service."""
    objs = objects(render(REQUIRED, {"kafka": {"bootstrap": "b-1.kafka.helicone-data:9096, b-2.kafka.helicone-data:9096"},
                                     "clickhouse": {"url": "http://clickhouse.helicone-data:18123"},
                                     "s3": {"endpoint": "http://minio.helicone-data:9001"}}, chart=chart))
    assert_valid(objs)
    policies = by_kind(objs, "NetworkPolicy")

    def ports(name):
        return [p["port"] for r in policies[f"hc-helicone-{name}"]["spec"]["egress"] for p in r["ports"]]

    for name in ("gateway", "ingest", "api"):
        assert ports(name).count(9096) == 1, name
    for name in ("ingest", "api", "migrations"):
        assert 18123 in ports(name), name
    for name in ("ingest", "api"):
        assert 9001 in ports(name), name
    assert 18123 not in ports("gateway") and 9001 not in ports("gateway")
    defaults = by_kind(objects(render(REQUIRED, chart=chart)), "NetworkPolicy")["hc-helicone-ingest"]["spec"]["egress"]
    assert [p["port"] for r in defaults for p in r["ports"]].count(9092) == 1  # named and listed: opened once


def test_aws_s3_is_reachable_when_no_endpoint_names_another(chart):
    """s3.endpoint empty means AWS S3 (and, with IRSA, its STS): public addresses on 443. Policies that open S3 only
    towards dataPeers leave ingest unable to store a single body and the api unable to read one."""
    objs = objects(render(REQUIRED, {"s3": {"endpoint": ""}}, chart=chart))
    policies = by_kind(objs, "NetworkPolicy")
    for name in ("ingest", "api"):
        public = [r for r in policies[f"hc-helicone-{name}"]["spec"]["egress"]
                  if {"port": 443, "protocol": "TCP"} in r["ports"] and any("ipBlock" in p for p in r["to"])]
        assert any(p["ipBlock"]["cidr"] == "0.0.0.0/0" and "169.254.0.0/16" in p["ipBlock"]["except"]
                   for r in public for p in r["to"]), name
    assert "HELICONE_S3_ENDPOINT" not in by_kind(objs, "ConfigMap")["hc-helicone-ingest"]["data"]
    # an in-cluster endpoint (MinIO) opens no public address to ingest but its per-request webhooks' ports
    egress = by_kind(objects(render(REQUIRED, chart=chart)), "NetworkPolicy")["hc-helicone-ingest"]["spec"]["egress"]
    assert {p["port"] for r in egress if any("ipBlock" in t for t in r["to"]) for p in r["ports"]} == {443, 80}
    no_hooks = objects(render(REQUIRED, {"networkPolicy": {"webhookPorts": []}}, chart=chart))
    egress = by_kind(no_hooks, "NetworkPolicy")["hc-helicone-ingest"]["spec"]["egress"]
    assert not any("ipBlock" in p for r in egress for p in r["to"])


def test_a_shared_redis_reaches_only_the_gateway_from_a_secret(chart):
    objs = objects(render(REQUIRED, {"redis": {"url": "redis://:pw@valkey.helicone-data:6379/0"}}, chart=chart))
    gateway = env_of(pods(objs)["gateway"]["spec"]["containers"][0])
    assert gateway["HELICONE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "hc-helicone", "key": "redis-url"}
    assert by_kind(objs, "Secret")["hc-helicone"]["data"]["redis-url"]
    assert all("HELICONE_REDIS_URL" not in env_of(p["spec"]["containers"][0]) for n, p in pods(objs).items() if n != "gateway")
    policies = by_kind(objs, "NetworkPolicy")
    assert 6379 in {p["port"] for r in policies["hc-helicone-gateway"]["spec"]["egress"] for p in r["ports"]}
    assert 6379 not in {p["port"] for r in policies["hc-helicone-ingest"]["spec"]["egress"] for p in r["ports"]}
    existing = objects(render(REQUIRED, {"redis": {"existingSecret": "valkey"}}, chart=chart))
    ref = env_of(pods(existing)["gateway"]["spec"]["containers"][0])["HELICONE_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "valkey", "key": "url"}
    without = objects(render(REQUIRED, chart=chart))  # no Redis: each gateway caches in memory, no egress to 6379
    assert "HELICONE_REDIS_URL" not in env_of(pods(without)["gateway"]["spec"]["containers"][0])
    assert 6379 not in {p["port"] for r in by_kind(without, "NetworkPolicy")["hc-helicone-gateway"]["spec"]["egress"]
                        for p in r["ports"]}


def test_the_admin_token_reaches_only_the_api_from_a_secret(chart):
    objs = objects(render(REQUIRED, {"admin": {"token": "t" * 40}}, chart=chart))
    api = env_of(pods(objs)["api"]["spec"]["containers"][0])
    assert api["HELICONE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hc-helicone", "key": "admin-token"}
    assert by_kind(objs, "Secret")["hc-helicone"]["data"]["admin-token"]
    assert all("HELICONE_ADMIN_TOKEN" not in env_of(p["spec"]["containers"][0]) for n, p in pods(objs).items() if n != "api")
    existing = objects(render(REQUIRED, {"admin": {"existingSecret": "helicone-admin"}}, chart=chart))
    ref = env_of(pods(existing)["api"]["spec"]["containers"][0])["HELICONE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "helicone-admin", "key": "token"}
    assert "admin-token" not in by_kind(existing, "Secret")["hc-helicone"]["data"]
    without = objects(render(REQUIRED, chart=chart))  # no token: the admin routes are off
    assert "HELICONE_ADMIN_TOKEN" not in env_of(pods(without)["api"]["spec"]["containers"][0])


def test_the_vault_master_key_reaches_only_the_api_and_the_gateway_from_a_secret(chart):
    """The provider key vault's master key (and the old ones) come from a Secret to the api (it encrypts) and the
    gateway (it decrypts), as the settings the code reads, and to nothing else (ingest, prompts, the migrations)."""
    from helicone_api.settings import ApiSettings
    from helicone_gateway.settings import GatewaySettings

    key, old = "A" * 43 + "=", "B" * 43 + "=, " + "C" * 43 + "="
    objs = objects(render(REQUIRED, {"vault": {"key": key, "oldKeys": old}}, chart=chart))
    assert_valid(objs)
    secret = by_kind(objs, "Secret")["hc-helicone"]["data"]
    for name, pod in pods(objs).items():
        env = env_of(pod["spec"]["containers"][0])
        if name in ("api", "gateway"):
            assert env["HELICONE_VAULT_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "hc-helicone", "key": "vault-key"}
            assert env["HELICONE_VAULT_OLD_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "hc-helicone", "key": "vault-old-keys"}
        else:
            assert "HELICONE_VAULT_KEY" not in env and "HELICONE_VAULT_OLD_KEYS" not in env
    job = next(o for o in objs if o["kind"] == "Job")
    assert "HELICONE_VAULT_KEY" not in env_of(job["spec"]["template"]["spec"]["containers"][0])
    # the values the Secret holds start both services with the vault on
    values = {"vault_key": base64.b64decode(secret["vault-key"]).decode(),
              "vault_old_keys": base64.b64decode(secret["vault-old-keys"]).decode()}
    for cls in (ApiSettings, GatewaySettings):
        assert cls(_env_file=None, **values).vault_keyring() is not None
    existing = objects(render(REQUIRED, {"vault": {"existingSecret": "helicone-vault", "existingSecretOldKeysKey": "old"}},
                              chart=chart))
    env = env_of(pods(existing)["gateway"]["spec"]["containers"][0])
    assert env["HELICONE_VAULT_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "helicone-vault", "key": "key"}
    assert env["HELICONE_VAULT_OLD_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "helicone-vault", "key": "old"}
    assert not {"vault-key", "vault-old-keys"} & set(by_kind(existing, "Secret")["hc-helicone"]["data"])
    without = objects(render(REQUIRED, chart=chart))  # no key: the vault is off, nothing of it rendered
    assert all("HELICONE_VAULT_KEY" not in env_of(p["spec"]["containers"][0]) for p in pods(without).values())


def test_the_llm_security_classifier_reaches_only_the_gateway_with_its_key_from_a_secret(chart):
    """llmSecurity.url and .model are the gateway's HELICONE_LLM_SECURITY_URL and _MODEL, its key comes from a Secret,
    and an in-cluster classifier (llmSecurity.peers) is reachable on the port its URL names, or the gateway refuses
    every Helicone-LLM-Security-Enabled request (502) under the default-deny policies."""
    ml = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ml"}}}]
    security = {"url": "http://llama-guard.ml:8000/v1", "model": "meta-llama/Llama-Guard-3-8B", "apiKey": "sk-guard", "peers": ml}
    objs = objects(render(REQUIRED, {"llmSecurity": security}, chart=chart))
    assert_valid(objs)
    config = by_kind(objs, "ConfigMap")["hc-helicone-gateway"]["data"]
    assert (config["HELICONE_LLM_SECURITY_URL"], config["HELICONE_LLM_SECURITY_MODEL"]) == (security["url"], security["model"])
    gateway = env_of(pods(objs)["gateway"]["spec"]["containers"][0])
    assert gateway["HELICONE_LLM_SECURITY_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "hc-helicone", "key": "llm-security-api-key"}
    assert by_kind(objs, "Secret")["hc-helicone"]["data"]["llm-security-api-key"]
    for name, pod in pods(objs).items():
        if name != "gateway":
            assert "HELICONE_LLM_SECURITY_API_KEY" not in env_of(pod["spec"]["containers"][0])
            assert "HELICONE_LLM_SECURITY_URL" not in by_kind(objs, "ConfigMap")[f"hc-helicone-{name}"]["data"]
    policies = by_kind(objs, "NetworkPolicy")
    assert {"ports": [{"port": 8000, "protocol": "TCP"}], "to": ml} in policies["hc-helicone-gateway"]["spec"]["egress"]
    assert 8000 not in {p["port"] for r in policies["hc-helicone-ingest"]["spec"]["egress"] for p in r["ports"]}
    # an https URL without a port: 443 towards its peers; a hosted classifier (no peers): the provider rule, nothing more
    hosted = objects(render(REQUIRED, {"llmSecurity": {**security, "url": "https://guard.ml/v1"}}, chart=chart))
    assert {"ports": [{"port": 443, "protocol": "TCP"}], "to": ml} in by_kind(hosted, "NetworkPolicy")["hc-helicone-gateway"]["spec"]["egress"]
    public = objects(render(REQUIRED, {"llmSecurity": {**security, "url": "https://api.together.xyz/v1", "peers": []}}, chart=chart))
    assert not any(r["to"] == ml for r in by_kind(public, "NetworkPolicy")["hc-helicone-gateway"]["spec"]["egress"])
    existing = objects(render(REQUIRED, {"llmSecurity": {**security, "apiKey": "", "existingSecret": "guard"}}, chart=chart))
    ref = env_of(pods(existing)["gateway"]["spec"]["containers"][0])["HELICONE_LLM_SECURITY_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "guard", "key": "api-key"}
    assert "llm-security-api-key" not in by_kind(existing, "Secret")["hc-helicone"]["data"]
    without = objects(render(REQUIRED, chart=chart))  # no classifier: the header is refused, nothing of it rendered
    assert "HELICONE_LLM_SECURITY_API_KEY" not in env_of(pods(without)["gateway"]["spec"]["containers"][0])
    assert "HELICONE_LLM_SECURITY_URL" not in by_kind(without, "ConfigMap")["hc-helicone-gateway"]["data"]


def test_pdbs_select_each_component(full):
    pdbs = by_kind(full, "PodDisruptionBudget")
    for name in COMPONENTS:
        assert pdbs[f"hc-helicone-{name}"]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == name


def test_migrations_run_before_install_and_upgrade_with_their_own_copy_of_the_secrets(full):
    job = by_kind(full, "Job")["hc-helicone-migrations"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "helicone_core.migrate"]
    env = env_of(container)
    hook_secret = by_kind(full, "Secret")[env["HELICONE_POSTGRES_DSN"]["valueFrom"]["secretKeyRef"]["name"]]
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert env["HELICONE_ANALYTICS_BACKEND"]["value"] == "clickhouse"
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]  # the release's one does not exist yet


def test_enabling_migrations_on_an_upgrade_finds_their_network_policy_in_place(chart):
    """A pre-upgrade hook runs before the upgrade applies the release's new objects: on a release installed with
    migrations.enabled=false the default deny is already there, so the Job that `helm upgrade --set migrations.enabled=true`
    starts can reach DNS, Postgres and ClickHouse only through a policy the release already has, or it times out
    and the upgrade fails."""
    installed = by_kind(objects(render(REQUIRED, {"migrations": {"enabled": False}}, chart=chart)), "NetworkPolicy")
    upgraded = objects(render(REQUIRED, chart=chart))
    job_labels = by_kind(upgraded, "Job")["hc-helicone-migrations"]["spec"]["template"]["metadata"]["labels"]
    selecting = {n: p["spec"] for n, p in installed.items()
                 if all(job_labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())}
    assert set(selecting) == {"hc-helicone-default-deny", "hc-helicone-migrations"}
    assert {p["port"] for spec in selecting.values() for r in spec.get("egress", []) for p in r["ports"]} == {53, 5432, 8123, 8443}
    assert installed["hc-helicone-migrations"] == by_kind(upgraded, "NetworkPolicy")["hc-helicone-migrations"]
    off = objects(render(REQUIRED, {"migrations": {"enabled": False}, "networkPolicy": {"enabled": False}}, chart=chart))
    assert not by_kind(off, "NetworkPolicy")


def test_regions_keep_their_data_apart(chart):
    rendered = {}
    for region in REGIONS:
        objs = objects(render(values_file("values-global.yaml"), values_file(region), chart=chart))
        rendered[region] = {n: o["data"] for n, o in by_kind(objs, "ConfigMap").items()
                            if n in {f"hc-helicone-{c}" for c in COMPONENTS}}
    assert len(rendered) >= 2
    buckets = set()
    for region, configs in rendered.items():
        name = region.removeprefix("values-").removesuffix(".yaml")
        for component, data in configs.items():
            assert data["HELICONE_REGION"] == name, component
        buckets.add(configs["hc-helicone-ingest"]["HELICONE_S3_BUCKET"])
    assert len(buckets) == len(rendered)  # one bucket per region
    global_values = values_file("values-global.yaml")
    assert "region" not in global_values and "bootstrap" not in global_values.get("kafka", {})
    assert "bucket" not in global_values.get("s3", {}) and "url" not in global_values.get("clickhouse", {})


def test_notes_print_the_port_forward_and_base_url_lines(chart):
    notes = render(REQUIRED, chart=chart)["helicone/templates/NOTES.txt"]
    assert "kubectl -n helicone port-forward svc/hc-helicone-gateway 8787:8787" in notes
    assert 'base_url="http://localhost:8787/v1"' in notes
    assert "kubectl -n helicone port-forward svc/hc-helicone-api 8585:8585" in notes
    assert "python -m helicone_core.key_admin create" in notes


def test_the_readmes_deploy_commands_name_what_the_chart_renders(chart):
    """README "Deploy on Kubernetes": its `helm install --set ...` values pass the schema and render, and each
    `kubectl` line names a workload or Service of that render and is what NOTES.txt prints."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploy on Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    install = next(line for line in block.splitlines() if line.startswith("helm install "))
    words = install.split()
    release, namespace = words[2], words[words.index("-n") + 1]
    values: dict = {}
    for setting in (words[i + 1] for i, w in enumerate(words) if w == "--set"):
        path, value = setting.split("=", 1)
        layer = value
        for key in reversed(path.split(".")):
            layer = {key: layer}
        values = merge(values, layer)
    rendered = render(values, chart=chart, name=release, namespace=namespace)
    objs = objects(rendered)
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    notes = rendered["helicone/templates/NOTES.txt"]
    kubectl = [line.split("#")[0].strip() for line in block.splitlines() if line.startswith("kubectl ")]
    assert len(kubectl) == 3
    for line in kubectl:
        target = next(w for w in line.split() if w.startswith(("svc/", "deploy/")))
        kind = {"svc": "Service", "deploy": "Deployment"}[target.split("/")[0]]
        assert (kind, target.split("/", 1)[1]) in names, line
        assert line.replace("--org-name acme", "--org-name <your org>") in notes, line
