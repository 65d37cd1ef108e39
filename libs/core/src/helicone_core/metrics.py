"""Prometheus helpers (one registry per service so that services sharing a process still
expose only their own series on their own /metrics) and the ops routes, /readyz included.

Processes started with MULTIPROCESS_DIR in their environment (the gateway's workers, one port)
record every metric in files there and each /metrics answers the totals over all of them, so a
scrape reads the same counters whichever worker it lands on; a gauge says how its values merge.

/readyz answers `{"ready": bool, "checks": {name: {"ok": bool, "required": bool}}}`: 200 when
every required check is ok, else 503. An optional check that fails (e.g. the gateway's Kafka:
events wait in its journal) is reported but keeps the service ready. Every check is a real round
trip bounded by the service's `readiness_timeout`, and all run concurrently.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .cancellation import wait_for


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    required: bool = True

    def to_json(self) -> dict[str, bool]:
        return {"ok": self.ok, "required": self.required}


ReadyCheck = Callable[[], Awaitable[dict[str, Check]]]
Probe = Awaitable[bool] | bool


async def _probe(check: Probe, timeout: float) -> bool:
    if isinstance(check, bool):
        return check
    try:
        return bool(await wait_for(check, timeout))
    except Exception:  # noqa: BLE001 - a probe that fails or times out answers "not ok"
        return False


async def readiness(timeout: float, required: dict[str, Probe], optional: dict[str, Probe] | None = None) -> dict[str, Check]:
    """Runs the probes (awaitables answering a bool, or a bool already known) concurrently,
    each bounded by `timeout` seconds."""
    named = [(name, probe, True) for name, probe in required.items()]
    named += [(name, probe, False) for name, probe in (optional or {}).items()]
    results = await asyncio.gather(*(_probe(probe, timeout) for _, probe, _ in named))
    return {name: Check(ok, req) for (name, _, req), ok in zip(named, results, strict=True)}


def is_ready(checks: dict[str, Check]) -> bool:
    return all(c.ok for c in checks.values() if c.required)

# The routes add_ops_routes serves: unauthenticated by design (cluster network only).
OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


# prometheus_client's own setting: read when it is first imported, so only a new process can be given it
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def build_version() -> str:
    """The version every service reports: all of them ship together with helicone-core, in one image."""
    try:
        return importlib.metadata.version("helicone-core")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


class ServiceMetrics:
    def __init__(self, service: str, region: str = "") -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.merged_from = os.environ.get(MULTIPROCESS_DIR)  # one of several workers: render every worker's values
        self.up = self.gauge("helicone_service_up", "1 while the service is running", ("service",), merge="livemax")
        self.up.labels(service).set(1)
        # a constant 1 whose labels say what runs where (join it onto other series by `service`)
        self.info = self.gauge("helicone_service_info", "Which service, in which region (HELICONE_REGION), at which version",
                               ("service", "region", "version"), merge="livemax")
        self.info.labels(service, region, build_version()).set(1)

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = (), merge: str = "livesum") -> Gauge:
        """`merge`: how the values of several workers add up (prometheus_client's multiprocess_mode;
        livesum, livemax, livemin: over the running ones); one process reports its own value."""
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=merge)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    def render(self) -> tuple[bytes, str]:
        if self.merged_from:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, self.merged_from)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def add_ops_routes(app, metrics: ServiceMetrics, ready: ReadyCheck) -> None:
    """Adds /metrics, /healthz (liveness) and /readyz (readiness) to a FastAPI app."""
    from fastapi import Response
    from fastapi.responses import JSONResponse

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/healthz", include_in_schema=False)
    async def _healthz() -> dict:
        return {"status": "ok", "service": metrics.service}

    @app.get("/readyz", include_in_schema=False)
    async def _readyz() -> JSONResponse:
        checks = await ready()
        ok = is_ready(checks)
        return JSONResponse({"ready": ok, "checks": {name: c.to_json() for name, c in checks.items()}},
                            status_code=200 if ok else 503)


class OpsRoutes:
    """The ops routes (GET /metrics, /healthz, /readyz) as a bare ASGI app answering what
    add_ops_routes answers, for a process that has no other use for FastAPI (the gateway: importing
    FastAPI costs it several MB of resident memory). `scope["path"]` must be one of OPS_PATHS."""

    def __init__(self, metrics: ServiceMetrics, ready: ReadyCheck) -> None:
        self.metrics, self.ready = metrics, ready

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1000, "reason": ""})
            return
        path = scope["path"]
        if path not in OPS_PATHS:
            return await _answer(send, 404, _json({"detail": "Not Found"}), b"application/json")
        if scope["method"] != "GET":
            return await _answer(send, 405, _json({"detail": "Method Not Allowed"}), b"application/json", ((b"allow", b"GET"),))
        if path == "/metrics":
            body, ctype = self.metrics.render()
            return await _answer(send, 200, body, ctype.encode())
        if path == "/healthz":
            return await _answer(send, 200, _json({"status": "ok", "service": self.metrics.service}), b"application/json")
        checks = await self.ready()
        ok = is_ready(checks)
        await _answer(send, 200 if ok else 503, _json({"ready": ok, "checks": {name: c.to_json() for name, c in checks.items()}}),
                      b"application/json")


def _json(content) -> bytes:
    """JSON as FastAPI's JSONResponse renders it."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _answer(send, status: int, body: bytes, ctype: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", ctype), *extra]})
    await send({"type": "http.response.body", "body": body})


def ops_app(metrics: ServiceMetrics, ready: ReadyCheck, service=None):
    """A small FastAPI app with only the ops routes, for services whose main protocol is not HTTP.
    With `service` (an object with async start()/stop()), the app's lifespan runs it."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    @asynccontextmanager
    async def lifespan(app):
        if service is not None:
            await service.start()
        try:
            yield
        finally:
            if service is not None:
                await service.stop()

    app = FastAPI(title=f"helicone-{metrics.service} ops", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    add_ops_routes(app, metrics, ready)
    return app
