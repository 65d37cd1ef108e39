"""Ingest's consumer-lag gauge and usage counters, on a real broker (Tansu) and a real chDB store:
the lag rises while ingest is held and falls to 0 once it has caught up; tokens and cost are
counted once per written event (a failed, retried batch included), with bounded labels."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from helicone_core import events
from helicone_core.analytics import ChdbStore
from helicone_ingest.app import IngestService, consumer_lag
from helicone_ingest.batches import BatchConsumer
from helicone_ingest.settings import IngestSettings

ORG = str(uuid.uuid4())
LAG = "helicone_ingest_consumer_lag_events"


class HeldAnalytics:
    """A real chDB store whose inserts wait while `open` is clear and fail `failures` times first."""

    def __init__(self, store: ChdbStore) -> None:
        self.store = store
        self.database = store.database
        self.open = asyncio.Event()
        self.open.set()
        self.failures = 0
        self.attempts = 0
        self.refuse: str | None = None  # a request id whose row gets a value ClickHouse cannot read

    async def init_schema(self) -> None:
        await self.store.init_schema()

    async def insert_values(self, table, names, rows) -> None:
        await self.open.wait()
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise ConnectionError("clickhouse unreachable (test)")
        if self.refuse is not None:
            rid, size = names.index("request_id"), names.index("request_bytes")
            rows = [[*r[:size], -1, *r[size + 1:]] if r[rid] == self.refuse else r for r in rows]
        await self.store.insert_values(table, names, rows)

    async def query(self, sql, params=None):
        return await self.store.query(sql, params)

    async def ping(self) -> bool:
        return await self.store.ping()

    async def close(self) -> None:
        await self.store.close()


def settings(tmp_path, bootstrap: str, topic: str) -> IngestSettings:
    return IngestSettings(
        data_dir=tmp_path, body_store="local", analytics_backend="chdb", postgres_dsn="postgresql://127.0.0.1:1/none",
        kafka_bootstrap=bootstrap, kafka_topic=topic, kafka_dlq_topic=topic + ".dlq", consumer_group=f"ingest-{topic}",
        batch_size=50, batch_within=0.2, broker_rebalance_timeout=2.0, broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0, offset_guard_interval=0.2, retry_max_backoff=0.2, postgres_timeout=0.5,
        metadata_stop_timeout=0.1, _env_file=None,
    )


def event(**kw) -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=ORG, status=200, **kw)
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    return ev


async def produce(bootstrap: str, topic: str, evs: list[events.RequestLogged]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for ev in evs:
            await producer.send_and_wait(topic, events.encode(ev), key=events.message_key(ev))
    finally:
        await producer.stop()


async def eventually(check, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what}: still not true after {timeout}s"
        await asyncio.sleep(0.1)


async def rows(svc: IngestService) -> int:
    found = await svc.analytics.query(
        "SELECT count() AS n FROM {db}.request_log FINAL WHERE org_id = {org:String} "
        "SETTINGS output_format_json_quote_64bit_integers = 0", {"org": ORG})
    return found[0]["n"]


@pytest.fixture
async def ingest(tmp_path, kafka_bootstrap):
    topic = "metrics-" + uuid.uuid4().hex[:8]
    analytics = HeldAnalytics(ChdbStore(tmp_path / "chdb", "helicone"))
    svc = IngestService(settings(tmp_path, kafka_bootstrap, topic), analytics=analytics)
    await asyncio.wait_for(svc.start(), 60)
    try:
        yield svc, analytics, kafka_bootstrap, topic
    finally:
        await svc.stop()


def lag(svc: IngestService) -> float | None:
    return svc.metrics.registry.get_sample_value(LAG)


async def test_lag_rises_while_ingest_is_held_and_returns_to_zero_once_it_caught_up(ingest):
    svc, analytics, bootstrap, topic = ingest
    assert lag(svc) == 0  # nothing assigned yet, or nothing in the log

    await produce(bootstrap, topic, [event(model="warm-up")])

    async def caught_up(n: int):
        async def check():
            return await rows(svc) == n and lag(svc) == 0
        return check
    await eventually(await caught_up(1), "the first event written and committed")

    analytics.open.clear()  # ClickHouse hangs: the batch is not written, so nothing is committed
    await produce(bootstrap, topic, [event(model=f"held-{i}") for i in range(20)])

    async def lag_is(n: int):
        async def check():
            return lag(svc) == n
        return check
    await eventually(await lag_is(20), "lag while held")

    # The consumer stops fetching, as it does once Faust's buffers are full: its high watermark stands
    # still, and only the broker's log end (ListOffsets) shows the events produced since.
    consumer = svc.faust.consumer
    [tp] = [tp for tp in consumer.assignment() if tp.topic == topic]
    aio, aio_tp = consumer._thread._ensure_consumer(), TopicPartition(tp.topic, tp.partition)

    async def pause():
        aio.pause(aio_tp)
    await consumer._thread.call_thread(pause)
    # a fetch already in flight has come back: one asked while the consumer was idle waits up to IDLE_FETCH_WAIT,
    # whatever the wait is now (a 0.05 s one read here let a 1.5 s fetch bring the next events in, on a busy box)
    await asyncio.sleep(2 * max(BatchConsumer.IDLE_FETCH_WAIT, aio._fetcher._fetch_max_wait_ms / 1000))
    watermark = consumer.highwater(tp)
    await produce(bootstrap, topic, [event(model=f"unfetched-{i}") for i in range(10)])
    await eventually(await lag_is(30), "lag of events the consumer has not fetched")
    assert consumer.highwater(tp) == watermark <= 21

    async def resume():
        aio.resume(aio_tp)
    await consumer._thread.call_thread(resume)
    analytics.open.set()
    await eventually(await caught_up(31), "caught up after the hold")


async def test_lag_counts_events_read_but_not_written_when_the_group_has_committed_nothing_yet(ingest):
    """A fresh group (a first start, or a partition rewound to a new log) has no committed offset: the
    events ingest has fetched but not written are not committed either, and count in the lag. (They
    were counted from the consumer's position: fetched, held by a hung ClickHouse, the lag read 0.)"""
    svc, analytics, bootstrap, topic = ingest
    analytics.open.clear()  # ClickHouse hangs before anything is written: nothing is ever committed
    await produce(bootstrap, topic, [event(model=f"held-{i}") for i in range(20)])
    consumer = svc.faust.consumer

    async def fetched():
        tps = [tp for tp in consumer.assignment() if tp.topic == topic]
        return bool(tps) and sum([await consumer.position(tp) or 0 for tp in tps]) == 20

    await eventually(fetched, "the events fetched")
    svc.m_consumer_lag.set(-1)  # measured again after the fetch

    async def measured():
        return lag(svc) != -1
    await eventually(measured, "the lag measured after the fetch")
    assert lag(svc) == 20
    analytics.open.set()

    async def caught_up():
        return await rows(svc) == 20 and lag(svc) == 0
    await eventually(caught_up, "written, committed and the lag back to 0")


def test_lag_sums_partitions_from_the_committed_offset_or_the_log_start():
    ends = {"p0": 100, "p1": 50, "p2": 7, "p3": 9}
    committed = {"p0": 90, "p1": None, "p2": 12, "p3": None}  # p2: committed past a recreated log's end
    starts = {"p1": 45, "p3": None}  # p3: no log start known either
    assert consumer_lag(ends, committed, starts) == 10 + 5
    assert consumer_lag({}, {}, {}) == 0


def usage(prompt=0, completion=0, cache_read=0, cache_write=0, known=True) -> events.Usage:
    return events.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                        cache_read_tokens=cache_read, cache_write_tokens=cache_write, known=known)


