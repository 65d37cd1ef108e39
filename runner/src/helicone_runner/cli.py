"""helicone-stack: run services (embedded infrastructure by default) and manage keys.

  helicone-stack up [--target gateway,api|all] [--data-dir DIR] ...
  helicone-stack keys create [--org-name NAME] [--name NAME] [--data-dir DIR]
  helicone-stack keys list [--org-id ORG]
  helicone-stack keys revoke KEY_ID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from helicone_core.filemodes import write_private
from helicone_core.logging import configure_logging
from helicone_core.migrate import MigrateSettings, apply_migrations

from .embedded import BROKER_PID_FILE, DataDirLock, EmbeddedKafka, EmbeddedPostgres, secure_data_dir
from .settings import EmbeddedBrokerSettings
from .stack import SERVICES, Running, start_services, stop_services
from .supervision import BrokerSupervisor

log = logging.getLogger("helicone.runner")
BOOTSTRAP_FILE = "bootstrap-key.json"


def parse_targets(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--target needs at least one service")
    if "all" in names:
        return list(SERVICES)
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown service(s) {', '.join(unknown)}; choose from {', '.join(SERVICES)} or all")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helicone-stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")

    def common(sp):
        sp.add_argument("--data-dir", type=Path, default=Path(os.environ.get("HELICONE_DATA_DIR", "./.helicone-data")),
                        help="where Postgres, chDB, bodies and the event journal live (default ./.helicone-data)")
        sp.add_argument("--postgres-dsn", default=os.environ.get("HELICONE_POSTGRES_DSN"),
                        help="use this Postgres instead of the embedded one")

    up = sub.add_parser("up", help="start services")
    common(up)
    up.add_argument("--target", type=parse_targets, default=list(SERVICES), help="gateway|ingest|api|prompts|all, comma list allowed")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--gateway-port", type=int, default=8787)
    up.add_argument("--api-port", type=int, default=8585)
    up.add_argument("--ingest-port", type=int, default=8788)
    up.add_argument("--prompts-port", type=int, default=8789)
    up.add_argument("--prompts-grpc-port", type=int, default=50051)
    up.add_argument("--kafka", default=os.environ.get("HELICONE_KAFKA_BOOTSTRAP"),
                    help="bootstrap servers of an existing broker; default: start the embedded one")
    up.add_argument("--kafka-port", type=int, default=19092, help="port of the embedded broker")
    up.add_argument("--analytics", choices=["chdb", "clickhouse"], default=os.environ.get("HELICONE_ANALYTICS_BACKEND", "chdb"))
    up.add_argument("--clickhouse-url", default=os.environ.get("HELICONE_CLICKHOUSE_URL", "http://localhost:8123"))
    up.add_argument("--bodies", choices=["local", "s3"], default=os.environ.get("HELICONE_BODY_STORE", "local"))
    up.add_argument("--s3-endpoint", default=os.environ.get("HELICONE_S3_ENDPOINT"))
    up.add_argument("--s3-bucket", default=os.environ.get("HELICONE_S3_BUCKET", "helicone-bodies"))
    up.add_argument("--openai-url", default=os.environ.get("HELICONE_OPENAI_URL", "https://api.openai.com"))
    up.add_argument("--anthropic-url", default=os.environ.get("HELICONE_ANTHROPIC_URL", "https://api.anthropic.com"))
    up.add_argument("--log-level", default=os.environ.get("HELICONE_LOG_LEVEL", "INFO"))

    keys = sub.add_parser("keys", help="manage Helicone API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create an org and a key (prints the key once)")
    common(kc)
    kc.add_argument("--org-name", default="default")
    kc.add_argument("--org-id", help="add the key to this existing org instead of creating one")
    kc.add_argument("--name", default="cli")
    kl = ksub.add_parser("list", help="list keys (id, org, name, preview, created, revoked); never the keys themselves")
    common(kl)
    kl.add_argument("--org-id", help="only this org's keys")
    kr = ksub.add_parser("revoke", help="revoke a key: every gateway and api refuses it within about a second")
    common(kr)
    kr.add_argument("key_id", help="the key's id from `keys list` (or the key itself)")
    return p


async def _bootstrap_key(dsn: str, data_dir: Path) -> dict:
    """The first key of a fresh installation, kept (mode 600) so `up` can show it again (on a
    migrated database: run_up migrates first)."""
    from helicone_core import db

    path = data_dir / BOOTSTRAP_FILE
    pool = await db.connect_pool(dsn, max_size=2)
    try:
        if path.exists():
            saved = json.loads(path.read_text())
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
        # one local broker, one member: no reason to wait long for others to join
        ingest_extra = dict(broker_rebalance_timeout=2.0, broker_session_timeout=10.0, broker_heartbeat_interval=1.0)
    if "prompts" in args.target:  # the gateway renders stored prompts from this process's prompts service
        local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
        gateway_extra["prompts_target"] = api_extra["prompts_target"] = f"{local}:{args.prompts_grpc_port}"
    return {
        "gateway": GatewaySettings(**common, port=args.gateway_port, openai_url=args.openai_url, anthropic_url=args.anthropic_url, **gateway_extra),
        "api": ApiSettings(**common, port=args.api_port, **api_extra),
        "ingest": IngestSettings(**common, port=args.ingest_port, **ingest_extra),
        "prompts": PromptsSettings(**common, port=args.prompts_port, grpc_port=args.prompts_grpc_port),
        "migrate": MigrateSettings(**common),
    }


def _broker_supervisor(kafka: EmbeddedKafka, settings: dict, running: list[Running]) -> BrokerSupervisor:
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
        producers=[gateway.publisher] if gateway else [], consumers=[ingest] if ingest else [], recycle=recycle,
    )


async def run_up(args) -> int:
    t0 = time.monotonic()
    args.data_dir = args.data_dir.resolve()
    secure_data_dir(args.data_dir, postgres=not args.postgres_dsn)
    lock = DataDirLock(args.data_dir)
    lock.acquire()  # before anything else: what the data dir's pid files name is now a leftover
    pg = kafka = supervisor = None
    running = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        dsn = args.postgres_dsn
        if not dsn:
            pg = EmbeddedPostgres(args.data_dir)
            dsn = await asyncio.to_thread(pg.start)
        bootstrap = args.kafka
        if not bootstrap:
            kafka = EmbeddedKafka(args.host, args.kafka_port, args.data_dir / "logs" / "kafka.log", args.data_dir / BROKER_PID_FILE)
            bootstrap = await kafka.start_async()  # spawned from this thread, the main one: see embedded.py
        settings = _settings(args, dsn, bootstrap)
        # what the chart's hook Job runs (python -m helicone_core.migrate), before any service starts
        await apply_migrations(settings["migrate"])
        # A first key for a fresh embedded installation; with an external Postgres, keys are
        # created deliberately (`helicone-stack keys create --postgres-dsn ...`).
        key = await _bootstrap_key(dsn, args.data_dir) if pg else None
        running = await start_services(args.target, settings)
        if kafka:
            supervisor = _broker_supervisor(kafka, settings, running)
            supervisor.start()
        lines = [f"helicone stack ready in {time.monotonic() - t0:.1f}s (data: {args.data_dir})"]
        for r in running:
            lines.append(f"  {r.name:8s} " + "  ".join(f"{k}={v}" for k, v in r.urls.items()))
        lines.append(f"  kafka    {bootstrap}{' (embedded, in memory)' if kafka else ''}")
        lines.append(f"  postgres {'embedded, ' + str(args.data_dir / 'postgres') if pg else 'external'}")
        if key:
            lines.append(f"  Helicone API key: {key['key']}   (org {key['org_id']}; also in {args.data_dir / BOOTSTRAP_FILE})")
        print("\n".join(lines), flush=True)
        print("READY", flush=True)
        await stop.wait()
        print("stopping...", flush=True)
        return 0
    finally:
        # Stop order: supervision first (a broker being stopped is not a crash), then the gateway
        # (what it still holds reaches the broker), then a drain (ingest writes everything the
        # memory-only broker holds), then the other services, the broker, Postgres, the lock.
        if supervisor:
            await supervisor.stop()
        gateway = [r for r in running if r.name == "gateway"]
        await stop_services(gateway)
        if supervisor and any(r.name == "ingest" for r in running):
            await supervisor.drain(supervisor.settings.drain_timeout)
        await stop_services([r for r in running if r.name != "gateway"])
        if kafka:
            kafka.stop()
        if pg:
            pg.stop()
        lock.release()


async def run_keys(args) -> int:
    """keys create|list|revoke against --postgres-dsn, or the embedded Postgres of --data-dir."""
    from helicone_core import db

    dsn = args.postgres_dsn
    if not dsn:
        dsn = EmbeddedPostgres(args.data_dir.resolve()).start()
    pool = await db.connect_pool(dsn, max_size=2)
    try:
        await db.migrate(pool)
        if args.keys_command == "create":
            org = args.org_id or await db.create_org(pool, args.org_name)
            created = await db.create_key(pool, org, args.name)
            print(json.dumps({"org_id": created.org_id, "key": created.key, "id": created.id}))
        elif args.keys_command == "list":
            for key in await db.list_keys(pool, args.org_id):
                print(json.dumps(key.to_json()))
        else:
            revoked = await db.revoke_key(pool, args.key_id)
            if revoked is None:
                print(f"error: no key with id {args.key_id!r} (see `helicone-stack keys list`)", file=sys.stderr)
                return 1
            print(json.dumps(revoked.to_json()))
    finally:
        await pool.close()
    return 0


def _run(coro) -> int:
    """uvloop when available (it is with uvicorn[standard]), else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["up", *(argv if argv is not None else sys.argv[1:])])
    configure_logging("runner", getattr(args, "log_level", "INFO"))
    try:
        if args.command == "up":
            return _run(run_up(args))
        return asyncio.run(run_keys(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a clear message for the operator
        log.error("%s: %s", exc.__class__.__name__, exc, exc_info=logging.getLogger().isEnabledFor(logging.DEBUG))
        print(f"error: {exc}", file=sys.stderr)
        return 1
