"""Webhook delivery: a signed JSON POST to a URL an org chose. The api's alert notifications
(helicone_api.alerts) and ingest's per-request webhooks (helicone_ingest.request_webhooks) both send with it.

An org chooses the webhook URL, so the sender only connects to public addresses (the same
classification as the gateway's Target-URL guard, helicone_core.addresses); the operator settings
HELICONE_ALERT_WEBHOOK_ALLOW_LOOPBACK (api) and HELICONE_WEBHOOK_ALLOW_LOOPBACK (ingest) also open
loopback (tests, a single box). The check runs in
the connector's socket factory on the address actually connected to (after DNS, for names and IP
literals alike), so a name that resolves, or later re-resolves, to a private address is refused.
Redirects are not followed.

Each delivery gets `attempts` tries, `timeout` seconds each, with backoff between them: a
connection error, a timeout, 429 and 5xx are tried again; another 4xx, a 3xx and a refused address
are final. An alert notification is signed `Helicone-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
"<t>.<body>" keyed with the rule's secret>` (sign); a per-request webhook as Helicone signs it, the hex
HMAC-SHA256 of the body keyed with the webhook's HMAC key (sign_body).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import socket
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Annotated
from urllib.parse import urlsplit

import aiohttp
from pydantic import AfterValidator
from yarl import URL

from helicone_core.addresses import LOOPBACK, REASONS, classify, host_name_problem, noncanonical_ipv4

SIGNATURE_HEADER = "Helicone-Signature"
ALERT_ID_HEADER = "Helicone-Alert-Id"
EVENT_ID_HEADER = "Helicone-Alert-Event-Id"
MAX_URL_CHARS = 2048
URL_FORM = "an http:// or https:// URL with a host, without user:password@ (at most 2048 characters)"

# Delivery results: the history's `delivery.result` and the notifications metric's `result` label.
DELIVERED, FAILED, REFUSED = "delivered", "failed", "refused"
DELIVERY_RESULTS = (DELIVERED, FAILED, REFUSED)

AddrInfo = tuple[int, int, int, str, tuple]


@dataclass(frozen=True)
class Delivery:
    result: str  # one of DELIVERY_RESULTS
    attempts: int
    status: int | None = None  # the webhook's last HTTP status, if it answered
    error: str | None = None  # why it was not delivered

    def to_json(self) -> dict:
        return {"result": self.result, "attempts": self.attempts, "status": self.status, "error": self.error}


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Helicone-Signature header value of `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def sign_body(secret: str, body: bytes) -> str:
    """Helicone's per-request webhook signature: the hex HMAC-SHA256 of `body` keyed with `secret`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sign_timestamped(secret: str, body: bytes) -> str:
    """sign() of `body` sent now."""
    return sign(secret, int(time.time()), body)


def url_shape_problem(url: str) -> str | None:
    """What is wrong with a webhook URL's form (scheme, host, credentials), or None."""
    if len(url) > MAX_URL_CHARS:
        return f"is longer than {MAX_URL_CHARS} characters"
    try:
        url.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"must be valid Unicode text: {url[exc.start]!r} at position {exc.start} is a lone surrogate"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        return f"is not a URL ({exc}); expected {URL_FORM}"
    if parts.scheme not in ("http", "https"):
        return f"must be {URL_FORM}"
    if not parts.hostname:
        return f"has no host; expected {URL_FORM}"
    if parts.username is not None or parts.password is not None:
        return "must not carry user:password@ (it would be shown to everyone who can read the rule); sign with the rule's secret instead"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "must not contain spaces or control characters"
    if noncanonical_ipv4(parts.hostname):
        return "has an IPv4 address in a non-standard form as its host; write it as four decimal numbers a.b.c.d"
    problem = host_name_problem(parts.hostname)
    if problem:
        return f"host {problem}"
    return None


def checked_url(url: str) -> str:
    """A webhook URL of a valid form (url_shape_problem), else a ValueError naming what is wrong: the validator of every
    api model that takes one (WebhookUrl)."""
    problem = url_shape_problem(url)
    if problem:
        raise ValueError(problem)
    return url


# A webhook URL field of an api model (alert rules, per-request webhooks)
WebhookUrl = Annotated[str, AfterValidator(checked_url)]


# Why addresses were refused during the current delivery (the socket factory runs in subtasks of the
# delivery's task, which copy this context: the list itself is shared).
_REFUSED: ContextVar[list[str] | None] = ContextVar("helicone_webhook_refused", default=None)


class AddressRefused(OSError):
    """Raised by the socket factory instead of opening a socket to a refused address."""


