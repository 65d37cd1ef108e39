"""The gateway: authenticate, forward, stream back, then log off the request path.

Proxied traffic is served as raw ASGI (no framework layers on the hot path); FastAPI serves the
lifespan and the ops routes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI
from helicone_core import db, events
from helicone_core.cost import CostRegistry
from helicone_core.metrics import ServiceMetrics, add_ops_routes

from .headers import (
    HeaderError,
    HeliconeHeaders,
    forward_request_headers,
    forward_response_headers,
    parse_helicone_headers,
)
from .providers import Route, RoutingError, route
from .publisher import EventPublisher
from .settings import GatewaySettings
from .spool import Spool
from .usage import decode_body, parse_response, request_model

log = logging.getLogger("helicone.gateway")

OPS_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})


class ClientGone(Exception):
    """The caller disconnected before its request body arrived."""


async def send_error(send, status: int, message: str, kind: str, request_id: str = "") -> None:
    body = json.dumps({"error": {"message": message, "type": kind}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if request_id:
        headers.append((b"helicone-id", request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Capture:
    """Keeps up to `limit` bytes of a body for the log, counting the rest."""

    __slots__ = ("limit", "parts", "size", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - self.size
        if room > 0:
            piece = chunk[:room]
            self.parts.append(piece)
            self.size += len(piece)

    @property
    def truncated(self) -> bool:
        return self.total > self.size

    def data(self) -> bytes:
        return b"".join(self.parts)


class Gateway:
    def __init__(self, settings: GatewaySettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.costs = (
            CostRegistry.from_file(settings.cost_registry_file) if settings.cost_registry_file else CostRegistry.default()
        )
        self.session: aiohttp.ClientSession | None = None
        self.pool = None
        self.keys: db.KeyResolver | None = None
        self.publisher = EventPublisher(
            bootstrap=settings.kafka_bootstrap,
            topic=settings.kafka_topic,
            spool=Spool(settings.resolved_spool_dir(), settings.spool_max_bytes),
            metrics=metrics,
            queue_size=settings.publish_queue_size,
            publish_timeout=settings.publish_timeout,
            replay_interval=settings.spool_replay_interval,
            create_topic=settings.kafka_create_topics,
            partitions=settings.kafka_topic_partitions,
            replication_factor=settings.kafka_replication_factor,
        )
        self._db_task: asyncio.Task | None = None
        self.m_requests = metrics.counter(
            "helicone_gateway_requests_total", "Proxied requests", ("provider", "status_class")
        )
        self.m_duration = metrics.histogram(
            "helicone_gateway_request_duration_seconds", "Request time, first byte in to last byte out", ("provider",)
        )
        self.m_ttfb = metrics.histogram(
            "helicone_gateway_upstream_ttfb_seconds", "Time to the first upstream response byte", ("provider",)
        )
        self.m_upstream_errors = metrics.counter(
            "helicone_gateway_upstream_errors_total", "Upstream transport failures", ("provider", "kind")
        )
        self.m_auth = metrics.counter(
            "helicone_gateway_auth_results_total", "Helicone-Auth outcomes", ("result",)
        )

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.max_upstream_connections, limit_per_host=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, connect=s.upstream_connect_timeout, sock_read=s.upstream_read_timeout),
            auto_decompress=False,  # bytes go back to the caller exactly as the provider sent them
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # forward only what the caller sent
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        await self.publisher.start()
        self._db_task = asyncio.create_task(self._connect_db())

    async def stop(self) -> None:
        if self._db_task:
            self._db_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._db_task
        await self.publisher.stop()
        if self.session:
            await self.session.close()
        if self.pool is not None:
            await self.pool.close()

    async def _connect_db(self) -> None:
        backoff = 0.5
        while self.pool is None:
            try:
                self.pool = await db.connect_pool(self.settings.postgres_dsn.get_secret_value(), max_size=5)
                self.keys = db.KeyResolver(self.pool)
            except Exception as exc:  # noqa: BLE001 - keep proxying while Postgres is away
                log.warning("postgres not reachable (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)

    async def ready(self) -> dict[str, bool]:
        return {"http_client": self.session is not None, "key_store": self.keys is not None}

    # ---- auth ------------------------------------------------------------------------
    async def org_for(self, key: str) -> tuple[str | None, tuple[int, str, str] | None]:
        """(org_id, None) for a known key; (None, None) when the key store is down (proxy
        without logging); (None, (status, message, kind)) to reject."""
        if not key:
            self.m_auth.labels("missing").inc()
            return None, (401, "Missing Helicone-Auth header: send 'Helicone-Auth: Bearer <your Helicone API key>'",
                          "helicone_auth_error")
        if self.keys is None:
            self.m_auth.labels("store_unavailable").inc()
            return None, None
        try:
            org = await self.keys.resolve(key)
        except Exception as exc:  # noqa: BLE001 - observability must not break traffic
            log.warning("key store lookup failed (%s); proxying without logging", exc.__class__.__name__)
            self.m_auth.labels("store_unavailable").inc()
            return None, None
        if org is None:
            self.m_auth.labels("invalid").inc()
            return None, (401, "Invalid or revoked Helicone API key", "helicone_auth_error")
        self.m_auth.labels("ok").inc()
        return org, None

    # ---- proxy (raw ASGI: this is the hot path) ---------------------------------------
    async def handle(self, scope, receive, send) -> None:
        started = time.perf_counter()
        started_at = dt.datetime.now(dt.timezone.utc)
        raw_headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        header_map = dict(raw_headers)
        try:
            hh = parse_helicone_headers(raw_headers)
        except HeaderError as exc:
            return await send_error(send, 400, str(exc), "helicone_header_error")
        org_id, rejection = await self.org_for(hh.auth_key)
        if rejection is not None:
            return await send_error(send, *rejection)
        try:
            # raw_path keeps percent-encoding as the caller sent it (e.g. ids containing %2F)
            path = scope.get("raw_path") or scope["path"].encode()
            rt = route(self.settings, path.decode("latin-1"), header_map, hh.target_url)
        except RoutingError as exc:
            return await send_error(send, 400, str(exc), "helicone_routing_error")
        try:
            body = await self._read_body(receive, header_map.get("content-length"))
        except ClientGone:
            return
        if body is None:
            return await send_error(send, 413, f"request body larger than {self.settings.max_request_bytes} bytes",
                                    "request_too_large")
        request_id = hh.request_id or events.new_request_id()
        query = scope.get("query_string") or b""
        url = rt.base_url + rt.path + ("?" + query.decode("latin-1") if query else "")
        method = scope["method"]
        req_ctype = header_map.get("content-type", "")
        assert self.session is not None
        try:
            upstream = await self.session.request(
                method, url, headers=forward_request_headers(raw_headers), data=body, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            kind = "timeout" if timed_out else exc.__class__.__name__
            self.m_upstream_errors.labels(rt.provider, kind).inc()
            self.m_requests.labels(rt.provider, "error").inc()
            if org_id:
                self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                          0, "", b"", "", False, -1, error=f"{kind}: upstream request failed")
            return await send_error(send, 504 if timed_out else 502, f"Gateway could not reach the provider ({kind})",
                                    "gateway_upstream_timeout" if timed_out else "gateway_upstream_error", request_id)

        self.m_ttfb.labels(rt.provider).observe(time.perf_counter() - started)
        status = upstream.status
        resp_ctype = upstream.headers.get("content-type", "")
        resp_encoding = upstream.headers.get("content-encoding", "")
        resp_headers = forward_response_headers(upstream.raw_headers)
        resp_headers.append((b"helicone-id", request_id.encode()))
        capture = Capture(self.settings.max_logged_body_bytes)
        # after the request body, receive() only ever reports the caller going away
        disconnected = asyncio.ensure_future(receive())
        first_chunk_at = -1.0
        completed = False
        try:
            await send({"type": "http.response.start", "status": status, "headers": resp_headers})
            async for chunk in upstream.content.iter_any():
                if first_chunk_at < 0:
                    first_chunk_at = time.perf_counter()
                capture.add(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if disconnected.done():
                    break
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                completed = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            # the provider's stream broke mid-way; the caller sees the response end early
            self.m_upstream_errors.labels(rt.provider, "stream_" + exc.__class__.__name__).inc()
        finally:
            disconnected.cancel()
            if completed:
                upstream.release()
            else:
                upstream.close()
            self.m_requests.labels(rt.provider, f"{status // 100}xx").inc()
            self.m_duration.labels(rt.provider).observe(time.perf_counter() - started)
            if org_id:
                ttft_ms = int((first_chunk_at - started) * 1000) if first_chunk_at >= 0 else -1
                self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                          status, resp_encoding, capture.data(), resp_ctype, capture.truncated, ttft_ms,
                          error="" if completed else "response did not complete (client disconnected or provider stream broke)")

    async def _read_body(self, receive, declared: str | None) -> bytes | None:
        """The request body, or None as soon as it exceeds max_request_bytes (nothing more is read)."""
        limit = self.settings.max_request_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            return None
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _log(self, org_id: str, request_id: str, hh: HeliconeHeaders, rt: Route, method: str, body: bytes,
             req_ctype: str, started: float, started_at: dt.datetime, status: int, encoding: str,
             resp_body: bytes, resp_ctype: str, resp_truncated: bool, ttft_ms: int, error: str = "") -> None:
        """Hands the log event to the publisher; the event itself is built on its worker."""
        latency_ms = int((time.perf_counter() - started) * 1000)
        finished_at = dt.datetime.now(dt.timezone.utc)
        limit = self.settings.max_logged_body_bytes

        def build() -> events.RequestLogged:
            req_model, req_stream = request_model(body)
            decoded = decode_body(resp_body, encoding) if encoding else resp_body
            parsed = parse_response(rt.provider, decoded, resp_ctype)
            model = parsed.model or req_model
            cost = self.costs.cost(rt.provider, model, parsed.tokens) if parsed.known else None
            ev = events.RequestLogged(
                schema_version=events.SCHEMA_VERSION,
                request_id=request_id,
                org_id=org_id,
                latency_ms=latency_ms,
                time_to_first_token_ms=ttft_ms,
                status=status,
                provider=rt.provider,
                model=model,
                method=method,
                path=rt.path,
                target_url=rt.base_url,
                user_id=hh.user_id,
                session_id=hh.session_id,
                session_path=hh.session_path,
                session_name=hh.session_name,
                properties=hh.properties,
                usage=events.Usage(
                    prompt_tokens=parsed.tokens.prompt_tokens,
                    completion_tokens=parsed.tokens.completion_tokens,
                    total_tokens=parsed.tokens.prompt_tokens + parsed.tokens.completion_tokens,
                    cache_read_tokens=parsed.tokens.cache_read_tokens,
                    cache_write_tokens=parsed.tokens.cache_write_tokens,
                    known=parsed.known,
                ),
                cost_usd=cost or 0.0,
                cost_known=cost is not None,
                streamed=req_stream or "text/event-stream" in resp_ctype,
                inline=events.InlineBodies(
                    request_body=body[:limit],
                    response_body=decoded[:limit],
                    request_content_type=req_ctype,
                    response_content_type=resp_ctype,
                    request_truncated=len(body) > limit,
                    response_truncated=resp_truncated or len(decoded) > limit,
                ),
                error=error,
                source="gateway",
            )
            events.set_time(ev.request_created_at, started_at)
            events.set_time(ev.response_created_at, finished_at)
            return ev

        self.publisher.submit(build)


class GatewayApp:
    """ASGI entry point: proxied traffic goes straight to Gateway.handle; lifespan and the ops
    routes (/metrics, /healthz, /readyz) are served by a small FastAPI app."""

    def __init__(self, ops: FastAPI, gateway: Gateway) -> None:
        self.ops = ops
        self.gateway = gateway
        self.state = ops.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPS_PATHS:
            await self.gateway.handle(scope, receive, send)
        else:
            await self.ops(scope, receive, send)


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    settings = settings or GatewaySettings()
    metrics = ServiceMetrics("gateway")
    gw = Gateway(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    ops = FastAPI(title="helicone-gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    ops.state.gateway = gw
    add_ops_routes(ops, metrics, gw.ready)
    return GatewayApp(ops, gw)
