"""Faust, fed a fetch at a time.

Faust's own consumer turns every Kafka record into a Message, hands it to the conductor, a stream
buffer and the agent one at a time, and acks it one at a time: 3,000-4,300 events/s per process
is all it can receive whatever the stream API (bench/faust_ceiling.py). Ingest writes in batches
anyway, so here the aiokafka Consumer's fetch loop (`_drain_messages`) hands the records of each
fetch, gathered up to `batch_size` events, `batch_max_bytes` (whole fetches: a batch closes once it
holds that many bytes, so it may pass them by one fetch) or `batch_within` seconds, to a handler as one `Batch`,
and a batch is acknowledged as a whole, with one call, once it is written. A batch that has caught
up with the log end of its partitions goes at once if the one before went at least `batch_gap`
seconds ago, or `batch_gap_light` seconds at light load (the batch holds fewer than
`batch_light_events` events, and neither it nor the one before comes at that many per
`batch_gap_light`):
light load shows up within `batch_gap_light` (not `batch_within`) with about one insert a second,
a faster flow (and the tail of a burst) within `batch_gap`, with at most 1 / batch_gap inserts a
second, and under a backlog batches fill up as before. A fast flow's caught-up batch also goes as
soon as the flow pauses (a fetch of each of its partitions answered with nothing new, about
`fetch_wait` after their last records): the tail of a burst is not held for the rest of
`batch_gap`, while a steady flow, whose every fetch brings records, still makes one insert per
`batch_gap`. While records keep coming, a
fetch waits at most `fetch_wait` seconds for more (Faust sets 1.5 s): Kafka answers a fetch as
soon as records arrive whatever the wait, but the embedded broker (Tansu) does not watch for them:
it looks when the fetch arrives, then after half the time left, again and again until the wait is up
(tansu-broker/src/broker/fetch.rs), so a record that arrives meanwhile waits for its next look, up to
about half the wait (bench/broker_fetch_wait.py, Tansu 0.6.0: at most 50 ms with a 0.1 s wait, 240 ms
with 0.5 s, 752 ms with 1.5 s). A second
without records and the wait goes back to Faust's (an idle consumer fetches 30 times less often).
Faust keeps everything else: group membership and rebalances, the periodic commit of acknowledged
offsets (what it commits is computed from the acks exactly as for its own messages, gaps in the
offsets included), flow control, seeks and stopping.

A batch belongs to the consumer generation it was fetched in and to the log it was fetched from
(`Consumer.log_epoch`, moved on by IngestService._rewind when a partition goes back to the start
of a new log): acknowledging a batch of an earlier generation does nothing (its partitions were
re-read or handed to another worker, from the committed offsets), nor does it acknowledge the
offsets of a partition rewound since it was read (they number another log now); its other
partitions are written and acknowledged as usual."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import faust
from faust.transport.drivers import aiokafka as driver
from helicone_core.cancellation import wait_for

from .dlq import Origin, replays_of


class Origins(Sequence):
    """The records' origins (dlq.Origin) in take()'s order, made only once one is asked for: only dead
    letters need them, and making one per record cost about a microsecond of every event's time."""

    __slots__ = ("_offsets", "_keys", "_replays", "_made")

    def __init__(self, offsets: dict, keys: dict, replays: dict) -> None:
        self._offsets, self._keys, self._replays = offsets, keys, replays  # take() replaces them, never changes them
        self._made: list[Origin] | None = None

    def _all(self) -> list[Origin]:
        if self._made is None:
            self._made = [Origin(tp.topic, tp.partition, offset, key, self._replays.get(tp, {}).get(i, 0))
                          for tp, keys in self._keys.items()
                          for i, (offset, key) in enumerate(zip(self._offsets[tp], keys, strict=True))]
        return self._made

    def __getitem__(self, i):
        return self._all()[i]

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys.values())


