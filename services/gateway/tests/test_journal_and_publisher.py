import asyncio
import contextlib
import datetime as dt
import errno
import os
import stat
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from helicone_core import events
from helicone_core.kafka import PLAINTEXT
from helicone_core.metrics import ServiceMetrics
from helicone_gateway.journal import Journal, JournalInUse, encode_record
from helicone_gateway.publisher import EventPublisher
from helicone_gateway.settings import GatewaySettings
from helicone_runner.embedded import EmbeddedKafka

from tests.support.net import free_port
from tests.support.users import unprivileged


def _event(org: str = "o") -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=org)
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    return ev


def _rec(ev: events.RequestLogged) -> tuple[bytes, bytes]:
    return events.message_key(ev), events.encode(ev)


async def _until(cond, timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


def _sample(metrics: ServiceMetrics, name: str, labels: dict | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


# ---- the journal on its own ------------------------------------------------------------


def test_journal_survives_reopen_in_order_with_private_files(tmp_path):
    root = tmp_path / "journal"
    j = Journal(root, max_bytes=1 << 20, segment_bytes=200).open()
    recs = [(f"k{i}".encode(), bytes([i]) * 60) for i in range(6)]
    assert all(j.append(recs, inflight=False))
    assert len(j.segments) >= 2  # 200-byte segments roll over
    j.close()
    again = Journal(root, max_bytes=1 << 20, segment_bytes=200).open()
    assert list(again.iter_all()) == recs
    assert again.unacked_count() == 6
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    for seg in again.segments:
        assert stat.S_IMODE(os.stat(seg.path).st_mode) == 0o600
    again.close()


def test_a_torn_or_corrupt_tail_is_cut_and_the_rest_kept(tmp_path):
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    j.append([(b"a", b"first"), (b"b", b"second")], inflight=False)
    path = j.segments[-1].path
    j.close()
    with open(path, "ab") as f:
        f.write(encode_record(b"c", b"third")[:-2])  # killed mid-write
    again = Journal(tmp_path, max_bytes=1 << 20).open()
    assert list(again.iter_all()) == [(b"a", b"first"), (b"b", b"second")]
    assert again.cut_tails == 1
    again.close()
    # a flipped byte inside the last record: its CRC no longer matches
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    third = Journal(tmp_path, max_bytes=1 << 20).open()
    assert list(third.iter_all()) == [(b"a", b"first")]
    third.close()


@pytest.mark.parametrize("mask", [0o022, 0o277], ids=["umask022", "umask277"])
def test_a_journal_killed_mid_write_opens_again_whatever_the_umask(mask):
    """Its files are 0600 whatever the umask (helicone_core.filemodes): one created 0400 under an odd umask
    (0277) could not be opened for writing by the next run, whose start would fail on the lock file, or on
    cutting the torn tail a kill -9 left, at every restart."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # (under /tmp: a user other than root can reach it)
        root = Path(tmp) / "journal"
        old = os.umask(mask)
        try:
            with unprivileged(tmp):
                j = Journal(root, max_bytes=1 << 20).open()
                j.append([(b"a", b"first")], inflight=False, sync=True)
                os.write(j._fd, encode_record(b"b", b"second")[:-2])  # killed mid-write
                j.close()
                again = Journal(root, max_bytes=1 << 20).open()
                assert list(again.iter_all()) == [(b"a", b"first")] and again.cut_tails == 1
                again.close()
        finally:
            os.umask(old)
        assert {stat.S_IMODE(p.stat().st_mode) for p in [root / ".lock", *root.glob("*.seg")]} == {0o600}


def test_one_gateway_per_journal_directory(tmp_path):
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    with pytest.raises(JournalInUse, match="HELICONE_JOURNAL_DIR"):
        Journal(tmp_path, max_bytes=1 << 20).open()
    j.close()
    Journal(tmp_path, max_bytes=1 << 20).open().close()  # free again once closed


def test_trim_waits_for_the_consumer_commit_of_every_record(tmp_path):
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=100).open()
    refs = j.append([(b"k", b"x" * 40) for _ in range(4)], inflight=True)
    first = refs[0].segment
    assert first.sealed and first is not refs[-1].segment
    gen = j.generation
    for offset, ref in enumerate(refs):
        j.acked(ref, 0, offset, gen)
    first_max = first.max_offset[0]
    assert j.trim({0: first_max}, gen) == 0  # committed offset = next to read: not past it yet
    assert j.trim({0: first_max + 1}, gen + 1) == 0  # offsets read before a data loss count for nothing
    # a commit first seen above these records (carried over from a log the broker lost) proves nothing
    assert j.trim({0: first_max + 1}, gen, floor={0: first.min_offset[0] + 1}) == 0
    assert j.trim({0: first_max + 1}, gen, floor={0: first.min_offset[0]}) == 1
    assert first not in j.segments
    j.close()


def test_a_data_loss_makes_every_record_unsent_again(tmp_path):
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    refs = j.append([(b"k", b"a"), (b"k", b"b")], inflight=True)
    gen = j.generation
    j.acked(refs[0], 0, 7, gen)
    assert j.unacked_count() == 1
    j.forget_deliveries()
    j.acked(refs[1], 0, 8, gen)  # an ack from the old broker arriving late: ignored
    assert j.unacked_count() == 2 and refs[0].segment.max_offset == {}
    seg = j.pending_segments()[0]
    assert [j.claim(seg, i) is not None for i in range(2)] == [True, True]
    assert j.claim(seg, 0) is None  # already in flight
    j.close()


def test_a_log_reset_after_the_group_committed_everything_resends_only_what_was_never_acked(tmp_path):
    """A segment sealed by hold() can mix acknowledged events (the group has committed them) with
    events the hold kept back: trim_acked keeps it, and the log reset after it must send only the
    held ones again, not the whole segment."""
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    refs = j.append([(b"k%d" % i, b"x") for i in range(5)], inflight=True)
    gen = j.generation
    for offset, ref in enumerate(refs[:3]):
        j.acked(ref, 0, offset, gen)
    for ref in refs[3:]:
        j.failed(ref, gen)  # handed over after the hold began: never sent
    j.seal_active()
    assert j.trim_acked(gen) == 0  # not fully acknowledged: kept
    j.forget_deliveries()  # the runner recreated the topic
    assert j.unacked_count() == 2
    seg = j.pending_segments()[0]
    assert [i for i in range(5) if j.claim(seg, i) is not None] == [3, 4]
    for offset, ref in enumerate(refs[3:]):
        j.acked(ref, 0, offset, j.generation)
    assert j.trim({0: 2}, j.generation) == 1  # committed past the two sent again: the segment goes
    j.close()


def test_a_full_journal_evicts_what_kafka_holds_before_refusing_new_events(tmp_path):
    j = Journal(tmp_path, max_bytes=1024, segment_bytes=300).open()
    refs = j.append([(b"k", b"x" * 100) for _ in range(6)], inflight=True)
    assert all(refs)
    # nothing acknowledged: the next records do not fit and are refused, nothing is evicted
    assert j.append([(b"k", b"y" * 100) for _ in range(6)], inflight=False).count(None) >= 1
    assert j.evicted_segments == 0
    for i, ref in enumerate(refs):
        if ref is not None:
            j.acked(ref, 0, i, j.generation)
    ok = j.append([(b"k", b"z" * 100) for _ in range(3)], inflight=False)
    assert all(ok) and j.evicted_segments >= 1
    assert j.size_bytes <= 1024
    j.close()


def _disk_full(monkeypatch, under, partial: int = 0, skip: int = 0) -> None:
    """After `skip` more writes, the next write to a file under `under` fails as on a full disk, having
    written `partial` bytes."""
    real = os.write
    left = [skip, 1]

    def write(fd, data):
        if left[1] and os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
            if left[0]:
                left[0] -= 1
                return real(fd, data)
            left[1] = 0
            if partial:
                real(fd, bytes(data[:partial]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _resend_pass(j: Journal) -> list[bytes]:
    """What the publisher's resender sends: each pending segment read back, its records claimed by place."""
    return [data for seg in j.pending_segments() for index, (_, data) in enumerate(j.read(seg)) if j.claim(seg, index)]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("partial", [0, 7], ids=["nothing-written", "torn"])
def test_a_write_the_disk_refuses_leaves_nothing_behind(tmp_path, monkeypatch, partial):
    """A full disk fails one batch: its records are not journaled (None, counted in `failed`), and nothing of
    them stays in the counts or the file. So a record journaled once there is room again is where its index
    says (the resender finds it, the size matches the disk), and a restart recovers it (no torn record before it)."""
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    assert all(j.append([(b"k", b"first")], inflight=False))
    _disk_full(monkeypatch, tmp_path, partial)
    refused = j.append([(b"k", b"refused-1"), (b"k", b"refused-2")], inflight=True, sync=True)
    assert list(refused) == [None, None] and refused.failed == 2 and refused.error.errno == errno.ENOSPC
    monkeypatch.undo()
    (later,) = j.append([(b"k", b"later")], inflight=True, sync=True)
    assert later is not None
    assert j.size_bytes == sum(s.path.stat().st_size for s in j.segments)
    j.failed(later, j.generation)  # its send failed: the resender sends it again
    assert _resend_pass(j) == [b"first", b"later"]
    j.close()
    again = Journal(tmp_path, max_bytes=1 << 20).open()
    assert [data for _, data in again.iter_all()] == [b"first", b"later"] and again.cut_tails == 0
    again.close()


def test_a_segment_the_disk_refuses_to_begin_leaks_no_descriptor_and_keeps_what_was_written(tmp_path, monkeypatch):
    """A batch that fills its segment goes on in a new one; a full disk refusing the new segment keeps the
    records already written to the old one (journaled) and refuses the rest, leaving no file or descriptor
    behind, however often it happens."""
    one = len(encode_record(b"k", b"x" * 100))
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=len(b"HLJ1") + 2 * one).open()
    assert all(j.append([(b"k", b"x" * 100)], inflight=False))
    before = _open_fds()
    _disk_full(monkeypatch, tmp_path, skip=1)  # the first record's write goes, the new segment's header does not
    refs = j.append([(b"k", b"x" * 100)] * 2, inflight=False, sync=True)
    assert refs[0] is not None and refs[1:] == [None] and refs.failed == 1
    for _ in range(4):
        _disk_full(monkeypatch, tmp_path)
        refs = j.append([(b"k", b"y")], inflight=False, sync=True)
        assert list(refs) == [None] and refs.failed == 1
    monkeypatch.undo()
    assert _open_fds() == before - 1  # the sealed segment's descriptor is closed, and no new one is open
    assert [p.name for p in tmp_path.glob("*.seg")] == ["000000000001.seg"]
    assert j.append([(b"k", b"room again")], inflight=False)[0] is not None
    assert [data for _, data in j.iter_all()] == [b"x" * 100] * 2 + [b"room again"]
    j.close()


def test_a_failed_fsync_leaves_the_batch_journaled_and_says_so(tmp_path, monkeypatch):
    j = Journal(tmp_path, max_bytes=1 << 20).open()

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    refs = j.append([(b"k", b"a"), (b"k", b"b")], inflight=True, sync=True)
    monkeypatch.undo()
    assert all(refs) and refs.failed == 0 and refs.error.errno == errno.EIO
    assert [data for _, data in j.iter_all()] == [b"a", b"b"]
    j.close()


def test_a_seal_whose_fsync_fails_closes_its_segment(tmp_path, monkeypatch):
    """A disk failing every fsync (EIO): the watcher seals the active segment every segment_seconds, and each
    failed seal must still close its descriptor, or the gateway leaks one per seal until it runs out of them
    (and then cannot accept a connection). A batch cut at a failed seal leaves nothing of it behind."""
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    j.append([(b"k", b"before")], inflight=False, sync=True)
    before = _open_fds()

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    for i in range(5):
        with pytest.raises(OSError):
            j.seal_if_older(0)  # the watcher's seal (it logs the error and goes on)
        assert all(j.append([(b"k", b"x%d" % i)], inflight=False, sync=True))  # a new segment: journaled (and sent)
    assert _open_fds() <= before
    one = len(encode_record(b"k", b"y" * 100))
    j.segment_bytes = j.segments[-1].size + one  # the next batch fills the active segment: its seal fails
    refs = j.append([(b"k", b"y" * 100)] * 2, inflight=False, sync=True)
    assert list(refs) == [None, None] and refs.failed == 2
    monkeypatch.undo()
    assert _open_fds() <= before
    j.segment_bytes = 1 << 20
    assert j.size_bytes == sum(s.path.stat().st_size for s in j.segments)  # the cut batch is gone from the disk too
    j.close()
    again = Journal(tmp_path, max_bytes=1 << 20).open()
    assert [data for _, data in again.iter_all()] == [b"before"] + [b"x%d" % i for i in range(5)]
    again.close()


def test_a_close_whose_fsync_fails_still_releases_the_segment_and_the_lock(tmp_path, monkeypatch, caplog):
    """A disk failing fsync (EIO) at shutdown: close() logs it and still closes the segment and the lock, so the
    gateway's shutdown goes on and the next run (or another worker's hand-over) can take the journal."""
    before = _open_fds()
    j = Journal(tmp_path, max_bytes=1 << 20).open()
    j.append([(b"k", b"a")], inflight=False)  # written, not yet fsynced

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    j.close()
    monkeypatch.undo()
    assert not j.is_open and _open_fds() <= before
    assert "could not fsync the event journal" in caplog.text
    again = Journal(tmp_path, max_bytes=1 << 20).open()  # the lock is free
    assert list(again.iter_all()) == [(b"k", b"a")]
    again.close()


async def test_a_publisher_stop_completes_when_the_journal_cannot_fsync(tmp_path, monkeypatch):
    """stop() is the gateway's shutdown: an EIO from the journal's last fsync must not skip the rest of it."""
    pub, metrics = _publisher(tmp_path, "127.0.0.1:1", publish_timeout=0.5)
    await pub.start()
    pub.submit(_event)
    await _until(lambda: pub.journal.record_count == 1)

    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    await pub.stop()
    monkeypatch.undo()
    assert not pub.journal.is_open and pub._io._shutdown
    again = Journal(tmp_path / "journal", max_bytes=1 << 20).open()
    assert again.record_count == 1
    again.close()


# ---- the publisher ------------------------------------------------------------------------


def _publisher(tmp_path, bootstrap: str, topic: str = "t", **kw) -> tuple[EventPublisher, ServiceMetrics]:
    metrics = ServiceMetrics("gateway")
    journal = Journal(tmp_path / "journal", max_bytes=kw.pop("max_bytes", 1 << 24), segment_bytes=kw.pop("segment_bytes", 1 << 20))
    kw.setdefault("publish_timeout", 1.0)
    pub = EventPublisher(
        bootstrap=bootstrap, security=PLAINTEXT, topic=topic, journal=journal, metrics=metrics, consumer_group="ingest-" + topic,
        idempotent=False, **kw,
    )
    return pub, metrics


class _AckingProducer:
    """Stands in for the producer: each event sent on its own is acknowledged at once, at the next offset."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic, value, key=None, partition=None):
        self.sent.append(value)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(types.SimpleNamespace(partition=partition, offset=len(self.sent) - 1))
        return fut


@contextlib.asynccontextmanager
async def _publisher_by_hand(tmp_path, **kw):
    """A publisher driven step by step: its journal open, no task started, connected to an _AckingProducer.
    (publisher, metrics, producer)"""
    pub, metrics = _publisher(tmp_path, "127.0.0.1:1", **kw)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(pub._io, pub.journal.open)
    try:
        producer = pub._producer = _AckingProducer()
        pub._connected.set()
        yield pub, metrics, producer
    finally:
        await loop.run_in_executor(pub._io, pub.journal.close)
        pub._io.shutdown(wait=True)


async def test_after_batches_a_full_disk_refused_the_publisher_journals_and_resends_the_next_ones(tmp_path, monkeypatch, caplog):
    """Each refused event is counted as dropped (journal_error), the run of failures is logged once, and
    the events journaled once there is room again go out as usual."""
    async with _publisher_by_hand(tmp_path) as (pub, metrics, producer):
        await pub._append([(b"o/0", b"event-0")], send=False)  # journaled, unsent (a stop)
        for _ in range(3):
            _disk_full(monkeypatch, tmp_path / "journal")
            await pub._append([(b"o/a", b"refused")], send=True)
            monkeypatch.undo()
        assert _sample(metrics, "helicone_gateway_events_dropped_total", {"reason": "journal_error"}) == 3
        assert _sample(metrics, "helicone_gateway_events_dropped_total", {"reason": "journal_full"}) == 0
        assert sum("could not append to the event journal" in r.getMessage() for r in caplog.records) == 1
        pub._connected.clear()
        await pub._append([(b"o/b", b"event-b")], send=True)  # the broker is away: it waits in the journal
        assert "the event journal works again" in caplog.text
        pub._connected.set()
        await pub._resend_pending(asyncio.get_running_loop())
        assert producer.sent == [b"event-0", b"event-b"]


async def test_a_resend_that_waited_for_a_permit_across_a_log_reset_is_sent_once(tmp_path):
    """The resender claimed a record, then waited for a permit while the broker lost its log: the record
    goes out in the new generation's pass only, not also from the old one's."""
    async with _publisher_by_hand(tmp_path, max_in_flight=1) as (pub, metrics, producer):
        loop = asyncio.get_running_loop()
        pub.journal.append([(b"o/1", b"event-1")], inflight=False, sync=True)  # journaled while held, say
        await pub._inflight.acquire()  # the only permit: a send still waiting for its answer
        old_pass = asyncio.ensure_future(pub._resend_segment(loop, pub.journal.pending_segments()[0]))
        await asyncio.sleep(0.05)  # it claimed the record and waits for the permit
        await pub.log_reset()  # generation 1: the record is unsent again
        pub._inflight.release()  # the earlier send's answer gives the permit back
        await old_pass
        await pub._resend_pending(loop)
        await asyncio.sleep(0)  # the acknowledgement's callback
        assert producer.sent == [b"event-1"] and pub.journal.unacked_count() == 0


async def test_events_stay_in_the_journal_while_kafka_is_unreachable(tmp_path):
    pub, metrics = _publisher(tmp_path, "127.0.0.1:1", publish_timeout=0.5)
    await pub.start()
    try:
        sent = [_event() for _ in range(3)]
        for ev in sent:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == 3)
        stored = {events.decode(data).request_id for _, data in pub.journal.iter_all()}
        assert stored == {ev.request_id for ev in sent}
        assert _sample(metrics, "helicone_gateway_journal_unacked_events") == 3
    finally:
        await pub.stop()


async def test_a_failing_event_builder_does_not_stop_the_worker(tmp_path):
    pub, _ = _publisher(tmp_path, "127.0.0.1:1")
    await pub.start()
    try:
        pub.submit(lambda: 1 / 0)
        pub.submit(_event)
        await _until(lambda: pub.journal.record_count == 1)
    finally:
        await pub.stop()


async def test_stop_journals_whatever_is_still_queued(tmp_path):
    pub, _ = _publisher(tmp_path, "127.0.0.1:1")
    for _ in range(5):  # not started: nothing consumes the queue until stop()
        pub.submit(_event)
    await pub.stop(drain_timeout=0.1)
    j = Journal(tmp_path / "journal", max_bytes=1 << 20).open()
    assert j.record_count == 5
    j.close()


async def test_events_of_a_light_load_share_one_journal_write(tmp_path):
    """At light load the worker waits journal_linger_ms for company: events submitted within it
    are journaled as one batch (one write and fsync), not one each."""
    pub, _ = _publisher(tmp_path, "127.0.0.1:1", journal_linger_ms=100)
    batches = []
    append = pub.journal.append
    pub.journal.append = lambda records, **kw: batches.append(len(records)) or append(records, **kw)
    await pub.start()
    try:
        for _ in range(3):
            pub.submit(_event)
            await asyncio.sleep(0.01)
        await _until(lambda: pub.journal.record_count == 3)
        assert batches == [3]
    finally:
        await pub.stop()


async def test_at_light_load_other_tasks_run_between_the_builds_of_a_batch(tmp_path):
    """A lingered batch is built one event per loop iteration: a request arriving meanwhile waits
    for one build, not for the whole batch."""
    pub, _ = _publisher(tmp_path, "127.0.0.1:1", journal_linger_ms=50)
    ticks, seen = [0], []

    async def ticker():
        while True:
            ticks[0] += 1
            await asyncio.sleep(0)

    def builder():
        seen.append(ticks[0])
        return _event()

    await pub.start()
    running = asyncio.create_task(ticker())
    try:
        for _ in range(3):
            pub.submit(builder)
            await asyncio.sleep(0.005)  # the worker finds the queue empty: light load, it lingers
        await _until(lambda: pub.journal.record_count == 3)
        assert len(seen) == 3 and seen[0] < seen[1] < seen[2]
    finally:
        running.cancel()
        await pub.stop()


async def test_stop_journals_events_the_worker_holds_while_lingering(tmp_path):
    """An event the worker took off the queue and holds for company is journaled by stop() even
    when the worker is cancelled first (drain timeout shorter than the linger)."""
    pub, _ = _publisher(tmp_path, "127.0.0.1:1", journal_linger_ms=100)
    await pub.start()
    pub.submit(_event)
    await asyncio.sleep(0.01)  # the worker has taken it and lingers
    assert pub._queue.empty() and pub.journal.record_count == 0
    await pub.stop(drain_timeout=0)
    j = Journal(tmp_path / "journal", max_bytes=1 << 20).open()
    assert j.record_count == 1
    j.close()


async def _consume(bootstrap: str, topic: str, want: int, group: str | None = None, timeout: float = 30) -> dict[bytes, str]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    got: dict[bytes, str] = {}
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(got) < want and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=250)).values():
                got.update((r.key, events.decode(r.value).request_id) for r in records)
        if group:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_left_over_events_are_resent_at_start_and_trimmed_once_ingest_commits(tmp_path, kafka_bootstrap):
    """One identity, one partition: the message key is "<org>/<request id>" on both paths."""
    topic = "journal-" + uuid.uuid4().hex[:8]
    old, live = _event(), _event()
    previous = Journal(tmp_path / "journal", max_bytes=1 << 20).open()
    previous.append([_rec(old)], inflight=False)  # left by a gateway killed before Kafka acknowledged it
    previous.close()
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, check_interval=0.1, segment_seconds=0.2)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        pub.submit(lambda: live)
        got = await _consume(kafka_bootstrap, topic, 2, group=pub.consumer_group)
        assert got == {f"o/{old.request_id}".encode(): old.request_id, f"o/{live.request_id}".encode(): live.request_id}
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "resend"}) == 1
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == 1
        # the group committed past both: the journal empties
        await _until(lambda: pub.journal.record_count == 0)
        assert _sample(metrics, "helicone_gateway_journal_trimmed_segments_total") >= 2
    finally:
        await pub.stop()


async def test_nothing_is_trimmed_before_the_consumer_group_commits(tmp_path, kafka_bootstrap):
    topic = "journal-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, check_interval=0.1, segment_seconds=0.1)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        for _ in range(20):
            pub.submit(_event)
        await _until(lambda: pub.journal.unacked_count() == 0 and pub.journal.record_count == 20)
        await asyncio.sleep(1.0)  # several checks, segments sealed, but no commit yet
        assert pub.journal.record_count == 20
        await _consume(kafka_bootstrap, topic, 20, group=pub.consumer_group)
        await _until(lambda: pub.journal.record_count == 0)
    finally:
        await pub.stop()


@pytest.mark.parametrize("traffic_after_restart", [True, False], ids=["new-traffic", "no-traffic"])
async def test_events_a_restarted_broker_forgot_are_sent_again(tmp_path, traffic_after_restart):
    """The memory-only broker acknowledged events, then was killed: it comes back empty and the
    journal sends everything again, whether or not new traffic arrives first."""
    broker = EmbeddedKafka("127.0.0.1", free_port(), tmp_path / "kafka.log")
    bootstrap = broker.start()
    topic = "journal-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, bootstrap, topic, check_interval=0.2)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        before = [_event() for _ in range(30)]
        for ev in before:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == 30 and pub.journal.unacked_count() == 0)
        broker.proc.kill()  # SIGKILL: all it held in memory is gone
        broker.proc.wait(5)
        broker.start()
        after = [_event()] if traffic_after_restart else []
        for ev in after:
            pub.submit(lambda ev=ev: ev)
        want = {ev.request_id for ev in before + after}
        got = await _consume(bootstrap, topic, len(want), timeout=60)
        assert set(got.values()) == want
        losses = sum(
            _sample(metrics, "helicone_gateway_broker_data_losses_total", {"reason": r})
            for r in ("offset_regressed", "log_emptied", "log_end_regressed", "commit_regressed")
        )
        assert losses >= 1
    finally:
        await pub.stop()
        broker.stop()


async def test_offsets_checked_against_the_real_broker(tmp_path, kafka_bootstrap):
    """The watcher's two reads (log end, group commit) work against the embedded broker."""
    topic = "journal-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        pub.submit(_event)
        await _until(lambda: pub.journal.unacked_count() == 0 and pub.journal.record_count == 1)
        tp = TopicPartition(topic, 0)
        assert (await pub._offsets.end_offsets([tp]))[tp] == 1
        got = await pub._admin.list_consumer_group_offsets(pub.consumer_group, partitions=[tp])
        assert got[tp].offset == -1  # nobody committed yet
    finally:
        await pub.stop()


async def test_hold_stops_sending_until_release_and_returns_with_nothing_in_flight(tmp_path, kafka_bootstrap):
    topic = "hold-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        before = [_event() for _ in range(50)]
        for ev in before:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == 50)
        await pub.hold()
        # hold() returned: everything handed to the producer is acknowledged or back to unsent
        assert pub._inflight._value == pub._max_in_flight
        direct = _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"})
        during = [_event() for _ in range(20)]
        for ev in during:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == 70)
        await asyncio.sleep(0.5)
        published = sum(_sample(metrics, "helicone_gateway_events_published_total", {"path": p}) for p in ("direct", "resend"))
        assert published == direct  # nothing handed over while held: the 20 wait in the journal
        assert pub.journal.unacked_count() == 70 - direct
        pub.release()
        got = await _consume(kafka_bootstrap, topic, 70)
        assert set(got.values()) == {ev.request_id for ev in before + during}
    finally:
        await pub.stop()


