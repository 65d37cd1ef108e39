"""The gateway's HTTP/1.1 server (helicone_gateway.http_server) on the wire: raw bytes from a socket
client, so framing, keep-alive and refusals are seen as a caller sees them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest
from helicone_gateway.http_server import HttpServer

from tests.support.inloop import request_body


async def echo_app(scope, receive, send):
    """Answers with what it got: method, path, query, headers, body; some paths behave differently."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    path = scope["path"]
    body = await request_body(receive)
    if path == "/fail":
        raise ValueError("the app broke")
    if path == "/fail-midway":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("the app broke mid-answer")
    if path == "/inject":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-evil", b"a\r\nset-cookie: stolen=1")]})
        await send({"type": "http.response.body", "body": b"no"})
        return
    if path == "/stream":  # no Content-Length: framed by the server
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/slow":
        await asyncio.sleep(0.3)
    answer = json.dumps({"method": scope["method"], "path": path, "raw_path": scope["raw_path"].decode(),
                         "query": scope["query_string"].decode(), "body": body.decode("latin-1"),
                         "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


@contextlib.asynccontextmanager
async def running(app=echo_app, server: HttpServer | None = None, **options):
    """Serves `app` on a free loopback port (or runs `server`, built already) while the block runs."""
    server = server or HttpServer(app, "127.0.0.1", 0, **options)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise AssertionError("server did not start")
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response as framed on the wire: status, headers, body (Content-Length, chunked or to EOF)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if "content-length" in headers:
        return status, headers, await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
    return status, headers, await asyncio.wait_for(reader.read(), 5)


async def connect(server: HttpServer):
    return await asyncio.open_connection(*server.bound)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


def request(path: str = "/", body: bytes = b"", method: str = "POST", extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nhost: gw\r\ncontent-length: {len(body)}\r\n{extra}\r\n").encode() + body


async def test_keep_alive_serves_several_requests_on_one_connection_with_their_bodies_and_headers():
    async with running() as server:
        reader, writer = await connect(server)
        for i in range(3):
            writer.write(request(f"/v1/chat/completions?n={i}", b'{"i": %d}' % i, extra="X-Custom: Yes\r\n"))
            status, headers, body = await read_response(reader)
            got = json.loads(body)
            assert status == 200 and "date" in headers and "connection" not in headers
            assert got["path"] == "/v1/chat/completions" and got["query"] == f"n={i}" and got["body"] == f'{{"i": {i}}}'
            assert ["x-custom", "Yes"] in got["headers"]  # names lowercased, values as sent
        writer.close()


async def test_pipelined_requests_are_answered_in_order():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/slow", b"first") + request("/fast", b"second") + request("/third", b"third"))
        bodies = [json.loads((await read_response(reader))[2])["body"] for _ in range(3)]
        assert bodies == ["first", "second", "third"]
        writer.close()


async def test_percent_encoded_path_keeps_its_raw_form_for_the_proxy():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/v1/files/a%2Fb", method="GET"))
        got = json.loads((await read_response(reader))[2])
        assert got["raw_path"] == "/v1/files/a%2Fb" and got["path"] == "/v1/files/a/b"
        writer.close()


async def test_chunked_request_body_reaches_the_app_whole():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /c HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert json.loads((await read_response(reader))[2])["body"] == "hello world"
        writer.close()


async def test_large_body_arrives_intact():
    body = bytes(range(256)) * 8192  # 2 MiB, past the read-ahead bound: reading pauses and resumes
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/big", body))
        _, _, answer = await read_response(reader)
        assert json.loads(answer)["body"].encode("latin-1") == body
        writer.close()


async def test_response_without_length_is_chunked_on_http11_and_closes_on_http10():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/stream", method="GET"))
        status, headers, body = await read_response(reader)
        assert headers["transfer-encoding"] == "chunked" and body == b"one two three"
        writer.write(request("/", b"still open"))  # keep-alive after a chunked answer
        assert json.loads((await read_response(reader))[2])["body"] == "still open"
        writer.close()

        reader, writer = await connect(server)
        writer.write(b"GET /stream HTTP/1.0\r\nhost: gw\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert "transfer-encoding" not in headers and headers["connection"] == "close" and body == b"one two three"
        writer.close()


async def test_http10_keep_alive_is_kept_when_asked_for():
    async with running() as server:
        reader, writer = await connect(server)
        for _ in range(2):
            writer.write(b"GET /x HTTP/1.0\r\nhost: gw\r\nconnection: keep-alive\r\n\r\n")
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "keep-alive"
        writer.close()


async def test_head_and_204_have_no_body_and_the_connection_stays_usable():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/x", method="HEAD"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b" 200 " in head.split(b"\r\n")[0] and b"content-length:" in head
        writer.write(request("/empty", method="GET"))
        status, headers, _ = await read_response(reader)
        assert status == 204 and "transfer-encoding" not in headers
        writer.write(request("/after", b"ok"))  # nothing stray was written after either head
        assert json.loads((await read_response(reader))[2])["body"] == "ok"
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /e HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"body")
        assert json.loads((await read_response(reader))[2])["body"] == "body"
        writer.close()


async def test_oversized_request_head_is_refused_431_before_it_is_complete():
    async with running(max_head_bytes=4096) as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\n")
        for i in range(8):  # the head never ends: the server answers while it still arrives
            await asyncio.sleep(0.02)  # separate reads (the one in which the head began is not counted)
            writer.write(b"x-filler-%d: %s\r\n" % (i, b"a" * 1000))
        status, headers, body = await read_response(reader)
        assert status == 431 and headers["connection"] == "close"
        assert json.loads(body)["error"]["type"] == "request_headers_too_large"
        writer.close()


async def test_malformed_request_gets_400_and_the_connection_closes():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 400 and "invalid HTTP request" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)

        reader, writer = await connect(server)
        writer.write(b"GET /ws HTTP/1.1\r\nhost: gw\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 400 and json.loads(body)["error"]["message"].startswith("Upgrade: h2c is not supported")
        writer.close()


async def test_app_failure_before_answering_is_a_500_after_answering_a_cut_connection(caplog):
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/fail"))
        status, headers, body = await read_response(reader)
        assert status == 500 and headers["connection"] == "close" and json.loads(body)["error"]["type"] == "gateway_error"
        assert await closed_by_server(reader)

        reader, writer = await connect(server)
        writer.write(request("/fail-midway"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"content-length: 100" in head
        assert await asyncio.wait_for(reader.read(), 5) == b"partial"  # then end of stream: 93 bytes never came
    assert "the app broke" in caplog.text


async def test_a_response_header_with_a_line_break_never_reaches_the_wire():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/inject"))
        status, headers, _ = await read_response(reader)
        assert status == 500 and "set-cookie" not in headers


def answering_with(headers):
    """An app answering every request with `headers` and the body b"sent"."""
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await request_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"sent"})
    return app


@pytest.mark.parametrize("name, value", [
    (b"x-evil", b"a\nset-cookie: stolen=1"), (b"x-evil", b"a\rset-cookie: stolen=1"),
    (b"x-evil\r\nset-cookie", b"stolen=1"), (b"x-evil\nset-cookie", b"stolen=1"), (b"x-evil\rset-cookie", b"stolen=1"),
    (b"set-cookie: stolen=1\r\nx-evil", b"a"), (b"x-evil:", b"a"),
])
async def test_no_response_header_with_a_line_break_or_a_colon_in_its_name_reaches_the_wire(name, value):
    async with running(answering_with([(b"content-type", b"text/plain"), (name, value)])) as server:
        reader, writer = await connect(server)
        writer.write(request("/"))
        status, headers, body = await read_response(reader)
    assert status == 500 and "set-cookie" not in headers and body != b"sent"


async def test_response_headers_are_checked_without_a_bytes_in_test():
    """Each `b"\\n" in value` raises and clears a TypeError inside CPython 3.11 (bytes' `in` first tries its operand
    as a byte value), and the check took five a header: more than the rest of a small answer's head. A colon in a
    value (a time, a URL) is a value like any other."""
    tested = []

    class Spy(bytes):
        def __contains__(self, part):
            tested.append(part)
            return super().__contains__(part)

    headers = [(Spy(b"content-type"), Spy(b"text/plain")), (Spy(b"x-reset-at"), Spy(b"12:00:00")),
               (Spy(b"link"), Spy(b"<https://example.com/a>"))]
    async with running(answering_with(headers)) as server:
        reader, writer = await connect(server)
        writer.write(request("/"))
        status, got, body = await read_response(reader)
    assert (status, got["x-reset-at"], got["link"], body) == (200, "12:00:00", "<https://example.com/a>", b"sent")
    assert tested == []


async def test_receive_reports_the_caller_leaving_while_the_app_waits():
    seen: asyncio.Future = asyncio.get_running_loop().create_future()

    async def waits_for_disconnect(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await receive()  # the (empty) body
        watch = asyncio.ensure_future(receive())  # the gateway's watch for the caller leaving
        seen.set_result(await asyncio.wait_for(watch, 5))

    async with running(waits_for_disconnect) as server:
        reader, writer = await connect(server)
        writer.write(request("/wait"))
        await asyncio.sleep(0.1)
        writer.close()
        assert (await asyncio.wait_for(seen, 5))["type"] == "http.disconnect"


async def test_a_caller_leaving_mid_stream_is_not_logged_as_an_app_failure(caplog):
    """The gateway stops a stream when its caller leaves (a user stopping a generation, every day): the answer
    it never ended is not the app's fault, and an error line for each one would bury the real failures."""
    ended: asyncio.Future = asyncio.get_running_loop().create_future()

    async def streams_until_the_caller_leaves(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await receive()
        watch = asyncio.ensure_future(receive())  # the gateway's watch for the caller leaving
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.wait_for(watch, 5)
        ended.set_result(None)  # returns with the answer unfinished, as the gateway's handler does

    async with running(streams_until_the_caller_leaves) as server:
        reader, writer = await connect(server)
        writer.write(request("/stream"))
        await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 5)
        writer.close()
        await asyncio.wait_for(ended, 5)  # set as the app returns: the server's verdict is in by the time this wakes
    assert "before its response ended" not in caplog.text


async def test_idle_keep_alive_connection_is_closed_after_the_timeout():
    async with running(keepalive_timeout=0.3) as server:
        reader, writer = await connect(server)
        writer.write(request("/x"))
        await read_response(reader)
        assert await closed_by_server(reader)
        assert not server.connections


async def test_graceful_stop_finishes_the_answer_in_progress_and_closes_idle_connections():
    stopped = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            stopped.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        await echo_app(scope, receive, send)

    server = HttpServer(app, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    idle_reader, idle_writer = await connect(server)
    idle_writer.write(request("/x"))
    await read_response(idle_reader)
    reader, writer = await connect(server)
    writer.write(request("/slow", b"in flight"))
    await asyncio.sleep(0.05)
    server.should_exit = True
    assert await closed_by_server(idle_reader)
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["connection"] == "close" and json.loads(body)["body"] == "in flight"
    assert await asyncio.wait_for(task, 5) is True
    assert stopped == ["shutdown"]
    with pytest.raises(OSError):
        await asyncio.open_connection(*server.bound)


async def test_failed_startup_serves_nothing():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no key store"})
        raise RuntimeError("no key store")

    server = HttpServer(app, "127.0.0.1", 0)
    assert await asyncio.wait_for(server.serve(), 5) is False
    assert not server.started


async def test_a_request_head_never_finished_does_not_hold_up_a_stop():
    server = HttpServer(echo_app, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await connect(server)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")  # and nothing more
    await asyncio.sleep(0.05)
    server.should_exit = True
    assert await closed_by_server(reader)
    assert await asyncio.wait_for(task, 5) is True


def big_answer(chunk: bytes, total: int, sent: list[int] | None = None):
    """An app answering `total` copies of `chunk` in one Content-Length answer (each one sent noted in `sent`)."""
    async def big(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(chunk) * total).encode())]})
        for i in range(total):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < total - 1})
            if sent is not None:
                sent.append(i)
    return big


