"""Wrapper around the RequestLogged protobuf: build, encode, validate, and map to storage rows."""

from __future__ import annotations

import datetime as dt
import json
import operator
import os
import re
import threading
import time
import uuid

from google.protobuf.message import DecodeError
from helicone.logging.v1 import events_pb2

from .providers import PROVIDER_NAMES

RequestLogged = events_pb2.RequestLogged
Usage = events_pb2.Usage
InlineBodies = events_pb2.InlineBodies
BodyLocation = events_pb2.BodyLocation
Attempt = events_pb2.Attempt
RequestLoggedBatch = events_pb2.RequestLoggedBatch

SCHEMA_VERSION = 1
# The providers the gateway routes to (`provider` of its events): the provider table's names. Where a
# bounded value is needed (a metric label) anything else an event may carry counts as CUSTOM_PROVIDER.
PROVIDERS = PROVIDER_NAMES
CUSTOM_PROVIDER = "custom"
MAX_PROPERTY_KEY = 256
MAX_PROPERTY_VALUE = 4096
# org ids go into body keys ("orgs/<org>/...") and Kafka keys ("<org>/<request>"): no separators
_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


# The times the log store keeps: the range ClickHouse documents for DateTime64, 1900-01-01 to 2299-12-31T23:59:59 UTC
# (Unix seconds). Within it a row's version, the request time in ns (event_version), fits its UInt64 column; past
# 2554 ClickHouse wraps the version round.
EARLIEST_SECONDS, LATEST_SECONDS = -2_208_988_800, 10_413_791_999
TIME_RANGE_TEXT = "1900-01-01 to 2299-12-31 UTC"


class EventError(ValueError):
    """An event that can never be stored as it is (it belongs in the dead-letter topic)."""


class _IdBytes(threading.local):
    """Each thread's block of random bytes for request ids, and how far it is used."""

    def __init__(self) -> None:
        self.block, self.used = b"", 0


_ID_BLOCK = 4096  # 256 ids per os.urandom call
_ID_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}  # RFC 4122's variant bits (10xx)
_id_bytes = _IdBytes()


def _forget_id_bytes() -> None:
    """A forked child draws its own bytes: never an id its parent hands out too. (Gateway workers are
    started with fork and exec, which starts afresh anyway; this covers os.fork and multiprocessing.)"""
    _id_bytes.block, _id_bytes.used = b"", 0


os.register_at_fork(after_in_child=_forget_id_bytes)


def new_request_id() -> str:
    """A random (version 4) UUID as text, as str(uuid.uuid4()) gives it, in about a quarter of the time
    (it is on the gateway's request path): the 122 random bits come from os.urandom, a block at a time."""
    ids = _id_bytes
    used = ids.used
    if used >= len(ids.block):
        ids.block, used = os.urandom(_ID_BLOCK), 0
    ids.used = used + 16
    h = ids.block[used:used + 16].hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_ID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def encode(event: RequestLogged) -> bytes:
    return event.SerializeToString(deterministic=True)


def decode(data: bytes) -> RequestLogged:
    event = RequestLogged()
    try:
        event.ParseFromString(data)
    except DecodeError as exc:
        raise EventError(f"not a RequestLogged protobuf: {exc}") from exc
    validate(event)
    return event


