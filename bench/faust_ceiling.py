"""Faust's consumption ceiling: how many ~3 KB RequestLogged events per second one process can
*receive* (no decode, no write) through a Faust app configured like services/ingest
(IngestService._build_faust), against a raw aiokafka getmany loop, on one pre-filled topic of the
embedded broker (Tansu). Each variant runs in its own process with a fresh consumer group; the
variants are interleaved over the rounds and the median is printed.

    .venv/bin/python bench/faust_ceiling.py [--events 50000] [--partitions 4] [--rounds 3] [--variants a,b]
    .venv/bin/python bench/faust_ceiling.py --profile faust-take   # py-spy top frames of one variant

A variant's rate is the events after its first batch over the time from the first batch's arrival to
the last event's arrival (group joining and start-up are not counted); CPU is the process's (all
threads: Faust runs its aiokafka consumer in a thread) over the same span. Variants:

  raw-getmany       aiokafka AIOKafkaConsumer.getmany(max_records=1000), nothing else
  faust-take        the ingest agent's loop: stream.take(1000, within=0.2)
  faust-take-tuned  faust-take with stream_buffer_maxsize=16384, broker_max_poll_records=2000,
                    consumer_max_fetch_size=8 MiB
  faust-take-events stream.take_events(1000, within=0.2)
  faust-noack-take  stream.noack_take(1000, within=0.2), each event acked by hand
  faust-acks-off    faust-take on app.topic(..., acks=False) (Faust never commits: the app would)
  faust-lean        faust-take with a Consumer whose fetch loop awaits the conductor's callback
                    directly instead of Service.wait_first (4 futures + asyncio.wait per message)
  faust-batch       a Faust app whose Consumer hands each fetched record map (TP -> records) to a
                    batch handler and acks the batch's offsets at once: no per-message Event/stream;
                    group membership, rebalancing, flow control and commits stay Faust's
  faust-batch-agent faust-batch whose handler puts each fetch on a Faust channel read by an agent
                    (one stream event per fetch, at most 2 in flight); the agent acks the batch
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = ("raw-getmany", "faust-take", "faust-take-tuned", "faust-take-events", "faust-noack-take",
            "faust-acks-off", "faust-lean", "faust-batch", "faust-batch-agent")
BATCH, WITHIN = 1000, 0.2


class Counter:
    def __init__(self, target: int) -> None:
        self.target, self.n = target, 0
        self.first: tuple[float, float, int] | None = None  # wall, CPU, events at the first batch
        self.last: tuple[float, float] | None = None
        self.done = asyncio.Event()

    def add(self, k: int) -> None:
        if not k:
            return
        self.n += k
        now = (time.perf_counter(), time.process_time())
        if self.first is None:
            self.first = (*now, self.n)
        if self.n >= self.target and self.last is None:
            self.last = now
            self.done.set()

    def result(self) -> dict:
        assert self.first is not None and self.last is not None
        events = self.n - self.first[2]
        span = self.last[0] - self.first[0]
        return {"events": self.n, "eps": events / span if span > 0 else 0.0,
                "cpu_us": (self.last[1] - self.first[1]) * 1e6 / max(events, 1)}


# ---- Faust apps --------------------------------------------------------------------------------
def faust_app(args, name: str, **overrides):
    """A Faust app configured like IngestService._build_faust."""
    import faust

    conf = dict(broker=[f"kafka://{args.bootstrap}"], store="memory://", web_enabled=False, autodiscover=False,
                topic_partitions=args.partitions, topic_replication_factor=1, consumer_auto_offset_reset="earliest",
                broker_session_timeout=10.0, broker_heartbeat_interval=1.0, broker_rebalance_timeout=2.0,
                broker_commit_every=2000, broker_commit_interval=1.0, datadir=args.datadir, stream_wait_empty=False)
    conf.update(overrides)
    app_cls = faust.App
    if name in ("faust-lean", "faust-batch", "faust-batch-agent"):
        app_cls = custom_app_class(lean=name == "faust-lean")
    return app_cls(args.group, **conf)


def custom_app_class(*, lean: bool):
    """A faust.App whose transport's Consumer replaces `_drain_messages`, the Fetcher's loop."""
    import faust
    from faust.transport.drivers import aiokafka as driver

    class LeanConsumer(driver.Consumer):
        """Per message as Faust does (conductor -> channel -> stream), minus wait_first."""

        async def _drain_messages(self, fetcher) -> None:
            callback, getmany = self.callback, self.getmany
            stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
            read_offset = self._read_offset
            while not (stopped() or fetcher_stopped()):
                await asyncio.sleep(0)
                async for tp, message in getmany(timeout=1.0):
                    r = read_offset[tp]
                    if r is None or message.offset >= r:
                        if self._n_acked >= self._commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if self.suspend_flow.is_set():  # what wait_first raced against
                            await self.suspend_flow.wait()
                        await callback(message)
                        read_offset[tp] = message.offset

    from helicone_ingest.batches import BatchConsumer as IngestBatchConsumer

    class BatchConsumer(IngestBatchConsumer):
        """Each fetch goes to app.batch_handler(records) as one call, not gathered as ingest does; its
        offsets are acked at once (ingest's ack_offsets)."""

        async def _drain_messages(self, fetcher) -> None:
            handler = self.app.batch_handler
            stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
            while not (stopped() or fetcher_stopped()):
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop or not self.flow_active:
                    await asyncio.sleep(0)
                    continue
                batch = Batch(self, {tp: recs for tp, recs in records.items() if active is None or tp in active})
                await handler(batch)  # acks the batch now or later (batch.ack())
                if self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()

    class Batch:
        """The records of one fetch; ack() marks their offsets done (then commit() can pass them)."""

        def __init__(self, consumer, records) -> None:
            self.consumer, self.records = consumer, records
            self.generation = consumer.app.consumer_generation_id

        def __len__(self) -> int:
            return sum(len(recs) for recs in self.records.values())

        def values(self) -> list[bytes]:
            return [r.value for recs in self.records.values() for r in recs]

        def ack(self) -> None:
            if self.generation != self.consumer.app.consumer_generation_id:
                return  # rebalanced meanwhile: the partitions' new owner re-reads from the committed offsets
            for tp, recs in self.records.items():
                self.consumer.ack_offsets(tp, [r.offset for r in recs])

    class Transport(driver.Transport):
        Consumer = LeanConsumer if lean else BatchConsumer

    class App(faust.App):
        batch_handler = None

        def _new_transport(self):
            return Transport(self.conf.broker_consumer, self)

    return App


async def run_faust(args, counter: Counter) -> None:
    name = args.variant
    overrides = {}
    if name == "faust-take-tuned":
        overrides = dict(stream_buffer_maxsize=16384, broker_max_poll_records=2000, consumer_max_fetch_size=8 << 20)
    app = faust_app(args, name, **overrides)
    topic = app.topic(args.topic, value_type=bytes, value_serializer="raw", key_serializer="raw",
                      acks=name != "faust-acks-off")
    if name == "faust-batch":
        async def handler(batch) -> None:
            counter.add(len(batch))
            batch.ack()

        app.batch_handler = handler
        app.topics.add(topic)  # the consumer subscribes to it; no agent, no stream
    elif name == "faust-batch-agent":
        # one channel item per fetch; at most 2 batches in flight (the next fetch overlaps the agent's work)
        batches = app.channel()
        in_flight = asyncio.Semaphore(2)

        async def handler(batch) -> None:
            await in_flight.acquire()
            await batches.put(batch)

        @app.agent(batches, name="count-batches")
        async def count_batches(stream):
            async for batch in stream:
                counter.add(len(batch))
                batch.ack()
                in_flight.release()

        app.batch_handler = handler
        app.topics.add(topic)
    else:
        @app.agent(topic, name="count")
        async def count(stream):
            if name == "faust-take-events":
                async for events in stream.take_events(BATCH, within=WITHIN):
                    counter.add(len(events))
            elif name == "faust-noack-take":
                async for events in stream.noack_take(BATCH, within=WITHIN):
                    counter.add(len(events))
                    for ev in events:
                        ev.ack()
            else:
                async for values in stream.take(BATCH, within=WITHIN):
                    counter.add(len(values))

    await app.start()
    try:
        await asyncio.wait_for(counter.done.wait(), args.timeout)
    finally:
        await app.stop()


async def run_raw(args, counter: Counter) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        async def loop() -> None:
            while not counter.done.is_set():
                got = await consumer.getmany(timeout_ms=int(WITHIN * 1000), max_records=BATCH)
                counter.add(sum(len(v) for v in got.values()))
        await asyncio.wait_for(loop(), args.timeout)
    finally:
        await consumer.stop()


def run_variant(args) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def main() -> dict:
        counter = Counter(args.events)
        await (run_raw if args.variant == "raw-getmany" else run_faust)(args, counter)
        return counter.result()

    print("RESULT " + json.dumps(asyncio.run(main())), flush=True)


# ---- driver ------------------------------------------------------------------------------------
def child(args, tmp: Path, variant: str, profile: bool = False) -> dict:
    group = f"ceiling-{variant}-{uuid.uuid4().hex[:6]}"
    datadir = tmp / group
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--bootstrap", args.bootstrap,
           "--topic", args.topic, "--group", group, "--datadir", str(datadir), "--events", str(args.events),
           "--partitions", str(args.partitions)] + ([] if args.uvloop else ["--no-uvloop"])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spy = None
    if profile:  # attached by pid: py-spy's own child would be its child, not ours
        out = Path(args.profile_out) if args.profile_out else tmp / f"{variant}.txt"
        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proc.pid),
                                "--threads", "--format", "raw", "-r", "200", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stdout, stderr = proc.communicate(timeout=args.timeout + 60)
    if spy is not None:
        spy.wait(60)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{stderr[-3000:]}")
    res = json.loads(lines[-1][7:])
    res["committed"] = asyncio.run(committed(args.bootstrap, args.topic, group, args.partitions))
    if profile:
        res["profile"] = str(out)
    return res


