"""The embedded broker's supervision against real Tansu brokers: recycling keeps the broker's
memory bounded without losing a record; a killed broker is restarted with its topics; pid files
only ever kill the process they recorded."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import subprocess
import sys
import time

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from helicone_core.kafka import PLAINTEXT, ensure_topics
from helicone_runner.embedded import DataDirLock, EmbeddedKafka, EmbeddedPostgres, PidFile, alive, cmdline
from helicone_runner.settings import EmbeddedBrokerSettings
from helicone_runner.supervision import BrokerSupervisor, PostgresSupervisor

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


async def test_no_recycling_of_an_uncommitted_log_while_the_event_loop_is_busy(tmp_path):
    """The whole stack shares one event loop: with each of its turns taking 0.1 s, a fetch's answer came
    after the 0.3 s the check waited, and "no record" made it recycle (trim the journal, delete the topic)
    a log of which the group had committed nothing."""
    settings = EmbeddedBrokerSettings(recycle_records=10, recycle_hold_lag=1000, drain_timeout=2)
    async with supervised(tmp_path, settings) as (producer, consumer, supervisor):
        for first in range(0, 100, 5):  # batches of their own, as in due_for_a_recycle; nothing read or committed
            await producer.send(first, 5)
        busy = True

        async def turns_of_a_busy_loop():
            while busy:
                time.sleep(0.1)  # noqa: ASYNC251 - a turn of the loop that takes 0.1 s, on purpose
                await asyncio.sleep(0)

        hog = asyncio.create_task(turns_of_a_busy_loop())
        try:
            assert not await supervisor.recycle_if_due()
        finally:
            busy = False
            await hog
        assert producer.committed_ends == 0 and producer._open.is_set()


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


class CrashingBroker(EmbeddedKafka):
    """A real broker whose every start after `crash` is set dies at once, saying why on stderr in colour
    (as Tansu does when it cannot run)."""

    crash = False
    spawns = 0

    def argv(self) -> list[str]:
        self.spawns += 1
        if not self.crash:
            return super().argv()
        return [sys.executable, "-c", "import sys; print('\\x1b[31mERROR\\x1b[0m tansu: storage engine failed', file=sys.stderr); "
                "sys.exit(3)"]


async def test_a_broker_that_keeps_crashing_is_given_up_with_its_last_output(tmp_path):
    """A broker that dies at once each time was restarted for ever (every 30 s at most), saying nothing more than
    a warning each time. After max_quick_crashes in a row supervision stops, once, with an error naming the
    crashes, the last failure and the broker's last output (which `status` shows)."""
    broker = CrashingBroker("127.0.0.1", free_port(), tmp_path / "b.log", tmp_path / "b.pid")
    broker.start()
    failures: list[str] = []
    settings = EmbeddedBrokerSettings(check_interval=0.05, restart_max_backoff=0.1, max_quick_crashes=3)
    supervisor = BrokerSupervisor(broker, settings, topics=[TOPIC], partitions=1, recycled_topic=TOPIC, consumer_group=GROUP,
                                  consumers=[_FakeConsumer()], recycle=False, on_failed=failures.append)
    supervisor.start()
    try:
        broker.crash = True
        broker.proc.kill()
        deadline = time.monotonic() + 30
        while not failures:
            assert time.monotonic() < deadline, f"still restarting after {broker.spawns} starts"
            await asyncio.sleep(0.05)
        spawns = broker.spawns
        await asyncio.sleep(1)  # ten rounds of supervision: no start again, no second report
        assert broker.spawns == spawns and failures == [supervisor.failed]
        assert supervisor._task.done() and broker.proc is None and not broker.pid_file.path.exists()
        failure = failures[0]
        assert "not restarted again: 3 crash(es) or failed start(s) in a row" in failure, failure
        assert "kafka broker exited with 3" in failure, failure  # the last failure
        assert f"its last output ({broker.log_path}): " in failure and "| ERROR tansu: storage engine failed." in failure, failure
        assert "\x1b" not in failure  # its colours left out
    finally:
        await supervisor.stop()
        broker.stop()


async def test_a_killed_embedded_postgres_is_started_again_and_the_services_pools_reach_it(tmp_path):
    """The embedded postmaster killed (kill -9, OOM): before, nothing started it again and every service ran on
    without its Postgres (new keys refused, metadata unwritten) until the stack was restarted by hand. It comes back
    on the same DSN with what was committed before the kill, and a pool made before it (a service's) works again."""
    from helicone_core import db

    pg = EmbeddedPostgres(tmp_path / "data")
    dsn = await asyncio.to_thread(pg.start)
    supervisor = PostgresSupervisor(pg, check_interval=0.1, max_backoff=0.5)
    pool = None
    try:
        pool = await db.connect_pool(dsn, max_size=2)
        await pool.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        supervisor.start()
        first = pg.postmaster_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while supervisor.restarts == 0 or pg.postmaster_pid() is None:
            assert time.monotonic() < deadline, "postgres not started again"
            await asyncio.sleep(0.1)
        assert pg.postmaster_pid() != first and not alive(first)
        while True:  # the pool's connections to the dead server are replaced as they are found closed
            try:
                assert await pool.fetchval("SELECT x FROM kept") == 7  # committed before the kill: recovered
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                assert time.monotonic() < deadline, "the pool never reached the restarted postgres"
                await asyncio.sleep(0.1)
    finally:
        await supervisor.stop()
        if pool is not None:
            await pool.close()
        await asyncio.to_thread(pg.stop)


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


