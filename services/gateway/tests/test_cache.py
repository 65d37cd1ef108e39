"""The response cache (Helicone-Cache-* headers): grammar, keys, buckets, TTL, streams, and stores
that are down, against the fake provider and a real Redis server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import pytest
from helicone_gateway import app as gateway_app
from helicone_gateway import cache as cache_mod
from helicone_gateway.cache import (
    DEFAULT_TTL,
    MAX_TTL,
    CachedResponse,
    MemoryCacheStore,
    RedisCacheStore,
    cache_directive,
    cache_key,
)
from helicone_gateway.headers import HeaderError

from services.gateway.tests.test_proxy import CHAT, StubKeys
from services.gateway.tests.test_upstream_faults import RawProvider
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.gateway import in_process_gateway
from tests.support.inloop import asgi_exchange, serve
from tests.support.net import free_port

OTHER_ORG = "99999999-2222-3333-4444-555555555555"
AUTH = {"Helicone-Auth": "Bearer good-key"}
ON = {**AUTH, "Helicone-Cache-Enabled": "true"}


class TwoOrgKeys(StubKeys):
    def lookup(self, key):
        return OTHER_ORG if key == "other-key" else super().lookup(key)


@contextlib.asynccontextmanager
async def cache_gateway(tmp_path, upstream_url: str, **settings):
    """(client, gateway, built events) for an in-process gateway in front of the fake provider."""
    settings.setdefault("cache_store_timeout", 2.0)  # generous: the machine is shared; the down tests set their own
    async with in_process_gateway(tmp_path, TwoOrgKeys(), openai_url=upstream_url, anthropic_url=upstream_url,
                                  **settings) as started:
        yield started


@pytest.fixture
async def upstream():
    fake = create_fake_upstream()
    async with serve(fake) as url:
        yield url, fake


@pytest.fixture
async def gateway(tmp_path, upstream):
    url, fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        yield client, gw, built, fake


async def post(client, gw, body=CHAT, headers=ON, path="/v1/chat/completions"):
    r = await client.post(path, json=body, headers=headers)
    await gw.cache.flush()  # the save runs after the answer, off the request's task
    return r


def sample(gw, name, **labels) -> float:
    return gw.metrics.registry.get_sample_value(name, labels) or 0.0


# ---- header grammar -----------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "cache_control", "expected"), [
    ({"helicone-cache-enabled": "true"}, "", (True, True, DEFAULT_TTL, 1)),
    ({"helicone-cache-enabled": "TRUE"}, "", (True, True, DEFAULT_TTL, 1)),
    ({"helicone-cache-save": "true"}, "", (False, True, DEFAULT_TTL, 1)),
    ({"helicone-cache-read": "true"}, "", (True, False, DEFAULT_TTL, 1)),
    ({"helicone-cache-enabled": "false", "helicone-cache-read": "true"}, "", (True, False, DEFAULT_TTL, 1)),
    ({"helicone-cache-enabled": "true"}, "max-age=60", (True, True, 60, 1)),
    ({"helicone-cache-enabled": "true"}, "no-store, max-age=60, s-maxage=120", (True, True, 120, 1)),
    ({"helicone-cache-enabled": "true"}, f"max-age={MAX_TTL * 3}", (True, True, MAX_TTL, 1)),
    ({"helicone-cache-enabled": "true"}, "max-age=0", (True, False, 0, 1)),
    ({"helicone-cache-enabled": "true"}, "max-age=" + "9" * 5000, (True, True, MAX_TTL, 1)),  # expires at once: nothing saved
    ({"helicone-cache-enabled": "true", "helicone-cache-bucket-max-size": "20"}, "", (True, True, DEFAULT_TTL, 20)),
])
def test_directive_from_headers(headers, cache_control, expected):
    d = cache_directive(headers, cache_control)
    assert (d.read, d.save, d.ttl, d.bucket_size) == expected


def test_seed_and_ignore_keys_are_read():
    d = cache_directive({"helicone-cache-enabled": "true", "helicone-cache-seed": " s1 ",
                         "helicone-cache-ignore-keys": "user, metadata,,"}, "")
    assert d.seed == "s1" and d.ignore_keys == {"user", "metadata"}


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("Helicone-Cache-Enabled", "yes", "'true' or 'false'"),
    ("Helicone-Cache-Save", "1", "'true' or 'false'"),
    ("Helicone-Cache-Read", "", "'true' or 'false'"),
    ("Helicone-Cache-Bucket-Max-Size", "0", "from 1 to 20"),
    ("Helicone-Cache-Bucket-Max-Size", "21", "from 1 to 20"),
    ("Helicone-Cache-Bucket-Max-Size", "two", "from 1 to 20"),
    ("Helicone-Cache-Bucket-Max-Size", "-1", "from 1 to 20"),
    ("Helicone-Cache-Bucket-Max-Size", "9" * 5000, "from 1 to 20"),
    ("Helicone-Cache-Bucket-Max-Size", "5.0", "from 1 to 20"),
    ("Helicone-Cache-Seed", "s" * 257, "longer than 256"),
    ("Helicone-Cache-Ignore-Keys", " , ", "comma-separated list"),
    ("Helicone-Cache-Ignore-Keys", ",".join(f"k{i}" for i in range(65)), "comma-separated list"),
    ("Cache-Control", "max-age=soon", "whole number of seconds"),
    ("Cache-Control", "max-age=-5", "whole number of seconds"),
    ("Cache-Control", "s-maxage", "max-age=<seconds>"),
])
async def test_bad_cache_headers_are_a_400_naming_the_header_and_form(gateway, name, value, accepted):
    client, gw, built, fake = gateway
    r = await post(client, gw, headers={**ON, name: value})
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error"
    message = r.json()["error"]["message"]
    assert name in message and accepted in message
    assert fake.state.received == [] and "helicone-cache" not in r.headers


@pytest.mark.parametrize("headers", [
    {**AUTH, "Helicone-Cache-Enable": "true"},  # a typo of Helicone-Cache-Enabled: every request went to the provider
    {**ON, "Helicone-Cache-Bucket-Size": "3"},
    {**ON, "Helicone-Cache-Ignore-Key": "user"},
])
async def test_an_unknown_cache_header_is_a_400_naming_it_not_silently_ignored(gateway, headers):
    """As unknown Helicone-Retry-* and Helicone-Prompt-* names are: a misspelt cache header was dropped without a
    word, so the caller paid the provider for every request it believed cached (or shared entries it meant to split)."""
    client, gw, built, fake = gateway
    r = await post(client, gw, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error", r.text
    unknown = next(n for n in headers if n not in ON).lower()
    message = r.json()["error"]["message"]
    assert repr(unknown) in message and "Helicone-Cache-Enabled" in message and "Helicone-Cache-Ignore-Keys" in message
    assert fake.state.received == []


def test_every_bad_value_raises_header_error():
    with pytest.raises(HeaderError, match="Helicone-Cache-Enabled"):
        cache_directive({"helicone-cache-enabled": "maybe"}, "")
    # checked even when the cache is not asked for
    with pytest.raises(HeaderError, match="Helicone-Cache-Bucket-Max-Size"):
        cache_directive({"helicone-cache-bucket-max-size": "99"}, "")


# ---- the hot path ----------------------------------------------------------------------------


async def test_requests_without_cache_headers_never_touch_the_cache(gateway, monkeypatch):
    client, gw, built, fake = gateway
    calls = []

    async def no_key(*a, **kw):
        calls.append("key")
        raise AssertionError("cache key computed for a request without cache headers")

    monkeypatch.setattr(gateway_app, "cache_key", no_key)
    real_get, real_set = gw.cache.store.get_many, gw.cache.store.set
    gw.cache.store.get_many = lambda *a: calls.append("get") or real_get(*a)
    gw.cache.store.set = lambda *a: calls.append("set") or real_set(*a)
    for headers in (AUTH, {**AUTH, "Helicone-Cache-Enabled": "false"}, {**AUTH, "Helicone-Cache-Seed": "x"}):
        r = await post(client, gw, headers=headers)
        assert r.status_code == 200 and "helicone-cache" not in r.headers and "helicone-cache-bucket-idx" not in r.headers
    assert calls == [] and len(fake.state.received) == 3
    assert sample(gw, "helicone_gateway_cache_lookups_total", result="miss") == 0


# ---- hits, misses and what is stored -----------------------------------------------------------


async def test_miss_then_hit_same_bytes_logged_as_a_cache_hit_with_the_cost_saved(gateway):
    client, gw, built, fake = gateway
    first = await post(client, gw)
    second = await post(client, gw)
    assert first.status_code == second.status_code == 200
    assert (first.headers["helicone-cache"], first.headers["helicone-cache-bucket-idx"]) == ("MISS", "0")
    assert (second.headers["helicone-cache"], second.headers["helicone-cache-bucket-idx"]) == ("HIT", "0")
    assert second.content == first.content and len(fake.state.received) == 1
    assert second.headers["helicone-id"] != first.headers["helicone-id"]
    assert second.headers["content-type"] == first.headers["content-type"]
    miss_ev, hit_ev = built
    assert not miss_ev.cache_hit and miss_ev.cost_usd > 0 and miss_ev.cache_saved_usd == 0
    assert hit_ev.cache_hit and hit_ev.cost_usd == 0 and hit_ev.cache_saved_usd == pytest.approx(miss_ev.cost_usd)
    assert hit_ev.request_id == second.headers["helicone-id"] and hit_ev.status == 200
    assert hit_ev.usage.completion_tokens == 6 and hit_ev.inline.response_body == first.content
    assert sample(gw, "helicone_gateway_cache_lookups_total", result="miss") == 1
    assert sample(gw, "helicone_gateway_cache_lookups_total", result="hit") == 1


async def test_a_body_the_key_cannot_write_back_as_json_is_keyed_as_sent_not_a_500(gateway):
    """An escaped lone surrogate is valid JSON (a JavaScript slice that cut an emoji in half) but cannot be
    written back as UTF-8: the cache keys the bytes as they came (a miss, then a hit), never failing the request."""
    client, gw, built, fake = gateway
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut emoji \\ud83d"}]}'
    answers = []
    for _ in range(2):
        answers.append(await client.post("/v1/chat/completions", content=body, headers={**ON, "content-type": "application/json"}))
        await gw.cache.flush()
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["helicone-cache"] for a in answers] == ["MISS", "HIT"] and len(fake.state.received) == 1


async def asgi_call(gw, body: bytes, headers: dict[str, str]) -> tuple[dict, list[bytes]]:
    """One request straight into Gateway.handle: (response headers, the body messages as sent)."""
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    sent = await asgi_exchange(gw.handle, scope, [body])
    await gw.cache.flush()
    return dict(sent[0]["headers"]), [m["body"] for m in sent[1:] if m["body"]]


async def test_streamed_answers_are_replayed_as_the_same_stream(gateway):
    client, gw, built, fake = gateway
    body = json.dumps(dict(CHAT, stream=True, stream_options={"include_usage": True})).encode()
    # the provider pauses between events, so each arrives as its own chunk
    headers = {**ON, "content-type": "application/json", "x-fake-chunk-delay": "0.02"}
    h1, c1 = await asgi_call(gw, body, headers)
    h2, c2 = await asgi_call(gw, body, headers)
    assert (h1[b"helicone-cache"], h2[b"helicone-cache"]) == (b"MISS", b"HIT")
    assert h2[b"content-type"].startswith(b"text/event-stream") and b"content-length" not in h2
    assert b"".join(c1).endswith(b"data: [DONE]\n\n") and b"".join(c1).count(b"data: ") == 9
    assert c2 == c1 and len(c1) > 5  # the same bytes, in the same chunks: a stream, not one block
    assert len(fake.state.received) == 1
    assert built[1].cache_hit and built[1].streamed and built[1].usage.completion_tokens == 6
    assert built[1].inline.response_body == b"".join(c1)
    # and through an HTTP client, the SSE text is identical
    r = await client.post("/v1/chat/completions", content=body, headers={**headers, "accept-encoding": "identity"})
    assert r.headers["helicone-cache"] == "HIT" and r.content == b"".join(c1)
    # a caller offering gzip may get a gzip answer: it never shares an entry with one that did not offer it
    r = await client.post("/v1/chat/completions", content=body, headers={**headers, "accept-encoding": "gzip"})
    assert r.headers["helicone-cache"] == "MISS" and len(fake.state.received) == 2


async def test_a_cached_stream_longer_than_the_logged_body_logs_what_its_hit_saved(tmp_path, upstream):
    url, fake = upstream
    async with cache_gateway(tmp_path, url, max_logged_body_bytes=2048) as (client, gw, built):
        body = dict(CHAT, stream=True, stream_options={"include_usage": True})
        headers = {**ON, "x-fake-words": "400", "accept-encoding": "identity"}
        first, hit = await post(client, gw, body, headers), await post(client, gw, body, headers)
    assert (first.headers["helicone-cache"], hit.headers["helicone-cache"]) == ("MISS", "HIT") and hit.text == first.text
    assert built[1].cache_hit and built[1].inline.response_truncated and len(built[1].inline.response_body) == 2048
    assert built[1].usage.known and built[1].usage.completion_tokens == 400  # in the stream's last chunk, past the cut
    assert built[1].cost_usd == 0 and built[1].cache_saved_usd == pytest.approx(built[0].cost_usd) and built[0].cost_usd > 0


async def test_only_successful_answers_are_stored(gateway):
    client, gw, built, fake = gateway
    failing = dict(CHAT, model="fail-500")
    for _ in range(2):
        r = await post(client, gw, body=failing)
        assert r.status_code == 500 and r.headers["helicone-cache"] == "MISS"
    assert len(fake.state.received) == 2 and len(gw.cache.store) == 0



STREAMED_MESSAGES = {"model": "claude-3-5-haiku-latest", "max_tokens": 64, "stream": True,
                     "messages": [{"role": "user", "content": "one two three"}]}


@pytest.mark.parametrize(("path", "body", "extra"), [
    ("/v1/chat/completions", dict(CHAT, stream=True), {}),  # OpenAI's format: data: {"error": ...}
    ("/v1/chat/completions", dict(CHAT, stream=True), {"x-fake-gzip": "1"}),  # the same, gzip-encoded
    ("/v1/messages", STREAMED_MESSAGES, {}),  # Anthropic's event: error (overloaded_error)
], ids=["openai", "openai-gzip", "anthropic"])
async def test_a_stream_the_provider_gave_up_on_with_an_error_event_is_not_stored(gateway, path, body, extra):
    """A 200 stream carrying an error event is not a complete answer: it is served, never replayed."""
    client, gw, built, fake = gateway
    failed = await post(client, gw, body=body, headers={**ON, **extra, "x-fake-stream-error": "1"}, path=path)
    assert failed.status_code == 200 and failed.headers["helicone-cache"] == "MISS"
    assert failed.headers.get("content-encoding", "") == ("gzip" if extra else "")
    assert b"error" in failed.content and len(gw.cache.store) == 0
    # the same request once the provider recovered: a MISS (nothing was saved), then a HIT of the good answer
    good = await post(client, gw, body=body, headers={**ON, **extra}, path=path)
    hit = await post(client, gw, body=body, headers={**ON, **extra}, path=path)
    assert (good.headers["helicone-cache"], hit.headers["helicone-cache"]) == ("MISS", "HIT")
    assert b"error" not in good.content and hit.content == good.content and len(fake.state.received) == 2


@pytest.mark.parametrize(("chunks", "failed"), [
    ([b'data: {"choices": [{"delta": {"content": "error: \\"error\\"\\nevent: error"}}]}\n\n', b"data: [DONE]\n\n"], False),
    ([b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"text": "error"}}\n\n'], False),
    ([b'data: {"choices": []}\n\ndata:{ "err', b'or" : {"code": 503}}\n\n'], True),  # split over two chunks
    ([b'event: error\r\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\r\n\r\n'], True),
])
def test_stream_failed_finds_error_events_not_the_word_error(chunks, failed):
    assert cache_mod.stream_failed("text/event-stream; charset=utf-8", b"".join(chunks)) is failed
    assert cache_mod.stream_failed("application/json", b"".join(chunks)) is False  # a JSON answer is judged by its status


def framed(ctype: str, body: bytes) -> bytes:
    """A 200 whose HTTP framing ends cleanly (the last chunk of a chunked body): whatever the body lacks, the exchange is whole."""
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


SSE, JSON_TYPE = "text/event-stream; charset=utf-8", "application/json"
OAI_DELTA = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
OAI_STOP = b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason": "stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"
RESP_DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
RESP_DONE = (b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r1","status":"completed",'
             b'"model":"gpt-4o-mini","usage":{"input_tokens":3,"output_tokens":1}}}\n\n')
ANT_START = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-3-5-haiku-latest","usage":{"input_tokens":3}}}\n\n'
             b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n')
ANT_END = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":1}}\n\n'
           b'event: message_stop\ndata: {"type": "message_stop"}\n\n')
GEM_DELTA = b'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"index":0}],"modelVersion":"gemini-2.0-flash"}\r\n\r\n'
GEM_END = (b'data: {"candidates":[{"content":{"parts":[{"text":"!"}],"role":"model"},"finishReason":"STOP","index":0}],'
           b'"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2},"modelVersion":"gemini-2.0-flash"}\r\n\r\n')
JSON_WHOLE = b'{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}'
LARGE_JSON = b'{"object":"list","data":[' + b",".join([b'{"embedding":[0.25,0.5]}'] * 20000) + b'],"model":"m"}'
CHAT_PATH, GEMINI_SSE = "/v1/chat/completions", "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
GEMINI_ARRAY = "/gemini/v1beta/models/gemini-2.0-flash:streamGenerateContent"


@pytest.mark.parametrize(("path", "ctype", "body", "stored"), [
    (CHAT_PATH, SSE, OAI_DELTA + OAI_STOP + DONE, True),
    (CHAT_PATH, SSE, OAI_DELTA + OAI_STOP, False),  # no data: [DONE]
    (CHAT_PATH, SSE, OAI_DELTA + DONE, False),  # [DONE] but no choice ever finished
    (CHAT_PATH, SSE, OAI_DELTA + b'data: {"choices":[{"delta":{"content":"data: [DONE] \\"finish_reason\\": \\"x"}}]}\n\n', False),  # the ends only in the text
    ("/v1/responses", SSE, RESP_DELTA + RESP_DONE, True),  # the Responses API ends with response.completed, no [DONE]
    ("/v1/responses", SSE, RESP_DELTA, False),
    ("/v1/messages", SSE, ANT_START + ANT_END, True),
    ("/v1/messages", SSE, ANT_START, False),  # no message_stop
    (GEMINI_SSE, SSE, GEM_DELTA + GEM_END, True),
    (GEMINI_SSE, SSE, GEM_DELTA, False),  # no candidate finished
    (CHAT_PATH, JSON_TYPE, JSON_WHOLE, True),
    (CHAT_PATH, JSON_TYPE, JSON_WHOLE[:60], False),  # a JSON answer cut short
    (GEMINI_ARRAY, JSON_TYPE, b"[" + GEM_DELTA[6:-4] + b",\r\n" + GEM_END[6:-4] + b"]", True),
    (GEMINI_ARRAY, JSON_TYPE, b"[" + GEM_DELTA[6:-4] + b",\r\n", False),
    (CHAT_PATH, JSON_TYPE, LARGE_JSON, True),  # past INLINE_JSON_BYTES: checked on a worker thread
    (CHAT_PATH, JSON_TYPE, LARGE_JSON[:-2], False),
], ids=["openai", "openai-no-done", "openai-no-finish", "openai-markers-in-text", "responses", "responses-cut",
        "anthropic", "anthropic-no-stop", "gemini-sse", "gemini-sse-cut", "json", "json-cut", "gemini-array",
        "gemini-array-cut", "json-large", "json-large-cut"])
async def test_only_whole_answers_are_stored_not_ones_cut_short_in_clean_framing(tmp_path, path, ctype, body, stored):
    """A provider (or a proxy in front of it) that ends its 200 cleanly before the answer is whole: the cut answer
    is served as it came, never saved to be replayed as a HIT for the whole TTL. What marks an answer whole is its
    format's end: OpenAI's data: [DONE] after a finish_reason (the Responses API's response.completed), Anthropic's
    message_stop, Gemini's finishReason; a JSON answer parses."""
    async with RawProvider(lambda c, r: framed(ctype, body)) as provider:
        url = f"http://127.0.0.1:{provider.port}"
        async with cache_gateway(tmp_path, url, provider_urls={"gemini": url}) as (client, gw, built):
            first = await post(client, gw, body=STREAMED_MESSAGES, path=path)
            second = await post(client, gw, body=STREAMED_MESSAGES, path=path)
            assert len(gw.cache.store) == int(stored)
    assert first.status_code == 200 and first.content == body and second.content == body
    assert (first.headers["helicone-cache"], second.headers["helicone-cache"]) == ("MISS", "HIT" if stored else "MISS")
    assert len(provider.requests) == (1 if stored else 2)


async def test_save_only_and_read_only(gateway):
    client, gw, built, fake = gateway
    read_only = {**AUTH, "Helicone-Cache-Read": "true"}
    save_only = {**AUTH, "Helicone-Cache-Save": "true"}
    r = await post(client, gw, headers=read_only)
    assert r.headers["helicone-cache"] == "MISS" and "helicone-cache-bucket-idx" not in r.headers
    r = await post(client, gw, headers=read_only)  # a read-only miss saved nothing
    assert r.headers["helicone-cache"] == "MISS" and len(fake.state.received) == 2
    saved = await post(client, gw, headers=save_only)
    again = await post(client, gw, headers=save_only)  # save only never answers from the cache
    assert saved.headers["helicone-cache"] == again.headers["helicone-cache"] == "MISS"
    assert len(fake.state.received) == 4
    hit = await post(client, gw, headers=read_only)
    assert hit.headers["helicone-cache"] == "HIT" and hit.content == again.content


# ---- the key ---------------------------------------------------------------------------------


async def test_key_is_canonical_json_minus_ignored_keys_plus_seed(gateway):
    client, gw, built, fake = gateway
    await post(client, gw, body=dict(CHAT, user="alice"))
    # same JSON, other key order and spacing: one entry
    reordered = json.dumps({"user": "alice", "messages": CHAT["messages"], "model": CHAT["model"]}, indent=2)
    r = await client.post("/v1/chat/completions", content=reordered,
                          headers={**ON, "content-type": "application/json"})
    assert r.headers["helicone-cache"] == "HIT"
    r = await post(client, gw, body=dict(CHAT, user="bob"))
    assert r.headers["helicone-cache"] == "MISS"
    ignore = {**ON, "Helicone-Cache-Ignore-Keys": "user"}
    await post(client, gw, body=dict(CHAT, user="carol"), headers=ignore)
    r = await post(client, gw, body=dict(CHAT, user="dave"), headers=ignore)
    assert r.headers["helicone-cache"] == "HIT"
    r = await post(client, gw, body=dict(CHAT, user="dave", temperature=0.5), headers=ignore)
    assert r.headers["helicone-cache"] == "MISS"
    for seed, expected in (("a", "MISS"), ("a", "HIT"), ("b", "MISS")):
        r = await post(client, gw, headers={**ON, "Helicone-Cache-Seed": seed})
        assert r.headers["helicone-cache"] == expected
    r = await post(client, gw, body=dict(CHAT, user="alice"))  # no seed: the very first entry
    assert r.headers["helicone-cache"] == "HIT"


async def test_key_parts(monkeypatch):
    d = cache_directive({"helicone-cache-enabled": "true"}, "")
    base = ("org", "openai https://api.openai.com", "POST", "/v1/chat/completions", "gzip")

    async def key(*parts, body=b'{"a":1,"b":2}', directive=d):
        return await cache_key(*parts, body, directive)

    k = await key(*base)
    assert k == await key(*base, body=b'{ "b": 2,\n "a": 1 }')  # canonical JSON
    for i, other in enumerate(("org2", "openai http://127.0.0.1:9", "GET", "/v1/embeddings", "identity")):
        assert await key(*base[:i], other, *base[i + 1:]) != k
    # not JSON: keyed byte for byte (ignore keys cannot apply)
    assert await key(*base, body=b"not json") == await key(*base, body=b"not json") != await key(*base, body=b"not  json")
    # length-prefixed parts: moving bytes between parts changes the key
    assert await key("or", "gopenai https://api.openai.com", *base[2:]) != k
    # large bodies are canonicalised on a worker thread, to the same key
    monkeypatch.setattr(cache_mod, "INLINE_JSON_BYTES", 4)
    assert await key(*base) == k


async def test_orgs_never_share_entries(gateway):
    client, gw, built, fake = gateway
    await post(client, gw)
    r = await post(client, gw, headers={**ON, "Helicone-Auth": "Bearer other-key"})
    assert r.headers["helicone-cache"] == "MISS" and len(fake.state.received) == 2
    assert built[1].org_id == OTHER_ORG and not built[1].cache_hit
    r = await post(client, gw, headers={**ON, "Helicone-Auth": "Bearer other-key"})
    assert r.headers["helicone-cache"] == "HIT" and built[2].org_id == OTHER_ORG


async def test_path_and_provider_are_part_of_the_key(gateway):
    client, gw, built, fake = gateway
    await post(client, gw)
    r = await post(client, gw, path="/openai/v1/chat/completions")  # same upstream path and target
    assert r.headers["helicone-cache"] == "HIT"
    anthropic = {"model": "claude-3-5-haiku-latest", "max_tokens": 10, "messages": CHAT["messages"]}
    r1 = await post(client, gw, body=anthropic, path="/v1/messages")
    assert r1.headers["helicone-cache"] == "MISS"
    r2 = await post(client, gw, body=anthropic, path="/anthropic/v1/messages")
    assert r2.headers["helicone-cache"] == "HIT"
    r3 = await post(client, gw, body=anthropic, path="/v1/chat/completions")  # other path: other key
    assert r3.headers["helicone-cache"] == "MISS"


# ---- buckets and TTL ---------------------------------------------------------------------------


async def test_bucket_misses_until_full_then_answers_from_a_random_slot(gateway):
    client, gw, built, fake = gateway
    headers = {**ON, "Helicone-Cache-Bucket-Max-Size": "3"}
    filled = {}
    for expected_slot in ("0", "1", "2"):
        r = await post(client, gw, headers=headers)
        assert r.headers["helicone-cache"] == "MISS" and r.headers["helicone-cache-bucket-idx"] == expected_slot
        filled[expected_slot] = r.content
    assert len(set(filled.values())) == 3 and len(fake.state.received) == 3
    seen = set()
    for _ in range(40):
        r = await post(client, gw, headers=headers)
        assert r.headers["helicone-cache"] == "HIT"
        idx = r.headers["helicone-cache-bucket-idx"]
        assert r.content == filled[idx]
        seen.add(idx)
    assert seen == {"0", "1", "2"} and len(fake.state.received) == 3  # 40 draws: all three, with near certainty
    # the bucket size is not part of the key: a bucket of 1 reads slot 0, already filled
    r = await post(client, gw)
    assert r.headers["helicone-cache"] == "HIT" and r.content == filled["0"]


async def test_entries_expire_after_max_age(gateway):
    client, gw, built, fake = gateway
    short = {**ON, "Cache-Control": "max-age=1"}
    await post(client, gw, headers=short)
    r = await post(client, gw, headers=short)
    assert r.headers["helicone-cache"] == "HIT"
    await asyncio.sleep(1.3)
    r = await post(client, gw, headers=short)
    assert r.headers["helicone-cache"] == "MISS" and len(fake.state.received) == 2


async def test_a_max_age_on_a_second_cache_control_line_sets_the_ttl(gateway, monkeypatch):
    """Cache-Control sent as two field lines is one list (RFC 9110 5.3): a max-age on the second
    line (one added after a client's own `no-cache`) was silently left out, and the answer kept for 7 days."""
    client, gw, built, fake = gateway
    ttls = []
    set_entry = gw.cache.store.set
    monkeypatch.setattr(gw.cache.store, "set", lambda key, value, ttl: ttls.append(ttl) or set_entry(key, value, ttl))
    r = await client.post("/v1/chat/completions", json=CHAT,
                          headers=[*ON.items(), ("Cache-Control", "no-cache"), ("Cache-Control", "max-age=60")])
    await gw.cache.flush()
    assert r.status_code == 200 and r.headers["helicone-cache"] == "MISS" and ttls == [60]


async def test_redis_entries_get_the_requested_ttl(tmp_path, upstream, redis_url):
    import redis.asyncio as redis

    url, fake = upstream
    direct = redis.Redis.from_url(redis_url)

    async def keys() -> set[bytes]:
        return {k async for k in direct.scan_iter("helicone:cache:v1:*")}

    try:
        async with cache_gateway(tmp_path, url, redis_url=redis_url) as (client, gw, built):
            for cc, low, high in (("s-maxage=120, max-age=5", 110, 120), ("", DEFAULT_TTL - 10, DEFAULT_TTL),
                                  (f"max-age={10 * MAX_TTL}", MAX_TTL - 10, MAX_TTL)):
                headers = {**ON, "Cache-Control": cc, "Helicone-Cache-Seed": f"ttl-{cc}-{time.time_ns()}"}
                before = await keys()
                r = await post(client, gw, headers=headers)
                assert r.headers["helicone-cache"] == "MISS"
                [new] = await keys() - before
                assert low <= await direct.ttl(new) <= high, cc
                r = await post(client, gw, headers=headers)
                assert r.headers["helicone-cache"] == "HIT"
    finally:
        await direct.aclose()


# ---- stores ----------------------------------------------------------------------------------


async def test_memory_store_is_a_bounded_lru():
    store = MemoryCacheStore(max_bytes=100)
    await store.set("a", b"x" * 39, 60)  # 40 bytes with its key
    await store.set("b", b"y" * 39, 60)
    assert await store.get_many(["a"]) == [b"x" * 39]  # a is now the most recently used
    await store.set("c", b"z" * 39, 60)
    assert await store.get_many(["a", "b", "c"]) == [b"x" * 39, None, b"z" * 39] and store.size == 80
    await store.set("c", b"w" * 59, 60)  # replacing an entry counts its new size only
    assert store.size == 100 and await store.get_many(["a", "c"]) == [b"x" * 39, b"w" * 59]
    await store.set("big", b"!" * 98, 60)  # larger than the whole cache: not stored, nothing evicted
    assert len(store) == 2 and store.size == 100
    await store.set("d", b"", 1)
    assert await store.get_many(["a", "c", "d"]) == [None, b"w" * 59, b""]  # a was the least recently used
    await asyncio.sleep(1.1)
    assert await store.get_many(["d"]) == [None] and store.size == 60  # expired: gone, and its bytes freed


def test_entries_round_trip_and_damaged_ones_are_refused():
    entry = CachedResponse(200, [(b"content-type", b"text/event-stream"), (b"x-empty", b"")], [b"data: 1\n\n", b"", b"\x00" * 3])
    data = entry.encode()
    assert CachedResponse.decode(data) == entry
    for bad in (data[:-1], data + b"x", b"XXXX" + data[4:]):
        with pytest.raises(ValueError):
            CachedResponse.decode(bad)


async def test_two_gateways_sharing_redis_hit_each_others_entries(tmp_path, upstream, redis_url):
    url, fake = upstream
    async with cache_gateway(tmp_path / "a", url, redis_url=redis_url) as (client_a, gw_a, built_a), \
            cache_gateway(tmp_path / "b", url, redis_url=redis_url) as (client_b, gw_b, built_b):
        assert isinstance(gw_a.cache.store, RedisCacheStore)
        headers = {**ON, "Helicone-Cache-Seed": f"shared-{time.time_ns()}"}
        first = await post(client_a, gw_a, headers=headers)
        second = await post(client_b, gw_b, headers=headers)
        assert (first.headers["helicone-cache"], second.headers["helicone-cache"]) == ("MISS", "HIT")
        assert second.content == first.content and len(fake.state.received) == 1
        assert built_b[0].cache_hit
        # buckets fill across replicas too
        bucket = {**headers, "Helicone-Cache-Seed": headers["Helicone-Cache-Seed"] + "-b", "Helicone-Cache-Bucket-Max-Size": "2"}
        r = await post(client_a, gw_a, headers=bucket)
        r2 = await post(client_b, gw_b, headers=bucket)
        assert [r.headers["helicone-cache-bucket-idx"], r2.headers["helicone-cache-bucket-idx"]] == ["0", "1"]
        r3 = await post(client_a, gw_a, headers=bucket)
        assert r3.headers["helicone-cache"] == "HIT" and r3.content in (r.content, r2.content)
        assert (await gw_a.ready())["redis"].ok


@contextlib.contextmanager
def black_hole():
    """A loopback port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


@pytest.mark.parametrize("store", ["refused", "silent"])
async def test_a_store_that_is_down_or_silent_is_skipped_fast(tmp_path, upstream, store):
    url, fake = upstream
    timeout = 0.2
    with black_hole() as silent:
        redis_url = f"redis://127.0.0.1:{free_port()}/0" if store == "refused" else silent
        async with cache_gateway(tmp_path, url, redis_url=redis_url, cache_store_timeout=timeout) as (client, gw, built):
            await post(client, gw, headers=AUTH)  # warm the upstream connection
            started = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=CHAT, headers=ON)
            elapsed = time.perf_counter() - started
            await gw.cache.flush()
            assert r.status_code == 200 and r.headers["helicone-cache"] == "MISS"
            assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream model"
            # one bounded read; the write happens after the answer (a silent store would otherwise hang it forever)
            assert elapsed < timeout + 1.5
            assert sample(gw, "helicone_gateway_cache_errors_total", op="read") == 1
            assert sample(gw, "helicone_gateway_cache_errors_total", op="write") == 1
            assert sample(gw, "helicone_gateway_cache_lookups_total", result="miss") == 1
            assert not (await gw.ready())["redis"].ok
            assert built[-1].status == 200 and not built[-1].cache_hit


async def test_an_answer_from_a_fallback_target_is_not_a_hit_for_requests_without_that_fallback(gateway):
    """Helicone-Fallbacks may send another body (bodyKeyOverride), headers or provider: what such a chain
    answered is only replayed to requests naming the same chain, never to the plain request."""
    client, gw, built, fake = gateway
    body = dict(CHAT, model="fail-500")
    chain = {**ON, "Helicone-Fallbacks": json.dumps([{"onCodes": [500]}, {"bodyKeyOverride": {"model": "gpt-4o-mini"}}])}
    r = await post(client, gw, body=body, headers=chain)
    assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1" and r.json()["model"] == "gpt-4o-mini"
    plain = await post(client, gw, body=body)  # the same body, no fallbacks: what the provider says to it
    assert plain.status_code == 500 and plain.headers["helicone-cache"] == "MISS"
    again = await post(client, gw, body=body, headers=chain)
    assert again.headers["helicone-cache"] == "HIT" and again.json()["model"] == "gpt-4o-mini"
    assert again.headers["helicone-fallback-index"] == "1"  # the HIT names the target that answered, as its MISS did
    assert len(fake.state.received) == 3  # the chain's two tries, then the plain request's one


async def test_provider_keys_never_share_entries(gateway):
    """As Helicone's cache: the caller's provider key is part of the key, so an answer bought with one key is
    never replayed to a caller with another key, or none (a revoked or wrong key is not served from the cache)."""
    client, gw, built, fake = gateway
    alice = {**ON, "Authorization": "Bearer sk-alice"}
    await post(client, gw, headers=alice)
    for other in ({**ON, "Authorization": "Bearer sk-mallory"}, ON):
        r = await post(client, gw, headers=other)
        assert r.headers["helicone-cache"] == "MISS"
    assert (await post(client, gw, headers=alice)).headers["helicone-cache"] == "HIT"
    anthropic = {"model": "claude-3-5-haiku-latest", "max_tokens": 10, "messages": CHAT["messages"]}
    await post(client, gw, body=anthropic, headers={**ON, "x-api-key": "sk-ant-alice"}, path="/v1/messages")
    r = await post(client, gw, body=anthropic, headers={**ON, "x-api-key": "sk-ant-mallory"}, path="/v1/messages")
    assert r.headers["helicone-cache"] == "MISS" and len(fake.state.received) == 5


async def test_a_cache_hit_the_caller_stops_reading_is_cut_after_the_write_timeout_and_logged_so(tmp_path):
    """The replay of a large cached answer waited for the caller to read for ever (its task, and the entry it
    held, never ended); it is cut after HELICONE_CLIENT_WRITE_TIMEOUT and the hit is logged as cut."""
    import httpx
    from helicone_gateway.app import create_app
    from helicone_gateway.http_server import HttpServer
    from helicone_gateway.settings import GatewaySettings

    from services.gateway.tests.test_http_server import non_reader, running

    answer = b'{"object": "chat.completion", "text": "' + b"a" * (6 * 1024 * 1024) + b'"}'
    provider_answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
    async with RawProvider(lambda c, r: provider_answer) as provider:
        settings = GatewaySettings(data_dir=tmp_path, _env_file=None, openai_url=f"http://127.0.0.1:{provider.port}",
                                   kafka_bootstrap="127.0.0.1:1", client_write_timeout=0.5, port=free_port())
        app = create_app(settings)
        gw = app.state.gateway
        gw.keys = StubKeys()
        built: list = []
        server = HttpServer.for_settings(app, settings)
        async with running(server=server):
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            body = json.dumps(CHAT).encode()
            headers = {**ON, "content-type": "application/json", "accept-encoding": "identity"}
            async with httpx.AsyncClient(timeout=5) as http:
                r = await http.post(f"http://{server.bound[0]}:{server.bound[1]}/v1/chat/completions", content=body,
                                    headers=headers)
            assert r.headers["helicone-cache"] == "MISS" and r.content == answer
            await gw.cache.flush()
            head = "".join(f"{n}: {v}\r\n" for n, v in headers.items())
            sock = await non_reader(server, b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n%scontent-length: %d\r\n\r\n%s"
                                    % (head.encode(), len(body), body))
            for _ in range(250):
                if len(built) == 2:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            assert not server.tasks
            sock.close()
    hit = built[1]
    assert hit.cache_hit and "HELICONE_CLIENT_WRITE_TIMEOUT" in hit.error
    assert sample(gw, "helicone_gateway_requests_total", provider="openai", status_class="client_write_timeout") == 1


@pytest.mark.parametrize("url", ["redis://:S3c/retPw99@127.0.0.1:6379/0", "rediss://cache:S3c?retPw99@127.0.0.1:6380",
                                 "redis://:S3c#retPw99@127.0.0.1", "redis://:1234/S3cretPw99@127.0.0.1:6379/0"])
def test_a_redis_url_whose_password_is_not_percent_encoded_is_a_settings_error_that_shows_none_of_it(url, monkeypatch):
    """A '/', '?' or '#' in the password ends the URL's host part: redis-py took the rest of it for the port and the
    gateway died at start with `ValueError: Port could not be cast to integer value as 'S3c'` on stderr."""
    from helicone_core.settings import describe_settings_error
    from helicone_gateway.settings import GatewaySettings
    from pydantic import ValidationError

    monkeypatch.setenv("HELICONE_REDIS_URL", url)
    with pytest.raises(ValidationError) as info:
        GatewaySettings(_env_file=None)
    message = describe_settings_error(info.value)
    assert message.startswith("HELICONE_REDIS_URL") and "%2F" in message, message
    assert not any(piece in message + str(info.value) for piece in ("S3c", "ret", "Pw99")), message


@pytest.mark.parametrize("url", ["redis://:S3c%2Fret@127.0.0.1:6379/0", "rediss://cache:p@ss@127.0.0.1:6380", "redis://127.0.0.1",
                                 "unix:///run/redis.sock?db=0", ""])
def test_a_redis_url_redis_py_reads_as_written_is_accepted(url):
    from helicone_gateway.settings import GatewaySettings

    settings = GatewaySettings(redis_url=url, _env_file=None)
    assert (settings.redis_url.get_secret_value() if settings.redis_url else "") == url
