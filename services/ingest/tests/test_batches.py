"""Ingest's Faust consumer that hands over a fetch at a time (batches.py): offsets are committed
only once their batch is written, a failed write holds them until it succeeds, batches of an
earlier generation or of a log that was reset are never acknowledged, and gaps in the offsets
do not stop the commits."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import IllegalStateError
from faust.types import TP
from helicone_core import events
from helicone_core.kafka import ensure_topics
from helicone_ingest.app import IngestService
from helicone_ingest.batches import Batch, BatchApp, InFlight, Turns
from helicone_ingest.settings import IngestSettings

from .test_postgres_outage import eventually, make_events, produce, row_count, settings


def consumer_of(app: BatchApp, topic: str):
    app.topics.add(app.topic(topic, value_type=bytes, value_serializer="raw"))
    app.topics._acking_topics.add(topic)  # what Faust's conductor does once it subscribes
    return app.consumer


def records(*offsets: int) -> list:
    return [types.SimpleNamespace(offset=o, key=None, value=b"%d" % o, headers=()) for o in offsets]


async def test_a_batch_acknowledges_its_offsets_at_once_and_gaps_do_not_stop_the_commit():
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer, tp = consumer_of(app, "t"), TP("t", 0)
    consumer._read_offset[tp] = 3  # seeked there: 3 is the next record
    fresh = await consumer._fresh(tp, records(1, 2, 3, 4, 5, 8, 9), consumer._read_offset)
    assert [r.offset for r in fresh] == [3, 4, 5, 8, 9]  # what was read before the seek is dropped
    assert consumer._read_offset[tp] == 9
    assert sorted((i.begin, i.end) for i in consumer._gap[tp]) == [(6, 8)]  # 6 and 7 hold no record
    batch = Batch(consumer)
    batch.add(tp, fresh)
    assert len(batch) == 5 and batch.values() == [b"3", b"4", b"5", b"8", b"9"]
    assert consumer._new_offset(tp) is None  # nothing acknowledged: nothing to commit
    assert batch.ack()
    assert consumer._n_acked == 5
    assert consumer._new_offset(tp) == 10  # through the gap


async def test_a_batch_of_an_earlier_generation_or_log_is_not_acknowledged():
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer, tp = consumer_of(app, "t"), TP("t", 0)
    old_generation = Batch(consumer)
    old_generation.add(tp, records(0, 1))
    app.consumer_generation_id += 1  # a rebalance: the partitions are read again from the committed offsets
    old_log = Batch(consumer)
    old_log.add(tp, records(0, 1))
    consumer.rewound(tp, 0)  # IngestService._rewind: the log was reset
    current = Batch(consumer)
    current.add(tp, records(0))
    assert not old_generation.current() and not old_generation.ack()
    assert not old_log.current() and not old_log.ack()
    assert current.current() and current.ack()
    assert list(consumer._acked[tp]) == [0]


async def committed(bootstrap: str, topic: str, group: str) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        total = 0
        for p in parts:
            total += await c.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await c.stop()


async def test_offsets_are_committed_only_after_their_batch_is_written_and_a_failed_write_is_retried(tmp_path, kafka_bootstrap):
    topic = "batches-" + uuid.uuid4().hex[:8]
    s = settings(tmp_path, "postgresql://nobody@127.0.0.1:9/none", kafka_bootstrap, topic)
    svc = IngestService(s)
    failing = asyncio.Event()
    failing.set()
    calls = 0
    insert = svc.analytics.insert_values

    async def flaky_insert(table, names, rows):
        nonlocal calls
        calls += 1
        if failing.is_set():
            raise ConnectionError("analytics store down")
        await insert(table, names, rows)

    svc.analytics.insert_values = flaky_insert
    await svc.start()
    try:
        evs = make_events(120)
        await produce(kafka_bootstrap, topic, evs)
        await eventually(lambda: asyncio.sleep(0, calls >= 3))  # the first batch failed and was retried
        await asyncio.sleep(2.5)  # more than one commit interval (1 s) while the write keeps failing
        assert await committed(kafka_bootstrap, topic, s.consumer_group) == 0
        assert await row_count(svc) == 0
        failing.clear()

        async def all_written() -> bool:
            return await row_count(svc) == len(evs)

        await eventually(all_written)

        async def all_committed() -> bool:
            return await committed(kafka_bootstrap, topic, s.consumer_group) == len(evs)

        await eventually(all_committed)
        assert svc.metrics.registry.get_sample_value("helicone_ingest_write_errors_total", {"stage": "analytics"}) >= 3
    finally:
        await svc.stop()


async def test_a_batch_stores_its_bodies_while_the_one_before_inserts_and_rows_go_in_one_batch_at_a_time_in_order(
        tmp_path, kafka_bootstrap):
    topic = "pipeline-" + uuid.uuid4().hex[:8]
    s = settings(tmp_path, "postgresql://nobody@127.0.0.1:9/none", kafka_bootstrap, topic)
    svc = IngestService(s)
    inserting, most_at_once, bodies_during_an_insert, users = 0, 0, 0, []
    first_inserting, bodies_while_inserting = asyncio.Event(), asyncio.Event()
    insert, put = svc.analytics.insert_values, svc.bodies.put

    async def slow_insert(table, names, rows):
        nonlocal inserting, most_at_once
        inserting += 1
        most_at_once = max(most_at_once, inserting)
        try:
            if not first_inserting.is_set():  # the first insert lasts until a later batch has stored its bodies
                first_inserting.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(bodies_while_inserting.wait(), 10)
            await insert(table, names, rows)
            users.extend(int(row[names.index("user_id")].removeprefix("user-")) for row in rows)
        finally:
            inserting -= 1

    async def noted_put(key, data, content_type):
        nonlocal bodies_during_an_insert
        if inserting:
            bodies_during_an_insert += 1
            bodies_while_inserting.set()
        await put(key, data, content_type)

    svc.analytics.insert_values, svc.bodies.put = slow_insert, noted_put
    evs = make_events(400)
    await ensure_topics(kafka_bootstrap, [topic, s.kafka_dlq_topic], 1, 1, security=svc.kafka_security)
    await svc.start()
    try:
        await produce(kafka_bootstrap, topic, evs[:100])
        await eventually(lambda: asyncio.sleep(0, first_inserting.is_set()))
        await produce(kafka_bootstrap, topic, evs[100:])

        async def all_committed() -> bool:
            return await committed(kafka_bootstrap, topic, s.consumer_group) == len(evs)

        await eventually(all_committed)
        assert bodies_during_an_insert > 0
        assert most_at_once == 1
        assert users == list(range(len(evs)))  # every row once, batches in the order they were read (one partition)
        assert await row_count(svc) == len(evs)
    finally:
        await svc.stop()


async def test_a_turn_starts_once_the_turn_before_has_ended():
    turns = Turns()
    first, second, third = turns.next(), turns.next(), turns.next()
    await asyncio.wait_for(first.wait(), 1)  # the first turn has none before it
    waiting = asyncio.ensure_future(second.wait())
    third_waiting = asyncio.ensure_future(third.wait())
    await asyncio.sleep(0.05)
    assert not waiting.done() and not third_waiting.done()
    first.end()
    first.end()  # ending again does nothing
    await asyncio.wait_for(waiting, 1)
    await asyncio.sleep(0.05)
    assert not third_waiting.done()
    fourth = turns.next()
    gives_up = asyncio.ensure_future(fourth.wait())
    await asyncio.sleep(0.05)
    gives_up.cancel()  # a waiter that gives up while waiting does not end the turn before it
    await asyncio.sleep(0.05)
    assert not third_waiting.done()
    assert not asyncio.ensure_future(fourth.wait()).done()
    second.end()
    await asyncio.wait_for(third_waiting, 1)
    await asyncio.wait_for(second.wait(), 1)  # at once the second time


async def test_a_hand_over_that_waits_is_abandoned_when_a_rebalance_suspends_the_flow():
    """Faust's rebalance waits for the fetch loop; a handler waiting for the writer must not hold it
    (the stall this guards against: ingest stopped for a rebalance timeout after a broker restart)."""
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer, tp = consumer_of(app, "t"), TP("t", 0)
    forever, cancelled = asyncio.Event(), []

    async def busy_writer(batch):
        try:
            await forever.wait()
        except asyncio.CancelledError:
            cancelled.append(batch)
            raise

    app.batch_handler = busy_writer
    batch = Batch(consumer)
    batch.add(tp, records(0, 1))
    handing = asyncio.create_task(consumer._hand_over(batch))
    await asyncio.sleep(0.05)
    assert not handing.done()  # the writer is busy: the loop waits
    consumer.stop_flow()  # what Faust does when a rebalance starts
    assert await asyncio.wait_for(handing, 5) is False
    assert cancelled == [batch] and not consumer._acked[tp]
    assert await consumer._hand_over(batch) is False  # suspended: not even tried
    consumer.resume_flow()

    async def writer(batch):
        batch.ack()

    app.batch_handler = writer
    assert await consumer._hand_over(batch) is True and list(consumer._acked[tp]) == [0, 1]


async def test_in_flight_counts_only_current_batches_so_a_rebalance_frees_its_slots():
    """Faust clears its channels' queues on a rebalance: a batch dropped there never leaves, and
    must stop holding a slot once it is stale (with a semaphore, ingest stopped for good)."""
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer = consumer_of(app, "t")
    in_flight = InFlight(2, poll=0.05)
    first, second, third = Batch(consumer), Batch(consumer), Batch(consumer)
    await in_flight.enter(first)
    await in_flight.enter(second)
    waiting = asyncio.create_task(in_flight.enter(third))
    await asyncio.sleep(0.15)
    assert not waiting.done()  # two current batches: full
    in_flight.leave(first)  # written
    await asyncio.wait_for(waiting, 1)
    fourth = Batch(consumer)
    waiting = asyncio.create_task(in_flight.enter(fourth))
    await asyncio.sleep(0.15)
    assert not waiting.done()
    app.consumer_generation_id += 1  # a rebalance: second and third were dropped from the channel, never leave
    fifth = Batch(consumer)
    await asyncio.wait_for(in_flight.enter(fifth), 1)
    await asyncio.wait_for(waiting, 1)  # the batch that waited got in too
    # fourth was fetched before the rebalance: stale as well, it counts only until the next enter() looks
    # (which of the two entered first depends on the poll's timing)
    assert fifth in in_flight.batches and in_flight.batches <= {fourth, fifth}


async def test_a_batch_is_caught_up_only_when_it_holds_every_record_up_to_the_log_end():
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer = consumer_of(app, "t")
    a, b = TP("t", 0), TP("t", 1)
    ends = {a: 10, b: None}
    consumer.highwater = ends.get  # the log ends the last fetch saw (None: not fetched yet)
    batch = Batch(consumer)
    batch.add(a, await consumer._fresh(a, records(7, 8), consumer._read_offset))
    assert not consumer._caught_up(batch)  # offset 9 is still to be read
    batch.add(a, await consumer._fresh(a, records(9), consumer._read_offset))
    assert consumer._caught_up(batch)
    batch.add(b, await consumer._fresh(b, records(0), consumer._read_offset))
    assert not consumer._caught_up(batch)  # partition 1's end is unknown
    ends[b] = 1
    assert consumer._caught_up(batch)

    def revoked(tp):  # what aiokafka's highwater does for a partition a rebalance took away
        assert tp == a, "Partition is not assigned"
        return ends[tp]

    consumer.highwater = revoked
    assert not consumer._caught_up(batch)  # not caught up, and the fetch loop goes on (it used to raise there)
    consumer.highwater = ends.get
    app.consumer_generation_id += 1
    assert not consumer._caught_up(batch)  # a batch of an earlier generation is dropped, never handed over early


@contextlib.asynccontextmanager
async def one_written(tmp_path, kafka_bootstrap: str, **batching):
    """A started IngestService on a new topic, batching as given (batch_size 1000, batch_within 60 s),
    that has written one event: the group joined, the batch before the test's has gone."""
    topic = "batches-" + uuid.uuid4().hex[:8]
    s = settings(tmp_path, "postgresql://nobody@127.0.0.1:9/none", kafka_bootstrap, topic)
    svc = IngestService(s.model_copy(update={"batch_size": 1000, "batch_within": 60.0, **batching}))
    await svc.start()
    try:
        await produce(kafka_bootstrap, topic, make_events(1))
        await eventually(written(svc, 1), timeout=30)
        yield svc, topic
    finally:
        await svc.stop()