async def test_a_graceful_stop_sends_what_the_journal_holds_unsent(tmp_path, kafka_bootstrap):
    """Events journaled while held (a log reset under way) and released just before a graceful stop
    are handed to the broker by stop() itself, not left to the resender it cancels: the embedded
    runner's stop waits for ingest to write what the broker holds, and nothing waits in the journal."""
    topic = "stop-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    stopped = False
    try:
        await _until(lambda: pub.connected)
        await pub.hold()
        held = [_event() for _ in range(200)]
        for ev in held:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == 200)
        pub.release()
        await pub.stop()
        stopped = True
        got = await _consume(kafka_bootstrap, topic, 200, timeout=10)
        assert set(got.values()) == {ev.request_id for ev in held}
    finally:
        if not stopped:
            await pub.stop()


async def test_committed_to_end_trims_what_was_acknowledged_before_the_hold(tmp_path, kafka_bootstrap):
    topic = "hold-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        for _ in range(10):
            pub.submit(_event)
        await _until(lambda: pub.journal.record_count == 10 and pub.journal.unacked_count() == 0)
        await pub.hold()
        waiting = _event()
        pub.submit(lambda: waiting)
        await _until(lambda: pub.journal.record_count == 11)
        await pub.committed_to_end()
        assert [events.decode(data).request_id for _, data in pub.journal.iter_all()] == [waiting.request_id]
        await pub.log_reset()
        pub.release()
        got = await _consume(kafka_bootstrap, topic, 11)
        assert waiting.request_id in got.values()
    finally:
        await pub.stop()


