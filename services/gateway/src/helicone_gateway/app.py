"""The gateway: authenticate, forward, stream back, then log off the request path.

Proxied traffic is served as raw ASGI (no framework layers on the hot path), and so are the lifespan
and the ops routes (helicone_core.metrics.OpsRoutes): the gateway process never imports FastAPI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
from helicone_core import events
from helicone_core.cost import CostRegistry
from helicone_core.db import KeyStoreUnavailable
from helicone_core.http_limits import HEADERS_TOO_LARGE_STATUS, HEADERS_TOO_LARGE_TYPE, header_limit_error
from helicone_core.kafka import client_security
from helicone_core.key_directory import KeyDirectory
from helicone_core.metrics import OPS_PATHS, Check, OpsRoutes, ServiceMetrics, readiness
from helicone_core.providers import PROVIDER_TABLE
from helicone_core.usage import (
    FORM_DATA,
    Parsed,
    TailDecoder,
    billed_by_request,
    decode_body,
    form_model,
    is_stream,
    parse_response,
    request_fields,
    unicode_text,
    usage_is_its_own,
    with_stream_usage,
)
from helicone_core.vault import ProviderKeyDirectory, StoredKey
from yarl import URL

from .cache import (
    BUCKET_IDX_HEADER,
    HIT,
    MISS,
    NOT_REPLAYED,
    STATUS_HEADER,
    BodyRecorder,
    CacheDirective,
    CachedResponse,
    Lookup,
    MemoryCacheStore,
    RedisCacheStore,
    ResponseCache,
    cache_directive,
    cache_key,
    provider_key,
    replay_headers,
    stream_failed,
)
from .egress import (
    CONNECTING,
    NOT_ALLOWLISTED,
    OPENED_BY_ALLOW_PRIVATE,
    REASONS,
    EgressPolicy,
    TargetConnect,
    guarded_socket_factory,
    normalize_host,
)
from .headers import (
    REGION_HEADER,
    HeaderError,
    HeliconeHeaders,
    decode_headers,
    forward_request_headers,
    forward_response_headers,
    narrow_accept_encoding,
    parse_helicone_headers,
)
from .http_server import WRITE_TIMED_OUT, error_body
from .journal import Journal
from .llm_security import (
    LLM_SECURITY,
    LLM_SECURITY_HEADER,
    THREAT_STATUS,
    classifier_input,
    classifier_request,
    classifier_url,
    not_configured,
    threat_body,
    threat_message,
)
from .llm_security import read_verdict as read_threat
from .llm_security import request_headers as classifier_headers
from .moderation import (
    FLAGGED_STATUS,
    MODERATION,
    MODERATIONS_HEADER,
    flagged_body,
    flagged_message,
    moderation_input,
    moderation_path,
    read_verdict,
    request_headers,
)
from .prompt_check import MAX_ANSWER_BYTES, PromptCheck, PromptCheckError, Verdict
from .prompts import BODY_MARK, PromptError, PromptResolver, PromptUse
from .provider_keys import HELICONE, OWN, REALTIME_KEY_PROTOCOL, VAULT_HEADERS, caller_key, origin, take_helicone_key
from .providers import TARGET_URL_HEADER, Route, Router, dot_segment, dot_segment_message, missing_base_url, upstream_url
from .publisher import EventPublisher
from .ratelimit import (
    CENTS,
    POLICY_HEADER,
    MemoryRateLimitStore,
    RateLimiter,
    RateLimitRequest,
    RedisRateLimitStore,
    rate_limit_request,
)
from .realtime import (
    CLOSE_TIMEOUT,
    GOING_AWAY,
    INTERNAL_ERROR,
    MAX_MESSAGE_BYTES,
    OpenSessions,
    RealtimeUsage,
    sent_close_code,
    upstream_headers,
    ws_session,
)
from .resilience import (
    FALLBACK_INDEX_HEADER,
    FALLBACKS,
    FallbackTarget,
    ResilienceError,
    RetryPolicy,
    merge_body,
    retry_after_seconds,
    retryable_status,
)
from .settings import GatewaySettings, env_name
from .token_limit import (
    APPLIED_PROPERTY,
    FALLBACK,
    MAX_REFUSAL_BYTES,
    TOKEN_LIMIT_HEADER,
    Fitting,
    Refusal,
    TokenLimitError,
    body_shape,
    read_refusal,
)
from .translate_anthropic import (
    ChatRequest,
    TranslationError,
    check_request,
    refused_headers,
    translate_request,
    translated_headers,
)
from .upstream import Attempt, Response, SocketFactory, UpstreamPool

log = logging.getLogger("helicone.gateway")


# Status logged when the caller left before the provider answered (nginx's "client closed request").
CLIENT_CLOSED_STATUS = 499
# Logged when the caller left while the provider's answer was awaited (the request, and a planned request's try).
CANCELLED_ERROR = "client disconnected before the provider answered; upstream request cancelled"
# A planned request's try its provider refused for its length, which Helicone-Token-Limit-Exception-Handler sent again
LENGTH_REFUSED_ERROR = f"refused for its length; sent again by {TOKEN_LIMIT_HEADER}"
# logged for a 200 stream that carries an error event (Anthropic's `event: error`, OpenAI's `data: {"error": ...}`)
STREAM_ERROR_EVENT = "provider stream ended with an error event before the response completed"
# Connection failures that, on a connection reused from the pool and before any response byte,
# mean the provider had already closed it: the request is sent once more on a new connection.
STALE_CONNECTION_ERRORS = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
ALLOWLIST_ENV = env_name("target_url_allowlist")
ALLOW_PRIVATE_ENV = env_name("target_url_allow_private")
READ_TIMEOUT_ENV = env_name("upstream_read_timeout")
VAULT_ORIGINS_ENV = env_name("vault_target_origins")
WRITE_TIMEOUT_ENV = env_name("client_write_timeout")
REALTIME_SESSIONS_ENV = env_name("realtime_sessions_per_key")
# The `provider` of requests_total and request_duration_seconds when no provider is known: answers given before the
# request is routed (431, a Helicone header's 400, 401, the 503 of an unavailable key store), and a request the
# gateway failed on. Never a provider table name (tested).
NO_PROVIDER = "none"
UNKNOWN_PROVIDER = "unknown"
# Set in the ASGI scope once its answer is counted: a failure after that is not counted again.
COUNTED = "helicone.counted"


def retryable_error(exc: BaseException) -> bool:
    """Transport failures Helicone-Retry-* sends again: the provider was not reached, or dropped the
    connection before answering. A read timeout is not: the provider may still be working on it."""
    return isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, aiohttp.SocketTimeoutError)


class ClientGone(Exception):
    """The caller disconnected before the provider answered."""


class Rejection(Exception):
    """A request the gateway answers itself (status, message, error type, extra headers)."""

    def __init__(self, status: int, message: str, kind: str, headers: tuple[tuple[bytes, bytes], ...] = (),
                 logged: str = "", body: bytes | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers
        self.logged = logged or message  # the log's error (the message, unless it quotes what the caller omits)
        self.body = body  # an answer body of its own (Helicone's shape for a flagged prompt); None: the error shape


async def send_error(send, status: int, message: str, kind: str, request_id: str,
                     always: tuple[tuple[bytes, bytes], ...], extra: tuple[tuple[bytes, bytes], ...] = (),
                     body: bytes | None = None, asgi: str = "http.response") -> None:
    """A JSON error answer; `always` are the headers every gateway answer carries (Gateway.answer_headers). `body`
    replaces the gateway's error shape (error_body) when given. `asgi`: "websocket.http.response" answers a WebSocket
    handshake with it instead of the upgrade (the denial-response extension)."""
    body = error_body(message, kind) if body is None else body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"helicone-id", request_id.encode()), *always, *extra]
    await send({"type": f"{asgi}.start", "status": status, "headers": headers})
    await send({"type": f"{asgi}.body", "body": body, "more_body": False})


def _body_too_large(limit: int) -> Rejection:
    """The 413 of a request body over HELICONE_MAX_REQUEST_BYTES (built when refused: never per request)."""
    return Rejection(413, f"request body larger than {limit} bytes (HELICONE_MAX_REQUEST_BYTES)", "request_too_large")


# Uploads (files, an upload's parts, audio, images to edit) of at least UPLOAD_STREAM_BYTES, by their Content-Length, go to
# the provider as they arrive (Upload), whatever their size: they are never held whole, so HELICONE_MAX_REQUEST_BYTES, the
# bound of what the gateway reads into memory, is not theirs. Smaller ones, and any body asking for a feature that reads
# or resends it (a prompt, the cache, retries and fallbacks), are read whole as other bodies are.
UPLOAD_MEDIA_TYPES = (FORM_DATA, "application/octet-stream")
UPLOAD_STREAM_BYTES = 1024 * 1024
UPLOAD_DIGITS = len(str(UPLOAD_STREAM_BYTES))  # a Content-Length with fewer digits is smaller: no further test


class Upload:
    """A large upload sent to the provider as it arrives (an upstream.StreamedBody): iterating it reads the caller's body,
    raising ClientGone if the caller leaves, and keeps its start for the log. Once the body is read, `disconnected`
    resolves when the caller leaves, as the watch of other requests does (not when the provider answered before the body
    was all sent: the server drops the rest after the answer)."""

    __slots__ = ("_keep", "_watch", "disconnected", "kept", "length", "parts", "receive")

    def __init__(self, receive, length: int, logged_bytes: int) -> None:
        self.receive, self.length = receive, length
        self._keep = logged_bytes + 1  # a byte past the log's limit: the log then says the body was cut (inline_bodies)
        self.parts: list[bytes] = []
        self.kept = 0
        self._watch: asyncio.Future | None = None
        self.disconnected: asyncio.Future = asyncio.get_running_loop().create_future()
        self.disconnected.add_done_callback(self._stop_watch)

    async def __aiter__(self):
        receive = self.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                if self.kept < self._keep:
                    piece = chunk[:self._keep - self.kept]
                    self.parts.append(piece)
                    self.kept += len(piece)
                yield chunk
            if not message.get("more_body", False):
                watch = self._watch = asyncio.ensure_future(receive())
                watch.add_done_callback(self._caller_left)
                return

    def start(self) -> bytes:
        """The body's first bytes, as far as the log keeps them."""
        return b"".join(self.parts)

    def _caller_left(self, watch: asyncio.Future) -> None:
        if not watch.cancelled() and not self.disconnected.done():
            self.disconnected.set_result(watch.result())

    def _stop_watch(self, _disconnected: asyncio.Future) -> None:
        if self._watch is not None:
            self._watch.cancel()


class TargetDest:
    """Where a Helicone-Target-URL request goes: the URL object the upstream pool is given (so the host
    checked is the host it connects to), its normalized host and port, and the header that named it."""

    __slots__ = ("host", "name", "port", "url")

    def __init__(self, url: URL, host: str, port: int, name: str = "Helicone-Target-URL") -> None:
        self.url, self.host, self.port, self.name = url, host, port, name


class Leg:
    """One target of a request with Helicone-Retry-* or Helicone-Fallbacks: its route, URL, checked
    destination (Target-URL traffic), and its Helicone-Fallbacks entry (headers, body, onCodes)."""

    __slots__ = ("body", "fallback", "fitting", "rt", "stored", "target", "url")

    def __init__(self, rt: Route, url: str, target: TargetDest | None, fallback: FallbackTarget | None) -> None:
        self.rt, self.url, self.target, self.fallback = rt, url, target, fallback
        self.stored: StoredKey | None = None  # its org's stored key for its provider (the vault), sent with its tries
        self.body: bytes | None = None  # the request body with bodyKeyOverride merged in; None: the body as sent
        self.fitting: Fitting | None = None  # Helicone-Token-Limit-Exception-Handler's handling of this target