async def test_tokens_and_cost_are_counted_once_per_written_event_with_bounded_labels(ingest):
    svc, analytics, bootstrap, topic = ingest
    evs = [
        event(provider="openai", model="gpt-4o-mini-2024-07-18", usage=usage(100, 20, cache_read=40),
              cost_usd=1.5e-5, cost_known=True),
        event(provider="anthropic", model="claude-3-5-haiku-20241022", usage=usage(300, 50, cache_write=200),
              cost_usd=2.5e-4, cost_known=True),
        # a model name the caller chose, unknown to the cost registry: counted, as "other"
        event(provider="openai", model="my-team-finetune-" + uuid.uuid4().hex, usage=usage(7, 3)),
        # a provider outside the fixed set (e.g. logged through the api): "custom"
        event(provider="together-" + uuid.uuid4().hex[:6], model="openai/gpt-4o", usage=usage(5, 5),
              cost_usd=6.25e-5, cost_known=True),
        event(provider="openai", model="gpt-4o-mini", usage=usage(known=False)),  # no usage from the provider
    ]
    analytics.failures = 1  # the first attempt at writing fails; the batch is retried
    await produce(bootstrap, topic, evs)

    async def all_written():
        return await rows(svc) == len(evs)
    await eventually(all_written, "every event written")
    registry = svc.metrics.registry
    assert registry.get_sample_value("helicone_ingest_write_errors_total", {"stage": "analytics"}) == 1

    def samples(name: str) -> dict[tuple, float]:
        return {tuple(sorted(s.labels.items())): s.value for metric in registry.collect() for s in metric.samples
                if s.name == name}

    def tokens(provider, model, kind):
        return (("kind", kind), ("model", model), ("provider", provider))

    assert samples("helicone_ingest_tokens_total") == {
        tokens("openai", "gpt-4o-mini", "prompt"): 100, tokens("openai", "gpt-4o-mini", "completion"): 20,
        tokens("openai", "gpt-4o-mini", "cache_read"): 40,
        tokens("anthropic", "claude-3-5-haiku", "prompt"): 300, tokens("anthropic", "claude-3-5-haiku", "completion"): 50,
        tokens("anthropic", "claude-3-5-haiku", "cache_write"): 200,
        tokens("openai", "other", "prompt"): 7, tokens("openai", "other", "completion"): 3,
        tokens("custom", "gpt-4o", "prompt"): 5, tokens("custom", "gpt-4o", "completion"): 5,
    }
    cost = samples("helicone_ingest_cost_usd_total")
    assert cost.keys() == {(("model", "gpt-4o-mini"), ("provider", "openai")),
                           (("model", "claude-3-5-haiku"), ("provider", "anthropic")),
                           (("model", "gpt-4o"), ("provider", "custom"))}
    assert cost[(("model", "gpt-4o-mini"), ("provider", "openai"))] == pytest.approx(1.5e-5)
    assert cost[(("model", "claude-3-5-haiku"), ("provider", "anthropic"))] == pytest.approx(2.5e-4)
    assert cost[(("model", "gpt-4o"), ("provider", "custom"))] == pytest.approx(6.25e-5)
    # the counters add up to what the rows hold
    [totals] = await svc.analytics.query(
        "SELECT sum(prompt_tokens) AS p, sum(completion_tokens) AS c, sum(cost_usd) AS usd FROM {db}.request_log FINAL "
        "WHERE org_id = {org:String} SETTINGS output_format_json_quote_64bit_integers = 0", {"org": ORG})
    counted = samples("helicone_ingest_tokens_total")
    assert sum(v for k, v in counted.items() if ("kind", "prompt") in k) == totals["p"] == 412
    assert sum(v for k, v in counted.items() if ("kind", "completion") in k) == totals["c"] == 78
    assert sum(cost.values()) == pytest.approx(totals["usd"])


