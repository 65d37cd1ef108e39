"""Upstream faults, against raw loopback TCP servers that misbehave on purpose: a provider that
never answers, one that stalls mid-stream, and one that closes a pooled connection as it is reused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
import pytest
from helicone_core.providers import PROVIDER_TABLE
from helicone_gateway.app import CLIENT_CLOSED_STATUS, NO_PROVIDER, UNKNOWN_PROVIDER, ClientGone, Gateway, create_app
from helicone_gateway.settings import GatewaySettings
from helicone_gateway.upstream import Attempt

from services.gateway.tests.test_proxy import CHAT, StubKeys
from tests.support.inloop import serve
from tests.support.net import free_port

AUTH = {"Helicone-Auth": "Bearer good-key"}


class RawProvider:
    """Reads one HTTP request per turn and lets `script(conn_no, request_no)` decide: a bytes answer,
    "hang" (never answer), "stall:<text>" (send text, then nothing more), "endless" (an event stream
    that never ends) or "close" (drop the connection without answering)."""

    def __init__(self, script) -> None:
        self.script = script
        self.port = free_port()
        self.requests: list[tuple[int, int]] = []
        self.closed_by_peer = asyncio.Event()
        self.closed_at = 0.0
        self._conns = 0

    async def __aenter__(self) -> RawProvider:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns += 1
        conn_no, request_no = self._conns, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                request_no += 1
                self.requests.append((conn_no, request_no))
                action = self.script(conn_no, request_no)
                if action == "close":
                    writer.transport.abort()
                    return
                if isinstance(action, bytes):
                    writer.write(action)
                    await writer.drain()
                    continue
                if action == "endless":  # 64 KiB events for as long as the gateway takes them
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                    event = b"data: " + b"x" * 65536 + b"\n\n"
                    while True:
                        writer.write(b"%x\r\n%b\r\n" % (len(event), event))
                        await writer.drain()
                if action.startswith("stall:"):  # answer this much, then go silent
                    writer.write(action[len("stall:"):].encode())
                    await writer.drain()
                # hang: wait until the gateway gives up on us
                await reader.read()
                self.closed_at = time.monotonic()
                self.closed_by_peer.set()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_at = time.monotonic()
            self.closed_by_peer.set()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
STREAM_START = ("stall:HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                "f\r\ndata: {\"a\":1}\n\n\r\n")


@contextlib.asynccontextmanager
async def gateway_on(tmp_path, provider_url: str, **settings):
    app = create_app(GatewaySettings(data_dir=tmp_path, _env_file=None, openai_url=provider_url, kafka_bootstrap="127.0.0.1:1",
                                     **settings))
    gw = app.state.gateway
    gw.keys = StubKeys()
    built = []
    async with serve(app, lifespan="on") as url:
        gw.publisher.submit = lambda builder, size=0: built.append(builder())
        yield url, gw, built


async def test_caller_leaving_cancels_a_hung_provider_request_and_it_is_logged(tmp_path):
    async with RawProvider(lambda c, r: "hang") as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, _gw, built):
        async with httpx.AsyncClient(timeout=0.5) as http:
            try:
                await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
                raise AssertionError("the provider never answers")
            except httpx.ReadTimeout:
                left_at = time.monotonic()
        await asyncio.wait_for(provider.closed_by_peer.wait(), 3)
        assert provider.closed_at - left_at < 1.0  # not after upstream_read_timeout (600 s)
        for _ in range(100):
            if built:
                break
            await asyncio.sleep(0.02)
    [ev] = built
    assert ev.status == CLIENT_CLOSED_STATUS and "cancelled" in ev.error


async def test_caller_leaving_mid_stream_closes_a_silent_provider_stream(tmp_path):
    async with RawProvider(lambda c, r: STREAM_START) as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, _gw, built):
        async with httpx.AsyncClient(timeout=5) as http:
            async with http.stream("POST", url + "/v1/chat/completions", json=CHAT, headers=AUTH) as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    assert chunk.startswith(b"data:")
                    break
            left_at = time.monotonic()
        await asyncio.wait_for(provider.closed_by_peer.wait(), 3)
        assert provider.closed_at - left_at < 1.0
        for _ in range(100):
            if built:
                break
            await asyncio.sleep(0.02)
    [ev] = built
    assert ev.status == 200 and "client disconnected" in ev.error and ev.inline.response_body.startswith(b"data:")


async def test_a_provider_silent_mid_stream_past_the_read_timeout_is_logged_as_that_timeout(tmp_path):
    """The log says why the answer was cut: the provider sent nothing for the read timeout, naming the
    setting an operator would raise (not a bare "stream broke", which reads as the provider's fault)."""
    async with RawProvider(lambda c, r: STREAM_START) as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}", upstream_read_timeout=0.3) as (url, gw, built):
        async with httpx.AsyncClient(timeout=5) as http:
            async with http.stream("POST", url + "/v1/chat/completions", json=CHAT, headers=AUTH) as r:
                with pytest.raises(httpx.RemoteProtocolError):  # the answer is cut short, never completed
                    async for _ in r.aiter_raw():
                        pass
        await asyncio.wait_for(provider.closed_by_peer.wait(), 3)
        for _ in range(100):
            if built:
                break
            await asyncio.sleep(0.02)
        kinds = {s.labels["kind"] for m in gw.m_upstream_errors.collect() for s in m.samples if s.name.endswith("_total")}
    [ev] = built
    assert ev.status == 200 and ev.inline.response_body.startswith(b"data:")
    assert ev.error == ("timeout: the provider sent nothing for 0.3 s mid-stream (HELICONE_UPSTREAM_READ_TIMEOUT); "
                        "the response was cut short")
    assert kinds == {"stream_SocketTimeoutError"}


