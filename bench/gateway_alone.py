"""A gateway process alone, in front of a minimal upstream, with every event sent to Kafka.

What it measures, per variant (a source tree and a worker count), in interleaved rounds so that
drift in this shared machine's load hits every variant alike:

- overhead at concurrency 1: gateway p50/p99 minus a direct call's, JSON and first streamed byte;
- a burst at concurrency 32: requests/s while it lasts, and *sustained* requests/s = requests /
  (burst time + time until Kafka holds every one of its events: the topic's log end, read from the
  broker, so it counts what every worker published);
- the gateway's CPU (every worker and thread) per request of that burst, until Kafka held its events:
  the number the shared machine's speed moves least, so the one to compare variants by;
- streaming requests/s at concurrency 32;
- long streams (LONG_CHUNKS chunks, a few hundred tokens' answer; every event carries its 73 KiB body),
  in rounds after the others: requests/s while the load lasts and sustained (until Kafka held their
  events), the gateway's CPU per request, and its RSS after them (the log backlog's budget bounds it);
- events journaled without a direct send while the broker was connected
  (helicone_gateway_events_spooled_total{reason="queue_full"}, must stay 0), and the RSS of the
  gateway's processes after the load.

The upstream and the load client are raw asyncio (uvloop) so neither caps what the gateway can do;
the broker is Tansu in memory, each variant on its own topic.

    .venv/bin/python bench/gateway_alone.py [--variant after=.] [--variant before=/tmp/base:1] \
        [--rounds 3] [--burst 4000] [--workers 1,2]

`--c1-only --single 2000 --rounds 8` measures the concurrency-1 windows alone, with p90 and the first
byte's p99 too, and the gateway's CPU per c=1 request: the A/B for a change to the request path's latency.

A variant is LABEL=TREE[:WORKERS]; TREE is a checkout whose libs/*/src and services/*/src are put on
PYTHONPATH (default: this one). `--workers 1,2` adds one variant of this tree per worker count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helicone_runner.embedded import EmbeddedKafka  # noqa: E402

from bench.raw_http import drive_raw, request_bytes  # noqa: E402
from tests.support.net import free_port  # noqa: E402

KEY = "sk-helicone-bench-alone"
ORG = "00000000-0000-0000-0000-0000000000be"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark prompt with a few words"}]}).encode()
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                          "messages": [{"role": "user", "content": "benchmark prompt with a few words"}]}).encode()

# ---- upstream: an OpenAI-shaped answer with as little work as possible ---------------------------
JSON_ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11}}).encode()
_SSE = [b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % w
        for w in (b"Hello", b" from", b" the", b" bench")]
_SSE.append(b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[],'
            b'"usage":{"prompt_tokens":6,"completion_tokens":4,"total_tokens":10}}\n\ndata: [DONE]\n\n')
# a long answer: LONG_CHUNKS content chunks as OpenAI sends them when usage is asked for, then the usage chunk
LONG_CHUNKS = 300
LONG_STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                               "max_tokens": LONG_CHUNKS, "messages": [{"role": "user", "content": "a long answer please"}]}).encode()
_LONG_SSE = [b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
             b'"system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{"content":" word%d"},"logprobs":null,'
             b'"finish_reason":null}],"usage":null}\n\n' % i for i in range(LONG_CHUNKS)]
_LONG_SSE.append(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini-2024-07-18",'
                 b'"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d,"total_tokens":%d}}\n\ndata: [DONE]\n\n'
                 % (LONG_CHUNKS, LONG_CHUNKS + 5))
LONG_CHUNKED = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in _LONG_SSE) + b"0\r\n\r\n"
JSON_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(JSON_ANSWER)) + JSON_ANSWER
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


async def _upstream_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
            if b'"max_tokens": %d' % LONG_CHUNKS in body:
                writer.write(STREAM_HEAD + LONG_CHUNKED)
            elif b'"stream": true' in body or b'"stream":true' in body:
                writer.write(STREAM_HEAD)
                for chunk in _SSE:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(JSON_RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def serve_upstream(port: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_upstream_conn, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def spawn_upstream(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)])


# ---- load client: HTTP/1.1 keep-alive, raw (bench/raw_http.py) ---------------------------------
async def load(port: int, raw: bytes, total: int, concurrency: int) -> tuple[float, list[float], list[float]]:
    """(elapsed seconds, latencies, times to the first body byte); raises if any request failed."""
    out = await drive_raw(port, raw, total, concurrency)
    if out.errors:
        raise RuntimeError(f"port {port}: {out.errors} of {total} requests failed (another status than 200, a broken answer or the timeout)")
    return out.seconds, out.latencies, out.first_bytes


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 100 else max(values) * 1000


# ---- processes -----------------------------------------------------------------------------------
def tree_path(tree: Path) -> str:
    return os.pathsep.join(str(p) for p in [*sorted(tree.glob("libs/*/src")), *sorted(tree.glob("services/*/src")), tree / "runner/src"])


@dataclass
class Variant:
    label: str
    tree: Path
    workers: int
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    topic: str = ""
    proc: subprocess.Popen | None = None
    results: dict[str, list] = field(default_factory=dict)

    def add(self, name: str, value) -> None:
        self.results.setdefault(name, []).append(value)


def start_gateway(v: Variant, tmp: Path, bootstrap: str, upstream_port: int) -> None:
    data = tmp / v.label
    (data / "keys").mkdir(parents=True, mode=0o700)
    snap = data / "keys" / "gateway.snapshot.json"
    from helicone_core.db import hash_key
    from helicone_core.key_directory import SNAPSHOT_FORMAT

    snap.write_text(json.dumps({"format": SNAPSHOT_FORMAT, "saved_at": time.time(), "keys": {hash_key(KEY): ORG}}))
    snap.chmod(0o600)
    v.port = free_port()
    v.topic = f"bench.alone.{v.label}.v1"
    env = dict(os.environ, PYTHONPATH=tree_path(v.tree), HELICONE_PORT=str(v.port), HELICONE_DATA_DIR=str(data),
               HELICONE_KAFKA_BOOTSTRAP=bootstrap, HELICONE_KAFKA_TOPIC=v.topic, HELICONE_KAFKA_IDEMPOTENT_PRODUCER="false",
               HELICONE_POSTGRES_DSN="postgresql://bench@127.0.0.1:1/bench", HELICONE_OPENAI_URL=f"http://127.0.0.1:{upstream_port}",
               HELICONE_LOG_LEVEL="WARNING", HELICONE_GATEWAY_WORKERS=str(v.workers))
    env.update(v.env)
    argv = [sys.executable, "-m", "helicone_gateway"] + (["--workers", str(v.workers)] if v.workers > 1 else [])
    v.proc = subprocess.Popen(argv, env=env, stdout=open(tmp / f"{v.label}.log", "ab"), stderr=subprocess.STDOUT)


async def wait_ready(v: Variant, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as c:
        while time.monotonic() < deadline:
            if v.proc.poll() is not None:
                raise RuntimeError(f"gateway {v.label} exited with {v.proc.returncode}")
            try:
                if (await c.get(f"http://127.0.0.1:{v.port}/readyz", timeout=1)).status_code == 200:
                    r = await c.get(f"http://127.0.0.1:{v.port}/metrics")
                    if "helicone_gateway_kafka_connected 1.0" in r.text:
                        return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway {v.label} not ready within {timeout}s")


async def spooled(v: Variant, series: str = "helicone_gateway_events_spooled_total{") -> float:
    """Events journaled without a direct send while connected; every worker is asked (each answers
    /metrics for itself, so a few reads reach all of them)."""
    import httpx

    seen: dict[str, float] = {}
    async with httpx.AsyncClient() as c:
        for _ in range(8 * v.workers):
            text = (await c.get(f"http://127.0.0.1:{v.port}/metrics", headers={"connection": "close"})).text
            pid, value = "", 0.0
            for line in text.splitlines():
                if line.startswith(series):
                    value += float(line.rsplit(" ", 1)[1])
                elif line.startswith("process_start_time_seconds "):
                    pid = line
            seen[pid] = value
    return sum(seen.values())


def rss_mb(v: Variant) -> float:
    proc = psutil.Process(v.proc.pid)
    procs = [proc, *proc.children(recursive=True)]
    workers = [p for p in procs if p.pid != proc.pid] or [proc]
    return max(p.memory_info().rss for p in workers) / 2**20


def cpu_seconds(v: Variant) -> float:
    """CPU time (user + system, every thread) of the gateway and its workers so far."""
    proc = psutil.Process(v.proc.pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def profile(v: Variant, out: Path, rnd: int) -> subprocess.Popen:
    """py-spy on the gateway (every worker) through the burst and the drain after it: collapsed
    stacks in OUT/<variant>-<round>.txt (see --profile)."""
    out.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(v.proc.pid), "--subprocesses",
                            "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(out / f"{v.label}-{rnd + 1}.txt")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the burst starts
    return spy


class TopicCount:
    """Distinct events (message keys: org/request id) in a topic, counted by reading them: Tansu
    reports a log end that can stop short of the last batch's end, and a resend adds duplicates."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.consumers: dict = {}
        self.keys: dict[str, set[bytes]] = {}

    async def __call__(self, topic: str) -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = self.consumers.get(topic)
        if consumer is None:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                        fetch_max_bytes=16 * 2**20, max_partition_fetch_bytes=16 * 2**20)
            await consumer.start()
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_beginning()
            self.consumers[topic] = consumer
            self.keys[topic] = set()
        while True:
            got = await consumer.getmany(timeout_ms=50, max_records=100_000)
            for batch in got.values():
                self.keys[topic].update(r.key for r in batch)
            if not got:
                return len(self.keys[topic])

    async def close(self) -> None:
        for consumer in self.consumers.values():
            await consumer.stop()