async def trickle(svc: IngestService, kafka_bootstrap: str, topic: str) -> tuple[float, float]:
    """40 events, one every 50 ms after the one before is acknowledged, to a service that has
    written one: how many batches it made of them, and how long until all were written."""
    batches = svc.metrics.registry.get_sample_value("helicone_ingest_batch_size_count")
    started = time.monotonic()
    await produce(kafka_bootstrap, topic, make_events(40), pause=0.05)
    await eventually(written(svc, 41), timeout=30)
    took = time.monotonic() - started
    return svc.metrics.registry.get_sample_value("helicone_ingest_batch_size_count") - batches, took


async def test_a_light_load_is_written_once_caught_up_at_most_once_per_batch_gap(tmp_path, kafka_bootstrap):
    """Events trickling in are written within about batch_gap, not batch_within (60 s here), and the
    gap bounds how many inserts they make (batch_light_events 0: every batch goes by batch_gap)."""
    # the first write, the group join included, is far less than batch_within
    async with one_written(tmp_path, kafka_bootstrap, batch_gap=0.5, batch_light_events=0) as (svc, topic):
        made, took = await trickle(svc, kafka_bootstrap, topic)
        assert 1 <= made <= took / svc.settings.batch_gap + 1, (made, took)
        assert took < 15


