"""Supervision of the embedded broker run by `helicone-stack up`.

Restart: when the broker process exits unexpectedly it is started again on the same port (with
backoff if it keeps dying), its topics are created again (memory storage forgot them) and the
consumers in this process are rewound to the start of the new log. The gateway's journal sends
everything ingest had not committed again, so what the dead broker held is not lost. After
`max_quick_crashes` crashes in a row, each soon after its start, it is left down: restarting a broker
that cannot run fixes nothing, and the error (with its last output) goes to the log and `status`.

Recycling (bounded memory): Tansu's memory storage keeps every record until its topic is
deleted. It stores topic configs such as retention.ms / retention.bytes but never applies them,
and DeleteRecords is `todo!()` in its dynostore engine (a request panics the connection task).
Deleting the topic is the one operation that frees records. So once the request-log topic holds
`recycle_records` records the supervisor lets ingest catch up (to `recycle_hold_lag` records, within
`drain_timeout`, producers still sending), then holds every producer (each returns once everything it
sent was acknowledged), waits until the ingest group has committed the end of every partition,
deletes and recreates the topic, rewinds the consumers and releases the producers. Nothing is
lost: only records ingest committed are deleted, and nothing is produced in between (held
events wait in the gateway's queue). This needs every producer and consumer of the topic to be
in this process (the runner's gateway, api and ingest); cli.py turns recycling off otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from helicone_core.cancellation import raise_if_cancelling, wait_for
from helicone_core.kafka import PLAINTEXT, ensure_topics

from .embedded import EmbeddedKafka, EmbeddedPostgres
from .settings import EmbeddedBrokerSettings

log = logging.getLogger("helicone.runner")

STABLE_AFTER = 60.0  # seconds up after which a broker restart is no longer "crashing again"
T = TypeVar("T")


class HeldProducer(Protocol):
    async def hold(self) -> None:
        """Stop sending; return once everything sent before is acknowledged (or kept elsewhere)."""

    def release(self) -> None: ...

    async def committed_to_end(self) -> None:
        """While held: the consumer group committed the whole log (nothing acknowledged is unwritten)."""

    async def log_reset(self) -> None:
        """The log was replaced by an empty one: send again whatever may not have been written."""


class ResettableConsumer(Protocol):
    async def log_reset(self) -> None:
        """The log was replaced by an empty one: read it from the start."""


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


async def to_the_end(step: Awaitable[T]) -> T:
    """Runs `step` to its end even if the caller is cancelled meanwhile; the cancel then goes through
    (a second cancel while waiting stops `step` too)."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # the cancel is what the caller is told about
            await task
        raise


class _Supervision:
    """A supervisor's loop (`_run`) as a task: started once the stack runs, stopped first when it stops (so
    that stopping what it watches is not taken for a crash)."""

    name = "supervisor"
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        raise NotImplementedError