def decode_many(raws: list[bytes]) -> list[RequestLogged | Exception]:
    """decode() of each value, in order: its event, or what it raised (an EventError, or anything
    else about that one value: it must not stop the others).

    The values are parsed as one RequestLoggedBatch (each framed as an `events` entry): one parse
    and one protobuf arena for them all. With an arena per event, freeing a batch's events made
    protobuf trim the C heap (malloc_trim, every 10,000 frees), and the next batch faulted all
    that memory back in: about a quarter of decoding's time. A value that is not a RequestLogged protobuf
    fails the whole parse; each value is then decoded on its own."""
    if None in raws:  # records without a value (null: a tombstone), never an event
        decoded = iter(decode_many([raw for raw in raws if raw is not None]))
        return [EventError("record has no value (null)") if raw is None else next(decoded) for raw in raws]
    framed = []
    heads = _FRAME_HEADS
    for raw in raws:
        length = len(raw)
        head = heads.get(length)
        if head is None:
            if len(heads) >= 4096:
                heads.clear()
            head = heads[length] = _frame_head(length)
        framed.append(head)
        framed.append(raw)
    batch = RequestLoggedBatch()
    try:
        batch.ParseFromString(b"".join(framed))
    except Exception:  # noqa: BLE001 - a DecodeError, or anything else: each value on its own
        decoded = None
    else:
        decoded = batch.events
    if decoded is None or len(decoded) != len(raws):
        return [_decoded_or_error(raw) for raw in raws]
    out: list[RequestLogged | Exception] = []
    for event in decoded:
        try:
            validate(event)
        except Exception as exc:  # noqa: BLE001 - an EventError, or anything else about this one event
            out.append(exc)
        else:
            out.append(event)
    return out


def _decoded_or_error(raw: bytes) -> RequestLogged | Exception:
    try:
        return decode(raw)
    except Exception as exc:  # noqa: BLE001 - an EventError, or anything else about this one value
        return exc


_FRAME_HEADS: dict[int, bytes] = {}  # value length -> _frame_head (a batch's values have a few hundred lengths)


def _frame_head(length: int) -> bytes:
    """The tag of RequestLoggedBatch.events (field 1, length-delimited) and `length` as a varint."""
    head = bytearray(b"\x0a")
    while length >= 0x80:
        head.append(length & 0x7F | 0x80)
        length >>= 7
    head.append(length)
    return bytes(head)


def validate(event: RequestLogged) -> None:
    if event.schema_version != SCHEMA_VERSION:
        raise EventError(f"unsupported schema_version {event.schema_version}")
    request_id = event.request_id
    if not _CANONICAL_UUID.match(request_id):  # the usual form, which uuid.UUID accepts, at a quarter of its cost
        try:
            uuid.UUID(request_id)
        except ValueError as exc:
            raise EventError(f"request_id {request_id!r} is not a UUID") from exc
    if not event.org_id:
        raise EventError("org_id is empty")
    if not _ORG_ID.match(event.org_id):
        raise EventError(f"org_id {event.org_id[:40]!r} is not an id (letters, digits, '-' and '_', at most 128)")
    if not event.HasField("request_created_at"):
        raise EventError("request_created_at is missing")
    for name in ("request_created_at", "response_created_at"):
        ts = getattr(event, name)
        if not (0 <= ts.nanos < 1_000_000_000 and EARLIEST_SECONDS <= ts.seconds <= LATEST_SECONDS):
            raise EventError(f"{name} is not a time the log store keeps ({TIME_RANGE_TEXT}): "
                             f"seconds {ts.seconds}, nanos {ts.nanos}")
    for key, value in event.properties.items():
        if not key or len(key) > MAX_PROPERTY_KEY or len(value) > MAX_PROPERTY_VALUE:
            raise EventError(f"property {key[:40]!r} has an empty/oversized key or value")
    if event.WhichOneof("bodies") == "location":
        # bodies written by the producer: they must be this org's, or a row could point at another org's bodies
        prefix = body_prefix(event.org_id)
        for name in ("request_key", "response_key"):
            key = getattr(event.location, name)
            if not key.startswith(prefix) or ".." in key.split("/"):
                raise EventError(f"location.{name} {key[:80]!r} is not under {prefix!r}")


def request_uuid(request_id: str) -> str:
    """A valid request id in the canonical form (lower case, 8-4-4-4-12), the form ClickHouse's UUID
    column stores: ids that differ only in case or notation are one request."""
    return request_id.lower() if _CANONICAL_UUID.match(request_id) else str(uuid.UUID(request_id))


