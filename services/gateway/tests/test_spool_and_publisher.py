import asyncio
import datetime as dt
import uuid

from helicone_core import events
from helicone_core.metrics import ServiceMetrics
from helicone_gateway.publisher import EventPublisher
from helicone_gateway.spool import Spool


def test_spool_is_bounded_ordered_and_survives_reopen(tmp_path):
    spool = Spool(tmp_path, max_bytes=25)
    assert spool.write(b"a" * 10) and spool.write(b"b" * 10)
    assert not spool.write(b"c" * 10)  # would exceed 25 bytes
    assert spool.count == 2 and spool.size_bytes == 20
    reopened = Spool(tmp_path, max_bytes=25)
    assert reopened.count == 2 and reopened.size_bytes == 20
    files = reopened.oldest(10)
    assert [f.read_bytes()[:1] for f in files] == [b"a", b"b"]
    reopened.remove(files[0])
    assert reopened.count == 1 and reopened.size_bytes == 10


def _event() -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id="o")
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    return ev


async def test_events_go_to_the_spool_when_kafka_is_unreachable(tmp_path):
    metrics = ServiceMetrics("gateway")
    spool = Spool(tmp_path, max_bytes=1 << 20)
    pub = EventPublisher(bootstrap="127.0.0.1:1", topic="t", spool=spool, metrics=metrics, publish_timeout=0.5)
    await pub.start()
    try:
        sent = [_event() for _ in range(3)]
        for ev in sent:
            pub.submit(lambda ev=ev: ev)
        for _ in range(100):
            if spool.count == 3:
                break
            await asyncio.sleep(0.02)
        assert spool.count == 3
        stored = {events.decode(p.read_bytes()).request_id for p in spool.oldest(10)}
        assert stored == {ev.request_id for ev in sent}
    finally:
        await pub.stop()


async def test_a_failing_event_builder_does_not_stop_the_worker(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    pub = EventPublisher(bootstrap="127.0.0.1:1", topic="t", spool=spool, metrics=ServiceMetrics("gateway"))
    await pub.start()
    try:
        pub.submit(lambda: 1 / 0)
        pub.submit(_event)
        for _ in range(100):
            if spool.count == 1:
                break
            await asyncio.sleep(0.02)
        assert spool.count == 1
    finally:
        await pub.stop()


async def test_stop_spools_whatever_is_still_queued(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    pub = EventPublisher(bootstrap="127.0.0.1:1", topic="t", spool=spool, metrics=ServiceMetrics("gateway"))
    # not started: nothing consumes the queue until stop()
    for _ in range(5):
        pub.submit(_event)
    await pub.stop(drain_timeout=0.1)
    assert spool.count == 5


async def test_events_are_keyed_by_org_and_request_id_live_and_replayed(tmp_path, kafka_bootstrap):
    """One identity, one partition: the message key is "<org>/<request id>" on both paths."""
    from aiokafka import AIOKafkaConsumer

    topic = "keys-" + uuid.uuid4().hex[:8]
    spool = Spool(tmp_path, max_bytes=1 << 20)
    spooled, live = _event(), _event()
    spool.write(events.encode(spooled))  # left from an outage: goes out through the replay path
    metrics = ServiceMetrics("gateway")
    pub = EventPublisher(bootstrap=kafka_bootstrap, topic=topic, spool=spool, metrics=metrics, replay_interval=0.1)
    await pub.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None)
    try:
        for _ in range(200):
            if pub.connected and spool.count == 0:
                break
            await asyncio.sleep(0.05)
        pub.submit(lambda: live)
        await consumer.start()
        keys: dict[bytes, str] = {}
        for _ in range(40):
            for records in (await consumer.getmany(timeout_ms=250)).values():
                keys.update((r.key, events.decode(r.value).request_id) for r in records)
            if len(keys) == 2:
                break
        assert keys == {f"o/{spooled.request_id}".encode(): spooled.request_id, f"o/{live.request_id}".encode(): live.request_id}
        assert metrics.registry.get_sample_value("helicone_gateway_events_published_total", {"path": "replay"}) == 1
        assert metrics.registry.get_sample_value("helicone_gateway_events_published_total", {"path": "direct"}) == 1
    finally:
        await consumer.stop()
        await pub.stop()


def test_spool_files_are_owner_only_whatever_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0)
    try:
        spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
        assert spool.write(b"event with a request body")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    [path] = spool.oldest(1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_hold_stops_publishing_until_release_and_returns_with_nothing_in_flight(tmp_path, kafka_bootstrap):
    from aiokafka import AIOKafkaConsumer

    topic = "hold-" + uuid.uuid4().hex[:8]
    pub = EventPublisher(bootstrap=kafka_bootstrap, topic=topic, spool=Spool(tmp_path, 1 << 20),
                         metrics=ServiceMetrics("gateway"), replay_interval=0.1)
    await pub.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    try:
        for _ in range(200):
            if pub.connected:
                break
            await asyncio.sleep(0.05)
        await consumer.start()
        before = [_event() for _ in range(50)]
        for ev in before:
            pub.submit(lambda ev=ev: ev)
        await pub.hold()
        # hold() returned: what was handed to the producer is acknowledged, the rest waits queued
        published = pub.m_published.labels("direct")._value.get()
        assert published + pub._queue.qsize() >= 49 and pub.spool.count == 0
        assert pub._inflight._value == pub._max_in_flight  # no send awaiting its acknowledgement
        during = [_event() for _ in range(20)]
        for ev in during:
            pub.submit(lambda ev=ev: ev)
        await asyncio.sleep(0.5)
        assert pub.m_published.labels("direct")._value.get() == published  # nothing handed over while held
        assert pub._queue.qsize() >= 69 - published  # the worker may hold one at the gate
        pub.release()
        got: set[str] = set()
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200)
            got |= {events.decode(m.value).request_id for msgs in batch.values() for m in msgs}
            if len(got) == 70:
                break
        assert got == {ev.request_id for ev in before + during}
    finally:
        await consumer.stop()
        await pub.stop()