async def committed(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    """The group's committed offsets summed over the topic's partitions (offsets start at 0: the events
    the group has committed past)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)])
    finally:
        await consumer.stop()


def top_frames(raw: Path, n: int = 25) -> list[tuple[float, str]]:
    """Self time per function (the leaf frame of each collapsed stack), as a share of all samples."""
    leaf: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        k = int(count)
        total += k
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + k
    return [(v * 100 / total, f) for f, v in sorted(leaf.items(), key=lambda kv: -kv[1])[:n]]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--profile", help="run this variant once under py-spy and print its top frames (self time)")
    p.add_argument("--profile-out", help="keep py-spy's collapsed stacks (raw format) in this file")
    p.add_argument("--no-uvloop", dest="uvloop", action="store_false", help="asyncio's loop (ingest runs on uvloop)")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    for opt in ("bootstrap", "topic", "group", "datadir"):
        p.add_argument(f"--{opt}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.variant = args.child
        run_variant(args)
        return

    from helicone_runner.embedded import EmbeddedKafka

    from bench.ingest_throughput import produce
    from tests.support.net import free_port

    variants = [args.profile] if args.profile else args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="faust-ceiling-") as tmpdir:
        tmp = Path(tmpdir)
        broker = EmbeddedKafka("127.0.0.1", free_port(), tmp / "kafka.log")
        args.bootstrap = broker.start()
        try:
            args.topic = f"bench.ceiling.{uuid.uuid4().hex[:6]}"
            size = asyncio.run(produce(args.bootstrap, args.topic, args.partitions, args.events, seed=1))
            if args.profile:
                res = child(args, tmp, args.profile, profile=True)
                print(f"{args.profile}: {res['eps']:.0f} events/s under py-spy; top frames by self time:")
                for share, frame in top_frames(Path(res["profile"])):
                    print(f"{share:6.1f}%  {frame}")
                return
            results: dict[str, list[dict]] = {v: [] for v in variants}
            for r in range(args.rounds):
                order = variants if r % 2 == 0 else variants[::-1]  # interleaved, alternating order
                for v in order:
                    results[v].append(child(args, tmp, v))
                    print(f"round {r + 1} {v}: {results[v][-1]['eps']:.0f} events/s", file=sys.stderr, flush=True)
        finally:
            broker.stop()
    load = os.getloadavg()
    print(f"\nFaust ceiling: {args.events} events (~{size / 1024:.1f} KiB each), {args.partitions} partitions, "
          f"batches of {BATCH} within {WITHIN}s, {'uvloop' if args.uvloop else 'asyncio'}; median of {args.rounds} "
          f"rounds; load average {load[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'variant':<20} {'events/s (median)':>18} {'runs':>24} {'CPU us/event':>13} {'committed':>10}")
    for v, rs in results.items():
        runs = ", ".join(f"{x['eps']:.0f}" for x in rs)
        print(f"{v:<20} {statistics.median(x['eps'] for x in rs):>18.0f} {runs:>24} "
              f"{statistics.median(x['cpu_us'] for x in rs):>13.1f} {min(x['committed'] for x in rs):>10}")
    print("committed: the fewest events a run's consumer group committed (raw-getmany and faust-acks-off do not "
          "commit)")


if __name__ == "__main__":
    main()