class Plan:
    """The targets a request may be sent to, the retries it asked for, and every try made (logged
    as RequestLogged.attempts). Only requests with those headers have one."""

    __slots__ = ("attempts", "index", "legs", "retry")

    def __init__(self, retry: RetryPolicy | None, legs: list[Leg]) -> None:
        self.retry, self.legs = retry, legs
        self.index = 0  # the leg being tried, then the one that answered
        self.attempts: list[tuple[str, str, int, str, int, int, int]] = []

    def record(self, leg: Leg, status: int, error: str, sent: float, retry: int) -> None:
        self.attempts.append((leg.rt.base_url, leg.rt.provider, status, error,
                              int((time.perf_counter() - sent) * 1000), self.index, retry))


class PromptCall:
    """One check of the request's prompt to make before it is sent (only requests asking for one have any): the check,
    its outcome counter, the service's URL (and its checked destination, for a Helicone-Target-URL), the call's headers,
    its distinct request bodies, how an answer is read, and the answer to a blocked prompt."""

    __slots__ = ("blocked", "check", "counter", "headers", "payloads", "read", "target", "url")

    def __init__(self, check: PromptCheck, counter: Any, url: str, target: TargetDest | None, headers: list[tuple[str, str]],
                 payloads: tuple[bytes, ...], read: Callable[[int, bytes, str | None], Verdict],
                 blocked: Callable[[Verdict, str], Rejection]) -> None:
        self.check, self.counter, self.url, self.target, self.headers = check, counter, url, target, headers
        self.payloads, self.read, self.blocked = payloads, read, blocked


def _moderation_flagged(verdict: Verdict, request_id: str) -> Rejection:
    return Rejection(FLAGGED_STATUS, flagged_message(verdict), MODERATION.flagged_kind, body=flagged_body(verdict, request_id))


def _threat_detected(verdict: Verdict, request_id: str) -> Rejection:
    return Rejection(THREAT_STATUS, threat_message(verdict), LLM_SECURITY.flagged_kind, body=threat_body(verdict, request_id))


# How much of an answer's end a capture keeps past the logged body's limit: a stream's last events,
# where its usage is (OpenAI's usage chunk, Anthropic's message_delta, Gemini's last chunk), or a
# JSON answer's last members (a large embeddings batch ends with its model and usage). A Responses API
# stream's usage is in response.completed, which repeats the whole answer: past this size the tail
# starts inside that event, and the usage is read from its cut end.
TAIL_BYTES = 128 * 1024


class Capture:
    """Keeps up to `limit` bytes of a body for the log, counting the rest. An event stream or a JSON
    answer longer than that also keeps its last TAIL_BYTES, or at most 64 KiB more (decoded, when gzip
    or deflate, up to MAX_DECODED_BYTES in all): the log's body stays cut at `limit`, and the usage is
    read from the tail too, so a long answer still logs its tokens and cost."""

    __slots__ = ("limit", "parts", "size", "total", "keep_tail", "encoding", "decoder", "tail", "tail_size")

    def __init__(self, limit: int, content_type: str = "", encoding: str = "") -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.total = 0
        self.keep_tail = is_stream(content_type) or "json" in content_type
        encoding = encoding.lower().strip()
        self.encoding = "" if encoding == "identity" else encoding
        self.decoder: TailDecoder | None = None
        self.tail: deque[bytes] | None = None
        self.tail_size = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.limit - self.size
        if room > 0:
            piece = chunk[:room]
            self.parts.append(piece)
            self.size += len(piece)
            if len(piece) == len(chunk):
                return
            chunk = chunk[room:]
        if self.keep_tail:
            self._add_tail(chunk)

    def _add_tail(self, chunk: bytes) -> None:
        tail = self.tail
        if tail is None:
            tail = self.tail = deque()
            if self.encoding:  # the decoder reads the head once, then each chunk past it
                self.decoder = TailDecoder(self.data(), self.encoding)
        decoder = self.decoder
        for piece in (chunk[-TAIL_BYTES:],) if decoder is None else decoder.decode(chunk):
            tail.append(piece)
            self.tail_size += len(piece)
            while self.tail_size - len(tail[0]) >= TAIL_BYTES:
                self.tail_size -= len(tail.popleft())
        if decoder is not None and decoder.failed:  # bytes that do not decode, or too many: no usage rather than a wrong one
            self.keep_tail = False
            tail.clear()

    @property
    def truncated(self) -> bool:
        return self.total > self.size

    def data(self) -> bytes:
        return b"".join(self.parts)

    def end(self) -> bytes:
        """The kept tail of an answer longer than the limit (decoded); empty for anything else."""
        return b"".join(self.tail) if self.keep_tail and self.tail else b""