async def produce_at_once(bootstrap: str, topic: str, evs: list) -> None:
    """The events as one record batch: one fetch reads them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        batch = producer.create_batch()
        for ev in evs:
            assert batch.append(key=events.message_key(ev), value=events.encode(ev), timestamp=None) is not None
        batch.close()
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()


async def test_below_batch_light_events_a_second_batches_go_batch_gap_light_apart(tmp_path, kafka_bootstrap):
    """A trickle (far fewer than batch_light_events a second) makes about one insert per
    batch_gap_light (1 s), not one per batch_gap (0.1 s): ClickHouse's advice for small inserts."""
    async with one_written(tmp_path, kafka_bootstrap, batch_gap=0.1, batch_light_events=1000,
                           batch_gap_light=1.0) as (svc, topic):
        made, took = await trickle(svc, kafka_bootstrap, topic)
        assert 1 <= made <= took / svc.settings.batch_gap_light + 1, (made, took)  # by batch_gap: about took / 0.1


async def test_after_a_fast_flow_a_small_batch_goes_by_batch_gap_and_the_one_after_it_by_batch_gap_light(
        tmp_path, kafka_bootstrap):
    """The tail of a burst is not held for batch_gap_light: after a batch that brought
    batch_light_events or more per batch_gap_light, however long the idle time before it, a small
    caught-up batch goes batch_gap after it; the small batch after that small one waits for
    batch_gap_light."""
    async with one_written(tmp_path, kafka_bootstrap, batch_gap=0.2, batch_light_events=500,
                           batch_gap_light=8.0) as (svc, topic):
        # 500 (batch_light_events) in one fetch, more than batch_gap_light after the batch before: a fast flow
        # (were the idle time counted, 500 in 9 s would be under 500 per 8 s)
        await asyncio.sleep(9.0)
        await produce_at_once(kafka_bootstrap, topic, make_events(500))
        await eventually(written(svc, 501), timeout=30)
        # small, after that batch: by batch_gap, not 8 s after the 500
        await produce_at_once(kafka_bootstrap, topic, make_events(5))
        await eventually(written(svc, 506), timeout=5)
        sent = time.monotonic()
        # small, after 5 (under 500 per 8 s): batch_gap_light after the batch of 5
        await produce_at_once(kafka_bootstrap, topic, make_events(5))
        await asyncio.sleep(3.0)
        assert await row_count(svc) == 506
        await eventually(written(svc, 511), timeout=30)
        assert time.monotonic() - sent > 4.5