async def test_a_record_without_a_value_is_dead_lettered_and_the_events_after_it_are_written(ingest):
    """A Kafka record whose value is null (a tombstone: any producer of the topic can send one) is
    not an event: it goes to the dead-letter topic, and the events after it on the partition are
    written as usual (it used to raise TypeError in the consumer's batching and in decode)."""
    svc, _, bootstrap, topic = ingest
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        key = f"{ORG}/{uuid.uuid4()}".encode()
        await producer.send_and_wait(topic, None, key=key, partition=0)
    finally:
        await producer.stop()
    await produce(bootstrap, topic, [event() for _ in range(3)])

    async def written():
        return await rows(svc) == 3

    await eventually(written, "the events after the null record written", timeout=30)
    await eventually(lambda: _dead_letters(svc), "the null record dead-lettered", timeout=10)
    # the dead letter is the record as it came: its key (the identity, for a replay) and no value
    letter = await _the_dead_letter(bootstrap, topic)
    assert (letter.key, letter.value) == (key, None)
    assert dict(letter.headers)["x-helicone-error"].startswith(b"record has no value")


async def _dead_letters(svc: IngestService) -> bool:
    return (svc.metrics.registry.get_sample_value("helicone_ingest_dead_letters_total") or 0) == 1


async def _the_dead_letter(bootstrap: str, topic: str):
    """The one record of the topic's dead-letter topic."""
    consumer = AIOKafkaConsumer(topic + ".dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        [letter] = (await consumer.getmany(timeout_ms=5000)).popitem()[1]
    finally:
        await consumer.stop()
    return letter


async def test_a_dead_letter_keeps_its_record_key(ingest):
    """A dead letter is meant to be replayed once its cause is fixed: it keeps the record's key (the
    log identity "<org>/<request id>", which picks the partition), not only its value."""
    svc, _, bootstrap, topic = ingest
    key = f"{ORG}/{uuid.uuid4()}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\x00not an event", key=key, partition=0)
    finally:
        await producer.stop()
    await eventually(lambda: _dead_letters(svc), "the record dead-lettered", timeout=30)
    letter = await _the_dead_letter(bootstrap, topic)
    assert (letter.key, letter.value) == (key, b"\x00not an event")


