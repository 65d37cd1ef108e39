"""k8s/*.yaml: every document is valid for the pinned operators and Kubernetes, and agrees with the code's names."""

from __future__ import annotations

import copy
import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helicone_core.settings import REQUEST_LOGGED_TOPIC, CommonSettings

from tests.chart.render import CHART_DIR, REQUIRED, by_kind, merge, objects, render, values_file
from tests.chart.validation import load_documents, validate_manifest

K8S = Path(__file__).resolve().parents[2] / "k8s"
MANIFESTS = ("namespaces.yaml", "kafka.yaml", "postgres.yaml", "clickhouse.yaml", "minio.yaml", "networkpolicies.yaml")
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
    """...and replay the DLQ from its pod (`python -m helicone_ingest.dlq replay`, as the runbook says): read it
    in the replay group and write the log; without these the documented replay failed on authorization.

    Faust's own topics get what Faust does on them and no more: it creates its leader-election topic
    (CreateTopics at start) and consumes it, but never produces to it, so Write on it was a grant nothing used."""
    from helicone_ingest import dlq
    from helicone_ingest.app import IngestService
    from helicone_ingest.settings import IngestSettings

    # The Faust app ingest really builds: its id is the consumer group, and it creates a leader-election topic.
    app = IngestService(IngestSettings(data_dir=tmp_path), analytics=object(), bodies=object())._build_faust()
    assert app.conf.id == DEFAULTS.consumer_group and not app.conf.topic_disable_leader
    leader_topic = app._leader_assignor._leader_topic_name  # Faust's name for it: "<app id>-__assignor-__leader"
    # Faust's internal topics: the leader topic (declared, then subscribed: Create and Read) and a table's changelog
    # (declared, read at recovery, written on each change); ingest has no tables today.
    internal = {leader_topic: {"Create", "Describe", "Read"}}
    internal |= {table.changelog_topic.get_topic_name(): {"Create", "Describe", "Read", "Write"} for table in app.tables.values()}
    assert acls("helicone-ingest") == {
        ("topic", REQUEST_LOGGED_TOPIC, "literal"): {"Describe", "Read", "Write"},
        ("topic", DEFAULTS.kafka_dlq_topic, "literal"): {"Describe", "Read", "Write"},
        ("group", DEFAULTS.consumer_group, "literal"): {"Describe", "Read"},
        ("group", DEFAULTS.consumer_group + dlq.REPLAY_GROUP_SUFFIX, "literal"): {"Describe", "Read"},
    } | {("topic", name, "literal"): ops for name, ops in internal.items()}


def test_the_user_kedas_kafka_scaler_authenticates_as_may_read_the_lag_it_scales_on():
    """KEDA's kafka scaler reads the group's lag: the topic's partitions and log ends (Metadata, ListOffsets:
    Describe on the topic) and the group's committed offsets (FindCoordinator, OffsetFetch: Describe on the
    group), as the KafkaUser the chart's TriggerAuthentication names."""
    import base64

    objs = objects(render(REQUIRED, {"components": {"ingest": {"keda": {"enabled": True}}}}))
    [scaled] = by_kind(objs, "ScaledObject").values()
    [trigger] = scaled["spec"]["triggers"]
    auth = by_kind(objs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    ref = next(r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "username")
    user = base64.b64decode(by_kind(objs, "Secret")[ref["name"]]["data"][ref["key"]]).decode()
    granted = acls(user)
    assert "Describe" in granted[("topic", trigger["metadata"]["topic"], "literal")]
    assert "Describe" in granted[("group", trigger["metadata"]["consumerGroup"], "literal")]


def test_the_runbooks_console_consumers_use_only_groups_their_kafka_user_may_read():
    """A console consumer given no --group subscribes in a random group `console-consumer-<n>`, which no
    KafkaUser may read: the runbook's command to look at the dead letters failed with GroupAuthorizationFailed
    as every user k8s/kafka.yaml lets read that topic. With --partition it is assigned the partition and
    joins no group (and commits nothing: the console consumer's own group does not auto-commit)."""
    text = (CHART_DIR / "docs" / "runbooks.md").read_text().replace("\\\n", " ")
    commands = [line.split() for line in text.splitlines() if "kafka-console-consumer.sh" in line]
    assert commands
    users = [u["metadata"]["name"] for _, u in all_documents() if u["kind"] == "KafkaUser"]
    for args in commands:
        topic = args[args.index("--topic") + 1]
        readers = [u for u in users if "Read" in acls(u).get(("topic", topic, "literal"), set())]
        assert readers, f"no KafkaUser may read {topic}: {' '.join(args)}"
        if "--group" in args:
            group = args[args.index("--group") + 1]
            assert any("Read" in acls(u).get(("group", group, "literal"), set()) for u in readers), " ".join(args)
        else:
            assert "--partition" in args, f"joins a random group no KafkaUser may read: {' '.join(args)}"
            # one command per partition, over every partition of the topic
            loop = re.search(r"^for p in ([\d ]+); do$", text, re.M)
            partitions = next(t["spec"]["partitions"] for _, t in all_documents() if t["kind"] == "KafkaTopic" and topic_name(t) == topic)
            assert args[args.index("--partition") + 1] == '"$p"' and loop and loop[1].split() == [str(n) for n in range(partitions)]


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


# ---- NetworkPolicies: the data namespace and the chart agree on every edge ---------------------------


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it (namespace None and an ip: an address outside the cluster's pods)."""

    namespace: str | None
    labels: dict = field(default_factory=dict, hash=False)
    ip: str | None = None


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against labels; {} selects everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if not {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                "Exists": key in labels, "DoesNotExist": key not in labels}[op]:
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, other: Pod) -> bool:
    if "ipBlock" in peer:  # addresses outside the cluster's pods (which ipBlocks are not meant to select)
        if other.ip is None:
            return False
        ip = ipaddress.ip_address(other.ip)
        block = peer["ipBlock"]
        return (ip in ipaddress.ip_network(block["cidr"])
                and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []) if ipaddress.ip_network(e).version == ip.version))
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
    else:
        in_namespace = other.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector") or {}, other.labels)


