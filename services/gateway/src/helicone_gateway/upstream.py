"""The gateway's upstream HTTP/1.1 client: a keep-alive connection pool of asyncio Protocol
connections parsing responses with httptools. It does what the gateway needs and nothing more:

- the request goes out in one write: request line, Host, the caller's headers as given (no
  User-Agent, Accept or Accept-Encoding of its own, no cookies), Content-Length and the body; or, for a
  StreamedBody (a large upload), the head and then each piece of the body as it comes, on a new connection,
  waiting while the provider does not take them, and no more once the provider has answered;
- the response body passes through as the provider sent it (no decompression), chunk by chunk as
  it arrives, with a bounded buffer (reading pauses while the consumer lags); redirects are not
  followed and no proxy is taken from the environment;
- timeouts as aiohttp's ClientTimeout(connect=..., sock_read=...): `connect` bounds getting a
  connection (waiting for a free slot, DNS, TCP and TLS), `read` the silence between response bytes
  (the wait for the response head included);
- failures raise aiohttp's exception classes, so callers tell them apart as they did with aiohttp
  (ServerDisconnectedError / ClientOSError when a connection closes before the response head,
  ClientPayloadError for a body cut short, ClientConnectorError when no address could be connected,
  ConnectionTimeoutError / SocketTimeoutError for the two timeouts);
- a `socket_factory(addr_info)` per request (egress.guarded_socket_factory for Helicone-Target-URL
  traffic) opens the socket of every new connection: it sees the sockaddr actually connected to,
  after DNS, and may refuse it (OSError: the next address is tried). Connections are pooled per
  (scheme, host, port, socket_factory), so traffic of one factory never reuses another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import aiohttp
import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

AddrInfo = tuple[int, int, int, str, tuple]
SocketFactory = Callable[[AddrInfo], socket.socket]

GET_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # no Content-Length without a body (as aiohttp)
HIGH_WATER = 256 * 1024  # buffered response bytes above which reading the socket pauses
LOW_WATER = 64 * 1024  # ... and below which it resumes
KEEPALIVE_TIMEOUT = 15.0  # idle pooled connections are closed after this long (aiohttp's default)
_CRLF = frozenset("\r\n\0")


class StreamedBody(Protocol):
    """A request body sent as it arrives rather than held whole: `length` bytes (its Content-Length), its pieces read
    by iterating it (once: a request carrying one is never sent again)."""

    length: int

    def __aiter__(self) -> AsyncIterator[bytes]: ...


def _open_socket(addr_info: AddrInfo) -> socket.socket:
    family, type_, proto, _, _ = addr_info
    return socket.socket(family=family, type=type_, proto=proto)


class _ConnKey:
    """What aiohttp's ClientConnectorError and friends read from their connection key."""

    __slots__ = ("host", "is_ssl", "port", "ssl")

    def __init__(self, host: str, port: int, is_ssl: bool) -> None:
        self.host, self.port, self.is_ssl = host, port, is_ssl
        self.ssl = True if is_ssl else False  # noqa: SIM210  (aiohttp prints True as "default")


class Headers:
    """Response headers: `get(name)` is case-insensitive and gives the first value (as str)."""

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: tuple[tuple[bytes, bytes], ...]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        m: dict[str, str] = {}
        for n, v in self._raw:
            m.setdefault(n.decode("latin-1").lower(), v.decode("utf-8", "surrogateescape"))
        self._map = m
        return m

    def get(self, name: str, default: Any = None) -> Any:
        m = self._map if self._map is not None else self._build()
        return m.get(name.lower(), default)


