"""IngestService.decode and write_decoded: a write is retried until it succeeds; poison events go to the dead-letter topic."""

import asyncio
import datetime as dt
import uuid

from aiokafka import TopicPartition
from helicone_core import events
from helicone_core.bodies import LocalBodyStore
from helicone_ingest.app import IngestService
from helicone_ingest.batches import BatchConsumer
from helicone_ingest.settings import IngestSettings
from helicone_ingest.writer import BatchWriter


class FlakyAnalytics:
    def __init__(self, failures: int):
        self.failures = failures
        self.rows = []

    async def insert_values(self, table, names, rows):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("clickhouse down")
        self.rows.extend(dict(zip(names, row, strict=True)) for row in rows)


class FakeDlq:
    def __init__(self):
        self.sent = []

    async def send(self, value, headers, key=None):
        self.sent.append((value, headers))
        self.keys = [*getattr(self, "keys", []), key]
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


async def service_with_writer(tmp_path, analytics) -> IngestService:
    """An ingest service whose writer writes rows to `analytics` and bodies to a local store."""
    svc = IngestService(IngestSettings(data_dir=tmp_path, body_store="local", analytics_backend="chdb",
                                       retry_max_backoff=0.05, _env_file=None))
    bodies = LocalBodyStore(tmp_path / "bodies")
    await bodies.start()
    svc.writer = BatchWriter(analytics, bodies, svc.metadata, svc.metrics)
    return svc


def logged_event() -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=str(uuid.uuid4()), org_id=str(uuid.uuid4()))
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    return ev


async def test_a_batch_is_retried_until_written_and_poison_is_dead_lettered(tmp_path):
    analytics = FlakyAnalytics(failures=3)
    svc = await service_with_writer(tmp_path, analytics)
    ev = logged_event()
    dlq = FakeDlq()

    await asyncio.wait_for(svc.write_decoded(await svc.decode([b"\x00junk", events.encode(ev)]), dlq), 10)

    assert analytics.failures == 0
    assert [r["request_id"] for r in analytics.rows] == [ev.request_id]
    [(value, headers)] = dlq.sent
    assert value == b"\x00junk"
    assert headers["x-helicone-error"].startswith((b"not a RequestLogged", b"unsupported schema_version"))


async def test_a_batch_whose_preparation_fails_is_prepared_again_by_the_retried_write(tmp_path):
    analytics = FlakyAnalytics(failures=0)
    svc = await service_with_writer(tmp_path, analytics)
    prepare, calls = svc.writer.prepare, []

    def flaky_prepare(batch):
        calls.append(len(batch))
        if len(calls) <= 2:  # ahead of the write, then in the write's first try
            raise MemoryError("no room for the pack")
        return prepare(batch)

    svc.writer.prepare = flaky_prepare
    ev = logged_event()
    decoded = await svc.decode([events.encode(ev)])
    assert decoded[0] == [ev]  # the events themselves: write() prepares them under its retries
    await asyncio.wait_for(svc.write_decoded(decoded, FakeDlq()), 10)
    assert calls == [1, 1, 1]
    assert [r["request_id"] for r in analytics.rows] == [ev.request_id]


class FakeConsumer:
    """The part of Faust's consumer the offset guard uses."""

    def __init__(self, position: int, highwater: int):
        self.tp = TopicPartition("helicone.request-logged.v1", 0)
        self.pos, self.hw = position, highwater
        self._committed_offset = {self.tp: position}
        self._acked = {self.tp: [position - 1]}
        self._acked_index = {self.tp: {position - 1}}
        self._gap = {self.tp: object()}
        self.log_epoch = 0
        self.rewinds = {}
        self.seeks = []

    rewound = BatchConsumer.rewound  # the real bookkeeping, on this fake's log_epoch and rewinds

    def assignment(self):
        return {self.tp}

    async def position(self, tp):
        return self.pos

    def highwater(self, tp):
        return self.hw

    async def earliest_offsets(self, *tps):
        return {tp: 0 for tp in tps}

    async def seek(self, tp, offset):
        self.seeks.append(offset)
        self.pos = offset


class FakeFaust:
    def __init__(self, consumer):
        self.consumer = consumer


async def test_offset_guard_rewinds_only_a_position_stuck_past_the_log_end(tmp_path):
    svc = IngestService(IngestSettings(data_dir=tmp_path, body_store="local", analytics_backend="chdb", _env_file=None))
    live = FakeConsumer(position=40, highwater=40)
    svc.faust = FakeFaust(live)
    for _ in range(3):
        await svc._rewind_past_end()
    assert live.seeks == []  # at the end of a live log: nothing to do

    moving = FakeConsumer(position=41, highwater=40)  # a moment of position > end, then it moves on
    svc.faust, svc._past_end = FakeFaust(moving), {}
    await svc._rewind_past_end()
    moving.pos, moving.hw = 45, 44
    await svc._rewind_past_end()
    assert moving.seeks == []

    stuck = FakeConsumer(position=21, highwater=5)  # the log was recreated under the consumer
    svc.faust, svc._past_end = FakeFaust(stuck), {}
    await svc._rewind_past_end()
    assert stuck.seeks == []  # first sighting only
    await svc._rewind_past_end()
    assert stuck.seeks == [0]
    assert stuck._committed_offset[stuck.tp] is None and stuck.tp not in stuck._acked and stuck.tp not in stuck._gap
    assert stuck.log_epoch == 1  # batches fetched from the old log are neither written nor acknowledged
    assert stuck.rewinds == {stuck.tp: (1, 0)}  # a fetch under way goes back there at the latest (_unread)
    assert svc.metrics.registry.get_sample_value("helicone_ingest_offset_rewinds_total") == 1


