"""The gateway's upstream client (helicone_gateway.upstream) against raw loopback servers: framing,
keep-alive, streaming, flow control, timeouts, the connection limit, failures and TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import time

import aiohttp
import pytest
from helicone_gateway import upstream as upstream_module
from helicone_gateway.upstream import Attempt, UpstreamPool

from tests.support.fake_network import FakeResolver
from tests.support.net import free_port


class Server:
    """A loopback HTTP/1.1 server: reads each request (head and Content-Length body) and hands it
    to `handler(server, request, writer)`, which writes whatever it likes; it returns False to stop
    reading that connection (and close it)."""

    def __init__(self, handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl = ssl_context
        self.port = free_port()
        self.requests: list[dict] = []
        self.conns = 0
        self.open_conns = 0
        self.max_open = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.ssl)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns += 1
        self.open_conns += 1
        self.max_open = max(self.max_open, self.open_conns)
        self.writers.append(writer)
        conn_no = self.conns
        peer = writer.get_extra_info("peername")[:2]
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
                length = next((int(v) for n, v in headers if n.lower() == "content-length"), 0)
                body = await reader.readexactly(length)
                request = {"conn": conn_no, "peer": peer, "line": lines[0], "headers": headers, "body": body, "raw": head}
                self.requests.append(request)
                if await self.handler(self, request, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_conns -= 1
            writer.close()


def answer(body: bytes = b"ok", status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def fixed(data: bytes, keep_open: bool = True):
    async def handler(server, request, writer):
        writer.write(data)
        await writer.drain()
        return keep_open
    return handler


@contextlib.asynccontextmanager
async def pool(**options):
    p = UpstreamPool(**{"limit": 10, "connect_timeout": 5, "read_timeout": 5, **options})
    try:
        yield p
    finally:
        await p.close()


async def get(p: UpstreamPool, url: str, method: str = "GET", headers=(), body: bytes = b"", attempt=None):
    resp = await asyncio.wait_for(p.request(method, url, list(headers), body, attempt), 5)
    data = await asyncio.wait_for(resp.read(), 5)  # a body whose end is missed fails here, not by hanging
    resp.release()
    return resp, data


# ---- the request as sent --------------------------------------------------------------------------


async def test_the_request_carries_host_the_callers_headers_and_content_length_only():
    async with Server(fixed(answer())) as server, pool() as p:
        await get(p, server.url + "/v1/chat?x=1", "POST", [("authorization", "Bearer k"), ("x-city", "Zürich")], b"{}")
        await get(p, server.url + "/v1/models")
    post, plain_get = server.requests
    assert post["line"] == "POST /v1/chat?x=1 HTTP/1.1"
    assert post["headers"] == [("Host", f"127.0.0.1:{server.port}"), ("authorization", "Bearer k"),
                               ("x-city", "Zürich"), ("Content-Length", "2")]
    assert post["body"] == b"{}"
    assert plain_get["headers"] == [("Host", f"127.0.0.1:{server.port}")]  # no User-Agent, Accept, Content-Length: 0


async def test_header_injection_is_refused_before_anything_is_sent():
    async with Server(fixed(answer())) as server, pool() as p:
        with pytest.raises(ValueError):
            await p.request("GET", server.url + "/", [("x-a", "1\r\nx-injected: 2")], b"")
    assert server.requests == []


# ---- framing -------------------------------------------------------------------------------------------


async def test_content_length_chunked_and_eof_delimited_bodies():
    responses = {
        "/cl": answer(b"hello world"),
        "/chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "/eof": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello world",
    }

    async def handler(server, request, writer):
        path = request["line"].split()[1]
        writer.write(responses[path])
        await writer.drain()
        return path != "/eof"  # an EOF-delimited body ends when the server closes

    async with Server(handler) as server, pool() as p:
        for path in ("/cl", "/chunked", "/eof", "/cl"):
            resp, data = await get(p, server.url + path)
            assert (resp.status, data) == (200, b"hello world"), path
        assert resp.headers.get("CONTENT-LENGTH") == "11" and resp.raw_headers == ((b"Content-Length", b"11"),)
    # /cl and /chunked share connection 1; /eof closes it; the last /cl needs connection 2
    assert [r["conn"] for r in server.requests] == [1, 1, 1, 2]


async def test_head_204_and_304_have_no_body_and_keep_the_connection():
    async def handler(server, request, writer):
        method, path, _ = request["line"].split()
        if method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")  # announced, never sent
        elif path == "/204":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif path == "/304":
            writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n")
        else:
            writer.write(answer(b"after"))
        await writer.drain()

    async with Server(handler) as server, pool(read_timeout=2) as p:
        started = time.monotonic()
        for method, path in (("HEAD", "/"), ("GET", "/204"), ("GET", "/304"), ("GET", "/")):
            attempt = Attempt()
            resp, data = await get(p, server.url + path, method, attempt=attempt)
            assert data == (b"after" if path == "/" and method == "GET" else b""), (method, path)
        assert time.monotonic() - started < 1.5  # nothing waited for the announced bodies
        assert attempt.reused
    assert {r["conn"] for r in server.requests} == {1}


async def test_informational_answers_are_skipped():
    async with Server(fixed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + answer(b"real"))) as server, pool() as p:
        resp, data = await get(p, server.url + "/")
    assert (resp.status, data) == (200, b"real") and resp.raw_headers == ((b"Content-Length", b"4"),)


# ---- keep-alive -------------------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection_and_say_so():
    async with Server(fixed(answer())) as server, pool() as p:
        first, second = Attempt(), Attempt()
        await get(p, server.url + "/", attempt=first)
        await get(p, server.url + "/", attempt=second)
        assert p.idle_count() == 1
    assert [r["conn"] for r in server.requests] == [1, 1]
    assert server.requests[0]["peer"] == server.requests[1]["peer"]  # the same client socket
    assert (first.reused, second.reused) == (False, True)


@pytest.mark.parametrize("reply", [
    answer(extra="Connection: close\r\n"),
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
])
async def test_connection_close_and_http_1_0_are_not_reused(reply):
    async with Server(fixed(reply)) as server, pool() as p:
        for _ in range(2):
            attempt = Attempt()
            resp, data = await get(p, server.url + "/", attempt=attempt)
            assert data == b"ok" and not attempt.reused
        assert p.idle_count() == 0
    assert [r["conn"] for r in server.requests] == [1, 2]


async def test_a_response_not_read_to_its_end_is_not_reused():
    async with Server(fixed(answer(b"x" * 100))) as server, pool() as p:
        resp = await p.request("GET", server.url + "/", [], b"")
        resp.release()  # body unread
        await get(p, server.url + "/")
    assert [r["conn"] for r in server.requests] == [1, 2]


class EarlyAnswer(asyncio.Protocol):
    """Answers (keep-alive) as soon as a request's head is in, without reading its body."""

    def connection_made(self, transport) -> None:
        self.transport, self.head = transport, b""

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head:
            self.transport.pause_reading()
            self.transport.write(answer(b"too big", "413 Payload Too Large"))


