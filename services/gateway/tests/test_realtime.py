"""OpenAI's Realtime API (a WebSocket: GET /v1/realtime?model=..., Upgrade: websocket) through the real gateway (its
own HTTP server) to a fake Realtime server on loopback (aiohttp's WebSocketResponse): the openai SDK's
realtime.connect and a raw websockets client, messages both ways, close codes, malformed handshakes, auth and egress
refusals before anything goes upstream, keepalive pings to a silent caller (one that answers none is cut), and the
session logged once with its response.done usage summed and priced."""

from __future__ import annotations

import asyncio
import contextlib
import json

import openai
import pytest
import websockets
from aiohttp import WSMsgType, web
from helicone_gateway.app import create_app
from helicone_gateway.http_server import HttpServer
from helicone_gateway.settings import GatewaySettings
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from services.gateway.tests.test_http_server import running
from services.gateway.tests.test_proxy import ORG, StubKeys

PROVIDER_KEY = "sk-provider"
# one response.done's usage (Realtime's fields): 120 in (20 text, 100 audio; 40 cached, 30 of them audio), 60 out
USAGE = {
    "total_tokens": 180,
    "input_tokens": 120,
    "output_tokens": 60,
    "input_token_details": {
        "cached_tokens": 40,
        "text_tokens": 20,
        "audio_tokens": 100,
        "cached_tokens_details": {"text_tokens": 10, "audio_tokens": 30},
    },
    "output_token_details": {"text_tokens": 10, "audio_tokens": 50},
}
# two response.done usages of a session shown an image (an input_image item): the first reads it uncached (1050 image
# tokens of 1100 in); the second reads 1024 of its image tokens and 64 text ones from the cache
IMAGE_USAGES = [
    {"total_tokens": 1120, "input_tokens": 1100, "output_tokens": 20,
     "input_token_details": {"cached_tokens": 0, "text_tokens": 50, "audio_tokens": 0, "image_tokens": 1050,
                             "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0}},
     "output_token_details": {"text_tokens": 20, "audio_tokens": 0}},
    {"total_tokens": 1250, "input_tokens": 1200, "output_tokens": 50,
     "input_token_details": {"cached_tokens": 1088, "text_tokens": 150, "audio_tokens": 0, "image_tokens": 1050,
                             "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 1024}},
     "output_token_details": {"text_tokens": 10, "audio_tokens": 40}},
]


class FakeRealtime:
    """A Realtime server: session.created first; response.create answered with response.done (the next of `usages`,
    USAGE once none is left); a binary message echoed; {"type": "close-me", "code": N} closes with N. Records each
    handshake and what it received."""

    def __init__(self) -> None:
        self.usages: list[dict] = []
        self.handshakes: list[dict] = []
        self.received: list = []
        self.closed_with: asyncio.Future | None = None
        self.hear = asyncio.Event()  # set: the deaf endpoint starts reading what it was sent
        self.gateway: HttpServer | None = None  # the gateway's server, to see what a session holds
        self.gw = None  # the Gateway behind it, to read its metrics

    async def handle(self, request: web.Request):
        self.handshakes.append({"headers": {n.lower(): v for n, v in request.headers.items()}, "query": dict(request.query)})
        if request.headers.get("authorization") != f"Bearer {PROVIDER_KEY}":
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        closed = self.closed_with = asyncio.get_running_loop().create_future()  # the latest session's
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "session.created", "session": {"model": request.query.get("model")}}))
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                self.received.append(msg.data)
                await ws.send_bytes(msg.data[::-1])
                continue
            event = json.loads(msg.data)
            self.received.append(event)
            if event["type"] == "response.create":
                usage = self.usages.pop(0) if self.usages else USAGE
                await ws.send_str(json.dumps({"type": "response.done", "response": {"status": "completed", "usage": usage}}))
            elif event["type"] == "close-me":
                await ws.close(code=event["code"], message=b"bye from the provider")
            elif event["type"] == "drop-me":  # the provider's connection lost: no close frame
                request.transport.abort()
        closed.set_result(ws.close_code)
        return ws

    async def deaf(self, request: web.Request):
        """Accepts the session, then reads nothing of it until `hear` is set (a provider that does not read)."""
        self.handshakes.append({"headers": dict(request.headers), "query": dict(request.query)})
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        await self.hear.wait()
        async for _ in ws:
            pass
        return ws

    async def moved(self, request: web.Request):
        """A handshake answered with a redirect to the real endpoint, on this same server."""
        raise web.HTTPTemporaryRedirect(f"/v1/realtime?{request.query_string}")