async def test_a_caller_that_reads_slowly_holds_the_app_back_instead_of_filling_memory():
    chunk, total = b"x" * 65536, 1024  # 64 MiB offered: far beyond what the socket buffers hold
    sent = []
    big = big_answer(chunk, total, sent)

    async with running(big) as server:
        reader, writer = await connect(server)
        writer.write(request("/big", method="GET"))
        await asyncio.sleep(0.5)  # reads nothing meanwhile
        assert len(sent) < total // 2  # send() waited for the caller: at most socket buffers + 64 KiB went ahead
        _, _, body = await read_response(reader)
        assert len(body) == len(chunk) * total and len(sent) == total
        writer.close()


async def test_a_request_with_both_content_length_and_chunked_is_refused():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: gw\r\n\r\n")
        status, _, _ = await read_response(reader)
        assert status == 400  # never two requests from one ambiguous body
        assert await closed_by_server(reader)


async def test_a_second_stop_signal_cuts_answers_that_would_never_end():
    async def hangs(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await asyncio.Event().wait()  # a stream that never ends

    server = HttpServer(hangs, "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await connect(server)
    writer.write(request("/stream", method="GET"))
    await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 5)
    server.stop_signal()
    await asyncio.sleep(0.3)
    assert not task.done()  # the first signal waits for the answer in progress
    server.stop_signal()
    assert await asyncio.wait_for(task, 5) is True
    assert await asyncio.wait_for(reader.read(), 5) == b"\r\n"  # the rest of the chunk, then the end: no 0-chunk
    assert reader.at_eof()


async def refusing_app(scope, receive, send):
    """Answers 413 or 401 at once, before reading the body (as the gateway refuses a Content-Length over its
    limit, or a bad key); anything else is echo_app's."""
    if scope["type"] == "http" and scope["path"] in ("/too-large", "/bad-key"):
        status = 413 if scope["path"] == "/too-large" else 401
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"no"})
        return
    await echo_app(scope, receive, send)