async def test_a_burst_after_an_idle_time_goes_by_batch_gap_though_each_fetch_brings_few(tmp_path, kafka_bootstrap):
    """A batch that fills at batch_light_events per batch_gap_light or faster is a fast flow even
    when the batch before it was small: a burst after an idle time is visible batch_gap after it
    ends, not batch_gap_light after the previous batch."""
    async with one_written(tmp_path, kafka_bootstrap, batch_gap=0.2, batch_light_events=500,
                           batch_gap_light=12.0) as (svc, topic):
        handed = time.monotonic()  # the batch of 1 went before this
        await produce(kafka_bootstrap, topic, make_events(400))  # one at a time: the fetches bring a few each
        sent = time.monotonic()
        took = sent - handed
        assert took < 8, took  # 400 in 8 s is 600 per 12 s: a fast flow
        await eventually(written(svc, 401), timeout=30)
        assert time.monotonic() - handed < 10.0  # by batch_gap_light: 12 s after the batch of 1


async def test_the_tail_of_a_fast_flow_goes_once_a_fetch_brings_nothing_not_batch_gap_after_the_batch_before(
        tmp_path, kafka_bootstrap):
    """A fast flow's caught-up batch goes as soon as the flow pauses (a fetch of its partitions is
    answered with nothing new, fetch_wait after its last records), not batch_gap after the batch
    before it: the last requests of a burst are visible a fetch wait after it ends. batch_gap is
    6 s here; before, each of these batches waited for it."""
    async with one_written(tmp_path, kafka_bootstrap, batch_gap=6.0, batch_light_events=500,
                           batch_gap_light=12.0) as (svc, topic):
        sent = time.monotonic()
        await produce_at_once(kafka_bootstrap, topic, make_events(500))  # a fast flow: batch_light_events at once
        await eventually(written(svc, 501), timeout=30)
        assert time.monotonic() - sent < 3.0  # by batch_gap: 6 s after the batch of 1
        sent = time.monotonic()
        await produce_at_once(kafka_bootstrap, topic, make_events(5))  # the tail, right after the 500
        await eventually(written(svc, 506), timeout=30)
        assert time.monotonic() - sent < 3.0  # by batch_gap: 6 s after the 500