@contextlib.asynccontextmanager
async def stack(tmp_path, **settings):
    """(fake Realtime server, built events, gateway ws:// URL of /v1/realtime)."""
    fake = FakeRealtime()
    app = web.Application()
    app.router.add_get("/v1/realtime", fake.handle)
    app.router.add_get("/v1/realtime/deaf", fake.deaf)
    app.router.add_get("/v1/realtime/moved", fake.moved)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        config = GatewaySettings(
            data_dir=tmp_path,
            _env_file=None,
            openai_url=f"http://127.0.0.1:{port}",
            kafka_bootstrap="127.0.0.1:1",
            port=0,
            **settings,
        )
        gw_app = create_app(config)
        gw = gw_app.state.gateway
        gw.keys = StubKeys()
        built: list = []
        async with running(server=HttpServer.for_settings(gw_app, config)) as server:
            fake.gateway, fake.gw = server, gw
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            yield fake, built, f"ws://127.0.0.1:{server.bound[1]}/v1/realtime"
    finally:
        fake.hear.set()
        await runner.cleanup()


async def logged(built: list, n: int = 1) -> list:
    for _ in range(300):
        if len(built) >= n:
            return built[:n]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(built)} events logged, {n} expected")


def connect(url: str, key: str = "good-key", **options):
    headers = {"Authorization": f"Bearer {PROVIDER_KEY}", **({"Helicone-Auth": f"Bearer {key}"} if key else {})}
    return websockets.connect(url, additional_headers={**headers, **options.pop("headers", {})}, open_timeout=5, **options)


