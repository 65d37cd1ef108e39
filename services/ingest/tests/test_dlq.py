"""The dead-letter topic's commands (`python -m helicone_ingest.dlq`, `helicone-stack dlq`) on a real broker
(Tansu) with a real ingest and chDB: list shows each dead letter; replay sends them back once their cause is
fixed, written once however often replayed, resumes where it stopped and does not loop a record for ever."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaProducer
from helicone_ingest import dlq
from helicone_ingest.app import IngestService
from helicone_runner.cli import main as stack_main

from .test_lag_and_usage import ORG, _the_dead_letter, event, eventually, produce, rows
from .test_lag_and_usage import ingest as _ingest

ingest = _ingest  # the fixture: an ingest on a fresh topic of the session's broker, writing to chDB


def dead_letters(svc: IngestService) -> float:
    return svc.metrics.registry.get_sample_value("helicone_ingest_dead_letters_total") or 0


async def send_raw(bootstrap: str, topic: str, value: bytes | None, key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def test_list_shows_each_dead_letter_with_its_reason_time_and_request_id(ingest):
    svc, _, bootstrap, topic = ingest
    junk_id = str(uuid.uuid4())
    await send_raw(bootstrap, topic, b"\x00not an event", f"{ORG}/{junk_id}".encode())
    future = event()
    future.schema_version = 99  # a newer producer's event: ingest cannot write it
    await produce(bootstrap, topic, [future])

    async def both():
        return dead_letters(svc) == 2

    await eventually(both, "both records dead-lettered", timeout=30)
    letters = await dlq.DeadLetterTopic(svc.settings).list()
    assert [(d.partition, d.offset, d.request_id, d.replays) for d in letters] == [(0, 0, junk_id, 0), (0, 1, future.request_id, 0)]
    assert "schema_version" in letters[1].reason and letters[1].error_class
    assert letters[0].origin == f"{topic}/0@0" and letters[0].time
    assert [d.offset for d in await dlq.DeadLetterTopic(svc.settings).list(from_offset=1)] == [1]
    assert len(await dlq.DeadLetterTopic(svc.settings).list(limit=1)) == 1


async def test_a_replay_once_the_cause_is_fixed_writes_the_dead_letters_once_however_often_replayed(ingest):
    svc, analytics, bootstrap, topic = ingest
    evs = [event(model=f"m-{i}") for i in range(4)]
    analytics.refuse = evs[1].request_id  # ClickHouse refuses its row: dead-lettered
    await produce(bootstrap, topic, evs)

    async def three_written():
        return await rows(svc) == 3

    await eventually(lambda: _one(svc), "the refused event dead-lettered", timeout=30)
    await eventually(three_written, "the three others written", timeout=30)
    analytics.refuse = None  # the cause fixed

    done = await dlq.DeadLetterTopic(svc.settings).replay()
    assert (done["replayed"], done["skipped"]) == (1, 0)

    async def four_written():
        return await rows(svc) == 4

    await eventually(four_written, "the replayed event written", timeout=30)
    # a replay of everything again (the event is already written): nothing counted twice
    assert (await dlq.DeadLetterTopic(svc.settings).replay(from_offset=0))["replayed"] == 1
    await produce(bootstrap, topic, [event(model="after")])

    async def five_written():
        return await rows(svc) == 5

    await eventually(five_written, "the event after the second replay written", timeout=30)
    found = await svc.analytics.query(
        "SELECT count() AS n, uniqExact(request_id) AS ids FROM {db}.request_log FINAL WHERE org_id = {org:String} "
        "SETTINGS output_format_json_quote_64bit_integers = 0", {"org": ORG})
    assert (found[0]["n"], found[0]["ids"]) == (5, 5)
    assert dead_letters(svc) == 1


async def _one(svc) -> bool:
    return dead_letters(svc) == 1


async def test_a_replay_resumes_where_it_stopped_and_gives_up_on_a_record_that_keeps_failing(ingest):
    """A record that fails again is dead-lettered again with its replay count: a second replay sends only the
    new dead letter (its group committed the first), and after max_replays the record is skipped, not looped."""
    svc, _, bootstrap, topic = ingest
    key = f"{ORG}/{uuid.uuid4()}".encode()
    await send_raw(bootstrap, topic, b"\x00still not an event", key)
    topic_of = dlq.DeadLetterTopic(svc.settings)
    for n in range(1, 3):
        async def dead_lettered(n=n):
            return dead_letters(svc) == n

        await eventually(dead_lettered, f"dead letter {n}", timeout=30)
        assert await topic_of.replay(max_replays=2) == {"replayed": 1, "skipped": 0, "group": svc.settings.consumer_group
                                                        + "-dlq-replay", "topic": topic}

    async def three():
        return dead_letters(svc) == 3

    await eventually(three, "dead letter 3", timeout=30)
    letters = await topic_of.list()
    assert [d.replays for d in letters] == [0, 1, 2]
    done = await topic_of.replay(max_replays=2)
    assert (done["replayed"], done["skipped"]) == (0, 1)
    assert (await topic_of.replay(max_replays=2))["skipped"] == 0  # committed past it: not seen again
    last = await _last_dead_letter(bootstrap, topic)
    assert (last.key, last.value) == (key, b"\x00still not an event")  # the original bytes, through every replay


async def _last_dead_letter(bootstrap, topic):
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic + ".dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        found = []
        while len(found) < 3:
            for records in (await consumer.getmany(timeout_ms=5000)).values():
                found += records
        return found[-1]
    finally:
        await consumer.stop()


async def test_helicone_stack_dlq_lists_and_replays_on_the_given_broker(ingest, monkeypatch, capsys, tmp_path):
    svc, _, bootstrap, topic = ingest
    rid = str(uuid.uuid4())
    await send_raw(bootstrap, topic, b"\x00junk", f"{ORG}/{rid}".encode())
    await eventually(lambda: _one(svc), "dead-lettered", timeout=30)
    assert (await _the_dead_letter(bootstrap, topic)).value == b"\x00junk"
    monkeypatch.setenv("HELICONE_KAFKA_TOPIC", topic)
    monkeypatch.setenv("HELICONE_KAFKA_DLQ_TOPIC", topic + ".dlq")
    monkeypatch.setenv("HELICONE_CONSUMER_GROUP", svc.settings.consumer_group)
    base = ["dlq", "--data-dir", str(tmp_path / "none"), "--kafka", bootstrap]
    # in a thread: the CLI runs its own event loop
    code = await asyncio.to_thread(stack_main, [*base, "list", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and f'"request_id": "{rid}"' in out
    assert await asyncio.to_thread(stack_main, [*base, "replay"]) == 0
    assert "replayed 1 dead letter(s)" in capsys.readouterr().out
    # with no --kafka and no stack on the data dir: says so, exit 3
    monkeypatch.delenv("HELICONE_KAFKA_BOOTSTRAP", raising=False)
    assert await asyncio.to_thread(stack_main, ["dlq", "--data-dir", str(tmp_path / "none"), "list"]) == 3
    assert "not running" in capsys.readouterr().err