async def test_an_answer_given_before_the_body_was_read_closes_the_connection_cleanly():
    """The rest of the body is never read: the answer says connection: close, and the server reads and drops
    what still comes for a moment, then closes (before, the connection stayed open, stalled once the unread
    body filled its buffer, and was reset by the idle timeout: a keep-alive caller's next request was never
    answered)."""
    async with running(refusing_app, keepalive_timeout=1.0) as server:
        reader, writer = await connect(server)
        writer.write(request("/bad-key", b"x" * 1_000_000))
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"], body) == (401, "close", b"no")
        await writer.drain()
        assert await closed_by_server(reader)  # an orderly end of the stream, not a reset
        writer.close()


async def test_a_body_over_the_limit_gets_its_413_whatever_its_size():
    """A caller sending a 32 MiB body reads the 413 (before, its connection was reset, the answer unread)."""
    import httpx

    async with running(refusing_app) as server, httpx.AsyncClient(timeout=20) as http:
        host, port = server.bound[:2]
        r = await http.post(f"http://{host}:{port}/too-large", content=b"x" * (32 * 1024 * 1024))
    assert (r.status_code, r.content) == (413, b"no")


async def test_a_bad_request_pipelined_behind_a_whole_one_is_refused_after_that_one_is_answered():
    """The request read whole before it is answered (it may be at the provider, and is logged), then the 400,
    then the connection closes; before, the 400 went out at once and the first request was cancelled."""
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(request("/slow", b"first"))
        await asyncio.sleep(0.05)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        first = await read_response(reader)
        refusal = await read_response(reader)
        assert first[0] == 200 and json.loads(first[2])["body"] == "first"
        assert refusal[0] == 400 and refusal[1]["connection"] == "close"
        assert await closed_by_server(reader)
        writer.close()


