"""Per-request rate limits (Helicone's Helicone-RateLimit-Policy header).

`<quota>;w=<seconds>[;u=request|cents][;s=user|<property name>]` asks for a token bucket of `quota`
tokens that refills continuously at quota/w per second (Helicone's own semantics: a full bucket
allows a burst of `quota`, after which requests are let through at the refill rate). A bucket
belongs to one org + policy + segment value (the Helicone-User-Id, or a Helicone-Property-<name>),
so orgs, policies and users never share one.

u=request takes one token before the request is forwarded; a request finding less than one is
answered 429. u=cents cannot know the cost upfront: a request is let through while the bucket holds
anything, and the cost the log event computes is charged after the answer, off the request path
(the bucket may go negative, refusing what follows until it refills).

Stores: `MemoryRateLimitStore` (one process) or `RedisRateLimitStore` (one Lua script per decision:
atomic across every replica sharing the Redis, on the Redis server's clock). Store calls are bounded
by the same short timeout as the cache's; a store that fails or is slow lets the request through
(fail-open, counted), never an error for the caller. Requests without the header never reach this module.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import re
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from helicone_core.cancellation import wait_for

from .headers import HeaderError, HeliconeHeaders
from .offpath import OffPathWrites

log = logging.getLogger("helicone.gateway.ratelimit")

# Request header, echoed (in canonical form) on answers
POLICY_HEADER = "Helicone-RateLimit-Policy"
# Response headers (Helicone's names)
LIMIT_HEADER = "Helicone-RateLimit-Limit"
REMAINING_HEADER = "Helicone-RateLimit-Remaining"
RESET_HEADER = "Helicone-RateLimit-Reset"
_POLICY_B, _LIMIT_B = POLICY_HEADER.lower().encode(), LIMIT_HEADER.lower().encode()
_REMAINING_B, _RESET_B = REMAINING_HEADER.lower().encode(), RESET_HEADER.lower().encode()

REQUEST, CENTS = "request", "cents"
USER = "user"
MIN_WINDOW = 60
MAX_WINDOW = 365 * 24 * 3600
MAX_QUOTA = 10**12
FORM = "'<quota>;w=<seconds>[;u=request|cents][;s=user|<property name>]', e.g. '100;w=60' or '500;w=86400;s=user'"
# re.ASCII: digits are 0-9 only (not Arabic-Indic or fullwidth ones), and no Kelvin sign passes for a k
_GRAMMAR = re.compile(r"(\d{1,15}(?:\.\d{1,9})?);w=(\d{1,12})(?:;u=([a-z]+))?(?:;s=([A-Za-z0-9_-]{1,128}))?",
                      re.IGNORECASE | re.ASCII)
KEY_PREFIX = "helicone:ratelimit:v1:"
MAX_EXPIRY_MS = 10 * MAX_WINDOW * 1000

# Store modes: take one request token, check that a cents budget is left, charge a cost after the answer.
TAKE, CHECK, CHARGE = "take", "check", "charge"


@dataclass(frozen=True)
class RateLimitPolicy:
    quota: float
    window: int  # seconds
    unit: str  # REQUEST or CENTS
    segment: str  # "" (the whole org), USER, or a property name (lower case)
    text: str  # canonical form, echoed in Helicone-RateLimit-Policy

    @property
    def rate(self) -> float:
        """Tokens refilled per second."""
        return self.quota / self.window


@dataclass(frozen=True)
class RateLimitRequest:
    """A request's policy and the segment value its bucket is for."""

    policy: RateLimitPolicy
    segment_value: str


def parse_policy(value: str) -> RateLimitPolicy:
    """A Helicone-RateLimit-Policy value; raises HeaderError naming the header and the accepted form."""
    m = _GRAMMAR.fullmatch(value.strip())
    if m is None:
        raise HeaderError(f"{POLICY_HEADER} must be {FORM}; got {value[:80]!r}")
    quota_text, window_text, unit, segment = m.groups()
    unit = (unit or REQUEST).lower()
    if unit not in (REQUEST, CENTS):
        raise HeaderError(f"{POLICY_HEADER} unit u= must be 'request' or 'cents', got {m.group(3)[:40]!r}")
    quota = Decimal(quota_text)
    if quota <= 0 or quota > MAX_QUOTA:
        raise HeaderError(f"{POLICY_HEADER} quota must be more than 0 and at most {MAX_QUOTA}, got {quota_text!r}")
    if unit == REQUEST and quota != quota.to_integral_value():
        raise HeaderError(f"{POLICY_HEADER} quota counts requests (u=request): a whole number, got {quota_text!r}")
    window = int(window_text)
    if not MIN_WINDOW <= window <= MAX_WINDOW:
        raise HeaderError(f"{POLICY_HEADER} window w= must be from {MIN_WINDOW} to {MAX_WINDOW} seconds, got {window_text!r}")
    segment = (segment or "").lower()
    quota_canon = format(quota.normalize(), "f")
    text = f"{quota_canon};w={window}" + (f";u={unit}" if unit != REQUEST else "") + (f";s={segment}" if segment else "")
    return RateLimitPolicy(float(quota), window, unit, segment, text)