async def test_a_connection_whose_request_was_not_all_sent_is_not_reused():
    """An answer may come before the provider read the body: the rest of that body, still in the connection's
    buffer, would go out ahead of the next request on it (the provider reading one caller's body bytes as the
    next caller's request)."""
    port = free_port()
    server = await asyncio.get_running_loop().create_server(EarlyAnswer, "127.0.0.1", port)
    try:
        async with pool() as p:
            resp, data = await get(p, f"http://127.0.0.1:{port}/", "POST", body=b"x" * (32 << 20))
            assert (resp.status, data) == (413, b"too big")
            assert p.idle_count() == 0 and p.in_use == 0
    finally:
        server.close()


async def test_a_pooled_connection_closed_by_the_server_fails_with_server_disconnected():
    async def handler(server, request, writer):
        if len(server.requests) == 2:  # the reused connection: closed without an answer
            return False
        writer.write(answer())
        await writer.drain()

    async with Server(handler) as server, pool() as p:
        await get(p, server.url + "/")
        attempt = Attempt()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await p.request("GET", server.url + "/", [], b"", attempt)
        assert attempt.reused
        await get(p, server.url + "/")  # and the next request gets a new connection
        assert p.in_use == 0
    assert [r["conn"] for r in server.requests] == [1, 1, 2]


# ---- streaming and flow control -------------------------------------------------------------------------------


async def test_a_stream_arrives_chunk_by_chunk():
    go_on = asyncio.Event()

    async def handler(server, request, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"d\r\ndata: first\n\n\r\n")
        await writer.drain()
        await go_on.wait()  # the last chunk only once the client has seen the first
        writer.write(b"c\r\ndata: last\n\n\r\n0\r\n\r\n")
        await writer.drain()

    async with Server(handler) as server, pool() as p:
        resp = await p.request("POST", server.url + "/", [], b"{}")
        chunks = aiter(resp.content.iter_any())
        assert await asyncio.wait_for(anext(chunks), 2) == b"data: first\n\n"
        go_on.set()
        assert await asyncio.wait_for(anext(chunks), 2) == b"data: last\n\n"
        with pytest.raises(StopAsyncIteration):
            await anext(chunks)
        resp.release()
        assert p.idle_count() == 1