async def test_a_recycle_that_catches_a_batch_mid_journal_resends_only_the_held_events(tmp_path, kafka_bootstrap, monkeypatch):
    """hold() while the worker is journaling a batch: that batch lands in the segment hold() seals
    next to events the broker acknowledged and the group committed, but it is not sent. After
    committed_to_end() and log_reset() only that batch goes out again (once), never the
    acknowledged events beside it (ingest had written them: each resend was a duplicate)."""
    import threading

    topic = "recycle-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        acked = [_event() for _ in range(10)]
        for ev in acked:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == 10 and pub.journal.unacked_count() == 0)
        await _consume(kafka_bootstrap, topic, 10, group=pub.consumer_group)  # ingest commits them

        loop = asyncio.get_running_loop()
        in_append, go = asyncio.Event(), threading.Event()
        real_append = pub.journal.append

        def append_caught_by_the_hold(records, **kw):  # the journal thread, mid-append
            loop.call_soon_threadsafe(in_append.set)
            go.wait(5)
            return real_append(records, **kw)

        monkeypatch.setattr(pub.journal, "append", append_caught_by_the_hold)
        caught = [_event() for _ in range(5)]
        for ev in caught:
            pub.submit(lambda ev=ev: ev)
        await asyncio.wait_for(in_append.wait(), 5)  # the worker decided to send this batch
        holding = asyncio.create_task(pub.hold())
        await asyncio.sleep(0.05)  # hold() stopped sending; its seal waits behind the append
        go.set()
        await asyncio.wait_for(holding, 10)
        monkeypatch.undo()
        assert pub.journal.record_count == 15 and pub.journal.unacked_count() == 5
        assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "held"}) == 5

        await pub.committed_to_end()
        await pub.log_reset()
        pub.release()
        await _until(lambda: pub.journal.unacked_count() == 0)
        await asyncio.sleep(0.5)  # a duplicate would have been sent by now
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "resend"}) == 5
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        keys: list[bytes] = []
        try:
            deadline = loop.time() + 30
            while len(keys) < 15 and loop.time() < deadline:
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    keys.extend(r.key for r in records)
            for records in (await consumer.getmany(timeout_ms=1000)).values():  # and nothing after them
                keys.extend(r.key for r in records)
        finally:
            await consumer.stop()
        assert sorted(keys) == sorted(events.message_key(ev) for ev in acked + caught)  # each exactly once
    finally:
        await pub.stop()


