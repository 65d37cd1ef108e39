"""The gateway's HTTP/1.1 server: ASGI over an asyncio Protocol that parses with httptools, made for
the proxy's hot path. uvicorn's general request cycle (a scope copied per request, a second task to
watch for the caller leaving, regex checks of every response header, a wrapper to send the head with
the first body bytes) cost the gateway about a tenth of its CPU per request under load (bench/gateway_alone.py:
298 against 268 us, bench/results/gateway-alone-2026-12-04-httpserver.txt).

It does: keep-alive, pipelined requests (answered in order), request bodies by Content-Length or
chunked, responses framed by their Content-Length, else chunked (HTTP/1.1) or by closing (HTTP/1.0),
no body for HEAD, 1xx, 204 and 304, Expect: 100-continue, the request-head limit of http_limits (431
while the head arrives, before it is buffered; trailer fields count too and are dropped), a Date header, a 500
when the app fails before it answers, an idle keep-alive timeout (also a 408 for a head not whole within it, or a
body the app waits for and the caller stopped sending), a write timeout (a caller that takes none of its answer for
that long is cut, and its app learns it from receive(): WRITE_TIMED_OUT; pipelined requests wait while their caller
does not read), a graceful stop (no new connections, answers in progress finish, idle connections close) and the ASGI
lifespan.
Upgrade: websocket (a GET answered alone, not pipelined behind another request) becomes an ASGI "websocket" scope
(WebSocketSession: framing by websockets' sans-I/O ServerProtocol, pings answered, keepalive pings to a caller that
sent nothing for ws_ping_interval (one not heard from within ws_ping_timeout after it is cut), the denial-response
extension for an HTTP answer instead of the upgrade); the connection's transport is handed to it, so plain requests
pay nothing for it. A handshake RFC 6455 refuses (no or a malformed Sec-WebSocket-Key, a version other than 13) is
answered here (400; 426 naming the version taken) and never reaches the app, so nothing goes upstream for it.
It does not: other upgrades (h2c, CONNECT: 400), request targets other than a path or an absolute URL (400),
transfer codings other than chunked (501), HTTP/2, proxy headers (the gateway trusts none).

receive() returns an asyncio.Future, so the gateway's `ensure_future(receive())` (its watch for the
caller leaving) costs no task. The response head is held until the first body bytes and goes out in
the same write, or alone at the end of the loop iteration (one write and one wake-up of the caller
fewer per response).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import json
import logging
import re
import signal
import socket
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

import httptools
from helicone_core.gc_tuning import tune_gc
from helicone_core.http_limits import (
    HEADERS_TOO_LARGE_TYPE,
    REFUSED_LINGER_SECONDS,
    head_too_large_message,
    server_head_limit,
)
from websockets.datastructures import Headers as WsHeaders
from websockets.exceptions import InvalidHandshake, InvalidHeader, InvalidUpgrade
from websockets.frames import Opcode
from websockets.http11 import Request as WsRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

try:
    from fcntl import ioctl
    from termios import TIOCOUTQ  # on a TCP socket (Linux): bytes sent and not yet acknowledged, or not yet sent
except ImportError:  # elsewhere only the transport's own buffer is watched
    ioctl = TIOCOUTQ = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .settings import GatewaySettings

log = logging.getLogger("helicone.gateway.http")

KEEPALIVE_TIMEOUT = 5.0  # seconds an idle keep-alive connection stays open (uvicorn's default)
WRITE_TIMEOUT = 60.0  # seconds a caller may take none of an answer held back for it before its connection is cut
# seconds of silence from a WebSocket caller before it is pinged, and then for its pong (or any frame) before it is
# taken as gone: a caller whose network vanished would otherwise hold its session and provider connection for ever
WS_PING_INTERVAL, WS_PING_TIMEOUT = 20.0, 20.0
BODY_HIGH_WATER = 256 * 1024  # request body bytes buffered ahead of the app before reading pauses
MAX_PIPELINED = 16  # requests read ahead of the one being answered before reading pauses
ASGI = {"version": "3.0", "spec_version": "2.3"}
DISCONNECT = {"type": "http.disconnect"}
# what receive() gives once the connection was cut because the caller took none of its answer for write_timeout
WRITE_TIMED_OUT = {"type": "http.disconnect", "write_timeout": True}
NO_BODY_STATUS = frozenset({204, 304})
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
# what no response header may hold (a line break; a colon in its name): one search each, as `b"\n" in value` costs a
# TypeError raised and cleared inside CPython 3.11 (bytes' `in` tries its operand as a byte value first), five a header
_NAME_BREAK = re.compile(rb"[\r\n:]").search
_VALUE_BREAK = re.compile(rb"[\r\n]").search


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class RequestRefused(Exception):
    """Raised in a parser callback: the request is answered `status` and the connection closes."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(message: str, kind: str) -> bytes:
    """The gateway's JSON error shape: {"error": {"message", "type"}}."""
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


def error_response(status: int, message: str, kind: str, headers: bytes = b"") -> bytes:
    """A whole JSON error answer in the gateway's error shape, after which the connection closes; `headers`: more header
    lines, each ending in CRLF."""
    body = error_body(message, kind)
    return (status_line(status) + headers + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + b"connection: close\r\ndate: " + http_date() + b"\r\n\r\n" + body)


def upgrade_protocol(ex: Exchange | None) -> bytes:
    return next((v for n, v in ex.scope["headers"] if n == b"upgrade"), b"") if ex is not None else b""