class Gateway:
    def __init__(self, settings: GatewaySettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        # added to every answer, proxied or the gateway's own: built once here, not per request
        self.answer_headers: tuple[tuple[bytes, bytes], ...] = (
            ((REGION_HEADER.lower().encode(), settings.region.encode()),) if settings.region else ()
        )
        self.costs = CostRegistry.load(settings.cost_registry_file)
        self.router = Router(settings)
        self.upstream: UpstreamPool | None = None
        self.egress = EgressPolicy(settings.target_url_allowlist, settings.target_url_allow_private)
        # opens the sockets of Helicone-Target-URL connections (pooled apart from the others)
        self.target_sockets = guarded_socket_factory(self.egress)
        self.keys = KeyDirectory(
            settings.postgres_dsn.get_secret_value(), settings.resolved_key_snapshot_file("gateway"), metrics,
            resync_interval=settings.key_resync_interval,
        )
        self.publisher = EventPublisher(
            bootstrap=settings.kafka_bootstrap,
            security=client_security(settings),
            topic=settings.kafka_topic,
            journal=Journal(settings.resolved_journal_dir(), settings.journal_max_bytes, settings.journal_segment_bytes),
            metrics=metrics,
            consumer_group=settings.consumer_group,
            queue_size=settings.publish_queue_size,
            publish_timeout=settings.publish_timeout,
            check_interval=settings.journal_check_interval,
            segment_seconds=settings.journal_segment_seconds,
            idempotent=settings.kafka_idempotent_producer,
            create_topic=settings.kafka_create_topics,
            partitions=settings.kafka_topic_partitions,
            replication_factor=settings.kafka_replication_factor,
            linger_ms=settings.kafka_linger_ms,
            journal_linger_ms=settings.journal_linger_ms,
            backlog_bytes=settings.publish_backlog_bytes,
            max_batch_bytes=settings.kafka_max_batch_bytes,
            compression=None if settings.kafka_compression == "none" else settings.kafka_compression,
        )
        redis_url = settings.redis_url.get_secret_value() if settings.redis_url else ""
        store = (RedisCacheStore(redis_url, settings.cache_store_timeout) if redis_url
                 else MemoryCacheStore(settings.cache_memory_max_bytes))
        self.cache = ResponseCache(store, settings.cache_store_timeout, settings.cache_max_entry_bytes, metrics)
        # the same store and timeout as the cache: one Redis for every replica, or each gateway's memory
        self.ratelimits = RateLimiter(RedisRateLimitStore(redis_url, settings.cache_store_timeout) if redis_url
                                      else MemoryRateLimitStore(), settings.cache_store_timeout, metrics)
        self.prompts = PromptResolver(settings, metrics)
        self.m_requests = metrics.counter(
            "helicone_gateway_requests_total", "Requests answered (provider \"none\": before routing, as a 401)",
            ("provider", "status_class")
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
        self.m_held = metrics.counter(
            "helicone_gateway_requests_held_total",
            "Requests that waited for the log backlog to get back within its memory budget, by how the wait ended",
            ("outcome",),
        )
        self.m_auth = metrics.counter(
            "helicone_gateway_auth_results_total", "Helicone-Auth outcomes", ("result",)
        )
        self.m_retries = metrics.counter(
            "helicone_gateway_upstream_retries_total", "Requests sent again after a pooled connection turned out closed", ("provider",)
        )
        self.m_retry_attempts = metrics.counter(
            "helicone_gateway_retry_attempts_total", "Tries sent again because of Helicone-Retry-*", ("provider", "cause")
        )
        self.m_fallbacks = metrics.counter(
            "helicone_gateway_fallbacks_total", "Helicone-Fallbacks targets given up for the next one (by the one given up)",
            ("provider",)
        )
        self.m_target_refused = metrics.counter(
            "helicone_gateway_target_refused_total", "Helicone-Target-URL requests refused by the egress policy", ("reason",)
        )
        self.m_moderations = metrics.counter(
            "helicone_gateway_moderations_total",
            "Helicone-Moderations-Enabled requests by outcome: passed, flagged, failed (no verdict from the endpoint: "
            "not sent), denied (the endpoint's 400/401/403/429 passed on: the caller's key or quota), refused (nothing "
            "to moderate: not OpenAI chat), skipped (the latest message is not the user's)",
            ("result",),
        )
        self.m_realtime_refused = metrics.counter(
            "helicone_gateway_realtime_sessions_refused_total",
            f"Realtime sessions refused (429): their Helicone key held {REALTIME_SESSIONS_ENV} open in this process",
        )
        self.realtime_sessions = OpenSessions(settings.realtime_sessions_per_key, metrics.gauge(
            "helicone_gateway_realtime_sessions_open", "Realtime (WebSocket) sessions open, or opening with the provider"))
        self.m_llm_security = metrics.counter(
            "helicone_gateway_llm_security_total",
            "Helicone-LLM-Security-Enabled requests by outcome: passed, flagged, failed (no verdict from the classifier: "
            "not sent), refused (nothing to check: not a chat completion, or no classifier set), skipped (the latest "
            "message is not the user's)",
            ("result",),
        )
        # the deployment's prompt classifier (HELICONE_LLM_SECURITY_URL): where it is asked, its model and the call's
        # headers, built once; None: Helicone-LLM-Security-Enabled is refused
        self.classifier: tuple[str, str, list[tuple[str, str]]] | None = None
        if settings.llm_security_url:
            key = settings.llm_security_api_key.get_secret_value() if settings.llm_security_api_key else ""
            self.classifier = (classifier_url(settings.llm_security_url), settings.llm_security_model.strip(),
                               classifier_headers(key))
        self.m_token_limit = metrics.counter(
            "helicone_gateway_token_limit_refusals_total",
            "Provider refusals of a request for its length that Helicone-Token-Limit-Exception-Handler met, by strategy "
            "and result: resent (cut, or to the next model) or gave_up (nothing more to try: the refusal is answered)",
            ("handler", "result"),
        )
        # the provider key vault (HELICONE_VAULT_KEY; helicone_core.vault, provider_keys.py): its metrics whether it is on
        # or not, and every org's stored keys, decrypted, in memory (None while it is off: nothing is ever added)
        self.m_vault_entries = metrics.gauge(
            "helicone_gateway_vault_entries", "Stored provider keys this gateway holds (the provider key vault)", merge="livemax")
        self.m_vault_live = metrics.gauge(
            "helicone_gateway_vault_live",
            "1 while stored provider key changes are followed live from Postgres; 0 while answering from the last known "
            "set, or while the vault is off", merge="livemin")
        self.m_vault_changes = metrics.counter(
            "helicone_gateway_vault_changes_total",
            "Stored provider key changes applied, by kind: added, removed, full_reload, undecryptable (a stored key left "
            "out, at each load, because no master key of this gateway decrypts it)", ("kind",))
        self.m_vault_requests = metrics.counter(
            "helicone_gateway_vault_requests_total",
            "Requests without a provider key of their own whose org stores one (each other Helicone-Fallbacks target "
            "counted apart), by what the vault did: added (the stored key sent), target_refused (not sent: a "
            "Helicone-Target-URL origin outside HELICONE_VAULT_TARGET_ORIGINS), missing (a Helicone key sent as the "
            "provider key, and none stored: a 401)", ("result",))
        keyring = settings.vault_keyring()
        self.vault: ProviderKeyDirectory | None = None if keyring is None else ProviderKeyDirectory(
            settings.postgres_dsn.get_secret_value(), keyring, VAULT_HEADERS, entries=self.m_vault_entries,
            live=self.m_vault_live, changes=self.m_vault_changes, resync_interval=settings.key_resync_interval)
        self.vault_origins = frozenset(origin(o) for o in settings.vault_target_origins)
        self._vault_added = self.m_vault_requests.labels("added")
        # the series every proxied request touches, looked up once per label values (labels() takes
        # a lock and builds a key per call)
        self._auth_ok = self.m_auth.labels("ok")
        self._ws_sessions: dict[bool, aiohttp.ClientSession] = {}  # Target-URL or not -> provider WebSocket client
        self._per_provider: dict[str, tuple] = {}  # provider -> (ttfb, duration) children
        self._requests_by: dict[tuple[str, str], Any] = {}  # (provider, status class) -> m_requests child

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        # bytes go back to the caller exactly as the provider sent them; only the caller's headers
        # are forwarded; no proxy from the environment (the egress check must see the real peer)
        self.upstream = UpstreamPool(limit=s.max_upstream_connections, connect_timeout=s.upstream_connect_timeout,
                                     read_timeout=s.upstream_read_timeout, dns_ttl=300)
        await self.publisher.start()
        await self.keys.start()
        if self.vault is not None:
            await self.vault.start()
        await self.prompts.start()

    async def stop(self) -> None:
        await self.prompts.stop()
        if self.vault is not None:
            await self.vault.stop()
        await self.keys.stop()
        await self.publisher.stop()
        await self.cache.close()
        await self.ratelimits.close()
        if self.upstream is not None:
            await self.upstream.close()
        for session in self._ws_sessions.values():
            await session.close()

    async def ready(self) -> dict[str, Check]:
        """Ready while it can authenticate and forward. Kafka and Postgres are optional: without
        Kafka events wait in the journal, without Postgres keys answer from the last known set."""
        timeout = self.settings.readiness_timeout
        optional = {"kafka": self.publisher.ping(timeout), "postgres": self.keys.ping(timeout)}
        if isinstance(self.cache.store, RedisCacheStore):  # optional too: without it requests just miss
            optional["redis"] = self.cache.store.ping()
        return await readiness(
            timeout,
            required={"http_client": self.upstream is not None and not self.upstream.closed, "key_store": self.keys.loaded},
            optional=optional,
        )

    def _provider_series(self, provider: str) -> tuple:
        """(upstream ttfb, request duration) histogram children of a provider."""
        series = self._per_provider.get(provider)
        if series is None:
            series = self._per_provider[provider] = (self.m_ttfb.labels(provider), self.m_duration.labels(provider))
        return series

    def _requests(self, provider: str, status: int):
        """The m_requests child of a provider and status class."""
        key = (provider, f"{status // 100}xx")
        child = self._requests_by.get(key)
        if child is None:
            child = self._requests_by[key] = self.m_requests.labels(*key)
        return child

    def _answered(self, scope, provider: str, started: float, status: int, status_class: str = "") -> None:
        """Counts one answer in requests_total (by its status, or `status_class` when given) and its time in
        request_duration_seconds: the one place for both, so the histogram's count is the requests' count."""
        scope[COUNTED] = True
        (self.m_requests.labels(provider, status_class) if status_class else self._requests(provider, status)).inc()
        self._provider_series(provider)[1].observe(time.perf_counter() - started)

    # ---- auth ------------------------------------------------------------------------
    def org_for(self, key: str) -> str:
        """The org of a known Helicone key; raises Rejection otherwise. Fails closed: without a
        loaded key set (Postgres never reached and no snapshot) every request gets a 503."""
        if not key:
            self.m_auth.labels("missing").inc()
            raise Rejection(401, "Missing Helicone-Auth header: send 'Helicone-Auth: Bearer <your Helicone API key>'",
                            "helicone_auth_error")
        try:
            org = self.keys.lookup(key)
        except KeyStoreUnavailable:
            self.m_auth.labels("store_unavailable").inc()
            raise Rejection(503, "Helicone key store unavailable; try again shortly", "helicone_auth_unavailable",
                            ((b"retry-after", b"5"),)) from None
        if org is None:
            self.m_auth.labels("invalid").inc()
            raise Rejection(401, "Invalid or revoked Helicone API key", "helicone_auth_error")
        self._auth_ok.inc()
        return org

    # ---- the provider key vault (only a gateway with HELICONE_VAULT_KEY) ----------------------------------------
    def _stored_key(self, org_id: str, rt: Route, raw_headers: list[tuple[str, str]], header_map: dict[str, str],
                    query: bytes, wanted: bool) -> tuple[list[tuple[str, str]], dict[str, str], StoredKey | None]:
        """(the request's headers, its header map, the org's stored key that goes with it or None). The caller's own key
        for rt's provider wins (None); a Helicone key where that key goes is taken out of the headers (never forwarded)
        and asks for the stored key, as `wanted` does: then no stored key is a Rejection (401, or 403 for a Target-URL
        origin the operator has not listed) rather than a request sent without any."""
        held = caller_key(rt.provider, header_map, query)
        if held == OWN:
            return raw_headers, header_map, None
        # with Helicone-Auth too (else it was taken out before auth): a Helicone key in any provider's key header
        # (x-api-key to OpenAI) is never forwarded; in this provider's own, it asks for the stored key
        _, kept = take_helicone_key(raw_headers)
        if kept is not raw_headers:
            raw_headers, header_map, wanted = kept, dict(kept), wanted or held == HELICONE
            if held == HELICONE and caller_key(rt.provider, header_map, query) == OWN:
                return raw_headers, header_map, None
        stored, refused = self._vault_key(org_id, rt)
        if stored is None and wanted:
            p = PROVIDER_TABLE[rt.provider]
            if refused:
                raise Rejection(403, f"your org's stored {p.label} key is never sent to {TARGET_URL_HEADER} {refused}: the "
                                f"gateway's operator lists the origins it may go to in {VAULT_ORIGINS_ENV}; send your own "
                                "provider key there", "helicone_vault_refused")
            self.m_vault_requests.labels("missing").inc()
            raise Rejection(401, f"your Helicone key was sent where the {p.label} key goes, and your org stores no key for "
                            f"provider {rt.provider!r}: store one (POST /v1/provider-keys on the api), or send the "
                            f"provider's own key ({p.key[0]})", "helicone_vault_error")
        return raw_headers, header_map, stored

    def _vault_key(self, org_id: str, rt: Route, count: bool = True) -> tuple[StoredKey | None, str]:
        """(the org's stored key for rt's provider, "") when it may go where rt goes; (None, the Target-URL origin) when
        it may not; (None, "") when there is none. `count`: in helicone_gateway_vault_requests_total."""
        stored = self.vault.key_for(org_id, rt.provider)  # type: ignore[union-attr]
        if stored is None:
            return None, ""
        if rt.target:  # a host of the caller's choosing: only an origin the operator listed
            where = origin(rt.base_url)
            if where not in self.vault_origins:
                if count:
                    self.m_vault_requests.labels("target_refused").inc()
                return None, where
        if count:
            self._vault_added.inc()
        return stored, ""

    def _stored_keys_of(self, org_id: str, rt: Route, plan: Plan, header_map: dict[str, str], query: bytes) -> None:
        """Each target of a plan its own provider's stored key, where the request (or the target's "headers") carries
        none of its own for that provider: never another provider's, nor one for a Target-URL origin not listed. A
        target other than the request's own route (rt, counted already) is counted apart."""
        for leg in plan.legs:
            fb = leg.fallback
            headers = header_map if fb is None or not fb.headers else {**header_map, **dict(fb.headers)}
            if caller_key(leg.rt.provider, headers, query) != OWN:
                other = (leg.rt.provider, leg.rt.base_url) != (rt.provider, rt.base_url)
                leg.stored = self._vault_key(org_id, leg.rt, count=other)[0]

    # ---- proxy (raw ASGI: this is the hot path) ---------------------------------------
    async def handle(self, scope, receive, send, started: float = 0.0) -> None:
        started = started or time.perf_counter()  # GatewayApp passes the time it took, for a failure's count
        started_at = time.time_ns()  # wall clock, for the log (a datetime is made off the request path)
        request_id = events.new_request_id()  # every response carries one, errors included
        # Like every answer before auth, a 431 is not logged: who sent it is unknown.
        too_large = header_limit_error(scope, self.settings.max_header_count, self.settings.max_header_bytes)
        if too_large is not None:
            self._answered(scope, NO_PROVIDER, started, HEADERS_TOO_LARGE_STATUS)
            return await send_error(send, HEADERS_TOO_LARGE_STATUS, too_large, HEADERS_TOO_LARGE_TYPE, request_id,
                                    self.answer_headers)
        try:
            raw_headers = decode_headers(scope["headers"])
            hh = parse_helicone_headers(raw_headers)
            directive: CacheDirective | None = None
            if hh.cache is not None:  # only requests that name the cache pay for it
                # every Cache-Control line: several lines are one comma-separated list (RFC 9110 5.3)
                directive = cache_directive(hh.cache, ", ".join(v for n, v in raw_headers if n == "cache-control"))
                if not (directive.read or directive.save):
                    directive = None
            rate_limit: RateLimitRequest | None = None
            if hh.rate_limit_policy is not None:  # only requests naming a policy pay for it
                rate_limit = rate_limit_request(hh.rate_limit_policy, hh)
        except HeaderError as exc:
            self._answered(scope, NO_PROVIDER, started, 400)
            return await send_error(send, 400, str(exc), "helicone_header_error", request_id, self.answer_headers)
        request_id = hh.request_id or request_id
        wanted = False  # the caller sent its Helicone key where the provider key goes: it asks for its org's stored key
        if not hh.auth_key and self.vault is not None:  # (a 401 without the vault: no cost to requests with Helicone-Auth)
            hh.auth_key, raw_headers = take_helicone_key(raw_headers)
            wanted = bool(hh.auth_key)
        try:
            org_id = self.org_for(hh.auth_key)
        except Rejection as r:
            self._answered(scope, NO_PROVIDER, started, r.status)
            return await send_error(send, r.status, r.message, r.kind, request_id, self.answer_headers, r.headers)
        if self.publisher.backlogged:
            # the log backlog is over its memory budget: wait for room, before the body is read
            # (it stays in the socket), at most publish_backlog_wait; then go on regardless
            room = await self.publisher.room(self.settings.publish_backlog_wait)
            self.m_held.labels("room" if room else "timeout").inc()
        method = scope["method"]
        # raw_path keeps percent-encoding as the caller sent it (e.g. ids containing %2F)
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        header_map = dict(raw_headers)
        req_ctype = header_map.get("content-type", "")
        rt = Route(provider=UNKNOWN_PROVIDER, base_url="", path=path)
        body = b""
        query = scope.get("query_string") or b""
        target: TargetDest | None = None
        prompt: PromptUse | None = None
        limit_headers: tuple[tuple[bytes, bytes], ...] = ()
        plan: Plan | None = None
        upload: Upload | None = None
        fitting: Fitting | None = None
        chat: ChatRequest | None = None  # an OpenAI chat completion translated to Anthropic (/ai/...)
        stored: StoredKey | None = None  # the org's stored key for rt's provider (the vault), when it goes with the request
        try:
            rt = self.router.route(path, header_map, hh.target_url)
            if dot_segment(rt.path):  # sent as is, the provider would resolve it: out of the base path, maybe
                raise Rejection(400, dot_segment_message(rt.path), "helicone_route_error")
            if rt.openai_chat:  # what cannot be translated is refused before the body is read
                self._check_openai_chat(method, rt, hh)
            if not rt.base_url:
                raise Rejection(400, missing_base_url(rt.provider, rt.path), "helicone_route_error")
            path_and_query = rt.path + ("?" + query.decode("latin-1") if query else "")
            url = rt.base_url + path_and_query
            if rt.target:
                target = self._target(url)  # refused before the body is read
            if self.vault is not None:  # only a gateway with a vault: the caller's own key costs one dict lookup
                raw_headers, header_map, stored = self._stored_key(org_id, rt, raw_headers, header_map, query, wanted)
            if hh.retry is not None or hh.fallbacks is not None:  # only requests asking for them pay for a plan
                plan = self._plan(hh, rt, url, target, path_and_query)
                if self.vault is not None:
                    self._stored_keys_of(org_id, rt, plan, header_map, query)
            checks: list[PromptCall] | None = None
            declared = header_map.get("content-length")
            # a large upload, sent to nobody else and read for nothing but the log: streamed, never held whole
            # (not one whose prompt is checked: its body is read, and refused, never sent unchecked)
            if (declared is not None and len(declared) >= UPLOAD_DIGITS and plan is None and directive is None
                    and hh.prompt is None and not hh.prompt_checked and hh.token_limit is None
                    and req_ctype.lower().startswith(UPLOAD_MEDIA_TYPES)
                    and declared.isdigit() and int(declared) >= UPLOAD_STREAM_BYTES and not rt.openai_chat):
                upload = Upload(receive, int(declared), self.settings.max_logged_body_bytes)
            else:
                body = await self._read_body(receive, declared)
                # only requests naming a prompt pay for it: a header, or the body form's field name
                if hh.prompt is not None or (method == "POST" and BODY_MARK in body):
                    body, prompt = await self._render_prompt(hh, org_id, rt, body)
                if rt.openai_chat:  # from here on the body is the Messages request Anthropic gets (and the log keeps)
                    body, chat = self._openai_chat(hh, body)
                # only requests naming the header (or a u=cents policy) pay for the JSON round trip, and only where the
                # provider's API takes stream_options (the provider table): Mistral refuses it, Anthropic streams carry usage
                wants_usage = (hh.stream_usage or _cents_need_usage(hh, rt, rate_limit)) and method == "POST"
                rendered = body
                if wants_usage and rt.takes_stream_options():
                    body = with_stream_usage(body)  # Content-Length is recomputed from it (forward_request_headers)
                if plan is not None:
                    self._plan_bodies(plan, rendered, body, wants_usage)
                if hh.prompt_checked:  # only requests asking for a check of their prompt pay for reading its messages
                    checks = self._prompt_checks(hh, rt, method, rendered, plan, _with(raw_headers, stored))
                if hh.token_limit is not None:  # only requests asking for it pay for reading the body's messages
                    fitting = self._fittings(hh, rt, method, body, plan)
            # after the caller's own errors (prompt, body override) so they spend no token; before the cache read
            if rate_limit is not None:
                decision = await self.ratelimits.check(org_id, rate_limit)
                limit_headers = decision.headers
                if not decision.allowed:
                    raise Rejection(429, f"Rate limit reached for {rate_limit.policy.text!r} (Helicone-RateLimit-Policy); "
                                    f"retry in {decision.retry_after} s", "helicone_rate_limited",
                                    ((b"retry-after", str(decision.retry_after).encode()),))
            # after the rate limit (a limited request makes no upstream call); before the cache read (a cached answer
            # to a prompt a check would block is never served around it)
            if checks is not None:
                for call in checks:
                    await self._check_prompt(rt, call, request_id)
        except ClientGone:
            self._answered(scope, rt.provider, started, CLIENT_CLOSED_STATUS, "client_closed")
            return self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                             CLIENT_CLOSED_STATUS, "", b"", "", False, -1, error="client disconnected while sending the request")
        except Rejection as r:
            self._answered(scope, rt.provider, started, r.status)
            self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                      r.status, "", b"", "", False, -1, error=r.logged, prompt=prompt)
            return await send_error(send, r.status, r.message, r.kind, request_id, self.answer_headers,
                                    (*r.headers, *limit_headers), r.body)

        lookup: Lookup | None = None
        if directive is not None:
            # keyed on the body as rendered: renders of one prompt version with the same inputs share an
            # entry, and a newly promoted version renders differently, so it never gets the old answer
            dest = f"{rt.provider} {rt.base_url}"
            if hh.fallbacks is not None:  # a chain may answer from another target, body or key: entries of its own
                dest += " " + header_map[FALLBACKS.lower()]
            if hh.token_limit is not None:  # its answer may be to a cut body or another model: never one without it
                dest += f" {TOKEN_LIMIT_HEADER}={hh.token_limit}"
            # an answer got with a stored key is kept under that key's id: never replayed once it is replaced or deleted
            used = (stored,) if plan is None else (stored, *(leg.stored for leg in plan.legs))
            credential = provider_key(header_map) + "".join(f"\nvault:{k.id}" for k in used if k is not None)
            key = await cache_key(org_id, dest, method,
                                  path_and_query,
                                  narrow_accept_encoding(header_map.get("accept-encoding", "")).lower(),
                                  body if chat is None else chat.source, directive, credential)
            lookup = await self.cache.lookup(key, directive)
            if lookup.hit is not None:
                return await self._serve_cached(scope, receive, send, lookup, org_id, request_id, hh, rt, method, body, req_ctype,
                                                started, started_at, prompt, limit_headers, chat)

        # after the request body, receive() only ever reports the caller going away (an upload's watch starts after it)
        disconnected = asyncio.ensure_future(receive()) if upload is None else upload.disconnected
        # a cut body is checked as the request was, before it is sent (the cut joins text never checked together)
        recheck = (self._recheck(hh, rt, method, _with(raw_headers, stored), request_id) if hh.prompt_checked and hh.token_limit
                   else None)
        forwarded = forward_request_headers(raw_headers)
        if stored is not None and plan is None:  # a plan's targets each get their own provider's (_send_planned)
            forwarded.append(stored.header)
        if chat is not None:
            forwarded = chat.upstream_headers(forwarded)
        try:
            if plan is None:
                try:
                    if fitting is None:
                        upstream = await self._send_upstream(rt, method, url, forwarded,
                                                             body if upload is None else upload, disconnected, target)
                    else:
                        upstream = await self._send_fitting(fitting, rt, method, url, forwarded,
                                                            disconnected, target, recheck)
                finally:
                    if upload is not None:
                        body = upload.start()  # what the log keeps of it
                    elif fitting is not None:
                        body = fitting.sent  # logged as the provider got it (cut, or its model chosen)
            else:
                upstream = await self._send_planned(plan, method, forwarded, body, disconnected, recheck)
                served = plan.legs[plan.index]
                rt, body = served.rt, body if served.body is None else served.body  # logged as the answering target got it
        except Rejection as r:  # every address of the Target-URL host was refused at connect time; a cut body flagged
            disconnected.cancel()
            self._answered(scope, rt.provider, started, r.status)
            self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                      r.status, "", b"", "", False, -1, error=r.logged, prompt=prompt, plan=plan,
                      applied=_applied(fitting, plan))
            return await send_error(send, r.status, r.message, r.kind, request_id, self.answer_headers,
                                    (*r.headers, *limit_headers), r.body)
        except ClientGone:
            if plan is not None:
                rt = plan.legs[plan.index].rt
            self._answered(scope, rt.provider, started, CLIENT_CLOSED_STATUS, "client_closed")
            return self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                             CLIENT_CLOSED_STATUS, "", b"", "", False, -1,
                             error=CANCELLED_ERROR, prompt=prompt,
                             plan=plan, applied=_applied(fitting, plan))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            disconnected.cancel()
            if plan is not None:
                rt = plan.legs[plan.index].rt
            timed_out = isinstance(exc, TimeoutError)
            kind = "timeout" if timed_out else exc.__class__.__name__
            status = 504 if timed_out else 502
            self.m_upstream_errors.labels(rt.provider, kind).inc()
            self._answered(scope, rt.provider, started, status)
            self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                      status, "", b"", "", False, -1, error=f"{kind}: upstream request failed", prompt=prompt, plan=plan,
                      applied=_applied(fitting, plan))
            return await send_error(send, status, f"Gateway could not reach the provider ({kind})",
                                    "gateway_upstream_timeout" if timed_out else "gateway_upstream_error", request_id,
                                    self.answer_headers, (*limit_headers, *self._fallback_index(hh, plan)))

        to_headers = time.perf_counter() - started  # observed once the head is on its way (below)
        status = upstream.status
        resp_ctype = upstream.headers.get("content-type", "")
        resp_encoding = upstream.headers.get("content-encoding", "")
        resp_headers = forward_response_headers(upstream.raw_headers)
        recorder: BodyRecorder | None = None
        if lookup is not None:
            if lookup.slot >= 0 and 200 <= status < 300:  # only successful answers are stored
                recorder = BodyRecorder(self.cache.max_entry_bytes)
                cached_headers = [(n, v) for n, v in resp_headers if n not in NOT_REPLAYED]
                # replayed with the answer: a HIT names the target that gave it, as its MISS did
                cached_headers.extend(self._fallback_index(hh, plan))
            resp_headers.append((STATUS_HEADER, MISS))
            if lookup.slot >= 0:
                resp_headers.append((BUCKET_IDX_HEADER, str(lookup.slot).encode()))
        answer = None  # the translation of Anthropic's answer (the cache and the log keep the answer as it came)
        if chat is not None:
            answer = chat.answer(status, resp_ctype, resp_encoding)
            resp_headers = translated_headers(resp_headers, status)
        resp_headers.append((b"helicone-id", request_id.encode()))
        resp_headers.extend(self.answer_headers)
        resp_headers.extend(limit_headers)
        if hh.fallbacks is not None:
            resp_headers.extend(self._fallback_index(hh, plan))
        capture = Capture(self.settings.max_logged_body_bytes, resp_ctype, resp_encoding)
        # a caller that leaves mid-stream closes the provider's response at once, even while the
        # provider is silent (the read below would otherwise wait for its next byte)
        def close_upstream(_f: asyncio.Future) -> None:
            upstream.close()

        disconnected.add_done_callback(close_upstream)
        first_chunk_at = -1.0
        completed = read_timed_out = False
        try:
            await send({"type": "http.response.start", "status": status, "headers": resp_headers})
            # in the next turn of the loop: after the first body bytes are written, long before a stream ends
            asyncio.get_running_loop().call_soon(self._provider_series(rt.provider)[0].observe, to_headers)
            async for chunk in upstream.content.iter_any():
                if first_chunk_at < 0:
                    first_chunk_at = time.perf_counter()
                capture.add(chunk)
                if recorder is not None:
                    recorder.add(chunk)
                out = chunk if answer is None else answer.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if disconnected.done():
                    break
            else:
                if not disconnected.done():
                    if answer is not None and (out := answer.end()):
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    completed = True
        except (TimeoutError, aiohttp.ClientError) as exc:
            # the provider's stream broke mid-way (or was closed because the caller left)
            if not disconnected.done():
                read_timed_out = isinstance(exc, TimeoutError)  # upstream_read_timeout between chunks
                self.m_upstream_errors.labels(rt.provider, "stream_" + exc.__class__.__name__).inc()
        finally:
            caller_left = disconnected.done() and not completed
            write_timed_out = caller_left and self._write_timed_out(disconnected)
            disconnected.remove_done_callback(close_upstream)
            disconnected.cancel()
            # a connection that answered 5xx or did not finish cleanly is not reused
            if completed and status < 500:
                upstream.release()
            else:
                upstream.close()
            # checked there (storable): an answer cut short or given up on would be replayed for the whole TTL
            if completed and recorder is not None and recorder.chunks is not None:
                self.cache.save(lookup, CachedResponse(status, cached_headers, recorder.chunks), directive.ttl,
                                rt.usage, resp_ctype, resp_encoding)
            self._answered(scope, rt.provider, started, status, "client_write_timeout" if write_timed_out else "")
            ttft_ms = int((first_chunk_at - started) * 1000) if first_chunk_at >= 0 else -1
            if completed:
                error = ""
            elif write_timed_out:
                error = self._write_timeout_error() + " and the upstream response closed"
            elif caller_left:
                error = "client disconnected before the response completed; upstream response closed"
            elif read_timed_out:
                error = (f"timeout: the provider sent nothing for {self.settings.upstream_read_timeout:g} s mid-stream "
                         f"({READ_TIMEOUT_ENV}); the response was cut short")
            else:
                error = "provider stream broke before the response completed"
            self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at,
                      status, resp_encoding, capture.data(), resp_ctype, capture.truncated, ttft_ms, error=error, prompt=prompt,
                      rate_limit=rate_limit, plan=plan, resp_tail=capture.end(),
                      applied=_applied(fitting, plan) if hh.token_limit else "")

    # ---- WebSockets (the Realtime API): only connections that asked for the upgrade come here ----
    async def relay_websocket(self, scope, receive, send) -> None:
        """A WebSocket relayed to the provider: Helicone-Auth checked before anything goes upstream (fails closed), the
        route and the Target-URL egress check as for HTTP, the caller's key and subprotocols sent on; then every message
        both ways as it came, pings answered on each side, a close (its code and reason) passed on. A handshake the
        provider refuses is answered with its status; a key already holding realtime_sessions_per_key sessions in this
        process is refused one more (429). Logged once when the session ends (RequestLogged: status 101, the
        session's length, the usage of its response.done events summed); no bodies are kept. A handshake RFC 6455
        refuses (Sec-WebSocket-Key, -Version) never comes here: the server answers it (http_server.handshake_refusal)."""
        started, started_at = time.perf_counter(), time.time_ns()
        request_id = events.new_request_id()
        await receive()  # websocket.connect
        try:
            too_large = header_limit_error(scope, self.settings.max_header_count, self.settings.max_header_bytes)
            if too_large is not None:
                raise Rejection(HEADERS_TOO_LARGE_STATUS, too_large, HEADERS_TOO_LARGE_TYPE)
            raw_headers = decode_headers(scope["headers"])
            try:
                hh = parse_helicone_headers(raw_headers)
            except HeaderError as exc:
                raise Rejection(400, str(exc), "helicone_header_error") from None
            request_id = hh.request_id or request_id
            wanted = False  # as for HTTP (handle): a Helicone key where the provider key goes
            if not hh.auth_key and self.vault is not None:
                hh.auth_key, raw_headers = take_helicone_key(raw_headers)
                wanted = bool(hh.auth_key)
            org_id = self.org_for(hh.auth_key)
            # checks a WebSocket session cannot have: refused, never a session that goes unchecked or unlimited
            unchecked = [h for h, on in ((LLM_SECURITY_HEADER, hh.llm_security), (MODERATIONS_HEADER, hh.moderations),
                                         (POLICY_HEADER, hh.rate_limit_policy is not None),
                                         (TOKEN_LIMIT_HEADER, hh.token_limit is not None)) if on]
            if unchecked:
                raise Rejection(400, f"{unchecked[0]} applies to HTTP requests only: a WebSocket session's messages are "
                                "neither checked, moderated, rate limited nor cut to fit; remove the header to open the "
                                "session without it", "helicone_header_error")
        except Rejection as r:
            self._answered(scope, NO_PROVIDER, started, r.status)
            return await self._deny_websocket(send, r, request_id)
        path = scope["raw_path"].decode("latin-1")
        query = scope.get("query_string") or b""
        rt = Route(provider=UNKNOWN_PROVIDER, base_url="", path=path)
        model = ""
        for name, value in URL.build(query=query.decode("latin-1")).query.items():
            if name in ("model", "deployment") and not model:  # OpenAI's query parameter, Azure's deployment
                model = value
        try:
            rt = self.router.route(path, dict(raw_headers), hh.target_url)
            if dot_segment(rt.path):
                raise Rejection(400, dot_segment_message(rt.path), "helicone_route_error")
            if rt.openai_chat:  # a translated chat completion is an HTTP POST: refused (404 or 405)
                self._check_openai_chat("GET", rt, hh)
            if not rt.base_url:
                raise Rejection(400, missing_base_url(rt.provider, rt.path), "helicone_route_error")
            url = rt.base_url + rt.path + ("?" + query.decode("latin-1") if query else "")
            target = self._target(url) if rt.target else None
            stored = None
            # a browser's key in a subprotocol (openai-insecure-api-key.<key>) is the caller's own
            if self.vault is not None and not any(p.startswith(REALTIME_KEY_PROTOCOL) for p in scope.get("subprotocols") or ()):
                raw_headers, _, stored = self._stored_key(org_id, rt, raw_headers, dict(raw_headers), query, wanted)
            # after the caller's own errors, before anything goes upstream: a refused session costs the provider nothing
            if not self.realtime_sessions.take(hh.auth_key):
                self.m_realtime_refused.inc()
                limit = self.settings.realtime_sessions_per_key
                raise Rejection(429, f"This Helicone API key already has {limit} Realtime sessions open on this gateway process "
                                f"({REALTIME_SESSIONS_ENV}); close one before opening another", "helicone_session_limit")
        except Rejection as r:
            return await self._refuse_session(scope, send, r, org_id, request_id, hh, rt, model, started, started_at)
        try:  # the one place the session is given back, however it ends
            await self._relay_session(scope, receive, send, org_id, request_id, hh, rt, model, started, started_at,
                                      url, target, _with(raw_headers, stored))
        finally:
            self.realtime_sessions.release(hh.auth_key)

    async def _refuse_session(self, scope, send, r: Rejection, org_id: str, request_id: str, hh: HeliconeHeaders,
                              rt: Route, model: str, started: float, started_at: int) -> None:
        """A session refused after Helicone-Auth: answered as an HTTP request would be, and logged."""
        self._answered(scope, rt.provider, started, r.status)
        self._log_session(org_id, request_id, hh, rt, model, started, started_at, r.status, RealtimeUsage(), -1, r.logged)
        await self._deny_websocket(send, r, request_id)

    async def _relay_session(self, scope, receive, send, org_id: str, request_id: str, hh: HeliconeHeaders, rt: Route,
                             model: str, started: float, started_at: int, url: str, target: TargetDest | None,
                             raw_headers: list[tuple[str, str]]) -> None:
        """The provider's WebSocket opened (a refused handshake answered and logged), then the session relayed."""
        try:
            ws = await self._connect_websocket(url, target, upstream_headers(raw_headers), scope.get("subprotocols") or ())
        except Rejection as r:
            return await self._refuse_session(scope, send, r, org_id, request_id, hh, rt, model, started, started_at)
        headers = [(b"helicone-id", request_id.encode()), *self.answer_headers]
        await send({"type": "websocket.accept", "subprotocol": ws.protocol, "headers": headers})
        self._answered(scope, rt.provider, started, 101)  # its duration: the handshake's (a session's length is logged)
        usage, first_at, error = RealtimeUsage(), -1.0, ""
        write_timeout = self.settings.client_write_timeout

        async def caller_to_provider() -> None:
            nonlocal error
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    await ws.close(code=sent_close_code(message.get("code"), GOING_AWAY))
                    return
                text = message.get("text")
                try:
                    async with asyncio.timeout(write_timeout):  # a provider that reads none would hold the session for ever
                        if text is not None:
                            await ws.send_str(text)
                        else:
                            await ws.send_bytes(message.get("bytes") or b"")
                except TimeoutError:
                    error = f"the provider took none of the caller's messages for {write_timeout:g} s"
                    await send({"type": "websocket.close", "code": INTERNAL_ERROR, "reason": "provider not reading"})
                    await ws.close(code=INTERNAL_ERROR)
                    return

        pump = asyncio.ensure_future(caller_to_provider())
        kind = None
        try:
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is aiohttp.WSMsgType.TEXT:
                    if first_at < 0:
                        first_at = time.perf_counter()
                    usage.read(msg.data)
                    await send({"type": "websocket.send", "text": msg.data})
                elif kind is aiohttp.WSMsgType.BINARY:
                    if first_at < 0:
                        first_at = time.perf_counter()
                    await send({"type": "websocket.send", "bytes": msg.data})
                else:  # CLOSE (the provider's, answered by aiohttp), CLOSING (the caller's, under way), CLOSED, ERROR
                    break
            if not pump.done() and kind is not aiohttp.WSMsgType.CLOSING:  # the provider ended the session: the caller
                # gets its close code and reason (CLOSING: the caller's close, under way, ended the loop)
                if kind is aiohttp.WSMsgType.CLOSE:
                    code, reason = sent_close_code(msg.data, INTERNAL_ERROR), msg.extra or ""
                else:
                    code, reason = INTERNAL_ERROR, "provider connection lost"
                    error = f"provider WebSocket connection lost ({msg.data.__class__.__name__ if msg.data else 'closed'})"
                await send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        except (aiohttp.ClientError, OSError) as exc:  # the provider's side broke while a message went to it
            error = f"provider WebSocket failed: {exc.__class__.__name__}"
            await send({"type": "websocket.close", "code": INTERNAL_ERROR, "reason": "provider connection lost"})
        finally:
            if not pump.done() and kind is not aiohttp.WSMsgType.CLOSING:  # CLOSING: the caller's close is under way
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                await pump
            if not ws.closed:
                await ws.close()
            ttft_ms = int((first_at - started) * 1000) if first_at >= 0 else -1
            self._log_session(org_id, request_id, hh, rt, model, started, started_at, 101, usage, ttft_ms, error)

    async def _connect_websocket(self, url: str, target: TargetDest | None, headers: list[tuple[str, str]],
                                 subprotocols) -> aiohttp.ClientWebSocketResponse:
        """The provider's WebSocket; Rejection with the provider's status when it refused the upgrade, 502/504 when it
        could not be reached, 403 when the egress policy refused every address of a Target-URL host."""
        session = self._ws_sessions.get(target is not None)
        if session is None:
            session = self._ws_sessions[target is not None] = ws_session(self.target_sockets if target is not None else None)
        s = self.settings
        connecting = token = None
        if target is not None:
            connecting = TargetConnect(target.host, target.port)
            token = CONNECTING.set(connecting)
        try:
            async with asyncio.timeout(s.upstream_connect_timeout + s.upstream_read_timeout):
                return await session.ws_connect(
                    target.url if target is not None else upstream_url(url), headers=headers, protocols=subprotocols,
                    autoping=True, autoclose=True, max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT))
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status if exc.status >= 400 else 502
            raise Rejection(status, f"the provider answered the WebSocket handshake with {exc.status} "
                            f"({exc.message}); the session was not opened", "upstream_error") from None
        except TimeoutError:
            raise Rejection(504, "timeout: the provider did not complete the WebSocket handshake", "upstream_timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            if connecting is not None and connecting.refused and not connecting.opened:
                raise self._target_refused(connecting.refused, target.host, target.port, literal=False,  # type: ignore[union-attr]
                                           name=target.name) from None  # type: ignore[union-attr]
            raise Rejection(502, f"the provider's WebSocket could not be reached ({exc.__class__.__name__})",
                            "upstream_error") from None
        finally:
            if token is not None:
                CONNECTING.reset(token)

    async def _deny_websocket(self, send, r: Rejection, request_id: str) -> None:
        """An HTTP answer instead of the upgrade (the gateway's error shape), as an HTTP request would get it."""
        await send_error(send, r.status, r.message, r.kind, request_id, self.answer_headers, r.headers, r.body,
                         asgi="websocket.http.response")

    def _log_session(self, org_id: str, request_id: str, hh: HeliconeHeaders, rt: Route, model: str, started: float,
                     started_at: int, status: int, usage: RealtimeUsage, ttft_ms: int, error: str) -> None:
        """The session as one logged request (_log's event, without bodies): its length as the latency, its summed usage
        priced by the registry."""
        self._log(org_id, request_id, hh, rt, "GET", b"", "", started, started_at, status, "", b"", "", False, ttft_ms,
                  error=error, read=Parsed(model=model, tokens=usage.tokens, known=usage.known), streamed=True)

    @staticmethod
    def _write_timed_out(disconnected: asyncio.Future) -> bool:
        """The server cut the caller: it took none of its answer for client_write_timeout."""
        return disconnected.done() and not disconnected.cancelled() and disconnected.result() is WRITE_TIMED_OUT

    def _write_timeout_error(self) -> str:
        return (f"timeout: the caller read none of the response for {self.settings.client_write_timeout:g} s "
                f"({WRITE_TIMEOUT_ENV}); its connection was cut")

    async def _serve_cached(self, scope, receive, send, lookup: Lookup, org_id: str, request_id: str, hh: HeliconeHeaders,
                            rt: Route, method: str, body: bytes, req_ctype: str, started: float, started_at: int,
                            prompt: PromptUse | None, limit_headers: tuple[tuple[bytes, bytes], ...],
                            chat: ChatRequest | None = None) -> None:
        """Replays a cached answer: the stored status, headers and body chunks (a stream stays a stream); translated
        for an OpenAI request to Anthropic (`chat`: the cache holds Anthropic's answer as it came)."""
        entry = lookup.hit
        assert entry is not None
        headers = replay_headers(entry)
        stored = dict(entry.headers)
        encoding = stored.get(b"content-encoding", b"").decode("latin-1")
        ctype = stored.get(b"content-type", b"").decode("latin-1")
        answer = None
        if chat is not None:
            answer = chat.answer(entry.status, ctype, encoding)
            headers = translated_headers(headers, entry.status)
        headers += [(STATUS_HEADER, HIT), (BUCKET_IDX_HEADER, str(lookup.slot).encode()),
                    (b"helicone-id", request_id.encode()), *self.answer_headers, *limit_headers]
        first_chunk_at = -1.0
        gone = asyncio.ensure_future(receive())  # after the request body, receive() only reports the caller going away
        error = ""
        await send({"type": "http.response.start", "status": entry.status, "headers": headers})
        for chunk in entry.chunks:
            if first_chunk_at < 0:
                first_chunk_at = time.perf_counter()
            out = chunk if answer is None else answer.feed(chunk)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if gone.done():
                error = (self._write_timeout_error() if self._write_timed_out(gone)
                         else "client disconnected before the response completed")
                break
        else:
            if answer is not None and (out := answer.end()):
                await send({"type": "http.response.body", "body": out, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        gone.cancel()
        self._answered(scope, rt.provider, started, entry.status,
                       "client_write_timeout" if error and self._write_timed_out(gone) else "")
        capture = Capture(self.settings.max_logged_body_bytes, ctype, encoding)
        for chunk in entry.chunks:
            capture.add(chunk)
        ttft_ms = int((first_chunk_at - started) * 1000) if first_chunk_at >= 0 else -1
        self._log(org_id, request_id, hh, rt, method, body, req_ctype, started, started_at, entry.status, encoding,
                  capture.data(), ctype, capture.truncated, ttft_ms, error=error, prompt=prompt, cache_hit=True,
                  resp_tail=capture.end())

    def _target(self, url: str, name: str = "Helicone-Target-URL") -> TargetDest:
        """The checked destination of a Target-URL request (or of a Helicone-Fallbacks target: `name`
        says which header named it); raises Rejection (403) if the egress policy refuses its host and
        port, or its address when the host is an IP literal."""
        try:
            parsed = upstream_url(url)  # the same object is handed to the upstream pool: no second reading of the host
            if not parsed.raw_host:
                raise ValueError("no host")
        except ValueError as exc:
            raise Rejection(400, f"{name} plus the request path is not a valid URL ({exc})",
                            "helicone_header_error") from None
        host = normalize_host(parsed.raw_host)
        port = parsed.port or 0
        reason = self.egress.refusal(host, port)
        if reason:
            raise self._target_refused(reason, host, port, literal=True, name=name)
        return TargetDest(parsed, host, port, name)

    def _target_refused(self, reason: str, host: str, port: int, literal: bool, name: str = "Helicone-Target-URL") -> Rejection:
        self.m_target_refused.labels(reason).inc()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if reason == NOT_ALLOWLISTED:
            message = f"{name} {where} is not in this gateway's {ALLOWLIST_ENV}"
        else:
            message = (f"{name} {where} is refused: it {'is' if literal else 'resolves to'} {REASONS[reason]}. "
                       f"The gateway's operator can open this host with {ALLOWLIST_ENV} (host or host:port entries)")
            if reason in OPENED_BY_ALLOW_PRIVATE:
                message += f", or all private ranges with {ALLOW_PRIVATE_ENV}=true"
        return Rejection(403, message, "helicone_target_refused")

    async def _send_upstream(self, rt: Route, method: str, url: str, headers: list[tuple[str, str]], body: bytes | Upload,
                             disconnected: asyncio.Future, target: TargetDest | None = None) -> Response:
        """The provider's response (headers read); raises ClientGone as soon as the caller leaves,
        cancelling the upstream request. A request that fails on a connection reused from the pool
        before any response byte is sent once more on a fresh connection. Target-URL requests go
        through the egress-checked socket factory; Rejection (403) if every address was refused."""
        upstream = self.upstream
        assert upstream is not None
        dest, sockets = (upstream_url(url), None) if target is None else (target.url, self.target_sockets)
        for attempt_no in (1, 2):
            attempt = Attempt()
            connecting = token = None
            if target is not None:
                # the socket factory finds the host being connected in this context variable
                connecting = TargetConnect(target.host, target.port)
                token = CONNECTING.set(connecting)
            try:
                return await self._request_here(upstream, method, dest, headers, body, attempt, disconnected, sockets)
            except STALE_CONNECTION_ERRORS:
                if connecting is not None and connecting.refused and not connecting.opened:
                    raise self._target_refused(connecting.refused, target.host, target.port, literal=False,
                                               name=target.name) from None
                if attempt_no == 2 or not attempt.reused:
                    raise
                self.m_retries.labels(rt.provider).inc()
            finally:
                if token is not None:
                    CONNECTING.reset(token)
        raise AssertionError("unreachable")

    @staticmethod
    async def _request_here(upstream: UpstreamPool, method: str, url: str | URL, headers: list[tuple[str, str]], body: bytes | Upload,
                            attempt: Attempt, disconnected: asyncio.Future,
                            socket_factory: SocketFactory | None = None) -> Response:
        """upstream.request run by the calling task, with no task of its own: the request is written
        in this loop iteration, and its response head wakes the handler directly (a task of its own
        cost two more loop iterations per request). The caller leaving cancels this task while it
        waits in here; that one cancellation is taken back (Task.uncancel) and raised as ClientGone.
        Any other cancellation (shutdown) propagates as it is."""
        if disconnected.done():
            raise ClientGone()
        task = asyncio.current_task()
        assert task is not None
        state = [True, False]  # [still waiting in here, cancelled by the caller leaving]

        def cancel(_f: asyncio.Future) -> None:
            if state[0]:  # a callback scheduled before the request ended must not cancel what follows it
                state[1] = True
                task.cancel()

        disconnected.add_done_callback(cancel)
        try:
            return await upstream.request(method, url, headers, body, attempt, socket_factory)
        except asyncio.CancelledError:
            if state[1]:
                state[1] = False
                if task.uncancel() == 0:
                    raise ClientGone() from None
            raise
        finally:
            state[0] = False
            disconnected.remove_done_callback(cancel)
            if state[1]:  # the cancellation came out as another error: take it back all the same
                task.uncancel()

    # ---- retries and fallbacks (only requests with Helicone-Retry-* or Helicone-Fallbacks) ----
    def _plan(self, hh: HeliconeHeaders, rt: Route, url: str, target: TargetDest | None, path_and_query: str) -> Plan:
        """The targets in order: the request's own route, or each Helicone-Fallbacks entry (its
        target-url egress-checked like Helicone-Target-URL; Rejection before anything is read or sent)."""
        if hh.fallbacks is None:
            return Plan(hh.retry, [Leg(rt, url, target, None)])
        legs = []
        for i, fb in enumerate(hh.fallbacks):
            provider = fb.provider or rt.provider
            # a target-url, else the request's own Helicone-Target-URL, else the provider's base URL
            leg_rt = self.router.route_to(provider, rt.path, fb.target_url or (rt.base_url if rt.target else ""))
            if not leg_rt.base_url:  # Azure without a target-url nor a deployment URL (a Vertex AI path...): nowhere to send it
                raise Rejection(400, f"{FALLBACKS}[{i}]: {missing_base_url(provider, rt.path)}", "helicone_route_error")
            leg_url = leg_rt.base_url + path_and_query
            leg_target = None
            if leg_rt.target:
                leg_target = self._target(leg_url, f'{FALLBACKS}[{i}]."target-url"' if fb.target_url else "Helicone-Target-URL")
            legs.append(Leg(leg_rt, leg_url, leg_target, fb))
        return Plan(hh.retry, legs)

    @staticmethod
    def _plan_bodies(plan: Plan, rendered: bytes, body: bytes, wants_usage: bool) -> None:
        """Each target's body: `rendered` (the request's, prompt rendered) with its bodyKeyOverride merged in,
        and stream_options added where its provider takes them (wants_usage); None where that is `body`, the
        body for the request's own route."""
        usage_here = body is not rendered
        for i, leg in enumerate(plan.legs):
            usage = wants_usage and leg.rt.takes_stream_options()
            if leg.fallback is not None and leg.fallback.body_override is not None:
                try:
                    merged = merge_body(rendered, leg.fallback.body_override, f"{FALLBACKS}[{i}]")
                except ResilienceError as exc:
                    raise Rejection(400, str(exc), "helicone_header_error") from None
                leg.body = with_stream_usage(merged) if usage else merged
            elif usage and not usage_here:
                leg.body = with_stream_usage(rendered)
            elif usage_here and not usage:
                leg.body = rendered

    @staticmethod
    def _fallback_index(hh: HeliconeHeaders, plan: Plan | None) -> tuple[tuple[bytes, bytes], ...]:
        if hh.fallbacks is None or plan is None:
            return ()
        return ((FALLBACK_INDEX_HEADER, str(plan.index).encode()),)

    async def _send_planned(self, plan: Plan, method: str, headers: list[tuple[str, str]], body: bytes,
                            disconnected: asyncio.Future, recheck=None) -> Response:
        """The response to answer with: each target in turn, each tried again (Helicone-Retry-*) on
        429/5xx and connection failures, until one answers with a status its onCodes do not list
        (or the last answers). Nothing has been sent to the caller yet, so any try may be dropped.
        Transport failures of the last try are raised (a 502/504 as usual); a failure counts as 502
        (504 for a timeout) against onCodes. The caller leaving cancels a backoff, or the try under way (ClientGone;
        that try is recorded, with no status). Under Helicone-Token-Limit-Exception-Handler each target's tries are fitted
        (_send_fitting): a try refused for its length is recorded, and the body that fits is the target's from then on."""
        retries = plan.retry.retries if plan.retry is not None else 0
        last = len(plan.legs) - 1
        for index, leg in enumerate(plan.legs):
            plan.index = index
            fb = leg.fallback
            leg_headers = headers
            if fb is not None and fb.headers:
                names = {n for n, _ in fb.headers}
                leg_headers = [h for h in headers if h[0] not in names] + list(fb.headers)
            if leg.stored is not None:
                leg_headers = [*leg_headers, leg.stored.header]
            leg_body = body if leg.body is None else leg.body
            for n in range(retries + 1):
                sent = time.perf_counter()
                try:
                    if leg.fitting is None:
                        resp = await self._send_upstream(leg.rt, method, leg.url, leg_headers, leg_body, disconnected,
                                                         leg.target)
                    else:
                        def refused(at: float, leg: Leg = leg, n: int = n) -> None:
                            plan.record(leg, 400, LENGTH_REFUSED_ERROR, at, n)

                        try:
                            resp = await self._send_fitting(leg.fitting, leg.rt, method, leg.url, leg_headers, disconnected,
                                                            leg.target, recheck, refused)
                        finally:
                            leg.body = leg.fitting.sent  # tried again (a retry) and logged as sent
                        sent = leg.fitting.sent_at  # the try that answered: the body last sent
                except ClientGone:
                    # the caller left while this try was under way: it may have reached (and cost) the provider
                    plan.record(leg, 0, CANCELLED_ERROR, sent, n)
                    raise
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    timed_out = isinstance(exc, TimeoutError)
                    plan.record(leg, 0, f"{'timeout' if timed_out else exc.__class__.__name__}: upstream request failed", sent, n)
                    if n < retries and retryable_error(exc):
                        self.m_retry_attempts.labels(leg.rt.provider, "connect").inc()
                        await self._backoff(plan.retry.delay(n + 1), disconnected)  # type: ignore[union-attr]
                        continue
                    if index < last and fb is not None and fb.falls_back_on(504 if timed_out else 502):
                        self.m_fallbacks.labels(leg.rt.provider).inc()
                        break
                    raise
                status = resp.status
                plan.record(leg, status, "", sent, n)
                if n < retries and retryable_status(status):
                    wait = plan.retry.delay(n + 1, retry_after_seconds(resp.headers.get("retry-after"), time.time()))  # type: ignore[union-attr]
                    resp.close()
                    self.m_retry_attempts.labels(leg.rt.provider, "429" if status == 429 else "5xx").inc()
                    await self._backoff(wait, disconnected)
                    continue
                if index < last and fb is not None and fb.falls_back_on(status):
                    resp.close()
                    self.m_fallbacks.labels(leg.rt.provider).inc()
                    break
                return resp
        raise AssertionError("unreachable: the last target always answers or raises")

    @staticmethod
    async def _backoff(seconds: float, disconnected: asyncio.Future) -> None:
        """Waits between tries; ClientGone at once if the caller leaves meanwhile."""
        if seconds > 0 and not disconnected.done():
            await asyncio.wait((disconnected,), timeout=seconds)
        if disconnected.done():
            raise ClientGone()

    # ---- token limits (only requests with Helicone-Token-Limit-Exception-Handler) ----
    def _fittings(self, hh: HeliconeHeaders, rt: Route, method: str, body: bytes, plan: Plan | None) -> Fitting | None:
        """The handler's handling of the request's own route (returned), or of each target of its plan (set on the leg,
        whose body becomes the one it sends first); Rejection (400 naming the header) for a request it cannot apply to,
        before anything is sent."""
        handler = hh.token_limit
        assert handler is not None
        try:
            if plan is None:
                return Fitting(handler, body_shape(method, rt.path, rt.usage), body, hh.model_override,
                               self._window_of(rt.provider))
            for i, leg in enumerate(plan.legs):
                where = f"{TOKEN_LIMIT_HEADER} ({FALLBACKS}[{i}])" if leg.fallback is not None else TOKEN_LIMIT_HEADER
                leg.fitting = Fitting(handler, body_shape(method, leg.rt.path, leg.rt.usage),
                                      body if leg.body is None else leg.body, hh.model_override,
                                      self._window_of(leg.rt.provider), where)
                leg.body = leg.fitting.first
        except TokenLimitError as exc:
            raise Rejection(400, exc.message, "helicone_header_error") from None
        return None

    def _window_of(self, provider: str):
        """A model's context window as the cost registry gives it, for `provider`."""
        return lambda model: self.costs.context_window(provider, model)

    def _recheck(self, hh: HeliconeHeaders, rt: Route, method: str, raw_headers: list[tuple[str, str]], request_id: str):
        """Checks a cut body as the request's prompt was checked (Helicone-LLM-Security-Enabled,
        Helicone-Moderations-Enabled), before it is sent."""
        async def recheck(cut: bytes) -> None:
            for call in self._prompt_checks(hh, rt, method, cut, None, raw_headers) or ():
                await self._check_prompt(rt, call, request_id)

        return recheck

    async def _send_fitting(self, fitting: Fitting, rt: Route, method: str, url: str, headers: list[tuple[str, str]],
                            disconnected: asyncio.Future, target: TargetDest | None, recheck=None,
                            refused=None) -> Response:
        """The provider's answer to the body `fitting` sends first, or, when it refuses that for its length, to the body
        fitting gives next (cut, or to the next model), until one is answered or nothing is left to try (that refusal
        is then the answer, relayed as it came). A cut body is moderated first when the request asked for moderation
        (recheck); `refused` is told when each refused try was sent. fitting.sent is the body last sent."""
        while True:
            fitting.sent_at = time.perf_counter()
            resp = await self._send_upstream(rt, method, url, headers, fitting.sent, disconnected, target)
            if resp.status != 400:
                return resp
            refusal, read = await self._refusal(fitting.shape, resp)
            following = None if refusal is None else fitting.next_body(fitting.sent, refusal)
            if following is None:
                if refusal is not None:
                    self.m_token_limit.labels(fitting.handler, "gave_up").inc()
                resp.unread(read)
                return resp
            self.m_token_limit.labels(fitting.handler, "resent").inc()
            resp.release()
            if refused is not None:
                refused(fitting.sent_at)
            fitting.sent = following  # logged as the body flagged, when the moderation below flags it
            if recheck is not None and fitting.handler != FALLBACK:
                await recheck(following)

    @staticmethod
    async def _refusal(shape: str, resp: Response) -> tuple[Refusal | None, bytes]:
        """A 400 answer, read up to MAX_REFUSAL_BYTES, as a refusal for the request's length (None: another answer), and
        the bytes read (put back in front of the answer when it is relayed)."""
        parts, size = [], 0
        try:
            async for chunk in resp.content.iter_any():
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_REFUSAL_BYTES:
                    break
        except BaseException:
            resp.close()
            raise
        read = b"".join(parts)
        if size > MAX_REFUSAL_BYTES or not resp.done:
            return None, read
        encoding = resp.headers.get("content-encoding", "")
        return read_refusal(shape, resp.status, decode_body(read, encoding) if encoding else read), read


    # ---- prompt checks (only requests with Helicone-LLM-Security-Enabled or Helicone-Moderations-Enabled: true) ----
    def _prompt_checks(self, hh: HeliconeHeaders, rt: Route, method: str, body: bytes, plan: Plan | None,
                       raw_headers: list[tuple[str, str]]) -> list[PromptCall] | None:
        """The checks the request asked for, made after the rate limit: the LLM security classifier's, then the
        moderation (Helicone's order). Each asks about the latest user message of the body, and of each other body a
        Helicone-Fallbacks bodyKeyOverride gives a target (never sent unchecked), once, before any target is tried.
        None when no check has anything to ask; Rejection (400) when the request cannot be checked."""
        bodies = [body]
        if plan is not None:
            bodies += [leg.body for leg in plan.legs if leg.fallback is not None and leg.fallback.body_override is not None]
        calls = []
        if hh.llm_security:
            calls.append(self._classifier_call(rt, method, bodies))
        if hh.moderations:
            calls.append(self._moderation_call(rt, method, bodies, raw_headers))
        return [c for c in calls if c is not None] or None

    @staticmethod
    def _refused(counter: Any, exc: PromptCheckError) -> Rejection:
        """A request a check cannot apply to: a 400, counted refused, never sent unchecked."""
        counter.labels("refused").inc()
        return Rejection(exc.status, exc.message, exc.kind)

    @staticmethod
    def _distinct(counter: Any, payloads: list[bytes | None]) -> tuple[bytes, ...] | None:
        """A check's distinct request bodies (None: a body with nothing to check); None, counted skipped, when there is
        nothing to ask (the request goes unchecked, as in Helicone)."""
        distinct = tuple(dict.fromkeys(p for p in payloads if p is not None))
        if not distinct:
            counter.labels("skipped").inc()
            return None
        return distinct

    def _classifier_call(self, rt: Route, method: str, bodies: list[bytes | None]) -> PromptCall | None:
        """The deployment's prompt classifier asked about each latest user message, with its own key (never the
        caller's headers); refused (400) when the gateway has none."""
        try:
            if self.classifier is None:
                raise not_configured()
            url, model, headers = self.classifier
            texts = [classifier_input(method, rt.path, b) for b in bodies if b is not None]
        except PromptCheckError as exc:
            raise self._refused(self.m_llm_security, exc) from None
        payloads = self._distinct(self.m_llm_security, [None if t is None else classifier_request(model, t) for t in texts])
        if payloads is None:
            return None
        return PromptCall(LLM_SECURITY, self.m_llm_security, url, None, headers, payloads, read_threat, _threat_detected)

    def _moderation_call(self, rt: Route, method: str, bodies: list[bytes | None],
                         raw_headers: list[tuple[str, str]]) -> PromptCall | None:
        """OpenAI's moderation endpoint next to the request's own (the deployment's OpenAI URL, or its
        Helicone-Target-URL, egress-checked as the request is), asked with the caller's key."""
        try:
            path = moderation_path(rt.provider, method, rt.path)
            contents = [moderation_input(b) for b in bodies if b is not None]
        except PromptCheckError as exc:
            raise self._refused(self.m_moderations, exc) from None
        payloads = self._distinct(self.m_moderations, [None if c is None else json.dumps({"input": c}).encode() for c in contents])
        if payloads is None:
            return None
        url = rt.base_url + path
        return PromptCall(MODERATION, self.m_moderations, url, self._target(url) if rt.target else None,
                          request_headers(forward_request_headers(raw_headers)), payloads, read_verdict, _moderation_flagged)

    async def _check_prompt(self, rt: Route, call: PromptCall, request_id: str) -> None:
        """Asks the check's service about each body of the call in turn. Rejection when a prompt is blocked (Helicone's
        400) and when no verdict came (fail closed: a check that did not happen never lets a request through)."""
        for payload in call.payloads:
            verdict = await self._verdict(rt, call, payload)
            if verdict.flagged:
                call.counter.labels("flagged").inc()
                raise call.blocked(verdict, request_id)
        call.counter.labels("passed").inc()

    async def _verdict(self, rt: Route, call: PromptCall, payload: bytes) -> Verdict:
        """One call's verdict; Rejection when none came."""
        check = call.check
        timeout = getattr(self.settings, check.timeout_setting)
        never = asyncio.get_running_loop().create_future()  # the caller leaving is not watched: the timeout bounds it
        try:
            async with asyncio.timeout(timeout):
                resp = await self._send_upstream(rt, "POST", call.url, call.headers, payload, never, call.target)
                try:
                    parts, size = [], 0
                    async for chunk in resp.content.iter_any():
                        size += len(chunk)
                        if size > MAX_ANSWER_BYTES:
                            raise PromptCheckError(502, f"{check.header}: {check.service}'s answer is over "
                                                   f"{MAX_ANSWER_BYTES} bytes; the request was not sent", check.error_kind)
                        parts.append(chunk)
                except BaseException:
                    resp.close()
                    raise
                if resp.status < 500:  # as the provider's: a connection that answered 5xx is not reused
                    resp.release()
                else:
                    resp.close()
            verdict = call.read(resp.status, b"".join(parts), resp.headers.get("retry-after"))
        except PromptCheckError as exc:
            # a 4xx passed on (the moderation endpoint's: the caller's key, quota or input) is the caller's, not an outage
            call.counter.labels("denied" if exc.status < 500 else "failed").inc()
            raise Rejection(exc.status, exc.message, exc.kind, exc.headers, exc.logged) from None
        except TimeoutError:
            call.counter.labels("failed").inc()
            raise Rejection(504, f"{check.header}: {check.service} did not answer within {timeout:g} s "
                            f"({env_name(check.timeout_setting)}); the request was not sent", check.error_kind) from None
        except (aiohttp.ClientError, OSError) as exc:
            call.counter.labels("failed").inc()
            raise Rejection(502, f"{check.header}: {check.service} could not be reached "
                            f"({exc.__class__.__name__}); the request was not sent", check.error_kind) from None
        except Rejection:  # its Target-URL host refused at connect time (403)
            call.counter.labels("failed").inc()
            raise
        finally:
            never.cancel()
        return verdict

    async def _render_prompt(self, hh: HeliconeHeaders, org_id: str, rt: Route, body: bytes) -> tuple[bytes, PromptUse | None]:
        """The stored prompt rendered into the body (provider-shaped); Rejection when it cannot be,
        before anything is sent upstream."""
        try:  # a body translated from OpenAI's format (/ai/...) is rendered in OpenAI's shape
            return await self.prompts.apply(hh.auth_key, org_id, "openai" if rt.openai_chat else rt.provider, body, hh.prompt)
        except PromptError as exc:
            raise Rejection(exc.status, exc.message, exc.kind, exc.headers,
                            exc.omitted if hh.omit_request else exc.message) from None

    # ---- OpenAI chat completions translated to Anthropic (only requests under /ai/) ----
    @staticmethod
    def _check_openai_chat(method: str, rt: Route, hh: HeliconeHeaders) -> None:
        """Rejection for a request under /ai/ that cannot be translated (another path or method, a Helicone feature
        that cannot apply), before its body is read."""
        refused = refused_headers(hh.fallbacks is not None, hh.token_limit is not None, hh.moderations, hh.llm_security)
        err = check_request(method, rt.path, refused)
        if err is not None:
            raise Rejection(err.status, err.message, "invalid_request_error", ((b"allow", b"POST"),) if err.status == 405 else (),
                            body=err.body())

    @staticmethod
    def _openai_chat(hh: HeliconeHeaders, body: bytes) -> tuple[bytes, ChatRequest]:
        """The Messages request of an OpenAI chat completion body, and what its answer's translation needs; Rejection
        (400 naming the field) for one that cannot be translated. The body's `user` is logged as for OpenAI's requests."""
        try:
            body, chat, user = translate_request(body, hh.stream_usage)
        except TranslationError as exc:
            raise Rejection(exc.status, exc.message, "invalid_request_error", body=exc.body()) from None
        if user and not hh.user_id:
            hh.user_id = hh.logged_user(user)
        return body, chat

    async def _read_body(self, receive, declared: str | None) -> bytes:
        """The request body; raises Rejection (413) as soon as it exceeds max_request_bytes
        (nothing more is read) and ClientGone if the caller leaves."""
        limit = self.settings.max_request_bytes
        if declared and declared.isdigit() and int(declared) > limit:
            raise _body_too_large(limit)
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def _log(self, org_id: str, request_id: str, hh: HeliconeHeaders, rt: Route, method: str, body: bytes,
             req_ctype: str, started: float, started_at: int, status: int, encoding: str,
             resp_body: bytes, resp_ctype: str, resp_truncated: bool, ttft_ms: int, error: str = "",
             prompt: PromptUse | None = None, cache_hit: bool = False, rate_limit: RateLimitRequest | None = None,
             plan: Plan | None = None, resp_tail: bytes = b"", applied: str = "", read: Parsed | None = None,
             streamed: bool = False) -> None:
        """Hands the log event to the publisher; the event itself is built on its worker. With a
        u=cents rate limit, the cost it computes is charged to the bucket there (off the request path).
        resp_tail: the decoded end of an answer cut at the logged body's limit (Capture.end), read for the usage.
        applied: what Helicone-Token-Limit-Exception-Handler did to the body (logged as the APPLIED_PROPERTY property).
        read: the model and usage read already (a Realtime session's, summed from its messages) instead of from the
        answer; streamed: logged as a stream whatever its bodies say (a WebSocket session)."""
        latency_ms = int((time.perf_counter() - started) * 1000)
        finished_at = time.time_ns()
        limit = self.settings.max_logged_body_bytes

        def build() -> events.RequestLogged:
            if req_ctype[:19].lower() == FORM_DATA:  # an upload (audio, an image to edit): its model is a form field
                req_model, req_stream, req_user = form_model(body, req_ctype), False, ""
            else:
                req_model, req_stream, req_user = request_fields(body)
            decoded = decode_body(resp_body, encoding) if encoding else resp_body
            own = False
            if read is None:
                parsed = parse_response(rt.usage, decoded, resp_ctype, resp_tail)
                own = usage_is_its_own(method, rt.path)
                if not own:  # a retrieval, a batch: the model named, no usage
                    parsed = Parsed(model=parsed.model)
            else:
                parsed = read
            logged_error = error
            if not error and (stream_failed(resp_ctype, decoded) or (resp_tail and stream_failed(resp_ctype, resp_tail))):
                # a 200 stream the provider gave up on: its usage is what it reported so far, its cost unknown
                logged_error, parsed.priced = STREAM_ERROR_EVENT, False
            if own:  # tts-1's characters, dall-e's images: billed by what the request asked for (their answers report none)
                parsed = billed_by_request(parsed, rt.path, body, req_ctype, 200 <= status < 300 and not logged_error)
            model = unicode_text(hh.logged_model(parsed.model or rt.path_model() or req_model))  # an answer's too
            cost = parsed.cost(self.costs, rt.provider, model)
            if rate_limit is not None and rate_limit.policy.unit == CENTS and cost:
                self.ratelimits.charge(org_id, rate_limit, cost * 100)
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
                user_id=hh.logged_user(req_user),
                session_id=hh.session_id,
                session_path=hh.session_path,
                session_name=hh.session_name,
                properties={**hh.logged_properties(), APPLIED_PROPERTY: applied} if applied else hh.logged_properties(),
                usage=parsed.logged_usage(),
                # a cache hit cost nothing: what the provider would have charged is logged as saved
                cost_usd=0.0 if cache_hit else cost or 0.0,
                cost_known=cost is not None,
                streamed=streamed or req_stream or is_stream(resp_ctype),
                inline=hh.inline_bodies(body, req_ctype, decoded, resp_ctype, limit, response_cut=resp_truncated),
                error=logged_error,
                source="gateway",
                region=self.settings.region,
                cache_hit=cache_hit,
                cache_saved_usd=(cost or 0.0) if cache_hit else 0.0,
            )
            if plan is not None:
                ev.fallback_index = plan.index
                for target_url, provider, a_status, a_error, a_latency, a_index, a_retry in plan.attempts:
                    ev.attempts.add(target_url=target_url, provider=provider, status=a_status, error=a_error,
                                    latency_ms=a_latency, fallback_index=a_index, retry=a_retry)
            if prompt is not None:
                ev.prompt_id, ev.prompt_version = prompt.prompt_id, prompt.version
                ev.prompt_environment = prompt.environment
                # logged as bodies are, up to their limit: the event must fit a Kafka record (the request body, cut
                # at that limit and flagged, holds larger inputs as sent); part of the request: Helicone-Omit-Request omits them
                if not hh.omit_request and (len(prompt.inputs_json) <= limit // 4 or len(prompt.inputs_json.encode()) <= limit):
                    ev.prompt_inputs_json = prompt.inputs_json
            events.set_time_ns(ev.request_created_at, started_at)
            events.set_time_ns(ev.response_created_at, finished_at)
            return ev

        self.publisher.submit(build, len(body) + len(resp_body) + len(resp_tail))


def _with(headers: list[tuple[str, str]], stored: StoredKey | None) -> list[tuple[str, str]]:
    """The request's headers with its org's stored key added (when one goes with it): what a call next to the request's
    own (its moderation) is sent with."""
    return headers if stored is None else [*headers, stored.header]


def _cents_need_usage(hh: HeliconeHeaders, rt: Route, rate_limit: RateLimitRequest | None) -> bool:
    """A u=cents policy on OpenAI's own (chat) completions: a stream there carries no usage unless asked
    (stream_options.include_usage), and a cost never known is never charged to the budget. Not elsewhere:
    other OpenAI-format APIs (Mistral's) refuse stream_options, and a target or fallback may be one of them."""
    return (rate_limit is not None and rate_limit.policy.unit == CENTS and rt.provider == "openai" and not rt.target
            and hh.fallbacks is None and rt.path.endswith("completions"))


def _applied(fitting: Fitting | None, plan: Plan | None) -> str:
    """What Helicone-Token-Limit-Exception-Handler did to the body of the request's route, or of its plan's target that
    answered; "" when nothing (the body went as sent, or the header was not sent)."""
    if fitting is not None:
        return fitting.applied
    if plan is not None and plan.legs[plan.index].fitting is not None:
        return plan.legs[plan.index].fitting.applied  # type: ignore[union-attr]
    return ""


class GatewayApp:
    """ASGI entry point: proxied traffic goes straight to Gateway.handle; the lifespan starts and
    stops the gateway; the ops routes (/metrics, /healthz, /readyz) are OpsRoutes."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.ops = OpsRoutes(gateway.metrics, gateway.ready)
        self.state = SimpleNamespace(gateway=gateway)

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"] not in OPS_PATHS:
            started = time.perf_counter()
            try:
                await self.gateway.handle(scope, receive, send, started)
            except Exception:
                # a bug: the server answers 500 (or cuts the answer short); counted, or the 5xx ratio,
                # its alert and the canary analysis never see the gateway's own failures (once: not
                # when it struck after the answer was counted)
                if COUNTED not in scope:
                    self.gateway._answered(scope, UNKNOWN_PROVIDER, started, 500)
                raise
        elif kind == "websocket":
            await self.gateway.relay_websocket(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        else:
            await self.ops(scope, receive, send)

    async def lifespan(self, receive, send) -> None:
        """The ASGI lifespan protocol: start on startup, stop on shutdown; a failure is reported
        to the server (which then exits) and raised."""
        started = False
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except BaseException:
                    await send({"type": "lifespan.startup.failed", "message": traceback.format_exc()})
                    raise
                started = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if started:
                        await self.gateway.stop()
                except BaseException:
                    await send({"type": "lifespan.shutdown.failed", "message": traceback.format_exc()})
                    raise
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: GatewaySettings | None = None) -> GatewayApp:
    settings = settings or GatewaySettings()
    return GatewayApp(Gateway(settings, ServiceMetrics("gateway", settings.region)))
