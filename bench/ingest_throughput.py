"""Ingest throughput: N RequestLogged events with realistic bodies (~2 KB request, ~1 KB response)
are produced straight to a fresh topic of the embedded broker (Tansu), then ingest workers (one
process each, one consumer group) drain it. Prints events/s per worker and in total for:
chDB (one worker: one process owns a chDB data dir) and the ClickHouse server backend with 1, 2
and 4 workers. The "server" is tests/support/chdb_http.py: chDB behind ClickHouse's HTTP protocol,
so its insert cost is chDB's. Bodies go to the local body store.

    .venv/bin/python bench/ingest_throughput.py [--events 20000] [--partitions 4] [--workers 1,2,4]

A worker's rate is the events it wrote over the time from its first batch's start to its last
batch's end (so consumer-group joining and start-up are not counted); the total is all events
over the first start to the last end of any worker. Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORGS = [str(uuid.UUID(int=i + 1)) for i in range(4)]
MODELS = (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4o"))
WORDS = ("the quick brown fox jumps over the lazy dog while a model explains why tokens cost money "
         "and latency matters for every request that passes the gateway").split()


def _text(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:size]


def make_event(i: int, rng: random.Random, t0: dt.datetime):
    from helicone_core import events

    provider, model = MODELS[i % len(MODELS)]
    ev = events.RequestLogged(schema_version=events.SCHEMA_VERSION, request_id=str(uuid.UUID(int=rng.getrandbits(128))),
                              org_id=ORGS[i % len(ORGS)], provider=provider, model=model, method="POST",
                              path="/v1/chat/completions", status=200, latency_ms=300 + i % 700, source="gateway",
                              user_id=f"user-{i % 500}", session_id=f"session-{i // 10}",
                              properties={"environment": "production", "feature": f"feature-{i % 20}"})
    events.set_time(ev.request_created_at, t0 + dt.timedelta(milliseconds=i))
    events.set_time(ev.response_created_at, t0 + dt.timedelta(milliseconds=i + 300))
    ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.total_tokens, ev.usage.known = 500, 200, 700, True
    ev.cost_usd, ev.cost_known = 0.0004, True
    req = json.dumps({"model": model, "messages": [{"role": "system", "content": _text(rng, 600)},
                                                   {"role": "user", "content": _text(rng, 1300)}]})
    resp = json.dumps({"id": f"chatcmpl-{i}", "object": "chat.completion", "model": model,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": _text(rng, 850)},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 500, "completion_tokens": 200, "total_tokens": 700}})
    ev.inline.request_body, ev.inline.request_content_type = req.encode(), "application/json"
    ev.inline.response_body, ev.inline.response_content_type = resp.encode(), "application/json"
    return ev


async def produce(bootstrap: str, topic: str, partitions: int, n: int, seed: int) -> float:
    """Creates `topic` and produces `n` events to it; returns the mean encoded event size in bytes."""
    from aiokafka import AIOKafkaProducer
    from helicone_core import events
    from helicone_core.kafka import ensure_topics

    await ensure_topics(bootstrap, [topic, topic + ".dlq"], partitions, 1, security={"security_protocol": "PLAINTEXT"})
    rng = random.Random(seed)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks=1)
    await producer.start()
    size = 0
    try:
        futs = []
        for i in range(n):
            ev = make_event(i, rng, t0)
            raw = events.encode(ev)
            size += len(raw)
            futs.append(await producer.send(topic, raw, key=events.message_key(ev)))
            if len(futs) >= 2000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return size / max(n, 1)


# ---- worker mode: one ingest worker in this process ------------------------------------------------
async def run_worker(args) -> None:
    from helicone_core.gc_tuning import tune_gc
    from helicone_ingest.app import IngestService
    from helicone_ingest.settings import IngestSettings

    data = Path(args.data_dir)
    settings = dict(data_dir=data, body_store="local", body_dir=Path(args.body_dir), kafka_bootstrap=args.bootstrap,
                    kafka_topic=args.topic, kafka_dlq_topic=args.topic + ".dlq", kafka_topic_partitions=args.partitions,
                    consumer_group=args.group, clickhouse_database=args.database, analytics_backend=args.backend,
                    broker_rebalance_timeout=2.0, broker_session_timeout=10.0, broker_heartbeat_interval=1.0,
                    batch_size=args.batch_size, _env_file=None)
    if args.backend == "clickhouse":
        settings["clickhouse_url"] = args.clickhouse_url
    else:
        settings["chdb_path"] = data / "chdb"
    svc = IngestService(IngestSettings(**settings))
    marks: list[tuple[float, float, int, float, float]] = []  # wall start, wall end, events, CPU start, CPU end
    await svc.start()
    tune_gc(svc.settings.gc_young_threshold)  # as python -m helicone_ingest does
    write = svc.writer.write

    async def timed(batch, turn=None):
        start, cpu = time.perf_counter(), time.process_time()  # CPU of every thread of the worker (chDB's too)
        await write(batch, turn)
        marks.append((start, time.perf_counter(), len(batch), cpu, time.process_time()))
        progress.write_text(str(sum(m[2] for m in marks)))  # noqa: ASYNC240 - a tiny file per batch, read by the driver

    svc.writer.write = timed
    progress = Path(args.out + ".progress")
    done = Path(args.done_file)
    try:
        while not done.exists():  # noqa: ASYNC240 - the driver's stop signal
            await asyncio.sleep(0.1)
    finally:
        await svc.stop()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        result = json.dumps({"marks": marks, "wall_offset": time.time() - time.perf_counter(), "peak_rss_kb": peak_kb})
        Path(args.out).write_text(result)  # noqa: ASYNC240 - once, at exit


# ---- driver ------------------------------------------------------------------------------------------
def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def run_case(bootstrap: str, tmp: Path, backend: str, workers: int, n: int, partitions: int, batch_size: int,
             clickhouse_url: str | None, profile: Path | None = None, server_pid: int | None = None) -> dict:
    name = f"{backend}-{workers}-{uuid.uuid4().hex[:6]}"
    topic = f"bench.ingest.{name}"
    avg = asyncio.run(produce(bootstrap, topic, partitions, n, seed=workers))
    case = tmp / name
    case.mkdir()
    done = case / "done"
    procs, outs = [], []
    server_cpu = _cpu_seconds(server_pid)
    for w in range(workers):
        out = case / f"worker{w}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--bootstrap", bootstrap, "--topic", topic,
               "--partitions", str(partitions), "--group", f"bench-{name}", "--backend", backend,
               "--data-dir", str(case / f"w{w}"), "--body-dir", str(case / "bodies"), "--database", f"bench_{name.replace('-', '_')}",
               "--done-file", str(done), "--out", str(out), "--batch-size", str(batch_size)]
        if clickhouse_url:
            cmd += ["--clickhouse-url", clickhouse_url]
        if profile is not None and w == 0:
            spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--subprocesses", "--threads",
                   "-r", "100", "-o", str(profile)]
            # .txt: collapsed stacks (grep-able); else an SVG flame graph
            cmd = spy + (["--format", "raw"] if profile.suffix == ".txt" else []) + ["--"] + cmd
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=os.environ.copy()))
        outs.append(out)
    try:
        deadline = time.monotonic() + 120 + n / 200
        while written_so_far(outs) < n:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{name}: ingest did not write {n} rows in time")
            time.sleep(0.5)
    finally:
        server_cpu = _cpu_seconds(server_pid) - server_cpu
        done.write_text("1")
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    per_worker, spans, busy, batches, cpu, peaks = [], [], [], [], [], []
    for out in outs:
        data = json.loads(out.read_text())
        marks = data["marks"]
        peaks.append(data["peak_rss_kb"] / 1024)
        if not marks:
            per_worker.append((0, 0.0))
            continue
        first, last, total = min(m[0] for m in marks), max(m[1] for m in marks), sum(m[2] for m in marks)
        per_worker.append((total, total / (last - first) if last > first else 0.0))
        busy.append(_covered([(m[0], m[1]) for m in marks]))
        batches.append(len(marks))
        cpu.append(max(m[4] for m in marks) - min(m[3] for m in marks))
        spans.append((first + data["wall_offset"], last + data["wall_offset"]))
    written = sum(t for t, _ in per_worker)
    span = max(e for _, e in spans) - min(s for s, _ in spans)
    return {"backend": backend, "workers": workers, "events": n, "written": written, "event_bytes": avg,
            "per_worker": [round(r) for _, r in per_worker], "total_eps": written / span,
            # events per second of the time some BatchWriter.write ran, and the mean batch: where the rest of the time goes
            "write_eps": written / sum(busy), "mean_batch": written / sum(batches),
            # CPU per event, which the machine's load does not inflate as much as wall time
            "worker_cpu_us": sum(cpu) * 1e6 / written, "server_cpu_us": server_cpu * 1e6 / written,
            "peak_rss_mb": max(peaks)}


def _covered(spans: list[tuple[float, float]]) -> float:
    """The time covered by the (start, end) spans (writes of consecutive batches overlap)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


