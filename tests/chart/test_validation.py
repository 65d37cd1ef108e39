"""tests/chart/validation.py: what it rejects, what it accepts, and that the vendored schemas are what SOURCES.md says."""

from __future__ import annotations

import copy
import hashlib
import json

import kubernetes_validate
import pytest

from tests.chart.crd_schemas import vendor
from tests.chart.validation import KUBE_VERSIONS, load_documents, validate_manifest

POD_TEMPLATE = {
    "metadata": {"labels": {"app": "gw"}},
    "spec": {"containers": [{"name": "gw", "image": "ghcr.io/helicone-stack/helicone:1.0.0",
                             "ports": [{"name": "http", "containerPort": 8787}]}]},
}

DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gateway", "namespace": "helicone"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "gw"}}, "template": POD_TEMPLATE},
}

# One minimal valid object per vendored (group, version, kind): every entry of vendor.SOURCES must be here.
MINIMAL = {
    ("argoproj.io", "v1alpha1", "Rollout"): {
        "selector": {"matchLabels": {"app": "gw"}}, "template": POD_TEMPLATE,
        "strategy": {"canary": {"maxSurge": "25%", "maxUnavailable": 0,
                                "steps": [{"setWeight": 20}, {"pause": {"duration": "5m"}}, {"setWeight": 100}]}}},
    ("argoproj.io", "v1alpha1", "AnalysisTemplate"): {
        "metrics": [{"name": "error-ratio", "interval": "1m", "failureLimit": 2, "successCondition": "result[0] < 0.02",
                     "provider": {"prometheus": {"address": "http://prometheus.monitoring:9090",
                                                 "query": "sum(rate(helicone_gateway_requests_total[2m]))"}}}]},
    ("keda.sh", "v1alpha1", "ScaledObject"): {
        "scaleTargetRef": {"name": "ingest"}, "minReplicaCount": 1, "maxReplicaCount": 12,
        "triggers": [{"type": "kafka", "metadata": {"bootstrapServers": "k:9092", "consumerGroup": "helicone-ingest",
                                                    "topic": "helicone.request-logged.v1", "lagThreshold": "1000"},
                      "authenticationRef": {"name": "ingest-kafka"}}]},
    ("keda.sh", "v1alpha1", "TriggerAuthentication"): {
        "secretTargetRef": [{"parameter": "password", "name": "helicone-gateway", "key": "password"}]},
    ("monitoring.coreos.com", "v1", "ServiceMonitor"): {
        "selector": {"matchLabels": {"app": "gw"}}, "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}]},
    ("monitoring.coreos.com", "v1", "PodMonitor"): {
        "selector": {"matchLabels": {"app": "gw"}}, "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}]},
    ("monitoring.coreos.com", "v1", "PrometheusRule"): {
        "groups": [{"name": "helicone", "rules": [{"alert": "GatewayDown", "expr": "up{job='gw'} == 0", "for": "5m",
                                                   "labels": {"severity": "critical"}}]}]},
    ("kafka.strimzi.io", "v1", "Kafka"): {
        "kafka": {"listeners": [{"name": "plain", "port": 9092, "type": "internal", "tls": False}]}},
    ("kafka.strimzi.io", "v1", "KafkaNodePool"): {
        "replicas": 3, "roles": ["controller", "broker"],
        "storage": {"type": "jbod", "volumes": [{"id": 0, "type": "persistent-claim", "size": "10Gi", "kraftMetadata": "shared"}]}},
    ("kafka.strimzi.io", "v1", "KafkaTopic"): {"partitions": 3, "replicas": 3, "config": {"retention.ms": 604800000}},
    ("kafka.strimzi.io", "v1", "KafkaUser"): {"authentication": {"type": "scram-sha-512"}},
    ("clickhouse.altinity.com", "v1", "ClickHouseInstallation"): {
        "configuration": {"clusters": [{"name": "main", "layout": {"shardsCount": 1, "replicasCount": 1}}]}},
    ("postgresql.cnpg.io", "v1", "Cluster"): {"instances": 3, "storage": {"size": "10Gi"}},
    ("minio.min.io", "v2", "Tenant"): {
        "pools": [{"name": "pool-0", "servers": 4, "volumesPerServer": 1, "volumeClaimTemplate": {
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}}]},
}


def custom(group: str, version: str, kind: str, spec: dict | None = None, **extra) -> dict:
    obj = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": "example", "namespace": "helicone"}}
    if spec is not None:
        obj["spec"] = copy.deepcopy(spec)
    obj.update(extra)
    return obj


def minimal(kind: str) -> dict:
    (group, version, _), spec = next(((k, v) for k, v in MINIMAL.items() if k[2] == kind))
    return custom(group, version, kind, spec)


def joined(errors: list[str]) -> str:
    return "\n".join(errors)


# ---- accepted ---------------------------------------------------------------------------------


def test_minimal_objects_cover_every_vendored_kind():
    assert set(MINIMAL) == {(s.group, s.version, s.kind) for s in vendor.SOURCES}


@pytest.mark.parametrize("key", sorted(MINIMAL), ids=lambda k: k[2])
def test_accepts_a_minimal_object_of_each_vendored_kind(key):
    group, version, kind = key
    assert validate_manifest(custom(group, version, kind, MINIMAL[key])) == []


def test_accepts_a_valid_deployment_for_every_kube_version():
    assert KUBE_VERSIONS == ("1.30.0", "1.33.0")
    assert validate_manifest(DEPLOYMENT) == []


def test_int_or_string_takes_an_int_or_a_string_and_nothing_else():
    rollout = minimal("Rollout")
    rollout["spec"]["strategy"]["canary"]["maxSurge"] = 1
    assert validate_manifest(rollout) == []
    rollout["spec"]["strategy"]["canary"]["maxSurge"] = True
    assert "spec.strategy.canary.maxSurge" in joined(validate_manifest(rollout))


def test_preserve_unknown_fields_keeps_any_field_there():
    # ScaledObject trigger metadata and ClickHouse settings are free-form maps in their CRDs.
    chi = minimal("ClickHouseInstallation")
    chi["spec"]["configuration"]["users"] = {"helicone/password": {"valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                                             "helicone/networks/ip": ["::/0"]}
    assert validate_manifest(chi) == []


def test_null_in_a_non_nullable_field_is_dropped_as_the_api_server_does():
    rollout = minimal("Rollout")
    rollout["spec"]["replicas"] = None
    assert validate_manifest(rollout) == []
    rule = minimal("PrometheusRule")
    rule["spec"] = None  # dropped, and spec is required
    assert "'spec' is a required property" in joined(validate_manifest(rule))


# ---- rejected ---------------------------------------------------------------------------------


def test_rejects_an_unknown_field_in_a_deployment():
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validate_manifest(bad) == [  # one error, naming the Kubernetes versions it was found in
        "Deployment/gateway: spec.template.spec.containers[0]: unknown field(s) ('imagePullPolicyy' was unexpected) "
        "(Kubernetes 1.30.0, 1.33.0)"]
    assert validate_manifest(bad, ("1.33.0",)) == [
        "Deployment/gateway: spec.template.spec.containers[0]: unknown field(s) ('imagePullPolicyy' was unexpected) "
        "(Kubernetes 1.33.0)"]


def test_rejects_an_unknown_field_in_a_rollout_spec():
    bad = minimal("Rollout")
    bad["spec"]["canaryy"] = {}
    assert validate_manifest(bad) == ["Rollout/example: spec: unknown field(s) ('canaryy' was unexpected)"]


def test_rejects_an_unknown_field_deep_in_the_rollout_pod_template():
    bad = minimal("Rollout")
    bad["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"memory": "1Gi"}}
    assert "spec.template.spec.containers[0]: unknown field(s) ('resource' was unexpected)" in joined(validate_manifest(bad))


def test_rejects_an_unknown_top_level_field_of_a_custom_resource():
    bad = minimal("KafkaTopic")
    bad["specs"] = {}
    assert "<root>: unknown field(s) ('specs' was unexpected)" in joined(validate_manifest(bad))


def test_rejects_a_wrong_type_in_a_scaledobject():
    bad = minimal("ScaledObject")
    bad["spec"]["maxReplicaCount"] = "12"
    assert validate_manifest(bad) == ["ScaledObject/example: spec.maxReplicaCount: '12' is not of type 'integer'"]


def test_rejects_a_prometheusrule_missing_spec_groups():
    # No spec (so no groups): spec is required.
    assert validate_manifest(custom("monitoring.coreos.com", "v1", "PrometheusRule")) == [
        "PrometheusRule/example: <root>: 'spec' is a required property"]
    # Rules put straight under spec instead of under spec.groups[]: unknown field.
    misplaced = custom("monitoring.coreos.com", "v1", "PrometheusRule", {"rules": [{"alert": "A", "expr": "1"}]})
    assert validate_manifest(misplaced) == ["PrometheusRule/example: spec: unknown field(s) ('rules' was unexpected)"]
    # A group without its required name.
    nameless = custom("monitoring.coreos.com", "v1", "PrometheusRule", {"groups": [{"rules": []}]})
    assert validate_manifest(nameless) == ["PrometheusRule/example: spec.groups[0]: 'name' is a required property"]
    # The CRD itself (prometheus-operator v0.93.0) does not require groups inside a present spec, nor does the API
    # server: an empty spec is accepted here too (the chart's own tests decide whether it may render one).
    assert validate_manifest(custom("monitoring.coreos.com", "v1", "PrometheusRule", {})) == []


def test_rejects_a_repeated_key_in_a_list_type_map():
    bad = minimal("PrometheusRule")
    bad["spec"]["groups"].append(copy.deepcopy(bad["spec"]["groups"][0]))
    assert validate_manifest(bad) == [
        "PrometheusRule/example: spec.groups: duplicate entry with name='helicone' at index 1 (x-kubernetes-list-type: map)"]


def test_rejects_a_bad_enum_and_an_int32_overflow():
    bad = minimal("KafkaUser")
    bad["spec"]["authentication"]["type"] = "scram-sha-256"
    assert "spec.authentication.type: 'scram-sha-256' is not one of" in joined(validate_manifest(bad))
    big = minimal("ScaledObject")
    big["spec"]["maxReplicaCount"] = 2**31  # format: int32
    assert validate_manifest(big) == ["ScaledObject/example: spec.maxReplicaCount: 2147483648 is not a 'int32'"]
    big["spec"]["maxReplicaCount"] = 2**31 - 1
    assert validate_manifest(big) == []


def test_rejects_bad_metadata_of_a_custom_resource():
    bad = minimal("KafkaTopic")
    bad["metadata"]["labelz"] = {}  # checked against Kubernetes' ObjectMeta
    assert validate_manifest(bad) == [
        "KafkaTopic/example: metadata: unknown field(s) ('labelz' was unexpected) (Kubernetes 1.30.0, 1.33.0)"]
    bad = minimal("KafkaTopic")
    bad["metadata"]["name"] = "Helicone_Topic"
    assert "metadata.name: 'Helicone_Topic' is not a DNS-1123 subdomain" in joined(validate_manifest(bad))
    bad = minimal("KafkaTopic")
    del bad["metadata"]["name"]
    assert validate_manifest(bad) == ["KafkaTopic/<no name>: metadata.name: required (kubectl apply needs a name)"]


def test_rejects_an_invalid_label_value_and_a_service_name_that_is_no_dns_label():
    bad = copy.deepcopy(DEPLOYMENT)
    bad["metadata"]["labels"] = {"app.kubernetes.io/version": "x" * 64}
    assert "metadata.labels.app.kubernetes.io/version" in joined(validate_manifest(bad))
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1gateway"}, "spec": {"ports": [{"port": 80}]}}
    assert "not a DNS-1035 label" in joined(validate_manifest(svc))


def test_rejects_a_kind_with_no_schema():
    errors = validate_manifest(custom("example.com", "v1", "Widget", {}))
    assert errors == ["Widget/example: no schema: example.com/v1 Widget is neither a built-in kind nor a vendored CRD "
                      "(vendor its CRD: add it to SOURCES in tests/chart/crd_schemas/vendor.py)"]


def test_rejects_an_unvendored_version_of_a_vendored_kind():
    # Strimzi 1.x serves only kafka.strimzi.io/v1: a v1beta2 manifest would be refused by the cluster too.
    errors = validate_manifest(custom("kafka.strimzi.io", "v1beta2", "KafkaTopic", {"partitions": 1}))
    assert errors == ["KafkaTopic/example: no schema: kafka.strimzi.io/v1beta2 KafkaTopic is neither a built-in kind nor "
                      "a vendored CRD (vendored versions of KafkaTopic: v1)"]


def test_rejects_unknown_built_in_kinds_sub_types_and_look_alike_groups():
    # kubernetes_validate ships files for sub-types (container-v1.json): they are not kinds.
    container = {"apiVersion": "v1", "kind": "Container", "metadata": {"name": "x"}, "name": "x", "image": "i"}
    assert validate_manifest(container) == [
        f"Container/x: no schema: v1 Container is not a built-in kind (kubernetes_validate {kubernetes_validate.__version__}) "
        "and no CRD of it is vendored (Kubernetes 1.30.0, 1.33.0)"]
    # A Deployment of another group is not apps/v1's Deployment.
    lookalike = dict(copy.deepcopy(DEPLOYMENT), apiVersion="apps.example.com/v1")
    assert "no schema: apps.example.com/v1 Deployment" in joined(validate_manifest(lookalike))
    # A kind lower-cased is another kind.
    assert "no schema" in joined(validate_manifest(dict(minimal("Rollout"), kind="rollout")))


def test_rejects_a_kind_missing_from_an_older_kubernetes():
    # flowcontrol.apiserver.k8s.io/v1 arrived in Kubernetes 1.29, v1beta2 was removed in 1.29.
    old = {"apiVersion": "flowcontrol.apiserver.k8s.io/v1beta2", "kind": "FlowSchema", "metadata": {"name": "x"},
           "spec": {"priorityLevelConfiguration": {"name": "global-default"}}}
    assert validate_manifest(old, ("1.29.0",)) == [
        f"FlowSchema/x: no schema: flowcontrol.apiserver.k8s.io/v1beta2 FlowSchema is not a built-in kind "
        f"(kubernetes_validate {kubernetes_validate.__version__}) and no CRD of it is vendored (Kubernetes 1.29.0)"]
    assert validate_manifest(old, ("1.28.0",)) == []


def test_refuses_to_check_against_no_kubernetes_version():
    with pytest.raises(ValueError, match="kube_versions is empty"):
        validate_manifest(DEPLOYMENT, ())


def test_rejects_objects_without_apiversion_or_kind():
    assert validate_manifest({"kind": "Deployment"}) == [
        "manifest needs string apiVersion and kind (got apiVersion=None, kind='Deployment')"]
    assert validate_manifest(["not", "a", "mapping"]) == ["manifest is a list, not a mapping"]


# ---- fidelity to kubernetes_validate ---------------------------------------------------------


@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_built_in_verdicts_match_kubernetes_validate_strict(kube):
    kubernetes_validate.validate(DEPLOYMENT, kube, strict=True)  # raises if invalid
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError) as theirs:
        kubernetes_validate.validate(bad, kube, strict=True)
    assert validate_manifest(bad, (kube,)) == [f"Deployment/gateway: spec.replicas: {theirs.value.message} (Kubernetes {kube})"]


# ---- load_documents ---------------------------------------------------------------------------


def test_load_documents_reads_every_non_empty_document():
    text = "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"
    assert [d["metadata"]["name"] for d in load_documents(text)] == ["a", "b"]
    with pytest.raises(ValueError, match="YAML document 1 is a list"):
        load_documents("a: 1\n---\n- x\n")


# ---- the vendored files -----------------------------------------------------------------------


def test_every_vendored_file_is_in_sources_and_sources_md_describes_it():
    listed = {s.out_path() for s in vendor.SOURCES}
    on_disk = set(vendor.HERE.glob("*/*.json"))
    assert listed == on_disk
    sources_md = (vendor.HERE / "SOURCES.md").read_text()
    for src in vendor.SOURCES:
        path = src.out_path()
        rel = path.relative_to(vendor.HERE).as_posix()
        schema = json.loads(path.read_text())
        assert schema.get("type") == "object" and "spec" in schema["properties"], rel
        assert f"| `{rel}` | {path.stat().st_size} | {src.operator} |" in sources_md
        assert f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}" in sources_md
        assert f"`{src.tag}`" in sources_md


def test_vendor_extracts_one_served_version_after_the_release_patch():
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "spec": {"group": "example.com", "names": {"kind": "Widget"}, "versions": [
               {"name": "v1", "served": True, "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                   "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}}},
               {"name": "v0", "served": False, "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    vendor.apply_json6902(crd, [{"op": "add", "value": 10,
                                 "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/size/maximum"}])
    schema = vendor.extract_schema([{"kind": "Other"}, crd], "example.com", "Widget", "v1")
    assert schema["properties"]["spec"]["properties"]["size"] == {"type": "integer", "maximum": 10}
    with pytest.raises(vendor.VendorError, match="not served"):
        vendor.extract_schema([crd], "example.com", "Widget", "v0")
    with pytest.raises(vendor.VendorError, match=r"no version v2 in the CRD \(it has v1, v0\)"):
        vendor.extract_schema([crd], "example.com", "Widget", "v2")
    with pytest.raises(vendor.VendorError, match="found 0"):
        vendor.extract_schema([crd], "example.com", "Gadget", "v1")
    with pytest.raises(vendor.VendorError, match="only add and replace"):
        vendor.apply_json6902(crd, [{"op": "remove", "path": "/spec"}])