def recording_app(seen: list):
    """An app that notes each request's method, raw path and headers and answers 200 {}."""
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        seen.append((scope["method"], scope["raw_path"], dict(scope["headers"])))
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


@pytest.mark.parametrize("target", [b"*", b"*@127.0.0.1:1/v1/chat/completions", b"*.evil.example/v1/models", b"*/x"])
async def test_a_request_target_that_is_not_a_path_is_refused_and_never_reaches_the_app(target):
    """Only origin-form (/path) and absolute-form (http://host/path, its path kept) reach the app: the proxy appends the
    path to a provider's base URL, where "*@host/..." would name another host."""
    seen = []
    async with running(recording_app(seen)) as server:
        reader, writer = await connect(server)
        writer.write(b"POST " + target + b" HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n\r\n{}")
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (400, "close")
        assert "request target" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)
        writer.close()
    assert seen == []


@pytest.mark.parametrize("target", [b"gw.example:443", b"http://gw.example"])
async def test_a_request_target_that_cannot_be_parsed_gets_a_clear_400(target):
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"CONNECT " + target + b" HTTP/1.1\r\nhost: gw\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 400 and "request target" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)
        writer.close()


async def test_a_request_target_naming_another_host_never_takes_the_gateway_there(tmp_path):
    """The gateway sends a request to its provider's base URL + the request path; with the path "*@host:port/..." that URL's
    host was host:port (the base URL became user info): any host and port, past the Helicone-Target-URL egress policy."""
    from helicone_gateway.app import create_app
    from helicone_gateway.settings import GatewaySettings

    from services.gateway.tests.test_proxy import StubKeys

    provider, internal = [], []
    async with running(recording_app(provider)) as prov, running(recording_app(internal)) as inner:
        app = create_app(GatewaySettings(data_dir=tmp_path, _env_file=None, kafka_bootstrap="127.0.0.1:1",
                                         openai_url=f"http://{prov.bound[0]}:{prov.bound[1]}"))
        app.state.gateway.keys = StubKeys()
        async with running(app) as gateway:
            reader, writer = await connect(gateway)
            body = b'{"model": "gpt-4o-mini", "messages": []}'
            writer.write(b"POST *@%s:%d/v1/chat/completions HTTP/1.1\r\nhost: gw\r\nhelicone-auth: Bearer good-key\r\n"
                         b"authorization: Bearer sk-caller\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                         % (inner.bound[0].encode(), inner.bound[1], len(body), body))
            status, _, _ = await read_response(reader)
            writer.close()
    assert internal == []
    assert status == 400


async def test_a_100_continue_is_never_sent_to_an_http10_client():
    """RFC 9110 15.2: no 1xx to an HTTP/1.0 client (an HTTP/1.0 proxy in front takes it for the answer and the real one
    that follows for the next); its Expect: 100-continue is ignored (10.1.1)."""
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /e HTTP/1.0\r\nhost: gw\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
        writer.write(b"body")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "body"
        writer.close()


async def test_trailer_fields_count_against_the_head_limit_and_never_join_the_request_headers():
    """Trailer fields after a chunked body were neither counted nor bounded (megabytes buffered past a 4 KiB head
    limit) and were appended to the headers the app had been handed."""
    async with running(max_head_bytes=4096) as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(16):
                await asyncio.sleep(0.02)  # separate reads (the one in which the trailer fields began is not counted)
                writer.write(b"x-trailer-%d: %s\r\n" % (i, b"a" * 1000))
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (431, "close")
        assert await closed_by_server(reader)
        writer.close()

        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: 1\r\n"
                     b"helicone-auth: Bearer other\r\n\r\n")
        status, _, body = await read_response(reader)
        got = json.loads(body)
        assert status == 200 and got["body"] == "hello"
        assert [n for n, _ in got["headers"]] == ["host", "transfer-encoding"]
        writer.close()