def port_matches(rule: dict, port: int, protocol: str) -> bool:
    return not rule.get("ports") or any(
        p.get("protocol", "TCP") == protocol and (p.get("port") in (None, port) or p["port"] <= port <= p.get("endPort", p["port"]))
        for p in rule["ports"] if not isinstance(p.get("port"), str))


def allows(policies: list[dict], direction: str, pod: Pod, other: Pod, port: int, protocol: str = "TCP") -> bool:
    """Does `pod` accept (direction Ingress) / may it open (Egress) a connection from / to `other` on `port`?"""
    spec_key, peer_key = {"Ingress": ("ingress", "from"), "Egress": ("egress", "to")}[direction]
    selecting = [p for p in policies if p["metadata"]["namespace"] == pod.namespace and selects(p["spec"]["podSelector"], pod.labels)
                 and direction in p["spec"].get("policyTypes", ["Ingress", *(["Egress"] if "egress" in p["spec"] else [])])]
    if pod.namespace is None or not selecting:
        return True  # not isolated
    return any(port_matches(rule, port, protocol) and (not rule.get(peer_key)
                                                        or any(peer_matches(peer, p["metadata"]["namespace"], other) for peer in rule[peer_key]))
               for p in selecting for rule in p["spec"].get(spec_key) or [])