def attempts_json(event: RequestLogged) -> str:
    """The event's upstream tries as the JSON list stored in request_log.attempts ('' when none)."""
    if not event.attempts:
        return ""
    return json.dumps([
        {"target_url": a.target_url, "provider": a.provider, "status": a.status, "error": a.error,
         "latency_ms": a.latency_ms, "fallback_index": a.fallback_index, "retry": a.retry}
        for a in event.attempts
    ], separators=(",", ":"))


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# the largest values of request_log's UInt32 and UInt16 columns (ClickHouse wraps a larger one around)
_MAX_UINT32, _MAX_UINT16 = 2**32 - 1, 2**16 - 1


def set_time(field, when: dt.datetime) -> None:
    if when.tzinfo is None:  # naive: local time, as astimezone reads it
        field.FromDatetime(when.astimezone(dt.timezone.utc))
        return
    # what FromDatetime stores (timegm of the UTC time tuple, microseconds as nanos), without the time tuple
    since = when - _EPOCH
    field.seconds = since.days * 86400 + since.seconds
    field.nanos = since.microseconds * 1000


def set_time_ns(field, ns: int) -> None:
    """A Timestamp field from nanoseconds since the epoch (time.time_ns(): no datetime on the request path)."""
    field.seconds, field.nanos = divmod(ns, 1_000_000_000)


_SECONDS: dict[int, str] = {}  # epoch second -> 'YYYY-MM-DD HH:MM:SS' (the events of a batch share a few seconds)


def _ch_time(ts) -> str:
    # DateTime64(3, 'UTC') accepts 'YYYY-MM-DD HH:MM:SS.fff'; gmtime: a third of ToDatetime + strftime's cost
    seconds = ts.seconds
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        text = _SECONDS[seconds] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return f"{text}.{ts.nanos // 1_000_000:03d}"


def message_key(event: RequestLogged) -> bytes:
    """The Kafka message key: the log identity (org, request id), so that every copy and every
    reuse of one identity lands on one partition, in order, on one ingest worker."""
    return f"{event.org_id}/{event.request_id}".encode()


def event_version(event: RequestLogged) -> int:
    """The ReplacingMergeTree version of an event's row: its request time in nanoseconds.

    It comes from the event, not from the time it is written, so the newest request with an id
    wins whatever order events arrive in, and a replayed copy of one event has the same version
    (and the same body keys) as the original. Two different requests of one org with one id and
    the very same request time tie: the one written last wins, row and bodies alike."""
    ts = event.request_created_at
    return max(ts.seconds, 0) * 1_000_000_000 + max(ts.nanos, 0)


BODIES_PREFIX = "orgs/"  # every stored body is under it (the prefix of the bucket's retention lifecycle rule)


def body_prefix(org_id: str) -> str:
    return f"{BODIES_PREFIX}{org_id}/"


def body_keys(org_id: str, request_id: str, version: int) -> tuple[str, str]:
    """Where ingest stores one event's bodies. The version is part of the key so that a row
    always points at its own request's bodies, even when a request id is reused."""
    base = f"{body_prefix(org_id)}requests/{request_id}/{version}"
    return f"{base}/request", f"{base}/response"


def body_pack_key(org_id: str, digest: str) -> str:
    """Where ingest stores a body pack: the bodies of one org's events of one batch, named by a
    digest of its content (so rewriting the same batch writes the same object)."""
    return f"{body_prefix(org_id)}packs/{digest}"


# The columns of a `request_log` row, in the order analytics_values gives them.
ANALYTICS_COLUMNS = (
    "request_id", "org_id", "request_created_at", "response_created_at", "latency_ms", "time_to_first_token_ms",
    "status", "provider", "model", "method", "path", "target_url", "user_id", "session_id", "session_path",
    "session_name", "properties", "prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens",
    "cache_write_tokens", "usage_known", "cost_usd", "cost_known", "streamed", "request_body_key", "response_body_key",
    "request_bytes", "response_bytes", "request_content_type", "response_content_type", "body_truncated", "error",
    "source", "region", "prompt_id", "prompt_version", "prompt_inputs", "cache_hit", "cache_saved_usd", "attempts",
    "fallback_index", "version",
)