def in_turn(variants: list[Variant], rnd: int) -> list[Variant]:
    """The variants in round `rnd`'s order: each goes first in turn."""
    return variants[rnd % len(variants):] + variants[:rnd % len(variants)]


async def until_logged(ends: TopicCount, topic: str, target: int) -> int:
    """Waits (at most 300 s) until the topic holds `target` events; the events it holds then."""
    deadline = time.perf_counter() + 300
    while await ends(topic) < target and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    return await ends(topic)


async def run(args) -> None:
    variants = [Variant(label, tree, workers, dict(args.variant_env.get(label, {}))) for label, tree, workers in args.variants]
    with tempfile.TemporaryDirectory(prefix="bench-alone-") as tmpname:
        tmp = Path(tmpname)
        upstream_port = free_port()
        upstream = spawn_upstream(upstream_port)
        kafka = EmbeddedKafka("127.0.0.1", free_port(), tmp / "kafka.log")
        kafka.start()
        ends = TopicCount(kafka.bootstrap)
        try:
            for v in variants:
                start_gateway(v, tmp, kafka.bootstrap, upstream_port)
            for v in variants:
                await wait_ready(v)
            direct_json = request_bytes(upstream_port, BODY, {"authorization": "Bearer sk-bench"})
            direct_stream = request_bytes(upstream_port, STREAM_BODY, {"authorization": "Bearer sk-bench"})
            gw_headers = {"authorization": "Bearer sk-bench", "helicone-auth": f"Bearer {KEY}", "helicone-property-bench": "alone"}
            reqs = {v.label: (request_bytes(v.port, BODY, gw_headers), request_bytes(v.port, STREAM_BODY, gw_headers),
                              request_bytes(v.port, LONG_STREAM_BODY, gw_headers)) for v in variants}
            for v in variants:  # warm up: connections, the topic, the journal
                await load(v.port, reqs[v.label][0], 300, 8)
            direct: dict[str, list] = {}
            for rnd in range(args.rounds):
                for v in in_turn(variants, rnd):
                    js, st, _ = reqs[v.label]
                    # overhead at concurrency 1, each gateway call next to a direct one
                    _, d_lat, _ = await load(upstream_port, direct_json, args.single, 1)
                    cpu_before = cpu_seconds(v)
                    _, g_lat, _ = await load(v.port, js, args.single, 1)
                    _, ds_lat, ds_first = await load(upstream_port, direct_stream, args.single, 1)
                    # the gateway's CPU over its JSON window and the direct window after it (the logging
                    # of its last events, journal_linger_ms and kafka_linger_ms later, falls in that one)
                    v.add("c1_cpu", [(cpu_seconds(v) - cpu_before) / args.single * 1e6])
                    _, gs_lat, gs_first = await load(v.port, st, args.single, 1)
                    direct.setdefault("json", []).extend(d_lat)
                    direct.setdefault("first", []).extend(ds_first)
                    v.add("c1_json", g_lat)
                    v.add("c1_json_direct", d_lat)
                    v.add("c1_first", gs_first)
                    v.add("c1_first_direct", ds_first)
                    if args.c1_only:
                        continue
                    # burst at concurrency 32, then until Kafka holds every event
                    await asyncio.sleep(1.0)
                    before = await ends(v.topic)
                    spy = profile(v, args.profile, rnd) if args.profile else None
                    t0, cpu0 = time.perf_counter(), cpu_seconds(v)
                    elapsed, lat, _ = await load(v.port, js, args.burst, args.concurrency)
                    logged = await until_logged(ends, v.topic, before + args.burst) - before
                    v.add("cpu_us", (cpu_seconds(v) - cpu0) * 1e6 / args.burst)
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(30)
                    v.add("burst_rps", args.burst / elapsed)
                    v.add("sustained", logged / (time.perf_counter() - t0))
                    v.add("logged", logged)
                    v.add("burst_lat", lat)
                    s_elapsed, _, _ = await load(v.port, st, args.burst // 2, args.concurrency)
                    v.add("stream_rps", (args.burst // 2) / s_elapsed)
                    d_elapsed, _, _ = await load(upstream_port, direct_json, args.burst // 2, args.concurrency)
                    direct.setdefault("rps", []).append((args.burst // 2) / d_elapsed)
                    print(f"round {rnd + 1} {v.label}: burst {args.burst / elapsed:.0f} rps, logged {logged}/{args.burst}", flush=True)
            if args.c1_only:
                c1_report(variants, args)
                return
            await asyncio.sleep(2)
            for v in variants:  # the RSS of the rounds above, before the long streams' bodies pass through
                v.results["rss"] = [rss_mb(v)]
            # long streams, in rounds of their own, each until Kafka holds their events
            n_long = args.burst // 4
            for rnd in range(args.rounds):
                for v in in_turn(variants, rnd):
                    before = await ends(v.topic)
                    t0, cpu0 = time.perf_counter(), cpu_seconds(v)
                    l_elapsed, _, _ = await load(v.port, reqs[v.label][2], n_long, args.concurrency)
                    logged = await until_logged(ends, v.topic, before + n_long) - before
                    v.add("long_rps", n_long / l_elapsed)
                    v.add("long_sustained", logged / (time.perf_counter() - t0))
                    v.add("long_cpu_us", (cpu_seconds(v) - cpu0) * 1e6 / n_long)
                    v.add("long_rss", rss_mb(v))
            await asyncio.sleep(1)
            print(f"\ngateway alone: {args.burst} requests per burst at concurrency {args.concurrency}, {args.single} at concurrency 1, "
                  f"{args.rounds} interleaved rounds; direct upstream at c={args.concurrency}: {statistics.median(direct['rps']):.0f} rps")
            print(f"{'variant':18s} {'c1 p50+':>8s} {'c1 p99+':>8s} {'1st p50+':>8s} {'burst':>7s} {'sustain':>7s} "
                  f"{'CPU us':>6s} {'stream':>7s} {'str/json':>8s} {'long':>6s} {'long sus':>8s} {'long CPU':>8s} {'kept up':>7s} {'vs 1st':>6s} {'spooled':>7s} {'resent':>7s} {'RSS MB':>7s} {'RSS long':>8s}")
            first = variants[0].results["sustained"]
            for v in variants:
                g, d, gf, df = c1_samples(v)
                burst = statistics.median(v.results["burst_rps"])
                stream = statistics.median(v.results["stream_rps"])
                v.results["spooled"] = [await spooled(v)]
                v.results["resent"] = [await spooled(v, 'helicone_gateway_events_published_total{path="resend"}')]
                print(f"{v.label + f' ({v.workers}w)':18s} {pct(g, 50) - pct(d, 50):8.2f} {pct(g, 99) - pct(d, 99):8.2f} "
                      f"{pct(gf, 50) - pct(df, 50):8.2f} {burst:7.0f} {statistics.median(v.results['sustained']):7.0f} "
                      f"{statistics.median(v.results['cpu_us']):6.0f} {stream:7.0f} {stream / burst:8.2f} "
                      f"{statistics.median(v.results['long_rps']):6.0f} {statistics.median(v.results['long_sustained']):8.0f} "
                      f"{statistics.median(v.results['long_cpu_us']):8.0f} "
                      f"{statistics.median(s / b for s, b in zip(v.results['sustained'], v.results['burst_rps'], strict=True)):7.2f} "
                      f"{statistics.median(s / f for s, f in zip(v.results['sustained'], first, strict=True)):6.2f} "
                      f"{v.results['spooled'][0]:7.0f} {v.results['resent'][0]:7.0f} {v.results['rss'][0]:7.1f} {max(v.results['long_rss']):8.1f}")
            print("c1 p50+/p99+: ms added over a direct call (JSON); 1st p50+: ms added to the first streamed byte; "
                  "burst: rps while the c=32 burst lasts; sustain: burst requests / (burst + until Kafka held all its events); "
                  "CPU us: the gateway's CPU (every worker and thread) per burst request over that time (median of the rounds); "
                  f"long: rps of {LONG_CHUNKS}-chunk streams ({len(LONG_CHUNKED) // 1024} KiB) at c={args.concurrency}, {args.burst // 4} a round, "
                  "in rounds after the others, while the load lasts; long sus: sustained, until Kafka held their events; long CPU: the gateway's CPU per long-stream request until Kafka held its events; "
                  "kept up: sustain / burst; vs 1st: sustain / the first variant's, same round (median); "
                  "spooled: events not handed to Kafka at once (broker up all along); resent: events the journal sent again; "
                  "RSS: largest worker after the JSON and short-stream rounds; RSS long: the largest after a long-stream round")
            for v in variants:
                for line in (tmp / f"{v.label}.log").read_text(errors="replace").splitlines():
                    if "lost acknowledged" in line or "journaling until" in line:
                        print(f"{v.label}: {line[:300]}")
        finally:
            await ends.close()
            for v in variants:
                if v.proc is not None and v.proc.poll() is None:
                    v.proc.send_signal(signal.SIGTERM)
            for v in variants:
                if v.proc is not None:
                    try:
                        v.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        v.proc.kill()
            upstream.terminate()
            upstream.wait(10)
            kafka.stop()


def c1_samples(v: Variant) -> tuple[list[float], ...]:
    """Every round's concurrency-1 latencies pooled: the gateway's JSON, the direct JSON next to them,
    the gateway's first streamed byte, the direct one."""
    return tuple([x for r in v.results[k] for x in r] for k in ("c1_json", "c1_json_direct", "c1_first", "c1_first_direct"))


def c1_report(variants: list[Variant], args) -> None:
    """--c1-only: the concurrency-1 columns alone, with the quantiles around them."""
    print(f"\ngateway alone at concurrency 1: {args.single} requests a sample, {args.rounds} interleaved rounds, "
          "each next to a direct call")
    print(f"{'variant':18s} {'p50+':>6s} {'p90+':>6s} {'p99+':>6s} {'1st p50+':>8s} {'1st p99+':>8s} {'p50':>6s} {'direct p50':>10s} "
          f"{'CPU us':>6s}")
    for v in variants:
        g, d, gf, df = c1_samples(v)
        cpu = statistics.median(x for r in v.results["c1_cpu"] for x in r)
        print(f"{v.label + f' ({v.workers}w)':18s} {pct(g, 50) - pct(d, 50):6.3f} {pct(g, 90) - pct(d, 90):6.3f} "
              f"{pct(g, 99) - pct(d, 99):6.3f} {pct(gf, 50) - pct(df, 50):8.3f} {pct(gf, 99) - pct(df, 99):8.3f} "
              f"{pct(g, 50):6.3f} {pct(d, 50):10.3f} {cpu:6.0f}")
    print("ms added over the direct calls of the same rounds: JSON (p50, p90, p99) and the first streamed byte (p50, p99);")
    print("CPU us: the gateway's CPU (every worker and thread) per c=1 JSON request, its logging included (median of the rounds)")


def parse_variant(text: str) -> tuple[str, str, int]:
    label, sep, rest = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected LABEL=TREE[:WORKERS]")
    tree, _, workers = rest.partition(":")
    return label, Path(tree or ROOT).resolve(), int(workers or 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    p.add_argument("--variant", action="append", type=parse_variant, default=[])
    p.add_argument("--env", action="append", default=[], metavar="LABEL:NAME=VALUE",
                   help="an environment variable for one variant's gateway (e.g. lz4:HELICONE_KAFKA_COMPRESSION=lz4)")
    p.add_argument("--workers", default="", help="comma-separated worker counts: one variant of this tree each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--burst", type=int, default=4000)
    p.add_argument("--single", type=int, default=300, help="requests per concurrency-1 sample")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--c1-only", action="store_true", help="only the concurrency-1 windows (use a larger --single)")
    p.add_argument("--profile", type=Path, help="py-spy every burst into this directory (collapsed stacks)")
    args = p.parse_args()
    if args.serve_upstream:
        return serve_upstream(args.serve_upstream)
    args.variant_env = {}
    args.variants = list(args.variant) + [(f"{n}-worker", ROOT, int(n)) for n in args.workers.split(",") if n]
    if not args.variants:
        args.variants = [("this", ROOT, 1)]
    for item in args.env:
        label, _, assignment = item.partition(":")
        name, sep, value = assignment.partition("=")
        if not sep or label not in {v[0] for v in args.variants}:
            p.error(f"--env {item!r}: expected LABEL:NAME=VALUE with the LABEL of a variant")
        args.variant_env.setdefault(label, {})[name] = value
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