async def produce_steadily(bootstrap: str, topic: str, n: int, every: float) -> None:
    """n events to partition 0, one every `every` seconds, not waiting for each to be acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sends, start = [], time.monotonic()
        for i, ev in enumerate(make_events(n)):
            sends.append(await producer.send(topic, events.encode(ev), key=events.message_key(ev), partition=0))
            await asyncio.sleep(max(start + (i + 1) * every - time.monotonic(), 0))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def steady(svc: IngestService, kafka_bootstrap: str, topic: str, n: int, every: float,
                 timeout: float) -> tuple[float, float]:
    """n events, one every `every` seconds (produce_steadily), to a service that has written one: how
    many batches it made of them, and how long until all were written."""
    batches = svc.metrics.registry.get_sample_value("helicone_ingest_batch_size_count")
    started = time.monotonic()
    await produce_steadily(kafka_bootstrap, topic, n, every)
    await eventually(written(svc, n + 1), timeout=timeout)
    took = time.monotonic() - started
    return svc.metrics.registry.get_sample_value("helicone_ingest_batch_size_count") - batches, took


async def test_a_steady_fast_flow_still_makes_one_insert_per_batch_gap(tmp_path, kafka_bootstrap):
    """While records keep coming (every fetch brings some), a fast flow is not taken for a pause:
    its batches still go batch_gap apart, not a fetch at a time."""
    async with one_written(tmp_path, kafka_bootstrap, batch_gap=1.0, batch_light_events=100,
                           batch_gap_light=2.0) as (svc, topic):
        made, took = await steady(svc, kafka_bootstrap, topic, 400, every=0.01, timeout=30)  # 100 a second, for 4 s
        # a fetch at a time would be about 60; a stall of the producer as long as a fetch wait is a pause (room for two)
        assert 2 <= made <= took / svc.settings.batch_gap + 4, (made, took)


async def test_a_fast_flow_with_the_shipped_gap_makes_about_two_inserts_a_second(tmp_path, kafka_bootstrap):
    """The shipped batch_gap (0.5 s; each chDB insert costs about 30 ms of CPU whatever its rows): a
    flow of 1,200 events a second, past batch_light_events (1,000) per batch_gap_light (1 s), is
    written in batches about batch_gap apart, not four a second as with 0.25 s."""
    defaults = IngestSettings.model_fields
    assert defaults["batch_gap"].default == 0.5
    async with one_written(tmp_path, kafka_bootstrap, batch_size=5000) as (svc, topic):
        assert (svc.settings.batch_gap, svc.settings.batch_light_events, svc.settings.batch_gap_light) == (
            defaults["batch_gap"].default, defaults["batch_light_events"].default, defaults["batch_gap_light"].default)
        made, took = await steady(svc, kafka_bootstrap, topic, 3600, every=1 / 1200, timeout=60)  # for 3 s
        # 6 in 3.2 s here; by 0.25 s 11 in 3.25 s; a stall of the producer as long as a fetch wait is a pause (room for three)
        assert 2 <= made <= took / 0.5 + 3, (made, took)


def written(svc: IngestService, n: int):
    async def check() -> bool:
        return await row_count(svc) == n
    check.__name__ = f"{n} rows written"
    return check


async def test_a_batch_closes_once_its_events_hold_batch_max_bytes(tmp_path, kafka_bootstrap):
    """Large bodies make a batch go once it holds batch_max_bytes, not batch_size events: with the size,
    the wait and the gap all far off (1,000 events, 60 s), 100 KB events still go in batches of about
    batch_max_bytes (256 KiB here: three events, a fetch more at most), within seconds."""
    topic = "batches-" + uuid.uuid4().hex[:8]
    s = settings(tmp_path, "postgresql://nobody@127.0.0.1:9/none", kafka_bootstrap, topic)
    s = s.model_copy(update={"batch_size": 1000, "batch_within": 60.0, "batch_gap": 60.0, "batch_max_bytes": 256 * 1024})
    svc = IngestService(s)
    await svc.start()
    sample = svc.metrics.registry.get_sample_value
    try:
        await produce(kafka_bootstrap, topic, make_events(1))  # the first batch goes at once (no batch went before)

        def written(n: int):
            async def check() -> bool:
                return await row_count(svc) >= n
            check.__name__ = f"{n} rows written"
            return check

        await eventually(written(1), timeout=30)
        large = make_events(12)
        for ev in large:
            ev.inline.request_body = b"x" * 100_000
        started = time.monotonic()
        await produce(kafka_bootstrap, topic, large, pause=0.15)
        await eventually(written(10), timeout=30)  # 1 + at least three batches of 3 (the rest waits for a fuller batch)
        assert time.monotonic() - started < 20  # not held for batch_within or batch_gap (60 s)
        batches = sample("helicone_ingest_batch_size_count") - 1
        # about three events each (a slow moment can bring several in one fetch), never all twelve at once
        small = sample("helicone_ingest_batch_size_bucket", {"le": "10.0"}) - 1
        assert batches >= 3 and small == batches, (batches, small)
    finally:
        await svc.stop()


async def test_fetches_wait_briefly_while_records_keep_coming_and_long_once_idle(tmp_path, kafka_bootstrap):
    """The embedded broker looks for records when a fetch arrives, then after half the time left, again
    and again (Kafka answers as soon as records arrive): with Faust's 1.5 s, records reached ingest up to
    0.77 s after they were produced. While records
    keep coming, the consumer's fetches wait fetch_wait at most; a second without records and they
    wait Faust's 1.5 s again, so an idle worker does not poll the broker twenty times a second. The
    shipped fetch_wait, 0.05 s: a fast flow's tail goes once a fetch is answered empty, about that long
    after its last records."""
    topic = "batches-" + uuid.uuid4().hex[:8]
    s = settings(tmp_path, "postgresql://nobody@127.0.0.1:9/none", kafka_bootstrap, topic)
    assert s.fetch_wait == IngestSettings.model_fields["fetch_wait"].default == 0.05
    svc = IngestService(s)
    await svc.start()
    try:
        def fetch_wait_ms() -> int | None:
            fetcher = svc.faust.consumer.kafka_fetcher()
            return None if fetcher is None else fetcher._fetch_max_wait_ms

        def waits(ms: int):
            async def check() -> bool:
                now = fetch_wait_ms()
                check.__name__ = f"fetch wait {ms} ms (it is {now})"  # what eventually() reports
                return now == ms
            return check

        await produce(kafka_bootstrap, topic, make_events(1))
        await eventually(lambda: asyncio.sleep(0, svc.metrics.registry.get_sample_value("helicone_ingest_batch_size_count")))
        trickle = asyncio.create_task(produce(kafka_bootstrap, topic, make_events(30), pause=0.1))
        await eventually(waits(50), timeout=30)
        await trickle
        await eventually(waits(1500), timeout=30)  # idle again
        await asyncio.sleep(0.5)
        assert fetch_wait_ms() == 1500
    finally:
        await svc.stop()


async def _drain(consumer, fetches: list, perform_seek=None) -> list:
    """Runs the fetch loop over `fetches`, each (what happens while that fetch is under way or None,
    what it returns), and stops after the last; returns the seeks it made, as (partition, offset).
    `perform_seek` stands in for Faust's seek to the committed offsets (by default: none is made)."""
    seeks, left = [], list(fetches)
    fetcher = types.SimpleNamespace(_stopped=asyncio.Event())

    async def wait_next_records(timeout):
        if not left:
            fetcher._stopped.set()
            return {}, None
        during_fetch, fetched = left.pop(0)
        if during_fetch is not None:
            during_fetch()
        return fetched, consumer.assignment()  # the active partitions

    async def seek(tp, offset):
        seeks.append((tp.partition, offset))

    async def no_seek():
        pass

    consumer._wait_next_records = wait_next_records
    consumer.seek = seek
    consumer.perform_seek = perform_seek or no_seek
    consumer.assignment = lambda: {TP("t", 0), TP("t", 1)}
    await asyncio.wait_for(consumer._drain_messages(fetcher), 5)
    return seeks