async def test_a_pooled_connection_closed_by_the_provider_is_retried_once_on_a_new_one(tmp_path):
    # connection 1 answers its first request, then is found closed when reused
    script = lambda conn, req: OK if (conn, req) != (1, 2) else "close"  # noqa: E731
    async with RawProvider(script) as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, gw, _built):
        async with httpx.AsyncClient(timeout=5) as http:
            first = await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
            second = await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
        retries = gw.m_retries.labels("openai")._value.get()
    assert (first.status_code, second.status_code) == (200, 200)
    assert provider.requests == [(1, 1), (1, 2), (2, 1)] and retries == 1


async def test_a_pooled_target_url_connection_closed_by_the_provider_is_retried_once_on_a_new_one(tmp_path):
    """The same for Helicone-Target-URL traffic (its own, egress-checked session and connector)."""
    script = lambda conn, req: OK if (conn, req) != (1, 2) else "close"  # noqa: E731
    async with RawProvider(script) as provider, \
            gateway_on(tmp_path, "http://127.0.0.1:1", target_url_allowlist=[f"127.0.0.1:{provider.port}"]) as (url, gw, _built):
        headers = {**AUTH, "Helicone-Target-URL": f"http://127.0.0.1:{provider.port}"}
        async with httpx.AsyncClient(timeout=5) as http:
            first = await http.post(url + "/v1/chat/completions", json=CHAT, headers=headers)
            second = await http.post(url + "/v1/chat/completions", json=CHAT, headers=headers)
        retries = sum(s.value for m in gw.m_retries.collect() for s in m.samples if s.name.endswith("_total"))
    assert (first.status_code, second.status_code) == (200, 200)
    assert provider.requests == [(1, 1), (1, 2), (2, 1)] and retries == 1


async def test_a_fresh_connection_that_fails_is_not_retried(tmp_path):
    async with RawProvider(lambda c, r: "close") as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, _gw, built):
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 502 and provider.requests == [(1, 1)]
    assert built[0].status == 502


# ---- the upstream request runs in the handler's own task (Gateway._request_here) ----
class FakePool:
    """upstream.request stand-in: `script()` runs inside the request; a future it returns is awaited
    (the request waiting for the provider's answer). `on_cancel`: the error a cancellation comes out
    as (a library that turns it into one of its own), else CancelledError."""

    def __init__(self, script, on_cancel: Exception | None = None) -> None:
        self.script = script
        self.on_cancel = on_cancel
        self.cancelled = False

    async def request(self, method, url, headers, body, attempt, socket_factory=None):
        waited = self.script()
        try:
            if waited is not None:
                await waited
        except asyncio.CancelledError:
            self.cancelled = True
            if self.on_cancel is not None:
                raise self.on_cancel from None
            raise
        return "response"


async def left_while_waiting(pool: FakePool, raised: type[Exception]) -> int:
    """The caller leaves while a handler waits in _request_here: it must raise `raised`, and the
    handler, going on after it (answering, logging), must not be left cancelling: its count."""
    disconnected = asyncio.get_running_loop().create_future()

    async def handler():
        try:
            await Gateway._request_here(pool, "POST", "http://127.0.0.1:9/x", [], b"", Attempt(), disconnected)
        except raised:
            await asyncio.sleep(0.01)
            return asyncio.current_task().cancelling()
        raise AssertionError(f"expected {raised.__name__}")

    task = asyncio.ensure_future(handler())
    await asyncio.sleep(0.01)
    disconnected.set_result({"type": "http.disconnect"})
    return await asyncio.wait_for(task, 2)