async def test_the_sdk_session_is_relayed_and_logged_once_with_its_response_done_usage_summed(tmp_path):
    async with stack(tmp_path) as (fake, built, url):
        client = openai.AsyncOpenAI(
            base_url=url.replace("ws://", "http://").removesuffix("/realtime"),
            api_key=PROVIDER_KEY,
            default_headers={"Helicone-Auth": "Bearer good-key", "Helicone-Property-App": "voice"},
        )
        async with asyncio.timeout(5), client.realtime.connect(model="gpt-realtime") as conn:
            created = json.loads(await conn.recv_bytes())
            assert created == {"type": "session.created", "session": {"model": "gpt-realtime"}}
            for _ in range(2):
                await conn.send({"type": "response.create"})
                done = json.loads(await conn.recv_bytes())
                assert done["type"] == "response.done" and done["response"]["usage"] == USAGE
        [ev] = await logged(built)
    [handshake] = fake.handshakes
    assert handshake["query"] == {"model": "gpt-realtime"} and handshake["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert not any(name.lower().startswith("helicone-") for name in handshake["headers"])
    assert fake.received == [{"type": "response.create"}] * 2
    assert (ev.status, ev.provider, ev.model, ev.method, ev.path, ev.org_id) == (
        101,
        "openai",
        "gpt-realtime",
        "GET",
        "/v1/realtime",
        ORG,
    )
    assert dict(ev.properties) == {"app": "voice"} and ev.streamed and not ev.error
    u = ev.usage
    assert (u.known, u.prompt_tokens, u.completion_tokens, u.cache_read_tokens) == (True, 240, 120, 80)
    # gpt-realtime per 1M: text in $4, cached $0.40, out $16; audio in $32, cached $0.40, out $64
    text_in, text_cached, text_out = 240 - 200 - (80 - 60), 80 - 60, 120 - 100
    audio_in, audio_cached, audio_out = 200 - 60, 60, 100
    expected = (text_in * 4 + text_cached * 0.40 + text_out * 16 + audio_in * 32 + audio_cached * 0.40 + audio_out * 64) / 1e6
    assert ev.cost_known and ev.cost_usd == pytest.approx(expected)
    assert not ev.inline.request_body and not ev.inline.response_body  # no transcript kept


async def test_a_session_shown_an_image_is_logged_with_its_image_tokens_at_the_image_rate(tmp_path):
    """Image input costs more than text on gpt-realtime ($5 per 1M, cached $0.50; text $4, cached $0.40): the session's
    image tokens, cached or not, are priced at those. A model without an image price logs no cost, not the text rate."""
    async with stack(tmp_path) as (fake, built, url):
        for model in ("gpt-realtime", "gpt-realtime-mini"):
            fake.usages = [*IMAGE_USAGES]
            async with connect(url + f"?model={model}") as ws:
                assert json.loads(await ws.recv())["type"] == "session.created"
                for _ in IMAGE_USAGES:
                    await ws.send(json.dumps({"type": "response.create"}))
                    assert json.loads(await ws.recv())["type"] == "response.done"
        shown, mini = await logged(built, 2)
    assert (shown.model, shown.usage.prompt_tokens, shown.usage.cache_read_tokens) == ("gpt-realtime", 2300, 1088)
    text_in, text_cached, text_out, audio_out = 50 + (150 - 64), 64, 20 + 10, 40
    image_in, image_cached = 1050 + (1050 - 1024), 1024
    expected = (text_in * 4 + text_cached * 0.40 + text_out * 16 + audio_out * 64 + image_in * 5 + image_cached * 0.50) / 1e6
    assert shown.cost_known and shown.cost_usd == pytest.approx(expected)
    assert (mini.model, mini.usage.known, mini.cost_known) == ("gpt-realtime-mini", True, False)


async def test_binary_and_text_pass_both_ways_with_the_callers_subprotocols_and_beta_header(tmp_path):
    async with stack(tmp_path) as (fake, built, url):
        async with connect(
            url + "?model=gpt-4o-realtime-preview",
            headers={"OpenAI-Beta": "realtime=v1"},
            subprotocols=["realtime", "openai-insecure-api-key.sk-browser"],
        ) as ws:
            assert ws.subprotocol == "realtime"
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(bytes(range(256)) * 4)
            assert await ws.recv() == (bytes(range(256)) * 4)[::-1]
            text = json.dumps({"type": "conversation.item.create", "text": "héllo ✓"})
            await ws.send(text)
        await logged(built)
    headers = fake.handshakes[0]["headers"]
    assert headers["openai-beta"] == "realtime=v1"
    offered = [p.strip() for p in headers["sec-websocket-protocol"].split(",")]
    assert offered == ["realtime", "openai-insecure-api-key.sk-browser"]  # the browser's key subprotocol goes on
    assert fake.received == [bytes(range(256)) * 4, json.loads(text)]
    [ev] = built
    assert (ev.model, ev.usage.known, ev.cost_known) == ("gpt-4o-realtime-preview", False, False)  # no response: unknown


async def test_close_codes_pass_both_ways(tmp_path):
    async with stack(tmp_path) as (fake, built, url):
        async with connect(url + "?model=gpt-realtime") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "close-me", "code": 4001}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (4001, "bye from the provider")
        async with connect(url + "?model=gpt-realtime") as ws:
            await ws.recv()
            await ws.close(code=4002, reason="caller done")
        assert await asyncio.wait_for(fake.closed_with, 5) == 4002
        assert [ev.status for ev in await logged(built, 2)] == [101, 101]


async def test_a_caller_that_drops_its_connection_closes_the_providers(tmp_path):
    async with stack(tmp_path) as (fake, built, url):
        ws = await connect(url + "?model=gpt-realtime")
        await ws.recv()
        ws.transport.abort()  # no close frame: the TCP connection just ends
        assert await asyncio.wait_for(fake.closed_with, 5) == 1001  # going away
        [ev] = await logged(built)
        assert ev.status == 101 and ev.latency_ms >= 0