@pytest.mark.parametrize("coding", [b"identity, chunked", b"gzip, chunked", b",chunked"])
async def test_a_transfer_coding_other_than_chunked_is_refused_501(coding):
    """RFC 9112 6.1: a transfer coding the server does not apply is answered 501 (the gzip bytes of "gzip, chunked"
    reached the app as if they were the body); the framing is in doubt, so the connection closes."""
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                     b"GET /second HTTP/1.1\r\nhost: gw\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (501, "close") and "Transfer-Encoding" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)
        writer.close()


async def test_a_transfer_encoding_header_list_ending_in_chunked_is_refused_501():
    async with running() as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        assert (await read_response(reader))[0] == 501
        assert await closed_by_server(reader)
        writer.close()


async def test_chunked_bodies_in_any_case_and_with_extensions_are_still_read():
    """Chunk data is body, not head: reads of it after a chunk-size line never count against the head limit."""
    async with running(max_head_bytes=4096) as server:
        reader, writer = await connect(server)
        for coding in (b"chunked", b"Chunked", b"CHUNKED"):
            writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: " + coding + b"\r\n\r\n5;ext=1\r\nhello\r\n2000\r\n")
            for part in (b"b" * 4096, b"c" * 4096):
                await asyncio.sleep(0.02)  # separate reads
                writer.write(part)
            await asyncio.sleep(0.02)
            writer.write(b"\r\n0\r\n\r\n")
            status, _, body = await read_response(reader)
            assert status == 200 and json.loads(body)["body"] == "hello" + "b" * 4096 + "c" * 4096
        writer.close()


