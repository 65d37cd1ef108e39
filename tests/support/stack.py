"""Launches the real stack as a user would (`helicone-stack up`), for e2e tests and benchmarks.

Processes: the fake OpenAI/Anthropic upstream, optionally a moto S3 endpoint, a Tansu broker
(started here, not by the runner, so callers can stop and restart it; with `embedded_broker`
the runner starts and supervises its own), and the runner with everything else embedded
(PostgreSQL, chDB).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from helicone_core.providers import PROVIDER_TABLE
from helicone_runner.embedded import BROKER_PID_FILE, EmbeddedKafka, terminate

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 120


@dataclass
class Stack:
    gateway: str
    api: str
    ingest_ops: str
    prompts_ops: str
    prompts_grpc: str
    upstream: str
    s3: str | None
    kafka: EmbeddedKafka | None  # None when the runner runs its own broker (embedded_broker=True)
    kafka_bootstrap: str
    key: str
    org_id: str
    log_path: Path
    data_dir: Path
    startup_seconds: float
    region: str = ""  # HELICONE_REGION of every service
    env: dict | None = None  # the runner's environment, for more processes of the same stack
    _launch: object = None  # restarts the runner process with the same command
    _runner: object = None  # () -> the current runner process
    _prompts: object = None  # (start, stop) of the prompts process, with prompts_apart

    def stop_prompts(self) -> None:
        """SIGTERM the prompts service (prompts_apart=True): the rest of the stack runs on."""
        self._prompts[1]()

    def start_prompts(self) -> float:
        """Starts the prompts service again (prompts_apart=True); returns seconds to READY."""
        return self._prompts[0]()

    def restart_runner(self, env: dict[str, str] | None = None) -> float:
        """Stops `helicone-stack up` and starts it again on the same data dir (with `env`: these
        variables set from now on); returns seconds to READY."""
        return self._launch(env)

    def kill_runner(self) -> None:
        """SIGKILL `helicone-stack up`: no graceful stop, nothing flushed."""
        proc = self._runner()
        proc.kill()
        proc.wait(10)

    def stop_runner(self) -> None:
        """SIGTERM `helicone-stack up` and wait for its graceful stop."""
        _stop(self._runner())

    def runner_pid(self) -> int:
        return self._runner().pid

    def broker_pid(self) -> int | None:
        """The runner's own broker (embedded_broker=True), from the pid file it keeps."""
        try:
            return json.loads((self.data_dir / BROKER_PID_FILE).read_text())["pid"]
        except (OSError, ValueError):
            return None

    def api_client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.key}"}, timeout=10)

    def wait_for_request(self, request_id: str, timeout: float = 45.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.api_client() as api:
            while time.monotonic() < deadline:
                r = api.get(f"/v1/request/{request_id}")
                if r.status_code == 200:
                    return r.json()
                assert r.status_code == 404, r.text
                time.sleep(0.25)
        raise AssertionError(f"request {request_id} did not reach the api within {timeout}s")


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    terminate(proc, grace=20)


def _stop_stand_in(proc: subprocess.Popen) -> None:
    """The fake upstream and moto hold nothing worth a graceful stop; uvicorn's would wait for every
    request in flight, e.g. a "hang" model's, which never ends (SIGKILL after `grace`: 20 s per test)."""
    terminate(proc, grace=2)


def _create_key(dsn: str) -> dict:
    import asyncio

    from helicone_core import db

    async def create() -> dict:
        pool = await db.connect_pool(dsn, max_size=1)
        try:
            await db.migrate(pool)
            created = await db.create_key(pool, await db.create_org(pool, "faults"), "faults")
            return {"org_id": created.org_id, "key": created.key}
        finally:
            await pool.close()

    return asyncio.run(create())


def _start_until_ready(cmd: list[str], cwd: Path, env: dict, log: Path, slot: list, what: str) -> float:
    """Starts `helicone-stack up` (its output appended to `log`, the process put in `slot`) and waits
    for the READY line it prints; returns the seconds that took."""
    started = time.monotonic()
    offset = log.stat().st_size if log.exists() else 0
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    slot.append(proc)
    while b"\nREADY" not in log.read_bytes()[offset:]:
        if proc.poll() is not None or time.monotonic() - started > STARTUP_TIMEOUT:
            raise RuntimeError(f"{what} did not start:\n" + log.read_text()[-5000:])
        time.sleep(0.1)
    return time.monotonic() - started


@contextlib.contextmanager
def running_stack(tmp: Path, *, s3: bool = True, extra_env: dict[str, str] | None = None,
                  postgres_dsn: str | None = None, embedded_broker: bool = False, region: str = "",
                  prompts_apart: bool = False, upstream_url: str | None = None) -> Iterator[Stack]:
    """The whole stack; with `postgres_dsn`, on that Postgres (e.g. behind a fault proxy) instead of
    the runner's embedded one, with a key created here; with `embedded_broker`, on the broker the
    runner starts and supervises itself; with `region`, every service's HELICONE_REGION; with
    `prompts_apart` (needs `postgres_dsn`), the prompts service in a process of its own
    (`helicone-stack up --target prompts`) that tests can stop and start; with `upstream_url`, every
    provider at that running server instead of a fake upstream started here."""
    if prompts_apart and not postgres_dsn:
        raise ValueError("prompts_apart needs postgres_dsn: the prompts process shares the stack's Postgres")
    ports = {name: free_port() for name in ("gateway", "api", "ingest", "prompts", "grpc", "kafka", "upstream", "s3")}
    procs: list[subprocess.Popen] = []
    runner_slot: list[subprocess.Popen] = []
    prompts_slot: list[subprocess.Popen] = []  # with prompts_apart
    kafka = EmbeddedKafka("127.0.0.1", ports["kafka"], tmp / "kafka.log")
    own_upstream = upstream_url is None
    upstream_url = upstream_url or f"http://127.0.0.1:{ports['upstream']}"
    s3_url = f"http://127.0.0.1:{ports['s3']}" if s3 else None
    try:
        if own_upstream:
            upstream = subprocess.Popen(
                [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(ports["upstream"])],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "upstream.log", "wb"),
            )
            procs.append(upstream)
        if s3:
            moto = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])],
                stdout=subprocess.DEVNULL, stderr=open(tmp / "s3.log", "wb"),
            )
            procs.append(moto)
            _wait_http(s3_url + "/", 30, moto)
        if not embedded_broker:
            kafka.start()
        if own_upstream:
            _wait_http(upstream_url + "/_received", 30, upstream)

        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local-secret", AWS_DEFAULT_REGION="us-east-1",
            HELICONE_BROKER_REBALANCE_TIMEOUT="2", HELICONE_BROKER_SESSION_TIMEOUT="6",
            HELICONE_BROKER_HEARTBEAT_INTERVAL="1", HELICONE_JOURNAL_CHECK_INTERVAL="0.5",
            HELICONE_KAFKA_IDEMPOTENT_PRODUCER="false",  # the test broker is Tansu, which lacks InitProducerId
            HELICONE_BATCH_WITHIN="0.2", HELICONE_OFFSET_GUARD_INTERVAL="1", HELICONE_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1",
        )
        if region:
            env["HELICONE_REGION"] = region
        # every provider of the table goes to the fake upstream too: a test never reaches a real provider
        env["HELICONE_PROVIDER_URLS"] = json.dumps(
            {name: upstream_url for name in PROVIDER_TABLE if name not in ("openai", "anthropic")})
        env.update(extra_env or {})
        log_path = tmp / "stack.log"
        data_dir = tmp / "data"
        broker_args = ["--kafka-port", str(ports["kafka"])] if embedded_broker else ["--kafka", kafka.bootstrap]
        cmd = [sys.executable, "-m", "helicone_runner", "up", "--data-dir", str(data_dir), *broker_args,
               "--openai-url", upstream_url, "--anthropic-url", upstream_url,
               "--gateway-port", str(ports["gateway"]), "--api-port", str(ports["api"]), "--ingest-port", str(ports["ingest"]),
               "--prompts-port", str(ports["prompts"]), "--prompts-grpc-port", str(ports["grpc"])]
        if s3:
            cmd += ["--bodies", "s3", "--s3-endpoint", s3_url, "--s3-bucket", "stack-bodies"]
        if postgres_dsn:
            cmd += ["--postgres-dsn", postgres_dsn]
            data_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / "bootstrap-key.json").write_text(json.dumps(_create_key(postgres_dsn)))
        prompts_control = None
        if prompts_apart:
            cmd += ["--target", "gateway,ingest,api"]
            env["HELICONE_PROMPTS_TARGET"] = f"127.0.0.1:{ports['grpc']}"  # read by the gateway and the api
            prompts_log = tmp / "prompts.log"
            prompts_cmd = [sys.executable, "-m", "helicone_runner", "up", "--target", "prompts",
                           "--data-dir", str(tmp / "prompts-data"), "--postgres-dsn", postgres_dsn, "--kafka", kafka.bootstrap,
                           "--prompts-port", str(ports["prompts"]), "--prompts-grpc-port", str(ports["grpc"])]

            def start_prompts() -> float:
                return _start_until_ready(prompts_cmd, tmp, env, prompts_log, prompts_slot, "prompts")

            def stop_prompts() -> None:
                while prompts_slot:
                    _stop(prompts_slot.pop())

            start_prompts()
            prompts_control = (start_prompts, stop_prompts)

        def launch(more_env: dict[str, str] | None = None) -> float:
            env.update(more_env or {})
            if runner_slot:
                _stop(runner_slot.pop())
            return _start_until_ready(cmd, tmp, env, log_path, runner_slot, "stack")

        startup = launch()
        boot = json.loads((data_dir / "bootstrap-key.json").read_text())
        yield Stack(
            gateway=f"http://127.0.0.1:{ports['gateway']}", api=f"http://127.0.0.1:{ports['api']}",
            ingest_ops=f"http://127.0.0.1:{ports['ingest']}", prompts_ops=f"http://127.0.0.1:{ports['prompts']}",
            prompts_grpc=f"127.0.0.1:{ports['grpc']}", upstream=upstream_url, s3=s3_url,
            kafka=None if embedded_broker else kafka, kafka_bootstrap=kafka.bootstrap,
            key=boot["key"], org_id=boot["org_id"], log_path=log_path, data_dir=data_dir, startup_seconds=startup, region=region, env=env,
            _launch=launch, _runner=lambda: runner_slot[-1], _prompts=prompts_control,
        )
    finally:
        for proc in reversed(runner_slot + prompts_slot):
            _stop(proc)
        for proc in reversed(procs):  # the stand-ins, once the stack that called them is down
            _stop_stand_in(proc)
        kafka.stop()