async def test_events_stay_on_the_configured_partitions_when_the_topic_has_more(tmp_path, kafka_bootstrap):
    """A restarted broker may auto-create the topic with its own partition count before anyone
    creates it properly; ingest reads the configured partitions, so the gateway writes only to them."""
    from helicone_core.kafka import ensure_topics

    topic = "parts-" + uuid.uuid4().hex[:8]
    await ensure_topics(kafka_bootstrap, [topic], 4, 1, security=PLAINTEXT)
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, partitions=1)
    await pub.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None)
    try:
        await _until(lambda: pub.connected)
        for _ in range(40):
            pub.submit(_event)
        await _until(lambda: pub.journal.record_count == 40 and pub.journal.unacked_count() == 0)
        await consumer.start()
        partitions: list[int] = []
        while len(partitions) < 40:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                partitions += [tp.partition] * len(records)
        assert set(partitions) == {0}
    finally:
        await consumer.stop()
        await pub.stop()


def test_a_batch_is_one_write_and_one_fsync(tmp_path, monkeypatch):
    """Group commit: a batch of events costs one write and one fsync, and is on disk when append returns."""
    calls = {"write": 0, "fsync": 0}
    real_write, real_fsync = os.write, os.fsync
    j = Journal(tmp_path, max_bytes=1 << 24).open()
    j.append([(b"warm", b"up")], inflight=False, sync=True)  # the segment file, its header and its name are on disk

    def write(fd, data):
        calls["write"] += 1
        return real_write(fd, data)

    def fsync(fd):
        calls["fsync"] += 1
        return real_fsync(fd)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    refs = j.append([(f"k{i}".encode(), b"x" * 300) for i in range(200)], inflight=True, sync=True)
    assert all(refs) and calls == {"write": 1, "fsync": 1}
    j.append([(b"k", b"v")], inflight=False)  # without sync: written now, fsynced on the timer
    assert calls == {"write": 2, "fsync": 1}
    monkeypatch.undo()
    j.close()


