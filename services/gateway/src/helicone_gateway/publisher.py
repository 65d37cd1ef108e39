"""Publishes RequestLogged events to Kafka off the request path.

submit() never blocks and never raises: the event is built and sent by a background worker.
If Kafka cannot take an event it goes to the on-disk spool, which a replay loop drains once
the broker answers again. hold()/release() pause handing events to the broker (the embedded
runner resets the broker's log in between; see helicone_runner.supervision).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from helicone_core import events
from helicone_core.kafka import ensure_topics, ping_broker
from helicone_core.metrics import ServiceMetrics

from .spool import Spool

log = logging.getLogger(__name__)

EventBuilder = Callable[[], "events.RequestLogged | None"]


class EventPublisher:
    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        spool: Spool,
        metrics: ServiceMetrics,
        queue_size: int = 10_000,
        publish_timeout: float = 5.0,
        replay_interval: float = 2.0,
        create_topic: bool = True,
        partitions: int = 1,
        replication_factor: int = 1,
        max_in_flight: int = 2000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.spool = spool
        self.publish_timeout = publish_timeout
        self.replay_interval = replay_interval
        self.create_topic = create_topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self._queue: asyncio.Queue[EventBuilder] = asyncio.Queue(maxsize=queue_size)
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task] = []
        self._connected = asyncio.Event()
        self._max_in_flight = max_in_flight
        self._inflight = asyncio.Semaphore(max_in_flight)
        self._open = asyncio.Event()  # cleared while held
        self._open.set()
        self._replay_lock = asyncio.Lock()  # held while a replay chunk is with the broker
        self._spooling: set[asyncio.Task] = set()

        self.m_published = metrics.counter("helicone_gateway_events_published_total", "Log events accepted by Kafka", ("path",))
        self.m_spooled = metrics.counter("helicone_gateway_events_spooled_total", "Log events written to the on-disk spool")
        self.m_dropped = metrics.counter("helicone_gateway_events_dropped_total", "Log events lost", ("reason",))
        self.m_queue = metrics.gauge("helicone_gateway_publish_queue_depth", "Log events waiting to be published")
        self.m_spool_bytes = metrics.gauge("helicone_gateway_spool_bytes", "Bytes in the on-disk spool")
        self.m_spool_events = metrics.gauge("helicone_gateway_spool_events", "Events in the on-disk spool")
        self.m_connected = metrics.gauge("helicone_gateway_kafka_connected", "1 while the Kafka producer is connected")
        self._update_gauges()

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name="publisher-worker"),
            asyncio.create_task(self._connector(), name="publisher-connector"),
        ]

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Publishes what is queued (or spools it), then closes the producer."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._queue.join(), drain_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # anything still queued goes to disk
        while not self._queue.empty():
            builder = self._queue.get_nowait()
            built = self._build(builder)
            if built is not None:
                await self._spool(built[1])
        await self._close_producer()  # flushes; undelivered events fail over to the spool
        if self._spooling:
            await asyncio.gather(*self._spooling, return_exceptions=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def hold(self) -> None:
        """Stops handing events to the broker; returns once every event handed over before has
        been acknowledged or spooled. Events wait in the queue meanwhile (overflow: spool)."""
        self._open.clear()
        taken = 0
        try:
            async with self._replay_lock:  # a replay chunk under way finishes first
                for _ in range(self._max_in_flight):  # all permits back: nothing in flight
                    await self._inflight.acquire()
                    taken += 1
        finally:
            for _ in range(taken):
                self._inflight.release()

    def release(self) -> None:
        self._open.set()

    async def ping(self, timeout: float) -> bool:
        """A real round trip to the broker (metadata request), bounded by `timeout`."""
        return await ping_broker(self.bootstrap, timeout)

    # ---- request path ----------------------------------------------------------------
    def submit(self, builder: EventBuilder) -> None:
        """Queues the event builder; the builder runs on the worker, not on the request path."""
        try:
            self._queue.put_nowait(builder)
        except asyncio.QueueFull:
            # Overloaded: keep the event anyway, in the spool (the file write runs in a thread).
            built = self._build(builder)
            if built is not None:
                asyncio.get_running_loop().create_task(self._spool(built[1]))
        self.m_queue.set(self._queue.qsize())

    # ---- internals -------------------------------------------------------------------
    def _build(self, builder: EventBuilder) -> tuple[bytes, bytes] | None:
        """(key, encoded event), or None when there is nothing to publish."""
        try:
            event = builder()
            return None if event is None else (events.message_key(event), events.encode(event))
        except Exception:  # noqa: BLE001 - never let a bad event stop the worker
            log.exception("could not build a log event")
            self.m_dropped.labels("build_error").inc()
            return None

    async def _worker(self) -> None:
        while True:
            builder = await self._queue.get()
            try:
                built = self._build(builder)
                if built is not None:
                    await self._dispatch(*built)
            finally:
                self._queue.task_done()
                self.m_queue.set(self._queue.qsize())

    async def _dispatch(self, key: bytes, data: bytes) -> None:
        """Hands the event to the producer's batch without waiting for the broker's ack; the
        delivery callback spools it if the broker never takes it."""
        producer = self._producer
        if producer is None or not self.connected:
            await self._spool(data)
            return
        while True:
            await self._open.wait()
            await self._inflight.acquire()
            if self._open.is_set():
                break
            self._inflight.release()  # held while this event waited for a permit
        try:
            delivery = await asyncio.wait_for(producer.send(self.topic, data, key=key), self.publish_timeout)
        except Exception as exc:  # noqa: BLE001 - broker down, buffer full, timeout
            self._inflight.release()
            self._mark_down(exc)
            await self._spool(data)
            return
        delivery.add_done_callback(lambda fut, data=data: self._delivered(fut, data))

    def _delivered(self, fut: asyncio.Future, data: bytes) -> None:
        self._inflight.release()
        if not fut.cancelled() and fut.exception() is None:
            self.m_published.labels("direct").inc()
            return
        self._mark_down(fut.exception() if not fut.cancelled() else asyncio.CancelledError())
        task = asyncio.get_running_loop().create_task(self._spool(data))
        self._spooling.add(task)
        task.add_done_callback(self._spooling.discard)

    def _mark_down(self, exc: BaseException | None) -> None:
        if self.connected:
            log.warning("kafka publish failed (%s); spooling until the broker is back", exc.__class__.__name__)
        self._connected.clear()
        self.m_connected.set(0)

    async def _spool(self, data: bytes) -> None:
        try:
            ok = await asyncio.to_thread(self.spool.write, data)
        except OSError:
            log.exception("could not write to the spool")
            ok = False
        if ok:
            self.m_spooled.inc()
        else:
            self.m_dropped.labels("spool_full").inc()
        self._update_gauges()

    def _update_gauges(self) -> None:
        self.m_spool_bytes.set(self.spool.size_bytes)
        self.m_spool_events.set(self.spool.count)

    async def _connector(self) -> None:
        """Keeps a producer connected and drains the spool whenever Kafka answers."""
        backoff = 0.5
        while True:
            if not self.connected:
                await self._close_producer()
                try:
                    await self._connect()
                    backoff = 0.5
                except Exception as exc:  # noqa: BLE001 - broker unreachable
                    log.info("kafka not reachable (%s); retrying in %.1fs", exc.__class__.__name__, backoff)
                    await self._close_producer()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
            if self.spool.count and self._open.is_set():
                await self._replay()
            await asyncio.sleep(self.replay_interval)

    async def _connect(self) -> None:
        if self.create_topic:
            await ensure_topics(self.bootstrap, [self.topic], self.partitions, self.replication_factor, self.publish_timeout)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=False,
            linger_ms=5,
            request_timeout_ms=int(self.publish_timeout * 1000),
            max_request_size=4 * 1024 * 1024,
        )
        self._producer = producer
        await asyncio.wait_for(producer.start(), self.publish_timeout)
        self._connected.set()
        self.m_connected.set(1)
        log.info("kafka producer connected to %s", self.bootstrap)

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._connected.clear()
        self.m_connected.set(0)
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 5)

    async def _replay(self, chunk: int = 200) -> None:
        """Sends the spool oldest first, `chunk` events in flight at a time; a file is removed
        only after the broker acknowledged it."""
        producer = self._producer
        while producer is not None and self.connected and self.spool.count and self._open.is_set():
            async with self._replay_lock:
                if not self._open.is_set() or not await self._replay_chunk(producer, chunk):
                    return

    async def _replay_chunk(self, producer: AIOKafkaProducer, chunk: int) -> bool:
        """One chunk of the spool; False when there is nothing more to send now."""
        paths = await asyncio.to_thread(self.spool.oldest, chunk)
        if not paths:
            return False
        sent = []
        try:
            for path in paths:
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                except FileNotFoundError:
                    continue
                key = events.message_key(events.RequestLogged.FromString(data))
                sent.append((path, await asyncio.wait_for(producer.send(self.topic, data, key=key), self.publish_timeout)))
            for path, delivery in sent:
                await asyncio.wait_for(delivery, self.publish_timeout)
                await asyncio.to_thread(self.spool.remove, path)
                self.m_published.labels("replay").inc()
        except Exception as exc:  # noqa: BLE001 - broker went away again: keep the rest on disk
            self._mark_down(exc)
            return False
        finally:
            self._update_gauges()
        return True
