import argparse

import pytest
from helicone_runner.cli import build_parser, parse_targets


def test_targets():
    assert parse_targets("all") == ["prompts", "ingest", "api", "gateway"]
    assert parse_targets("gateway, api") == ["gateway", "api"]
    assert parse_targets("gateway,api,gateway") == ["gateway", "api"]  # a service named twice runs (and binds its port) once
    with pytest.raises(argparse.ArgumentTypeError, match="unknown service"):
        parse_targets("gateway,billing")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_targets(",")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown service.*gatway"):
        parse_targets("all,gatway")  # a misspelt name beside all is still an error


def test_up_defaults():
    args = build_parser().parse_args(["up", "--target", "gateway"])
    assert args.target == ["gateway"] and args.analytics == "chdb" and args.bodies == "local" and args.kafka is None


def test_keys_create_prints_a_working_key(fresh_db_dsn, capsys):
    import asyncio
    import json

    from helicone_core import db
    from helicone_runner.cli import run_keys

    def cli(*argv) -> tuple[int, str, str]:
        code = asyncio.run(run_keys(build_parser().parse_args(["keys", *argv, "--postgres-dsn", fresh_db_dsn])))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = cli("create", "--org-name", "acme", "--name", "ci")
    created = json.loads(out)
    assert code == 0 and created["key"].startswith(db.KEY_PREFIX)

    async def active():
        pool = await db.connect_pool(fresh_db_dsn, max_size=1)
        try:
            return (await pool.fetchval("SELECT org_id::text FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL",
                                        db.hash_key(created["key"])), await pool.fetchval("SELECT name FROM orgs"))
        finally:
            await pool.close()

    assert asyncio.run(active()) == (created["org_id"], "acme")

    code, out, _ = cli("list")
    [listed] = [json.loads(line) for line in out.splitlines()]
    assert listed["id"] == created["id"] and listed["name"] == "ci" and listed["revoked_at"] is None
    assert created["key"] not in out  # only a preview is ever shown

    code, out, _ = cli("revoke", created["id"])
    assert code == 0 and json.loads(out)["revoked_at"] is not None
    assert asyncio.run(active())[0] is None
    code, _, err = cli("revoke", "00000000-0000-0000-0000-000000000000")
    assert code == 1 and "no key with id" in err


def test_unknown_target_is_a_clear_error(capsys):
    from helicone_runner.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["up", "--target", "billing"])
    assert exc.value.code == 2 and "unknown service(s) billing" in capsys.readouterr().err


def _runner_env(**helicone: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("HELICONE_")}
    env.update({"HELICONE_" + k.upper(): str(v) for k, v in helicone.items()})
    return env


def test_up_migrates_postgres_and_analytics_before_starting_services(fresh_db_dsn, tmp_path):
    """`helicone-stack up` runs helicone_core.migrate's apply_migrations first: the gateway alone
    migrates neither Postgres nor the analytics store, yet both are migrated once it is READY."""
    import asyncio
    import subprocess
    import sys
    import time

    import asyncpg
    from helicone_core import analytics, db
    from helicone_core.analytics import ChdbStore
    from helicone_runner.embedded import terminate

    from tests.support.net import free_port

    data_dir = tmp_path / "data"
    log_path = tmp_path / "runner.log"
    cmd = [sys.executable, "-m", "helicone_runner", "up", "--target", "gateway", "--data-dir", str(data_dir),
           "--postgres-dsn", fresh_db_dsn, "--kafka", f"127.0.0.1:{free_port()}", "--gateway-port", str(free_port())]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=_runner_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while b"\nREADY" not in log_path.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        terminate(proc, grace=20)

    async def schema() -> tuple[int, list[dict]]:
        conn = await asyncpg.connect(fresh_db_dsn)
        try:
            version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
        finally:
            await conn.close()
        store = ChdbStore(data_dir / "chdb", "helicone")
        try:
            key = await store.query("SELECT sorting_key FROM system.tables WHERE database = 'helicone' AND name = 'request_log'")
        finally:
            await store.close()
        return version, key

    assert asyncio.run(schema()) == (len(db.MIGRATIONS), [{"sorting_key": analytics.REQUEST_LOG_SORTING_KEY}])