async def projection_cost(store, batches: int, batch_size: int) -> dict[str, float]:
    """Milliseconds per insert of `batch_size` rows into request_log as ingest writes it (every
    projection), with no projection, and with each projection alone (tables of the same schema)."""
    from helicone_core import analytics, events

    rng = random.Random(7)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for i in range(batches * batch_size):
        ev = make_event(i, rng, t0)
        rows.append(events.analytics_row(ev, request_key="k", response_key="k", request_bytes=2000, response_bytes=1000,
                                         request_content_type="application/json",
                                         response_content_type="application/json", truncated=False))
    variants = {"all projections": dict(analytics.REQUEST_LOG_PROJECTIONS), "none": {}}
    variants |= {f"only {name}": {name: q} for name, q in analytics.REQUEST_LOG_PROJECTIONS.items()}
    out = {}
    for label, projections in variants.items():
        table = "pc_" + uuid.uuid4().hex[:8]
        ddl = analytics.REQUEST_LOG_DDL.format(
            db=store.database, table=table, sorting_key=analytics.REQUEST_LOG_SORTING_KEY,
            projections="".join(f",\n    PROJECTION {n} ({q})" for n, q in projections.items()))
        await store._command(ddl)
        await store.insert(table, rows[:batch_size])  # warm-up
        start = time.perf_counter()
        for b in range(batches):
            await store.insert(table, rows[b * batch_size:(b + 1) * batch_size])
        out[label] = (time.perf_counter() - start) * 1000 / batches
        await store._command(f"DROP TABLE {store.database}.{table}")
    return out