class Connection(asyncio.Protocol):
    """One upstream connection and the response being read on it (one at a time, no pipelining)."""

    def __init__(self, pool: UpstreamPool, key: tuple, loop: asyncio.AbstractEventLoop) -> None:
        self.pool, self.key, self.loop = pool, key, loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.used = False  # has carried a request: handing it out again is a reuse
        self.idle_since = 0.0
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None  # the one in progress
        self.head: asyncio.Future | None = None  # resolves to `response` once its head is read
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self._raw: list[tuple[bytes, bytes]] = []
        self._skip_body = False
        self._junk = False  # bytes after a HEAD response, or between responses, or a body not sent whole: never reused
        self.write_paused = False  # the provider takes none of a streamed body for now
        self.drained: asyncio.Future | None = None  # a streamed body's wait for the provider to take more

    # ---- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        resp = self.response
        if resp is None or resp.done:
            self._junk = True  # nothing was asked: the connection is out of step
            self.close()
            return
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            resp = self.response
            if self.head is not None and not self.head.done():
                info = aiohttp.RequestInfo(resp.url, resp.method, CIMultiDictProxy(CIMultiDict()), resp.url)
                self._fail(aiohttp.ClientResponseError(info, (), status=400, message=f"bad response head: {exc}"))
            else:
                self._fail(aiohttp.ClientPayloadError(f"Response payload is not completed: {exc!r}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        resp = self.response
        if resp is not None and not resp.done:
            if self.head is not None and not self.head.done():
                if isinstance(exc, OSError):
                    self.head.set_exception(aiohttp.ClientOSError(*exc.args))
                else:
                    self.head.set_exception(aiohttp.ServerDisconnectedError())
            elif resp.until_eof:
                self._finish(keep_alive=False)
            elif resp.exc is None:
                what = ("TransferEncodingError: not enough data to satisfy transfer length header" if resp.chunked
                        else "ContentLengthError: not enough data to satisfy content length header")
                detail = f"Response payload is not completed: <{what}>"
                if exc is not None:
                    detail += f". {exc!r}"
                self._fail(aiohttp.ClientPayloadError(detail))
        self._wake_writer()
        self.pool._lost(self)

    # a request held whole is written at once (the transport buffers it); a streamed body waits while this is paused
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        drained = self.drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    # ---- httptools callbacks ---------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is not None and self.head.done():
            return  # a trailer (after a chunked body): never a header, of this answer or of the next one
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._raw = []  # informational (103 Early Hints...): the real answer follows
            return
        resp = self.response
        assert resp is not None
        raw = tuple(self._raw)
        self._raw = []
        resp.status = status
        resp.raw_headers = raw
        resp.headers = Headers(raw)
        resp.keep_alive = self.parser.should_keep_alive()
        if resp.method == "HEAD" or status in (204, 304):
            self._skip_body = resp.method == "HEAD"  # llhttp itself knows 204/304 have no body
            head = self.head
            if self._skip_body:
                # httptools cannot be told to skip a HEAD answer's announced body: a new parser
                # reads the next response, and the announced body is never awaited
                self.parser = httptools.HttpResponseParser(self)
                self._finish(resp.keep_alive)
            if head is not None and not head.done():
                head.set_result(resp)
            return
        chunked = content_length = False
        for n, v in raw:
            if len(n) == 17 and n.lower() == b"transfer-encoding" and b"chunked" in v.lower():
                chunked = True
            elif len(n) == 14 and n.lower() == b"content-length":
                content_length = True
        resp.chunked = chunked
        resp.until_eof = not chunked and not content_length
        head = self.head
        if head is not None and not head.done():
            head.set_result(resp)

    def on_body(self, body: bytes) -> None:
        resp = self.response
        if resp is None or resp.done:
            self._junk = True
            return
        resp._feed(body)

    def on_message_complete(self) -> None:
        resp = self.response
        if resp is None or resp.done:
            return
        if resp.status == 0:
            return  # an informational answer (on_headers_complete skipped it)
        self._finish(resp.keep_alive and not resp.until_eof)

    # ---- the response in progress --------------------------------------------------------
    def _finish(self, keep_alive: bool) -> None:
        resp = self.response
        assert resp is not None
        resp.keep_alive = keep_alive
        resp.done = True  # the read timer, left armed, finds nothing to time and stops (see send)
        resp._wake()

    def _fail(self, exc: BaseException) -> None:
        resp = self.response
        if resp is None:
            return
        self._cancel_timer()
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        elif not resp.done and resp.exc is None:
            resp.exc = exc
            resp._wake()

    def send(self, resp: Response, data: bytes, body: bytes) -> asyncio.Future:
        """Writes the request; the future resolves to `resp` once its head has been read."""
        self.response = resp
        self._skip_body = False
        self._raw = []
        self.head = self.loop.create_future()
        timeout = self.pool.read_timeout
        if timeout:
            self.last_read = self.loop.time()
            if self.timer is None:  # one timer per connection, not per request: it re-arms itself from last_read
                self.timer = self.loop.call_at(self.last_read + timeout, self._check_timeout)
        transport = self.transport
        assert transport is not None
        if len(body) < 65536:
            transport.write(data + body)
        else:
            transport.writelines((data, body))
        return self.head

    async def send_body(self, body: StreamedBody) -> None:
        """Writes a streamed body as its pieces come (after send()), waiting while the provider takes none of it. Stops
        as soon as the provider has answered, or failed: the rest is not sent, and the connection is not reused."""
        head, transport, sent = self.head, self.transport, 0
        assert head is not None and transport is not None
        async for piece in body:
            if head.done() or self.closed:
                break
            transport.write(piece)
            sent += len(piece)
            self.last_read = self.loop.time()  # the read timeout counts the provider's silence from the body's end
            if self.write_paused and not self.closed:
                self.drained = self.loop.create_future()
                await asyncio.wait((self.drained, head), return_when=asyncio.FIRST_COMPLETED)
                self.drained = None
        if sent != body.length:
            self._junk = True  # the next request would follow a body cut short

    def _check_timeout(self) -> None:
        self.timer = None
        if self.paused or self.response is None or self.response.done:
            return
        deadline = self.last_read + self.pool.read_timeout
        now = self.loop.time()
        if now < deadline:
            self.timer = self.loop.call_at(deadline, self._check_timeout)
            return
        self._fail(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
        self.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self._cancel_timer()  # the wait is the consumer's, not the provider's
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
            timeout = self.pool.read_timeout
            if timeout and self.timer is None and self.response is not None and not self.response.done:
                self.last_read = self.loop.time()
                self.timer = self.loop.call_at(self.last_read + timeout, self._check_timeout)

    def reusable(self) -> bool:
        # a request not all written (answered before its body was read): the rest would precede the next request
        return (not self.closed and not self._junk and not self.paused and self.transport is not None
                and not self.transport.get_write_buffer_size())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timer()
            if self.transport is not None:
                if self.transport.get_write_buffer_size():
                    # a request the provider has not read whole: close() would first write the rest, keeping the
                    # connection open (out of the pool's count) until the provider reads it, and then answers it
                    self.transport.abort()
                else:
                    self.transport.close()


class Response:
    """The provider's answer: status and headers, and the body as it arrives."""

    __slots__ = ("_conn", "_size", "_waiter", "chunked", "chunks", "done", "exc", "headers", "keep_alive", "method",
                 "raw_headers", "status", "until_eof", "url")

    def __init__(self, conn: Connection, method: str, url: URL) -> None:
        self._conn: Connection | None = conn
        self.method, self.url = method, url
        self.status = 0
        self.headers: Headers = Headers(())
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = ()
        self.keep_alive = False
        self.chunked = self.until_eof = False
        self.chunks: deque[bytes] = deque()
        self._size = 0
        self._waiter: asyncio.Future | None = None
        self.done = False
        self.exc: BaseException | None = None

    @property
    def content(self) -> Response:  # aiohttp's `resp.content.iter_any()`
        return self

    def iter_any(self) -> Response:
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self.chunks
            if chunks:
                return self._take()
            if self.exc is not None:
                raise self.exc
            if self.done:
                raise StopAsyncIteration
            conn = self._conn
            if conn is None:
                raise aiohttp.ClientConnectionError("Connection closed")
            waiter = self._waiter = conn.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _take(self) -> bytes:
        chunks = self.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    def _feed(self, data: bytes) -> None:
        self.chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.pause()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    def unread(self, data: bytes) -> None:
        """Puts `data`, read from the start of the body, back in front of the rest: the answer is relayed whole."""
        if data:
            self.chunks.appendleft(data)
            self._size += len(data)

    def release(self) -> None:
        """Back to the pool if the body was read to its end and the connection may be reused;
        closed otherwise."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if self.done and self.exc is None and self.keep_alive and not self.chunks and conn.reusable():
            conn.response = conn.head = None
            conn.pool._put_back(conn)
        else:
            conn.close()
            conn.pool._drop(conn)

    def close(self) -> None:
        """Drops the connection (a read waiting on the body ends with ClientConnectionError)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if not self.done and self.exc is None:
            self.exc = aiohttp.ClientConnectionError("Connection closed")
        conn.close()
        conn.pool._drop(conn)
        self._wake()


class Attempt:
    """Per upstream request: `reused` tells whether its connection came from the pool."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


class UpstreamPool:
    """Keep-alive connections per (scheme, host, port, socket factory); at most `limit` in use
    (connecting, or with a request in flight) at once; idle ones are closed after KEEPALIVE_TIMEOUT."""

    def __init__(self, *, limit: int = 100, connect_timeout: float | None = None, read_timeout: float | None = None,
                 dns_ttl: float = 300.0, resolver: Any = None, ssl_context: ssl.SSLContext | None = None,
                 keepalive_timeout: float = KEEPALIVE_TIMEOUT) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout or None
        self.read_timeout = read_timeout or None
        self.dns_ttl = dns_ttl
        self.resolver = resolver  # aiohttp's AbstractResolver interface; None: loop.getaddrinfo
        self._ssl = ssl_context
        self.keepalive_timeout = keepalive_timeout
        self.in_use = 0
        self._idle: dict[tuple, list[Connection]] = {}
        self._all: set[Connection] = set()
        self._waiters: deque[asyncio.Future] = deque()
        self._dns: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    # ---- requests ---------------------------------------------------------------------------
    async def request(self, method: str, url: str | URL, headers: list[tuple[str, str]], body: bytes | StreamedBody = b"",
                      attempt: Attempt | None = None, socket_factory: SocketFactory | None = None) -> Response:
        """Sends the request and returns the response once its head is read (the body follows). A StreamedBody goes on
        a new connection: it cannot be sent again should a pooled one turn out closed by the provider."""
        if self.closed:
            raise RuntimeError("the upstream pool is closed")
        u = url if isinstance(url, URL) else URL(url)
        scheme = u.scheme
        if scheme not in ("http", "https"):
            raise aiohttp.InvalidURL(url)
        host = u.raw_host
        if not host:
            raise aiohttp.InvalidURL(url)
        port = u.port or (443 if scheme == "https" else 80)
        parts = [f"{method} {u.raw_path_qs or '/'} HTTP/1.1\r\nHost: {u.host_port_subcomponent}\r\n"]
        for n, v in headers:
            if not _CRLF.isdisjoint(n) or not _CRLF.isdisjoint(v):
                raise ValueError(f"header {n!r} holds a line break")
            parts.append(f"{n}: {v}\r\n")
        streamed = not isinstance(body, bytes)
        length = body.length if streamed else len(body)  # type: ignore[union-attr]
        if length or method not in GET_METHODS:
            parts.append(f"Content-Length: {length}\r\n")
        parts.append("\r\n")
        data = "".join(parts).encode()  # header values are UTF-8 text (headers.decode_headers)
        key = (scheme, host, port, socket_factory)
        conn = None if streamed else self._reuse(key)
        if conn is None:
            conn = await self._connect(key, socket_factory, fresh=streamed)
        if conn.used and attempt is not None:
            attempt.reused = True
        conn.used = True
        resp = Response(conn, method, u)
        try:
            if not streamed:
                return await conn.send(resp, data, body)  # type: ignore[arg-type]
            head = conn.send(resp, data, b"")
            await conn.send_body(body)  # type: ignore[arg-type]
            return await head
        except BaseException:
            resp.close()
            raise

    def _reuse(self, key: tuple) -> Connection | None:
        """An idle connection of `key`, if a slot is free at once (it takes the slot)."""
        if self.in_use >= self.limit or self._waiters or not self._idle.get(key):
            return None
        conn = self._pop_idle(key)
        if conn is not None:
            self.in_use += 1
        return conn

    def _pop_idle(self, key: tuple) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.keepalive_timeout:
                conn.close()
                self._all.discard(conn)
                continue
            return conn
        return None

    async def _connect(self, key: tuple, socket_factory: SocketFactory | None, fresh: bool = False) -> Connection:
        scheme, host, port, _ = key
        try:
            if self.connect_timeout is None:
                return await self._open(key, socket_factory, fresh)
            async with asyncio.timeout(self.connect_timeout):
                return await self._open(key, socket_factory, fresh)
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise
            raise aiohttp.ConnectionTimeoutError(f"Connection timeout to host {scheme}://{host}:{port}") from exc

    async def _open(self, key: tuple, socket_factory: SocketFactory | None, fresh: bool = False) -> Connection:
        await self._slot()
        conn = None if fresh else self._pop_idle(key)  # released while this request waited for its slot
        if conn is not None:
            return conn
        try:
            conn = await self._dial(key, socket_factory)
        except BaseException:
            self._release_slot()
            raise
        self._all.add(conn)
        return conn

    async def _slot(self) -> None:
        """Waits until fewer than `limit` connections are in use, then takes one slot."""
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # set by _release_slot, which hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot as we were cancelled: pass it on
            else:
                # cancelled in the turn in which a slot was freed: _release_slot already dropped it
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter: in_use unchanged
                return
        self.in_use -= 1

    async def _dial(self, key: tuple, socket_factory: SocketFactory | None) -> Connection:
        scheme, host, port, _ = key
        loop = asyncio.get_running_loop()
        conn_key = _ConnKey(host, port, scheme == "https")
        try:
            infos = await self._resolve(host, port)
        except OSError as exc:
            raise aiohttp.ClientConnectorDNSError(conn_key, exc) from exc
        last: OSError | None = None
        opener = socket_factory or _open_socket
        for info in infos:
            try:
                sock = opener(info)
            except OSError as exc:
                last = exc
                continue
            conn = Connection(self, key, loop)
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, info[4])
                if scheme == "https":
                    await loop.create_connection(lambda c=conn: c, sock=sock, ssl=self._ssl_context(),
                                                 server_hostname=host.rstrip("."))
                else:
                    await loop.create_connection(lambda c=conn: c, sock=sock)
            except ssl.SSLCertVerificationError as exc:  # (SSL errors are OSErrors: these come first)
                sock.close()
                raise aiohttp.ClientConnectorCertificateError(conn_key, exc) from exc
            except ssl.SSLError as exc:
                sock.close()
                raise aiohttp.ClientConnectorSSLError(conn_key, exc) from exc
            except OSError as exc:  # refused, unreachable...: the next address
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            return conn
        if last is None:
            last = OSError(f"no address for {host}")
        raise aiohttp.ClientConnectorError(conn_key, last) from last

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def _resolve(self, host: str, port: int) -> list[AddrInfo]:
        try:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            pass  # a name, not an IP literal
        cache_key = (host, port)
        now = time.monotonic()
        hit = self._dns.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self.resolver is not None:
            answers = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
            infos = [(a["family"], socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                      (a["host"], a["port"]) if a["family"] == socket.AF_INET else (a["host"], a["port"], 0, 0))
                     for a in answers]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} has no address")
        if self.dns_ttl > 0:
            if len(self._dns) > 1000:
                self._dns.clear()
            self._dns[cache_key] = (now + self.dns_ttl, infos)
        return infos

    # ---- pool bookkeeping -----------------------------------------------------------------------
    def _put_back(self, conn: Connection) -> None:
        self._release_slot()
        if self.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = conn.loop.call_later(self.keepalive_timeout, self._sweep)

    def _drop(self, conn: Connection) -> None:
        """A connection in use was closed."""
        if conn in self._all:
            self._all.discard(conn)
            self._release_slot()

    def _lost(self, conn: Connection) -> None:
        """The transport went away (either side closed it)."""
        if conn.response is None:  # idle: leaves the pool (the idle list skips it lazily)
            self._all.discard(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if conn.closed:
                    continue
                if now - conn.idle_since > self.keepalive_timeout:
                    conn.close()
                    self._all.discard(conn)
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle and not self.closed:
            self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_timeout, self._sweep)

    def idle_count(self) -> int:
        return sum(1 for idle in self._idle.values() for c in idle if not c.closed)

    async def close(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