class BrokerSupervisor(_Supervision):
    name = "broker-supervisor"

    def __init__(self, broker: EmbeddedKafka, settings: EmbeddedBrokerSettings, *, topics: Sequence[str], partitions: int,
                 recycled_topic: str, consumer_group: str, producers: Sequence[HeldProducer] = (),
                 consumers: Sequence[ResettableConsumer] = (), recycle: bool = True,
                 on_failed: Callable[[str], None] | None = None) -> None:
        self.broker = broker
        self.settings = settings
        self.topics = list(topics)
        self.partitions = partitions
        self.recycled_topic = recycled_topic
        self.consumer_group = consumer_group
        self.producers = list(producers)
        self.consumers = list(consumers)
        self.recycle_enabled = recycle and settings.recycle_records > 0
        self.restarts = 0
        self.recycles = 0
        self.on_failed = on_failed  # told once why supervision gave up (the runner shows it in `status`)
        self.failed: str | None = None
        self._quick_crashes = 0  # in a row: crashes soon after a start, and starts that failed
        self._last_error = ""
        self._down = False
        # the broker's log was replaced (a restart, a recycle) and its topics are not made, or its consumers and
        # producers not rewound, yet: a step that failed half-way is done again in the next round
        self._new_log_pending = False
        self._backoff = 0.0
        self._started_at = time.monotonic()
        self._next_recycle_check = time.monotonic() + settings.recycle_check_interval

    # ---- supervision -----------------------------------------------------------------
    async def _run(self) -> None:
        while self.failed is None:
            await asyncio.sleep(self.settings.check_interval)
            try:
                if self._down or self.broker.exited() is not None:
                    await self.restart()
                elif self._new_log_pending:
                    await self._finish_new_log()
                elif self.recycle_enabled and time.monotonic() >= self._next_recycle_check:
                    self._next_recycle_check = time.monotonic() + self.settings.recycle_check_interval
                    await self.recycle_if_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep supervising; the next round tries again
                raise_if_cancelling(exc)
                self._last_error = f"{exc.__class__.__name__}: {exc}"
                log.warning("broker supervision: %s", self._last_error)

    # ---- producers -------------------------------------------------------------------
    async def _hold_producers(self, timeout: float) -> bool:
        """True once every producer has nothing in flight; False if that took over `timeout`."""
        held = asyncio.gather(*(p.hold() for p in self.producers))
        try:
            await wait_for(held, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if held.done() and not held.cancelled():
                held.exception()  # seen: a hold cut short by the timeout or a cancel is not "never retrieved"

    def _release_producers(self) -> None:
        for producer in self.producers:
            producer.release()

    async def _reset_consumers(self) -> None:
        for consumer in self.consumers:
            await consumer.log_reset()
        for producer in self.producers:
            await producer.log_reset()

    # ---- restart ---------------------------------------------------------------------
    async def restart(self) -> None:
        """Starts the broker again on the same port (it exited, or the last attempt failed)."""
        if not self._down:
            code = self.broker.exited()
            self.broker.stop()  # reaps it and removes its pid file
            self._down = True
            self.restarts += 1
            crashed_again = time.monotonic() - self._started_at < STABLE_AFTER
            self._backoff = min(max(self._backoff * 2, 0.5), self.settings.restart_max_backoff) if crashed_again else 0.0
            self._quick_crashes = self._quick_crashes + 1 if crashed_again else 0
            self._last_error = f"it exited ({_describe_exit(code or 0)})"
            if self._quick_crashes >= self.settings.max_quick_crashes:
                self._give_up()
                return
            log.warning("kafka broker exited unexpectedly (%s); restarting it on %s in %.1fs "
                        "(helicone_runner_broker_restarts_total=%d); records it held that ingest had not read are lost "
                        "(memory storage)", _describe_exit(code or 0), self.broker.bootstrap, self._backoff, self.restarts)
        elif self._quick_crashes >= self.settings.max_quick_crashes:  # its starts keep failing
            self._give_up()
            return
        await asyncio.sleep(self._backoff)
        # Held while the new log is set up, so that nothing lands in it before the consumers are
        # rewound; events wait in the gateway's journal meanwhile. Released however this ends (a cancel
        # while holding included).
        try:
            await self._hold_producers(self.settings.drain_timeout)
            # once the new broker is starting, its topics are made and everyone rewound even if cancelled
            # meanwhile (a graceful stop): a consumer left at the dead log's offsets would skip the new one
            await to_the_end(self._bring_up())
        finally:
            self._release_producers()
        log.info("kafka broker restarted on %s (pid %s); topics created again", self.broker.bootstrap, self.broker.pid)

    async def _bring_up(self) -> None:
        try:
            await self.broker.start_async()
        except Exception:
            self._backoff = min(max(self._backoff * 2, 0.5), self.settings.restart_max_backoff)
            self._quick_crashes += 1
            raise
        self._down, self._new_log_pending = False, True
        self._started_at = time.monotonic()
        await self._set_up_new_log()

    def _give_up(self) -> None:
        """Leaves the broker down for good: says why, once, in the log and to on_failed."""
        n = self._quick_crashes
        self.failed = (f"kafka broker on {self.broker.bootstrap} not restarted again: {n} crash(es) or failed start(s) in a row, "
                       f"each within {STABLE_AFTER:.0f}s of its start (HELICONE_EMBEDDED_BROKER_MAX_QUICK_CRASHES={self.settings.max_quick_crashes}); "
                       f"last: {self._last_error}; its last output ({self.broker.log_path}): {self.broker.last_output() or '(none)'}. "
                       "The services run on without it; request logs wait in the gateway's journal. "
                       "Fix the cause, then restart the stack (`helicone-stack down`, then `up`)")
        self.broker.stop()  # reaps the last one and removes its pid file
        log.error("%s", self.failed)
        if self.on_failed is not None:
            self.on_failed(self.failed)

    async def _set_up_new_log(self) -> None:
        """The broker's log was replaced: its topics are made, then every consumer and producer rewound to it."""
        await ensure_topics(self.broker.bootstrap, self.topics, self.partitions, 1, security=PLAINTEXT)  # the embedded broker
        await self._reset_consumers()
        self._new_log_pending = False

    async def _finish_new_log(self) -> None:
        """Sets up a new log whose set-up failed half-way (a restart or a recycle that raised after the old
        log was gone): until it is done, ingest reads on at the old log's offsets, past what lands in the new one."""
        try:
            await self._hold_producers(self.settings.drain_timeout)
            await to_the_end(self._set_up_new_log())
        finally:
            self._release_producers()
        log.info("kafka broker's new log set up after an earlier failure: topics made, consumers and producers rewound")

    # ---- recycling -------------------------------------------------------------------
    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(self.recycled_topic, p) for p in range(self.partitions)]

    @contextlib.asynccontextmanager
    async def _clients(self):
        """An admin client and a group-less consumer, new for each look (a broker restart or a
        recreated topic leaves nothing stale behind)."""
        timeout_ms = 5000
        admin = AIOKafkaAdminClient(bootstrap_servers=self.broker.bootstrap, request_timeout_ms=timeout_ms)
        probe = AIOKafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=None, enable_auto_commit=False,
                                 request_timeout_ms=timeout_ms, fetch_max_wait_ms=100, max_partition_fetch_bytes=1024)
        try:
            await admin.start()
            await probe.start()
            probe.assign(self._partitions())
            yield admin, probe
        finally:
            with contextlib.suppress(Exception):
                await probe.stop()
            with contextlib.suppress(Exception):
                await admin.close()

    async def _records(self, probe: AIOKafkaConsumer) -> int:
        """About how many records the topic holds (Tansu answers ListOffsets with the last
        batch's base offset + 1, a little under the true end)."""
        ends = await probe.end_offsets(self._partitions())
        return sum(ends.values())

    async def _committed_to_end(self, admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, wait: float = 10.0) -> bool:
        """True when the group has committed every record of every partition: the broker's answers to
        fetches from the committed offset bring nothing, and the log end they report (the high
        watermark, exact on Tansu) is that offset. Two answers after the seek, so that the second
        answers a fetch asked after it (the first may answer one asked before, of an older log end).
        Nothing is concluded from an answer that has not come: on a busy event loop a fetch answers
        late, and "no record within the timeout" said "committed" of a log nobody had read. False if
        the broker does not answer within `wait` seconds."""
        committed = await admin.list_consumer_group_offsets(self.consumer_group, partitions=self._partitions())
        for tp in self._partitions():
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else 0
            sought, deadline = time.time() * 1000, time.monotonic() + wait
            probe.seek(tp, offset)
            answers, last = 0, None
            while answers < 2:
                if (await probe.getmany(tp, timeout_ms=300, max_records=1)).get(tp):
                    return False
                stamp = probe.last_poll_timestamp(tp)  # when the latest answer for tp was taken in (ms)
                if stamp is not None and stamp >= sought and stamp != last:
                    answers, last = answers + 1, stamp
                elif time.monotonic() > deadline:
                    return False
            if (probe.highwater(tp) or 0) > offset:
                return False
        return True

    async def _lag(self, admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer) -> int:
        """About how many records the group has not committed yet (the log end is a little short
        on Tansu: see _records)."""
        tps = self._partitions()
        ends = await probe.end_offsets(tps)
        committed = await admin.list_consumer_group_offsets(self.consumer_group, partitions=tps)
        done = {tp: meta.offset if meta is not None and meta.offset >= 0 else 0 for tp, meta in committed.items()}
        return sum(max(0, ends.get(tp, 0) - done.get(tp, 0)) for tp in tps)

    async def _wait_caught_up(self, admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, deadline: float) -> bool:
        """Polls, producers unheld, until the group is at most recycle_hold_lag records behind;
        False once `deadline` passes first."""
        while await self._lag(admin, probe) > self.settings.recycle_hold_lag:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def _wait_committed_to_end(self, admin: AIOKafkaAdminClient, probe: AIOKafkaConsumer, deadline: float) -> bool:
        """Polls until the group has committed every record; False once `deadline` passes first."""
        while not await self._committed_to_end(admin, probe):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def drain(self, timeout: float) -> bool:
        """Waits until the ingest group has committed the end of the request-log topic (the
        gateway stopped first, so the log no longer grows): on a graceful stop, everything the
        memory-only broker holds is written before it goes away. True if that happened in time."""
        deadline = time.monotonic() + timeout
        try:
            async with self._clients() as (admin, probe):
                if not await self._wait_committed_to_end(admin, probe, deadline):
                    log.warning("stopping: ingest had not committed the whole log after %.0fs; what it has not "
                                "written stays in the gateway's journal and goes out at the next start", timeout)
                    return False
        except Exception as exc:  # noqa: BLE001 - broker gone: the journal keeps what was not written
            log.warning("stopping: could not drain the broker (%s: %s)", exc.__class__.__name__, exc)
            return False
        log.info("stopping: ingest has written everything the broker held")
        return True

    async def recycle_if_due(self) -> bool:
        """Recycles the topic if it holds `recycle_records` records and ingest committed them all
        within `drain_timeout` (producers held meanwhile); True if it did."""
        async with self._clients() as (admin, probe):
            records = await self._records(probe)
            if records < self.settings.recycle_records:
                return False
            # Everything logged during the hold waits in the gateway's journal: hold only for the
            # last records ingest has to commit, not for a whole backlog (past the wait, hold anyway:
            # the broker's memory must stay bounded even when ingest never quite catches up).
            await self._wait_caught_up(admin, probe, time.monotonic() + self.settings.drain_timeout)
            deadline = time.monotonic() + self.settings.drain_timeout
            # released however this ends, a cancel while holding included (a graceful stop cancels
            # supervision first): a publisher left held would keep what it journals meanwhile unsent
            try:
                if not await self._hold_producers(self.settings.drain_timeout):
                    log.info("not recycling %s: producers still had events in flight after %.0fs; trying later",
                             self.recycled_topic, self.settings.drain_timeout)
                    return False
                if not await self._wait_committed_to_end(admin, probe, deadline):
                    log.info("not recycling %s: ingest has not committed its end within %.0fs; trying later",
                             self.recycled_topic, self.settings.drain_timeout)
                    return False
                # once the topic is going, it is re-created and everyone rewound even if cancelled meanwhile
                # (a graceful stop): a consumer left past the new log's end would never read what lands in it
                await to_the_end(self._replace_log(admin))
            finally:
                self._release_producers()
        self.recycles += 1
        log.info("recycled topic %s: ~%d committed records freed from broker memory (helicone_runner_broker_recycles_total=%d)",
                 self.recycled_topic, records, self.recycles)
        return True

    async def _replace_log(self, admin: AIOKafkaAdminClient) -> None:
        """The group committed the whole log: producers may trim, then an empty topic replaces it and
        every consumer and producer starts over on it."""
        for producer in self.producers:
            await producer.committed_to_end()
        self._new_log_pending = True
        await self._recreate(admin)
        await self._reset_consumers()
        self._new_log_pending = False

    async def _recreate(self, admin: AIOKafkaAdminClient) -> None:
        await admin.delete_topics([self.recycled_topic])
        try:
            await admin.create_topics([NewTopic(self.recycled_topic, self.partitions, 1)])
        except TopicAlreadyExistsError:
            pass  # a client's metadata request created it again in between: empty all the same