async def test_a_caller_leaving_while_the_provider_is_awaited_cancels_the_request_and_only_that():
    pool = FakePool(lambda: asyncio.get_running_loop().create_future())  # never answered
    assert await left_while_waiting(pool, ClientGone) == 0
    assert pool.cancelled


async def test_a_caller_leaving_as_the_answer_arrives_does_not_cancel_what_the_handler_does_next():
    # the caller's disconnect is seen in the same loop iteration as the response head: its callback
    # runs after the request has returned, and must not cancel the handler's streaming or logging
    disconnected = asyncio.get_running_loop().create_future()
    pool = FakePool(lambda: disconnected.set_result({"type": "http.disconnect"}))

    async def handler():
        resp = await Gateway._request_here(pool, "POST", "http://127.0.0.1:9/x", [], b"", Attempt(), disconnected)
        for _ in range(3):
            await asyncio.sleep(0)
        return resp, asyncio.current_task().cancelling()

    assert await asyncio.wait_for(asyncio.ensure_future(handler()), 2) == ("response", 0)


async def test_a_shutdown_while_the_caller_also_leaves_stays_a_cancellation():
    disconnected = asyncio.get_running_loop().create_future()
    pool = FakePool(lambda: asyncio.get_running_loop().create_future())
    task = asyncio.ensure_future(
        Gateway._request_here(pool, "POST", "http://127.0.0.1:9/x", [], b"", Attempt(), disconnected))
    await asyncio.sleep(0.01)
    disconnected.set_result({"type": "http.disconnect"})
    task.cancel()  # the server stopping: not to be turned into ClientGone
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.cancelled


async def test_a_caller_already_gone_sends_nothing_upstream():
    disconnected = asyncio.get_running_loop().create_future()
    disconnected.set_result({"type": "http.disconnect"})
    calls = []
    pool = FakePool(lambda: calls.append(1))
    with pytest.raises(ClientGone):
        await Gateway._request_here(pool, "POST", "http://127.0.0.1:9/x", [], b"", Attempt(), disconnected)
    assert calls == []


async def test_a_cancellation_that_comes_out_as_another_error_is_still_taken_back():
    pool = FakePool(lambda: asyncio.get_running_loop().create_future(), on_cancel=ValueError("a library's own error"))
    assert await left_while_waiting(pool, ValueError) == 0  # the library's error comes through


async def test_the_time_to_headers_is_observed_while_a_stream_is_still_open(tmp_path):
    # the p95 time-to-first-byte alert and the canary analysis read it: a long stream must not hold it back
    async with RawProvider(lambda c, r: STREAM_START) as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, gw, _built):
        count = ("helicone_gateway_upstream_ttfb_seconds_count", {"provider": "openai"})
        async with httpx.AsyncClient(timeout=5) as http:
            async with http.stream("POST", url + "/v1/chat/completions", json=CHAT, headers=AUTH) as r:
                chunks = r.aiter_raw()  # kept open: leaving the loop would close the stream
                assert (await chunks.__anext__()).startswith(b"data:")
                await asyncio.sleep(0.05)
                assert not provider.closed_by_peer.is_set()  # the stream is still open
                assert gw.metrics.registry.get_sample_value(*count) == 1


CHUNKED_WITH_TRAILER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                        b"Trailer: x-request-secret\r\n\r\n2\r\n{}\r\n0\r\nx-request-secret: org-a-only\r\n\r\n")