@pytest.mark.parametrize("key", ["", "bad-key"])
async def test_helicone_auth_is_checked_before_anything_goes_upstream(tmp_path, key):
    async with stack(tmp_path) as (fake, built, url):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url + "?model=gpt-realtime", key=key):
                pass
        response = info.value.response
        assert response.status_code == 401 and "Helicone" in json.loads(response.body)["error"]["message"]
        assert not fake.handshakes and not built


KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key: base64 of 16 bytes


async def raw_handshake(url: str, headers: str) -> tuple[int, dict[str, str], bytes]:
    """Sends a handshake with `headers` (lines, each ending in CRLF) and the caller's keys on a plain socket, as a
    client that websockets would not let send a malformed one; (status, headers, body) of the answer."""
    port = int(url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nAuthorization: Bearer {PROVIDER_KEY}\r\nHelicone-Auth: Bearer good-key\r\n"
                      f"{headers}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").strip().split("\r\n")
        answer_headers = {n.lower(): v.strip() for n, v in (line.split(":", 1) for line in lines)}
        length = int(answer_headers.get("content-length", 0))
        body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    return int(status_line.split()[1]), answer_headers, body


@pytest.mark.parametrize(("headers", "status", "named"), [
    ("Sec-WebSocket-Version: 13\r\n", 400, "Sec-WebSocket-Key"),  # no key
    ("Sec-WebSocket-Key: not base64!\r\nSec-WebSocket-Version: 13\r\n", 400, "Sec-WebSocket-Key"),
    ("Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n", 400, "Sec-WebSocket-Key"),  # 5 bytes, not 16
    (f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n", 400, "Sec-WebSocket-Key"),
    (f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n", 426, "Sec-WebSocket-Version"),  # another version
    (f"Sec-WebSocket-Key: {KEY}\r\n", 400, "Sec-WebSocket-Version"),  # no version
    (f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: realtime x y\r\n", 400,
     "Sec-WebSocket-Protocol"),  # not a list of tokens
    (f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nOrigin: https://a.example\r\nOrigin: https://b.example\r\n",
     400, "Origin"),
], ids=["no-key", "key-not-base64", "key-not-16-bytes", "two-keys", "version-8", "no-version", "bad-subprotocols",
        "two-origins"])
async def test_a_malformed_handshake_is_refused_before_anything_goes_upstream(tmp_path, headers, status, named):
    """A handshake RFC 6455 refuses is answered 400 naming the header (426 for a version other than 13), with
    Sec-WebSocket-Version: 13 when the version was the fault, and the provider never sees a connection for it: none
    opened and closed at once, nothing logged nor counted as a session."""
    async with stack(tmp_path) as (fake, built, url):
        got, answer_headers, body = await raw_handshake(url, headers)
        await asyncio.sleep(0.2)  # a provider connection, had one been opened, would be seen by now
        assert not fake.handshakes and not built, f"the provider saw {len(fake.handshakes)} connection(s)"
        assert sample(fake, "helicone_gateway_realtime_sessions_open") == 0
        message = json.loads(body)["error"]["message"]
        assert got == status and message.startswith("WebSocket handshake refused") and named in message, (got, message)
        if named == "Sec-WebSocket-Version":
            assert answer_headers["sec-websocket-version"] == "13"
        if status == 426:
            assert answer_headers["upgrade"] == "websocket"
        valid, _, _ = await raw_handshake(url, f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n")
        assert valid == 101 and len(fake.handshakes) == 1  # the same caller's well-formed handshake goes on


async def test_a_handshake_the_provider_refuses_is_answered_with_its_status_and_logged(tmp_path):
    async with stack(tmp_path) as (fake, built, url):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url + "?model=gpt-realtime", headers={"Authorization": "Bearer sk-wrong"}):
                pass
        assert info.value.response.status_code == 401 and len(fake.handshakes) == 1
        [ev] = await logged(built)
        assert ev.status == 401 and "401" in ev.error


async def test_a_target_url_on_loopback_is_refused_by_the_egress_policy(tmp_path):
    async with stack(tmp_path) as (fake, built, url):
        target = "http://127.0.0.1:9"  # loopback: never a Target-URL destination unless allowlisted
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url + "?model=gpt-realtime", headers={"Helicone-Target-URL": target}):
                pass
        response = info.value.response
        assert response.status_code == 403 and "Helicone-Target-URL" in json.loads(response.body)["error"]["message"]
        assert not fake.handshakes


@pytest.mark.parametrize("header", [{"Helicone-Moderations-Enabled": "true"}, {"Helicone-RateLimit-Policy": "10;w=60"}])
async def test_a_session_asking_for_moderation_or_a_rate_limit_is_refused_never_opened_without_them(tmp_path, header):
    """Moderation and rate limits apply to HTTP requests; a session that asked for either is refused (400 naming the
    header) before anything goes upstream, never opened unchecked or unlimited."""
    async with stack(tmp_path) as (fake, built, url):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url + "?model=gpt-realtime", headers=header):
                pass
        response = info.value.response
        [name] = header
        assert response.status_code == 400 and json.loads(response.body)["error"]["message"].startswith(name)
        assert not fake.handshakes