# ---- a new log whose set-up fails half-way -------------------------------------------------


class _FakeBroker:
    bootstrap = "127.0.0.1:1"
    pid = 1

    def __init__(self) -> None:
        self.code: int | None = None
        self.starts = 0

    def exited(self) -> int | None:
        return self.code

    def stop(self) -> None:
        pass

    async def start_async(self, timeout: float = 20.0) -> str:
        self.starts += 1
        self.code = None
        return self.bootstrap


class _FakeProducer:
    def __init__(self) -> None:
        self.held, self.log_resets = False, 0

    async def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    async def committed_to_end(self) -> None:
        pass

    async def log_reset(self) -> None:
        self.log_resets += 1


class _FakeConsumer:
    def __init__(self) -> None:
        self.resets = 0

    async def log_reset(self) -> None:
        self.resets += 1


async def _supervise_until_rewound(settings: EmbeddedBrokerSettings, recycle: bool, then=None):
    """A supervisor of fakes, running until its consumer was rewound once (3 s at most), after `then()`:
    (broker, producer, consumer, supervisor)."""
    broker, producer, consumer = _FakeBroker(), _FakeProducer(), _FakeConsumer()
    sup = BrokerSupervisor(broker, settings, topics=["t", "t.dlq"], partitions=1, recycled_topic="t",
                           consumer_group="g", producers=[producer], consumers=[consumer], recycle=recycle)
    sup.start()
    try:
        if then is not None:
            then(broker)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and consumer.resets == 0:
            await asyncio.sleep(0.05)
    finally:
        await sup.stop()
    return broker, producer, consumer, sup


async def test_a_restart_whose_topics_could_not_be_made_at_first_still_rewinds_everyone(monkeypatch):
    """The broker came back, but making its topics failed once (an admin timeout on a loaded box): the next
    round makes them and rewinds ingest and the publisher (before, nothing tried again, and ingest read the
    new log from the dead one's offsets, past what landed below them)."""
    from helicone_runner import supervision

    calls = []

    async def ensure_topics_failing_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise TimeoutError("admin request timed out")

    monkeypatch.setattr(supervision, "ensure_topics", ensure_topics_failing_once)
    settings = EmbeddedBrokerSettings(check_interval=0.02, recycle_records=0, restart_max_backoff=0.05)
    broker, producer, consumer, sup = await _supervise_until_rewound(settings, recycle=False, then=lambda b: setattr(b, "code", -9))
    assert (broker.starts, sup.restarts, len(calls)) == (1, 1, 2)
    assert (consumer.resets, producer.log_resets, producer.held) == (1, 1, False)


async def test_a_recycle_whose_topic_could_not_be_made_again_still_rewinds_everyone(monkeypatch):
    """The recycle deleted the topic, then creating it failed: the next round makes it and rewinds everyone."""
    from aiokafka.errors import KafkaTimeoutError

    state = {"records": 100, "deleted": 0, "creates": 0}

    class Admin:
        async def delete_topics(self, topics):
            state["deleted"] += 1
            state["records"] = 0

        async def create_topics(self, new_topics):
            state["creates"] += 1
            raise KafkaTimeoutError("create_topics timed out")

    @contextlib.asynccontextmanager
    async def clients(self):
        yield Admin(), None

    async def answer(value, *args):
        return value

    made = []

    async def ensure_topics(*args, **kwargs):
        made.append(args)

    from helicone_runner import supervision

    monkeypatch.setattr(supervision, "ensure_topics", ensure_topics)
    monkeypatch.setattr(BrokerSupervisor, "_clients", clients)
    monkeypatch.setattr(BrokerSupervisor, "_records", lambda self, probe: answer(state["records"]))
    monkeypatch.setattr(BrokerSupervisor, "_lag", lambda self, admin, probe: answer(0))
    monkeypatch.setattr(BrokerSupervisor, "_committed_to_end", lambda self, admin, probe: answer(True))
    settings = EmbeddedBrokerSettings(check_interval=0.02, recycle_check_interval=0.05, recycle_records=10)
    _, producer, consumer, sup = await _supervise_until_rewound(settings, recycle=True)
    assert (state["deleted"], state["creates"], len(made), sup.recycles) == (1, 1, 1, 0)
    assert (consumer.resets, producer.log_resets, producer.held) == (1, 1, False)