def _open_socket(addr_info: AddrInfo) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


class WebhookSender:
    def __init__(self, *, allow_loopback: bool, timeout: float, attempts: int, backoff: float = 0.5,
                 resolver: aiohttp.abc.AbstractResolver | None = None,
                 open_socket: Callable[[AddrInfo], socket.socket] | None = None) -> None:
        self.allow_loopback = allow_loopback
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._resolver = resolver  # tests: a fake DNS
        self._open_socket = open_socket  # tests: a recorder, so nothing leaves this process
        self._session: aiohttp.ClientSession | None = None

    def refusal(self, ip: str) -> str | None:
        """Why the sender will not connect to `ip` (a key of helicone_core.addresses.REASONS), or None."""
        label = classify(ip)
        if label == LOOPBACK and self.allow_loopback:
            return None
        return label

    def url_problem(self, url: str) -> str | None:
        """What makes `url` unusable as a webhook (its form, or an IP literal host that is refused), or None.
        A name's addresses are checked when connecting."""
        problem = url_shape_problem(url)
        if problem:
            return problem
        host = urlsplit(url).hostname or ""
        try:
            ip = ip_address(host)
        except ValueError:
            return None
        reason = self.refusal(str(ip))
        if reason:
            return f"points at {REASONS[reason]}; webhooks go to public addresses only"
        return None

    def _socket_factory(self, addr_info: AddrInfo) -> socket.socket:
        ip = addr_info[4][0]
        reason = self.refusal(ip)
        if reason is not None:
            refused = _REFUSED.get()
            if refused is not None:
                refused.append(REASONS[reason])  # never the address: the rule's owner gets no map of the api's network
            raise AddressRefused(errno.EACCES, f"webhook address refused: {REASONS[reason]}")
        return (self._open_socket or _open_socket)(addr_info)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(socket_factory=self._socket_factory, resolver=self._resolver,
                                         use_dns_cache=False, limit=100)
        # trust_env=False: no proxy from the environment, the address check must see the real peer
        self._session = aiohttp.ClientSession(connector=connector, trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, url: str, body: bytes, secret: str, headers: dict[str, str] | None = None,
                   signer: Callable[[str, bytes], str] = sign_timestamped) -> Delivery:
        """POSTs `body` (JSON) to `url`, signed with `secret` by `signer` (each attempt); never raises."""
        problem = self.url_problem(url)
        if problem:
            return Delivery(REFUSED, 0, error=f"webhook_url {problem}")
        assert self._session is not None, "WebhookSender.start() was not called"
        refused: list[str] = []
        token = _REFUSED.set(refused)
        try:
            return await self._send(url, body, secret, headers or {}, refused, signer)
        finally:
            _REFUSED.reset(token)

    async def _send(self, url: str, body: bytes, secret: str, headers: dict[str, str], refused: list[str],
                    signer: Callable[[str, bytes], str]) -> Delivery:
        status = error = None
        attempt = 0
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 2))
            refused.clear()
            all_headers = {**headers, "Content-Type": "application/json", SIGNATURE_HEADER: signer(secret, body)}
            try:
                async with self._session.post(url, data=body, headers=all_headers, allow_redirects=False,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    # the status is the answer: the body (of the webhook's choosing: endless, or huge) is
                    # never read, and a connection whose body is left unread is closed, not reused
                    status = resp.status
            except TimeoutError:
                status, error = None, f"no answer within {self.timeout:g}s"
                continue
            except aiohttp.ClientError as exc:
                if refused:
                    return Delivery(REFUSED, attempt, error=f"webhook_url host resolves to {' and '.join(dict.fromkeys(refused))}; "
                                                            "webhooks go to public addresses only")
                status, error = None, f"could not connect: {type(exc).__name__}: {_without_path(str(exc), url)}"[:500]
                continue
            if 200 <= status < 300:
                return Delivery(DELIVERED, attempt, status)
            error = f"the webhook answered {status}"
            if status != 429 and status < 500:
                break  # the webhook refused this notification: trying again would not change that
        return Delivery(FAILED, attempt, status, error)


def _without_path(text: str, url: str) -> str:
    """`text` with `url` (as given, or as aiohttp's yarl writes it) cut to its origin: a chat webhook's secret is its
    path or query, and some aiohttp errors repeat the whole URL (the error is logged and kept in the rule's history)."""
    try:
        parsed = URL(url)
        origin = str(parsed.origin())
    except ValueError:
        return text
    for written in dict.fromkeys((url, str(parsed))):
        text = text.replace(written, origin + "/…")
    return text