async def test_a_handshake_redirect_is_not_followed(tmp_path):
    """The gateway never follows a redirect (its egress check saw only the first host; the key would go on): a
    handshake answered with a 30x is refused (502 naming the status) and nothing connects to where it pointed."""
    async with stack(tmp_path) as (fake, built, url):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url + "/moved?model=gpt-realtime", subprotocols=["realtime", "openai-insecure-api-key.sk-x"]):
                pass
        response = info.value.response
        assert response.status_code == 502 and "307" in json.loads(response.body)["error"]["message"]
        assert not fake.handshakes  # the endpoint it pointed at was never reached
        [ev] = await logged(built)
        assert ev.status == 502 and "sk-x" not in ev.error


def held(server: HttpServer) -> int:
    """Bytes of caller messages the gateway's WebSocket sessions hold, not yet taken by the relay."""
    total = 0
    for conn in server.connections:
        if conn.websocket is not None:
            for entry in conn.websocket.inbox:
                message = entry[0] if isinstance(entry, tuple) else entry
                total += len(message.get("bytes") or message.get("text") or b"")
    return total


async def test_a_caller_sending_to_a_provider_that_does_not_read_makes_the_gateway_hold_little(tmp_path):
    """Reading from the caller pauses once about a megabyte of its messages waits (not 64 messages of up to 16 MiB
    each: a gigabyte per session)."""
    async with stack(tmp_path) as (fake, built, url):
        async with connect(url + "/deaf?model=gpt-realtime", max_size=None) as ws:
            chunk = b"a" * (1024 * 1024)

            async def flood() -> None:
                for _ in range(48):
                    await ws.send(chunk)

            sending = asyncio.ensure_future(flood())
            most, still = 0, 0
            while still < 20 and not sending.done():  # until the caller's sends stall for 0.4 s
                await asyncio.sleep(0.02)
                now = held(fake.gateway)
                still = still + 1 if now <= most else 0
                most = max(most, now)
            assert most <= 2 * len(chunk), f"{most / len(chunk):.0f} MiB held for one session"
            fake.hear.set()
            await asyncio.wait_for(sending, 10)


async def test_a_session_whose_provider_takes_none_of_the_callers_messages_ends(tmp_path):
    """A provider that reads nothing for the write timeout ends the session (1011, logged with why) instead of
    holding it, its caller and the gateway's graceful stop for ever."""
    async with stack(tmp_path, client_write_timeout=0.5) as (fake, built, url):
        async with connect(url + "/deaf?model=gpt-realtime", max_size=None, close_timeout=1) as ws:
            chunk = b"a" * (1024 * 1024)

            async def flood() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(48):
                        await ws.send(chunk)

            sending = asyncio.ensure_future(flood())
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)  # the provider's close handshake is waited for 5 s
            assert ws.close_code == 1011
            sending.cancel()
        [ev] = await logged(built)
        assert ev.status == 101 and "provider" in ev.error and "0.5" in ev.error


