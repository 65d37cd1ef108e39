"""The chart and the code agree (issue 5), without a cluster.

- test_chart_boots_a_working_stack: the chart rendered close to its defaults; its migrations Job and
  its four Deployments run as local processes with their rendered commands and environment, against
  loopback stand-ins for the cluster's Postgres, Kafka, ClickHouse, S3 and LLM provider (boot.py's
  rewrite table is the only edit); every pod passes its rendered probes, a key made with the command
  NOTES.txt prints proxies a request that reaches the api, and every pod stops cleanly on SIGTERM
  within its terminationGracePeriodSeconds.
- test_rendered_settings_are_read_by_the_code (fast, no servers): every HELICONE_* variable a pod
  gets is a setting of its service's settings class, every secret setting it needs comes from a
  Secret, listen ports match the containerPorts and probes, and the command's module exists.
- test_the_boot_refuses_what_it_cannot_map (fast): the boot's guards against leaving loopback.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shlex
import subprocess
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.chart.boot import (
    SECRET_REF,
    Container,
    Loopback,
    PodProcess,
    Rendered,
    backing_servers,
    chart_defaults,
    endpoint_of,
    local_argv,
    local_pod,
    wait_probes,
)
from tests.support.fake_upstream import REPLY

# Cluster-style addresses (chart defaults for Kafka, ClickHouse and S3 are kept, see boot_values).
POSTGRES_ENDPOINT = "helicone-pg-rw.helicone-data:5432"
UPSTREAM_URL = "http://fake-llm.llm-fakes:8080"
# The embedded Postgres' own user and database; it trusts local connections, so any password
# passes and this one only serves to prove no pod logs it.
POSTGRES_PASSWORD = "chart-boot-pg-secret-4f1c"
POSTGRES_DSN = f"postgresql://postgres:{POSTGRES_PASSWORD}@{POSTGRES_ENDPOINT}/postgres"
CLICKHOUSE_PASSWORD = "chart-boot-ch-secret-9a2e"
S3_ACCESS_KEY_ID = "chart-boot-access-key"
S3_SECRET_ACCESS_KEY = "chart-boot-s3-secret-77d0"
SECRETS = (POSTGRES_PASSWORD, CLICKHOUSE_PASSWORD, S3_SECRET_ACCESS_KEY)
PROVIDER_KEY = "sk-chart-boot-provider-0123456789"

COMPONENTS = ("gateway", "ingest", "api", "prompts")
SETTINGS_CLASSES = {
    "gateway": "helicone_gateway.settings:GatewaySettings",
    "ingest": "helicone_ingest.settings:IngestSettings",
    "api": "helicone_api.settings:ApiSettings",
    "prompts": "helicone_prompts.settings:PromptsSettings",
}
READY_TIMEOUT = 90.0


def boot_values() -> dict:
    return {
        "kafka": {"securityProtocol": "PLAINTEXT"},
        "postgres": {"dsn": POSTGRES_DSN},
        "clickhouse": {"password": CLICKHOUSE_PASSWORD},
        "s3": {"accessKeyId": S3_ACCESS_KEY_ID, "secretAccessKey": S3_SECRET_ACCESS_KEY},
        "components": {
            "gateway": {
                "config": {"openai_url": UPSTREAM_URL, "anthropic_url": UPSTREAM_URL},
                # for the stand-in broker (Tansu), as `helicone-stack up` does: it lacks InitProducerId
                "extraEnv": [{"name": "HELICONE_KAFKA_IDEMPOTENT_PRODUCER", "value": "false"}],
            },
            # Tansu holds a new group's first join for half the session timeout (30 s with the
            # default 60; Kafka waits group.initial.rebalance.delay.ms, 3 s by default)
            "ingest": {"extraEnv": [{"name": "HELICONE_BROKER_SESSION_TIMEOUT", "value": "6"}]},
        },
    }


def cluster_values() -> dict:
    """Every secret from an existingSecret, Kafka over SASL_SSL with its CA, a region, shared config."""
    return {
        "region": "eu-west-1",
        "config": {"readiness_timeout": 2},
        "kafka": {"securityProtocol": "SASL_SSL", "tls": {"caSecret": "kafka-ca"},
                  "sasl": {"gateway": {"existingSecret": "kafka-gateway"}, "ingest": {"existingSecret": "kafka-ingest"},
                           "api": {"existingSecret": "kafka-api"}}},
        "postgres": {"existingSecret": "pg-app"},
        "clickhouse": {"existingSecret": "ch-user"},
        "s3": {"existingSecret": "s3-keys"},
        "llmSecurity": {"url": "http://llama-guard.ml:8000/v1", "model": "meta-llama/Llama-Guard-3-8B",
                        "existingSecret": "llm-security", "peers": [{"namespaceSelector": {"matchLabels": {"name": "ml"}}}]},
    }


# ---- fast: the rendered settings are the code's settings ------------------------------------
def _settings_class(component: str):
    if component == "migrations":
        from helicone_core.settings import CommonSettings

        try:
            module = importlib.import_module("helicone_core.migrate")
        except ModuleNotFoundError:
            return CommonSettings
        own = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, CommonSettings) and c.__module__ == module.__name__]
        assert len(own) <= 1, f"helicone_core.migrate defines several settings classes: {own}"
        return own[0] if own else CommonSettings
    module, name = SETTINGS_CLASSES[component].split(":")
    return getattr(importlib.import_module(module), name)


def _env_var(cls, field: str) -> str:
    return (cls.model_config.get("env_prefix", "") + field).upper()


def _is_secret(annotation) -> bool:
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


# When a component needs each secret setting, from its rendered (non-secret) settings. A new
# SecretStr setting in the code fails the test until it is listed here and the chart provides it.
NEEDED_WHEN = {
    "postgres_dsn": lambda env: True,  # keys, prompts, metadata: every component uses Postgres
    "clickhouse_password": lambda env: env.get("HELICONE_ANALYTICS_BACKEND") == "clickhouse",
    "s3_access_key_id": lambda env: env.get("HELICONE_BODY_STORE") == "s3",
    "s3_secret_access_key": lambda env: env.get("HELICONE_BODY_STORE") == "s3",
    "kafka_sasl_password": lambda env: env.get("HELICONE_KAFKA_SECURITY_PROTOCOL", "").startswith("SASL"),
    "redis_url": lambda env: False,  # optional: without it each gateway keeps its response cache in memory
    "admin_token": lambda env: False,  # optional: without it the api's /v1/admin routes answer 404
    "llm_security_api_key": lambda env: False,  # optional: a classifier in the cluster may need no key
    # optional: without a master key the provider key vault is off; old keys only ever decrypt beside a current one
    "vault_key": lambda env: "HELICONE_VAULT_OLD_KEYS" in env,
    "vault_old_keys": lambda env: False,
}


def _pods(rendered: Rendered) -> dict[str, Container]:
    pods = dict(rendered.containers("Deployment"))
    assert sorted(pods) == sorted(COMPONENTS), f"Deployments rendered: {sorted(pods)}"
    jobs = rendered.containers("Job")
    assert list(jobs) == ["migrations"], f"Jobs rendered: {list(jobs)}"
    return {**pods, **jobs}


@pytest.mark.chart
@pytest.mark.parametrize("values", [boot_values(), cluster_values()], ids=["inline-secrets", "existing-secrets-sasl-ssl"])
def test_rendered_settings_are_read_by_the_code(values):
    rendered = Rendered(values)
    problems = []
    for component, container in _pods(rendered).items():
        cls = _settings_class(component)
        env = container.environment(rendered, read_secrets=False)
        fields = {_env_var(cls, f): f for f in cls.model_fields}
        # a setting the code does not read is a bug (a typo, or a feature the code lost)
        problems += [f"{component}: the chart sets {var}, which {cls.__name__} does not read"
                     for var in sorted(env) if var.startswith("HELICONE_") and var not in fields]
        for field, info in cls.model_fields.items():
            if not _is_secret(info.annotation):
                continue
            var = _env_var(cls, field)
            if field not in NEEDED_WHEN:
                problems.append(f"{cls.__name__}.{field} is a secret setting this test does not know: add it to NEEDED_WHEN")
            elif NEEDED_WHEN[field](env) and var not in env:
                problems.append(f"{component}: needs {var} ({cls.__name__}.{field}), which the chart does not provide")
            if var in env and not env[var].startswith(SECRET_REF):
                problems.append(f"{component}: {var} is a secret but comes from a ConfigMap or a plain value")
        container.check_listen_ports(env)
        if importlib.util.find_spec(container.module()) is None:
            problems.append(f"{component}: its command runs module {container.module()}, which does not exist")
    assert not problems, "\n".join(problems)


@pytest.mark.chart
def test_the_boot_refuses_what_it_cannot_map():
    """The boot's own guards: a Secret the render did not make, an address without a loopback
    stand-in and a path outside the volumes stop it, instead of reaching out or writing anywhere."""
    rendered = Rendered(cluster_values())
    with pytest.raises(LookupError, match="from Secret 'pg-app', which the render did not produce"):
        rendered.containers("Deployment")["gateway"].environment(rendered)
    table = Loopback({"kafka.data:9092": "127.0.0.1:1001", "minio.data:80": "127.0.0.1:1002", "pg.data:5432": "127.0.0.1:1003"},
                     ports={8787: 2001}, volumes={"/var/lib/helicone": Path("/scratch/data")})
    with pytest.raises(LookupError, match="HELICONE_KAFKA_BOOTSTRAP names kafka.other:9092, for which the boot has no loopback"):
        table.environment({"HELICONE_KAFKA_BOOTSTRAP": "kafka.data:9092,kafka.other:9092"})
    with pytest.raises(LookupError, match="HELICONE_OPENAI_URL names api.openai.com:443"):
        table.environment({"HELICONE_OPENAI_URL": "https://api.openai.com"})
    with pytest.raises(LookupError, match="HELICONE_KAFKA_SSL_CAFILE=/etc/ca.crt is outside every mounted volume"):
        table.environment({"HELICONE_KAFKA_SSL_CAFILE": "/etc/ca.crt"})
    assert table.environment({
        "HELICONE_HOST": "0.0.0.0", "HELICONE_PORT": "8787", "HELICONE_KAFKA_BOOTSTRAP": "kafka.data:9092",
        "HELICONE_S3_ENDPOINT": "http://minio.data", "HELICONE_DATA_DIR": "/var/lib/helicone",
        "HELICONE_JOURNAL_DIR": "/var/lib/helicone/journal", "HELICONE_POSTGRES_DSN": "postgresql://u:p@pg.data:5432/db?sslmode=disable",
        "HELICONE_LOG_LEVEL": "INFO",
    }) == {
        "HELICONE_HOST": "127.0.0.1", "HELICONE_PORT": "2001", "HELICONE_KAFKA_BOOTSTRAP": "127.0.0.1:1001",
        "HELICONE_S3_ENDPOINT": "http://127.0.0.1:1002", "HELICONE_DATA_DIR": "/scratch/data",
        "HELICONE_JOURNAL_DIR": "/scratch/data/journal", "HELICONE_POSTGRES_DSN": "postgresql://u:p@127.0.0.1:1003/db?sslmode=disable",
        "HELICONE_LOG_LEVEL": "INFO",
    }


# ---- the boot -----------------------------------------------------------------------------
def _create_key(rendered: Rendered, api: Container, env: dict[str, str]) -> dict:
    """Runs the key command NOTES.txt prints, in the api pod's environment, as `kubectl exec` would."""
    found = [m for ln in rendered.notes.splitlines() if (m := re.search(r"kubectl .*exec deploy/(\S+) -- (.+ create .+)$", ln))]
    assert len(found) == 1, f"NOTES.txt should print one `kubectl exec deploy/<api> -- ... create ...` line:\n{rendered.notes}"
    m = found[0]
    line = m.group(0)
    assert m.group(1) == api.workload, f"NOTES.txt execs into deploy/{m.group(1)}, not the api's Deployment {api.workload}"
    argv = local_argv(shlex.split(m.group(2).replace("<your org>", "chart-boot")))
    done = subprocess.run(argv, env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{line} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ready(proc: PodProcess, container: Container, ports: dict[int, int]) -> float:
    """Seconds to ready (startup, then readiness probe); then the liveness probe must pass too."""
    seconds = wait_probes(proc, container, ports, ("startupProbe", "readinessProbe"), READY_TIMEOUT)
    wait_probes(proc, container, ports, ("livenessProbe",), READY_TIMEOUT)
    return seconds


def _proxy_one_request(gateway: str, api: str, key: str) -> float:
    """One chat completion through the gateway; seconds until the api lists it (same Helicone-Id),
    with both bodies read back (ingest wrote them to S3)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "boot from the chart"}]}
    headers = {"Authorization": f"Bearer {PROVIDER_KEY}", "Helicone-Auth": f"Bearer {key}"}
    deadline = time.monotonic() + 15  # a new key reaches the gateway through Postgres' change feed
    while True:
        r = httpx.post(f"{gateway}/v1/chat/completions", json=body, headers=headers, timeout=15)
        if r.status_code != 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == REPLY
    request_id = r.headers["helicone-id"]
    sent = time.monotonic()
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        while True:
            q = client.post("/v1/request/query", json={"limit": 10})
            assert q.status_code == 200, q.text
            rows = [row for row in q.json()["data"] if row["request_id"] == request_id]
            if rows:
                break
            assert time.monotonic() - sent < 45, f"request {request_id} did not reach the api within 45s"
            time.sleep(0.2)
        seconds = time.monotonic() - sent
        assert (rows[0]["status"], rows[0]["model"], rows[0]["provider"]) == (200, "gpt-4o-mini", "openai"), rows[0]
        detail = client.get(f"/v1/request/{request_id}")
        assert detail.status_code == 200, detail.text
        assert detail.json()["request_body"]["messages"] == body["messages"]
        assert detail.json()["response_body"]["choices"][0]["message"]["content"] == REPLY
    return seconds


def _stop(running: list[PodProcess], pods: dict[str, Container]) -> dict[str, float]:
    """SIGTERM to every pod at once, as kubelet sends it after the preStop hook; each must exit 0
    within what is left of its terminationGracePeriodSeconds. Seconds from SIGTERM until each
    exit was seen (the waits run in order, so a later pod's figure is at least an earlier one's)."""
    for proc in running:
        proc.terminate()
    stopped, seconds = time.monotonic(), {}
    for proc in running:
        c = pods[proc.name]
        budget = c.grace_seconds - c.pre_stop_seconds
        rc = proc.wait_exit(stopped + budget)
        assert rc == 0, proc.failure(f"did not exit 0 within {budget:g}s of SIGTERM "
                                     f"(terminationGracePeriodSeconds {c.grace_seconds:g} - preStop {c.pre_stop_seconds:g})")
        seconds[f"{proc.name} stop"] = time.monotonic() - stopped
    return seconds


@pytest.mark.e2e  # starts servers and processes, as tests/e2e does
@pytest.mark.chart
def test_chart_boots_a_working_stack(tmp_path):
    t_start = time.monotonic()
    defaults = chart_defaults()
    rendered = Rendered(boot_values())
    pods = _pods(rendered)
    timings: dict[str, float] = {}
    running: list[PodProcess] = []
    with backing_servers(tmp_path / "servers", defaults["s3"]["bucket"]) as servers:
        timings["backing servers"] = servers.seconds
        # the rewrite table: each cluster address the render names -> its loopback stand-in
        endpoints = {
            POSTGRES_ENDPOINT: servers.postgres,
            endpoint_of(defaults["kafka"]["bootstrap"]): servers.kafka,
            endpoint_of(defaults["clickhouse"]["url"]): servers.clickhouse,
            endpoint_of(defaults["s3"]["endpoint"]): servers.s3,
            endpoint_of(UPSTREAM_URL): servers.upstream,
        }
        try:
            # 1. the pre-install hook: the migrations must succeed before anything else starts
            migrate, _ = local_pod(pods["migrations"], rendered, endpoints, tmp_path / "migrations")
            t0 = time.monotonic()
            assert migrate.run(timeout=60) == 0, migrate.failure("the migrations Job's command failed")
            timings["migrations"] = time.monotonic() - t0

            # 2. every Deployment's pod, all at once, each until its probes pass
            ports: dict[str, dict[int, int]] = {}
            # the prompts pod's gRPC port first: the gateway and the api are rendered to reach it by its Service
            prompts, ports["prompts"] = local_pod(pods["prompts"], rendered, endpoints, tmp_path / "prompts")
            for caller in ("gateway", "api"):
                target = pods[caller].environment(rendered)["HELICONE_PROMPTS_TARGET"]
                endpoints[target] = f"127.0.0.1:{ports['prompts'][pods['prompts'].ports['grpc']]}"
            for name in COMPONENTS:
                if name == "prompts":
                    proc = prompts
                else:
                    proc, ports[name] = local_pod(pods[name], rendered, endpoints, tmp_path / name)
                running.append(proc.start())
            with ThreadPoolExecutor(len(running)) as pool:  # each measured from its own start
                ready = pool.map(lambda p: _ready(p, pods[p.name], ports[p.name]), running)
                timings.update({f"{p.name} ready": seconds for p, seconds in zip(running, list(ready), strict=True)})

            # 3. a key from NOTES.txt's command, one request through the gateway, found in the api
            key = _create_key(rendered, pods["api"], next(p.env for p in running if p.name == "api"))["key"]
            http = {name: f"http://127.0.0.1:{ports[name][pods[name].ports['http']]}" for name in ("gateway", "api")}
            timings["request to api"] = _proxy_one_request(http["gateway"], http["api"], key)

            # 4. every pod stops cleanly
            timings.update(_stop(running, pods))
        finally:
            for proc in running:
                proc.kill()

    for proc in [migrate, *running]:
        log = proc.log_path.read_text(errors="replace")
        assert not [s for s in (*SECRETS, key) if s in log], f"{proc.name} logged a secret"
        errors = [ln for ln in log.splitlines() if '"level": "error"' in ln or '"level": "critical"' in ln]
        assert not errors, f"{proc.name} logged errors during a clean boot:\n" + "\n".join(errors[:10])
        written = sorted(str(p.relative_to(proc.cwd)) for p in proc.cwd.rglob("*"))
        assert not written, f"{proc.name} wrote outside its volumes (the pod's root filesystem is read-only): {written}"
    timings["total"] = time.monotonic() - t_start
    print("chart boot seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