async def _drain_once(consumer, fetched: dict, during_fetch=None) -> list:
    """_drain for one fetch that returns `fetched` (after `during_fetch()`)."""
    return await _drain(consumer, [(during_fetch, fetched)])


async def test_records_fetched_while_a_rebalance_runs_are_read_again_even_without_a_committed_offset():
    """A fetch that lands while the flow is suspended or after the generation changed is not taken;
    its partitions go back to its first records (or to the committed offset if earlier), or they
    would be skipped: on a fresh log after a broker restart the group has no committed offset for
    perform_seek to go back to (the loss a killed embedded broker showed: a record sent after the
    restart was never written). A partition rewound while the fetch waited goes back at least to
    where the rewind sent it."""
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    handed = []

    async def handler(batch):
        handed.append(batch)

    app.batch_handler = handler
    consumer = consumer_of(app, "t")
    fetched = {TP("t", 0): records(0, 1), TP("t", 1): records(7, 8), TP("t", 2): records(3)}  # t/2: not assigned
    consumer._committed_offset[TP("t", 1)] = 5  # earlier than the fetch: back there, nothing skipped

    consumer.stop_flow()  # a rebalance under way
    assert sorted(await _drain_once(consumer, fetched)) == [(0, 0), (1, 5)]
    consumer.resume_flow()

    def rebalanced():
        app.consumer_generation_id += 1

    assert sorted(await _drain_once(consumer, fetched, rebalanced)) == [(0, 0), (1, 5)]
    assert handed == []  # nothing of either fetch was handed over

    def rewound():  # IngestService._rewind sent t/0 to the start of a new log while the fetch waited
        consumer.rewound(TP("t", 0), 0)
        app.consumer_generation_id += 1

    fetched[TP("t", 0)] = records(40, 41)  # the old log's, or the new one's: either way from 0 again
    assert sorted(await _drain_once(consumer, fetched, rewound)) == [(0, 0), (1, 5)]
    assert handed == []

    # rewound without a rebalance (the offset guard): only the rewound partition's records are left
    app.batch_within = 0  # whatever is taken is handed over at once
    consumer.highwater = lambda tp: None
    assert await _drain_once(consumer, fetched, lambda: consumer.rewound(TP("t", 0), 0)) == [(0, 0)]
    assert [sorted(tp.partition for tp in b.offsets) for b in handed] == [[1]]