def upgrade_refusal(ex: Exchange | None) -> str:
    """Why an upgrade other than a WebSocket's (h2c; CONNECT; a WebSocket pipelined behind another request) is refused,
    naming what was asked for."""
    protocol = upgrade_protocol(ex)
    asked = f"Upgrade: {protocol[:40].decode('latin-1')}" if protocol else "a protocol upgrade (CONNECT)"
    if protocol.lower() == b"websocket":
        return (f"{asked} is only accepted on a GET that is the connection's only request in flight (not pipelined "
                "behind another, no body)")
    return (f"{asked} is not supported: this gateway proxies HTTP requests and WebSockets (Upgrade: websocket on a GET) "
            "only; send HTTP requests without an upgrade")


WS_VERSION = "13"  # the one WebSocket version there is (RFC 6455); a caller asking for another is told this one
# what a handshake header refused must be, by header (RFC 6455 4.1)
WS_ACCEPTED_FORM = {
    "Sec-WebSocket-Key": "send one Sec-WebSocket-Key, the base64 of 16 random bytes",
    "Sec-WebSocket-Version": f"send Sec-WebSocket-Version: {WS_VERSION}, the only version this gateway speaks",
    "Sec-WebSocket-Protocol": "send the subprotocols offered as a comma-separated list of tokens",
    "Origin": "send at most one Origin",
    "Connection": "send Connection: Upgrade",
    "Upgrade": "send Upgrade: websocket, once",
}


