"""The gateway's response cache (Helicone's Helicone-Cache-* headers).

A request opts in with headers (parsed by `cache_directive` only when one is present, so requests
without them pay nothing); its key hashes org + provider target + method + path + body (canonical
JSON minus ignored keys) + seed + the caller's provider key. A bucket of up to 20 slots per key lets
a caller collect several answers to one prompt: lookups miss until every slot is filled, then answer
from a random one.

Entries keep the provider's status, headers and body chunks, so a streamed answer is replayed as a
stream of the same bytes. Only whole 2xx answers are saved: not one cut short (a stream without its format's
end, JSON that does not parse), nor a stream that carried an error event. Stores: `MemoryCacheStore` (one process, bounded LRU) or
`RedisCacheStore` (shared by every replica). Every store call is bounded by a short timeout and any
failure is a MISS (and a metric), never an error for the caller.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from helicone_core.cancellation import wait_for
from helicone_core.providers import PROVIDER_TABLE
from helicone_core.usage import answer_whole, decode_body

from .headers import HeaderError, switch
from .offpath import OffPathWrites

log = logging.getLogger("helicone.gateway.cache")

# Request headers (Helicone's names)
CACHE_ENABLED = "Helicone-Cache-Enabled"
CACHE_SAVE = "Helicone-Cache-Save"
CACHE_READ = "Helicone-Cache-Read"
CACHE_BUCKET_MAX_SIZE = "Helicone-Cache-Bucket-Max-Size"
CACHE_SEED = "Helicone-Cache-Seed"
CACHE_IGNORE_KEYS = "Helicone-Cache-Ignore-Keys"
CACHE_CONTROL = "Cache-Control"
CACHE_HEADERS = {h.lower(): h for h in (CACHE_ENABLED, CACHE_SAVE, CACHE_READ, CACHE_BUCKET_MAX_SIZE, CACHE_SEED,
                                        CACHE_IGNORE_KEYS)}
# Response headers
CACHE_STATUS = "Helicone-Cache"
CACHE_BUCKET_IDX = "Helicone-Cache-Bucket-Idx"
STATUS_HEADER = CACHE_STATUS.lower().encode()
BUCKET_IDX_HEADER = CACHE_BUCKET_IDX.lower().encode()
HIT, MISS = b"HIT", b"MISS"

DEFAULT_TTL = 7 * 24 * 3600
MAX_TTL = 365 * 24 * 3600
MAX_BUCKET_SIZE = 20
MAX_SEED_CHARS = 256
MAX_IGNORE_KEYS = 64
MAX_IGNORE_KEY_CHARS = 256
# Bodies above this are canonicalised (a request's) or checked before a save (an answer's) on a worker
# thread, not on the event loop.
INLINE_JSON_BYTES = 256 * 1024
# Provider headers never replayed from the cache (they belong to the original answer's exchange).
NOT_REPLAYED = frozenset({b"set-cookie", b"helicone-id", STATUS_HEADER, BUCKET_IDX_HEADER})
KEY_PREFIX = "helicone:cache:v1:"
# The headers a provider key is sent in (the provider table's "key" ways; a ?key= is in the path already):
# part of the cache key, as in Helicone's, so an answer is never replayed to a caller with another key or none.
PROVIDER_KEY_HEADERS = tuple(sorted({name for p in PROVIDER_TABLE.values() for name in p.key_headers}))

# An error event inside a 200 stream (the provider gave up mid-way): Anthropic's `event: error`, an
# OpenAI-format `data: {"error": ...}` (OpenAI, OpenRouter, Gemini's SSE) or `data: {"type": "error", ...}`.
# Each line is matched after its newline: a literal the search skips to quickly (a ^ would be tried everywhere).
_STREAM_ERROR = re.compile(rb'\n(?:event:[ \t]*error[ \t]*(?:\r|\n|\Z)|data:[ \t]*\{\s*"(?:error"\s*:|type"\s*:\s*"error"))')
_MAX_AGE = re.compile(r"^(s-maxage|max-age)\s*=\s*\"?([^\",]*)\"?$", re.IGNORECASE)


@dataclass(frozen=True)
class CacheDirective:
    """What a request asked of the cache."""

    read: bool
    save: bool
    ttl: int  # seconds an entry saved by this request lives
    bucket_size: int
    seed: str
    ignore_keys: frozenset[str]


def _ttl(cache_control: str) -> int:
    """TTL from Cache-Control's s-maxage (preferred, the shared-cache directive) or max-age."""
    found: dict[str, str] = {}
    for part in cache_control.split(","):
        part = part.strip()
        if part.lower().startswith(("max-age", "s-maxage")):
            m = _MAX_AGE.match(part)
            if m is None:
                raise HeaderError(f"{CACHE_CONTROL} {part[:40]!r}: write max-age=<seconds> or s-maxage=<seconds>")
            found[m.group(1).lower()] = m.group(2).strip()
    raw = found.get("s-maxage", found.get("max-age"))
    if raw is None:
        return DEFAULT_TTL
    if not raw.isdigit() or not raw.isascii():
        raise HeaderError(f"{CACHE_CONTROL} max-age/s-maxage must be a whole number of seconds, got {raw[:40]!r}")
    return MAX_TTL if len(raw) > len(str(MAX_TTL)) else min(int(raw), MAX_TTL)  # no int() of 5000 digits