async def test_a_request_head_sent_a_byte_at_a_time_is_cut_off():
    """Each byte came before the idle timeout, so the head (slowloris) held the connection for as long as the caller
    liked; it must now arrive whole within about the timeout."""
    async with running(keepalive_timeout=0.3) as server:
        reader, writer = await connect(server)
        head = b"POST / HTTP/1.1\r\nhost: gw\r\nx-slow: " + b"a" * 200 + b"\r\ncontent-length: 0\r\n\r\n"
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = asyncio.ensure_future(read_response(reader))
        for byte in head:
            if answer.done() or loop.time() - started > 3:
                break
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)
        status, headers, _ = await answer
        assert (status, headers["connection"]) == (408, "close")
        assert loop.time() - started < 1.5  # 200+ bytes at 50/s would take over 4 s
        assert await closed_by_server(reader)
        writer.close()


async def test_a_request_body_the_caller_stops_sending_is_timed_out():
    """The app waited for the rest of the body for ever: no idle timeout while a request is being answered."""
    async with running(keepalive_timeout=0.3) as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ncontent-length: 10\r\n\r\nabc")  # and nothing more
        status, headers, body = await asyncio.wait_for(read_response(reader), 3)
        assert (status, headers["connection"]) == (408, "close") and "body" in json.loads(body)["error"]["message"]
        assert await closed_by_server(reader)
        writer.close()
        await asyncio.sleep(0.1)
        assert not server.tasks  # the app's task is over


