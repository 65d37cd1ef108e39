"""Gateway overhead benchmark.

Starts the full embedded stack (as `helicone-stack up`) with the fake provider, then drives the same
load twice in the same run: straight at the fake provider (baseline) and through the gateway (which
also authenticates, captures bodies and publishes every event to Kafka). Prints requests/s and
latency for both and their ratios, then how long ingest took to write every gateway event.

    .venv/bin/python bench/gateway_overhead.py [--requests 2000] [--concurrency 16]

Client, gateway, broker, ingest and provider share this machine's cores, so absolute numbers are
lower than on separate hosts; the ratios are what to compare between commits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.stack import running_stack  # noqa: E402

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark prompt with a few words"}]}
STREAM_BODY = dict(BODY, stream=True, stream_options={"include_usage": True})


async def load(url: str, headers: dict, body: dict, total: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def worker() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                async with client.stream("POST", url, json=body, headers=headers) as r:
                    async for _ in r.aiter_raw():
                        pass
                    if r.status_code != 200:
                        raise RuntimeError(f"{url} answered {r.status_code}")
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return total / elapsed, latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 100 else max(values) * 1000


def metric(url: str, series: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def ingest_ok(stack) -> float:
    return metric(stack.ingest_ops, 'helicone_ingest_events_total{result="ok"}')


async def wait_for_ingest(stack, count: float, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while ingest_ok(stack) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp), s3=False, extra_env={"HELICONE_LOG_LEVEL": "WARNING"}) as stack:
        print(f"stack ready in {stack.startup_seconds:.1f}s (launch to READY)")
        gw_headers = {"Helicone-Auth": f"Bearer {stack.key}", "Authorization": "Bearer sk-bench",
                      "Helicone-Property-Bench": "overhead"}
        targets = {"direct": (f"{stack.upstream}/v1/chat/completions", {"Authorization": "Bearer sk-bench"}),
                   "gateway": (f"{stack.gateway}/v1/chat/completions", gw_headers)}
        # warm up connections and the key cache, and let ingest write the warm-up events
        for url, headers in targets.values():
            await load(url, headers, BODY, 100, args.concurrency)
        await wait_for_ingest(stack, 100, timeout=60)
        logged_before = ingest_ok(stack)
        results = {}
        sent_through_gateway = 0
        for kind, body in (("json", BODY), ("stream", STREAM_BODY)):
            for name, (url, headers) in targets.items():
                rps, lat = await load(url, headers, body, args.requests, args.concurrency)
                results[(kind, name)] = (rps, lat)
                if name == "gateway":
                    sent_through_gateway += args.requests
        load_done = time.perf_counter()
        await wait_for_ingest(stack, logged_before + sent_through_gateway, timeout=120)
        drain = time.perf_counter() - load_done
        logged = ingest_ok(stack) - logged_before

        print(f"{args.requests} requests per case, concurrency {args.concurrency}")
        print(f"{'case':16s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s}")
        for (kind, name), (rps, lat) in results.items():
            print(f"{kind + '/' + name:16s} {rps:8.0f} {pct(lat, 50):8.2f} {pct(lat, 99):8.2f}")
        for kind in ("json", "stream"):
            d_rps, d_lat = results[(kind, "direct")]
            g_rps, g_lat = results[(kind, "gateway")]
            print(f"{kind}: gateway/direct throughput ratio {g_rps / d_rps:.2f}, "
                  f"p50 added {pct(g_lat, 50) - pct(d_lat, 50):.2f} ms, p99 added {pct(g_lat, 99) - pct(d_lat, 99):.2f} ms")
        print(f"ingest: {logged:.0f}/{sent_through_gateway} gateway events written, "
              f"last one {drain:.2f}s after the load ended")
        published = metric(stack.gateway, 'helicone_gateway_events_published_total{path="direct"}')
        resent = metric(stack.gateway, 'helicone_gateway_events_published_total{path="resend"}')
        rewinds = metric(stack.ingest_ops, "helicone_ingest_offset_rewinds_total")
        print(f"gateway: {published:.0f} events published directly, {resent:.0f} resent from the journal; "
              f"ingest offset rewinds: {rewinds:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
