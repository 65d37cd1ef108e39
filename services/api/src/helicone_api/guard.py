"""The api's front door, as raw ASGI middleware: header limits, auth and the body limit are checked
before the app receives a single body byte, so an unauthenticated or oversized upload costs no
memory (FastAPI reads and parses a body before it resolves any dependency, auth included).

Order: header limits (431) -> a query string that is not ASCII (400) -> auth for every route but the
ops and docs routes (401; 503 while no key set is loaded: auth fails closed) -> a declared
Content-Length over `max_body_bytes` (413, nothing read) -> the app, with a body counted as it
streams and cut at the limit (413). What the caller
still sends after an early answer is dropped by the HTTP server (uvicorn), never buffered; the
connection stays usable, so the caller reads the answer once it has sent its request. The org of the
key is left in scope["state"]["org_id"] for the routes' `org_id` dependency."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from helicone_core import db
from helicone_core.db import KeyStoreUnavailable
from helicone_core.http_limits import HEADERS_TOO_LARGE_STATUS, HEADERS_TOO_LARGE_TYPE, env_name, header_limit_error

from .otlp import encode_status, media_type

log = logging.getLogger("helicone.api")

ORG_STATE_KEY = "org_id"
BODY_TOO_LARGE_TYPE = "request_too_large"
# Error type of the answers the routes give through HTTPException (auth answers keep it).
HTTP_ERROR_TYPE = "http_error"
MISSING_KEY = "send 'Authorization: Bearer <your Helicone API key>'"
_BEARER = ((b"www-authenticate", b"Bearer"),)


class BodyTooLarge(Exception):
    """Raised by the guarded receive() once the body passes the limit (the guard answers 413)."""


async def send_json_error(send, status: int, kind: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """The api's error shape, {"error": {"type", "message"}}, sent straight through ASGI."""
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    await _send_answer(send, status, "application/json", body, headers)


async def _send_answer(send, status: int, content_type: str, body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def _over(digits: bytes, limit: int) -> bool:
    # int() refuses over 4300 digits: anything that long is over every limit anyway
    return digits.isdigit() and (len(digits) > 30 or int(digits) > limit)


class RequestGuard:
    def __init__(self, app, *, state, public_paths: Iterable[str], otlp_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.state = state  # ApiState: its key directory is read per request (it can be swapped in tests)
        self.public_paths = frozenset(public_paths)
        self.otlp_paths = frozenset(otlp_paths)  # answered as OTLP/HTTP asks: a google.rpc.Status
        s = state.settings
        self.max_header_count, self.max_header_bytes, self.max_body_bytes = s.max_header_count, s.max_header_bytes, s.max_body_bytes
        self.too_large = f"request body larger than {self.max_body_bytes} bytes (max_body_bytes, {env_name('max_body_bytes')})"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_many = header_limit_error(scope, self.max_header_count, self.max_header_bytes)
        if too_many is not None:
            return await self._refuse(scope, send, HEADERS_TOO_LARGE_STATUS, HEADERS_TOO_LARGE_TYPE, too_many)
        if not scope.get("query_string", b"").isascii():  # HTTP servers refuse these; other ASGI callers may not
            return await self._refuse(scope, send, 400, "invalid_request", "the query string must be ASCII (percent-encode the rest)")
        headers = scope["headers"]
        if scope["path"] not in self.public_paths:
            refused = self._authenticate(scope, headers)
            if refused is not None:
                return await self._refuse(scope, send, *refused)
        declared = _header(headers, b"content-length")
        if declared is not None and _over(declared.strip(), self.max_body_bytes):
            return await self._refuse(scope, send, 413, BODY_TOO_LARGE_TYPE, self.too_large)
        await self._call_with_body_limit(scope, receive, send)

    async def _refuse(self, scope, send, status: int, kind: str, message: str,
                      headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """The api's error shape, or on the OTLP paths a google.rpc.Status as the request was encoded."""
        if scope["path"] not in self.otlp_paths:
            return await send_json_error(send, status, kind, message, headers)
        body, content_type = encode_status(status, message, media_type(
            (_header(scope["headers"], b"content-type") or b"").decode("latin-1")))
        await _send_answer(send, status, content_type, body, headers)

    def _authenticate(self, scope, headers) -> tuple | None:
        """None when the key is known (its org is put in the scope's state), else the answer."""
        given = [v for n, v in headers if n.lower() == b"authorization"]
        if len(given) > 1:  # the gateway and the prompts service would read the last one: never guess which counts
            return 400, "invalid_request", "send one Authorization header: 'Bearer <your Helicone API key>'", ()
        key = db.bearer_token(given[0].decode("latin-1")) if given else ""
        if not key:
            return 401, HTTP_ERROR_TYPE, MISSING_KEY, _BEARER
        try:
            org = self.state.keys.lookup(key)
        except KeyStoreUnavailable as exc:
            log.warning("key store unavailable: %s", exc.__class__.__name__)
            return 503, HTTP_ERROR_TYPE, "key store unavailable; try again shortly", ((b"retry-after", b"5"),)
        if org is None:
            return 401, HTTP_ERROR_TYPE, "invalid or revoked Helicone API key", _BEARER
        scope.setdefault("state", {})[ORG_STATE_KEY] = org
        return None

    async def _call_with_body_limit(self, scope, receive, send) -> None:
        limit, received = self.max_body_bytes, 0
        exceeded = started = False

        async def limited_receive():
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the app makes of the cut body, the answer is the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(scope, send, 413, BODY_TOO_LARGE_TYPE, self.too_large)