def _rewind_test_app(acking: bool):
    """An app whose batches go by neither size, time nor being caught up until `go()`; the batches it
    hands over are in `handed` (acknowledged at once with `acking`): (app, consumer, handed, go)."""
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    handed: list[Batch] = []

    async def handler(batch):
        handed.append(batch)
        if acking:
            batch.ack()

    app.batch_handler = handler
    app.batch_size, app.batch_within = 1000, 60.0
    consumer = consumer_of(app, "t")
    consumer.highwater = lambda tp: 1000

    def go():
        app.batch_within = 0  # what is gathered goes after the fetch under way

    return app, consumer, handed, go


async def test_a_rewind_of_one_partition_keeps_the_other_partitions_gathered_records():
    """The offset guard rewinds t/0 (its position past a new log's end) while a batch gathers t/1's
    records: they stay in the batch (nothing would read them again), written and acknowledged as usual."""
    app, consumer, handed, go = _rewind_test_app(acking=True)
    p0, p1 = TP("t", 0), TP("t", 1)
    await _drain(consumer, [(None, {p1: records(0, 1, 2)}), (lambda: consumer.rewound(p0, 0), {p1: records(3, 4)}),
                            (go, {})])
    assert [b.offsets for b in handed] == [{p1: [0, 1, 2, 3, 4]}]
    assert consumer._new_offset(p1) == 5