class Batch:
    """The records of one or more fetches; ack() marks every offset done at once."""

    __slots__ = ("consumer", "offsets", "_values", "_keys", "_replays", "generation", "epoch", "started", "size", "bytes")

    def __init__(self, consumer: BatchConsumer) -> None:
        self.consumer = consumer
        self.offsets: dict = {}  # TP -> [offset], in offset order
        self._values: dict = {}  # TP -> [record value], the same order, until values() takes them
        self._keys: dict = {}  # TP -> [record key], the same order (a dead-lettered record keeps its key)
        self._replays: dict = {}  # TP -> {index in offsets: replays} of the records a DLQ replay sent (dlq.REPLAYS_HEADER)
        self.generation = consumer.app.consumer_generation_id
        self.epoch = consumer.log_epoch
        self.started = time.monotonic()
        self.size = 0
        self.bytes = 0  # of the records' values

    def __len__(self) -> int:
        return self.size

    def add(self, tp, records: list) -> None:
        values = [r.value for r in records]
        self.offsets.setdefault(tp, []).extend([r.offset for r in records])
        self._values.setdefault(tp, []).extend(values)
        self._keys.setdefault(tp, []).extend([r.key for r in records])
        first = len(self.offsets[tp]) - len(records)
        for i, r in enumerate(records):
            if r.headers:  # rare: only a replayed record has one
                if replays := replays_of(r.headers):
                    self._replays.setdefault(tp, {})[first + i] = replays
        self.size += len(records)
        # a record without a value (null: a tombstone) counts no bytes; decode dead-letters it
        self.bytes += sum(len(v) for v in values if v is not None)

    def values(self) -> list[bytes]:
        """The records' values, taken once: the batch keeps only their offsets (what ack() needs), so a
        batch being decoded or written does not also hold its events' raw bytes."""
        return self.take()[1]

    def take(self) -> tuple[list[bytes | None], list[bytes | None]]:
        """The records' keys and values, in the same order, taken once (see values())."""
        keys = [k for ks in self._keys.values() for k in ks]
        values = [v for vs in self._values.values() for v in vs]
        self._keys, self._values, self._replays = {}, {}, {}
        return keys, values

    def origins(self) -> Origins:
        """Where each record came from, in the order of take()'s (a dead letter's headers say it); call it
        before take()."""
        return Origins({tp: self.offsets[tp] for tp in self._keys}, self._keys, self._replays)

    def current(self) -> bool:
        """Fetched in the consumer's present generation, with a partition still on the log it was read
        from: ack() acknowledges those. (A rewind, IngestService._rewind, sends one partition to the
        start of a new log: the batch's other partitions are written and acknowledged as usual.)"""
        c = self.consumer
        if self.generation != c.app.consumer_generation_id:
            return False
        return self.epoch == c.log_epoch or not all(map(self._rewound, self.offsets))

    def _rewound(self, tp) -> bool:
        """tp was sent to a new log since this batch began: its offsets here number the old one."""
        return self.consumer.rewound_since(tp, self.epoch) is not None

    def drop_rewound(self) -> int:
        """Takes out the records of the partitions rewound since the batch began (they are read again
        from their new log) and makes the batch one of the present log; returns how many records are left."""
        for tp in [tp for tp in self.offsets if self._rewound(tp)]:
            self.size -= len(self.offsets.pop(tp))
            self.bytes -= sum(len(v) for v in self._values.pop(tp, ()) if v is not None)
            self._keys.pop(tp, None)
            self._replays.pop(tp, None)
        self.epoch = self.consumer.log_epoch
        return self.size

    def ack(self) -> bool:
        """Marks the batch's offsets as done, so that the next commit may pass them, except those of
        partitions rewound since it was read (their offsets now number another log); False when
        nothing was marked (a batch of an earlier generation, or whose partitions were all rewound)."""
        c = self.consumer
        if self.generation != c.app.consumer_generation_id:
            return False
        moved, marked = self.epoch != c.log_epoch, False
        for tp, offsets in self.offsets.items():
            if moved and self._rewound(tp):
                continue
            c.ack_offsets(tp, offsets)
            marked = True
        return marked


class InFlight:
    """The batches handed to the writer and not finished yet, at most `limit` of them current.

    Counting batches rather than holding a semaphore's permits: on a rebalance Faust clears its
    channels' queues, so a batch handed over may never reach the writer to give its slot back. By
    then it belongs to an earlier generation, and stale batches stop counting."""

    def __init__(self, limit: int = 2, poll: float = 0.5) -> None:
        self.limit, self.poll = limit, poll
        self.batches: set[Batch] = set()
        self._room = asyncio.Event()

    async def enter(self, batch: Batch) -> None:
        while True:
            self.batches = {b for b in self.batches if b.current()}
            if len(self.batches) < self.limit:
                self.batches.add(batch)
                return
            self._room.clear()
            # a rebalance makes batches stale without a leave(): look again every `poll` seconds
            with contextlib.suppress(TimeoutError):
                await wait_for(self._room.wait(), self.poll)

    def leave(self, batch: Batch) -> None:
        self.batches.discard(batch)
        self._room.set()


