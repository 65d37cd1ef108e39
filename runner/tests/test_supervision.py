"""The embedded broker's supervision against real Tansu brokers: recycling keeps the broker's
memory bounded without losing a record; a killed broker is restarted with its topics; pid files
only ever kill the process they recorded."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from helicone_core.kafka import PLAINTEXT, ensure_topics
from helicone_runner.embedded import DataDirLock, EmbeddedKafka, PidFile, alive, cmdline
from helicone_runner.settings import EmbeddedBrokerSettings
from helicone_runner.supervision import BrokerSupervisor

from tests.support.net import free_port

TOPIC = "recycle-test"
GROUP = "recycle-test-ingest"
ROUNDS = 6
PER_ROUND = 10_000  # 60,000 events in all
PAYLOAD = b"x" * 100


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


class Producer:
    """A real producer that honours hold()/release() as the gateway's publisher does."""

    def __init__(self, bootstrap: str) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        self._open = asyncio.Event()
        self._open.set()
        self.committed_ends = self.log_resets = 0
        self.holds = 0

    async def send(self, first: int, n: int) -> None:
        await self._open.wait()
        futures = [await self.producer.send(TOPIC, PAYLOAD + str(i).encode()) for i in range(first, first + n)]
        await asyncio.gather(*futures)

    async def hold(self) -> None:
        self._open.clear()
        self.holds += 1
        await self.producer.flush()

    def release(self) -> None:
        self._open.set()

    async def committed_to_end(self) -> None:
        self.committed_ends += 1

    async def log_reset(self) -> None:
        self.log_resets += 1