class RawCaller:
    """A caller on a plain socket framed by websockets' sans-I/O ClientProtocol, so what it does with the gateway's pings
    is up to the test: `answers` False never sends the pong (a caller whose network vanished answers nothing)."""

    def __init__(self, url: str, answers: bool) -> None:
        self.protocol = ClientProtocol(parse_uri(url))
        self.answers = answers
        self.pings = 0
        self.texts: asyncio.Queue = asyncio.Queue()
        self.opened = asyncio.get_running_loop().create_future()
        self.ended = asyncio.get_running_loop().create_future()  # the gateway dropped the connection
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None

    async def open(self) -> RawCaller:
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {PROVIDER_KEY}"
        request.headers["Helicone-Auth"] = "Bearer good-key"
        self.protocol.send_request(request)
        reader, self.writer = await asyncio.open_connection(self.protocol.uri.host, self.protocol.uri.port)
        self.writer.write(b"".join(self.protocol.data_to_send()))
        self.task = asyncio.ensure_future(self._read(reader))
        response = await asyncio.wait_for(self.opened, 5)
        assert response.status_code == 101
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            if not data:
                self.ended.set_result(asyncio.get_running_loop().time())
                return
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Response):
                    self.opened.set_result(event)
                elif isinstance(event, Frame) and event.opcode is Opcode.PING:
                    self.pings += 1
                elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self.texts.put_nowait(json.loads(event.data))
            pongs = b"".join(self.protocol.data_to_send())
            if self.answers:
                self.writer.write(pongs)

    def send(self, event: dict) -> None:
        self.protocol.send_text(json.dumps(event).encode())
        self.writer.write(b"".join(self.protocol.data_to_send()))

    async def event(self) -> dict:
        return await asyncio.wait_for(self.texts.get(), 5)

    def close(self) -> None:
        self.task.cancel()
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def raw_caller(url: str, answers: bool):
    caller = RawCaller(url + "?model=gpt-realtime", answers)
    await caller.open()
    try:
        yield caller
    finally:
        caller.close()


async def test_a_caller_that_answers_the_keepalive_pings_keeps_its_session(tmp_path):
    async with stack(tmp_path, websocket_ping_interval=0.2, websocket_ping_timeout=0.2) as (fake, built, url):
        async with raw_caller(url, answers=True) as caller:
            assert (await caller.event())["type"] == "session.created"
            await asyncio.sleep(1.2)  # six intervals of silence from the caller
            assert caller.pings >= 3 and not caller.ended.done() and not fake.closed_with.done()
            caller.send({"type": "response.create"})
            assert (await caller.event())["type"] == "response.done"
        assert await asyncio.wait_for(fake.closed_with, 5) == 1001


async def test_a_caller_that_answers_no_ping_is_cut_and_the_providers_session_closed(tmp_path):
    """A half-open caller (its network vanished: no FIN, no pong) is cut after about interval + timeout; the provider's
    session is closed going away (1001), and the session logged once."""
    async with stack(tmp_path, websocket_ping_interval=0.2, websocket_ping_timeout=0.2) as (fake, built, url):
        async with raw_caller(url, answers=False) as caller:
            opened = asyncio.get_running_loop().time()
            assert (await caller.event())["type"] == "session.created"
            assert await asyncio.wait_for(fake.closed_with, 5) == 1001
            cut = await asyncio.wait_for(caller.ended, 5) - opened
            assert caller.pings >= 1 and 0.35 <= cut < 1.5, cut
            [ev] = await logged(built)
            assert ev.status == 101
            assert not any(conn.websocket for conn in fake.gateway.connections)
            await asyncio.sleep(0.3)
            assert len(built) == 1


async def test_no_keepalive_ping_is_sent_with_the_interval_0(tmp_path):
    async with stack(tmp_path, websocket_ping_interval=0, websocket_ping_timeout=0.2) as (fake, built, url):
        async with raw_caller(url, answers=False) as caller:
            assert (await caller.event())["type"] == "session.created"
            await asyncio.sleep(1.0)
            assert caller.pings == 0 and not caller.ended.done() and not fake.closed_with.done()
            caller.send({"type": "response.create"})
            assert (await caller.event())["type"] == "response.done"