async def test_an_event_clickhouse_cannot_store_does_not_hold_its_batch_forever(tmp_path):
    """A location event with a negative body size decodes and validates, but its row cannot be
    inserted (request_bytes is UInt64): the batch's write must not fail on every retry, holding
    the good events beside it and every later batch of the partition."""
    from helicone_core.analytics import ChdbStore

    analytics = ChdbStore(tmp_path / "chdb", "helicone")
    await analytics.init_schema()
    try:
        svc = await service_with_writer(tmp_path, analytics)
        good = logged_event()
        odd = logged_event()
        odd.location.request_key = f"orgs/{odd.org_id}/req"
        odd.location.response_key = f"orgs/{odd.org_id}/resp"
        odd.location.request_bytes = -1
        decoded = await svc.decode([events.encode(good), events.encode(odd)])
        await asyncio.wait_for(svc.write_decoded(decoded, FakeDlq()), 10)
        rows = await analytics.query("SELECT toString(request_id) AS id FROM {db}.request_log")
        assert {r["id"] for r in rows} == {good.request_id, odd.request_id}
    finally:
        await analytics.close()


async def test_the_local_body_store_is_swept_past_the_retention(tmp_path):
    import os
    import time

    bodies = LocalBodyStore(tmp_path / "bodies")
    svc = IngestService(IngestSettings(data_dir=tmp_path, body_store="local", analytics_backend="chdb", retention_days=30,
                                       _env_file=None), bodies=bodies)
    await bodies.start()
    await bodies.put("orgs/o/packs/old", b"old", "application/octet-stream")
    await bodies.put("orgs/o/packs/new", b"new", "application/octet-stream")
    old = time.time() - 31 * 86400
    os.utime(tmp_path / "bodies" / "orgs/o/packs/old", (old, old))
    sweep = asyncio.create_task(svc._sweep_bodies())  # start() runs it when retention_days is set
    try:
        for _ in range(200):
            if await bodies.get("orgs/o/packs/old") is None:
                break
            await asyncio.sleep(0.01)
        assert await bodies.get("orgs/o/packs/old") is None
        assert await bodies.get("orgs/o/packs/new") == b"new"
    finally:
        sweep.cancel()
        await asyncio.gather(sweep, return_exceptions=True)


async def test_a_retention_the_s3_bucket_does_not_enforce_on_bodies_is_warned_of_at_start(tmp_path, caplog):
    """With HELICONE_RETENTION_DAYS set, rows expired and bodies in S3 stayed forever unless the operator had
    added the bucket's lifecycle rule (README), and nothing said it was missing: prompts and answers kept past
    the retention without a word. Ingest checks the bucket at start and names what is missing."""
    import logging

    from helicone_core.bodies import S3BodyStore
    from pydantic import SecretStr

    from tests.support.moto_server import moto_server

    def rule(days, prefix="orgs/"):
        return {"Rules": [{"ID": "r", "Status": "Enabled", "Filter": {"Prefix": prefix}, "Expiration": {"Days": days}}]}

    with moto_server(tmp_path) as endpoint:
        bodies = S3BodyStore("bodies", endpoint, "us-east-1", True, SecretStr("test"), SecretStr("test"))
        await bodies.start()
        svc = IngestService(IngestSettings(data_dir=tmp_path, body_store="s3", analytics_backend="chdb", retention_days=30,
                                           _env_file=None), bodies=bodies)
        client = bodies._client
        try:
            for lifecycle, warned in [(None, "has no lifecycle rule expiring objects under orgs/"),
                                      (rule(90), "expires objects under orgs/ after 90 days"),
                                      (rule(30, prefix="other/"), "has no lifecycle rule expiring objects under orgs/"),
                                      (rule(30), None), (rule(7, prefix=""), None)]:
                if lifecycle is not None:
                    await client.put_bucket_lifecycle_configuration(Bucket="bodies", LifecycleConfiguration=lifecycle)
                caplog.clear()
                with caplog.at_level(logging.WARNING, logger="helicone.ingest"):
                    await svc._check_body_retention()
                said = [r.getMessage() for r in caplog.records if r.name == "helicone.ingest"]
                if warned is None:
                    assert said == [], (lifecycle, said)
                else:
                    assert len(said) == 1 and warned in said[0] and "HELICONE_RETENTION_DAYS 30" in said[0], (lifecycle, said)
        finally:
            await bodies.close()
