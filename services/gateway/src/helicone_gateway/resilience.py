"""Retries (Helicone-Retry-*) and fallbacks (Helicone-Fallbacks): what the headers say and the
backoff they ask for. The gateway's send loop (Gateway._send_resilient) applies them; requests
without these headers never reach this module.

Helicone-Fallbacks follows Helicone's format: a JSON list of targets tried in order, each
`{"target-url": ..., "headers": {...}, "onCodes": [...], "bodyKeyOverride": {...}}`. As extensions,
"target-url" may be left out (the request's own destination) and "provider" names how the target
is spoken to when it differs from the request's.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
from dataclasses import dataclass
from typing import Any

from helicone_core.events import PROVIDERS
from helicone_core.jsontext import json_object

RETRY_PREFIX = "helicone-retry-"
RETRY_ENABLED = "Helicone-Retry-Enabled"
RETRY_NUM = "Helicone-Retry-Num"
RETRY_FACTOR = "Helicone-Retry-Factor"
RETRY_MIN_TIMEOUT = "Helicone-Retry-Min-Timeout"
RETRY_MAX_TIMEOUT = "Helicone-Retry-Max-Timeout"
RETRY_HEADERS = {h.lower(): h for h in (RETRY_ENABLED, RETRY_NUM, RETRY_FACTOR, RETRY_MIN_TIMEOUT, RETRY_MAX_TIMEOUT)}
FALLBACKS = "Helicone-Fallbacks"
# Response header: which target of Helicone-Fallbacks answered (0 = the first, the primary).
FALLBACK_INDEX_HEADER = b"helicone-fallback-index"

# Helicone's defaults (docs.helicone.ai, "Retries"): 5 retries, factor 2, 1 s to 10 s between tries.
DEFAULT_RETRIES, DEFAULT_FACTOR, DEFAULT_MIN_MS, DEFAULT_MAX_MS = 5, 2.0, 1000, 10000
# Helicone documents no bounds; these keep one request from holding a connection for minutes.
MAX_RETRIES = 10
MAX_FACTOR = 10.0
MAX_TIMEOUT_MS = 60000
MAX_FALLBACKS = 10
MAX_FALLBACK_HEADERS = 32
JITTER = 0.25  # a wait is stretched by up to 25% (never past the max timeout) so callers do not retry in step

_INT = re.compile(r"[0-9]{1,9}")
_FLOAT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Never taken from a fallback's "headers": hop-by-hop and framing headers are the gateway's own.
_NOT_OVERRIDABLE = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
                              "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length"})


class ResilienceError(ValueError):
    """A Helicone-Retry-* or Helicone-Fallbacks value the gateway cannot accept (a 400)."""


def retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = DEFAULT_RETRIES  # tries after the first, per target
    factor: float = DEFAULT_FACTOR
    min_ms: int = DEFAULT_MIN_MS
    max_ms: int = DEFAULT_MAX_MS

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 = the first retry): min * factor^(retry-1)
        plus jitter, at least the provider's Retry-After, never above the max timeout."""
        base = self.min_ms * self.factor ** (retry - 1)
        wait = base * (1 + JITTER * random.random())
        if retry_after is not None:
            wait = max(wait, retry_after * 1000)
        return min(wait, self.max_ms) / 1000


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from `now` (epoch seconds): delta-seconds or an HTTP date; None if
    absent or unreadable (then the backoff alone decides)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²", which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a year or offset past a C int
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def parse_retry(values: dict[str, str]) -> RetryPolicy | None:
    """values: Helicone-Retry-* headers as sent (lower-case names). None unless
    Helicone-Retry-Enabled is true; the other values are checked either way."""
    for name in values:
        if name not in RETRY_HEADERS:
            raise ResilienceError(f"unknown header {name!r}; retry headers are {', '.join(RETRY_HEADERS.values())}")

    def number(name: str, pattern: re.Pattern, lo: float, hi: float, form: str, default: float) -> float:
        raw = values.get(name.lower())
        if raw is None:
            return default
        if not pattern.fullmatch(raw) or not lo <= float(raw) <= hi:
            raise ResilienceError(f"{name} must be {form}, got {raw[:40]!r}")
        return float(raw)

    enabled_raw = values.get(RETRY_ENABLED.lower())
    if enabled_raw is not None and enabled_raw.lower() not in ("true", "false"):
        raise ResilienceError(f"{RETRY_ENABLED} must be 'true' or 'false', got {enabled_raw[:40]!r}")
    retries = int(number(RETRY_NUM, _INT, 0, MAX_RETRIES, f"a whole number of retries from 0 to {MAX_RETRIES}",
                         DEFAULT_RETRIES))
    factor = number(RETRY_FACTOR, _FLOAT, 1, MAX_FACTOR, f"a number from 1 to {MAX_FACTOR:g} (e.g. 2 or 1.5)",
                    DEFAULT_FACTOR)
    ms = f"whole milliseconds from 0 to {MAX_TIMEOUT_MS}"
    min_ms = int(number(RETRY_MIN_TIMEOUT, _INT, 0, MAX_TIMEOUT_MS, ms, DEFAULT_MIN_MS))
    max_ms = int(number(RETRY_MAX_TIMEOUT, _INT, 0, MAX_TIMEOUT_MS, ms, DEFAULT_MAX_MS))
    if min_ms > max_ms:
        raise ResilienceError(f"{RETRY_MIN_TIMEOUT} ({min_ms} ms) is above {RETRY_MAX_TIMEOUT} ({max_ms} ms"
                              f"{', the default' if RETRY_MAX_TIMEOUT.lower() not in values else ''})")
    if enabled_raw is None or enabled_raw.lower() != "true":
        return None
    return RetryPolicy(retries, factor, min_ms, max_ms)