async def test_a_slow_but_steady_body_and_a_slow_app_are_not_timed_out():
    async def slow_app(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(0.75)  # longer than the timeout before it reads the body
        await echo_app(scope, receive, send)

    async with running(slow_app, keepalive_timeout=0.3) as server:
        reader, writer = await connect(server)
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ncontent-length: 10\r\n\r\n")
        for byte in b"0123456789":
            await asyncio.sleep(0.1)
            writer.write(bytes([byte]))
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "0123456789"

        # a caller waiting for 100 Continue is not stalled: its time starts when the 100 is sent
        writer.write(b"POST / HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        await asyncio.sleep(0.25)
        writer.write(b"body")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "body"
        writer.close()


async def non_reader(server: HttpServer, data: bytes) -> socket.socket:
    """A caller with a small receive buffer that sends `data` and then reads nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connecting: the window it offers stays small
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, server.bound)
    await loop.sock_sendall(sock, data)
    return sock


def endless_stream(watched: list):
    """Streams 64 KiB events until the caller is gone; notes the disconnect message its watch got."""
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await receive()
        watch = asyncio.ensure_future(receive())  # the gateway's watch for the caller leaving
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        event = b"data: " + b"x" * 65536 + b"\n\n"
        while not watch.done():
            await send({"type": "http.response.body", "body": event, "more_body": True})
        watched.append(watch.result())
    return app


async def test_a_caller_that_never_reads_its_stream_is_cut_after_the_write_timeout():
    """It held its answer (at the gateway: the provider's connection and its slot in the pool) for ever: send() waited
    for the caller to read without bound."""
    from helicone_gateway.http_server import WRITE_TIMED_OUT

    watched: list = []
    async with running(endless_stream(watched), write_timeout=0.3) as server:
        sock = await non_reader(server, request("/stream", method="GET"))
        for _ in range(250):
            if watched:
                break
            await asyncio.sleep(0.02)
        assert watched == [WRITE_TIMED_OUT]  # the app learns why: the gateway logs it so
        await asyncio.sleep(0.05)
        assert not server.connections and not server.tasks
        sock.close()


async def test_a_caller_that_reads_slowly_but_steadily_is_not_cut():
    """Writing is paused far longer than the write timeout in all, but the caller keeps taking bytes."""
    chunk, total = b"x" * 65536, 256  # 16 MiB: more than the socket buffers hold
    loop = asyncio.get_running_loop()
    big = big_answer(chunk, total)

    async with running(big, write_timeout=0.3) as server:
        sock = await non_reader(server, request("/big", method="GET"))
        got = bytearray()
        started = loop.time()
        while loop.time() - started < 1.5:  # 16 KiB every 50 ms: about 320 KiB/s
            got += await asyncio.wait_for(loop.sock_recv(sock, 16384), 5)
            await asyncio.sleep(0.05)
        head_size = got.index(b"\r\n\r\n") + 4
        while len(got) - head_size < len(chunk) * total:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
            if not data:
                break  # cut
            got += data
        sock.close()
    assert got.startswith(b"HTTP/1.1 200") and len(got) - head_size == len(chunk) * total


async def test_pipelined_answers_the_caller_does_not_read_are_not_piled_up():
    """Each pipelined request was answered into the write buffer whether or not the caller read: a caller sending
    requests and reading nothing grew the gateway's memory by every answer (64 KiB each here, 32 MiB in all)."""
    seen: list = []
    answer = b"y" * 65536

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        seen.append(scope["path"])
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    count = 500
    async with running(app) as server:
        sock = await non_reader(server, b"".join(request(f"/{i}", method="GET") for i in range(count)))
        await asyncio.sleep(1.0)
        assert len(seen) < count // 4  # about what the socket buffers hold, not every answer
        loop = asyncio.get_running_loop()
        got = 0
        while got < count * (len(answer) + 100):  # the caller reads: every answer comes, in order
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
            assert data
            got += len(data)
            if len(seen) == count and got >= count * len(answer):
                break
        assert seen == [f"/{i}" for i in range(count)]
        sock.close()


async def test_a_whole_answer_the_caller_never_reads_does_not_hold_up_a_stop():
    """The last write of an answer does not wait for the caller: its bytes sat in the buffer, the close after it
    waited for them for ever, and so did a graceful stop (until the pod was killed, with every other answer)."""
    answer = b"z" * (8 * 1024 * 1024)

    async def whole(scope, receive, send):
        if scope["type"] == "lifespan":
            return await echo_app(scope, receive, send)
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    server = HttpServer(whole, "127.0.0.1", 0, write_timeout=0.3)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    sock = await non_reader(server, request("/whole", method="GET"))
    await asyncio.sleep(0.05)
    server.should_exit = True
    assert await asyncio.wait_for(task, 5) is True
    assert not server.connections
    sock.close()