async def test_a_slow_consumer_pauses_reading_instead_of_buffering_everything():
    total = 16 * 1024 * 1024
    sent = asyncio.Event()

    async def handler(server, request, writer):
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        block = b"x" * (1024 * 1024)
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()
        sent.set()

    async with Server(handler) as server, pool() as p:
        resp = await p.request("GET", server.url + "/", [], b"")
        await asyncio.sleep(0.5)  # the consumer lags: the server can only fill the buffers
        buffered = sum(len(c) for c in resp.chunks)
        assert buffered <= upstream_module.HIGH_WATER + 512 * 1024, buffered
        assert not sent.is_set()  # the server is held back by TCP flow control
        received = 0
        async for chunk in resp.content.iter_any():
            received += len(chunk)
        resp.release()
    assert received == total and sent.is_set()


async def test_closing_a_response_wakes_a_reader_waiting_for_the_body():
    async with Server(fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")) as server, pool() as p:
        resp = await p.request("GET", server.url + "/", [], b"")
        chunks = aiter(resp.content.iter_any())
        assert await anext(chunks) == b"abc"
        asyncio.get_running_loop().call_later(0.1, resp.close)
        with pytest.raises(aiohttp.ClientConnectionError):
            await asyncio.wait_for(anext(chunks), 2)
        assert p.in_use == 0


# ---- broken bodies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nonly this\r\n",
])
async def test_a_body_cut_short_is_a_payload_error(reply):
    async with Server(fixed(reply, keep_open=False)) as server, pool() as p:
        resp = await p.request("GET", server.url + "/", [], b"")
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
        resp.close()
        assert p.in_use == 0


async def test_a_garbled_head_is_a_client_error():
    async with Server(fixed(b"SMTP ready\r\n\r\n")) as server, pool() as p:
        with pytest.raises(aiohttp.ClientResponseError):
            await p.request("GET", server.url + "/", [], b"")
        assert p.in_use == 0


# ---- timeouts, connect failures, the limit --------------------------------------------------------------------


async def test_read_timeout_waiting_for_the_head_and_between_body_bytes():
    async def handler(server, request, writer):
        if request["line"].split()[1] == "/stall":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
        await asyncio.sleep(5)  # then silence

    async with Server(handler) as server, pool(read_timeout=0.3) as p:
        started = time.monotonic()
        with pytest.raises(aiohttp.SocketTimeoutError):
            await p.request("GET", server.url + "/hang", [], b"")
        assert 0.25 < time.monotonic() - started < 2
        resp = await p.request("GET", server.url + "/stall", [], b"")
        with pytest.raises(aiohttp.SocketTimeoutError):
            await resp.read()
        resp.close()
        assert p.in_use == 0