async def projection_costs(tmp: Path, clickhouse_url: str | None, batches: int, batch_size: int) -> dict[str, dict]:
    from helicone_core.analytics import ChdbStore, ClickHouseServerStore

    stores = {"chDB": ChdbStore(tmp / "pc-chdb", "pc")}
    if clickhouse_url:
        stores["server"] = ClickHouseServerStore(clickhouse_url, "default", "", "pc")
    out = {}
    for name, store in stores.items():
        await store._command("CREATE DATABASE IF NOT EXISTS pc")
        try:
            out[name] = await projection_cost(store, batches, batch_size)
        finally:
            await store.close()
    return out


def written_so_far(outs: list[Path]) -> int:
    total = 0
    for out in outs:
        try:
            total += int(Path(str(out) + ".progress").read_text() or 0)
        except (FileNotFoundError, ValueError):
            pass
    return total


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--batch-size", type=int, help="events per batch (default: ingest's batch_size setting)")
    p.add_argument("--backends", default="chdb,clickhouse")
    p.add_argument("--projection-batches", type=int, default=10, help="inserts per variant in the projection cost table (0: no table)")
    p.add_argument("--profile", help="py-spy flame graph (SVG) of the first worker of the first case")
    # worker mode
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for opt in ("bootstrap", "topic", "group", "backend", "data-dir", "body-dir", "database", "done-file", "out",
                "clickhouse-url"):
        p.add_argument(f"--{opt}", help=argparse.SUPPRESS)
    args = p.parse_args()
    unknown = set(args.backends.split(",")) - {"chdb", "clickhouse"}
    if unknown and not args.worker:
        p.error(f"--backends: unknown {', '.join(sorted(unknown))} (choose from chdb, clickhouse)")
    if args.batch_size is None:
        from helicone_ingest.settings import IngestSettings

        args.batch_size = IngestSettings.model_fields["batch_size"].default
    if args.worker:
        asyncio.run(run_worker(args))
        return

    from helicone_runner.embedded import EmbeddedKafka

    from tests.support import chdb_http
    from tests.support.net import free_port

    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmpdir:
        tmp = Path(tmpdir)
        broker = EmbeddedKafka("127.0.0.1", free_port(), tmp / "kafka.log")
        bootstrap = broker.start()
        ch_proc, url = None, None
        results = []
        try:
            backends = args.backends.split(",")
            profile = Path(args.profile) if args.profile else None
            if "chdb" in backends:
                results.append(run_case(bootstrap, tmp, "chdb", 1, args.events, args.partitions, args.batch_size, None,
                                        profile))
                profile = None
            if "clickhouse" in backends:
                ch_proc, url = chdb_http.start(tmp / "chsrv", timeout=60)
                for w in (int(x) for x in args.workers.split(",")):
                    results.append(run_case(bootstrap, tmp, "clickhouse", w, args.events, args.partitions,
                                            args.batch_size, url, profile, ch_proc.pid))
                    profile = None
            costs = asyncio.run(projection_costs(tmp, url, args.projection_batches, args.batch_size)) if args.projection_batches else {}
        finally:
            if ch_proc is not None:
                ch_proc.terminate()
                ch_proc.wait(10)
            broker.stop()
    load = os.getloadavg()
    print(f"\ningest throughput: {args.events} events/case (~{results[0]['event_bytes'] / 1024:.1f} KiB each, "
          f"bodies ~2 KB + ~1 KB), {args.partitions} partitions, batch {args.batch_size}; "
          f"load average {load[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'backend':<28} {'workers':>7} {'events/s per worker':>30} {'total events/s':>15} {'in write()':>11} "
          f"{'mean batch':>10} {'worker CPU us/event':>20} {'server CPU us/event':>20} {'worker peak RSS MB':>19}")
    for r in results:
        label = "chDB" if r["backend"] == "chdb" else "server (chDB behind HTTP)"
        per = ", ".join(str(x) for x in r["per_worker"])
        print(f"{label:<28} {r['workers']:>7} {per:>30} {r['total_eps']:>15.0f} {r['write_eps']:>11.0f} "
              f"{r['mean_batch']:>10.0f} {r['worker_cpu_us']:>20.0f} {r['server_cpu_us']:>20.0f} {r['peak_rss_mb']:>19.0f}")
    print("events/s per worker: from its first batch's start to its last batch's end; in write(): events per second "
          "of the time some BatchWriter.write ran;\nworker CPU: every thread of the worker process (chDB's included) over that "
          "span; server CPU: the chDB-behind-HTTP process, the whole case; worker peak RSS: the largest worker's")
    if not costs:
        return
    print(f"\nrequest_log insert of {args.batch_size} rows, ms (projections are built at insert time):")
    labels = list(next(iter(costs.values())))
    print(f"{'table':<22}" + "".join(f"{name:>10}" for name in costs))
    for label in labels:
        print(f"{label:<22}" + "".join(f"{costs[name][label]:>10.1f}" for name in costs))


if __name__ == "__main__":
    main()