def cache_directive(raw: dict[str, str], cache_control: str) -> CacheDirective:
    """raw: the Helicone-Cache-* request headers present (lower-case names); raises HeaderError
    naming the header and the accepted form. Every header is checked, even when the cache is off."""
    for name in raw:
        if name not in CACHE_HEADERS:  # a misspelt name would leave the cache off (or a key unsplit) without a word
            raise HeaderError(f"unknown header {name[:60]!r}; cache headers are {', '.join(CACHE_HEADERS.values())}")
    enabled = switch(CACHE_ENABLED, raw[CACHE_ENABLED.lower()]) if CACHE_ENABLED.lower() in raw else False
    save = switch(CACHE_SAVE, raw[CACHE_SAVE.lower()]) if CACHE_SAVE.lower() in raw else False
    read = switch(CACHE_READ, raw[CACHE_READ.lower()]) if CACHE_READ.lower() in raw else False
    bucket = 1
    if (value := raw.get(CACHE_BUCKET_MAX_SIZE.lower())) is not None:
        v = value.strip()
        if not (v.isascii() and v.isdigit() and len(v) <= 2 and 1 <= int(v) <= MAX_BUCKET_SIZE):
            raise HeaderError(f"{CACHE_BUCKET_MAX_SIZE} must be a whole number from 1 to {MAX_BUCKET_SIZE}, got {value[:40]!r}")
        bucket = int(v)
    seed = raw.get(CACHE_SEED.lower(), "").strip()
    if len(seed) > MAX_SEED_CHARS:
        raise HeaderError(f"{CACHE_SEED} is longer than {MAX_SEED_CHARS} characters")
    ignore: frozenset[str] = frozenset()
    if (value := raw.get(CACHE_IGNORE_KEYS.lower())) is not None:
        keys = [k.strip() for k in value.split(",") if k.strip()]
        if not keys or len(keys) > MAX_IGNORE_KEYS or any(len(k) > MAX_IGNORE_KEY_CHARS for k in keys):
            raise HeaderError(f"{CACHE_IGNORE_KEYS} must be a comma-separated list of 1 to {MAX_IGNORE_KEYS} top-level "
                              f"JSON body keys (each at most {MAX_IGNORE_KEY_CHARS} characters), e.g. 'user,metadata'")
        ignore = frozenset(keys)
    ttl = _ttl(cache_control) if (enabled or save or read) else DEFAULT_TTL
    return CacheDirective(read=enabled or read, save=(enabled or save) and ttl > 0, ttl=ttl, bucket_size=bucket,
                          seed=seed, ignore_keys=ignore)


def _canonical_body(body: bytes, ignore: frozenset[str]) -> bytes:
    """Canonical JSON (sorted keys, no spaces) minus the ignored top-level keys, so that key order
    and formatting do not split the cache; bytes that are not JSON, or JSON this cannot write back
    (an escaped lone surrogate, nesting past the recursion limit), are keyed as they are."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and ignore:
            doc = {k: v for k, v in doc.items() if k not in ignore}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # (UnicodeEncodeError is a ValueError)
        return body


def provider_key(headers: dict[str, str]) -> str:
    """The provider key headers of a request (lower-case names), as one string for the cache key."""
    return "\n".join(f"{n}:{headers[n]}" for n in PROVIDER_KEY_HEADERS if n in headers)


def _key_sync(org_id: str, target: str, method: str, path: str, variant: str, body: bytes, d: CacheDirective,
              credential: str) -> str:
    h = hashlib.sha256()
    # every part length-prefixed: no two different requests can concatenate to the same input
    for part in (org_id.encode(), target.encode(), method.encode(), path.encode(), variant.encode(),
                 _canonical_body(body, d.ignore_keys), d.seed.encode(), credential.encode()):
        h.update(struct.pack(">Q", len(part)))
        h.update(part)
    return KEY_PREFIX + h.hexdigest()


async def cache_key(org_id: str, target: str, method: str, path: str, variant: str, body: bytes,
                    d: CacheDirective, credential: str = "") -> str:
    """The bucket key. `target` is the provider and its base URL, `path` includes the query,
    `variant` the accepted encodings (a gzip answer is never replayed to a caller that did not offer gzip)
    and `credential` the caller's provider key (`provider_key`)."""
    if len(body) > INLINE_JSON_BYTES:
        return await asyncio.to_thread(_key_sync, org_id, target, method, path, variant, body, d, credential)
    return _key_sync(org_id, target, method, path, variant, body, d, credential)