async def test_every_counted_answer_is_also_timed_in_the_request_duration(tmp_path):
    """requests_total and request_duration_seconds must count the same answers (the latency panels and the
    canary analysis divide one by the other's rate): a 502 for a provider that cannot be reached and a caller
    leaving while the provider is awaited were counted but never timed, and the answers the gateway gives itself
    after auth (a 413 here, a 429, a 504 for a hung provider's timeout) were not even counted."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the connect is refused
    async with RawProvider(lambda c, r: "hang") as hung, \
            gateway_on(tmp_path, dead, anthropic_url=f"http://127.0.0.1:{hung.port}", upstream_read_timeout=1.5,
                       max_request_bytes=4096) as (url, gw, built):
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 502
            assert (await http.post(url + "/v1/messages", json=CHAT, headers=AUTH)).status_code == 504
            assert (await http.post(url + "/v1/chat/completions", json={"x": "y" * 5000}, headers=AUTH)).status_code == 413
            with contextlib.suppress(httpx.ReadTimeout):  # the caller leaves while the provider is awaited: a 499
                await http.post(url + "/v1/messages", json=CHAT, headers=AUTH, timeout=0.3)
        for _ in range(100):
            if len(built) == 4:
                break
            await asyncio.sleep(0.02)
    assert sorted(ev.status for ev in built) == sorted([413, 502, 504, CLIENT_CLOSED_STATUS])
    sample = gw.metrics.registry.get_sample_value
    for provider, classes in (("openai", ("5xx", "4xx")), ("anthropic", ("5xx", "client_closed"))):
        counted = sum(sample("helicone_gateway_requests_total", {"provider": provider, "status_class": c}) or 0
                      for c in classes)
        assert counted == 2, provider
        assert sample("helicone_gateway_request_duration_seconds_count", {"provider": provider}) == counted, provider


async def test_answers_given_before_auth_are_counted_and_timed_and_a_key_store_outage_is_a_5xx(tmp_path):
    """The 431, a Helicone header's 400, the 401s and the 503 of an unavailable key store (auth fails closed) were
    counted nowhere: a gateway answering every request 503 for a key store it cannot read never reached the 5xx
    ratio, its alert or the canary analysis. They are counted under provider "none" (never a provider's name): the
    401s as 4xx (a flood of bad keys pages nobody), the 503 as 5xx."""
    async with gateway_on(tmp_path, "http://127.0.0.1:1", max_header_count=12) as (url, gw, built):
        async with httpx.AsyncClient(timeout=5) as http:
            post = lambda headers: http.post(url + "/v1/chat/completions", json=CHAT, headers=headers)  # noqa: E731
            statuses = [
                (await post({f"x-h{i}": "v" for i in range(12)})).status_code,
                (await post({**AUTH, "Helicone-Request-Id": "x"})).status_code,
                (await post({})).status_code,
                (await post({"Helicone-Auth": "Bearer revoked"})).status_code,
                (await post({"Helicone-Auth": "Bearer down"})).status_code,
            ]
    assert statuses == [431, 400, 401, 401, 503] and built == []
    assert NO_PROVIDER not in PROVIDER_TABLE
    sample = gw.metrics.registry.get_sample_value
    counted = {c: sample("helicone_gateway_requests_total", {"provider": NO_PROVIDER, "status_class": c})
               for c in ("4xx", "5xx")}
    assert counted == {"4xx": 4, "5xx": 1}
    assert sample("helicone_gateway_request_duration_seconds_count", {"provider": NO_PROVIDER}) == 5


@pytest.mark.parametrize("fails", ["before answering", "after answering"])
async def test_a_request_the_gateway_fails_on_is_counted_once_and_timed(tmp_path, fails):
    """A bug in the handler was counted as an unknown 5xx but never timed; one that struck after the answer was
    counted (logging it, here) was counted a second time, as a 5xx the caller never got."""
    async with RawProvider(lambda c, r: OK) as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, gw, _built):
        def bug(*args, **kwargs):
            raise RuntimeError("a bug")

        if fails == "before answering":
            gw.router.route = bug
        else:
            gw.publisher.submit = bug
        async with httpx.AsyncClient(timeout=5) as http:
            r = await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH)
    sample = gw.metrics.registry.get_sample_value
    counted = {(p, c): sample("helicone_gateway_requests_total", {"provider": p, "status_class": c})
               for p in ("openai", UNKNOWN_PROVIDER) for c in ("2xx", "5xx")}
    timed = {p: sample("helicone_gateway_request_duration_seconds_count", {"provider": p}) for p in ("openai", UNKNOWN_PROVIDER)}
    if fails == "before answering":
        assert r.status_code == 500
        assert {k: v for k, v in counted.items() if v} == {(UNKNOWN_PROVIDER, "5xx"): 1}
        assert timed == {"openai": None, UNKNOWN_PROVIDER: 1}
    else:
        assert r.status_code == 200 and r.content == b"{}"
        assert {k: v for k, v in counted.items() if v} == {("openai", "2xx"): 1}
        assert timed == {"openai": 1, UNKNOWN_PROVIDER: None}


async def test_a_providers_trailer_is_never_a_header_of_the_next_answer_on_the_pooled_connection(tmp_path):
    """A chunked answer's trailer (read by the parser like a header) stays out of every answer's headers:
    before the fix it became a header of the next request's answer on the same pooled connection, whoever
    sent that request."""
    script = lambda conn, req: CHUNKED_WITH_TRAILER if req == 1 else OK  # noqa: E731
    async with RawProvider(script) as provider, \
            gateway_on(tmp_path, f"http://127.0.0.1:{provider.port}") as (url, _gw, _built):
        async with httpx.AsyncClient(timeout=5) as http:
            answers = [await http.post(url + "/v1/chat/completions", json=CHAT, headers=AUTH) for _ in range(2)]
    assert provider.requests == [(1, 1), (1, 2)]  # the second went on the pooled connection
    assert [a.status_code for a in answers] == [200, 200] and [a.content for a in answers] == [b"{}", b"{}"]
    assert not any("x-request-secret" in a.headers for a in answers)


class UnreadBodyProvider(asyncio.Protocol):
    """Reads a request's head, then nothing more until `resume()`: a provider too busy to read a large
    body. `received` counts the bytes that reached it, `ended` is set when the connection ends."""

    def __init__(self) -> None:
        self.received = 0
        self.head = asyncio.Event()
        self.ended = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.head.is_set():
            self.head.set()
            self.transport.pause_reading()

    def connection_lost(self, exc) -> None:
        self.ended.set()


async def test_a_request_body_the_provider_had_not_read_is_dropped_when_the_caller_leaves(tmp_path):
    """The caller leaving cancels the upstream request: the connection is cut at once, not kept open until the
    provider has read the rest of the body (the provider would then get the whole request and answer it, for
    nobody, with the gateway's socket left open until then and out of the pool's count)."""
    provider = UnreadBodyProvider()
    port = free_port()
    server = await asyncio.get_running_loop().create_server(lambda: provider, "127.0.0.1", port)
    big = dict(CHAT, messages=[{"role": "user", "content": "x" * (24 << 20)}])  # far more than the socket buffers hold
    try:
        async with gateway_on(tmp_path, f"http://127.0.0.1:{port}") as (url, _gw, built):
            async with httpx.AsyncClient(timeout=10) as http:
                sent = asyncio.ensure_future(http.post(url + "/v1/chat/completions", json=big, headers=AUTH))
                await asyncio.wait_for(provider.head.wait(), 10)
                sent.cancel()  # the caller leaves
                with contextlib.suppress(asyncio.CancelledError):
                    await sent
            for _ in range(250):
                if built:
                    break
                await asyncio.sleep(0.02)
            assert built and built[0].status == CLIENT_CLOSED_STATUS
            provider.transport.resume_reading()  # the provider gets round to reading
            await asyncio.wait_for(provider.ended.wait(), 10)
    finally:
        server.close()
    assert provider.received < len(json.dumps(big))  # the connection was cut: the request never arrived whole


async def test_a_caller_that_stops_reading_a_stream_frees_its_provider_connection_after_the_write_timeout(tmp_path):
    """A caller that opened a stream and read nothing more held the provider's connection (and its slot in the
    pool) for ever: with a pool of one, nobody else was served again (504 after the connect timeout)."""
    from helicone_gateway.http_server import HttpServer

    from services.gateway.tests.test_http_server import non_reader, running

    async with RawProvider(lambda c, r: "endless" if c == 1 else OK) as provider:
        settings = GatewaySettings(data_dir=tmp_path, _env_file=None, openai_url=f"http://127.0.0.1:{provider.port}",
                                   kafka_bootstrap="127.0.0.1:1", max_upstream_connections=1,
                                   upstream_connect_timeout=3, client_write_timeout=0.5, port=free_port())
        app = create_app(settings)
        gw = app.state.gateway
        gw.keys = StubKeys()
        built = []
        server = HttpServer.for_settings(app, settings)  # as the gateway serves: the setting reaches the server
        async with running(server=server):
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            body = json.dumps(CHAT).encode()
            sock = await non_reader(server, b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nhelicone-auth: Bearer good-key\r\n"
                                            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await asyncio.wait_for(provider.closed_by_peer.wait(), 5)  # the gateway let go of the provider's stream
            async with httpx.AsyncClient(timeout=5) as http:  # ...and of its pool slot
                r = await http.post(f"http://{server.bound[0]}:{server.bound[1]}/v1/chat/completions", json=CHAT, headers=AUTH)
            assert (r.status_code, r.json()) == (200, {})
            sock.close()
            for _ in range(100):
                if len(built) == 2:
                    break
                await asyncio.sleep(0.02)
    cut = next(ev for ev in built if ev.error)
    assert cut.status == 200 and "HELICONE_CLIENT_WRITE_TIMEOUT" in cut.error and cut.inline.response_body.startswith(b"data: ")
    assert gw.metrics.registry.get_sample_value(
        "helicone_gateway_requests_total", {"provider": "openai", "status_class": "client_write_timeout"}) == 1.0
