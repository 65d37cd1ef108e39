"""k8s/*.yaml: every document is valid for the pinned operators and Kubernetes, and agrees with the code's names."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
import yaml
from helicone_core.settings import REQUEST_LOGGED_TOPIC, CommonSettings

from tests.chart.render import CHART_DIR, merge, values_file
from tests.chart.validation import load_documents, validate_manifest

K8S = Path(__file__).resolve().parents[2] / "k8s"
MANIFESTS = ("namespaces.yaml", "kafka.yaml", "postgres.yaml", "clickhouse.yaml", "minio.yaml")
DATA_NAMESPACE = "helicone-data"
CHART_NAMESPACE = "helicone"
DEFAULTS = CommonSettings()


def documents(name: str) -> list[dict]:
    return load_documents((K8S / name).read_text())


def all_documents() -> list[tuple[str, dict]]:
    return [(name, doc) for name in MANIFESTS for doc in documents(name)]


def only(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in all_documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in k8s/, found {len(found)}"
    return found[0]


def topic_name(topic: dict) -> str:
    return topic["spec"].get("topicName", topic["metadata"]["name"])


def acls(user: str) -> dict[tuple[str, str, str], set[str]]:
    """(resource type, name, pattern type) -> operations of a KafkaUser."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for acl in only("KafkaUser", user)["spec"]["authorization"]["acls"]:
        r = acl["resource"]
        out.setdefault((r["type"], r["name"], r.get("patternType", "literal")), set()).update(acl["operations"])
    return out


# ---- the files ----------------------------------------------------------------------------------


def test_every_yaml_in_k8s_is_a_checked_manifest_or_helm_values():
    for path in K8S.glob("*.yaml"):
        if path.name in MANIFESTS:
            continue
        # Values files of the operators' Helm charts: not Kubernetes objects (a manifest here would go unchecked).
        assert path.name.endswith("-values.yaml"), f"k8s/{path.name}: add it to MANIFESTS in {Path(__file__).name}"
        assert not any("apiVersion" in d for d in load_documents(path.read_text())), path.name