@dataclass(frozen=True, slots=True)
class FallbackTarget:
    target_url: str  # absolute http(s) base URL; "" = the request's own destination
    provider: str  # "" = the request's provider
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value), replacing the caller's of that name
    on_codes: tuple[tuple[int, int], ...]  # inclusive status ranges that move on to the next target
    body_override: dict[str, Any] | None  # merged into the JSON request body

    def falls_back_on(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.on_codes)


FALLBACK_FORM = ('a JSON list of targets, e.g. [{"target-url": "https://api.openai.com", "headers": {}, '
                 '"onCodes": [429, {"from": 500, "to": 599}]}, {"target-url": "https://other.example", '
                 '"headers": {"Authorization": "Bearer sk-..."}, "onCodes": [], "bodyKeyOverride": {"model": "gpt-4o"}}]')
_KEYS = ("target-url", "provider", "headers", "onCodes", "bodyKeyOverride")


def parse_fallbacks(value: str, check_url) -> tuple[FallbackTarget, ...]:
    """Helicone-Fallbacks; check_url(url, where) validates a target URL (the Helicone-Target-URL rules)
    and returns it normalized, raising ValueError naming `where`."""
    try:
        items = json.loads(value)
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list) or not items:
        raise ResilienceError(f"{FALLBACKS} must be {FALLBACK_FORM}")
    if len(items) > MAX_FALLBACKS:
        raise ResilienceError(f"{FALLBACKS} has {len(items)} targets; at most {MAX_FALLBACKS} are allowed")
    return tuple(_target(item, i, check_url) for i, item in enumerate(items))


def _target(item: Any, i: int, check_url) -> FallbackTarget:
    where = f"{FALLBACKS}[{i}]"
    if not isinstance(item, dict):
        raise ResilienceError(f"{where} must be a JSON object with keys {', '.join(_KEYS)}")
    unknown = [k for k in item if k not in _KEYS]
    if unknown:
        raise ResilienceError(f"{where} has unknown key {unknown[0][:40]!r}; keys are {', '.join(_KEYS)}")
    url = item.get("target-url", "")
    if not isinstance(url, str):
        raise ResilienceError(f'{where}."target-url" must be a string (an absolute http(s) URL)')
    if url:
        try:
            url = check_url(url, f'{where}."target-url"')
        except ValueError as exc:
            raise ResilienceError(str(exc)) from None
    provider = item.get("provider", "")
    if provider and provider not in PROVIDERS:
        raise ResilienceError(f'{where}."provider" must be one of {", ".join(PROVIDERS)}, got {str(provider)[:40]!r}')
    return FallbackTarget(url, provider, _headers(item.get("headers", {}), where), _codes(item.get("onCodes", []), where),
                          _override(item.get("bodyKeyOverride"), where))


def _headers(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise ResilienceError(f'{where}."headers" must be a JSON object of header names to string values')
    if len(raw) > MAX_FALLBACK_HEADERS:
        raise ResilienceError(f'{where}."headers" has more than {MAX_FALLBACK_HEADERS} headers')
    out = []
    for name, value in raw.items():
        lower = name.lower()
        if not _TOKEN.fullmatch(name):
            raise ResilienceError(f'{where}."headers": {name[:40]!r} is not a valid header name')
        if lower.startswith("helicone-") or lower in _NOT_OVERRIDABLE:
            raise ResilienceError(f'{where}."headers": {name[:40]!r} cannot be set per target '
                                  "(Helicone-*, hop-by-hop, Host and Content-Length are the gateway's)")
        if not isinstance(value, str) or _CONTROL.search(value):
            raise ResilienceError(f'{where}."headers": the value of {name[:40]!r} must be a string without control characters')
        out.append((lower, value))
    return tuple(out)


def _codes(raw: Any, where: str) -> tuple[tuple[int, int], ...]:
    form = f'{where}."onCodes" must be a list of status codes (100-599) and ranges like {{"from": 500, "to": 599}}'
    if not isinstance(raw, list):
        raise ResilienceError(form)
    out = []
    for code in raw:
        if isinstance(code, dict) and set(code) == {"from", "to"}:
            lo, hi = code["from"], code["to"]
        else:
            lo = hi = code
        if not all(type(x) is int and 100 <= x <= 599 for x in (lo, hi)) or lo > hi:
            raise ResilienceError(f"{form}; got {json.dumps(code)[:60]}")
        out.append((lo, hi))
    return tuple(out)


def _override(raw: Any, where: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ResilienceError(f'{where}."bodyKeyOverride" must be a JSON object merged into the request body, '
                              'e.g. {"model": "gpt-4o"}')
    return raw


def merge_body(body: bytes, override: dict[str, Any], where: str) -> bytes:
    """The JSON object body with `override` merged in (objects merge key by key, anything else
    replaces); ResilienceError when the body is not a JSON object."""
    doc = json_object(body)
    if doc is None:
        raise ResilienceError(f'{where}."bodyKeyOverride" needs a JSON object request body')
    return json.dumps(_merge(doc, override), separators=(",", ":")).encode()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out