class Consumer:
    """A consumer of the group the supervisor watches: reads everything, commits, and goes back
    to the start of the log on log_reset() (as ingest does)."""

    def __init__(self, bootstrap: str) -> None:
        self.tp = TopicPartition(TOPIC, 0)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False,
                                         auto_offset_reset="earliest")
        self.seen: list[bytes] = []
        self.resets = 0

    async def start(self) -> None:
        await self.consumer.start()
        self.consumer.assign([self.tp])

    async def read_all(self, expected_total: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < expected_total:
            assert time.monotonic() < deadline, f"read {len(self.seen)} of {expected_total}"
            batch = await self.consumer.getmany(self.tp, timeout_ms=500, max_records=5000)
            self.seen += [m.value for m in batch.get(self.tp, [])]
        await self.consumer.commit()

    async def log_reset(self) -> None:
        self.resets += 1
        self.consumer.seek(self.tp, 0)


async def run_broker(tmp_path, name: str, recycle: bool) -> tuple[list[int], Consumer, BrokerSupervisor, Producer]:
    """Sends ROUNDS x PER_ROUND events; after each round the consumer reads and commits them and
    (recycle=True) the supervisor recycles the topic. Returns the broker's RSS after each round."""
    settings = EmbeddedBrokerSettings(recycle_records=PER_ROUND // 2, drain_timeout=20)
    async with supervised(tmp_path, settings, name=name, recycle=recycle) as (producer, consumer, supervisor):
        rss = []
        for r in range(ROUNDS):
            await producer.send(r * PER_ROUND, PER_ROUND)
            await consumer.read_all((r + 1) * PER_ROUND)
            if recycle:
                assert await supervisor.recycle_if_due()
            rss.append(rss_kb(supervisor.broker.pid))
    return rss, consumer, supervisor, producer


async def test_recycling_bounds_broker_memory_and_loses_nothing(tmp_path):
    control, control_consumer, _, _ = await run_broker(tmp_path, "control", recycle=False)
    recycled, consumer, supervisor, producer = await run_broker(tmp_path, "recycled", recycle=True)
    print(f"\nbroker VmRSS (KB) after each {PER_ROUND} events: control {control}, recycled {recycled}")

    expected = [PAYLOAD + str(i).encode() for i in range(ROUNDS * PER_ROUND)]
    assert control_consumer.seen == expected
    assert consumer.seen == expected  # every event read once, in order, across all the recycles
    assert supervisor.recycles == ROUNDS and consumer.resets == ROUNDS
    # the producer heard both: the whole log was committed (its journal may trim), then the log reset
    assert producer.committed_ends == ROUNDS and producer.log_resets == ROUNDS
    # the control keeps every record: it grows round after round (~1.5 MB per 10,000 here)
    control_growth = control[-1] - control[1]
    assert control_growth > 4_000, control
    # the recycled broker reuses what it freed: past the first round it grows a small fraction
    recycled_growth = recycled[-1] - recycled[1]
    assert recycled_growth < control_growth * 0.25, (control, recycled)
    assert recycled[-1] < control[-1] - 4_000


async def test_no_recycling_before_the_group_committed_everything(tmp_path):
    settings = EmbeddedBrokerSettings(recycle_records=10, drain_timeout=1)
    async with supervised(tmp_path, settings) as (producer, consumer, supervisor):
        await producer.send(0, 100)
        await consumer.read_all(50)  # reads the first batches: commits 50..100, not the end
        await producer.send(100, 100)
        assert not await supervisor.recycle_if_due()
        assert producer._open.is_set()  # released again after giving up
        await consumer.read_all(200)
        assert await supervisor.recycle_if_due()
        await producer.send(200, 5)
        await consumer.read_all(205)
        assert consumer.seen[-5:] == [PAYLOAD + str(i).encode() for i in range(200, 205)]


async def test_producers_are_held_only_once_ingest_has_nearly_caught_up(tmp_path):
    """What the gateway logs while held waits in its journal (spooled): a recycle that finds ingest
    behind lets it catch up first, producers still sending, and holds only for the last records."""
    settings = EmbeddedBrokerSettings(recycle_records=10, recycle_hold_lag=50, drain_timeout=15)
    async with supervised(tmp_path, settings) as (producer, consumer, supervisor):
        await producer.send(0, 500)
        recycling = asyncio.create_task(supervisor.recycle_if_due())
        await asyncio.sleep(1.5)
        assert producer.holds == 0 and producer._open.is_set()  # 500 behind: not held yet
        await producer.send(500, 20)  # and still sending
        await consumer.read_all(520)
        assert await asyncio.wait_for(recycling, 30)
        assert producer.holds == 1 and supervisor.recycles == 1


async def test_a_killed_broker_is_restarted_with_its_topics(tmp_path):
    broker = EmbeddedKafka("127.0.0.1", free_port(), tmp_path / "b.log", tmp_path / "b.pid")
    broker.start()
    settings = EmbeddedBrokerSettings(check_interval=0.1)
    consumer = Consumer(broker.bootstrap)
    supervisor = BrokerSupervisor(broker, settings, topics=[TOPIC, TOPIC + ".dlq"], partitions=1, recycled_topic=TOPIC,
                                  consumer_group=GROUP, consumers=[consumer], recycle=False)
    supervisor.start()
    try:
        first = broker.pid
        broker.proc.kill()
        deadline = time.monotonic() + 20
        # up again, then its topics made and the consumers rewound (after _down clears: a loaded box
        # saw the check run in between)
        while (supervisor.restarts == 0 or broker.pid is None or broker.exited() is not None or supervisor._down
               or consumer.resets == 0):
            assert time.monotonic() < deadline, "broker not restarted"
            await asyncio.sleep(0.1)
        assert broker.pid != first and not alive(first)
        assert consumer.resets == 1
        admin_probe = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await admin_probe.start()
        try:
            assert {TOPIC, TOPIC + ".dlq"} <= await admin_probe.topics()
        finally:
            await admin_probe.stop()
    finally:
        await supervisor.stop()
        broker.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux")
def test_pid_file_kills_only_the_process_it_recorded(tmp_path):
    ours = subprocess.Popen(["sleep", "300"])
    stranger = subprocess.Popen(["sleep", "301"])
    try:
        deadline = time.monotonic() + 5
        while cmdline(ours.pid) != ["sleep", "300"] or cmdline(stranger.pid) != ["sleep", "301"]:
            assert time.monotonic() < deadline
            time.sleep(0.01)  # both exec'd
        pid_file = PidFile(tmp_path / "x.pid")
        pid_file.write(ours.pid, ["sleep", "300"])
        assert oct(os.stat(pid_file.path).st_mode & 0o777) == "0o600"
        assert pid_file.kill_survivor("test process") == ours.pid
        assert ours.wait(5) is not None and not pid_file.path.exists()
        # a pid file whose pid now belongs to another program (pid reuse): left alone
        pid_file.write(stranger.pid, ["sleep", "300"])
        assert pid_file.kill_survivor("test process") is None
        assert stranger.poll() is None and not pid_file.path.exists()
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait()


def test_one_runner_per_data_dir(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(RuntimeError, match=f"used by another `helicone-stack up` \\(pid {os.getpid()}: "):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    again = DataDirLock(tmp_path)
    again.acquire()  # released: free again (the kernel also releases it when the runner dies)
    again.release()


@contextlib.asynccontextmanager
async def supervised(tmp_path, settings: EmbeddedBrokerSettings, producer_cls=Producer, consumer_cls=Consumer,
                     name: str = "b", recycle: bool = True):
    """A broker with TOPIC, a started producer and consumer, and a supervisor of TOPIC with `settings`
    (recycling unless recycle=False): (producer, consumer, supervisor)."""
    broker = EmbeddedKafka("127.0.0.1", free_port(), tmp_path / f"{name}.log", tmp_path / f"{name}.pid")
    broker.start()
    try:
        await ensure_topics(broker.bootstrap, [TOPIC], 1, 1, security=PLAINTEXT)
        producer, consumer = producer_cls(broker.bootstrap), consumer_cls(broker.bootstrap)
        await producer.producer.start()
        await consumer.start()
        try:
            yield producer, consumer, BrokerSupervisor(
                broker, settings, topics=[TOPIC], partitions=1, recycled_topic=TOPIC, consumer_group=GROUP,
                producers=[producer], consumers=[consumer], recycle=recycle)
        finally:
            await producer.producer.stop()
            await consumer.consumer.stop()
    finally:
        broker.stop()


@contextlib.asynccontextmanager
async def due_for_a_recycle(tmp_path, producer_cls=Producer, consumer_cls=Consumer):
    """supervised() with a topic of 100 records, all read and committed: the supervisor's next
    recycle_if_due() recycles."""
    settings = EmbeddedBrokerSettings(recycle_records=10, drain_timeout=30)
    async with supervised(tmp_path, settings, producer_cls, consumer_cls) as (producer, consumer, supervisor):
        for first in range(0, 100, 5):  # batches of their own: Tansu reports the last batch's base offset + 1 as the end
            await producer.send(first, 5)
        await consumer.read_all(100)
        yield producer, consumer, supervisor


class StuckProducer(Producer):
    """A producer whose hold() never finishes (events still in flight), as when a graceful stop
    cancels supervision while a recycle waits for the gateway's acknowledgements."""

    async def hold(self) -> None:
        self._open.clear()
        self.holds += 1
        await asyncio.Event().wait()


async def test_a_recycle_cancelled_while_holding_releases_the_producers(tmp_path):
    """`helicone-stack up` stops supervision first on a graceful stop: a recycle cancelled while it
    holds the producers must release them, or the gateway's stop leaves what it journaled during
    the hold unsent (it found one request missing after a stop with the journal removed)."""
    async with due_for_a_recycle(tmp_path, producer_cls=StuckProducer) as (producer, _, supervisor):
        recycling = asyncio.create_task(supervisor.recycle_if_due())
        deadline = time.monotonic() + 20
        while producer.holds == 0:
            assert time.monotonic() < deadline and not recycling.done(), "the recycle never held the producer"
            await asyncio.sleep(0.05)
        assert not producer._open.is_set()
        unhandled = []
        asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context["message"]))
        recycling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recycling
        assert producer._open.is_set()  # released
        assert supervisor.recycles == 0
        del recycling
        await asyncio.sleep(0)
        gc.collect()
        assert unhandled == []  # the cut-short hold was seen, not left "never retrieved"


class SlowResetConsumer(Consumer):
    """A consumer whose rewind to the new log takes a while (a stop can land in the middle)."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap)
        self.rewinding = asyncio.Event()
        self.rewound = False

    async def log_reset(self) -> None:
        self.rewinding.set()
        await asyncio.sleep(0.5)
        await super().log_reset()
        self.rewound = True


async def test_a_recycle_cancelled_while_replacing_the_log_still_rewinds_everyone(tmp_path):
    """A cancel that lands once the topic is being replaced waits for the consumers and producers to
    start over on the new log before it goes through: a consumer left at the old log's offsets would
    skip what the gateway sends to the new one (the drain on a graceful stop would then pass with
    those events unwritten)."""
    async with due_for_a_recycle(tmp_path, consumer_cls=SlowResetConsumer) as (producer, consumer, supervisor):
        recycling = asyncio.create_task(supervisor.recycle_if_due())
        await asyncio.wait_for(consumer.rewinding.wait(), 20)
        recycling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recycling
        assert consumer.rewound and consumer.resets == 1 and producer.log_resets == 1
        assert producer._open.is_set()  # released once everyone started over


async def test_a_restart_cancelled_while_rewinding_still_rewinds_everyone(tmp_path):
    """The same for the restart after a broker crash: a stop that lands once the new broker is up
    waits for its topics and for every consumer and producer to start over on its log."""
    settings = EmbeddedBrokerSettings(check_interval=0.1, recycle_records=0)
    async with supervised(tmp_path, settings, consumer_cls=SlowResetConsumer) as (producer, consumer, supervisor):
        supervisor.start()
        try:
            supervisor.broker.proc.kill()
            await asyncio.wait_for(consumer.rewinding.wait(), 20)
        finally:
            await supervisor.stop()  # cancels the restart in the middle of the consumer's rewind
        assert supervisor.restarts == 1 and not supervisor._down
        assert consumer.rewound and consumer.resets == 1 and producer.log_resets == 1
        assert producer._open.is_set()  # released once everyone started over