@pytest.mark.parametrize(("name", "doc"), all_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_every_document_validates(name, doc):
    assert validate_manifest(doc) == []


def test_everything_lives_in_the_data_namespace_and_no_secret_is_in_git():
    namespaces = {d["metadata"]["name"] for d in documents("namespaces.yaml")}
    assert namespaces == {DATA_NAMESPACE, CHART_NAMESPACE}
    for name, doc in all_documents():
        assert doc["kind"] != "Secret", f"k8s/{name}: Secrets are generated (README.md), never committed"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == DATA_NAMESPACE, f"k8s/{name}: {doc['kind']} {doc['metadata']['name']}"


# ---- Kafka ---------------------------------------------------------------------------------------


def test_topics_are_the_codes_topics():
    topics = {topic_name(t): t["spec"] for _, t in all_documents() if t["kind"] == "KafkaTopic"}
    assert set(topics) == {REQUEST_LOGGED_TOPIC, DEFAULTS.kafka_dlq_topic}
    log, dlq = topics[REQUEST_LOGGED_TOPIC], topics[DEFAULTS.kafka_dlq_topic]
    assert (log["partitions"], log["replicas"], log["config"]["min.insync.replicas"]) == (12, 3, 2)
    assert log["config"]["retention.ms"] == dt.timedelta(days=7) // dt.timedelta(milliseconds=1)
    assert (dlq["partitions"], dlq["replicas"], dlq["config"]["min.insync.replicas"]) == (3, 3, 2)
    assert dlq["config"]["retention.ms"] == dt.timedelta(days=30) // dt.timedelta(milliseconds=1)
    # Every topic setting must be one the gateway accepts as HELICONE_KAFKA_TOPIC_PARTITIONS.
    assert CommonSettings(kafka_topic_partitions=log["partitions"]).kafka_topic_partitions == 12


def test_the_topics_take_the_largest_record_the_producers_send():
    """Kafka's default max.message.bytes (1 MiB) refuses an event with two large bodies, which the
    producers (max_request_size MAX_RECORD_BYTES) send: the gateway would retry and spool it for ever and
    the api answer 503 to every retry. A dead letter is such a record with an error header added."""
    from helicone_core.kafka import MAX_RECORD_BYTES

    for _, topic in all_documents():
        if topic["kind"] == "KafkaTopic":
            assert topic["spec"]["config"].get("max.message.bytes", 1_048_588) >= MAX_RECORD_BYTES + 64 * 1024, topic_name(topic)


def test_kafka_is_kraft_with_three_brokers_enough_for_the_topics():
    kafka = only("Kafka")
    pools = [d for _, d in all_documents() if d["kind"] == "KafkaNodePool"]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    controllers = sum(p["spec"]["replicas"] for p in pools if "controller" in p["spec"]["roles"])
    assert (brokers, controllers) == (3, 3)
    for _, doc in all_documents():
        if doc["kind"] in ("KafkaNodePool", "KafkaTopic", "KafkaUser"):
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"], doc["metadata"]["name"]
        if doc["kind"] == "KafkaTopic":
            # min ISR below the replica count: one broker may be down and producers (acks=all) still write.
            assert doc["spec"]["config"]["min.insync.replicas"] < doc["spec"]["replicas"] <= brokers
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False


def test_the_9092_listener_is_internal_scram_sha_512_and_acls_are_enforced():
    kafka = only("Kafka")["spec"]["kafka"]
    by_port = {listener["port"]: listener for listener in kafka["listeners"]}
    assert by_port[9092]["type"] == "internal" and by_port[9092]["tls"] is False
    assert by_port[9092]["authentication"] == {"type": "scram-sha-512"}
    assert by_port[9093]["tls"] is True and by_port[9093]["authentication"] == {"type": "scram-sha-512"}
    assert kafka["authorization"]["type"] == "simple"  # without it the KafkaUsers' ACLs would not apply
    assert all(listener.get("authentication") for listener in kafka["listeners"])  # no anonymous listener


def test_gateway_user_may_write_the_log_and_read_ingests_commits_only():
    assert acls("helicone-gateway") == {
        ("topic", REQUEST_LOGGED_TOPIC, "literal"): {"Describe", "Write"},
        ("group", DEFAULTS.consumer_group, "literal"): {"Describe"},
    }


def test_api_user_may_only_write_the_log():
    assert acls("helicone-api") == {("topic", REQUEST_LOGGED_TOPIC, "literal"): {"Describe", "Write"}}


def test_ingest_user_may_consume_the_log_in_its_group_and_write_the_dlq(tmp_path):
    from helicone_ingest.app import IngestService
    from helicone_ingest.settings import IngestSettings

    # The Faust app ingest really builds: its id is the consumer group, and it creates a leader-election topic.
    app = IngestService(IngestSettings(data_dir=tmp_path), analytics=object(), bodies=object())._build_faust()
    assert app.conf.id == DEFAULTS.consumer_group and not app.conf.topic_disable_leader
    leader_topic = app._leader_assignor._leader_topic_name  # Faust's name for it: "<app id>-__assignor-__leader"
    assert acls("helicone-ingest") == {
        ("topic", REQUEST_LOGGED_TOPIC, "literal"): {"Describe", "Read"},
        ("topic", DEFAULTS.kafka_dlq_topic, "literal"): {"Describe", "Write"},
        ("group", DEFAULTS.consumer_group, "literal"): {"Describe", "Read"},
        ("topic", leader_topic, "literal"): {"Create", "Describe", "Read", "Write"},
    }


def test_kafka_users_authenticate_with_scram_sha_512():
    users = [d for _, d in all_documents() if d["kind"] == "KafkaUser"]
    assert {u["metadata"]["name"] for u in users} == {"helicone-gateway", "helicone-ingest", "helicone-api"}
    assert all(u["spec"]["authentication"] == {"type": "scram-sha-512"} for u in users)


# ---- Postgres, ClickHouse, S3 -------------------------------------------------------------------


def test_postgres_has_three_instances_and_the_helicone_database_owned_by_helicone():
    cluster = only("Cluster")
    assert cluster["spec"]["instances"] == 3
    assert cluster["spec"]["bootstrap"]["initdb"] == {"database": "helicone", "owner": "helicone"}
    assert cluster["metadata"]["name"] == "helicone-pg"  # its Secret, helicone-pg-app, is what README.md copies


def test_clickhouse_user_gets_its_password_from_a_secret_and_rights_on_the_codes_database():
    chi = only("ClickHouseInstallation")
    assert chi["metadata"]["name"] == "helicone"  # Service clickhouse-helicone
    users = chi["spec"]["configuration"]["users"]
    assert users["helicone/password"] == {"valueFrom": {"secretKeyRef": {"name": "helicone-clickhouse", "key": "password"}}}
    assert [k for k, v in users.items() if "password" in k and not isinstance(v, dict)] == []  # no password in git
    assert users["helicone/grants/query"] == [f"GRANT ALL ON {DEFAULTS.clickhouse_database}.*"]
    # The migrations' DDL is not replicated: more than one replica would split the data.
    assert chi["spec"]["configuration"]["clusters"][0]["layout"] == {"shardsCount": 1, "replicasCount": 1}


def test_minio_tenant_serves_the_codes_bucket_over_plain_http():
    tenant = only("Tenant")["spec"]
    assert [b["name"] for b in tenant["buckets"]] == [DEFAULTS.s3_bucket]
    assert tenant["buckets"][0]["region"] == DEFAULTS.s3_region
    assert tenant["requestAutoCert"] is False  # the chart's s3.endpoint is http://minio.helicone-data
    assert tenant["users"] == [{"name": "helicone-s3"}]


# ---- the chart's values name these resources ---------------------------------------------------


def test_chart_values_point_at_these_resources():
    values = yaml.safe_load((K8S.parent / "charts" / "helicone" / "values.yaml").read_text())
    log = next(t for _, t in all_documents() if t["kind"] == "KafkaTopic" and topic_name(t) == REQUEST_LOGGED_TOPIC)
    kafka = only("Kafka")["metadata"]["name"]
    assert values["kafka"]["bootstrap"] == f"{kafka}-kafka-bootstrap.{DATA_NAMESPACE}:9092"
    assert values["kafka"]["partitions"] == log["spec"]["partitions"]
    assert values["kafka"]["replicationFactor"] == log["spec"]["replicas"]
    assert (values["kafka"]["topic"], values["kafka"]["dlqTopic"]) == (REQUEST_LOGGED_TOPIC, DEFAULTS.kafka_dlq_topic)
    assert values["kafka"]["consumerGroup"] == DEFAULTS.consumer_group
    assert values["clickhouse"]["url"] == f"http://clickhouse-{only('ClickHouseInstallation')['metadata']['name']}.{DATA_NAMESPACE}:8123"
    assert values["s3"]["endpoint"] == f"http://minio.{DATA_NAMESPACE}"
    assert values["s3"]["bucket"] == DEFAULTS.s3_bucket


REGIONS = sorted(p.name for p in CHART_DIR.glob("values-*.yaml") if p.name != "values-global.yaml")


@pytest.mark.parametrize("region", REGIONS)
def test_each_region_that_uses_these_resources_names_them_as_they_are(region):
    """A region's values files (helm install -f values-global.yaml -f values-<region>.yaml) that point at
    the resources here must name what they create: a bucket the MinIO Tenant does not create answers
    NoSuchBucket to every body ingest stores, and ingest retries that batch for ever."""
    values = merge(merge(values_file("values.yaml"), values_file("values-global.yaml")), values_file(region))
    kafka = only("Kafka")["metadata"]["name"]
    if values["kafka"]["bootstrap"] == f"{kafka}-kafka-bootstrap.{DATA_NAMESPACE}:9092":
        log = next(t for _, t in all_documents() if t["kind"] == "KafkaTopic" and topic_name(t) == REQUEST_LOGGED_TOPIC)
        assert values["kafka"]["partitions"] == log["spec"]["partitions"]
        assert (values["kafka"]["topic"], values["kafka"]["dlqTopic"]) == (REQUEST_LOGGED_TOPIC, DEFAULTS.kafka_dlq_topic)
        users = {u["metadata"]["name"] for _, u in all_documents() if u["kind"] == "KafkaUser"}
        for component, sasl in values["kafka"]["sasl"].items():
            if isinstance(sasl, dict):
                assert sasl["username"] in users, (region, component)
                assert sasl["existingSecret"] in ("", sasl["username"]), (region, component)  # Strimzi's Secret is the user's name
    chi = only("ClickHouseInstallation")
    if values["clickhouse"]["url"] == f"http://clickhouse-{chi['metadata']['name']}.{DATA_NAMESPACE}:8123":
        secret = chi["spec"]["configuration"]["users"][f"{values['clickhouse']['user']}/password"]["valueFrom"]["secretKeyRef"]
        assert values["clickhouse"]["existingSecret"] in ("", secret["name"]), region
        assert values["clickhouse"]["database"] == DEFAULTS.clickhouse_database
    tenant = only("Tenant")["spec"]
    if values["s3"]["endpoint"] == f"http://minio.{DATA_NAMESPACE}":
        assert values["s3"]["bucket"] in [b["name"] for b in tenant["buckets"]], (
            f"{region}: s3.bucket {values['s3']['bucket']!r} is not a bucket of the MinIO Tenant (k8s/minio.yaml)")
        assert values["s3"]["existingSecret"] in ("", *(u["name"] for u in tenant["users"])), region
    if values["postgres"].get("existingSecret"):
        assert values["postgres"]["existingSecret"] == f"{only('Cluster')['metadata']['name']}-app", region


def test_grafana_loads_the_charts_dashboards_into_the_folder_they_name():
    """The chart labels its dashboard ConfigMaps for the sidecar and names their folder in an annotation
    (grafana_folder: Helicone, the folder docs/runbooks.md sends operators to). Grafana's sidecar reads
    that annotation only with folderAnnotation set and foldersFromFilesStructure on; without them
    the dashboards land in the General folder."""
    dashboards = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["metrics"]["grafanaDashboards"]
    sidecar = yaml.safe_load((K8S / "kube-prometheus-stack-values.yaml").read_text())["grafana"]["sidecar"]["dashboards"]
    assert dashboards["labels"].get(sidecar["label"]) == sidecar["labelValue"]
    assert sidecar.get("folderAnnotation") in dashboards["annotations"], sidecar
    assert sidecar.get("provider", {}).get("foldersFromFilesStructure") is True, sidecar


# ---- a corrupted copy fails ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), all_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_a_corrupted_copy_of_each_document_fails(name, doc):
    typo = copy.deepcopy(doc)
    key = "spec" if "spec" in typo else "metadata"
    typo[key]["replicaz"] = 3  # a misspelt field, as a hand edit makes it
    errors = validate_manifest(typo)
    assert errors and "'replicaz' was unexpected" in errors[0], errors


def test_corrupted_kafka_manifests_fail():
    docs = documents("kafka.yaml")
    topic = copy.deepcopy(next(d for d in docs if d["kind"] == "KafkaTopic"))
    topic["spec"]["partitions"] = "12"  # a quoted number
    assert validate_manifest(topic) == [f"KafkaTopic/{REQUEST_LOGGED_TOPIC}: spec.partitions: '12' is not of type 'integer'"]
    kafka = copy.deepcopy(next(d for d in docs if d["kind"] == "Kafka"))
    kafka["apiVersion"] = "kafka.strimzi.io/v1beta2"  # what Strimzi 1.x no longer serves
    assert "no schema: kafka.strimzi.io/v1beta2 Kafka" in validate_manifest(kafka)[0]
    user = copy.deepcopy(next(d for d in docs if d["kind"] == "KafkaUser"))
    user["spec"]["authorization"]["acls"][0]["operation"] = "Write"  # v1beta2's singular field, gone in v1
    assert "'operation' was unexpected" in "\n".join(validate_manifest(user))
    text = (K8S / "kafka.yaml").read_text().replace("type: scram-sha-512", "type: scram-sha-256", 1)
    errors = [e for d in load_documents(text) for e in validate_manifest(d)]
    assert errors == ["Kafka/helicone: spec.kafka.listeners[0].authentication.type: 'scram-sha-256' is not one of "
                      "['tls', 'scram-sha-512', 'custom']"]