async def test_one_read_timer_per_connection_times_each_request_from_its_own_start(monkeypatch):
    async def handler(server, request, writer):
        if request["line"].split()[1] == "/hang":
            await asyncio.sleep(5)
            return False
        writer.write(answer())
        await writer.drain()
        return True

    loop = asyncio.get_running_loop()
    armed = []
    call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kw):
        if getattr(callback, "__name__", "") == "_check_timeout":
            armed.append(when)
        return call_at(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    async with Server(handler) as server, pool(read_timeout=0.4) as p:
        for _ in range(5):
            await get(p, server.url + "/")
        assert len(armed) == 1  # five requests on one kept-alive connection: one timer, not one each
        await asyncio.sleep(0.3)  # that timer is due 0.1 s into the next request
        started = time.monotonic()
        with pytest.raises(aiohttp.SocketTimeoutError):
            await p.request("GET", server.url + "/hang", [], b"")
        assert 0.35 < time.monotonic() - started < 2  # timed from its own start
        assert {r["conn"] for r in server.requests} == {1}


async def test_a_request_cancelled_in_the_turn_its_slot_frees_ends_cancelled_and_frees_the_slot():
    async with Server(fixed(answer())) as server, pool(limit=1) as p:
        first = await p.request("GET", server.url + "/", [], b"")
        await first.read()  # it holds the only slot until released
        waiting = asyncio.ensure_future(p.request("GET", server.url + "/", [], b""))
        await asyncio.sleep(0.01)
        assert len(p._waiters) == 1
        waiting.cancel()  # the caller leaves ...
        first.release()  # ... in the turn of the loop in which the slot is freed
        with pytest.raises(asyncio.CancelledError):  # not ValueError from the waiter list
            await waiting
        assert p.in_use == 0 and not p._waiters
        _, data = await get(p, server.url + "/")
        assert data == b"ok"


async def test_a_slow_but_steady_stream_does_not_time_out():
    async def handler(server, request, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with Server(handler) as server, pool(read_timeout=0.25) as p:
        _, data = await get(p, server.url + "/")  # 0.6 s in all, never 0.25 s of silence
    assert data == b"xxxxxx"


async def test_connection_refused_is_a_connector_error():
    async with pool() as p:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await p.request("GET", f"http://127.0.0.1:{free_port()}/", [], b"")
        assert isinstance(info.value, aiohttp.ClientOSError) and p.in_use == 0


async def test_the_connection_limit_is_respected_and_waiting_for_it_counts_against_connect_timeout():
    release = asyncio.Event()

    async def handler(server, request, writer):
        await release.wait()
        writer.write(answer())
        await writer.drain()

    async with Server(handler) as server, pool(limit=2, connect_timeout=0.3) as p:
        tasks = [asyncio.ensure_future(get(p, server.url + "/")) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert server.open_conns == 2 and p.in_use == 2
        with pytest.raises(aiohttp.ConnectionTimeoutError):  # no slot within connect_timeout
            await p.request("GET", server.url + "/", [], b"")
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    # the three waiting longer than connect_timeout failed the same way; the limit was never exceeded
    assert server.max_open == 2
    assert sum(1 for r in results if isinstance(r, aiohttp.ConnectionTimeoutError)) == 3
    assert [r[1] for r in results if not isinstance(r, BaseException)] == [b"ok", b"ok"]


async def test_waiters_for_a_slot_get_it_in_turn_and_reuse_released_connections():
    async def handler(server, request, writer):
        await asyncio.sleep(0.05)
        writer.write(answer())
        await writer.drain()

    async with Server(handler) as server, pool(limit=2) as p:
        results = await asyncio.gather(*(get(p, server.url + "/") for _ in range(8)))
        assert p.in_use == 0
    assert all(data == b"ok" for _, data in results)
    assert server.max_open == 2 and server.conns == 2  # released connections served the waiters


async def test_names_are_resolved_through_the_ttl_cache_and_every_address_is_tried():
    refused_port = free_port()
    async with Server(fixed(answer())) as server:
        resolver = FakeResolver({"upstream.test": [["127.0.0.1"]]})
        async with pool(resolver=resolver, dns_ttl=300) as p:
            await get(p, f"http://upstream.test:{server.port}/")
            resp = await p.request("GET", f"http://upstream.test:{server.port}/", [("connection", "close")], b"")
            await resp.read()
            resp.close()
            await get(p, f"http://upstream.test:{server.port}/")
        assert resolver.asked == ["upstream.test"]
        assert server.requests[0]["headers"][0] == ("Host", f"upstream.test:{server.port}")
        # an address that refuses is skipped for the next one
        resolver = FakeResolver({"two.test": [["::1", "127.0.0.1"]]})
        async with pool(resolver=resolver, dns_ttl=0) as p:
            with pytest.raises(aiohttp.ClientConnectorError):
                await p.request("GET", f"http://two.test:{refused_port}/", [], b"")
            _, data = await get(p, f"http://two.test:{server.port}/")  # ::1 refuses (not listening there)
        assert data == b"ok" and resolver.asked == ["two.test", "two.test"]


async def test_a_socket_factory_sees_every_address_and_pools_apart():
    seen = []

    def factory(addr_info):
        seen.append(addr_info[4][:2])
        return upstream_module._open_socket(addr_info)

    async with Server(fixed(answer())) as server, pool() as p:
        await get(p, server.url + "/")
        guarded = Attempt()
        resp = await p.request("GET", server.url + "/", [], b"", guarded, factory)
        await resp.read()
        resp.release()
        assert not guarded.reused  # the unguarded idle connection is not handed to guarded traffic
    assert seen == [("127.0.0.1", server.port)] and [r["conn"] for r in server.requests] == [1, 2]


# ---- TLS ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


async def test_https_verifies_the_server_and_keeps_the_connection(tls_cert):
    cert_file, key_file = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    async with Server(fixed(answer(b"secret")), ssl_context=server_ctx) as server:
        async with pool(ssl_context=trusting) as p:
            second = Attempt()
            await get(p, server.url + "/")
            resp, data = await get(p, server.url + "/", attempt=second)
        assert data == b"secret" and second.reused and [r["conn"] for r in server.requests] == [1, 1]
        async with pool() as p:  # the system's trust store does not know the self-signed certificate
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await p.request("GET", server.url + "/", [], b"")