def handshake_request(scope: dict) -> WsRequest:
    """The WebSocket handshake request of an upgrade's scope, as websockets reads it."""
    query = scope["query_string"]
    return WsRequest(scope["raw_path"].decode("latin-1") + ("?" + query.decode("latin-1") if query else ""),
                     WsHeaders([(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]))


def handshake_refusal(request: WsRequest) -> tuple[int, str, bytes] | None:
    """(status, message, header lines) answering a handshake RFC 6455 refuses, checked as websockets checks it when the
    session is accepted: 426 with Sec-WebSocket-Version: 13 for another version (400 for none or several), 426 for a
    wrong Upgrade or Connection, 400 for the rest (no or a malformed Sec-WebSocket-Key, ...); None for a valid one."""
    try:
        ServerProtocol(logger=log).process_request(request)
    except InvalidHandshake as exc:
        name = exc.name if isinstance(exc, InvalidHeader) else ""
        message = f"WebSocket handshake refused: {exc}" + (f"; {WS_ACCEPTED_FORM[name]}" if name in WS_ACCEPTED_FORM else "")
        if name == "Sec-WebSocket-Version":
            wrong = exc.value is not None and exc.value != "multiple values"  # a version asked for, not this one
            return (426 if wrong else 400, message,
                    (b"upgrade: websocket\r\n" if wrong else b"") + b"sec-websocket-version: %s\r\n" % WS_VERSION.encode())
        if isinstance(exc, InvalidUpgrade):
            return 426, message, b"upgrade: websocket\r\n"
        return 400, message, b""
    return None


_date = [0, b""]


def http_date() -> bytes:
    """The Date header's value, formatted once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, email.utils.formatdate(now, usegmt=True).encode()
    return _date[1]


class Exchange:
    """One request on a connection and the response the app gives it."""

    __slots__ = ("body", "body_done", "chunked", "conn", "continue_sent", "end_sent", "expect_continue", "finished", "head",
                 "head_only", "http10", "keep_alive", "queued", "remaining", "scope", "started", "task", "waiter")

    def __init__(self, conn: HttpConnection, scope: dict, keep_alive: bool, expect_continue: bool) -> None:
        self.conn, self.scope, self.keep_alive = conn, scope, keep_alive
        self.http10 = scope["http_version"] == "1.0"
        self.expect_continue = expect_continue and not self.http10  # no 1xx to an HTTP/1.0 client (RFC 9110 15.2)
        self.body: list[bytes] = []
        self.queued = 0  # bytes in body
        self.body_done = False  # the whole request body has been read
        self.end_sent = False  # the app was given the body's last message (receive() then waits for the end)
        self.waiter: asyncio.Future | None = None  # a receive() waiting for body bytes or the end
        self.continue_sent = False
        self.started = False
        self.finished = False
        self.head: bytes | None = None  # the response head while it waits for the first body bytes
        self.head_only = scope["method"] == "HEAD"
        self.chunked = False
        self.remaining = -1  # body bytes still owed by Content-Length; -1: not framed by a length
        self.task: asyncio.Task | None = None

    # ---- request side (called by the connection) -------------------------------------
    def add_body(self, chunk: bytes) -> None:
        self.body.append(chunk)
        self.queued += len(chunk)
        if self.queued > BODY_HIGH_WATER:
            self.conn.pause_reading()
        self._wake()

    def end_body(self) -> None:
        self.body_done = True
        self._wake()

    def disconnect(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.conn.gone)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done() and not self.end_sent:
            self.waiter = None
            waiter.set_result(self._message())

    def _message(self) -> dict:
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        if self.queued > BODY_HIGH_WATER:
            self.conn.resume_reading()
        self.queued = 0
        if self.body_done:
            self.end_sent = True
        return {"type": "http.request", "body": data, "more_body": not self.body_done}

    # ---- ASGI --------------------------------------------------------------------------
    def receive(self) -> asyncio.Future:
        fut = self.conn.loop.create_future()
        if self.conn.closed or self.finished:
            fut.set_result(self.conn.gone)
        elif self.body or (self.body_done and not self.end_sent):
            fut.set_result(self._message())
        else:
            if self.expect_continue and not self.continue_sent and not self.body_done:
                self.continue_sent = True
                self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.conn.last_active = self.conn.loop.time()  # the caller sends the body from now on
            self.waiter = fut  # body bytes, the end of the body, or the caller leaving resolve it
        return fut

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started or self.finished:
                raise RuntimeError("http.response.body " + ("after the response ended" if self.finished else "before http.response.start"))
            conn = self.conn
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if self.head_only:
                data = b""
            elif self.chunked:
                data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
                if not more:
                    data += b"0\r\n\r\n"
            else:
                data = body
                if self.remaining >= 0:
                    self.remaining -= len(body)
                    if self.remaining < 0:
                        raise RuntimeError("response body longer than its Content-Length")
                    if not more and self.remaining:
                        self.keep_alive = False  # the caller would wait for bytes that never come: closing ends it
            head = self.head
            if head is not None:
                self.head = None
                data = head + data
            if data and not conn.closed:
                conn.transport.write(data)
            if not more:
                self.finished = True
                conn.finished(self)
            elif conn.write_paused and not conn.closed:
                await conn.drain()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            if not self.body_done:
                self.keep_alive = False  # answered before its body was read whole (a refusal): see finished()
            self.head = self._head(message["status"], message.get("headers") or ())  # raises on a bad header: still a 500
            self.started = True
            self.conn.loop.call_soon(self._flush_head)
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _head(self, status: int, headers) -> bytes:
        parts = [status_line(status)]
        append = parts.append
        framed = False
        for name, value in headers:
            if _VALUE_BREAK(value) or _NAME_BREAK(name):
                raise RuntimeError(f"invalid response header {name!r}")
            name = name.lower()
            if name == b"content-length":
                framed = True
                self.remaining = int(value)
            elif name == b"transfer-encoding":
                framed = self.chunked = value.lower() == b"chunked"
            elif name == b"connection":
                if b"close" in value.lower():
                    self.keep_alive = False
                continue  # set below from keep_alive
            append(name + b": " + value + b"\r\n")
        if status < 200 or status in NO_BODY_STATUS:
            self.head_only, self.remaining = True, -1
        elif not framed and not self.head_only:
            if self.http10:
                self.keep_alive = False  # the end of the body is the end of the connection
            else:
                self.chunked = True
                append(b"transfer-encoding: chunked\r\n")
        if not self.keep_alive or self.conn.server.stopping:
            self.keep_alive = False
            append(b"connection: close\r\n")
        elif self.http10:
            append(b"connection: keep-alive\r\n")
        append(b"date: " + http_date() + b"\r\n\r\n")
        return b"".join(parts)

    def _flush_head(self) -> None:
        head = self.head
        if head is not None and not self.conn.closed:
            self.head = None
            self.conn.transport.write(head)

    async def run(self, app) -> None:
        conn = self.conn
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.error("request %s %s failed: %s", self.scope["method"], self.scope["path"],
                          "".join(traceback.format_exception_only(exc)).strip())
            self._failed()
            if not isinstance(exc, Exception):
                raise
        else:
            if not self.finished:
                if self.started and not conn.closed:  # a caller that left stops its answer: not the app's failure
                    log.error("request %s %s: the app returned before its response ended", self.scope["method"], self.scope["path"])
                self._failed()
        finally:
            conn.ended(self)

    def _failed(self) -> None:
        conn = self.conn
        if self.finished or conn.closed or conn.refusal_sent:
            return
        if self.started:
            self._flush_head()
            conn.abort()  # a response cut short: only closing tells the caller
        else:
            conn.transport.write(error_response(500, "internal gateway error", "gateway_error"))
            self.finished = True
            conn.close()


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, runs one Exchange at a time, keeps pipelined ones in order."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.app = server.app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.current: Exchange | None = None  # the exchange being answered
        self.pending: deque[Exchange] = deque()  # requests read while another is answered
        self.reading: Exchange | None = None  # the request whose body is being read
        self.latest: Exchange | None = None  # the request read last
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.trailers: list[tuple[bytes, bytes]] = []  # a chunked body's trailer fields: read, never handed to the app
        self.in_head = False  # in a head, or in a chunked body's chunk-size line or trailer fields
        self.head_mark, self.head_since = -1, 0.0  # the head the idle check saw in progress, and since when
        self.head_bytes = 0
        self.events = 0  # message begins, heads and messages completed: where a read's bytes belong
        self.refused = False
        self.refusal = b""  # the answer to a bad request, waiting for the request before it to be answered
        self.refusal_sent = False
        self.paused_reading = False
        self.write_paused = False
        self.drained: asyncio.Future | None = None
        self.write_resumes = 0  # times the caller took enough of the answer for writing to go on
        self.write_mark = (0, 0)  # (write_resumes, bytes not taken by the caller) when the write timer was armed
        self.write_timer: asyncio.TimerHandle | None = None
        self.gone = DISCONNECT  # the disconnect message receive() gives once the connection is closed
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.websocket: WebSocketSession | None = None  # the session the connection was upgraded to

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        self._touch()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self.last_active = self.loop.time()
        events = self.events
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            ex = self.latest
            if (ex is not None and ex is self.current and ex.body_done and not self.pending and ex.task is not None
                    and not ex.started and ex.scope["method"] == "GET" and upgrade_protocol(ex).lower() == b"websocket"):
                request = handshake_request(ex.scope)
                refusal = handshake_refusal(request)
                if refusal is not None:  # answered here: the app, and so the provider, never sees it
                    status, message, headers = refusal
                    self._refuse(status, message, "invalid_request", ex, headers)
                    return
                ex.task.cancel()  # not run yet (created in this callback): the session's task answers it
                self.current = self.reading = None
                WebSocketSession(self, ex.scope, request, data[upgrade.args[0]:] if upgrade.args else b"")
            else:
                self._refuse(400, upgrade_refusal(ex), "invalid_request", ex)
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, RequestRefused):
                self._refuse(refused.status, refused.message, refused.kind)
            else:
                self._refuse(400, f"invalid HTTP request: {exc}", "invalid_request")
            return
        # A read in which a message began or a head or message ended is not counted: part of it
        # belongs to another message (so a big body never counts against the next head).
        if self.in_head and events == self.events:
            self.head_bytes += len(data)
            if self.head_bytes > self.server.max_head_bytes:
                self._refuse(431, head_too_large_message(self.server.max_head_bytes), HEADERS_TOO_LARGE_TYPE)

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for ex in (self.current, self.reading, *self.pending):
            if ex is not None:
                ex.disconnect()
        self.pending.clear()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._watch_writes()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_resumes += 1
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        if (self.current is None and self.pending and not self.closed and not self.refused and not self.server.stopping
                and not self.transport.is_closing()):
            self._start_next()  # a pipelined request held back while the caller did not read

    def _watch_writes(self) -> None:
        """Arms the write timer: only while bytes wait for the caller (writing paused, or a close waiting to
        flush), so a caller that keeps up costs no timer."""
        if self.write_timer is None and not self.closed:
            self.write_mark = (self.write_resumes, self._untaken())
            self.write_timer = self.loop.call_later(self.server.write_timeout, self._write_check)

    def _untaken(self) -> int:
        """Answer bytes the caller has not taken: the transport's buffer and the socket's send queue (the kernel's
        buffer, megabytes on a fast link, frees room for the transport only in large steps)."""
        size = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if ioctl is not None and sock is not None:
            with contextlib.suppress(OSError, ValueError):
                size += struct.unpack("i", ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0"))[0]
        return size

    def _write_check(self) -> None:
        """A caller that took no byte of its answer for write_timeout is cut: an answer it never reads would
        otherwise hold its provider connection (and the answer's memory) for ever."""
        self.write_timer = None
        transport = self.transport
        if self.closed or not (self.write_paused or transport.is_closing()):
            return  # the caller caught up: pause_writing arms the timer again
        if not transport.get_write_buffer_size():
            return
        resumes, mark = self.write_mark
        size = self._untaken()
        if resumes != self.write_resumes or size < mark:  # it reads, however slowly
            self._watch_writes()
            return
        log.info("connection from %s cut: the caller read none of its answer for %g s (%d bytes waiting)",
                 self.client, self.server.write_timeout, size)
        self.gone = WRITE_TIMED_OUT
        transport.abort()

    async def drain(self) -> None:
        if self.drained is None or self.drained.done():
            self.drained = self.loop.create_future()
        await self.drained

    # ---- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_head, self.head_bytes, self.events = True, 0, self.events + 1
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head, self.events = False, self.events + 1
        parser = self.parser
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            raise RequestRefused(400, f"invalid request target {self.url[:200].decode('latin-1')!r}: a path "
                                 "(/...) or an absolute URL (http://host/...) is accepted") from None
        raw_path = parsed.path or b""
        if raw_path[:1] != b"/":  # "*", "*@host/...": appended to a provider's base URL it would name another host
            raise RequestRefused(400, f"invalid request target {raw_path[:200].decode('latin-1')!r}: a path "
                                 "(/...) or an absolute URL (http://host/...) is accepted")
        path = raw_path.decode("ascii")
        if "%" in path:
            path = unquote(path)
        headers = self.headers
        scope = {"type": "http", "asgi": ASGI, "http_version": parser.get_http_version(), "server": self.local,
                 "client": self.client, "scheme": "http", "method": parser.get_method().decode("ascii"), "root_path": "",
                 "path": path, "raw_path": raw_path, "query_string": parsed.query or b"", "headers": headers}
        expect = False
        for name, value in headers:
            if name == b"expect" and value.lower() == b"100-continue":
                expect = True
        ex = Exchange(self, scope, parser.should_keep_alive(), expect)
        self.reading = self.latest = ex
        if self.current is None:
            self._start(ex)
        else:
            self.pending.append(ex)
            if len(self.pending) >= MAX_PIPELINED:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        self.in_head = False  # after a chunk-size line: body bytes, not trailer fields
        if self.reading is not None:
            self.reading.add_body(body)

    def on_chunk_header(self) -> None:
        """Chunked requests only. What follows a chunk-size line is its data or, after the last one, the
        trailer fields: counted against the head limit (and timed like a head) until body bytes come."""
        self.in_head, self.head_bytes, self.events = True, 0, self.events + 1
        headers = self.headers
        if headers is not self.trailers:  # the first chunk: the request's Transfer-Encoding is checked once
            for name, value in headers:
                if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                    raise RequestRefused(501, f"Transfer-Encoding {value[:100].decode('latin-1')!r} is not supported: "
                                         "only chunked is", "not_implemented")
            self.headers = self.trailers = []

    def on_chunk_complete(self) -> None:
        self.in_head = False

    def on_message_complete(self) -> None:
        self.events += 1
        if self.reading is not None:
            self.reading.end_body()
            self.reading = None

    # ---- exchanges ---------------------------------------------------------------------
    def _start(self, ex: Exchange) -> None:
        self.current = ex
        ex.task = self.loop.create_task(ex.run(self.app))
        self.server.tasks.add(ex.task)
        ex.task.add_done_callback(self.server.tasks.discard)

    def finished(self, ex: Exchange) -> None:
        """The response of `ex` went out whole."""
        ex.disconnect()  # a receive() still waiting learns the exchange is over
        if not ex.body_done:
            # answered before its body was read whole (a 401, a 413...): nothing will read the rest, so
            # the connection cannot go on; it reads and drops what the caller still sends for a moment
            # (closing with bytes unread resets it, and the caller may never read the answer)
            self._linger()
        elif not ex.keep_alive or self.server.stopping:
            self.close()

    def ended(self, ex: Exchange) -> None:
        """The app is done with `ex`: the next pipelined request starts."""
        if self.current is not ex:
            return
        self.current = None
        if self.refusal:
            self._send_refusal()  # a bad request read behind this one
            return
        if self.closed or self.transport.is_closing():
            return
        if self.server.stopping:
            self.close()
            return
        if self.pending:
            if not self.write_paused:  # else resume_writing starts it: answers the caller does not read never pile up
                self._start_next()
        else:
            self._touch()

    def _start_next(self) -> None:
        self._start(self.pending.popleft())
        if self.paused_reading and len(self.pending) < MAX_PIPELINED // 2 and (self.reading is None or self.reading.queued <= BODY_HIGH_WATER):
            self.resume_reading()

    # ---- connection state ----------------------------------------------------------------
    def _touch(self) -> None:
        """Arms the idle timer (it re-arms itself while the connection is used: no timer per request)."""
        self.last_active = self.loop.time()
        if self.idle_timer is None:
            self.idle_timer = self.loop.call_at(self.last_active + self.server.keepalive_timeout, self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        if self.closed or self.websocket is not None:  # a WebSocket stays open while either side wants it
            return
        timeout, now = self.server.keepalive_timeout, self.loop.time()
        current, due = self.current, self.last_active + timeout
        if self.in_head and (current is None or current is self.reading):
            # a head (or trailer fields) begun must arrive whole within about the timeout, however
            # steadily its bytes trickle in (one byte a second would hold the connection for ever)
            if self.head_mark != self.events:
                self.head_mark, self.head_since = self.events, now
            elif now >= self.head_since + timeout:
                self._refuse(408, f"request head not received whole within {timeout:g} s", "request_timeout")
                return
            due = min(due, self.head_since + timeout)
        if current is not None or self.pending:  # busy: no idle timeout while a request is answered...
            if (now >= self.last_active + timeout and current is not None and current.waiter is not None
                    and not current.body_done and not current.started and not self.paused_reading):
                # ...unless the app waits for body bytes the caller stopped sending
                self._refuse(408, f"request body: no bytes received for {timeout:g} s", "request_timeout")
                return
            if due <= now:
                due = now + timeout
        elif now >= due:  # idle, or a head begun and not finished, for that long
            self.close()
            return
        self.idle_timer = self.loop.call_at(due, self._idle_check)

    def pause_reading(self) -> None:
        if not self.paused_reading and not self.closed:
            self.paused_reading = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused_reading and not self.closed:
            self.paused_reading = False
            self.transport.resume_reading()

    def _refuse(self, status: int, message: str, kind: str, bad: Exchange | None = None, headers: bytes = b"") -> None:
        """Answers a request that cannot be parsed or is too large, then closes the connection (after
        reading what the caller still sends for a moment: closing with bytes unread resets it and the
        caller may never read the answer). A request read whole before it, still being answered,
        is answered first (it may be at the provider already, and is logged); the requests pipelined
        behind it are not answered. `bad`: the exchange the refusal answers, when it was read whole
        (an upgrade request); `headers`: more header lines for the answer."""
        self.refused = True
        current = self.current
        for ex in (current, self.reading, *self.pending):
            if ex is not None and ex is not current and ex.task is not None and not ex.started:
                ex.task.cancel()
        self.pending.clear()
        cancelled = (current is not None and (not current.body_done or current is bad) and current.task is not None
                     and not current.started)
        if cancelled:
            current.task.cancel()  # the request was not read whole: the app does not answer it
        self.refusal = error_response(status, message, kind, headers)
        if cancelled or current is None or current.finished or current.task is None or current.task.done():
            self._send_refusal()
        # else: ended() sends it once the app is done with the request before it

    def _send_refusal(self) -> None:
        refusal, self.refusal = self.refusal, b""
        self.refusal_sent = True  # the connection's last answer: an exchange cancelled for it answers nothing
        if refusal and not self.closed and not self.transport.is_closing():
            self.transport.write(refusal)
            self._linger()

    def _linger(self) -> None:
        """Closes after reading (and dropping) what the caller still sends for a moment."""
        self.refused = True
        self.resume_reading()
        if self.closed or self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(REFUSED_LINGER_SECONDS, self.close)
        else:
            self.close()

    def stop(self) -> None:
        """Graceful stop (the server's `stopping` is set): an idle connection closes now, a busy one after
        its current response (requests pipelined behind it are not answered)."""
        if self.websocket is not None:
            self.websocket.going_away()
        elif self.current is None:  # idle, or a request not yet read whole: it is not answered
            self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            if self.transport.get_write_buffer_size():
                self._watch_writes()  # the close waits for the caller to take the rest: not for ever

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()


# WebSocket close codes a close frame never carries (RFC 6455 7.4.1): the app is given them, a peer never is
NO_STATUS_CODE, ABNORMAL_CODE = 1005, 1006
WS_MAX_MESSAGE = 16 * 1024 * 1024  # bytes of one WebSocket message (a Realtime audio append is base64 of its audio)
WS_INBOX_HIGH = 64  # messages received ahead of the app before reading pauses
WS_INBOX_HIGH_BYTES = 1024 * 1024  # or bytes of them (a larger message still comes whole, but alone)


class WebSocketSession(asyncio.Protocol):
    """A connection upgraded by Upgrade: websocket, served as an ASGI "websocket" scope. It takes the connection's
    transport (set_protocol), so the HTTP parser never sees its bytes again. The handshake is answered when the app
    accepts (websocket.accept), or an HTTP answer is given instead (websocket.http.response.*, the denial-response
    extension; websocket.close before accepting: 403). Pings are answered here; a close frame received is answered
    and given to the app as websocket.disconnect with its code (1005 when it had none, 1006 when the connection
    dropped without one). A caller silent for the server's ws_ping_interval is pinged; one that sends nothing (no pong)
    within ws_ping_timeout after it is cut (1006 to the app): one timer per session, re-armed, never one per frame."""

    def __init__(self, conn: HttpConnection, scope: dict, request: WsRequest, early: bytes) -> None:
        self.conn, self.loop, self.transport = conn, conn.loop, conn.transport
        conn.websocket = self
        headers = scope["headers"]
        offered = [p.strip() for n, v in headers if n == b"sec-websocket-protocol"
                   for p in v.decode("latin-1").split(",") if p.strip()]
        self.scope = {**scope, "type": "websocket", "subprotocols": offered,
                      "extensions": {"websocket.http.response": {}}}
        self.request = request  # checked by handshake_refusal before the session was made
        self.protocol = None  # websockets.ServerProtocol once accepted
        self.early = early  # bytes the caller sent after its head, before the handshake was answered
        self.connected = False  # websocket.connect was given to the app
        self.accepted = False
        self.answered = False  # the handshake's answer (101, or an HTTP answer) went out
        self.denial: list = []  # a websocket.http.response.start and its body parts, until the last
        self.inbox: deque[tuple[dict, int]] = deque()  # messages not yet received by the app, with their sizes
        self.inbox_bytes = 0
        self.waiter: asyncio.Future | None = None
        self.fragments: list[bytes] = []
        self.fragment_op = None
        self.close_code = 0  # set once the caller is gone: the disconnect's code
        self.closed = False
        self.paused_reading = False
        self.last_received = 0.0  # loop time of the caller's last bytes (once accepted)
        self.ping_sent = 0.0  # loop time of the keepalive ping awaiting an answer; 0: none
        self.ping_timer: asyncio.TimerHandle | None = None
        self.task = self.loop.create_task(self.run(conn.app))
        conn.server.tasks.add(self.task)
        self.task.add_done_callback(conn.server.tasks.discard)
        self.transport.set_protocol(self)
        self.transport.pause_reading()  # nothing is read before the handshake is answered
        self.paused_reading = True

    # ---- ASGI ------------------------------------------------------------------------
    def receive(self) -> asyncio.Future:
        fut = self.loop.create_future()
        if not self.connected:
            self.connected = True
            fut.set_result({"type": "websocket.connect"})
        elif self.inbox:
            message, size = self.inbox.popleft()
            self.inbox_bytes -= size
            fut.set_result(message)
            if (self.paused_reading and self.protocol is not None and len(self.inbox) < WS_INBOX_HIGH // 2
                    and self.inbox_bytes < WS_INBOX_HIGH_BYTES // 2 and not self.closed):
                self.paused_reading = False
                self.transport.resume_reading()
        elif self.close_code:
            fut.set_result({"type": "websocket.disconnect", "code": self.close_code})
        else:
            self.waiter = fut
        return fut

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if self.closed or self.protocol.state is not State.OPEN:
                return  # the caller is gone or closing: what the app still sends has nowhere to go
            text = message.get("text")
            if text is not None:
                self.protocol.send_text(text.encode())
            else:
                self.protocol.send_binary(message.get("bytes") or b"")
            self._flush()
            if self.conn.write_paused and not self.closed:
                await self.conn.drain()
        elif kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            if not self.answered:
                self._deny(403, [(b"content-type", b"application/json")],
                           error_body("the WebSocket was refused", "websocket_refused"))
            elif self.accepted and not self.closed and self.protocol.state is State.OPEN:
                self.protocol.send_close(message.get("code", 1000), message.get("reason") or "")
                self._flush()
        elif kind == "websocket.http.response.start":
            if self.answered or self.denial:
                raise RuntimeError("websocket.http.response.start after the handshake was answered")
            self.denial = [message]
        elif kind == "websocket.http.response.body":
            if not self.denial:
                raise RuntimeError("websocket.http.response.body before websocket.http.response.start")
            self.denial.append(message.get("body", b""))
            if not message.get("more_body", False):
                start, *parts = self.denial
                self._deny(start["status"], start.get("headers") or (), b"".join(parts))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _accept(self, message: dict) -> None:
        if self.answered:
            raise RuntimeError("websocket.accept after the handshake was answered")
        chosen = message.get("subprotocol")
        handshake = ServerProtocol(subprotocols=[chosen] if chosen else None, logger=log)
        response = handshake.accept(self.request)
        self.answered = True
        if response.status_code != 101:  # the request was checked before the app ran: a subprotocol never offered
            handshake.send_response(response)
            for data in handshake.data_to_send():
                self.transport.write(data)
            self.conn.close()
            return
        for name, value in message.get("headers") or ():
            response.headers[name.decode("latin-1")] = value.decode("latin-1")
        handshake.send_response(response)
        self.transport.write(b"".join(handshake.data_to_send()))
        # the frames from here on: a protocol that starts open (one built for the handshake would parse a request first)
        self.protocol = ServerProtocol(state=State.OPEN, max_size=WS_MAX_MESSAGE, logger=log)
        self.accepted = True
        self.last_received = self.loop.time()
        interval = self.conn.server.ws_ping_interval
        if interval > 0:
            self.ping_timer = self.loop.call_at(self.last_received + interval, self._keepalive)
        early, self.early = self.early, b""
        if early:
            self.data_received(early)
        if not self.closed and len(self.inbox) < WS_INBOX_HIGH and self.inbox_bytes < WS_INBOX_HIGH_BYTES:
            self.paused_reading = False
            self.transport.resume_reading()

    def _deny(self, status: int, headers, body: bytes) -> None:
        """An HTTP answer instead of the upgrade; the connection closes after it."""
        self.answered = True
        self.denial = []
        if self.closed:
            return
        head = [status_line(status)]
        for name, value in headers:
            if _VALUE_BREAK(value) or _NAME_BREAK(name):
                raise RuntimeError(f"invalid response header {name!r}")
            if name.lower() not in (b"content-length", b"connection", b"transfer-encoding"):
                head.append(name + b": " + value + b"\r\n")
        head.append(b"content-length: %d\r\nconnection: close\r\ndate: %b\r\n\r\n" % (len(body), http_date()))
        self.transport.write(b"".join(head) + body)
        self.conn.close()

    def going_away(self) -> None:
        """The server stops: an open session is closed with 1001 (the app learns it as a disconnect)."""
        if self.accepted and not self.closed and self.protocol.state is State.OPEN:
            self.protocol.send_close(1001, "server shutting down")
            self._flush()
        self._gone(1001)

    def _keepalive(self) -> None:
        """The session's one timer: pings a caller silent for ws_ping_interval, cuts one that then sent nothing (not
        even the pong) for ws_ping_timeout; otherwise re-arms itself for when the caller will have been silent."""
        self.ping_timer = None
        if self.closed or self.protocol.state is not State.OPEN:
            return  # closing or gone: the close handshake's own timeouts end it
        server, now = self.conn.server, self.loop.time()
        if self.ping_sent and self.last_received < self.ping_sent:
            due = self.ping_sent + server.ws_ping_timeout
            if now >= due:
                log.info("websocket from %s cut: no pong (nor any frame) within %g s of a ping, after %g s of silence",
                         self.conn.client, server.ws_ping_timeout, server.ws_ping_interval)
                self._gone(ABNORMAL_CODE)
                self.conn.abort()
                return
        else:
            self.ping_sent = 0.0
            due = self.last_received + server.ws_ping_interval
            if now >= due:
                self.ping_sent = now
                self.protocol.send_ping(b"%d" % int(now * 1000))
                self._flush()
                due = now + server.ws_ping_timeout
        self.ping_timer = self.loop.call_at(due, self._keepalive)

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if self.closed:
                return
            if data:
                self.transport.write(data)
            else:  # the closing handshake is over: the server closes the TCP connection
                self.conn.close()

    def _gone(self, code: int) -> None:
        if not self.close_code:
            self.close_code = code
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result({"type": "websocket.disconnect", "code": self.close_code})

    def _put(self, message: dict, size: int) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
            return
        self.inbox.append((message, size))
        self.inbox_bytes += size
        if (len(self.inbox) >= WS_INBOX_HIGH or self.inbox_bytes >= WS_INBOX_HIGH_BYTES) and not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()

    async def run(self, app) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                log.error("websocket %s failed: %s", self.scope["path"], "".join(traceback.format_exception_only(exc)).strip())
            self._ended(1011)
            if not isinstance(exc, Exception):
                raise
        else:
            self._ended(1000)

    def _ended(self, code: int) -> None:
        """The app is done: a handshake it never answered is a 500 (1011 after accepting: an error), an open session closes."""
        if self.closed:
            return
        if not self.answered:
            self._deny(500, [(b"content-type", b"application/json")], error_body("internal gateway error", "gateway_error"))
        elif self.accepted and self.protocol.state is State.OPEN:
            self.protocol.send_close(code)
            self._flush()
            self.loop.call_later(REFUSED_LINGER_SECONDS, self.conn.close)  # the caller's close frame is not awaited for ever
        elif self.accepted:
            self.loop.call_later(REFUSED_LINGER_SECONDS, self.conn.close)

    # ---- asyncio.Protocol (the connection's, once upgraded) ----------------------------
    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            self.early += data
            return
        self.last_received = self.loop.time()
        protocol.receive_data(data)
        for frame in protocol.events_received():
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                self.fragment_op = op
                self.fragments = [frame.data]
            elif op is Opcode.CONT:
                self.fragments.append(frame.data)
            else:
                continue  # ping (answered by the protocol), pong, close (below)
            if frame.fin:
                payload = b"".join(self.fragments)
                self.fragments = []
                if self.fragment_op is Opcode.TEXT:
                    try:
                        self._put({"type": "websocket.receive", "text": payload.decode()}, len(payload))
                    except UnicodeDecodeError:
                        protocol.fail(1007, "invalid UTF-8 in a text message")
                        break
                else:
                    self._put({"type": "websocket.receive", "bytes": payload}, len(payload))
        self._flush()
        if protocol.close_rcvd is not None:
            self._gone(protocol.close_rcvd.code)
        elif protocol.state is State.CLOSED:  # a protocol error (too large, bad frame): it sent its close
            self._gone(ABNORMAL_CODE)

    def eof_received(self) -> bool | None:
        if self.protocol is not None:
            self.protocol.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc) -> None:
        self.closed = True
        # the connection's own release (the server's set, its timers, a writer waiting to drain); it has no request
        # left: its exchange went to this session at the upgrade
        self.conn.connection_lost(exc)
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        code = ABNORMAL_CODE
        if self.protocol is not None and self.protocol.close_rcvd is not None:
            code = self.protocol.close_rcvd.code
        self._gone(code)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        conn = self.conn
        conn.write_paused = False
        conn.write_resumes += 1
        if conn.drained is not None and not conn.drained.done():
            conn.drained.set_result(None)


class HttpServer:
    """Serves an ASGI app on host:port or on a listening socket. `serve()` runs the lifespan and the
    listener until `should_exit` is set; `started` tells when it accepts connections."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None,
                 max_head_bytes: int = 1 << 20, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, ws_ping_interval: float = WS_PING_INTERVAL,
                 ws_ping_timeout: float = WS_PING_TIMEOUT, backlog: int = 2048) -> None:
        self.app, self.host, self.port, self.sock = app, host, port, sock
        self.max_head_bytes = max_head_bytes
        self.keepalive_timeout = keepalive_timeout
        self.write_timeout = write_timeout
        self.ws_ping_interval = ws_ping_interval  # 0: WebSocket callers are never pinged
        self.ws_ping_timeout = ws_ping_timeout
        self.backlog = backlog
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.started = False
        self.stopping = False
        self._exit: asyncio.Event | None = None
        self._should_exit = False
        self.bound: tuple[str, int] | None = None

    @classmethod
    def for_settings(cls, app, settings: GatewaySettings, *, sock: socket.socket | None = None) -> HttpServer:
        """On settings.host:port (or `sock`), refusing request heads over the service's header limits."""
        return cls(app, settings.host, settings.port, sock=sock, max_head_bytes=server_head_limit(settings),
                   write_timeout=settings.client_write_timeout, ws_ping_interval=settings.websocket_ping_interval,
                   ws_ping_timeout=settings.websocket_ping_timeout)

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit is not None:
            self._exit.set()

    def stop_signal(self) -> None:
        """SIGTERM/SIGINT: the first stops gracefully, a second one stops at once."""
        if self.should_exit:
            self.force_stop()
        else:
            self.should_exit = True

    def force_stop(self) -> None:
        """Cuts every connection and cancels the answers in progress (a graceful stop then ends at once)."""
        self.should_exit = True
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()

    async def serve(self) -> bool:
        """Returns False when the app's startup failed (nothing was served), True after a stop."""
        self.loop = asyncio.get_running_loop()
        self._exit = asyncio.Event()
        if self._should_exit:
            self._exit.set()
        lifespan = Lifespan(self.app)
        if not await lifespan.startup():
            return False
        factory: Callable[[], HttpConnection] = lambda: HttpConnection(self)  # noqa: E731
        if self.sock is not None:
            listener = await self.loop.create_server(factory, sock=self.sock, backlog=self.backlog)
        else:
            listener = await self.loop.create_server(factory, self.host, self.port, reuse_address=True, backlog=self.backlog)
        name = listener.sockets[0].getsockname()
        self.bound = (name[0], name[1])
        self.started = True
        log.info("gateway serving on http://%s:%d", self.bound[0], self.bound[1])
        try:
            await self._exit.wait()
        finally:
            self.stopping = True
            listener.close()
            for conn in list(self.connections):
                conn.stop()
            while self.connections or self.tasks:  # answers in progress finish (their connections close then)
                await asyncio.sleep(0.05)
            await lifespan.shutdown()
        return True


class Lifespan:
    """Drives the app's ASGI lifespan: startup before the listener opens, shutdown after it closes."""

    def __init__(self, app) -> None:
        self.app = app
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    async def _run(self) -> None:
        try:
            await self.app({"type": "lifespan", "asgi": ASGI, "state": {}}, self.inbox.get, self.outbox.put)
        finally:
            await self.outbox.put({"type": "lifespan.ended"})

    async def _ask(self, message: str) -> bool:
        await self.inbox.put({"type": message})
        reply = await self.outbox.get()
        if reply["type"].endswith(".failed"):
            log.error("%s failed: %s", message, reply.get("message", ""))
            return False
        return reply["type"].endswith(".complete")

    async def startup(self) -> bool:
        self.task = asyncio.get_running_loop().create_task(self._run())
        if await self._ask("lifespan.startup"):
            return True
        with contextlib.suppress(BaseException):  # the app reported why (logged above) and then raised
            await self.task
        return False

    async def shutdown(self) -> None:
        if self.task is None or self.task.done():
            return
        await self._ask("lifespan.shutdown")
        with contextlib.suppress(BaseException):
            await self.task


def run(app, settings: GatewaySettings, *, sock: socket.socket | None = None) -> None:
    """Serves `app` on settings.host:port (or on `sock`, bound, and listening once the app has started: one of
    several workers sharing a port) until SIGTERM or SIGINT, then stops gracefully (a second signal: at once) and
    returns (exit 0); exits 3 when the app's startup failed, as uvicorn does."""
    server = HttpServer.for_settings(app, settings, sock=sock)
    tune_gc(settings.gc_young_threshold)

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop_signal)
        return await server.serve()

    try:
        import uvloop
    except ImportError:  # a dependency of the gateway; where it cannot be installed the default loop serves
        served = asyncio.run(main())
    else:
        served = uvloop.run(main())
    if not served:
        sys.exit(3)
