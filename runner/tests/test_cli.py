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


def _start_up(tmp_path, *argv: str, **helicone: str):
    """`helicone-stack up --target gateway ... argv` in the background, its output in runner.log: (process, log path)."""
    import subprocess
    import sys

    log_path = tmp_path / "runner.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "helicone_runner", "up", "--target", "gateway",
                                 "--data-dir", str(tmp_path / "data"), *argv],
                                env=_runner_env(**helicone), stdout=log, stderr=subprocess.STDOUT)
    return proc, log_path


def _wait_for_output(proc, log_path, text: bytes, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while text not in log_path.read_bytes():
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_while_starting_ends_the_start_up(tmp_path, sig):
    """Ctrl-C, `down` or `up --detach` giving up while `up` waits at start-up (here for a Postgres that does not
    answer): it stops there and then. Before, the signal only marked a stop for after READY: `up` went on
    waiting the whole migrate timeout, and `up --detach` reported it stopped while it went on starting."""
    import signal
    import subprocess

    from helicone_runner.embedded import terminate

    from tests.support.net import free_port

    dsn = f"postgresql://helicone:pw@127.0.0.1:{free_port()}/helicone"
    proc, log_path = _start_up(tmp_path, "--postgres-dsn", dsn, "--kafka", f"127.0.0.1:{free_port()}",
                               "--gateway-port", str(free_port()), migrate_timeout=300)
    try:
        _wait_for_output(proc, log_path, b"postgres not reachable yet")  # in the schema step, retrying
        proc.send_signal(getattr(signal, sig))
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{sig} while starting did not stop it: {log_path.read_text()[-2000:]}") from None
    finally:
        terminate(proc, grace=5)
    out = log_path.read_text()
    assert code == 128 + getattr(signal, sig), out
    assert "  schema    stopped after" in out and "READY" not in out, out
    assert not (tmp_path / "data" / "runner.pid").exists()  # cleaned up as at any stop


def test_a_second_stop_signal_cuts_an_answer_in_progress(tmp_path, fresh_db_dsn):
    """A graceful stop waits for the answers in progress, and a stream from a slow or hung provider can take
    the gateway's upstream read timeout (10 minutes): a second Ctrl-C (or SIGTERM) stops at once, as the
    gateway run alone does. Before, the runner ignored every signal after the first and went on waiting."""
    import asyncio
    import signal
    import socket
    import subprocess
    import threading

    import httpx
    from helicone_core import db
    from helicone_runner.embedded import terminate

    from tests.support.net import free_port

    async def new_key() -> str:
        pool = await db.connect_pool(fresh_db_dsn, max_size=1)
        try:
            return (await db.create_key(pool, await db.create_org(pool, "acme"), "t")).key
        finally:
            await pool.close()

    gw = free_port()
    with socket.socket() as provider:  # accepts the gateway's request and never answers
        provider.bind(("127.0.0.1", 0))
        provider.listen()
        provider.settimeout(30)
        proc, log_path = _start_up(tmp_path, "--postgres-dsn", fresh_db_dsn, "--kafka", f"127.0.0.1:{free_port()}",
                                   "--gateway-port", str(gw), "--openai-url", f"http://127.0.0.1:{provider.getsockname()[1]}")
        try:
            _wait_for_output(proc, log_path, b"\nREADY")
            key = asyncio.run(new_key())
            answers: list = []

            def ask() -> None:
                try:
                    answers.append(httpx.post(f"http://127.0.0.1:{gw}/v1/chat/completions", timeout=60,
                                              headers={"Authorization": "Bearer sk-any", "Helicone-Auth": f"Bearer {key}"},
                                              json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                except httpx.HTTPError as exc:
                    answers.append(exc)

            caller = threading.Thread(target=ask, daemon=True)
            caller.start()
            conn, _ = provider.accept()  # the gateway is waiting for the provider: an answer in progress
            with conn:
                proc.send_signal(signal.SIGINT)
                _wait_for_output(proc, log_path, b"stopping...")
                proc.send_signal(signal.SIGINT)
                try:
                    code = proc.wait(30)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"a second SIGINT did not stop it: {log_path.read_text()[-2000:]}") from None
            caller.join(10)
        finally:
            terminate(proc, grace=5)
    out = log_path.read_text()
    assert code == 0, out
    assert "stopping at once (second signal)" in out and not (tmp_path / "data" / "runner.pid").exists()
    assert answers and not isinstance(answers[0], httpx.Response), answers  # its connection was cut


def test_keys_with_a_postgres_dsn_whose_password_is_not_percent_encoded_exit_2_showing_none_of_it(capsys):
    """The DSN of --postgres-dsn went to asyncpg unchecked: with an unencoded '@' in the password the rest of it was
    taken for the host and port, and `error: invalid literal for int() with base 10: 'Pw99@127.0.0.1'` printed it."""
    from helicone_runner.cli import main

    code = main(["keys", "list", "--postgres-dsn", "postgresql://u:S3c@ret:Pw99@127.0.0.1/db"])
    captured = capsys.readouterr()
    assert code == 2
    assert "HELICONE_POSTGRES_DSN" in captured.err and "%40" in captured.err, captured.err
    assert not any(piece in captured.out + captured.err for piece in ("S3c", "ret", "Pw99"))
