"""Publishes the api's async logs (/custom/v1/log, /v1/traces) to the request-log topic.

Unlike the gateway (which answers the caller first and keeps events in its journal), the api
answers only once Kafka has acknowledged every event of a request (acks=all): 200 means the log
is in Kafka, anything else means it is not, and the caller sends it again (ingest dedupes by
(org, request id)). The api keeps no copy of its own: with the embedded broker (memory storage), a
broker crash loses what ingest had not read yet, as it would for any Kafka producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from helicone_core import events
from helicone_core.cancellation import wait_for
from helicone_core.kafka import MAX_RECORD_BYTES, client_security, ping_broker
from helicone_core.metrics import ServiceMetrics

from .settings import ApiSettings

log = logging.getLogger("helicone.api")


class PublishUnavailable(Exception):
    """Kafka did not acknowledge the events in time: nothing was accepted (answered 503)."""


class LogPublisher:
    def __init__(self, settings: ApiSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.bootstrap = settings.kafka_bootstrap
        self.topic = settings.kafka_topic
        self.timeout = settings.publish_timeout
        self.security = client_security(settings)  # once, at start-up (it may read a CA bundle)
        # the partitions ingest was configured with, as the gateway writes them (publisher.py)
        self._partitions = list(range(settings.kafka_topic_partitions))
        self._partitioner = DefaultPartitioner()
        self._producer: AIOKafkaProducer | None = None
        self._warm_up: asyncio.Task | None = None
        self._connecting = asyncio.Lock()
        self._open = asyncio.Event()  # cleared while the embedded runner holds producers
        self._open.set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.m_published = metrics.counter(
            "helicone_api_events_published_total", "Async-log events acknowledged by Kafka", ("source",))
        self.m_refused = metrics.counter(
            "helicone_api_publish_unavailable_total", "Async-log requests answered 503: Kafka did not acknowledge in time")

    async def start(self) -> None:
        """Connects in the background; if Kafka does not answer, the first publish tries again (the
        api's queries never wait for Kafka)."""
        async def connect() -> None:
            with contextlib.suppress(PublishUnavailable):
                await self._connected(self.timeout)

        self._warm_up = asyncio.create_task(connect(), name="api-kafka-connect")

    async def stop(self) -> None:
        if self._warm_up is not None:
            self._warm_up.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm_up
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def ping(self, timeout: float) -> bool:
        return await ping_broker(self.bootstrap, timeout, security=self.security)

    async def _connected(self, timeout: float) -> AIOKafkaProducer:
        async with self._connecting:
            if self._producer is not None:
                return self._producer
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap, **self.security, acks="all", linger_ms=2,
                request_timeout_ms=max(1000, int(self.timeout * 1000)), max_request_size=MAX_RECORD_BYTES,
            )
            try:
                await wait_for(producer.start(), timeout)
            except BaseException as exc:  # also cancelled (publish's deadline): a half-started producer is stopped
                with contextlib.suppress(Exception):
                    await producer.stop()
                if not isinstance(exc, Exception):
                    raise
                # unreachable, refused, timed out: all mean "not now"
                log.warning("kafka producer for async logs cannot connect to %s: %s", self.bootstrap, exc.__class__.__name__)
                raise PublishUnavailable() from None
            self._producer = producer
            return producer

    async def publish(self, evs: Sequence[events.RequestLogged]) -> None:
        """Returns once Kafka acknowledged every event; raises PublishUnavailable when that did not
        happen within publish_timeout (some may have been written: a retry is deduped by ingest)."""
        if not evs:
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                await self._open.wait()
                self._in_flight += 1
                self._idle.clear()
                try:
                    producer = await self._connected(self.timeout)
                    deliveries = []
                    for ev in evs:
                        key = events.message_key(ev)
                        partition = self._partitioner(key, self._partitions, self._partitions)
                        deliveries.append(await producer.send(self.topic, events.encode(ev), key=key, partition=partition))
                    await asyncio.gather(*deliveries)
                finally:
                    self._in_flight -= 1
                    if self._in_flight == 0:
                        self._idle.set()
        except Exception as exc:  # noqa: BLE001 - timed out, unreachable, refused: not accepted
            if not isinstance(exc, (PublishUnavailable, TimeoutError)):
                log.warning("kafka did not acknowledge async-log events: %s", exc.__class__.__name__)
            self.m_refused.inc()
            raise PublishUnavailable() from None
        for ev in evs:
            self.m_published.labels(ev.source).inc()

    # ---- hold / release: the embedded runner's log resets (helicone_runner.supervision) ----
    async def hold(self) -> None:
        """New publishes wait (up to publish_timeout, then 503); returns once none is in flight."""
        self._open.clear()
        await self._idle.wait()

    def release(self) -> None:
        self._open.set()

    async def committed_to_end(self) -> None:
        """Nothing to trim: the api keeps no copy of what Kafka acknowledged."""

    async def log_reset(self) -> None:
        """Nothing to send again: every event the api accepted had been acknowledged before."""