async def test_a_rewind_takes_only_that_partitions_records_out_of_the_gathered_batch():
    app, consumer, handed, go = _rewind_test_app(acking=True)
    p0, p1 = TP("t", 0), TP("t", 1)
    def rewind_p0():  # IngestService._rewind, but for the seek, which Faust's notes as the read offset
        consumer.rewound(p0, 0)
        consumer._read_offset[p0] = None

    seeks = await _drain(consumer, [(None, {p0: records(7, 8), p1: records(0, 1)}), (rewind_p0, {p1: records(2)}),
                                    (None, {p0: records(0)}),  # the new log's first record
                                    (go, {})])
    assert seeks == []  # nothing read again: t/0's rewind itself went to 0
    assert [b.offsets for b in handed] == [{p1: [0, 1, 2], p0: [0]}]
    assert handed[0].values() == [b"0", b"1", b"2", b"0"] and handed[0].bytes == 4
    assert (consumer._new_offset(p0), consumer._new_offset(p1)) == (1, 3)


async def test_a_batch_being_written_when_another_partition_is_rewound_is_still_acknowledged():
    """A batch handed over before t/0's rewind: t/1's offsets in it are acknowledged (t/1's commit goes on),
    t/0's are not (they number the old log)."""
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer = consumer_of(app, "t")
    p0, p1 = TP("t", 0), TP("t", 1)
    consumer._committed_offset[p1] = 10
    mixed, only_p0 = Batch(consumer), Batch(consumer)
    mixed.add(p0, records(40, 41))
    mixed.add(p1, records(*range(10, 20)))
    only_p0.add(p0, records(42))
    consumer.rewound(p0, 0)
    assert mixed.current() and mixed.ack()
    assert not only_p0.current() and not only_p0.ack()
    assert consumer._new_offset(p1) == 20 and not consumer._acked.get(p0)


async def test_a_seek_that_fails_while_the_flow_is_stopped_does_not_end_the_fetch_loop():
    """A rebalance stops the flow while a fetch is under way; the seek back to the committed offsets fails
    (a partition revoked meanwhile): the loop goes on, and the fetched records are read again."""
    app = BatchApp("g", broker="kafka://127.0.0.1:9", store="memory://", web_enabled=False, autodiscover=False)
    consumer = consumer_of(app, "t")

    async def failing_seek():
        raise IllegalStateError("No current assignment for partition TopicPartition(topic='t', partition=1)")

    seeks = await _drain(consumer, [(consumer.stop_flow, {TP("t", 0): records(5, 6)}), (None, {})], failing_seek)
    assert seeks == [(0, 5)]
