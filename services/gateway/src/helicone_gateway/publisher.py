"""Publishes RequestLogged events to Kafka off the request path, through the on-disk journal.

submit() never blocks and never raises: the event is built by a background worker, appended to
the journal (journal.py) in batches (one write + one fsync per batch, in the journal's thread) and
only then handed to the producer as record batches: one per partition, which at light load waits
linger_ms for the next journal batches (_send_batch; batch size, optional gzip). Past the
queue's size an event is built at once and joins an overflow batch that is sent the same way: while
the broker is up nothing waits for the resender (helicone_gateway_events_spooled_total counts what
does, by reason). An event leaves the journal once the ingest consumer
group has committed past it. Whatever the broker did not acknowledge, or acknowledged and then
forgot (a memory-only broker restarted, a topic recreated), is sent again; ingest dedupes by
(org, request id). After a crash everything still in the journal is sent again on start-up.

Memory: the bodies of events not yet journaled and handed over (the log backlog) are counted against
backlog_bytes. While the backlog is over it, `backlogged` is true and the gateway holds each new request
until room(), at most publish_backlog_wait seconds: a logging path somewhat slower than the traffic (long
streams: each event carries its bodies) slows the intake instead of growing the process. The budget is
soft: a request held for the whole wait goes on, and those waiting when room comes all go on, so a
journal that stops altogether still grows memory up to the queue's size (which also bounds small events).

Residual window, stated honestly: an event lives only in memory between the end of its response
and the fsync of its batch (normally a few milliseconds: at light load a batch waits up to
journal_linger_ms for company, then the fsync; longer only while the worker is backed up);
a SIGKILL or power loss in that window loses it.

hold()/release() pause handing events to the broker (they keep going to the journal); the
embedded runner replaces the broker's log in between and says so with committed_to_end() and
log_reset() (see helicone_runner.supervision).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner
from helicone_core import events
from helicone_core.cancellation import raise_if_cancelling, wait_for
from helicone_core.kafka import MAX_RECORD_BYTES, RecordTooLarge, ensure_topics, fit_record, ping_broker, record_bytes
from helicone_core.metrics import ServiceMetrics

from .journal import Journal, RecordRef, Segment

log = logging.getLogger(__name__)
EventBuilder = Callable[[], "events.RequestLogged | None"]


class _Lingering:
    """A partition's open record batch: journaled events wait in it, at most linger_ms, for more
    (_send_batch). Each of them holds an in-flight permit."""

    __slots__ = ("batch", "generation", "taken", "timer")

    def __init__(self, batch: Any, generation: int) -> None:
        self.batch = batch
        self.generation = generation
        self.taken: list[tuple[RecordRef, int]] = []  # (ref, offset within the batch)
        self.timer: asyncio.TimerHandle | None = None


class EventPublisher:
    def __init__(
        self,
        *,
        bootstrap: str,
        security: Mapping[str, Any],  # helicone_core.kafka.client_security(settings), for every client
        topic: str,
        journal: Journal,
        metrics: ServiceMetrics,
        consumer_group: str,
        queue_size: int = 10_000,
        publish_timeout: float = 5.0,
        check_interval: float = 1.0,
        segment_seconds: float = 10.0,
        create_topic: bool = True,
        partitions: int = 1,
        replication_factor: int = 1,
        idempotent: bool = True,
        max_in_flight: int = 2000,
        batch_size: int = 256,
        compression: str | None = None,
        linger_ms: int = 20,
        max_batch_bytes: int = 256 * 1024,
        journal_linger_ms: int = 5,
        backlog_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = security
        self.topic = topic
        self.journal = journal
        self.consumer_group = consumer_group
        self.publish_timeout = publish_timeout
        self.check_interval = check_interval
        self.segment_seconds = segment_seconds
        self.create_topic = create_topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.idempotent = idempotent
        self.batch_size = batch_size
        self.compression = compression
        self.linger_ms = linger_ms
        self.journal_linger = journal_linger_ms / 1000
        self.max_batch_bytes = max_batch_bytes
        self._overflow: list[tuple[bytes, bytes]] = []  # built on the request path while the queue was full
        self._queue: asyncio.Queue[EventBuilder] = asyncio.Queue(maxsize=queue_size)
        self._taken: list[EventBuilder] = []  # taken off the queue by the worker, waiting for company (journal_linger)
        # the log backlog: body bytes submitted and not yet journaled and handed over (see the module docstring)
        self.backlog_bytes = backlog_bytes
        self._batch_bytes = backlog_bytes // 8
        self._backlog = 0
        self._sizes: deque[int] = deque()  # the size of each queued builder, in queue order
        self._taken_bytes = 0
        self._overflow_bytes = 0
        self._room = asyncio.Event()  # set while the backlog is within backlog_bytes
        self._room.set()
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None  # no group: reads log-end offsets only
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._deliveries: set[asyncio.Future] = set()  # sends awaiting the broker's answer
        self._lingering: dict[int, _Lingering] = {}  # per partition: the record batch waiting for company
        self._connected = asyncio.Event()
        self._resend = asyncio.Event()
        self._max_in_flight = max_in_flight
        # Events go to partitions 0..partitions-1 (Kafka's default key hash over that many), the
        # ones ingest was configured with, even when a broker auto-created the topic with more.
        self._partitions = list(range(partitions))
        self._partitioner = DefaultPartitioner()
        self._inflight = asyncio.Semaphore(max_in_flight)
        self._open = asyncio.Event()  # cleared while held
        self._open.set()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")  # one writer keeps appends in order
        self._last_ack: dict[int, int] = {}  # highest offset acknowledged per partition since the last data loss
        self._seen_committed: dict[int, int] = {}
        self._seen_end: dict[int, int] = {}
        self._commit_floor: dict[int, int] = {}  # first committed offset seen per partition since the last reset
        self._evicted_seen = 0
        self._journal_failing = False  # the last journal append failed (logged once a run of failures)
        self._journal_full = False  # the last journal append refused events for want of room (logged once a run)

        self.m_published = metrics.counter(
            "helicone_gateway_events_published_total", "Log events acknowledged by Kafka", ("path",)
        )
        self.m_dropped = metrics.counter("helicone_gateway_events_dropped_total", "Log events lost", ("reason",))
        self.m_spooled = metrics.counter(
            "helicone_gateway_events_spooled_total",
            "Journaled events not handed to Kafka at once (they wait for the resender)", ("reason",),
        )
        self.m_queue = metrics.gauge("helicone_gateway_publish_queue_depth", "Log events waiting to be journaled")
        self.m_backlog = metrics.gauge(
            "helicone_gateway_log_backlog_bytes", "Body bytes of log events not yet journaled and handed to Kafka"
        )
        self.m_connected = metrics.gauge("helicone_gateway_kafka_connected", "1 while the Kafka producer is connected",
                                         merge="livemin")  # several workers: 1 while every one is
        self.m_journal_bytes = metrics.gauge("helicone_gateway_journal_bytes", "Bytes in the event journal")
        self.m_journal_events = metrics.gauge(
            "helicone_gateway_journal_events", "Events in the journal (ingest has not committed past them yet)"
        )
        self.m_journal_unacked = metrics.gauge(
            "helicone_gateway_journal_unacked_events", "Journaled events Kafka has not acknowledged"
        )
        self.m_journal_segments = metrics.gauge("helicone_gateway_journal_segments", "Segment files in the journal")
        self.m_trimmed = metrics.counter(
            "helicone_gateway_journal_trimmed_segments_total", "Segments deleted after ingest committed past them"
        )
        self.m_evicted = metrics.counter(
            "helicone_gateway_journal_evicted_segments_total",
            "Segments deleted to make room while ingest had not committed them (Kafka held them)",
        )
        self.m_losses = metrics.counter(
            "helicone_gateway_broker_data_losses_total",
            "Times the broker was found to have lost acknowledged events (they were sent again)",
            ("reason",),
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._io, self.journal.open)
        self._update_gauges()
        if self.journal.record_count:
            log.info("journal holds %d events from before; they are sent again", self.journal.record_count)
            self._resend.set()
        self._tasks = [
            asyncio.create_task(self._worker(), name="publisher-worker"),
            asyncio.create_task(self._connector(), name="publisher-connector"),
            asyncio.create_task(self._resender(), name="publisher-resender"),
            asyncio.create_task(self._watcher(), name="publisher-watcher"),
        ]

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Journals and sends what is queued and what the journal holds unsent, waits for the broker's
        acks, trims what ingest has committed, then closes. What is left stays in the journal for
        the next start."""
        loop = asyncio.get_running_loop()
        if not self.journal.is_open:  # stopped without a start: still keep what was submitted
            await loop.run_in_executor(self._io, self.journal.open)
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_for(self._queue.join(), drain_timeout)
        if self.connected and self._open.is_set():
            # What the journal holds unsent (journaled while held or while the broker was away, and
            # not yet picked up by the resender, which is cancelled below) goes out now too, so a
            # graceful stop with the broker up leaves nothing unsent; records already in flight are
            # not claimed twice.
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self._resend_pending(loop), drain_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        leftovers = []
        pending, self._taken = self._taken, []
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for builder in pending:
            built = self._build(builder)
            if built is not None:
                leftovers.append(built)
        if leftovers:
            await self._append(leftovers, send=False)
        while self._background or self._lingering:
            # overflow batches still being journaled, record batches still waiting for company (they
            # go now), hand-overs whose linger ended before
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._hand_over_lingering()
        producer = self._producer
        if producer is not None and self.connected:
            with contextlib.suppress(Exception):
                await wait_for(producer.flush(), drain_timeout)
            with contextlib.suppress(Exception):
                await wait_for(self._check_offsets(), drain_timeout)
        await self._disconnect()
        await loop.run_in_executor(self._io, self.journal.close)
        self._io.shutdown(wait=True)
        self._sizes.clear()
        self._backlog = self._taken_bytes = self._overflow_bytes = 0  # all journaled (or lost with the journal)
        self._room.set()
        self._update_gauges()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def ping(self, timeout: float) -> bool:
        """A real round trip to the broker (metadata request), bounded by `timeout`."""
        return await ping_broker(self.bootstrap, timeout, security=self.security)

    # ---- hold / release (the embedded runner's log resets) ------------------------------
    async def hold(self) -> None:
        """Stops handing events to the broker (they are journaled and wait) and returns once
        nothing handed over before is still awaiting its acknowledgement. The active segment is
        sealed, so what was sent before the hold and what waits during it never share a segment."""
        self._open.clear()
        self._drop_lingering("held")  # not handed over yet: they wait in the journal
        await asyncio.get_running_loop().run_in_executor(self._io, self.journal.seal_active)
        taken = 0
        try:
            for _ in range(self._max_in_flight):  # every permit back: nothing in flight
                await self._inflight.acquire()
                taken += 1
        finally:
            for _ in range(taken):
                self._inflight.release()

    def release(self) -> None:
        self._open.set()
        self._resend.set()

    async def committed_to_end(self) -> None:
        """While held: the consumer group has committed the whole log, so every acknowledged
        event is written; the segments holding only such events are deleted, and in the others
        (one sealed by hold() may hold both) such events are never sent again, even after
        log_reset()."""
        trimmed = await asyncio.get_running_loop().run_in_executor(self._io, self.journal.trim_acked, self.journal.generation)
        if trimmed:
            self.m_trimmed.inc(trimmed)
        self._update_gauges()

    async def log_reset(self) -> None:
        """The topic's log was replaced by an empty one on purpose (restarted broker, recreated
        topic): what the journal still holds goes out again, and offsets start over."""
        log.info("the broker's log was reset; %d journaled events go out again", self.journal.record_count)
        self._forget_log()

    # ---- request path ----------------------------------------------------------------
    def submit(self, builder: EventBuilder, size: int = 0) -> None:
        """Queues the event builder; the builder runs on the worker, not on the request path.
        size: the bytes of the bodies it holds, counted in the log backlog until journaled."""
        try:
            self._queue.put_nowait(builder)
        except asyncio.QueueFull:
            # Overloaded: built here to bound memory, then journaled and sent with the other
            # overflowed events in one batch (one task, one journal write).
            built = self._build(builder)
            if built is None:
                return
            if not self._overflow:
                self._spawn(self._flush_overflow())
            self._overflow.append(built)
            self._overflow_bytes += size
        else:
            self._sizes.append(size)
        self._grow(size)

    async def _flush_overflow(self) -> None:
        await asyncio.sleep(0)  # let the events of this loop iteration join the batch
        batch, self._overflow = self._overflow, []
        size, self._overflow_bytes = self._overflow_bytes, 0
        try:
            await self._append(batch, send=True)
        finally:
            self._shrink(size)

    @property
    def backlogged(self) -> bool:
        """The log backlog is over backlog_bytes, and the worker that shrinks it is running (were it
        gone, waiting for room would only add latency to every request)."""
        return not self._room.is_set() and bool(self._tasks) and not self._tasks[0].done()

    async def room(self, timeout: float) -> bool:
        """Waits, at most `timeout` seconds, until the log backlog is back within backlog_bytes."""
        if self._room.is_set():
            return True
        try:
            await wait_for(self._room.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _grow(self, size: int) -> None:
        self._backlog += size
        if self._backlog > self.backlog_bytes and self._room.is_set():
            self._room.clear()

    def _shrink(self, size: int) -> None:
        self._backlog -= size
        if self._backlog <= self.backlog_bytes and not self._room.is_set():
            self._room.set()

    # ---- internals -------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _build(self, builder: EventBuilder) -> tuple[bytes, bytes] | None:
        """(key, encoded event), or None when there is nothing to publish."""
        try:
            event = builder()
            if event is None:
                return None
            key, data = events.message_key(event), events.encode(event)
        except Exception:  # noqa: BLE001 - never let a bad event stop the worker
            log.exception("could not build a log event")
            self.m_dropped.labels("build_error").inc()
            return None
        if record_bytes(key, data) > MAX_RECORD_BYTES:
            # two bodies at a raised HELICONE_MAX_LOGGED_BODY_BYTES (or large fields) may not fit one record: the
            # bodies are cut (flagged truncated) until it does, as the api does. What cannot fit even without them
            # the producer would refuse at every send: dropped before it is journaled (see _send for older journals)
            try:
                fit_record(event)
            except RecordTooLarge as exc:
                self._dropped_too_large(key, data, str(exc))
                return None
            data = events.encode(event)
        return key, data

    def _dropped_too_large(self, key: bytes, data: bytes, why: str = "") -> None:
        log.error("log event %s dropped: %d bytes, over Kafka's record limit (%d)%s",
                  key.decode(errors="replace"), len(data), MAX_RECORD_BYTES, f": {why}" if why else "")
        self.m_dropped.labels("too_large").inc()

    async def _worker(self) -> None:
        while True:
            builders = self._taken
            builders.append(await self._queue.get())
            self._taken_bytes += self._sizes.popleft()
            light = self.journal_linger > 0 and self._queue.empty()
            if light:
                # Light load: the events of the next few milliseconds join this batch, so one journal
                # write, fsync and journal-thread round trip serve several requests instead of each
                # one landing on the next request's time. Under load the queue is never empty here
                # and batches go at once.
                await asyncio.sleep(self.journal_linger)
            # a batch also stops at an eighth of the backlog's budget: bodies that are being journaled
            # are still counted, and smaller batches give room back sooner
            while len(builders) < self.batch_size and self._taken_bytes < self._batch_bytes and not self._queue.empty():
                builders.append(self._queue.get_nowait())
                self._taken_bytes += self._sizes.popleft()
            try:
                if light:
                    # one event per loop iteration: a request arriving meanwhile waits for one build,
                    # not for the batch's
                    built = []
                    for builder in builders:
                        one = self._build(builder)
                        if one is not None:
                            built.append(one)
                        await asyncio.sleep(0)
                else:
                    built = [b for b in map(self._build, builders) if b is not None]
                self._taken = []  # stop() builds what is still here: none of it is journaled yet
                if built:
                    await self._append(built, send=True)
            finally:
                for _ in builders:
                    self._queue.task_done()
                size, self._taken_bytes = self._taken_bytes, 0
                self._shrink(size)
                self.m_queue.set(self._queue.qsize())  # per batch: a gauge write per event costs the request path
                self.m_backlog.set(self._backlog)

    async def _append(self, built: list[tuple[bytes, bytes]], *, send: bool) -> None:
        """Appends to the journal, then (when connected) hands each event to the producer."""
        if not send:
            reason = "stopping"
        elif not self.connected:
            reason = "broker_down"
        elif not self._open.is_set():
            reason = "held"
        else:
            reason = ""
        send = not reason
        generation = self.journal.generation
        try:
            refs = await asyncio.get_running_loop().run_in_executor(
                self._io, partial(self.journal.append, built, inflight=send, sync=True)
            )
        except OSError as exc:  # (append answers a refused write itself: this is anything else)
            self._journal_trouble(exc, len(built))
            self.m_dropped.labels("journal_error").inc(len(built))
            return
        if refs.error is not None:
            self._journal_trouble(refs.error, refs.failed)
        elif self._journal_failing:
            self._journal_failing = False
            log.warning("the event journal works again")
        if refs.failed:
            self.m_dropped.labels("journal_error").inc(refs.failed)
        full = sum(ref is None for ref in refs) - refs.failed
        if full:
            self.m_dropped.labels("journal_full").inc(full)
            if not self._journal_full:  # logged once a run of refusals, as a failing disk is
                self._journal_full = True
                log.error("the event journal is full (HELICONE_JOURNAL_MAX_BYTES, %d bytes): events are dropped "
                          "(helicone_gateway_events_dropped_total{reason=\"journal_full\"}) until there is room",
                          self.journal.max_bytes)
        elif self._journal_full and any(refs):
            self._journal_full = False
            log.warning("the event journal takes events again")
        if self.journal.evicted_segments != self._evicted_seen:
            self.m_evicted.inc(self.journal.evicted_segments - self._evicted_seen)
            self._evicted_seen = self.journal.evicted_segments
        journaled = [(ref, key, data) for ref, (key, data) in zip(refs, built, strict=True) if ref is not None]
        if send and generation != self.journal.generation:
            # The broker lost data while this batch was written (_forget_log, on the loop): the journal
            # sends every unconsumed record again in the new generation, these too. Written after the
            # reset, they would be marked in flight there, and the resender would skip them for ever.
            for ref, _, _ in journaled:
                self.journal.failed(ref, self.journal.generation)
            self._resend.set()
            self._update_gauges()
            return
        if send:
            await self._send_many(journaled, generation)  # what it does not hand over, it counts as spooled
        elif journaled:
            self._spooled(len(journaled), reason)
        self._update_gauges()

    def _journal_trouble(self, exc: OSError, dropped: int) -> None:
        """Logs the journal's first failure of a run of them (a full disk fails every batch until
        there is room: the dropped counter has the numbers)."""
        if self._journal_failing:
            return
        self._journal_failing = True
        if dropped:
            log.error("could not append to the event journal (%s): events are dropped "
                      "(helicone_gateway_events_dropped_total{reason=\"journal_error\"}) until it takes them again", exc)
        else:
            log.error("could not fsync the event journal (%s): its latest events are written and sent, but may not "
                      "survive a power loss", exc)

    def _gave_back_a_past_generations_permit(self, generation: int) -> bool:
        """After a wait for an in-flight permit: if the broker lost data meanwhile (a new generation), the
        permit goes back and nothing of `generation` is sent: the journal has its events unsent in the new
        generation and sends them again there (sent now, they would reach the new log twice)."""
        if generation == self.journal.generation:
            return False
        self._inflight.release()
        self._resend.set()
        return True

    def _partition(self, key: bytes) -> int:
        return self._partitioner(key, self._partitions, self._partitions) if len(self._partitions) > 1 else 0

    async def _send(self, ref: RecordRef, key: bytes, data: bytes, generation: int, path: str) -> str:
        """Hands one journaled event to the producer's batch; the ack is recorded by a callback.
        Returns "" once handed over (or given back to a generation that ended while it waited for a
        permit: not counted, the journal sends the whole generation again), else why not (the spooled
        metric's reason; the journal has it unsent)."""
        producer = self._producer
        if producer is None or not self.connected:
            self.journal.failed(ref, generation)
            return "broker_down"
        await self._inflight.acquire()
        if self._gave_back_a_past_generations_permit(generation):
            return ""
        sent = [(ref, 0)]
        if not self._open.is_set():  # held while this event waited for a permit: it goes out after release
            self._failed(sent, generation)
            self._resend.set()
            return "held"
        try:
            # bounded without wait_for: a full buffer makes send() wait at most request_timeout_ms
            delivery = await producer.send(self.topic, data, key=key, partition=self._partition(key))
        except MessageSizeTooLargeError:
            # this record's refusal, not an outage (one journaled before _build's check): it would fail every
            # resend, each a reconnect, and hold back every record after it
            self._inflight.release()
            self.journal.drop(ref)
            self._dropped_too_large(key, data)
            return ""
        except Exception as exc:  # noqa: BLE001 - broker down, buffer full, timeout
            self._failed(sent, generation)
            self._mark_down(exc)
            return "send_failed"
        self._deliveries.add(delivery)
        delivery.add_done_callback(partial(self._delivered, sent, generation, path))
        return ""

    async def _send_many(self, sends: list[tuple[RecordRef, bytes, bytes]], generation: int) -> None:
        """Hands journaled events to the producer as record batches, one future per batch and
        partition instead of one per event (aiokafka's send() cost 15-18 us of CPU per event, a
        batch's append 6, and each event's future another callback on the loop). Those not handed
        over are unsent in the journal and counted as spooled, each with the reason it was not."""
        by_partition: dict[int, list[tuple[RecordRef, bytes, bytes]]] = {}
        for item in sends:
            by_partition.setdefault(self._partition(item[1]), []).append(item)
        for partition, items in by_partition.items():
            while items:
                items = items[await self._send_batch(partition, items, generation):]

    def _spooled(self, count: int, reason: str) -> None:
        """Events to be sent that were not: the journal has them unsent, for the resender. reason:
        the spooled metric's, or "" for a stale generation's, which the journal sends again anyway."""
        if reason:
            self.m_spooled.labels(reason).inc(count)
        self._resend.set()

    async def _send_batch(self, partition: int, items: list[tuple[RecordRef, bytes, bytes]], generation: int) -> int:
        """Adds the first of `items` that fit to the partition's open record batch; returns how many
        it dealt with (handed over, or left unsent and counted). The batch goes once it is full or permits
        run short (under load: as soon as it fills), else after linger_ms. At light load that is one produce
        request and one acknowledgement per linger_ms, not one per journal batch (each a broker
        round trip) or per event (each a callback on the loop)."""
        producer = self._producer
        if producer is None or not self.connected:
            self.journal.failed(items[0][0], generation)
            self._spooled(1, "broker_down")
            return 1
        if self._inflight.locked():
            # permits run short while open batches hold some: they go now, not at their linger's end
            # (the worker would wait that long, and the events behind it would not even be journaled)
            for p, waiting in list(self._lingering.items()):
                self._linger_over(p, waiting)
        await self._inflight.acquire()  # the only wait: from here to the hand-over nothing yields
        producer = self._producer  # (a reconnect while it waited)
        if producer is None or not self.connected:
            self._inflight.release()
            self.journal.failed(items[0][0], generation)
            self._spooled(1, "broker_down")
            return 1
        if self._gave_back_a_past_generations_permit(generation):
            return len(items)  # (they must not open a batch of the old generation, nor drop a current one)
        open_ = self._lingering.get(partition)  # of this generation: a reset drops them all (_forget_log)
        if open_ is None:
            open_ = self._lingering[partition] = _Lingering(producer.create_batch(), generation)
        dealt, full = 0, False
        for ref, key, data in items:
            if dealt:
                if self._inflight.locked():
                    full = True  # never wait for a permit while holding some: hold() waits for all of them
                    break
                await self._inflight.acquire()  # free: returns without yielding
            appended = open_.batch.append(key=key, value=data, timestamp=None)
            if appended is None:  # the batch is full
                self._inflight.release()
                full = True
                break
            open_.taken.append((ref, appended.offset))
            dealt += 1
        if not open_.taken:  # one event larger than a batch: sent on its own
            del self._lingering[partition]
            reason = await self._send(*items[0], generation, "direct")
            if reason:
                self._spooled(1, reason)
            return 1
        if full or self.linger_ms <= 0 or not self._open.is_set() or not self.connected:
            # (held or disconnected while waiting for the first permit: _hand_over gives them back at once)
            del self._lingering[partition]
            await self._hand_over(partition, open_)
        elif open_.timer is None:
            open_.timer = asyncio.get_running_loop().call_later(self.linger_ms / 1000, self._linger_over, partition, open_)
        return dealt

    def _linger_over(self, partition: int, open_: _Lingering) -> None:
        if self._lingering.get(partition) is open_:
            del self._lingering[partition]
            self._spawn(self._hand_over_later(partition, open_))

    async def _hand_over_later(self, partition: int, open_: _Lingering) -> None:
        """A batch whose linger is over (or sent by a graceful stop): its events' _append has returned."""
        if not await self._hand_over(partition, open_):
            self._update_gauges()

    async def _hand_over(self, partition: int, open_: _Lingering) -> bool:
        """Sends a record batch taken out of _lingering; False if it was not handed over (its events
        unsent in the journal, counted as spooled with the reason)."""
        if open_.timer is not None:
            open_.timer.cancel()
        taken, producer = open_.taken, self._producer
        open_.batch.close()
        if open_.generation != self.journal.generation:
            reason = ""  # the broker lost data meanwhile: the journal sends the whole generation again
        elif not self._open.is_set():
            reason = "held"  # held while these waited: they go out after release
        elif producer is None or not self.connected:
            reason = "broker_down"
        else:
            try:
                # bounded without wait_for: a full buffer makes send_batch() wait at most request_timeout_ms
                delivery = await producer.send_batch(open_.batch, self.topic, partition=partition)
            except Exception as exc:  # noqa: BLE001 - broker down, buffer full, timeout
                self._mark_down(exc)
                reason = "send_failed"
            else:
                self._deliveries.add(delivery)
                delivery.add_done_callback(partial(self._delivered, taken, open_.generation, "direct"))
                return True
        self._failed(taken, open_.generation)
        self._spooled(len(taken), reason)
        return False

    def _drop_lingering(self, reason: str) -> None:
        """Every open record batch, not sent after all (a hold, a disconnect, a new generation): their
        permits back, their events unsent in the journal, for the resender. reason: the spooled
        metric's, or "" for events of a generation the journal sends again anyway."""
        lingering, self._lingering = self._lingering, {}
        for open_ in lingering.values():
            if open_.timer is not None:
                open_.timer.cancel()
            self._failed(open_.taken, open_.generation)
            self._spooled(len(open_.taken), reason)

    async def _hand_over_lingering(self) -> None:
        """Sends every open record batch now (a graceful stop). All are taken at once: a timer that
        fires while one is sent finds its batch gone and starts nothing."""
        lingering, self._lingering = self._lingering, {}
        for partition, open_ in lingering.items():
            await self._hand_over_later(partition, open_)

    def _failed(self, sent: list[tuple[RecordRef, int]], generation: int) -> None:
        """Events that did not reach the broker: their permits back, unsent again in the journal."""
        for ref, _ in sent:
            self._inflight.release()
            self.journal.failed(ref, generation)

    def _delivered(self, sent: list[tuple[RecordRef, int]], generation: int, path: str, fut: asyncio.Future) -> None:
        """The broker's answer to one send: one event (offset 0) or a record batch (each event's offset
        within it), acknowledged at the offset of the batch's first record plus its own."""
        self._deliveries.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self._failed(sent, generation)
            self._mark_down(fut.exception() if not fut.cancelled() else asyncio.CancelledError())
            return
        for _ in sent:
            self._inflight.release()
        self.m_published.labels(path).inc(len(sent))
        md = fut.result()
        base = md.offset
        if generation == self.journal.generation:
            if base < self._last_ack.get(md.partition, -1):
                # a fresh, empty broker hands out offsets from 0 again
                self._broker_lost_data("offset_regressed")
                return
            self._last_ack[md.partition] = base + sent[-1][1]
        acked = self.journal.acked
        for ref, offset in sent:
            acked(ref, md.partition, base + offset, generation)

    def _broker_lost_data(self, reason: str) -> None:
        log.warning("the broker lost acknowledged events (%s); sending the journal again", reason)
        self.m_losses.labels(reason).inc()
        self._forget_log()

    def _forget_log(self) -> None:
        self.journal.forget_deliveries()
        # open record batches hold the old generation's events, which are all unsent again now: they are
        # not sent, and their permits come back now rather than at their linger's end
        self._drop_lingering("")
        self._last_ack.clear()
        self._seen_committed.clear()
        self._seen_end.clear()
        self._commit_floor.clear()
        self._resend.set()

    def _mark_down(self, exc: BaseException | None) -> None:
        if self.connected:
            log.warning("kafka publish failed (%s); journaling until the broker is back", exc.__class__.__name__)
        self._connected.clear()
        self.m_connected.set(0)

    def _update_gauges(self) -> None:
        self.m_backlog.set(self._backlog)
        j = self.journal
        self.m_journal_bytes.set(j.size_bytes)
        self.m_journal_events.set(j.record_count)
        self.m_journal_unacked.set(j.unacked_count())
        self.m_journal_segments.set(len(j.segments))

    # ---- connection ------------------------------------------------------------------
    async def _connector(self) -> None:
        """Keeps a producer connected; every (re)connect sends what the journal still holds unsent."""
        backoff = 0.5
        while True:
            if not self.connected:
                await self._disconnect()
                try:
                    await self._connect()
                    backoff = 0.5
                    self._resend.set()
                except Exception as exc:  # noqa: BLE001 - broker unreachable
                    # stop() cancelled us mid-connect, and the cancellation came out as the connect's error
                    raise_if_cancelling(exc)
                    hint = " (a broker without idempotent producers needs HELICONE_KAFKA_IDEMPOTENT_PRODUCER=false)" if (
                        self.idempotent and isinstance(exc, KafkaError) and not isinstance(exc, KafkaConnectionError)
                    ) else ""
                    log.log(logging.WARNING if hint else logging.INFO, "kafka not usable (%r)%s; retrying in %.1fs", exc, hint, backoff)
                    await self._disconnect()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            await asyncio.sleep(0.2)

    async def _connect(self) -> None:
        timeout = self.publish_timeout
        if self.create_topic:
            await ensure_topics(self.bootstrap, [self.topic], self.partitions, self.replication_factor, timeout,
                                security=self.security)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            **self.security,
            acks="all",
            enable_idempotence=self.idempotent,
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_bytes,
            compression_type=self.compression,
            request_timeout_ms=int(timeout * 1000),
            max_request_size=MAX_RECORD_BYTES,
        )
        self._producer = producer
        await wait_for(producer.start(), timeout)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(timeout * 1000), **self.security)
        await wait_for(self._admin.start(), timeout)
        self._offsets = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, request_timeout_ms=int(timeout * 1000),
            **self.security,
        )
        await wait_for(self._offsets.start(), timeout)
        self._connected.set()
        self.m_connected.set(1)
        log.info("kafka producer connected to %s", self.bootstrap)

    async def _disconnect(self) -> None:
        self._drop_lingering("broker_down")
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        offsets, self._offsets = self._offsets, None
        self._connected.clear()
        self.m_connected.set(0)
        for client, close in ((producer, "stop"), (admin, "close"), (offsets, "stop")):
            if client is not None:
                with contextlib.suppress(Exception):
                    await wait_for(getattr(client, close)(), 5)
        # A send the old producer never answered would hold its record "in flight" (and a permit)
        # forever: it counts as failed, and the record goes out again on the next connection.
        for delivery in list(self._deliveries):
            delivery.cancel()

    # ---- resending -------------------------------------------------------------------
    async def _resender(self) -> None:
        """Sends every journaled event that is neither acknowledged nor in flight, oldest first."""
        loop = asyncio.get_running_loop()
        while True:
            await self._resend.wait()
            self._resend.clear()
            await self._connected.wait()
            await self._open.wait()
            await self._resend_pending(loop)

    async def _resend_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        for seg in self.journal.pending_segments():
            if not await self._resend_segment(loop, seg):
                break
        self._update_gauges()

    async def _resend_segment(self, loop: asyncio.AbstractEventLoop, seg: Segment) -> bool:
        generation = self.journal.generation
        records = await loop.run_in_executor(self._io, self.journal.read, seg)
        for index, (key, data) in enumerate(records):
            if not self.connected or not self._open.is_set() or generation != self.journal.generation:
                self._resend.set()  # go again once connected / from the start of the new generation
                return False
            ref = self.journal.claim(seg, index)
            if ref is not None and await self._send(ref, key, data, generation, "resend"):
                self._resend.set()
                return False
        return True

    # ---- trimming and loss detection ---------------------------------------------------
    async def _watcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await loop.run_in_executor(self._io, self.journal.seal_if_older, self.segment_seconds)
                await loop.run_in_executor(self._io, self.journal.sync)
                if self.connected and self._open.is_set():  # held: the runner is replacing the log
                    await wait_for(self._check_offsets(), self.publish_timeout)
            except Exception as exc:  # noqa: BLE001 - next round tries again
                raise_if_cancelling(exc)
                log.debug("journal check failed: %r", exc)
            self._update_gauges()

    async def _check_offsets(self) -> None:
        """Detects a broker that lost acknowledged events, then deletes the sealed segments the
        ingest group has committed past."""
        admin, offsets = self._admin, self._offsets
        if admin is None or offsets is None:
            return
        if self.topic not in await admin.list_topics():
            # a restarted memory-only broker: reconnecting recreates the topic, then the log end
            # below is found to have moved backwards
            return self._mark_down(RuntimeError(f"topic {self.topic} is gone"))
        generation = self.journal.generation
        holding = self.journal.acked_partitions()  # read before the log end, so later acks cannot look lost
        tps = [TopicPartition(self.topic, p) for p in self._partitions]
        end = await offsets.end_offsets(tps)
        got = await admin.list_consumer_group_offsets(self.consumer_group, partitions=tps)
        if generation != self.journal.generation:
            return
        # A log end that moves backwards means a new, emptier log (the exact end is not compared
        # with acked offsets: some brokers, Tansu among them, report the end of the last batch).
        for tp in tps:
            if end.get(tp, 0) == 0 and tp.partition in holding:
                return self._broker_lost_data("log_emptied")
            if end.get(tp, 0) < self._seen_end.get(tp.partition, 0):
                return self._broker_lost_data("log_end_regressed")
        self._seen_end.update({tp.partition: off for tp, off in end.items()})
        committed = {tp.partition: meta.offset for tp, meta in got.items() if meta is not None}
        for p, off in committed.items():
            if off < self._seen_committed.get(p, -1):
                return self._broker_lost_data("commit_regressed")
        self._seen_committed.update(committed)
        for p, off in committed.items():
            if off >= 0:  # the first real commit in this generation: see Segment.committed_past
                self._commit_floor.setdefault(p, off)
        # After a reset the group may commit an offset carried over from the lost log before it
        # reads the new one: only commits that moved on from the first one seen count then.
        floor = dict(self._commit_floor) if generation > 0 else None
        trimmed = await asyncio.get_running_loop().run_in_executor(
            self._io, self.journal.trim, {p: o for p, o in committed.items() if o >= 0}, generation, floor
        )
        if trimmed:
            self.m_trimmed.inc(trimmed)
