"""Gateway overhead benchmark.

Starts the full embedded stack (as `helicone-stack up`) with the fake provider, then drives the same
load twice in the same run: straight at the fake provider (baseline) and through the gateway (which
also authenticates, captures bodies and publishes every event to Kafka). Prints requests/s and
latency for both and their ratios, then how long ingest took to write every gateway event.

Then the features' rows, each next to plain proxying measured again just before it: a response-cache
hit (Helicone-Cache-Enabled, answered without the provider) and a Helicone-RateLimit-Policy check
(a quota never reached), first on the gateways' in-memory stores, then with the stack restarted on a
local Redis (HELICONE_REDIS_URL; skipped without `redis-server`).

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

from tests.support.net import poll_client  # noqa: E402
from tests.support.redis_server import RedisServer  # noqa: E402
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
    for line in poll_client().get(f"{url}/metrics", timeout=5).text.splitlines():  # httpx.get's default, as before
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
        spooled = sum(metric(stack.gateway, f'helicone_gateway_events_spooled_total{{reason="{reason}"}}')
                      for reason in ("broker_down", "held", "send_failed", "stopping"))
        print(f"gateway: {published:.0f} events published directly, {resent:.0f} resent from the journal, "
              f"{spooled:.0f} spooled (broker up all along: should be 0); ingest offset rewinds: {rewinds:.0f}")
        await feature_rows(stack, Path(tmp), gw_headers, args)


def uses_redis(stack) -> bool:
    return "redis" in httpx.get(f"{stack.gateway}/readyz").text  # the optional check only a Redis store adds


# A quota the bench never reaches: every request pays the check, none is refused.
RATE_LIMIT = {"Helicone-RateLimit-Policy": "1000000000;w=3600"}
CACHE = {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Seed": "bench"}


async def feature_rows(stack, tmp: Path, gw_headers: dict, args) -> None:
    """Cache-hit latency and rate-limit check overhead against plain proxying, per store."""
    url = f"{stack.gateway}/v1/chat/completions"
    cases = {"plain": gw_headers, "cache-hit": {**gw_headers, **CACHE}, "ratelimit": {**gw_headers, **RATE_LIMIT}}
    rows: dict[tuple[str, str], tuple[float, list[float]]] = {}
    redis = None
    try:
        for store in ("memory", "redis"):
            if store == "redis":
                try:
                    redis = RedisServer(tmp)
                except RuntimeError as exc:
                    print(f"redis rows skipped: {exc}")
                    break
                stack.restart_runner({"HELICONE_REDIS_URL": redis.url})
                if not uses_redis(stack):
                    raise RuntimeError("the restarted gateway does not use HELICONE_REDIS_URL")
            for headers in cases.values():  # warm up; the cache case also saves the entry it then hits
                await load(url, headers, BODY, 50, args.concurrency)
            # interleaved rounds: drift in the machine's load (shared cores) hits every case alike
            rounds, elapsed = 5, dict.fromkeys(cases, 0.0)
            lat: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(rounds):
                for name, headers in cases.items():
                    n = max(1, args.requests // rounds)
                    rps, round_lat = await load(url, headers, BODY, n, args.concurrency)
                    elapsed[name] += n / rps
                    lat[name] += round_lat
            for name in cases:
                rows[(store, name)] = (len(lat[name]) / elapsed[name], lat[name])
        checks = await check_cost(redis.url if redis is not None else None, args.requests)
    finally:
        if redis is not None:  # the stack stops right after: no need to start it again without Redis
            redis.stop()
    print(f"features ({args.requests} JSON requests per case, concurrency {args.concurrency}; "
          "ratio = case / plain gateway of the same store)")
    print(f"{'case':20s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 ratio':>10s} {'p50 added ms':>13s}")
    for (store, name), (rps, lat) in rows.items():
        base = rows[(store, "plain")][1]
        print(f"{store + '/' + name:20s} {rps:8.0f} {pct(lat, 50):8.2f} {pct(lat, 99):8.2f} "
              f"{pct(lat, 50) / pct(base, 50):10.2f} {pct(lat, 50) - pct(base, 50):13.2f}")
    print("rate-limit check alone, in this process, one caller (what a request with the header adds): " +
          ", ".join(f"{store} p50 {pct(lat, 50) * 1000:.0f} us, p99 {pct(lat, 99) * 1000:.0f} us" for store, lat in checks.items()))


async def check_cost(redis_url: str | None, calls: int) -> dict[str, list[float]]:
    """Seconds per RateLimiter.check (the gateway's call) on each store, timed without HTTP around it."""
    from helicone_core.metrics import ServiceMetrics
    from helicone_gateway.headers import HeliconeHeaders
    from helicone_gateway.ratelimit import MemoryRateLimitStore, RateLimiter, RedisRateLimitStore, rate_limit_request

    req = rate_limit_request(RATE_LIMIT["Helicone-RateLimit-Policy"], HeliconeHeaders())
    stores = {"memory": MemoryRateLimitStore()}
    if redis_url:
        stores["redis"] = RedisRateLimitStore(redis_url, 1.0)
    out = {}
    for name, store in stores.items():
        limiter = RateLimiter(store, 1.0, ServiceMetrics("bench"))
        for _ in range(50):
            await limiter.check("bench-org", req)
        lat = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await limiter.check("bench-org", req)
            lat.append(time.perf_counter() - t0)
        out[name] = lat
        await limiter.close()
    return out


if __name__ == "__main__":
    asyncio.run(main())