SESSIONS_ENV = "HELICONE_REALTIME_SESSIONS_PER_KEY"


class TwoKeys(StubKeys):
    """"good-key" and "second-key", both ORG's."""

    def lookup(self, key):
        return ORG if key == "second-key" else super().lookup(key)


def sample(fake: FakeRealtime, name: str) -> float:
    return fake.gw.metrics.registry.get_sample_value(name) or 0.0


async def test_a_key_holding_its_limit_of_sessions_is_refused_one_more_with_a_429_before_anything_goes_upstream(tmp_path):
    """A Helicone key may hold HELICONE_REALTIME_SESSIONS_PER_KEY sessions open at once: one more is refused (429 naming
    the setting and the limit, counted, logged as an HTTP request over its rate limit) and never reaches the provider;
    another key, of the same org, opens its own."""
    async with stack(tmp_path, realtime_sessions_per_key=2) as (fake, built, url):
        fake.gw.keys = TwoKeys()
        async with connect(url + "?model=gpt-realtime") as a, connect(url + "?model=gpt-realtime") as b:
            assert json.loads(await a.recv())["type"] == json.loads(await b.recv())["type"] == "session.created"
            with pytest.raises(websockets.InvalidStatus) as info:
                async with connect(url + "?model=gpt-realtime"):
                    pass
            response = info.value.response
            message = json.loads(response.body)["error"]["message"]
            assert response.status_code == 429 and SESSIONS_ENV in message and "2 Realtime sessions" in message, message
            assert len(fake.handshakes) == 2
            assert sample(fake, "helicone_gateway_realtime_sessions_refused_total") == 1
            assert sample(fake, "helicone_gateway_realtime_sessions_open") == 2
            [ev] = await logged(built)
            assert (ev.status, ev.org_id, ev.model) == (429, ORG, "gpt-realtime") and SESSIONS_ENV in ev.error
            async with connect(url + "?model=gpt-realtime", key="second-key") as c:
                assert json.loads(await c.recv())["type"] == "session.created"


async def test_a_sessions_slot_is_released_however_the_session_ends_and_taken_by_the_next(tmp_path):
    """With one session per key, the next session opens after each way one ends: the caller closes, the provider
    closes, the provider's connection is lost, the caller's drops, the caller answers no keepalive ping, the provider
    refuses the handshake. (Each session is logged once, when its slot is given back: the wait for it.)"""
    async with stack(tmp_path, realtime_sessions_per_key=1, websocket_ping_interval=0.2,
                     websocket_ping_timeout=0.2) as (fake, built, url):
        model = url + "?model=gpt-realtime"
        async with connect(model) as ws:  # the caller closes
            await ws.recv()
        await logged(built, 1)
        async with connect(model) as ws:  # the provider closes
            await ws.recv()
            await ws.send(json.dumps({"type": "close-me", "code": 4001}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        await logged(built, 2)
        async with connect(model) as ws:  # the provider's connection is lost
            await ws.recv()
            await ws.send(json.dumps({"type": "drop-me"}))
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code == 1011
        await logged(built, 3)
        ws = await connect(model)  # the caller's connection drops
        await ws.recv()
        ws.transport.abort()
        await logged(built, 4)
        async with raw_caller(url, answers=False) as caller:  # the caller answers no ping
            await asyncio.wait_for(caller.ended, 5)
        await logged(built, 5)
        with pytest.raises(websockets.InvalidStatus) as info:  # the provider refuses the handshake
            async with connect(model, headers={"Authorization": "Bearer sk-wrong"}):
                pass
        assert info.value.response.status_code == 401
        await logged(built, 6)
        async with connect(model) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            assert sample(fake, "helicone_gateway_realtime_sessions_open") == 1
        await logged(built, 7)
        assert [ev.status for ev in built] == [101] * 5 + [401, 101]
        assert sample(fake, "helicone_gateway_realtime_sessions_refused_total") == 0
        assert sample(fake, "helicone_gateway_realtime_sessions_open") == 0