async def test_a_dead_letter_says_why_where_it_came_from_and_when(ingest):
    """An operator looking at a dead letter must see why it is there, the record it was (topic, partition,
    offset) and when it was dead-lettered; it carried only the reason in words."""
    svc, _, bootstrap, topic = ingest
    await produce(bootstrap, topic, [event() for _ in range(2)])  # offsets 0 and 1 of partition 0
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"\x00not an event", key=f"{ORG}/{uuid.uuid4()}".encode(), partition=0)
    finally:
        await producer.stop()
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    await eventually(lambda: _dead_letters(svc), "the record dead-lettered", timeout=30)
    headers = dict((await _the_dead_letter(bootstrap, topic)).headers)
    assert headers["x-helicone-error-class"] in (b"EventError", b"DecodeError")
    assert (headers["x-helicone-original-topic"], headers["x-helicone-original-partition"],
            headers["x-helicone-original-offset"]) == (topic.encode(), b"0", b"2")
    at = dt.datetime.fromisoformat(headers["x-helicone-dead-lettered-at"].decode())
    assert before <= at <= dt.datetime.now(dt.timezone.utc)
    assert "x-helicone-replays" not in headers  # never replayed


async def test_a_large_undecodable_record_is_dead_lettered_and_the_events_after_it_are_written(ingest):
    """The producers send records of up to 4 MiB (the gateway's and the api's max_request_size): one
    that ingest must dead-letter is sent on as it came, however large, not retried forever (holding
    its partition) because ingest's own producer refuses records over 1 MB."""
    svc, _, bootstrap, topic = ingest
    future = event(response_created_at=None)
    future.schema_version = 2  # a newer producer's event, say: ingest cannot write it
    future.inline.response_body = b"x" * (1_200_000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        await producer.send_and_wait(topic, events.encode(future), key=events.message_key(future), partition=0)
        for ev in [event() for _ in range(3)]:
            await producer.send_and_wait(topic, events.encode(ev), key=events.message_key(ev), partition=0)
    finally:
        await producer.stop()

    async def written():
        return await rows(svc) == 3

    await eventually(lambda: _dead_letters(svc), "the large record dead-lettered", timeout=30)
    await eventually(written, "the events after the large record written", timeout=30)


async def test_an_event_whose_row_clickhouse_refuses_is_dead_lettered_and_its_partition_goes_on(ingest):
    """One row ClickHouse refuses for a value (here -1 in a UInt64 column) failed its batch's insert on every
    retry: the partition stood still for good. It now goes to the dead-letter topic, as its record with
    ClickHouse's reason, and the events around it, and after it, are written."""
    svc, analytics, bootstrap, topic = ingest
    evs = [event(model=f"m-{i}") for i in range(5)]
    analytics.refuse = evs[2].request_id
    await produce(bootstrap, topic, evs)
    await eventually(lambda: _dead_letters(svc), "the refused event dead-lettered", timeout=30)
    letter = await _the_dead_letter(bootstrap, topic)
    assert (events.decode(letter.value), letter.key) == (evs[2], events.message_key(evs[2]))
    headers = dict(letter.headers)
    assert headers["x-helicone-error"].startswith(b"ClickHouse refused its row: Code: 72.")
    # where it came from: the third record of the topic's partition for its key
    assert (headers["x-helicone-original-topic"], headers["x-helicone-original-offset"]) == (topic.encode(), b"2")
    assert headers["x-helicone-error-class"]
    await produce(bootstrap, topic, [event(model="after")])

    async def written():
        return await rows(svc) == 5

    await eventually(written, "the other events and the one after written", timeout=30)