def rate_limit_request(value: str, hh: HeliconeHeaders) -> RateLimitRequest:
    """The policy and its segment value; raises HeaderError when the policy is bad or the header
    naming its segment is missing (such a request is refused rather than left unlimited)."""
    policy = parse_policy(value)
    if policy.segment == USER:
        if not hh.user_id:
            raise HeaderError(f"{POLICY_HEADER} with s=user needs a Helicone-User-Id header (the user the quota is for)")
        return RateLimitRequest(policy, hh.user_id)
    if policy.segment:
        found = hh.properties.get(policy.segment, "")
        if not found:
            raise HeaderError(f"{POLICY_HEADER} with s={policy.segment} needs a Helicone-Property-{policy.segment} "
                              "header (the value the quota is for)")
        return RateLimitRequest(policy, found)
    return RateLimitRequest(policy, "")


def bucket_key(org_id: str, req: RateLimitRequest) -> str:
    h = hashlib.sha256()
    # length-prefixed parts: no two different (org, policy, segment value) concatenate to the same input
    for part in (org_id.encode(), req.policy.text.encode(), req.segment_value.encode()):
        h.update(struct.pack(">Q", len(part)))
        h.update(part)
    return KEY_PREFIX + h.hexdigest()


# ---- stores -----------------------------------------------------------------------------
class RateLimitStore(Protocol):
    async def take(self, key: str, quota: float, window: int, cost: float, mode: str, org: str = "") -> tuple[bool, float]:
        """(allowed, tokens left) after a TAKE, CHECK or CHARGE on the bucket (created full) of `org`."""
        ...

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def _decide(tokens: float, cost: float, mode: str) -> tuple[bool, float, bool]:
    """(allowed, tokens after, changed): one rule for both stores (the Lua script mirrors it)."""
    if mode == CHECK:
        return tokens > 0, tokens, False
    if mode == TAKE:
        return (True, tokens - cost, True) if tokens >= cost else (False, tokens, False)
    return True, tokens - cost, True  # CHARGE: the cost is already spent; the bucket may go negative


class MemoryRateLimitStore:
    """One process's buckets, at most `max_buckets`. A new bucket past the bound takes the place of one
    that has refilled since it was last charged (forgetting it changes nothing: it would start full
    again), or, when none has, of the least recently charged one of the org holding the most buckets:
    an org making buckets by the thousand (distinct users or property values) resets its own, never
    the spent bucket of an org holding fewer."""

    def __init__(self, max_buckets: int = 100_000) -> None:
        self.max_buckets = max_buckets
        self._buckets: dict[str, tuple[float, float, float, str]] = {}  # key -> (tokens, monotonic time, full at, org)
        self._by_org: dict[str, OrderedDict[str, None]] = {}  # org -> its keys, least recently charged first
        # heap of (full at, key) per bucket as created: a charge only moves its full time later, so an
        # entry is looked at again (and moved) when it is due, not on every charge
        self._refills: list[tuple[float, str]] = []
        self._warned = False

    async def take(self, key: str, quota: float, window: int, cost: float, mode: str, org: str = "") -> tuple[bool, float]:
        now = time.monotonic()
        state = self._buckets.get(key)
        tokens = quota if state is None else min(quota, state[0] + (now - state[1]) * quota / window)
        allowed, tokens, changed = _decide(tokens, cost, mode)
        if changed:
            full_at = now + (quota - tokens) * window / quota
            if state is None:
                if len(self._buckets) >= self.max_buckets:
                    self._make_room(now)
                heapq.heappush(self._refills, (full_at, key))
            else:
                org = state[3]
            self._buckets[key] = (tokens, now, full_at, org)
            # mostly forgotten buckets: rebuilt, once this one is among the buckets (else it would never be found refilled)
            if state is None and len(self._refills) > 2 * len(self._buckets) + 1024:
                self._refills = [(b[2], k) for k, b in self._buckets.items()]
                heapq.heapify(self._refills)
            keys = self._by_org.get(org)
            if keys is None:
                keys = self._by_org[org] = OrderedDict()
            keys[key] = None
            keys.move_to_end(key)
        return allowed, tokens

    def _make_room(self, now: float) -> None:
        refills = self._refills
        while refills and refills[0][0] <= now:
            key = heapq.heappop(refills)[1]
            state = self._buckets.get(key)
            if state is not None and state[2] <= now:
                self._forget(key, state[3])
                return
            if state is not None:  # charged since: due again when it is really full
                heapq.heappush(refills, (state[2], key))
        org = max(self._by_org, key=lambda o: len(self._by_org[o]))  # O(orgs), only while none has refilled
        if not self._warned:
            self._warned = True
            log.warning("rate limit store full (%d buckets, none refilled): forgetting the least recently charged "
                        "buckets of the org holding the most (%s), which start full again; set HELICONE_REDIS_URL "
                        "to keep buckets in Redis", self.max_buckets, org)
        self._forget(next(iter(self._by_org[org])), org)

    def _forget(self, key: str, org: str) -> None:
        del self._buckets[key]
        keys = self._by_org[org]
        del keys[key]
        if not keys:
            del self._by_org[org]

    def __len__(self) -> int:
        return len(self._buckets)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._buckets.clear()
        self._by_org.clear()
        self._refills.clear()


