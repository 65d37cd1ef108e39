"""Property-based fuzzing of the gateway's request headers, straight through its ASGI entry point
(so any bytes can be sent, not only what an HTTP client would allow): it never crashes or hangs,
every answer carries a Helicone-Id, and a logged request has the status the caller got.
Helicone-Target-URL is left out: it would send traffic to arbitrary hosts (test_target_url covers it)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from helicone_gateway.app import create_app
from helicone_gateway.settings import GatewaySettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.tests.test_proxy import CHAT, StubKeys
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import asgi_request, serve

NAMES = [b"helicone-auth", b"helicone-request-id", b"helicone-user-id", b"helicone-session-id", b"helicone-session-path",
         b"helicone-session-name", b"helicone-property-team", b"helicone-property-", b"helicone-property-\xc3\xa9",
         b"authorization", b"content-type", b"accept-encoding", b"x-api-key", b"anthropic-version", b"content-length",
         b"transfer-encoding", b"connection", b"host", b"x-anything"]
name = st.one_of(st.sampled_from(NAMES), st.binary(min_size=1, max_size=40).map(bytes.lower))
value = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"Bearer good-key", b"Bearer nope", b"Bearer ", b"bearer good-key", b"gzip, br", b"\xff\xfe",
                     b"6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1", b"application/json", b"0", b"99999999999999999999"]),
)
header_lists = st.lists(st.tuples(name, value), max_size=25).map(lambda hs: [(b"helicone-auth", b"Bearer good-key"), *hs])


async def call(app, headers, body: bytes) -> tuple[int, dict, bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("gw", 80)}
    return await asgi_request(app, scope, [body])


def test_gateway_survives_any_headers(tmp_path):
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        upstream = loop.run_until_complete(stack.enter_async_context(serve(create_fake_upstream())))
        app = create_app(GatewaySettings(data_dir=tmp_path, _env_file=None, openai_url=upstream, anthropic_url=upstream,
                                         kafka_bootstrap="127.0.0.1:1"))
        gw = app.state.gateway
        gw.keys = StubKeys()
        loop.run_until_complete(gw.start())
        built = []
        gw.publisher.submit = lambda builder, size=0: built.append(builder())
        body = json.dumps(CHAT).encode()

        @settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(headers=header_lists)
        def check(headers):
            built.clear()
            status, answer_headers, answer = loop.run_until_complete(asyncio.wait_for(call(app, headers, body), 10))
            assert answer_headers.get(b"helicone-id"), (status, answer)
            assert status != 500 or b"upstream exploded" in answer  # never the gateway's own internal error
            if built:
                [event] = built
                assert event.status == status and event.request_id == answer_headers[b"helicone-id"].decode()

        check()
        loop.run_until_complete(gw.stop())
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