def connects(policies: list[dict], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    return allows(policies, "Egress", src, dst, port, protocol) and allows(policies, "Ingress", dst, src, port, protocol)


def strimzi_network_policy() -> dict:
    """The NetworkPolicy Strimzi writes for the Kafka pods (KafkaCluster.generateNetworkPolicy, Strimzi 1.x): the
    control plane, replication and agent ports for its own components, each listener from its networkPolicyPeers
    (none: every source)."""
    kafka = only("Kafka")
    name = kafka["metadata"]["name"]
    brokers = {"podSelector": {"matchLabels": kafka_pod_labels(selector=True)}}
    operator = {"podSelector": {"matchLabels": {"strimzi.io/kind": "cluster-operator"}}, "namespaceSelector": {}}
    tools = [{"podSelector": {"matchLabels": {"strimzi.io/name": f"{name}-{tool}"}}}
             for tool in ("entity-operator", "kafka-exporter", "cruise-control")]
    rules = [{"ports": [{"port": 9090, "protocol": "TCP"}], "from": [brokers, operator]},
             {"ports": [{"port": 9091, "protocol": "TCP"}], "from": [operator, brokers, *tools]},
             {"ports": [{"port": 8443, "protocol": "TCP"}], "from": [operator]}]
    rules += [{"ports": [{"port": listener["port"], "protocol": "TCP"}], "from": listener.get("networkPolicyPeers", [])}
              for listener in kafka["spec"]["kafka"]["listeners"]]
    return {"kind": "NetworkPolicy", "metadata": {"name": f"{name}-network-policy-kafka", "namespace": DATA_NAMESPACE},
            "spec": {"podSelector": {"matchLabels": kafka_pod_labels(selector=True)}, "policyTypes": ["Ingress"], "ingress": rules}}


def kafka_pod_labels(selector: bool = False) -> dict:
    name = only("Kafka")["metadata"]["name"]
    labels = {"strimzi.io/cluster": name, "strimzi.io/kind": "Kafka", "strimzi.io/name": f"{name}-kafka"}
    return labels if selector else {**labels, "strimzi.io/pool-name": "dual-role", "strimzi.io/broker-role": "true",
                                    "strimzi.io/controller-role": "true", "strimzi.io/component-type": "kafka"}


def data_policies() -> list[dict]:
    return [d for _, d in all_documents() if d["kind"] == "NetworkPolicy"] + [strimzi_network_policy()]


def data_pods() -> dict[str, Pod]:
    """The pods the operators run for k8s/*.yaml, with the labels they give them."""
    kafka = only("Kafka")["metadata"]["name"]
    return {
        "kafka": Pod(DATA_NAMESPACE, kafka_pod_labels()),
        "kafka-entity-operator": Pod(DATA_NAMESPACE, {"strimzi.io/cluster": kafka, "strimzi.io/kind": "Kafka",
                                                      "strimzi.io/name": f"{kafka}-entity-operator"}),
        "postgres": Pod(DATA_NAMESPACE, {"cnpg.io/cluster": only("Cluster")["metadata"]["name"], "cnpg.io/podRole": "instance",
                                         "cnpg.io/instanceRole": "primary"}),
        "clickhouse": Pod(DATA_NAMESPACE, {"clickhouse.altinity.com/chi": only("ClickHouseInstallation")["metadata"]["name"],
                                           "clickhouse.altinity.com/cluster": "main", "clickhouse.altinity.com/app": "chop"}),
        "minio": Pod(DATA_NAMESPACE, {"v1.min.io/tenant": only("Tenant")["metadata"]["name"], "v1.min.io/pool": "pool-0"}),
    }


def client_ports() -> dict[str, set[int]]:
    """The ports each data pod serves its clients on (the pod's, which NetworkPolicies see: MinIO's Service maps 80 to 9000)."""
    return {"kafka": {listener["port"] for listener in only("Kafka")["spec"]["kafka"]["listeners"]},
            "postgres": {5432}, "clickhouse": {8123}, "minio": {9000}}


CHART_RENDERS = {"default": [REQUIRED], **{r: [values_file("values-global.yaml"), values_file(r)] for r in REGIONS}}
# what a component's configuration names -> the data pods it connects to
CONNECTION_SETTINGS = {"HELICONE_KAFKA_BOOTSTRAP": "kafka", "HELICONE_POSTGRES_DSN": "postgres",
                       "HELICONE_CLICKHOUSE_URL": "clickhouse", "HELICONE_S3_ENDPOINT": "minio"}


def chart_side(layers: list[dict]) -> tuple[list[dict], dict[str, Pod], dict[str, set[str]]]:
    """The chart's NetworkPolicies, its pods (component -> Pod in namespace helicone) and what each connects to."""
    objs = objects(render(*layers, namespace=CHART_NAMESPACE))
    policies = [{**o, "metadata": {**o["metadata"], "namespace": CHART_NAMESPACE}} for o in objs if o["kind"] == "NetworkPolicy"]
    configmaps = by_kind(objs, "ConfigMap")
    pods, uses = {}, {}
    for o in objs:
        if o["kind"] in ("Deployment", "Rollout", "Job"):
            template = o["spec"]["template"]
            component = template["metadata"]["labels"]["app.kubernetes.io/component"]
            pods[component] = Pod(CHART_NAMESPACE, template["metadata"]["labels"])
            container = template["spec"]["containers"][0]
            settings = {e["name"]: e.get("value") for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                settings.update(configmaps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {}))
            uses[component] = {CONNECTION_SETTINGS[k] for k, v in settings.items() if k in CONNECTION_SETTINGS
                               and (k != "HELICONE_S3_ENDPOINT" or urlsplit(v).hostname.endswith(f".{DATA_NAMESPACE}"))}
    return policies, pods, uses


def test_the_data_namespace_denies_by_default_and_every_rule_names_its_sources():
    """Without a default deny, ClickHouse (its user is let in from any address), Postgres and MinIO take a password
    login from any pod of the cluster; a rule with no `from` (or a Kafka listener with no networkPolicyPeers)
    would undo it for its port."""
    policies = [d for _, d in all_documents() if d["kind"] == "NetworkPolicy"]
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in [p["spec"] for p in policies]
    peers = [(p["metadata"]["name"], rule.get("from")) for p in policies for rule in p["spec"].get("ingress") or []]
    peers += [(f"listener {listener['port']}", listener.get("networkPolicyPeers")) for listener in only("Kafka")["spec"]["kafka"]["listeners"]]
    for name, sources in peers:
        assert sources, f"{name}: a rule without `from` lets every source in"
        for peer in sources:
            assert "ipBlock" not in peer, name
            assert peer.get("podSelector") or (peer.get("namespaceSelector") or {}).get("matchLabels"), (name, peer)


@pytest.mark.parametrize("render_name", sorted(CHART_RENDERS))
def test_the_data_side_lets_in_exactly_the_edges_the_chart_opens(render_name):
    """Each chart component reaches each data service on the ports it serves its clients on exactly when both sides
    allow it: the chart's egress (networkPolicy.dataPeers and its ports) and the data namespace's ingress
    (networkpolicies.yaml, Strimzi's policy from kafka.yaml's listeners); every service a component's configuration
    names is among them and no other one."""
    chart_policies, pods, uses = chart_side(CHART_RENDERS[render_name])
    _, _, all_uses = chart_side(CHART_RENDERS["default"])  # every backing service in this cluster
    policies, targets = data_policies(), data_pods()
    assert set(pods) == {"gateway", "ingest", "api", "prompts", "migrations"}
    for component, pod in pods.items():
        for service, ports in client_ports().items():
            for port in sorted(ports):
                opened = allows(chart_policies, "Egress", pod, targets[service], port)
                let_in = allows(policies, "Ingress", targets[service], pod, port)
                assert opened == let_in, f"{component} -> {service}:{port}: chart egress {opened}, data ingress {let_in}"
                assert let_in == (service in all_uses[component]), f"{component} -> {service}:{port}"
            if service in uses[component]:
                assert all(connects(chart_policies + policies, pod, targets[service], port) for port in ports), (component, service)


def test_the_chart_connects_to_ports_the_data_services_serve():
    values = merge(values_file("values.yaml"), REQUIRED)
    assert int(urlsplit(f"//{values['kafka']['bootstrap']}").port) in client_ports()["kafka"]
    assert int(urlsplit(values["clickhouse"]["url"]).port) in client_ports()["clickhouse"]
    assert values["postgres"]["port"] in client_ports()["postgres"]


def test_nothing_else_reaches_the_data_services():
    policies, targets = data_policies(), data_pods()
    strangers = [Pod("default", {"app": "shell"}), Pod(CHART_NAMESPACE, {"run": "debug"}),
                 Pod(CHART_NAMESPACE, {"app.kubernetes.io/name": "other", "app.kubernetes.io/component": "api"}),
                 Pod("monitoring", {"app.kubernetes.io/name": "grafana"})]
    for stranger in strangers:
        for name, target in targets.items():
            for port in (5432, 8123, 9000, 9009, 9090, 9091, 9092, 9093, 8443, 8000, 9187):
                assert not allows(policies, "Ingress", target, stranger, port), (stranger, name, port)
    chart_pod = Pod(CHART_NAMESPACE, {"app.kubernetes.io/name": "helicone", "app.kubernetes.io/component": "ingest"})
    for port in (9000, 9009):  # ClickHouse's native and interserver ports: the chart speaks HTTP
        assert not allows(policies, "Ingress", targets["clickhouse"], chart_pod, port)


def test_the_operators_and_the_services_own_traffic_flows():
    policies, pods = data_policies(), data_pods()
    kafka, entity_operator, postgres, clickhouse, minio = (
        pods[n] for n in ("kafka", "kafka-entity-operator", "postgres", "clickhouse", "minio"))
    edges = [(kafka, kafka, 9090), (kafka, kafka, 9091), (entity_operator, kafka, 9091),
             (Pod("strimzi", {"strimzi.io/kind": "cluster-operator"}), kafka, 9091),
             (Pod("strimzi", {"strimzi.io/kind": "cluster-operator"}), kafka, 8443),
             (Pod("keda", {"app": "keda-operator"}), kafka, 9092),
             (postgres, postgres, 5432), (Pod("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}), postgres, 8000),
             (Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}), postgres, 9187),
             (Pod("clickhouse-operator", {"app": "clickhouse-operator"}), clickhouse, 8123),
             (minio, minio, 9000), (Pod("minio-operator", {"app.kubernetes.io/name": "operator"}), minio, 9000)]
    for src, dst, port in edges:
        assert connects(policies, src, dst, port), (src, dst, port)
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    api_server = Pod(None, ip="10.0.0.1")
    for name, pod in pods.items():
        assert connects(policies, pod, dns, 53, "UDP") and connects(policies, pod, dns, 53, "TCP"), name
        for port in (443, 6443):  # their operator code runs against the API server; ClickHouse needs none
            assert connects(policies, pod, api_server, port) == (name != "clickhouse"), (name, port)
        for port in (80, 25, 9092):
            assert not connects(policies, pod, Pod(None, ip="93.184.216.34"), port), (name, port)
    # the operators' namespaces are those README.md installs them into
    readme = (K8S / "README.md").read_text()
    named = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
             for p in policies for rule in p["spec"].get("ingress", []) + p["spec"].get("egress", [])
             for peer in rule.get("from", []) + rule.get("to", []) if (peer.get("namespaceSelector") or {}).get("matchLabels")}
    for namespace in named - {DATA_NAMESPACE, CHART_NAMESPACE, "kube-system"}:
        assert re.search(rf"(-n|namespace) {re.escape(namespace)}\b", readme), namespace


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
