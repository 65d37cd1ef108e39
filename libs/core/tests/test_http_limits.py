"""Header limits: the app-level check, and the HTTP server itself (uvicorn on loopback, as the
services run it) refusing a huge header block while it arrives, without breaking ordinary traffic."""

from __future__ import annotations

import asyncio
import sys

from helicone_core.http_limits import HeadWithBody, header_limit_error, server_head_limit, uvicorn_limits
from helicone_core.settings import ServiceSettings

from tests.support.inloop import serve

SETTINGS = ServiceSettings(_env_file=None)


def test_header_limit_error_names_the_limit_and_the_setting():
    at_count = {"headers": [(b"h", b"")] * 100}
    assert header_limit_error(at_count, 100, 65536) is None
    over = header_limit_error({"headers": [(b"h", b"")] * 101}, 100, 65536)
    assert over == "request has 101 headers; at most 100 are accepted (max_header_count, HELICONE_MAX_HEADER_COUNT)"
    at_bytes = {"headers": [(b"name", b"v" * 65532)]}
    assert header_limit_error(at_bytes, 100, 65536) is None
    over = header_limit_error({"headers": [(b"name", b"v" * 65532), (b"x", b"")]}, 100, 65536)
    assert "65537 bytes" in over and "at most 65536" in over and "HELICONE_MAX_HEADER_BYTES" in over


SEEN: list[int] = []  # header bytes of every request the app got


async def app(scope, receive, send):
    """Answers with the number of header and body bytes it got."""
    if scope["type"] != "http":
        return
    SEEN.append(sum(len(n) + len(v) for n, v in scope["headers"]))
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    headers = sum(len(n) + len(v) for n, v in scope["headers"])
    body = b"%d %d" % (headers, size)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def exchange(url: str, requests: list[bytes], answers: int = 1, timeout: float = 10) -> list[tuple[int, bytes]]:
    """Sends the raw requests on one connection (while reading: the server may answer early and
    close), returns the (status, body) answers."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))

    async def write():
        try:
            for raw in requests:
                writer.write(raw)
                await writer.drain()
        except ConnectionError:
            pass  # refused mid-way: the answer is what counts

    sending = asyncio.create_task(write())
    out = []
    try:
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            length = fields.get("content-length")
            body = await (reader.readexactly(int(length)) if length else asyncio.wait_for(reader.read(), timeout))
            out.append((int(lines[0].split()[1]), body))
    finally:
        sending.cancel()
        writer.close()
    return out


def request(headers: bytes = b"", body: bytes = b"") -> bytes:
    return b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), headers, body)


EIGHT_MB_ONE = b"x-big: " + b"a" * 8_000_000 + b"\r\n"
EIGHT_MB_MANY = b"".join(b"x-h%d: %s\r\n" % (i, b"a" * 8000) for i in range(1000))


async def test_the_server_refuses_a_huge_header_block_as_it_arrives():
    async with serve(app, **uvicorn_limits(SETTINGS)) as url:
        SEEN.clear()
        for block in (EIGHT_MB_ONE, EIGHT_MB_MANY):
            [(status, body)] = await exchange(url, [request(block)])
            assert status == 431 and b"HELICONE_MAX_HEADER_BYTES" in body and b"%d bytes" % server_head_limit(SETTINGS) in body
        assert SEEN == []
        # a head as large as the app's limits allow still reaches the app
        within = b"".join(b"x-h%02d: %s\r\n" % (i, b"a" * 600) for i in range(99))
        [(status, body)] = await exchange(url, [request(within)])
        assert status == 200 and body.startswith(b"%d " % (99 * 605 + 4 + 1 + 14 + 1))


async def test_big_bodies_and_pipelined_requests_are_not_counted_as_heads():
    async with serve(app, **uvicorn_limits(SETTINGS)) as url:
        big = b"b" * (3 * server_head_limit(SETTINGS))
        answers = await exchange(url, [request(body=big), request(body=b"x") + request(body=big) + request()], answers=4)
        assert [(s, b.split()[1]) for s, b in answers] == [(200, b"%d" % len(big)), (200, b"1"), (200, b"%d" % len(big)), (200, b"0")]


async def test_without_httptools_h11_is_used_with_the_same_limit(monkeypatch):
    monkeypatch.setitem(sys.modules, "httptools", None)  # import fails
    options = uvicorn_limits(SETTINGS)
    assert options == {"http": "h11", "h11_max_incomplete_event_size": server_head_limit(SETTINGS)}
    async with serve(app, **options) as url:
        SEEN.clear()
        try:
            [(status, _)] = await exchange(url, [request(EIGHT_MB_ONE)])
            assert status == 400  # h11's own answer to a head over its limit...
        except ConnectionResetError:
            pass  # ...which uvicorn sends and closes at once: the caller may get the reset first
        assert SEEN == []
        [(status, _)] = await exchange(url, [request(b"x-a: b\r\n", b"hello")])
        assert status == 200 and len(SEEN) == 1


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str):
        return ("peer", name)


async def test_a_response_head_goes_out_with_the_first_body_chunk():
    raw = FakeTransport()
    t = HeadWithBody(raw, asyncio.get_running_loop())
    t.write(b"HEAD")
    assert raw.sent == []
    t.write(b"body1")
    t.write(b"body2")
    assert raw.sent == [b"HEADbody1", b"body2"]
    await asyncio.sleep(0)  # the end-of-iteration flush finds nothing held
    assert raw.sent == [b"HEADbody1", b"body2"]
    assert t.get_extra_info("x") == ("peer", "x") and not t.is_closing()


async def test_a_head_without_a_body_at_hand_goes_out_at_the_end_of_the_iteration():
    raw = FakeTransport()
    t = HeadWithBody(raw, asyncio.get_running_loop())
    t.write(b"")  # nothing to hold
    t.write(b"HEAD")
    await asyncio.sleep(0)
    assert raw.sent == [b"HEAD"]
    t.write(b"later")
    assert raw.sent == [b"HEAD", b"later"]
    held = HeadWithBody(raw, asyncio.get_running_loop())
    held.write(b"H2")
    held.close()  # flushed before the close
    assert raw.sent[-1] == b"H2" and raw.closed
    gone = FakeTransport()
    late = HeadWithBody(gone, asyncio.get_running_loop())
    late.write(b"H3")
    gone.closed = True  # the caller left before the end of the iteration: nothing is written to a closed transport
    await asyncio.sleep(0)
    assert gone.sent == []


async def stream_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"late", "more_body": False})


async def test_a_streamed_head_is_not_held_until_the_body():
    async with serve(stream_app, **uvicorn_limits(SETTINGS)) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request())
            started = asyncio.get_running_loop().time()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200") and asyncio.get_running_loop().time() - started < 0.25
            assert b"late" in await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        finally:
            writer.close()