# ---- entries ----------------------------------------------------------------------------
_MAGIC = b"HCE1"
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass
class CachedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes]  # the body as the provider sent it, chunk by chunk

    def encode(self) -> bytes:
        out = [_MAGIC, _U16.pack(self.status), _U16.pack(len(self.headers))]
        for n, v in self.headers:
            out += [_U16.pack(len(n)), n, _U32.pack(len(v)), v]
        out.append(_U32.pack(len(self.chunks)))
        for c in self.chunks:
            out += [_U32.pack(len(c)), c]
        return b"".join(out)

    @classmethod
    def decode(cls, data: bytes) -> CachedResponse:
        """Raises ValueError on anything but a complete entry."""
        if data[:4] != _MAGIC:
            raise ValueError("not a cache entry")
        view, pos = memoryview(data), 4

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(data):
                raise ValueError("truncated cache entry")
            pos += n
            return bytes(view[pos - n:pos])

        (status,) = _U16.unpack(take(2))
        (nheaders,) = _U16.unpack(take(2))
        headers = []
        for _ in range(nheaders):
            name = take(_U16.unpack(take(2))[0])
            headers.append((name, take(_U32.unpack(take(4))[0])))
        chunks = [take(_U32.unpack(take(4))[0]) for _ in range(_U32.unpack(take(4))[0])]
        if pos != len(data):
            raise ValueError("trailing bytes in cache entry")
        return cls(status, headers, chunks)


