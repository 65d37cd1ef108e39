"""Ingest on a real broker while Postgres is out of reach (a fault proxy in front of a real
Postgres): it starts, writes rows and bodies and acknowledges its batches, reports Postgres as
not ready, writes the metadata once Postgres answers again, and a graceful stop loses no row."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import asyncpg
from aiokafka import AIOKafkaProducer
from helicone_core import events
from helicone_ingest.app import IngestService
from helicone_ingest.settings import IngestSettings

from tests.support.fault_proxy import postgres_proxy

ORG = str(uuid.uuid4())


def settings(tmp_path, dsn: str, bootstrap: str, topic: str) -> IngestSettings:
    return IngestSettings(
        data_dir=tmp_path, body_store="local", analytics_backend="chdb", postgres_dsn=dsn, kafka_bootstrap=bootstrap,
        kafka_topic=topic, kafka_dlq_topic=topic + ".dlq", consumer_group=f"ingest-{topic}", batch_size=50,
        batch_within=0.2, broker_rebalance_timeout=2.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
        postgres_timeout=0.5, metadata_retry_max_backoff=0.2, metadata_stop_timeout=0.5, _env_file=None,
    )


def make_events(n: int) -> list[events.RequestLogged]:
    out = []
    for i in range(n):
        ev = events.RequestLogged(
            schema_version=1, request_id=events.new_request_id(), org_id=ORG, status=200, provider="openai",
            model="gpt-4o-mini", user_id=f"user-{i}", session_id="outage", properties={"run": "outage"},
            inline=events.InlineBodies(request_body=b'{"n":%d}' % i, response_body=b'{"ok":%d}' % i,
                                       request_content_type="application/json", response_content_type="application/json"),
        )
        events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
        out.append(ev)
    return out


async def produce(bootstrap: str, topic: str, evs: list[events.RequestLogged], pause: float = 0.0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for ev in evs:
            await producer.send_and_wait(topic, events.encode(ev), key=events.message_key(ev))
            if pause:
                await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def row_count(svc: IngestService) -> int:
    rows = await svc.analytics.query(
        "SELECT count() AS n FROM {db}.request_log FINAL WHERE org_id = {org:String} "
        "SETTINGS output_format_json_quote_64bit_integers = 0", {"org": ORG})
    return rows[0]["n"]


async def stored_body(svc: IngestService, ev: events.RequestLogged, which: str) -> bytes | None:
    """The `which` ("request" or "response") body of an event, read as the api reads it: through its row."""
    rows = await svc.analytics.query(
        f"SELECT {which}_body_key AS ref FROM {{db}}.request_log FINAL WHERE org_id = {{org:String}} AND request_id = {{rid:UUID}}",
        {"org": ORG, "rid": ev.request_id})
    return await svc.bodies.get(rows[0]["ref"])


async def eventually(check, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{check.__name__} still false after {timeout}s"
        await asyncio.sleep(0.2)


async def users_in_postgres(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass('request_users')") is None:
            return 0  # ingest has not migrated yet
        return await conn.fetchval("SELECT count(*) FROM request_users")
    finally:
        await conn.close()


async def test_ingest_starts_and_writes_while_postgres_is_down_then_catches_up(tmp_path, fresh_db_dsn, kafka_bootstrap):
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    proxy.cut()
    topic = "outage-" + uuid.uuid4().hex[:8]
    svc = IngestService(settings(tmp_path, dsn, kafka_bootstrap, topic))
    try:
        await asyncio.wait_for(svc.start(), 60)
        assert (await svc.ready())["postgres"].ok is False
        evs = make_events(40)
        await produce(kafka_bootstrap, topic, evs)

        async def all_rows_written():
            return await row_count(svc) == 40
        await eventually(all_rows_written)
        ev = evs[17]
        assert await stored_body(svc, ev, "response") == b'{"ok":17}'
        registry = svc.metrics.registry
        assert registry.get_sample_value("helicone_ingest_metadata_pending_keys") == 40 + 1 + 1  # users, session, key
        assert await users_in_postgres(fresh_db_dsn) == 0

        proxy.restore()

        async def metadata_written():
            return await users_in_postgres(fresh_db_dsn) == 40
        await eventually(metadata_written)
        assert (await svc.ready())["postgres"].ok is True
        assert registry.get_sample_value("helicone_ingest_metadata_pending_keys") == 0

        proxy.cut()  # connected, then gone again: readiness pings the server, it does not trust the pool
        started = time.monotonic()
        assert (await svc.ready())["postgres"].ok is False
        assert time.monotonic() - started < 2
    finally:
        await svc.stop()
        await proxy.stop()


async def test_a_graceful_stop_with_postgres_down_loses_no_row(tmp_path, fresh_db_dsn, kafka_bootstrap):
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    proxy.cut()
    topic = "outage-stop-" + uuid.uuid4().hex[:8]
    evs = make_events(200)
    first = IngestService(settings(tmp_path, dsn, kafka_bootstrap, topic))
    second = None
    try:
        await asyncio.wait_for(first.start(), 60)
        sending = asyncio.create_task(produce(kafka_bootstrap, topic, evs, pause=0.01))

        async def some_rows_written():
            return await row_count(first) >= 20
        await eventually(some_rows_written)
        started = time.monotonic()
        await first.stop()  # mid-stream, Postgres still unreachable
        stop_seconds = time.monotonic() - started
        await sending

        second = IngestService(settings(tmp_path, dsn, kafka_bootstrap, topic))
        await asyncio.wait_for(second.start(), 60)

        async def all_rows_written():
            return await row_count(second) == 200
        await eventually(all_rows_written)
        for ev in (evs[0], evs[-1]):
            assert await stored_body(second, ev, "request") == ev.inline.request_body
        assert stop_seconds < 15, stop_seconds
        dropped = first.metrics.registry.get_sample_value("helicone_ingest_metadata_dropped_keys_total", {"reason": "stopped"})
        assert dropped and dropped > 0  # what the first worker could not write is counted, not silently lost
    finally:
        if second is not None:
            await second.stop()
        await proxy.stop()


async def test_a_stop_ends_the_postgres_reconnect_loop_even_when_it_meets_a_refusal(tmp_path, monkeypatch):
    """Postgres refusing, and stop() cancelling the reconnect loop in the loop iteration in which an
    attempt is refused: Python 3.11's asyncio.wait_for (around the connect, and inside asyncpg) raised
    the refusal instead of the cancellation, the loop caught it and tried again, and stop() waited for
    ever (an ingest test hung ten minutes on it). Now stop() ends."""
    from helicone_core import db

    attempts, refusal = 0, asyncio.Event()

    async def refused(*_args, **_kwargs):
        nonlocal attempts
        attempts += 1
        await refusal.wait()
        raise OSError("connection refused")

    monkeypatch.setattr(db, "connect_pool", refused)
    svc = IngestService(settings(tmp_path, "postgresql://nobody@127.0.0.1:9/none", "127.0.0.1:9", "outage")
                        .model_copy(update={"postgres_timeout": 30.0}))
    svc._postgres_task = asyncio.create_task(svc._connect_postgres(), name="ingest-postgres")
    await asyncio.sleep(0.1)  # in its first attempt
    refusal.set()  # refused in the next loop iteration ...
    stopping = asyncio.create_task(svc.stop())  # ... in which stop() cancels the loop
    done, _ = await asyncio.wait({stopping}, timeout=10)
    assert done, "stop() did not end"
    await stopping
    assert svc._postgres_task.cancelled() and attempts <= 2