class PostgresSupervisor(_Supervision):
    """Restarts the embedded Postgres when its postmaster dies (killed, OOM): it holds the keys and metadata, and
    while it is down the services answer from their last known key set and refuse keys they have not seen. It
    comes back on the same socket (the services' pools reconnect to it) after crash recovery from its WAL. A
    start that fails (a backend of the dead one still holding its shared memory, a full disk) is tried again
    with back-off, for as long as the stack runs: nothing else can serve the services' DSN. A start under way
    when supervision stops ends in its thread."""

    name = "postgres-supervisor"

    def __init__(self, pg: EmbeddedPostgres, check_interval: float = 1.0, max_backoff: float = 30.0) -> None:
        self.pg = pg
        self.check_interval = check_interval
        self.max_backoff = max_backoff
        self.restarts = 0

    async def _run(self) -> None:
        backoff, started_at = 0.0, time.monotonic()
        while True:
            await asyncio.sleep(self.check_interval)
            if await asyncio.to_thread(self.pg.postmaster_pid) is not None:
                continue
            if time.monotonic() - started_at >= STABLE_AFTER:
                backoff = 0.0  # it ran a while: not a crash loop
            log.warning("embedded postgres is not running (its postmaster exited: killed?); starting it again in %.1fs "
                        "(helicone_runner_postgres_restarts_total=%d)", backoff, self.restarts + 1)
            await asyncio.sleep(backoff)
            backoff = min(max(backoff * 2, 0.5), self.max_backoff)  # the next wait, if this start fails or it dies soon
            try:
                await to_the_end(asyncio.to_thread(self.pg.restart))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried again after the back-off
                raise_if_cancelling(exc)
                log.warning("embedded postgres did not start again (%s: %s); its log: %s", exc.__class__.__name__,
                            " ".join(str(exc).split())[:300], self.pg.pgdata / "log")
                continue
            started_at = time.monotonic()
            self.restarts += 1
            log.info("embedded postgres started again (pid %s) after crash recovery", self.pg.postmaster_pid())