class BodyRecorder:
    """Collects a response for the cache while it streams through; gives up past `limit` bytes."""

    __slots__ = ("chunks", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.chunks: list[bytes] | None = []

    def add(self, chunk: bytes) -> None:
        if self.chunks is not None:
            self.size += len(chunk)
            if self.size > self.limit:
                self.chunks = None  # too large to cache; the caller is served as usual
            else:
                self.chunks.append(chunk)


def stream_failed(content_type: str, body: bytes) -> bool:
    """Whether a decoded answer is an event stream carrying an error event: an answer the provider gave
    up on, not to be saved. Paid by saved answers only, once, after the answer; a plain search ahead of
    the pattern (which matches after a line break)."""
    if "text/event-stream" not in content_type or b"error" not in body:
        return False
    return _STREAM_ERROR.search(b"\n" + body) is not None


def storable(usage_format: str, content_type: str, encoding: str, chunks: list[bytes]) -> bool:
    """Whether a 2xx answer may be saved: whole as its usage format marks one (answer_whole: not cut
    short inside HTTP framing that ended cleanly) and, for a stream, without an error event."""
    body = b"".join(chunks) if not encoding else decode_body(b"".join(chunks), encoding)
    return not stream_failed(content_type, body) and answer_whole(usage_format, body, content_type)


# ---- stores -----------------------------------------------------------------------------
class CacheStore(Protocol):
    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...
    async def set(self, key: str, value: bytes, ttl: int) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


class MemoryCacheStore:
    """One process's cache: least recently used entries go first once `max_bytes` (keys and values)
    is reached."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        now = time.monotonic()
        out: list[bytes | None] = []
        for key in keys:
            item = self._entries.get(key)
            if item is not None and item[0] <= now:
                self._drop(key)
                item = None
            if item is not None:
                self._entries.move_to_end(key)
            out.append(item[1] if item is not None else None)
        return out

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        need = len(key) + len(value)
        if need > self.max_bytes:
            return
        self._drop(key)
        while self.size + need > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (time.monotonic() + ttl, value)
        self.size += need

    def _drop(self, key: str) -> None:
        item = self._entries.pop(key, None)
        if item is not None:
            self.size -= len(key) + len(item[1])

    def __len__(self) -> int:
        return len(self._entries)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()
        self.size = 0


def redis_client(url: str, timeout: float):
    """A redis-py asyncio client for a store the gateway may skip (the cache, rate limits)."""
    import redis.asyncio as redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    # no client-side retries: a failing store is skipped, the request is never held up by it
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0)


class RedisCacheStore:
    """A Redis (or Valkey) server shared by every gateway replica: MGET for a bucket, SET EX to save."""

    def __init__(self, url: str, timeout: float) -> None:
        self.client = redis_client(url, timeout)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self.client.mget(keys)

    async def set(self, key: str, value: bytes, ttl: int) -> None:
        await self.client.set(key, value, ex=ttl)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()


# ---- the cache as the gateway uses it ----------------------------------------------------
@dataclass
class Lookup:
    key: str
    hit: CachedResponse | None
    slot: int  # the bucket slot answered from (HIT) or to save into (MISS); -1: nothing to save


class ResponseCache:
    def __init__(self, store: CacheStore, timeout: float, max_entry_bytes: int, metrics) -> None:
        self.store = store
        self.timeout = timeout
        self.max_entry_bytes = max_entry_bytes
        self.m_lookups = metrics.counter("helicone_gateway_cache_lookups_total",
                                         "Response cache lookups by result (a store error counts as a miss)", ("result",))
        self.m_errors = metrics.counter("helicone_gateway_cache_errors_total",
                                        "Response cache store calls that failed or timed out (skipped)", ("op",))
        self._saving = OffPathWrites(timeout, self.m_errors.labels("write").inc, "cache write")
        self._checking: set[asyncio.Task] = set()  # large answers being checked on a worker thread before their save

    async def lookup(self, key: str, d: CacheDirective) -> Lookup:
        """Reads the bucket when the request may read; on a miss, picks the free slot to save into."""
        if not d.read and d.bucket_size == 1:
            return Lookup(key, None, 0)  # save only, one slot: nothing to read
        slots = [f"{key}:{i}" for i in range(d.bucket_size)]
        try:
            found = await wait_for(self.store.get_many(slots), self.timeout)
        except Exception as exc:  # down, slow or broken: skipped, never the caller's problem
            self.m_errors.labels("read").inc()
            log.warning("cache read skipped: %s", exc.__class__.__name__)
            if d.read:
                self.m_lookups.labels("miss").inc()
            return Lookup(key, None, 0 if d.save else -1)
        filled = [i for i, v in enumerate(found) if v is not None]
        if d.read and len(filled) == d.bucket_size:
            slot = random.choice(filled)
            try:
                hit = CachedResponse.decode(found[slot])
            except ValueError:
                self.m_errors.labels("decode").inc()
            else:
                self.m_lookups.labels("hit").inc()
                return Lookup(key, hit, slot)
        if d.read:
            self.m_lookups.labels("miss").inc()
        free = next((i for i, v in enumerate(found) if v is None), random.randrange(d.bucket_size))
        return Lookup(key, None, free if d.save else -1)

    def save(self, lookup: Lookup, entry: CachedResponse, ttl: int, usage_format: str, content_type: str,
             encoding: str) -> None:
        """Stores a 2xx answer in the background (off the request's task), bounded by the timeout, unless
        it is not `storable` (cut short, or a stream with an error event): that is checked here, once,
        on a worker thread for an answer larger than INLINE_JSON_BYTES."""
        if sum(map(len, entry.chunks)) > INLINE_JSON_BYTES:
            task = asyncio.get_running_loop().create_task(self._save_checked(lookup, entry, ttl, usage_format,
                                                                              content_type, encoding))
            self._checking.add(task)
            task.add_done_callback(self._checking.discard)
        elif storable(usage_format, content_type, encoding, entry.chunks):
            self._store(lookup, entry, ttl)

    async def _save_checked(self, lookup: Lookup, entry: CachedResponse, ttl: int, usage_format: str,
                            content_type: str, encoding: str) -> None:
        if await asyncio.to_thread(storable, usage_format, content_type, encoding, entry.chunks):
            self._store(lookup, entry, ttl)

    def _store(self, lookup: Lookup, entry: CachedResponse, ttl: int) -> None:
        data = entry.encode()
        if len(data) > self.max_entry_bytes:
            return
        self._saving.start(self.store.set(f"{lookup.key}:{lookup.slot}", data, ttl))

    async def flush(self) -> None:
        """Waits for saves in flight (shutdown, tests)."""
        while self._checking:
            await asyncio.gather(*list(self._checking), return_exceptions=True)
        await self._saving.flush()

    async def close(self) -> None:
        await self.flush()
        await self.store.close()


def replay_headers(entry: CachedResponse) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in entry.headers if n not in NOT_REPLAYED]
