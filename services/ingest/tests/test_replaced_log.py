"""A memory-only broker restarts and the gateway's journal refills the new, empty log past the
position ingest had reached in the old one: ingest notices the log was replaced, rewinds, and
writes every event of the new log (none skipped)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

from aiokafka import AIOKafkaProducer
from helicone_core import events
from helicone_core.kafka import ensure_topics
from helicone_ingest.app import IngestService
from helicone_ingest.settings import IngestSettings
from helicone_runner.embedded import EmbeddedKafka

from tests.support.net import free_port

ORG = str(uuid.uuid4())


def make_events(n: int) -> list[events.RequestLogged]:
    out = []
    for _ in range(n):
        ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=ORG, status=200)
        events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
        out.append(ev)
    return out


async def produce(bootstrap: str, topic: str, evs: list[events.RequestLogged]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for ev in evs:
            await producer.send_and_wait(topic, events.encode(ev), key=events.message_key(ev))
    finally:
        await producer.stop()


async def logged_ids(svc: IngestService) -> set[str]:
    rows = await svc.analytics.query(
        "SELECT request_id FROM {db}.request_log FINAL WHERE org_id = {org:String}", {"org": ORG}
    )
    return {r["request_id"] for r in rows}


async def until_logged(svc: IngestService, want: set[str], timeout: float = 60.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = await logged_ids(svc)
        if want <= got or time.monotonic() > deadline:
            return got
        await asyncio.sleep(0.2)


async def test_a_replaced_log_longer_than_the_old_position_is_read_from_its_start(tmp_path):
    broker = EmbeddedKafka("127.0.0.1", free_port(), tmp_path / "kafka.log")
    bootstrap = broker.start()
    topic = "replaced-" + uuid.uuid4().hex[:8]
    svc = IngestService(IngestSettings(
        data_dir=tmp_path, body_store="local", analytics_backend="chdb", postgres_dsn="postgresql://u@127.0.0.1:1/x",
        kafka_bootstrap=bootstrap, kafka_topic=topic, kafka_dlq_topic=topic + ".dlq", consumer_group=f"ingest-{topic}",
        batch_size=50, batch_within=0.2, broker_rebalance_timeout=2.0, broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0, offset_guard_interval=0.3, postgres_timeout=0.5, _env_file=None,
    ))
    await svc.start()
    try:
        old = make_events(40)
        await produce(bootstrap, topic, old)
        assert {e.request_id for e in old} <= await until_logged(svc, {e.request_id for e in old})
        await asyncio.sleep(1.0)  # the guard has marked the log

        broker.proc.kill()
        broker.proc.wait(5)
        broker.start()  # same port, empty
        await ensure_topics(bootstrap, [topic], 1, 1)  # as the runner's supervisor does after a restart
        new = make_events(100)  # more than ingest's old position: no "past the end" to notice
        await produce(bootstrap, topic, new)

        want = {e.request_id for e in new}
        missing = want - await until_logged(svc, want)
        assert not missing, f"{len(missing)} of {len(want)} events of the new log were skipped"
        assert svc.metrics.registry.get_sample_value("helicone_ingest_offset_rewinds_total") >= 1
    finally:
        await svc.stop()
        broker.stop()