def test_a_new_segment_is_named_on_disk_before_its_first_batch_returns(tmp_path, monkeypatch):
    """The directory is fsynced after the first batch of each new segment (its records fsynced in a file
    that no directory names yet would be lost with a power loss), not after every batch."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    one = len(encode_record(b"k", b"x" * 100))
    j = Journal(tmp_path, max_bytes=1 << 20, segment_bytes=len(b"HLJ1") + 2 * one).open()
    monkeypatch.setattr(os, "fsync", fsync)
    j.append([(b"k", b"x" * 100)], inflight=False, sync=True)
    j.append([(b"k", b"x" * 100)], inflight=False, sync=True)
    assert synced == [str(tmp_path / "000000000001.seg"), str(tmp_path), str(tmp_path / "000000000001.seg")]
    synced.clear()
    j.append([(b"k", b"x" * 100)], inflight=False, sync=True)  # the segment is full: a new one
    assert synced == [str(tmp_path / "000000000001.seg"), str(tmp_path / "000000000002.seg"), str(tmp_path)]
    synced.clear()
    j.append([(b"k", b"y")], inflight=False)  # without sync: the watcher's sync() names it...
    j.seal_active()
    j.append([(b"k", b"z")], inflight=False)  # ...a new segment, not fsynced by this append
    j.sync()
    assert synced == [str(tmp_path / "000000000002.seg"), str(tmp_path / "000000000003.seg"), str(tmp_path)]
    monkeypatch.undo()
    j.close()


async def test_an_overflowing_queue_still_sends_every_event_at_once(tmp_path, kafka_bootstrap):
    """Past the queue's size events are built at once, but still journaled and sent directly in
    one batch: nothing waits for the resender while the broker is up."""
    topic = "overflow-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, queue_size=4)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(300)]
        for ev in sent:  # one loop iteration: the worker cannot drain the queue in between
            pub.submit(lambda ev=ev: ev)
        got = await _consume(kafka_bootstrap, topic, len(sent))
        assert set(got.values()) == {ev.request_id for ev in sent}
        await _until(lambda: _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == len(sent))
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "resend"}) == 0
        for reason in ("broker_down", "held", "send_failed", "stopping"):
            assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": reason}) == 0
        assert pub.journal.record_count == len(sent)  # journaled all the same, until ingest commits
    finally:
        await pub.stop()


async def test_events_journaled_while_kafka_is_down_are_counted_as_spooled(tmp_path):
    pub, metrics = _publisher(tmp_path, "127.0.0.1:1", publish_timeout=0.5)
    await pub.start()
    try:
        for _ in range(3):
            pub.submit(_event)
        await _until(lambda: pub.journal.record_count == 3)
        assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "broker_down"}) == 3
    finally:
        await pub.stop()


def test_acks_do_not_wait_for_an_fsync_in_progress(tmp_path, monkeypatch):
    """The loop records acks while the journal's thread is in a slow fsync: a slow disk must not
    stall request handling."""
    import threading
    import time

    j = Journal(tmp_path, max_bytes=1 << 24).open()
    (ref,) = j.append([(b"k", b"first")], inflight=True)
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        in_fsync.set()
        release.wait(5)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer = threading.Thread(target=lambda: j.append([(b"k2", b"second")], inflight=True, sync=True))
    writer.start()
    try:
        assert in_fsync.wait(5)
        t0 = time.monotonic()
        j.acked(ref, 0, 0, j.generation)
        assert j.unacked_count() == 1
        assert time.monotonic() - t0 < 0.5
    finally:
        release.set()
        writer.join(5)
        monkeypatch.undo()
        j.close()


async def test_events_sent_as_record_batches_are_acked_with_the_offsets_kafka_gave_them(tmp_path, kafka_bootstrap):
    """Under load the publisher hands events to Kafka as one record batch per partition
    (several at once): every event lands once, on its key's partition, and the
    journal records for each the very offset Kafka gave it (what trimming waits for ingest to pass)."""
    from helicone_core.kafka import ensure_topics

    topic = "batches-" + uuid.uuid4().hex[:8]
    await ensure_topics(kafka_bootstrap, [topic], 3, 1, security=PLAINTEXT)
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, partitions=3)
    keys: dict[tuple[int, int], bytes] = {}  # (segment, index) -> key, as journaled
    acks: dict[bytes, tuple[int, int]] = {}  # key -> (partition, offset), as the journal recorded them
    append, acked = pub.journal.append, pub.journal.acked

    def spy_append(records, **kw):
        refs = append(records, **kw)
        keys.update(((ref.segment.seq, ref.index), key) for ref, (key, _) in zip(refs, records, strict=True) if ref)
        return refs

    def spy_acked(ref, partition, offset, generation):
        acks[keys[(ref.segment.seq, ref.index)]] = (partition, offset)
        acked(ref, partition, offset, generation)

    pub.journal.append, pub.journal.acked = spy_append, spy_acked
    await pub.start()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None)
    try:
        await _until(lambda: pub.connected)
        sent = [_event(org=f"org{i % 7}") for i in range(160)]
        for ev in sent:  # one loop iteration: the worker takes them as one batch
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: pub.journal.record_count == len(sent) and pub.journal.unacked_count() == 0)
        await consumer.start()
        landed: dict[bytes, tuple[int, int]] = {}
        while len(landed) < len(sent):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for r in records:
                    assert r.key not in landed, "an event landed twice"
                    landed[r.key] = (tp.partition, r.offset)
        assert acks == landed
        assert len({p for p, _ in landed.values()}) > 1  # several partitions, one batch each
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == len(sent)
    finally:
        await consumer.stop()
        await pub.stop()


async def test_at_light_load_a_produce_request_carries_20_ms_of_events(tmp_path, kafka_bootstrap):
    """Every event is on disk (the journal) before the producer sees it, so at light load the
    gateway's producer lets a request wait for company (HELICONE_KAFKA_LINGER_MS, default 20):
    events a few ms apart, journaled every 5 ms or so, reach Kafka in at most one produce request per
    20 ms, not one per journal batch. A slow machine only makes the requests fewer."""
    topic = "linger-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=GatewaySettings.model_fields["kafka_linger_ms"].default)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        client = pub._producer.client
        produce_requests = []
        send = client.send

        async def counting_send(node_id, request, **kw):
            if type(request).__name__.startswith("ProduceRequest"):
                produce_requests.append(request)
            return await send(node_id, request, **kw)

        client.send = counting_send
        n, started = 0, time.monotonic()
        while time.monotonic() - started < 0.3:
            pub.submit(_event)
            n += 1
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - started
        await _until(lambda: pub.journal.record_count == n and pub.journal.unacked_count() == 0)
        assert len(produce_requests) <= elapsed / 0.020 + 2, (len(produce_requests), n, elapsed)
    finally:
        await pub.stop()


async def _read_all(bootstrap: str, topic: str, want: int, settle: float = 1.0) -> list[str]:
    """Every record on the topic (duplicates kept): read until `want` arrived and `settle` s more passed."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    got: list[str] = []
    try:
        loop = asyncio.get_running_loop()
        deadline, quiet_from = loop.time() + 30, None
        while loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got += [events.decode(r.value).request_id for r in records]
            if len(got) >= want:
                quiet_from = quiet_from or loop.time()
                if loop.time() - quiet_from >= settle:
                    break
    finally:
        await consumer.stop()
    return got


async def test_at_light_load_journal_batches_share_one_record_batch_per_linger(tmp_path, kafka_bootstrap):
    """Events a few ms apart are journaled in several small batches; they reach the producer as one
    record batch per linger_ms (one future, one callback on the loop for all of them), not one send()
    per event (a future and a callback each: at c=1 the callbacks of 20 ms of events ran back to back
    on the loop, up to 0.6 ms, and the c=1 p99 overhead was 0.4-0.7 ms higher)."""
    topic = "lingering-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=100, journal_linger_ms=5)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        producer = pub._producer
        calls = {"send": 0, "send_batch": 0}
        for name in calls:
            real = getattr(producer, name)

            async def counted(*a, _real=real, _name=name, **kw):
                calls[_name] += 1
                return await _real(*a, **kw)

            setattr(producer, name, counted)
        sent, started = [], time.monotonic()
        while time.monotonic() - started < 0.3:
            sent.append(_event())
            pub.submit(lambda ev=sent[-1]: ev)
            await asyncio.sleep(0.002)
        elapsed = time.monotonic() - started
        await _until(lambda: pub.journal.record_count == len(sent) and pub.journal.unacked_count() == 0)
        assert calls["send"] == 0
        assert 1 <= calls["send_batch"] <= elapsed / 0.100 + 2, (calls, len(sent), elapsed)
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == len(sent)
        assert sorted(await _read_all(kafka_bootstrap, topic, len(sent), settle=0.2)) == sorted(ev.request_id for ev in sent)
    finally:
        await pub.stop()


async def test_a_hold_does_not_wait_for_a_lingering_record_batch_whose_events_go_out_after_release(tmp_path, kafka_bootstrap):
    """hold() returns once nothing handed over is unacknowledged; a record batch still waiting for
    company was not handed over: its events go back to the journal at once (spooled as held) instead
    of the hold waiting out the linger, and after release() each reaches Kafka once."""
    topic = "lingerhold-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=3_000, journal_linger_ms=0)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(5)]
        for ev in sent:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: sum(len(o.taken) for o in pub._lingering.values()) == len(sent))
        await asyncio.wait_for(pub.hold(), 1)  # not the 3 s linger
        assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "held"}) == len(sent)
        assert pub._lingering == {}
        pub.release()
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, len(sent), settle=0.3)) == sorted(ev.request_id for ev in sent)
    finally:
        await pub.stop()