def test_up_stops_with_the_migration_error_when_postgres_is_unreachable(tmp_path):
    import subprocess
    import sys

    from tests.support.net import free_port

    secret = "pw-never-shown-4711"
    dsn = f"postgresql://helicone:{secret}@127.0.0.1:{free_port()}/helicone"
    proc = subprocess.run([sys.executable, "-m", "helicone_runner", "up", "--target", "gateway", "--data-dir", str(tmp_path / "d"),
                           "--postgres-dsn", dsn, "--kafka", f"127.0.0.1:{free_port()}", "--gateway-port", str(free_port())],
                          env=_runner_env(migrate_timeout=1), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "error: postgres not reachable within 1s (HELICONE_MIGRATE_TIMEOUT)" in proc.stderr, proc.stderr
    assert "READY" not in proc.stdout and secret not in proc.stdout + proc.stderr


def test_fake_upstream_answers_for_every_provider(tmp_path):
    from helicone_core.providers import PROVIDER_TABLE
    from helicone_runner.cli import _settings

    args = build_parser().parse_args(["up", "--upstream", "fake", "--data-dir", str(tmp_path)])
    args.openai_url = args.anthropic_url = "http://127.0.0.1:9999"  # what run_up sets for --upstream fake
    gateway = _settings(args, "postgresql://x@127.0.0.1:1/x", "127.0.0.1:1")["gateway"]
    assert set(gateway.provider_urls) == set(PROVIDER_TABLE) - {"openai", "anthropic"}
    assert set(gateway.provider_urls.values()) == {"http://127.0.0.1:9999"}
    real = build_parser().parse_args(["up", "--data-dir", str(tmp_path)])
    assert _settings(real, "postgresql://x@127.0.0.1:1/x", "127.0.0.1:1")["gateway"].provider_urls == {}


async def test_a_graceful_stop_stops_every_service_that_publishes_before_the_drain(tmp_path, monkeypatch):
    """The api publishes too (async logs and OTLP answer once Kafka has them, and keep no copy): stopped
    after the drain, what it logged meanwhile was lost with the memory-only broker."""
    import asyncio
    import os
    import signal

    from helicone_runner import cli
    from helicone_runner.stack import Running
    from helicone_runner.supervision import BrokerSupervisor

    from runner.tests.test_supervision import _FakeBroker, _FakeConsumer, _FakeProducer

    order: list[str] = []

    class Kafka(_FakeBroker):
        pid_file = None

        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def start(self) -> str:
            return self.bootstrap

        def stop(self) -> None:
            order.append("broker stopped")

    class Service(_FakeConsumer):  # (ingest's log_reset) and the publisher of the gateway's and api's
        publisher = _FakeProducer()

    async def start_services(targets, settings, on_started=None):
        asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)

        def stopper(name):
            async def stop() -> None:
                order.append(f"{name} stopped")
            return stop

        return [Running(name, {}, stopper(name), Service()) for name in ("prompts", "ingest", "api", "gateway")]

    async def drain(self, timeout):
        order.append("drain")
        return True

    async def no_migrations(settings):
        pass

    monkeypatch.setattr(cli, "EmbeddedKafka", Kafka)
    monkeypatch.setattr(cli, "check_ports", lambda host, needs: None)
    monkeypatch.setattr(cli, "apply_migrations", no_migrations)
    monkeypatch.setattr(cli, "start_services", start_services)
    monkeypatch.setattr(cli, "tune_gc", lambda threshold: None)
    monkeypatch.setattr(BrokerSupervisor, "drain", drain)
    args = build_parser().parse_args(["up", "--data-dir", str(tmp_path / "d"), "--postgres-dsn", "postgresql://x@127.0.0.1:1/x"])
    assert await asyncio.wait_for(cli.run_up(args), 20) == 0
    assert order == ["gateway stopped", "api stopped", "drain", "ingest stopped", "prompts stopped", "broker stopped"]