class Turns:
    """Turns handed out in order: a turn starts once the turn before it has ended.

    Ingest writes a batch's rows in its turn, so that batches insert one at a time and in the order
    they were read (rows of one identity and version: the later batch's wins), while the next
    batch's bodies and the last batch's accounting run alongside."""

    def __init__(self) -> None:
        self._last: asyncio.Future | None = None

    def next(self) -> Turn:
        ended = asyncio.get_running_loop().create_future()
        turn, self._last = Turn(self._last, ended), ended
        return turn


class Turn:
    __slots__ = ("_before", "_ended")

    def __init__(self, before: asyncio.Future | None, ended: asyncio.Future) -> None:
        self._before, self._ended = before, ended

    async def wait(self) -> None:
        """Returns once the turn before this one has ended (at once the second time)."""
        if self._before is not None:
            await asyncio.shield(self._before)

    def end(self) -> None:
        """Ends the turn (again: nothing): the next one may start."""
        if not self._ended.done():
            self._ended.set_result(None)


class BatchConsumer(driver.Consumer):
    """Faust's aiokafka Consumer with a fetch loop that hands batches to `app.batch_handler`."""

    log_epoch = 0
    IDLE_AFTER = 1.0  # seconds without records before fetches wait IDLE_FETCH_WAIT again
    IDLE_FETCH_WAIT = 1.5  # what Faust's aiokafka driver sets

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rewinds: dict = {}  # partition -> (the log epoch its last rewind started, the offset it went to)
        self._records_ms: dict = {}  # partition -> when a fetch last brought it records (ms, aiokafka's clock)

    def rewound(self, tp, offset: int) -> None:
        """IngestService._rewind sent tp to `offset`, the start of a new log: batches fetched before
        are neither written nor acknowledged."""
        self.log_epoch += 1
        self.rewinds[tp] = (self.log_epoch, offset)

    def rewound_since(self, tp, epoch: int) -> int | None:
        """Where tp was rewound to after log epoch `epoch`, or None if it was not."""
        rewind = self.rewinds.get(tp)
        return rewind[1] if rewind is not None and rewind[0] > epoch else None

    def kafka_fetcher(self):
        """The aiokafka consumer's Fetcher, not Faust's Fetcher service (None until that consumer has started)."""
        return getattr(getattr(self._thread, "_consumer", None), "_fetcher", None)

    def _fetch_wait(self, seconds: float) -> None:
        """How long the aiokafka consumer's next fetch requests wait for records at most (read by its
        fetcher for every request it builds; nothing to set before it starts)."""
        fetcher = self.kafka_fetcher()
        ms = int(seconds * 1000)
        if fetcher is not None and fetcher._fetch_max_wait_ms != ms:
            fetcher._fetch_max_wait_ms = ms

    async def _drain_messages(self, fetcher) -> None:  # the Fetcher service's task (see faust.transport.consumer)
        app = self.app
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        read_offset = self._read_offset
        pending: Batch | None = None
        handed = -math.inf  # when the last batch was handed over (time.monotonic)
        handed_rate = 0.0  # its events a second since the one before it (over batch_gap_light at most)
        last_records = 0.0  # when a fetch last brought records (time.monotonic)
        records_ms = 0.0  # the same in ms of time.time(), the clock aiokafka notes fetch answers with
        try:
            while not (stopped() or fetcher_stopped()):
                size, max_bytes, within = app.batch_size, app.batch_max_bytes, app.batch_within
                if pending is None:
                    timeout = 1.0
                else:
                    now, due = time.monotonic(), pending.started + within
                    if self._caught_up(pending):
                        gap = self._gap_after(pending, handed_rate, now)
                        due = min(due, handed + gap)
                        if self._watch_pause(gap):  # look again soon: has a fetch come back with nothing?
                            due = min(due, now + app.fetch_wait / 4)
                    timeout = max(due - now, 0.0)
                generation, epoch = app.consumer_generation_id, self.log_epoch
                records, active = await self._wait_next_records(timeout)
                if self.should_stop:
                    return
                now = time.monotonic()
                if records:
                    last_records = now
                    records_ms = time.time() * 1000
                self._fetch_wait(app.fetch_wait if now - last_records < self.IDLE_AFTER else self.IDLE_FETCH_WAIT)
                if records and not self.flow_active:
                    try:
                        await self.perform_seek()  # what Faust's getmany does: back to the committed offsets
                    except Exception as exc:  # noqa: BLE001 - a partition revoked meanwhile (as Faust: log, go on)
                        self.log.warning("seek to the committed offsets failed while the flow is stopped: %r", exc)
                    await self._unread(records, epoch)
                    records = None
                if pending is not None and not pending.current():
                    pending = None  # rebalanced, or its partitions rewound, meanwhile: its records are read again
                elif pending is not None and pending.epoch != self.log_epoch:
                    pending.drop_rewound()  # another partition's rewind: the rest of the batch stays
                if records and generation != app.consumer_generation_id:
                    await self._unread(records, epoch)
                    records = None
                if records and epoch != self.log_epoch:
                    # partitions rewound while the fetch was under way: their records may be the old log's
                    stale = {tp: recs for tp, recs in records.items() if self.rewound_since(tp, epoch) is not None}
                    if stale:
                        await self._unread(stale, epoch)
                        records = {tp: recs for tp, recs in records.items() if tp not in stale}
                if records:
                    for tp, recs in records.items():
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue
                        fresh = await self._fresh(tp, recs, read_offset)
                        if fresh:
                            if pending is None:
                                pending = Batch(self)
                            pending.add(tp, fresh)
                            self._records_ms[tp] = records_ms
                            app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                if pending is not None:
                    now = time.monotonic()
                    gap = self._gap_after(pending, handed_rate, now)
                    if (len(pending) >= size or pending.bytes >= max_bytes or now >= pending.started + within
                            or (self._caught_up(pending)
                                and (now >= handed + gap or (self._watch_pause(gap) and self._paused(pending))))):
                        # over batch_gap_light at most: a batch of batch_light_events or more always counts as a
                        # fast flow, however long the idle time (or a rebalance) before it
                        handed_rate = len(pending) / max(min(now - handed, app.batch_gap_light), 1e-3)
                        batch, pending, handed = pending, None, now
                        await self._hand_over(batch)  # the handler acks it now or later
                if self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _watch_pause(self, gap: float) -> bool:
        """Whether a caught-up batch that waits `gap` goes as soon as its flow pauses: a fast flow's
        (its gap is batch_gap while the light gap is on). A trickle pauses between any two events,
        and keeps to about one insert per batch_gap_light."""
        app = self.app
        return gap == app.batch_gap < app.batch_gap_light and app.batch_light_events > 0

    def _paused(self, batch: Batch) -> bool:
        """The flow into the batch's partitions has paused: since each partition last brought
        records, a fetch of it has been answered (aiokafka notes the time of every answer, records
        or not) and the batch is still caught up, so that answer brought nothing. A fetch is answered
        with nothing only after fetch_wait without records (Kafka answers as soon as some arrive),
        so the tail of a burst goes about fetch_wait after its last records, not batch_gap after
        the batch before."""
        consumer = getattr(self._thread, "_consumer", None)
        if consumer is None:
            return False
        try:
            for tp in batch.offsets:
                answered = consumer.last_poll_timestamp(tp)
                if answered is None or answered <= self._records_ms.get(tp, math.inf):
                    return False
        except Exception:  # noqa: BLE001 - aiokafka asserts the partition is assigned: a rebalance is under way
            return False
        return True

    def _gap_after(self, pending: Batch, handed_rate: float, now: float) -> float:
        """How long after the previous batch a caught-up `pending` goes: batch_gap_light at light
        load, batch_gap otherwise. The flow is fast (batch_gap) when `pending` holds
        batch_light_events, when the previous batch came at batch_light_events per batch_gap_light
        or more (the tail of a burst), or when `pending` fills at that rate itself (a burst after an
        idle time; measured over batch_gap and a tenth of batch_gap_light at least, so that its
        first few events are no rate). batch_light_events 0, or batch_gap_light not above
        batch_gap, turns the light gap off."""
        app = self.app
        gap, light_gap, light = app.batch_gap, app.batch_gap_light, app.batch_light_events
        n = len(pending)
        if light_gap <= gap or n >= light or handed_rate * light_gap >= light:
            return gap
        if n * light_gap >= light * max(now - pending.started, gap, light_gap / 10):
            return gap
        return light_gap

    async def _unread(self, records: dict, epoch: int) -> None:
        """Records a fetch brought that are not taken (the flow was suspended, or the consumer
        generation changed, while it was under way) moved their partitions' positions past them.
        Each partition still assigned goes back to its first such record, or to its committed
        offset if that is earlier, so they are read again; a partition rewound while the fetch was
        under way (`epoch` is the log epoch when it started) goes back to where the rewind sent
        it at the latest, as its records may be the old log's. perform_seek alone is not enough: a
        group with no committed offset (a fresh log after a broker restart or a recycle) has
        nowhere to go back to, and those records were skipped."""
        assigned = self.assignment()
        for tp, recs in records.items():
            if not recs or tp not in assigned:
                continue
            target = recs[0].offset
            committed = self._committed_offset.get(tp)
            if committed is not None:
                target = min(target, committed)
            rewound_to = self.rewound_since(tp, epoch)
            if rewound_to is not None:
                target = min(target, rewound_to)
            await self.seek(tp, target)

    async def _hand_over(self, batch: Batch) -> bool:
        """Gives the batch to app.batch_handler, unless the flow is suspended first (a rebalance
        starting: Faust waits for this loop while the handler may wait for the writer, so the
        handler is abandoned, as Faust's own loop abandons a message's callback). An abandoned
        batch is never acknowledged: it is read again. True if the handler took it."""
        if self.suspend_flow.is_set():
            return False
        handing = asyncio.ensure_future(self.app.batch_handler(batch))
        suspended = asyncio.ensure_future(self.suspend_flow.wait())
        try:
            await asyncio.wait((handing, suspended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            suspended.cancel()
            if not handing.done():
                handing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handing
        if handing.cancelled():
            return False
        handing.result()  # its exception, if any
        return True

    def _caught_up(self, batch: Batch) -> bool:
        """The batch holds every record up to the log end the last fetch saw, in each of its partitions
        (False for a batch of an earlier generation or log, or whose partitions are not assigned now)."""
        if not batch.current():
            return False
        read_offset = self._read_offset
        try:
            for tp in batch.offsets:
                end, read = self.highwater(tp), read_offset[tp]
                if end is None or read is None or read + 1 < end:
                    return False
        except Exception:  # noqa: BLE001 - aiokafka asserts the partition is assigned: a rebalance is under way
            return False  # (raising here would end the fetch loop, and ingest with it)
        return True

    async def _fresh(self, tp, recs: list, read_offset) -> list:
        """The records past the partition's read offset, noting gaps in the offsets as Faust's
        loop does (so a commit can pass offsets that hold no record, e.g. transaction markers)."""
        r = read_offset[tp]
        if r is not None:
            recs = [rec for rec in recs if rec.offset >= r]
        if not recs:
            return recs
        if r and self.app.topics.acks_enabled_for(tp.topic):
            previous = r
            for rec in recs:
                if rec.offset - previous > 1:  # the offsets between hold no record (Faust's own loop also
                    await self._add_gap(tp, previous + 1, rec.offset - 1)  # spans rec.offset, delaying the commit a round)
                previous = rec.offset
        read_offset[tp] = recs[-1].offset
        return recs

    def ack_offsets(self, tp, offsets: list[int]) -> None:
        """Consumer.ack for many offsets of one partition (what commit() reads)."""
        committed = self._committed_offset[tp]
        index, acked = self._acked_index[tp], self._acked[tp]
        new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
        index.update(new)
        acked.extend(new)
        self._n_acked += len(new)


class BatchTransport(driver.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer hands batches to `batch_handler` (set it before start()), each
    of up to `batch_size` records (or `batch_max_bytes`, plus at most one fetch) or whatever `batch_within` seconds gathered, or, once caught up
    with the log end, whatever it holds when the previous batch went `batch_gap` seconds ago
    (`batch_gap_light` at light load: fewer than `batch_light_events` per `batch_gap_light`).
    While records keep coming, fetches wait `fetch_wait` seconds at most."""

    batch_handler: Callable[[Batch], Awaitable[None]] | None = None
    batch_size = 5000
    batch_max_bytes = 32 * 1024 * 1024
    batch_within = 1.0
    batch_gap = 0.5
    batch_light_events = 1000
    batch_gap_light = 1.0
    fetch_wait = 0.05

    def _new_transport(self):
        return BatchTransport(self.conf.broker_consumer, self)
