"""OpenAI's Realtime API through the gateway: a WebSocket (GET /v1/realtime?model=..., Upgrade: websocket) relayed
frame for frame to the provider, and logged once when it ends, as one request, with the usage of its `response.done`
events summed. The relay itself is Gateway.relay_websocket; this module holds what it reads and sends."""

from __future__ import annotations

import json
from dataclasses import fields

import aiohttp
from helicone_core.cost import TokenCounts
from helicone_core.usage import openai_usage

from .headers import forward_request_headers

# The Realtime server event that carries a response's usage; messages without this text are never parsed.
RESPONSE_DONE = "response.done"
# Close codes never sent in a close frame (RFC 6455 7.4.1): what goes to the other side instead.
NO_STATUS, ABNORMAL = 1005, 1006
NORMAL, GOING_AWAY, INTERNAL_ERROR = 1000, 1001, 1011
# bytes of one message either way (base64 audio appends are the largest the SDKs send); the server's bound is the same
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# seconds a close handshake with the provider may take before its connection is dropped
CLOSE_TIMEOUT = 5.0


def sent_close_code(code: int | None, dropped: int) -> int:
    """The code to close the other side with: `dropped` for a connection lost without a close frame, 1000 for a close
    without a code; any other code as it came."""
    if code is None or code == ABNORMAL or code == 0:
        return dropped
    return NORMAL if code == NO_STATUS else code


def upstream_headers(raw_headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers for the provider's handshake: its key (Authorization, api-key), OpenAI-Beta and the rest as
    for an HTTP request (no Helicone-* nor hop-by-hop ones), minus the WebSocket handshake's own (Sec-WebSocket-*:
    the client connecting upstream makes its own key; the subprotocols offered go as its protocols)."""
    return [(n, v) for n, v in forward_request_headers(raw_headers) if not n.startswith("sec-websocket-")]


async def _refuse_redirect(session, context, params: aiohttp.TraceRequestRedirectParams) -> None:
    """ws_connect follows redirects and cannot be told not to: a 30x answer to the handshake fails it instead (the
    gateway never follows one: the egress check saw the first host only, and the key would go on to the next)."""
    resp = params.response
    raise aiohttp.WSServerHandshakeError(
        resp.request_info,
        (resp,),
        status=resp.status,
        message=f"{resp.reason}, a redirect the gateway does not follow",
        headers=resp.headers,
    )


def ws_session(socket_factory=None) -> aiohttp.ClientSession:
    """A client session for provider WebSockets: no proxy from the environment (the egress check must see the real
    peer), no cookies, no redirects, `socket_factory` opening its sockets (the egress-guarded one for Target-URL)."""
    connector = aiohttp.TCPConnector(limit=0, socket_factory=socket_factory, force_close=True)
    no_redirects = aiohttp.TraceConfig()
    no_redirects.on_request_redirect.append(_refuse_redirect)
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trace_configs=[no_redirects],
    )


def _add(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(TokenCounts)})


class RealtimeUsage:
    """The usage of a Realtime session: the sum of its `response.done` events' `usage` (input_tokens, output_tokens and
    their input_token_details / output_token_details: cached, text and audio tokens). `known` once one was read."""

    __slots__ = ("known", "responses", "tokens")

    def __init__(self) -> None:
        self.tokens = TokenCounts()
        self.known = False
        self.responses = 0

    def read(self, text: str) -> None:
        """Reads a server event (a text message); only one naming response.done is parsed."""
        if RESPONSE_DONE not in text:
            return
        try:
            event = json.loads(text)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") != RESPONSE_DONE:
            return
        response = event.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        if not isinstance(usage, dict):
            return
        self.tokens = _add(self.tokens, openai_usage(usage))
        self.known = True
        self.responses += 1


class OpenSessions:
    """The Realtime sessions each Helicone key holds open in this process, at most `per_key` each; `gauge` is
    their total. A key's entry goes with its last session, so the map holds only keys with a session open."""

    __slots__ = ("gauge", "per_key", "_by_key")

    def __init__(self, per_key: int, gauge) -> None:
        self.per_key = per_key
        self.gauge = gauge
        self._by_key: dict[str, int] = {}

    def take(self, key: str) -> bool:
        """One more session for `key`; False (nothing taken) when it holds `per_key` already."""
        held = self._by_key.get(key, 0)
        if held >= self.per_key:
            return False
        self._by_key[key] = held + 1
        self.gauge.inc()
        return True

    def release(self, key: str) -> None:
        """Gives back a session taken for `key`."""
        held = self._by_key[key] - 1
        if held:
            self._by_key[key] = held
        else:
            del self._by_key[key]
        self.gauge.dec()