class _GatedProducer:
    """The real producer, but the broker's answers to record batches wait until `gate` is set (in-flight
    permits stay taken until then)."""

    def __init__(self, real) -> None:
        self.real, self.gate = real, asyncio.Event()

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def send_batch(self, batch, topic, *, partition):
        answer = await self.real.send_batch(batch, topic, partition=partition)

        async def gated():
            await self.gate.wait()
            return await answer

        return asyncio.ensure_future(gated())


def _lingering_events(pub: EventPublisher) -> int:
    return sum(len(o.taken) for o in pub._lingering.values())


@contextlib.asynccontextmanager
async def _third_waits_for_a_permit(tmp_path, bootstrap: str, name: str):
    """A connected publisher with two in-flight permits: two events sent, the broker's answers held back
    by a gate, and a third event waiting for a permit: (publisher, metrics, topic, events, gated producer);
    stopped on the way out."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    pub, metrics = _publisher(tmp_path, bootstrap, topic, linger_ms=1_500, journal_linger_ms=0, max_in_flight=2)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        gated = pub._producer = _GatedProducer(pub._producer)
        sent = [_event() for _ in range(3)]
        for ev in sent[:2]:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: _lingering_events(pub) == 2)
        pub.submit(lambda: sent[2])  # no permit left: the two go, and their answers wait for the gate
        await _until(lambda: pub.journal.record_count == 3 and not pub._lingering)
        await asyncio.sleep(0.05)  # the worker waits for a permit
        yield pub, metrics, topic, sent, gated
    finally:
        await pub.stop()


@contextlib.asynccontextmanager
async def _events_lingering(tmp_path, bootstrap: str, name: str, count: int = 3):
    """A connected publisher (on a topic of its own) whose `count` events wait in an open record
    batch with a long linger: (publisher, metrics, topic, events); stopped on the way out."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    pub, metrics = _publisher(tmp_path, bootstrap, topic, linger_ms=5_000, journal_linger_ms=0)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(count)]
        for ev in sent:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: _lingering_events(pub) == count)
        yield pub, metrics, topic, sent
    finally:
        await pub.stop()


async def test_permits_running_short_send_the_open_record_batches_at_once(tmp_path, kafka_bootstrap):
    """Open record batches hold in-flight permits while they wait for company. When the permits run
    short they go at once: the worker does not wait out their linger (the events behind it would not
    even be journaled meanwhile)."""
    topic = "lingershort-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=3_000, journal_linger_ms=0, max_in_flight=2)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(4)]
        for ev in sent[:2]:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: _lingering_events(pub) == 2)  # both permits
        pub.submit(lambda: sent[2])
        await _until(lambda: pub.journal.record_count == 3)
        started = time.monotonic()
        pub.submit(lambda: sent[3])  # journaled once the worker is done with the one before
        await _until(lambda: pub.journal.record_count == 4 and _lingering_events(pub) == 2, timeout=10)
        assert time.monotonic() - started < 1.5  # not the 3 s linger
        assert {ev.request_id for ev in sent[:2]} <= set(await _read_all(kafka_bootstrap, topic, 2, settle=0.2))
    finally:
        await pub.stop()


async def test_a_hold_does_not_wait_for_a_record_batch_begun_while_it_held(tmp_path, kafka_bootstrap):
    """An event still waiting for an in-flight permit when hold() begins gets one before the hold does;
    it is not left to linger (holding that permit, so the hold would wait out the linger) but goes
    back to the journal at once, and out after release()."""
    async with _third_waits_for_a_permit(tmp_path, kafka_bootstrap, "lingerheld") as (pub, metrics, topic, sent, gated):
        hold = asyncio.ensure_future(pub.hold())
        await asyncio.sleep(0.05)
        gated.gate.set()  # the answers give back the permits: the waiting event's first, then the hold's
        await asyncio.wait_for(hold, 1)
        assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "held"}) == 1
        pub.release()
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, 3, settle=0.3)) == sorted(ev.request_id for ev in sent)


async def test_a_lost_broker_gives_a_lingering_record_batch_back_at_once(tmp_path, kafka_bootstrap):
    """The producer replaced after a failure: events waiting in an open record batch go back to the
    journal (spooled as broker_down, their permits back) at the disconnect, not at their linger's end,
    and reach Kafka once after the reconnect."""
    async with _events_lingering(tmp_path, kafka_bootstrap, "lingerdown") as (pub, metrics, topic, sent):
        pub._mark_down(RuntimeError("a failed send"))  # as a failed send does; the connector reconnects
        await _until(lambda: _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "broker_down"}) == 3, timeout=1.5)
        assert not pub._lingering
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, 3, settle=0.3)) == sorted(ev.request_id for ev in sent)


async def test_a_stop_leaves_no_hand_over_behind_when_linger_timers_fire_during_it(tmp_path, kafka_bootstrap):
    """Two partitions' open batches; stop() sends the first while the second's linger ends. Every event
    is handed over before stop() returns, and no task is left running."""
    topic = "lingerstop2-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=400, journal_linger_ms=0, partitions=2)
    await pub.start()
    await _until(lambda: pub.connected)
    real = pub._producer.send_batch

    async def slow(*a, **kw):  # as when aiokafka waits for the partition's previous batch to drain
        await asyncio.sleep(0.6)
        return await real(*a, **kw)

    pub._producer.send_batch = slow
    sent = [_event(org=f"org{i}") for i in range(12)]
    for ev in sent:
        pub.submit(lambda ev=ev: ev)
    await _until(lambda: len(pub._lingering) == 2 and _lingering_events(pub) == 12)
    await pub.stop()
    assert not [t for t in pub._background if not t.done()]
    assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == len(sent)


async def test_events_journaled_while_the_broker_lost_data_are_sent_in_the_new_generation(tmp_path, kafka_bootstrap):
    """A data loss (_forget_log: every unconsumed record goes out again) lands while a batch is being
    written on the journal's thread. The batch is then marked in flight in the new generation; sent
    under the old one, its acknowledgement would be ignored and the resender would skip it for ever.
    It goes to the resender instead, and reaches Kafka."""
    topic = "lingergen-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=50, journal_linger_ms=0)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        real, entered, gate = pub.journal.append, threading.Event(), threading.Event()

        def append(*a, **kw):
            if not entered.is_set():
                entered.set()
                gate.wait(5)
            return real(*a, **kw)

        pub.journal.append = append
        ev = _event()
        pub.submit(lambda: ev)
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
        pub._broker_lost_data("offset_regressed")  # on the loop, as _delivered or _check_offsets would
        gate.set()
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert ev.request_id in await _read_all(kafka_bootstrap, topic, 1, settle=0.2)
    finally:
        await pub.stop()


async def test_an_open_record_batch_from_before_a_log_reset_takes_no_new_events(tmp_path, kafka_bootstrap):
    """After a reset the next journal batch does not join the old generation's open batch (sent under
    that generation, its acknowledgement would be ignored and the new events would stay in flight
    for ever): the reset gives the old batch back to the journal, and every event lands once."""
    topic = "lingergen2-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=1_000, journal_linger_ms=0)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(3)]
        for ev in sent[:2]:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: _lingering_events(pub) == 2)
        await pub.log_reset()  # the resender sends the two again, in the new generation
        pub.submit(lambda: sent[2])
        await _until(lambda: pub.journal.record_count == 3 and _lingering_events(pub) == 1)
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, 3, settle=1.2)) == sorted(ev.request_id for ev in sent)
        assert pub._inflight._value == pub._max_in_flight  # every permit back, the old batch's too
    finally:
        await pub.stop()


async def test_a_log_reset_gives_the_open_record_batches_back_at_once(tmp_path, kafka_bootstrap):
    """A data loss makes every unconsumed event unsent again (a new generation). The open record
    batches hold old-generation events, which are never sent: they go back at the reset, their
    permits with them, not at their linger's end. They are not counted as spooled (the whole
    generation goes again), and each event lands once."""
    async with _events_lingering(tmp_path, kafka_bootstrap, "lingerreset") as (pub, metrics, topic, sent):
        assert pub._inflight._value == pub._max_in_flight - 3
        pub._broker_lost_data("offset_regressed")  # on the loop, as _delivered or _check_offsets would
        assert not pub._lingering
        assert pub._inflight._value == pub._max_in_flight
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, 3, settle=0.3)) == sorted(ev.request_id for ev in sent)
        assert sum(_sample(metrics, "helicone_gateway_events_spooled_total", {"reason": r})
                   for r in ("broker_down", "held", "send_failed", "stopping")) == 0


