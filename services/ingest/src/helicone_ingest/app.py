"""The Faust ingest app. Its consumer hands RequestLogged events over a fetch at a time, gathered
into batches (batches.py), to one agent that writes them; a batch is acknowledged (so its offsets
can be committed) only after its bodies and rows have been written.
Events that can never be written go to the dead-letter topic with the reason in a header.
Postgres only holds derived metadata: ingest starts, writes and acknowledges without it, connects
in the background and writes the pending metadata once Postgres answers (see metadata.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from helicone_core import db
from helicone_core.analytics import make_analytics_store
from helicone_core.bodies import make_body_store
from helicone_core.cancellation import raise_if_cancelling, wait_for
from helicone_core.cost import CostRegistry
from helicone_core.events import BODIES_PREFIX
from helicone_core.filemodes import private_dir
from helicone_core.kafka import client_security, ensure_topics, ping_broker
from helicone_core.metrics import Check, ServiceMetrics, readiness
from helicone_core.settings import KAFKA_SASL_PROTOCOLS, env_name
from helicone_core.webhooks import WebhookSender

from .batches import Batch, BatchApp, InFlight, Turn, Turns
from .dlq import Origin, dead_letter_headers
from .metadata import PendingMetadata
from .request_webhooks import RequestWebhooks
from .settings import IngestSettings
from .writer import BatchWriter, PreparedBatch, Rejected

# IngestService.decode's answer: what to write (prepared, or the events if preparing failed), what to dead-letter
Decoded = tuple[PreparedBatch | list, list[Rejected]]

log = logging.getLogger("helicone.ingest")

# ingest's producer's bound on a record (a dead letter), above the producers' 4 MiB with room for its headers
DLQ_MAX_REQUEST_SIZE = 16 * 1024 * 1024

BODY_SWEEP_INTERVAL = 3600.0  # seconds between sweeps of the local body store past the retention


class IngestService:
    def __init__(self, settings: IngestSettings, *, analytics=None, bodies=None) -> None:
        self.settings = settings
        self.kafka_security = client_security(settings)  # every Kafka client of ingest uses it
        self.metrics = ServiceMetrics("ingest", settings.region)
        self.analytics = analytics or make_analytics_store(settings)
        self.bodies = bodies or make_body_store(settings)
        self.pool = None
        self.metadata = PendingMetadata(
            self.metrics, max_keys=settings.metadata_max_pending_keys, retry_max_backoff=settings.metadata_retry_max_backoff
        )
        self.webhooks = RequestWebhooks(
            self.metrics, WebhookSender(allow_loopback=settings.webhook_allow_loopback, timeout=settings.webhook_timeout,
                                        attempts=settings.webhook_attempts),
            queue_size=settings.webhook_queue_size, ttl=settings.webhook_config_ttl, concurrency=settings.webhook_concurrency)
        self.writer: BatchWriter | None = None
        self.faust: faust.App | None = None
        self.m_dlq = self.metrics.counter("helicone_ingest_dead_letters_total", "Events sent to the dead-letter topic")
        self.m_assigned = self.metrics.gauge("helicone_ingest_assigned_partitions", "Partitions assigned to this worker")
        self.m_rewinds = self.metrics.counter(
            "helicone_ingest_offset_rewinds_total",
            "Partitions rewound to the log start: position past the log end, or the log reset by the embedded runner",
        )
        self.m_consumer_lag = self.metrics.gauge(
            "helicone_ingest_consumer_lag_events",
            "Events in the partitions assigned to this worker that the group has not committed yet "
            "(log end - committed offset), refreshed every offset_guard_interval",
        )
        self._guard_task: asyncio.Task | None = None
        self._postgres_task: asyncio.Task | None = None
        self._metadata_task: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self._past_end: dict = {}  # partition -> position seen past the log end in the last round

    def _build_faust(self) -> faust.App:
        s = self.settings
        private_dir(s.data_dir / "faust")
        app = BatchApp(
            s.consumer_group,
            broker=[f"kafka://{b.strip()}" for b in s.kafka_bootstrap.split(",")],
            broker_credentials=faust_credentials(self.kafka_security),
            store="memory://",
            web_enabled=False,
            autodiscover=False,
            topic_partitions=s.kafka_topic_partitions,
            topic_replication_factor=s.kafka_replication_factor,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.broker_session_timeout,
            broker_heartbeat_interval=s.broker_heartbeat_interval,
            broker_rebalance_timeout=s.broker_rebalance_timeout,
            broker_commit_every=s.batch_size,
            broker_commit_interval=1.0,
            datadir=str(s.data_dir / "faust"),
            stream_wait_empty=False,
            # what it sends is dead letters: records as they came, which the producers send up to 4 MiB
            # (their max_request_size). Faust's 1 MB default refused a larger one on every retry, holding
            # its partition; the broker, which took the record, is the one to judge its size.
            producer_max_request_size=DLQ_MAX_REQUEST_SIZE,
        )
        app.batch_size, app.batch_max_bytes = s.batch_size, s.batch_max_bytes
        app.batch_within, app.batch_gap, app.fetch_wait = s.batch_within, s.batch_gap, s.fetch_wait
        app.batch_light_events, app.batch_gap_light = s.batch_light_events, s.batch_gap_light
        app.topics.add(app.topic(s.kafka_topic, value_type=bytes, value_serializer="raw", key_serializer="raw"))
        dlq = app.topic(s.kafka_dlq_topic, value_type=bytes, value_serializer="raw", key_serializer="raw")
        # The consumer hands each batch to the agent through a channel, at most two at a time. The
        # agent decodes a batch while the one before is being written (the stores' I/O and chDB's
        # insert run off the event loop's thread) and starts its write at once: its bodies are stored
        # while the batch before inserts its rows, and it inserts its own in the next turn (Turns), so
        # rows go in one batch at a time, in order, each right after the one before. Acknowledgements
        # stay in order too: a batch is acknowledged after the one before it.
        batches = app.channel()
        in_flight = InFlight(2)
        turns = Turns()
        service = self

        async def hand_over(batch: Batch) -> None:
            await in_flight.enter(batch)
            try:
                await batches.put(batch)
            except BaseException:  # abandoned (a rebalance, see BatchConsumer._hand_over) or stopping
                in_flight.leave(batch)
                raise

        async def write(batch: Batch, decoded: Decoded, turn: Turn, before: asyncio.Task | None, origins: Sequence[Origin]) -> None:
            try:
                await service.write_decoded(decoded, dlq, turn, origins)
                if before is not None:
                    await asyncio.wait([before])
                batch.ack()
            finally:
                turn.end()
                in_flight.leave(batch)

        @app.agent(batches, name="request-logged-writer")
        async def write_request_logs(stream):
            writes: list[tuple[asyncio.Task, Turn, Batch]] = []
            try:
                async for batch in stream:
                    if not batch.current():  # read again: from the committed offsets, or its partitions from their new log
                        in_flight.leave(batch)
                        continue
                    # at most two writes unfinished, stale ones included (InFlight stops counting a batch
                    # a rebalance made stale, and a stuck write must not gather decoded batches behind it)
                    while len(writes := [w for w in writes if not w[0].done()]) >= 2:
                        await asyncio.wait([writes[0][0]])
                    origins = batch.origins()
                    keys, values = batch.take()
                    decoded = await service.decode(values, keys, origins)
                    before = writes[-1][0] if writes else None
                    turn = turns.next()
                    writes.append((asyncio.create_task(write(batch, decoded, turn, before, origins), name="ingest-write"), turn, batch))
            finally:
                for task, turn, batch in reversed(writes):  # stopping: an unfinished batch is not acknowledged (read again)
                    await _cancel(task)
                    turn.end()  # a task cancelled before it started never ran its own finally
                    in_flight.leave(batch)

        app.batch_handler = hand_over
        return app

    async def decode(self, raws: list[bytes | None], keys: list[bytes | None] | None = None,
                     origins: Sequence[Origin] | None = None) -> Decoded:
        """The batch's events made ready to write (their rows and body packs), and those to dead-letter
        (with their record's key and origin, `keys` and `origins` in the order of `raws`)."""
        assert self.writer is not None
        good, bad = self.writer.decode(list(raws), keys, origins)
        try:
            return await self.writer.prepare_in_steps(good), bad
        except Exception as exc:  # noqa: BLE001 - write() prepares them again, under _retry like every write
            log.warning("ingest prepare failed (%s: %s); the write retries it", exc.__class__.__name__, exc)
            return good, bad

    async def write_decoded(self, decoded: Decoded, dlq, turn: Turn | None = None, origins: Sequence[Origin] | None = None) -> None:
        """Dead-letters decode()'s rejected events, writes the good ones (their rows in `turn`,
        see BatchWriter.write) and dead-letters those whose rows ClickHouse refuses, each retried until
        it succeeds; never raises (the batch is acknowledged after it, so giving up would hold its
        partitions' commits for good). `origins`: the batch's records', for the dead letters' headers."""
        good, bad = decoded
        for rejected in bad:
            await self._retry(lambda r=rejected: self._dead_letter(dlq, r), "dead-letter")
        refused: list[Rejected] = []

        async def write() -> None:
            refused[:] = await self.writer.write(good, turn)

        await self._retry(write, "write")
        if refused and origins:  # the record of each refused event: the last of its identity (the copy decode kept)
            by_key = {o.key: o for o in origins if o.key is not None}
            for rejected in refused:
                rejected.origin = by_key.get(rejected.key)
        for rejected in refused:  # events whose rows ClickHouse refuses (written as they are, they never would be)
            await self._retry(lambda r=rejected: self._dead_letter(dlq, r), "dead-letter")

    async def _dead_letter(self, dlq, rejected: Rejected) -> None:
        # the record as it came (its key too, so a replay lands on the identity's partition); a record
        # with neither a key nor a value cannot be produced, so such a null value goes as empty bytes
        raw, key = rejected.raw, rejected.key
        if raw is None and key is None:
            raw = b""
        headers = dead_letter_headers(rejected.reason, rejected.error_class, rejected.origin)
        fut = await dlq.send(key=key, value=raw, headers=headers)
        await fut
        self.m_dlq.inc()
        log.warning("event sent to dead-letter topic: %s", rejected.reason)

    async def _retry(self, op, what: str) -> None:
        backoff = 0.2
        while True:
            try:
                await op()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - transient store failure: hold the batch
                raise_if_cancelling(exc)
                log.warning("ingest %s failed (%s: %s); retrying in %.1fs", what, exc.__class__.__name__, exc, backoff)
                await asyncio.sleep(backoff * (1 + random.random() / 4))
                backoff = min(backoff * 2, self.settings.retry_max_backoff)

    async def start(self) -> None:
        s = self.settings
        await self.bodies.start()
        await self.analytics.init_schema()
        self.writer = BatchWriter(self.analytics, self.bodies, self.metadata, self.metrics,
                                  CostRegistry.load(s.cost_registry_file), s.retention_days, webhooks=self.webhooks)
        await self.webhooks.sender.start()
        self.webhooks.start()
        self._postgres_task = asyncio.create_task(self._connect_postgres(), name="ingest-postgres")
        self._metadata_task = asyncio.create_task(self.metadata.run(), name="ingest-metadata")
        await ensure_topics(s.kafka_bootstrap, [s.kafka_topic, s.kafka_dlq_topic], s.kafka_topic_partitions, s.kafka_replication_factor,
                            security=self.kafka_security)
        self.faust = self._build_faust()
        await self.faust.start()
        self._guard_task = asyncio.create_task(self._offset_guard())
        if s.retention_days and hasattr(self.bodies, "sweep"):  # the local store; S3's is a lifecycle rule (README)
            self._sweep_task = asyncio.create_task(self._sweep_bodies(), name="ingest-body-sweep")
        await self._check_body_retention()

    async def _check_body_retention(self) -> None:
        """Warns when retention_days is set and the S3 bucket's lifecycle rules do not expire the bodies within it
        (the operator adds the rule: README, "Configuration of a cluster deployment"); never stops ingest."""
        days = self.settings.retention_days
        if not days or not hasattr(self.bodies, "expiry_days"):
            return
        prefix, bucket = BODIES_PREFIX, f"S3 bucket {self.bodies.bucket!r}"
        try:
            expires = await self.bodies.expiry_days(prefix)
        except Exception as exc:  # noqa: BLE001 - e.g. AccessDenied: the role may not read the lifecycle
            raise_if_cancelling(exc)
            log.warning("%s %d: could not check that the %s expires the bodies (%s: %s)", env_name("retention_days"), days,
                        bucket, exc.__class__.__name__, exc)
            return
        if expires is None:
            found = f"has no lifecycle rule expiring objects under {prefix}"
        elif expires > days:
            found = f"expires objects under {prefix} after {expires} days"
        else:
            return
        log.warning("%s %d, but the %s %s: request and response bodies stay after their rows are gone; add a "
                    "lifecycle rule of %d days on the prefix %s (README, \"Configuration of a cluster deployment\")",
                    env_name("retention_days"), days, bucket, found, days, prefix)

    async def _sweep_bodies(self) -> None:
        """Deletes the local store's bodies older than retention_days, at start and every BODY_SWEEP_INTERVAL
        (ClickHouse drops their rows by the tables' TTL)."""
        while True:
            try:
                removed = await self.bodies.sweep(self.settings.retention_days * 86400)
                if removed:
                    log.info("retention: deleted %d body files older than %d days", removed, self.settings.retention_days)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a file error: try again next round
                raise_if_cancelling(exc)
                log.warning("retention: body sweep failed (%s: %s)", exc.__class__.__name__, exc)
            await asyncio.sleep(BODY_SWEEP_INTERVAL)

    async def _connect_postgres(self) -> None:
        """Connects and migrates, retrying until Postgres answers; then the pending metadata flows."""
        backoff, attempts = 0.5, 0
        while True:
            attempts += 1
            try:
                await self._connect_postgres_once()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres unreachable: rows and bodies do not wait for it
                raise_if_cancelling(exc)
                # warn once per outage, not on every attempt
                log.log(logging.WARNING if attempts == 1 else logging.DEBUG,
                        "postgres not reachable (%s: %s); metadata stays pending, retrying in %.1fs",
                        exc.__class__.__name__, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.metadata_retry_max_backoff)

    async def _connect_postgres_once(self) -> None:
        s = self.settings
        pool = await wait_for(db.connect_pool(s.postgres_dsn.get_secret_value(), max_size=5), s.postgres_timeout)
        try:
            await db.migrate(pool)  # bounded by the pool's command timeout (it may wait for another service's migration)
        except BaseException:
            pool.terminate()
            raise
        self.pool = pool
        self.metadata.attach(pool)
        self.webhooks.attach(pool)
        log.info("postgres connected; %d metadata keys pending", len(self.metadata))

    async def _offset_guard(self) -> None:
        """Rewinds partitions whose consumer position is past the end of the log, and measures
        the consumer lag, every offset_guard_interval.

        A position past the end happens when a topic was recreated or truncated under a consumer
        group (or a memory-only broker restarted) while the group kept its old offsets. Kafka
        answers such a fetch with OFFSET_OUT_OF_RANGE and the reset policy applies; brokers that
        answer with an empty fetch instead would leave ingest waiting forever. Re-reading is safe:
        writes are idempotent."""
        while True:
            for step in (self._rewind_past_end, self._measure_lag):
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - broker unreachable: try again next round
                    raise_if_cancelling(exc)
                    log.debug("offset guard: %s skipped a round: %s", step.__name__, exc)
            await asyncio.sleep(self.settings.offset_guard_interval)

    async def _rewind_past_end(self) -> None:
        consumer = self.faust.consumer if self.faust is not None else None
        if consumer is None:
            return
        tps = list(consumer.assignment())
        if not tps:
            return
        # The log end is the high watermark of the consumer's own latest fetch response: it is
        # never behind the position on a live log. (ListOffsets is not used: Tansu answers it
        # with the last batch's base offset + 1.)
        stuck: dict = {}
        for tp in tps:
            position, end = await consumer.position(tp), consumer.highwater(tp)
            if position is None or end is None or position <= end:
                continue
            stuck[tp] = position
            if self._past_end.get(tp) != position:
                continue  # act only when the same position was past the end last round too
            start = (await consumer.earliest_offsets(tp)).get(tp) or 0
            log.warning("partition %s: position %s is past the log end %s; rewinding to %s", tp, position, end, start)
            await self._rewind(consumer, tp, start)
            stuck.pop(tp)
        self._past_end = stuck

    async def _measure_lag(self) -> None:
        """Sets helicone_ingest_consumer_lag_events (see consumer_lag) for the request-log
        partitions assigned to this worker (not Faust's own assignor topic); 0 when none is."""
        consumer = self.faust.consumer if self.faust is not None else None
        assigned = consumer.assignment() if consumer is not None else ()
        tps = [tp for tp in assigned if tp.topic == self.settings.kafka_topic]
        if not tps:
            self.m_consumer_lag.set(0)
            return
        # The log end: the high watermark of the consumer's latest fetch or the broker's answer to
        # one ListOffsets request for them all, whichever is further. The watermark stands still
        # while the consumer does not fetch (its buffers are full: ingest is behind, just when the
        # lag matters); ListOffsets falls a little short on Tansu (the last batch's base offset + 1).
        listed = await consumer.highwaters(*tps)
        ends = {tp: max(consumer.highwater(tp) or 0, listed.get(tp) or 0) for tp in tps}
        # What Faust committed for the group on these partitions (read from the broker when they
        # were assigned, then updated with each commit); None when nothing is committed yet: then
        # nothing from the log start is (a fresh group, or a rewind, starts there), fetched or not.
        committed = {tp: consumer._committed_offset.get(tp) for tp in tps}
        uncommitted = [tp for tp in tps if committed[tp] is None]
        starts = await consumer.earliest_offsets(*uncommitted) if uncommitted else {}
        self.m_consumer_lag.set(consumer_lag(ends, committed, starts))

    async def _rewind(self, consumer, tp, offset: int) -> None:
        # forget the offsets Faust tracked for the old log, or it would skip the new records
        consumer._committed_offset[tp] = None
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._gap.pop(tp, None)
        consumer.rewound(tp, offset)  # batches fetched before are neither written nor acknowledged
        await consumer.seek(tp, offset)
        self.m_rewinds.inc()

    async def log_reset(self) -> None:
        """The broker's log was reset under this consumer (the embedded runner recreated the
        topic or restarted its in-memory broker): every position and offset Faust tracks refers
        to the old log, so each assigned partition goes back to the start of the new one. A
        partition assigned later starts from the group's offsets on the new log: none, so the
        start too. Re-reading is safe: writes are idempotent."""
        consumer = self.faust.consumer if self.faust is not None else None
        if consumer is None:
            return
        for tp in list(consumer.assignment()):
            try:
                await self._rewind(consumer, tp, 0)
            except Exception as exc:  # noqa: BLE001 - revoked meanwhile: the new assignment starts at the start
                log.info("partition %s not rewound after a log reset (%s)", tp, exc.__class__.__name__)
        self._past_end = {}

    async def stop(self) -> None:
        for task in (self._guard_task, self._postgres_task, self._sweep_task):
            await _cancel(task)
        if self.faust is not None:
            await self.faust.stop()
        await _cancel(self._metadata_task)
        await self.webhooks.stop()  # deliveries still queued are not sent (at most once, like Helicone's)
        await self.webhooks.sender.close()
        if self.pool is None and len(self.metadata):
            # Postgres may be back between two reconnection attempts: one last try, bounded
            with contextlib.suppress(Exception):
                await wait_for(self._connect_postgres_once(), self.settings.metadata_stop_timeout)
        await self.metadata.close(self.settings.metadata_stop_timeout)
        if self.pool is not None:
            try:
                await wait_for(self.pool.close(), self.settings.postgres_timeout)
            except Exception:  # noqa: BLE001 - a hung or unreachable Postgres must not hold the shutdown
                self.pool.terminate()
        await self.analytics.close()
        await self.bodies.close()

    async def ready(self) -> dict[str, Check]:
        """Not ready without the broker, a partition or the stores it writes to; Postgres is
        optional (its metadata waits in memory until Postgres answers, see metadata.py)."""
        s = self.settings
        assigned = len(self.faust.consumer.assignment()) if self.faust is not None and self.faust.consumer else 0
        self.m_assigned.set(assigned)
        return await readiness(
            s.readiness_timeout,
            required={"kafka": ping_broker(s.kafka_bootstrap, s.readiness_timeout, security=self.kafka_security), "consumer_assigned": assigned > 0,
                      "analytics": self.analytics.ping(), "bodies": self.bodies.ping()},
            optional={"postgres": db.ping(self.pool)},
        )


def consumer_lag(ends: dict, committed: dict, starts: dict) -> int:
    """Sum over partitions of (log end - the group's committed offset, or the log start where
    nothing is committed). A committed offset past the end (a log recreated under the group,
    see _offset_guard) counts 0, not a negative lag."""
    total = 0
    for tp, end in ends.items():
        done = committed.get(tp)
        if done is None:
            done = starts.get(tp)
        if done is not None:
            total += max(end - done, 0)
    return total


def faust_credentials(security: Mapping[str, Any]) -> faust.types.auth.CredentialsT | None:
    """Faust's form of client_security(settings): Faust builds its aiokafka consumer and producer
    from these (faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth), giving them the
    same options as every other client."""
    protocol = security["security_protocol"]
    if protocol in KAFKA_SASL_PROTOCOLS:
        # SASLCredentials picks SASL_SSL exactly when it gets a TLS context
        return faust.SASLCredentials(
            username=security["sasl_plain_username"], password=security["sasl_plain_password"],
            mechanism=security["sasl_mechanism"], ssl_context=security.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(security["ssl_context"])
    return None


async def _cancel(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