def analytics_row(
    event: RequestLogged,
    *,
    request_key: str,
    response_key: str,
    request_bytes: int,
    response_bytes: int,
    request_content_type: str,
    response_content_type: str,
    truncated: bool,
) -> dict:
    """The `request_log` row for one event, by column name (see analytics_values)."""
    return dict(zip(ANALYTICS_COLUMNS, analytics_values(
        event, request_key, response_key, request_bytes, response_bytes, request_content_type, response_content_type,
        truncated), strict=True))


# the event's fields analytics_values reads, in one call each (a field read is most of a row's cost)
_ROW_FIELDS = operator.attrgetter(
    "request_id", "org_id", "request_created_at", "latency_ms", "time_to_first_token_ms", "status", "provider", "model",
    "method", "path", "target_url", "user_id", "session_id", "session_path", "session_name", "properties", "usage",
    "cost_usd", "cost_known", "streamed", "error", "source", "region", "prompt_id", "prompt_version",
    "prompt_inputs_json", "cache_hit", "cache_saved_usd", "attempts", "fallback_index",
)
_USAGE_FIELDS = operator.attrgetter(
    "prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens", "cache_write_tokens", "known"
)


def analytics_values(
    event: RequestLogged,
    request_key: str,
    response_key: str,
    request_bytes: int,
    response_bytes: int,
    request_content_type: str,
    response_content_type: str,
    truncated: bool,
) -> list:
    """The `request_log` row for one event, as values in ANALYTICS_COLUMNS order (ingest writes a
    batch of these without naming each column per row); deterministic, so a replayed event gives
    the same row (`version`, see event_version, lets ReplacingMergeTree keep the newest request
    of an id)."""
    (request_id, org_id, created, latency_ms, ttft_ms, status, provider, model, method, path, target_url, user_id,
     session_id, session_path, session_name, properties, u, cost_usd, cost_known, streamed, error, source, region,
     prompt_id, prompt_version, prompt_inputs, cache_hit, cache_saved_usd, attempts, fallback_index) = _ROW_FIELDS(event)
    created_at = _ch_time(created)
    response_at = _ch_time(event.response_created_at) if event.HasField("response_created_at") else created_at
    prompt, completion, total, cache_read, cache_write, usage_known = _USAGE_FIELDS(u)
    seconds, nanos = created.seconds, created.nanos
    return [
        request_id,
        org_id,
        created_at,
        response_at,
        (latency_ms if latency_ms < _MAX_UINT32 else _MAX_UINT32) if latency_ms > 0 else 0,  # UInt32: never wrapped
        ttft_ms,
        status,
        provider,
        model,
        method,
        path,
        target_url,
        user_id,
        session_id,
        session_path,
        session_name,
        dict(properties) if properties else {},
        prompt if prompt > 0 else 0,
        completion if completion > 0 else 0,
        total if total > 0 else 0,
        cache_read if cache_read > 0 else 0,
        cache_write if cache_write > 0 else 0,
        int(usage_known),
        cost_usd,
        int(cost_known),
        int(streamed),
        request_key,
        response_key,
        request_bytes,
        response_bytes,
        request_content_type,
        response_content_type,
        int(truncated),
        error,
        source,
        region,
        prompt_id,
        prompt_version if prompt_version > 0 else 0,
        prompt_inputs,
        int(cache_hit),
        cache_saved_usd,
        attempts_json(event) if attempts else "",
        (fallback_index if fallback_index < _MAX_UINT16 else _MAX_UINT16) if fallback_index > 0 else 0,  # UInt16
        (seconds if seconds > 0 else 0) * 1_000_000_000 + (nanos if nanos > 0 else 0),  # event_version
    ]