async def test_an_event_that_waited_for_a_permit_across_a_log_reset_opens_no_batch_of_the_old_generation(
        tmp_path, kafka_bootstrap):
    """A journal batch waits for an in-flight permit while the broker's data loss starts a new generation.
    Once it has a permit it does not open a record batch of the old generation (its acknowledgement would
    be ignored, and the batch would hold its permit until its linger ends): the journal already has its
    events unsent in the new generation, and every event lands."""
    async with _third_waits_for_a_permit(tmp_path, kafka_bootstrap, "lingerwait") as (pub, _, topic, sent, gated):
        pub._broker_lost_data("offset_regressed")
        gated.gate.set()  # the answers (ignored: the old generation) give the permits back
        loop = asyncio.get_running_loop()
        until = loop.time() + 0.6
        while loop.time() < until:
            assert all(o.generation == pub.journal.generation for o in pub._lingering.values())
            await asyncio.sleep(0.01)
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert set(await _read_all(kafka_bootstrap, topic, 3, settle=0.3)) == {ev.request_id for ev in sent}
        await _until(lambda: pub._inflight._value == pub._max_in_flight)


async def test_a_linger_that_ends_while_the_broker_is_down_spools_its_events_as_broker_down(tmp_path, kafka_bootstrap):
    """A failed send marks the broker down; the connector gives open batches back a moment later. An
    open batch whose linger ends in between is not sent either: its events are spooled as broker_down
    (not send_failed: nothing was sent), and reach Kafka once after the reconnect."""
    async with _events_lingering(tmp_path, kafka_bootstrap, "lingerdown2") as (pub, metrics, topic, sent):
        ((partition, open_),) = pub._lingering.items()
        pub._mark_down(RuntimeError("a failed send"))
        pub._linger_over(partition, open_)  # its timer fires before the connector sees the failure
        await _until(lambda: _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "broker_down"}) == 3, timeout=1.5)
        assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "send_failed"}) == 0
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, 3, settle=0.3)) == sorted(ev.request_id for ev in sent)


async def test_a_batch_whose_generation_ended_before_its_hand_over_is_not_counted_as_spooled(tmp_path, kafka_bootstrap):
    """A batch's linger ends, and before its hand-over runs the broker loses data and then goes away. The
    batch is not sent, and its events are not counted as spooled (broker_down): the journal sends the whole
    old generation again anyway, and they land once."""
    async with _events_lingering(tmp_path, kafka_bootstrap, "lingerstale") as (pub, metrics, topic, sent):
        ((partition, open_),) = pub._lingering.items()
        pub._linger_over(partition, open_)  # the hand-over is a task: it runs after the two below
        pub._broker_lost_data("offset_regressed")
        pub._mark_down(RuntimeError("a failed send"))
        await _until(lambda: pub.connected and pub.journal.unacked_count() == 0)
        assert sorted(await _read_all(kafka_bootstrap, topic, 3, settle=0.3)) == sorted(ev.request_id for ev in sent)
        assert sum(_sample(metrics, "helicone_gateway_events_spooled_total", {"reason": r})
                   for r in ("broker_down", "held", "send_failed", "stopping")) == 0


async def test_an_event_larger_than_a_record_batch_goes_on_its_own_beside_an_open_batch(tmp_path, kafka_bootstrap):
    """An open batch that cannot take the next event goes; an event no batch can hold is sent on its own;
    the events after it start a new batch. Each lands once and every permit comes back."""
    topic = "lingerbig-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=300, journal_linger_ms=0, max_batch_bytes=16384)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        small = [_event() for _ in range(2)]
        for ev in small:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: _lingering_events(pub) == 2)
        big, after = _event(), _event()
        big.error = "x" * 40_000
        pub.submit(lambda: big)
        pub.submit(lambda: after)
        await _until(lambda: pub.journal.record_count == 4 and pub.journal.unacked_count() == 0)
        assert pub._inflight._value == pub._max_in_flight
        got = await _read_all(kafka_bootstrap, topic, 4, settle=0.3)
        assert sorted(got) == sorted(ev.request_id for ev in [*small, big, after])
    finally:
        await pub.stop()


async def test_a_graceful_stop_hands_a_lingering_record_batch_over(tmp_path, kafka_bootstrap):
    """stop() does not leave events waiting out a long linger: they reach Kafka before it returns."""
    topic = "lingerstop-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=60_000, journal_linger_ms=0)
    await pub.start()
    stopped = False
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(5)]
        for ev in sent:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: sum(len(o.taken) for o in pub._lingering.values()) == len(sent))
        await asyncio.wait_for(pub.stop(), 15)
        stopped = True
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == len(sent)
        assert sorted(await _read_all(kafka_bootstrap, topic, len(sent), settle=0.2)) == sorted(ev.request_id for ev in sent)
    finally:
        if not stopped:
            await pub.stop()


async def test_a_lingering_record_batch_from_before_a_log_reset_is_not_sent_twice(tmp_path, kafka_bootstrap):
    """After log_reset() the journal sends every unconsumed event again, those waiting in an open record
    batch too; the open batch itself is then not sent, so each event lands once."""
    topic = "lingerreset-" + uuid.uuid4().hex[:8]
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic, linger_ms=300, journal_linger_ms=0)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        sent = [_event() for _ in range(5)]
        for ev in sent:
            pub.submit(lambda ev=ev: ev)
        await _until(lambda: sum(len(o.taken) for o in pub._lingering.values()) == len(sent))
        await pub.log_reset()
        await _until(lambda: pub.journal.unacked_count() == 0 and not pub._lingering)
        got = await _read_all(kafka_bootstrap, topic, len(sent), settle=1.0)
        assert sorted(got) == sorted(ev.request_id for ev in sent)
    finally:
        await pub.stop()


class _FailingProducer:
    """A producer whose record batches fail: at hand-over, or later when the broker answers."""

    def __init__(self, real, at_send: bool) -> None:
        self.real, self.at_send = real, at_send

    def create_batch(self):
        return self.real.create_batch()

    async def send_batch(self, batch, topic, *, partition):
        if self.at_send:
            raise KafkaTimeoutError()
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(KafkaTimeoutError())
        return fut

    async def stop(self) -> None:  # the publisher reconnects after a failure: it stops this one first
        await self.real.stop()


@pytest.mark.parametrize("at_send", [True, False], ids=["send-fails", "delivery-fails"])
async def test_a_failed_record_batch_leaves_every_event_to_the_resender(tmp_path, kafka_bootstrap, at_send):
    """A record batch that cannot be handed over, or that the broker never acknowledges, marks each of
    its events unsent (none lost: the journal keeps them, and they go out again once the publisher has
    reconnected) and gives back every in-flight permit, so a hold(), which waits for all of them, returns."""
    topic = "failing-" + uuid.uuid4().hex[:8]
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        await _until(lambda: pub.connected)
        pub._producer = _FailingProducer(pub._producer, at_send)
        sent = [_event() for _ in range(32)]
        for ev in sent:  # one loop iteration: one batch, sent as record batches
            pub.submit(lambda ev=ev: ev)
        got = await _consume(kafka_bootstrap, topic, len(sent))
        assert set(got.values()) == {ev.request_id for ev in sent}
        # counted as spooled when not handed over at all (a failed delivery is seen after the hand-over, as for one event)
        assert _sample(metrics, "helicone_gateway_events_spooled_total", {"reason": "send_failed"}) == (len(sent) if at_send else 0)
        assert _sample(metrics, "helicone_gateway_events_published_total", {"path": "direct"}) == 0
        await _until(lambda: _sample(metrics, "helicone_gateway_events_published_total", {"path": "resend"}) == len(sent))
        await asyncio.wait_for(pub.hold(), 5)  # every permit came back
        pub.release()
    finally:
        await pub.stop()