# One round trip, atomic: refill from the Redis server's clock (replicas' clocks never matter), decide,
# write only when tokens were taken. The key expires once the bucket would be full again (at most
# MAX_EXPIRY_MS: a bucket overspent by far more than its quota is forgotten then, not kept for ever).
TOKEN_BUCKET_LUA = """
local quota = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2]) * 1000
local cost = tonumber(ARGV[3])
local mode = ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = quota
elseif now > at then
  tokens = math.min(quota, tokens + (now - at) * quota / window_ms)
end
local allowed = 1
local changed = false
if mode == 'check' then
  if tokens <= 0 then allowed = 0 end
elseif mode == 'take' then
  if tokens >= cost then tokens = tokens - cost; changed = true else allowed = 0 end
else
  tokens = tokens - cost; changed = true
end
if changed then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%d', now))
  local ttl = math.min(math.ceil((quota - tokens) * window_ms / quota) + 1000, tonumber(ARGV[5]))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
end
return {allowed, string.format('%.17g', tokens)}
"""


class RedisRateLimitStore:
    """Buckets in a Redis (or Valkey) server shared by every replica: EVALSHA of TOKEN_BUCKET_LUA
    (loaded again by the client when the server answers NOSCRIPT, e.g. after a restart)."""

    def __init__(self, url: str, timeout: float) -> None:
        from .cache import redis_client

        self.client = redis_client(url, timeout)
        self.script = self.client.register_script(TOKEN_BUCKET_LUA)

    async def take(self, key: str, quota: float, window: int, cost: float, mode: str, org: str = "") -> tuple[bool, float]:
        allowed, tokens = await self.script(keys=[key], args=[repr(quota), window, repr(cost), mode, MAX_EXPIRY_MS])
        return allowed == 1, float(tokens)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()


# ---- the limiter as the gateway uses it -------------------------------------------------
@dataclass(frozen=True)
class Decision:
    allowed: bool
    headers: tuple[tuple[bytes, bytes], ...]  # Helicone-RateLimit-* for the answer, allowed or not
    retry_after: int = 0  # seconds (refused answers only)


class RateLimiter:
    def __init__(self, store: RateLimitStore, timeout: float, metrics) -> None:
        self.store = store
        self.timeout = timeout
        self.m_decisions = metrics.counter(
            "helicone_gateway_ratelimit_decisions_total",
            "Helicone-RateLimit-Policy decisions (failed_open: the store failed or was slow, the request went on)",
            ("result",))
        self.m_errors = metrics.counter(
            "helicone_gateway_ratelimit_errors_total", "Rate-limit store calls that failed or timed out (skipped)", ("op",))
        self._charging = OffPathWrites(timeout, self.m_errors.labels("charge").inc, "rate limit charge")

    async def check(self, org_id: str, req: RateLimitRequest) -> Decision:
        """Takes a request token (u=request) or checks a budget is left (u=cents), bounded by the timeout."""
        p = req.policy
        mode, cost = (TAKE, 1.0) if p.unit == REQUEST else (CHECK, 0.0)
        try:
            allowed, tokens = await wait_for(
                self.store.take(bucket_key(org_id, req), p.quota, p.window, cost, mode, org_id), self.timeout)
        except Exception as exc:  # down, slow or broken: the request goes on, never the caller's problem
            self.m_errors.labels("check").inc()
            self.m_decisions.labels("failed_open").inc()
            log.warning("rate limit check skipped: %s", exc.__class__.__name__)
            return Decision(True, ((_POLICY_B, p.text.encode()),))
        self.m_decisions.labels("allowed" if allowed else "limited").inc()
        reset = math.ceil((p.quota - tokens) / p.rate) if tokens < p.quota else 0
        headers = [(_LIMIT_B, _number(p.quota)), (_REMAINING_B, str(max(0, math.floor(tokens))).encode()),
                   (_POLICY_B, p.text.encode())]
        if reset > 0:  # as Helicone: absent while the bucket is full
            headers.append((_RESET_B, str(reset).encode()))
        retry_after = 0
        if not allowed:  # until one request token, or any cents budget, is back
            retry_after = max(1, math.ceil(((1.0 if p.unit == REQUEST else 0.0) - tokens) / p.rate))
        return Decision(allowed, tuple(headers), retry_after)

    def charge(self, org_id: str, req: RateLimitRequest, cents: float) -> None:
        """Charges a u=cents bucket in the background (off the request's task), bounded by the timeout."""
        if cents <= 0:
            return
        p = req.policy
        self._charging.start(self.store.take(bucket_key(org_id, req), p.quota, p.window, cents, CHARGE, org_id))

    async def flush(self) -> None:
        """Waits for charges in flight (shutdown, tests)."""
        await self._charging.flush()

    async def close(self) -> None:
        await self.flush()
        await self.store.close()


def _number(x: float) -> bytes:
    return (str(int(x)) if x.is_integer() else format(Decimal(repr(x)).normalize(), "f")).encode()