@pytest.mark.parametrize("linger_ms", [0, 5])
async def test_the_log_backlog_counts_body_bytes_until_journaled_and_says_when_there_is_room(tmp_path, monkeypatch, linger_ms):
    """submit(builder, size) counts the event's body bytes until its batch is journaled (queued, taken
    by the worker, or built at once past the queue's size); over backlog_bytes the publisher is
    backlogged and room() waits, bounded, until a batch lands."""
    import threading

    pub, metrics = _publisher(tmp_path, "127.0.0.1:1", publish_timeout=0.5, backlog_bytes=1000, queue_size=1,
                              journal_linger_ms=linger_ms)
    await pub.start()
    go = threading.Event()
    try:
        loop = asyncio.get_running_loop()
        in_append = asyncio.Event()
        real_append = pub.journal.append

        def slow_append(records, **kw):  # the journal thread, stuck on a slow disk until go
            loop.call_soon_threadsafe(in_append.set)
            go.wait(10)
            return real_append(records, **kw)

        monkeypatch.setattr(pub.journal, "append", slow_append)
        pub.submit(_event, 600)
        assert not pub.backlogged and await pub.room(0)
        await asyncio.wait_for(in_append.wait(), 5)  # taken and being journaled: still counted
        pub.submit(_event, 600)  # queued
        pub.submit(_event, 600)  # past the queue's size: built at once, an overflow batch
        assert pub._backlog == 1800 and pub.backlogged
        started = loop.time()
        assert not await pub.room(0.2) and loop.time() - started >= 0.2
        waiter = asyncio.create_task(pub.room(10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        go.set()
        assert await waiter
        await _until(lambda: pub.journal.record_count == 3 and pub._backlog == 0)
        assert not pub.backlogged and _sample(metrics, "helicone_gateway_log_backlog_bytes") == 0
    finally:
        go.set()
        await pub.stop()


async def test_a_publisher_whose_worker_is_gone_never_holds_requests(tmp_path):
    pub, _ = _publisher(tmp_path, "127.0.0.1:1", publish_timeout=0.5, backlog_bytes=1000)
    pub.submit(_event, 5000)  # not started: no worker to shrink the backlog
    assert not pub.backlogged
    await pub.start()
    try:
        pub._tasks[0].cancel()  # the worker gone (a bug would end it the same way)
        await asyncio.sleep(0)
        pub.submit(_event, 5000)
        assert pub._backlog > pub.backlog_bytes and not pub.backlogged
    finally:
        await pub.stop()


async def test_an_event_too_large_for_kafka_is_dropped_and_never_holds_back_the_events_after_it(tmp_path, kafka_bootstrap):
    """An event over the producer's record limit (prompt inputs are not cut at the logged-body limit) can never
    be sent: journaled, the resender would fail on it at every pass (each failure a reconnect), and no event
    after it would reach Kafka again. It is dropped when built, counted and logged; the others go on."""
    from helicone_core.kafka import MAX_RECORD_BYTES

    topic = "too-large-" + uuid.uuid4().hex[:8]
    big, after = _event(), _event()
    big.prompt_inputs_json = "x" * MAX_RECORD_BYTES
    down, metrics = _publisher(tmp_path, "127.0.0.1:1", publish_timeout=0.5)  # the broker away: both wait in the journal
    await down.start()
    down.submit(lambda: big)
    down.submit(lambda: after)
    await down.stop()
    pub, _ = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        got = await _consume(kafka_bootstrap, topic, 1, timeout=15)
        assert set(got.values()) == {after.request_id}
    finally:
        await pub.stop()
    assert _sample(metrics, "helicone_gateway_events_dropped_total", {"reason": "too_large"}) == 1


async def test_an_event_whose_two_bodies_are_over_kafkas_record_limit_is_kept_with_its_bodies_cut(tmp_path, kafka_bootstrap):
    """With HELICONE_MAX_LOGGED_BODY_BYTES raised past half the record limit, a request and a response each at that
    limit made an event Kafka would refuse: the gateway dropped the whole log (too_large), where the api keeps it with
    its bodies cut. Now the bodies are cut, the larger first and flagged truncated, until the event fits: the request
    is logged, with its usage, status and as much of each body as fits; nothing is counted as dropped."""
    from helicone_core.kafka import MAX_RECORD_BYTES, record_bytes

    topic = "fit-" + uuid.uuid4().hex[:8]
    big = _event()
    big.status, big.model = 200, "gpt-4o"
    big.usage.total_tokens = 7
    big.inline.request_body = b"q" * (3 * 1024 * 1024)
    big.inline.response_body = b"a" * (3 * 1024 * 1024)
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        pub.submit(lambda: big)
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, fetch_max_bytes=2 * MAX_RECORD_BYTES,
                                    max_partition_fetch_bytes=2 * MAX_RECORD_BYTES)
        await consumer.start()
        try:
            got = []
            deadline = asyncio.get_running_loop().time() + 15
            while not got and asyncio.get_running_loop().time() < deadline:
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    got.extend(records)
        finally:
            await consumer.stop()
    finally:
        await pub.stop()
    assert _sample(metrics, "helicone_gateway_events_dropped_total", {"reason": "too_large"}) == 0
    [record] = got
    logged = events.decode(record.value)
    assert logged.request_id == big.request_id and logged.status == 200 and logged.usage.total_tokens == 7
    assert record_bytes(record.key, record.value) <= MAX_RECORD_BYTES
    inline = logged.inline
    assert inline.request_truncated and inline.response_truncated
    assert set(inline.request_body) == {ord("q")} and set(inline.response_body) == {ord("a")}
    assert len(inline.request_body) + len(inline.response_body) > MAX_RECORD_BYTES - 1024  # cut no more than needed


async def test_an_event_too_large_for_kafka_already_in_the_journal_is_dropped_at_resend(tmp_path, kafka_bootstrap, caplog):
    """One journaled before the build-time check existed (an older version): the producer refuses it at every
    resend. That refusal is the record's, not an outage: it is dropped, counted and logged as at build time,
    never sent again (not even after a log reset), and the events after it go on."""
    from helicone_core.kafka import MAX_RECORD_BYTES

    topic = "too-large-old-" + uuid.uuid4().hex[:8]
    big, after = _event(), _event()
    big.prompt_inputs_json = "x" * MAX_RECORD_BYTES
    previous = Journal(tmp_path / "journal", max_bytes=1 << 24, segment_bytes=1 << 24).open()
    previous.append([_rec(big), _rec(after)], inflight=False, sync=True)
    previous.close()
    pub, metrics = _publisher(tmp_path, kafka_bootstrap, topic)
    await pub.start()
    try:
        got = await _consume(kafka_bootstrap, topic, 1, timeout=15)
        assert set(got.values()) == {after.request_id}
        await _until(lambda: pub.journal.unacked_count() == 0)
        assert pub.connected  # never taken for a broker outage
        await pub.log_reset()  # every unconsumed event goes out again: the dropped one stays dropped
        await _until(lambda: pub.journal.unacked_count() == 0)
    finally:
        await pub.stop()
    assert _sample(metrics, "helicone_gateway_events_dropped_total", {"reason": "too_large"}) == 1
    assert "over Kafka's record limit" in caplog.text and "kafka publish failed" not in caplog.text


async def test_a_full_journal_says_so_in_the_log_once_a_run_and_when_it_takes_events_again(tmp_path, caplog):
    """At the cap new events are refused: counted (journal_full) and logged, once per run of refusals, as a full
    or failing disk is (journal_error), so an operator reading the log learns that events are being lost."""
    async with _publisher_by_hand(tmp_path, max_bytes=1024, segment_bytes=512) as (pub, metrics, producer):
        pub._connected.clear()  # the broker away: nothing is acknowledged, nothing can be evicted
        for i in range(12):
            await pub._append([(b"o/%d" % i, b"x" * 100)], send=True)
        full = _sample(metrics, "helicone_gateway_events_dropped_total", {"reason": "journal_full"})
        assert full >= 4 and pub.journal.record_count == 12 - full
        refused = [r for r in caplog.records if "journal is full" in r.getMessage()]
        assert len(refused) == 1 and refused[0].levelname == "ERROR"
        pub._connected.set()
        await pub._resend_pending(asyncio.get_running_loop())
        await asyncio.sleep(0)  # the acknowledgements' callbacks: the sealed segments can be evicted now
        pub.journal.seal_active()
        pub._connected.clear()
        await pub._append([(b"o/next", b"y" * 100)], send=True)
        assert pub.journal.evicted_segments >= 1
        assert "takes events again" in caplog.text
