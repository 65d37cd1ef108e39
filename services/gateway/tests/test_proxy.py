"""The gateway app (in process) against the fake provider served on a local port."""

import asyncio
import contextlib
import gzip
import json
import os
import threading
import time
import zlib
from ipaddress import ip_address

import httpx
import pytest
from helicone_core import events
from helicone_core import usage as usage_mod
from helicone_core.db import KeyStoreUnavailable
from helicone_gateway import app as gateway_app
from helicone_gateway import egress
from helicone_gateway.app import TAIL_BYTES, Capture, create_app
from helicone_gateway.settings import GatewaySettings

from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.gateway import in_process_gateway
from tests.support.inloop import serve
from tests.support.net import free_port

ORG = "11111111-2222-3333-4444-555555555555"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}


class StubKeys:
    """The key directory's interface: "good-key" belongs to ORG; "down" is asked while no key set is loaded."""

    loaded = True

    async def start(self):
        pass

    async def stop(self):
        pass

    async def ping(self, timeout):
        return False  # no Postgres behind the stub

    def lookup(self, key):
        if key == "down":
            raise KeyStoreUnavailable("no key set loaded")
        return ORG if key == "good-key" else None


@contextlib.asynccontextmanager
async def started_gateway(tmp_path, **settings):
    """(in-process client, published events) for a gateway with a stub key store and a publisher
    that records built events instead of sending them."""
    async with in_process_gateway(tmp_path, StubKeys(), **settings) as (client, _gw, built):
        yield client, built


@pytest.fixture(autouse=True)
def target_sockets(monkeypatch):
    """Safety net: Target-URL sockets to anything but loopback are recorded here and never opened."""
    attempted = []
    real = egress._open_socket

    def open_socket(addr_info):
        if ip_address(addr_info[4][0]).is_loopback:
            return real(addr_info)
        attempted.append(addr_info[4][:2])
        raise OSError("test: a non-loopback connection is never made")

    monkeypatch.setattr(egress, "_open_socket", open_socket)
    return attempted


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture
async def gateway(tmp_path):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, openai_url=upstream_url, anthropic_url=upstream_url, max_logged_body_bytes=2048
    ) as (client, built):
        yield client, fake, built


async def test_unreachable_provider_is_a_502_and_is_logged_as_such(tmp_path):
    async with started_gateway(tmp_path, openai_url="http://127.0.0.1:1") as (client, built):
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 502 and r.json()["error"]["type"] == "gateway_upstream_error"
    [ev] = built
    assert ev.status == 502 and ev.request_id == r.headers["helicone-id"] and "upstream request failed" in ev.error


async def test_proxies_and_logs_a_chat_completion(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={
        "Helicone-Auth": "Bearer good-key", "Authorization": "Bearer sk-provider-secret",
        "Helicone-User-Id": "u1", "Helicone-Property-Team": "search", "Helicone-Session-Id": "s1"})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream model"
    rid = r.headers["helicone-id"]
    sent = fake.state.received[-1]["headers"]
    assert sent["authorization"] == "Bearer sk-provider-secret"
    assert not any(k.startswith("helicone-") for k in sent)
    [ev] = built
    assert ev.request_id == rid and ev.org_id == ORG and ev.status == 200
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.known) == (3, 6, True)
    assert ev.cost_known and ev.cost_usd == pytest.approx((3 * 0.15 + 6 * 0.60) / 1e6)
    assert (ev.user_id, ev.session_id, dict(ev.properties)) == ("u1", "s1", {"team": "search"})
    assert json.loads(ev.inline.request_body) == CHAT
    assert b"sk-provider-secret" not in events.encode(ev)


async def test_streaming_is_passed_through_and_logged(gateway):
    client, fake, built = gateway
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    r = await client.post("/v1/chat/completions", json=body, headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n") and r.text.count("data: ") == 9
    [ev] = built
    assert ev.streamed and ev.usage.known and ev.usage.completion_tokens == 6
    assert ev.inline.response_body.decode() == r.text


async def test_missing_and_invalid_keys_are_rejected_without_calling_upstream(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and "Helicone-Auth" in r.json()["error"]["message"]
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer nope"})
    assert r.status_code == 401
    assert fake.state.received == [] and built == []


async def test_without_a_key_set_every_request_is_refused_never_proxied(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer down"})
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and r.headers["helicone-id"]
    assert r.json()["error"]["type"] == "helicone_auth_unavailable"
    assert fake.state.received == [] and built == []


async def test_header_limits_are_a_431_before_auth_never_proxied_nor_logged(gateway):
    client, fake, built = gateway
    many = {f"x-h{i}": "v" for i in range(100)}  # + httpx's own host, accept, ... headers
    big = {"x-big": "a" * 65536}
    for extra, setting in ((many, "HELICONE_MAX_HEADER_COUNT"), (big, "HELICONE_MAX_HEADER_BYTES")):
        for auth in ({}, {"Helicone-Auth": "Bearer good-key"}):
            r = await client.post("/v1/chat/completions", json=CHAT, headers={**extra, **auth})
            assert r.status_code == 431 and r.headers["helicone-id"]
            assert r.json()["error"]["type"] == "request_headers_too_large" and setting in r.json()["error"]["message"]
    assert fake.state.received == [] and built == []
    r = await client.post("/v1/chat/completions", json=CHAT,
                          headers={"Helicone-Auth": "Bearer good-key", **{f"x-h{i}": "a" * 600 for i in range(90)}})
    assert r.status_code == 200 and len(built) == 1


async def test_header_limits_follow_the_settings(tmp_path):
    async with started_gateway(tmp_path, openai_url="http://127.0.0.1:1", max_header_count=12, max_header_bytes=2048) as (client, built):
        r = await client.post("/v1/chat/completions", json=CHAT, headers={f"x-h{i}": "v" for i in range(10)})
        assert r.status_code == 431 and "at most 12" in r.json()["error"]["message"]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={"x-big": "a" * 2048})
        assert r.status_code == 431 and "at most 2048" in r.json()["error"]["message"]
    assert built == []


async def test_upstream_errors_are_passed_through_and_logged(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=dict(CHAT, model="fail-500"), headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 500 and r.json()["error"]["message"] == "upstream exploded"
    assert built[0].status == 500 and not built[0].usage.known


async def test_large_bodies_are_truncated_in_the_log_only(gateway):
    client, fake, built = gateway
    big = dict(CHAT, messages=[{"role": "user", "content": "word " * 2000}])
    r = await client.post("/v1/chat/completions", json=big, headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 200
    assert fake.state.received[-1]["body"] == big  # the provider got everything
    ev = built[0]
    assert ev.inline.request_truncated and len(ev.inline.request_body) == 2048
    assert ev.usage.prompt_tokens == 2000  # usage comes from the (small) response


async def test_a_stream_longer_than_the_logged_body_still_logs_its_usage(gateway):
    """The log keeps a body's first 2048 bytes here; a stream's usage is in its last event (OpenAI's
    usage chunk, Anthropic's message_delta), past the cut, and still counts, plain or gzip-encoded."""
    client, fake, built = gateway
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    for words, gz in ((400, "0"), (3000, "1")):
        r = await client.post("/v1/chat/completions", json=body,
                              headers={"Helicone-Auth": "Bearer good-key", "x-fake-words": str(words), "x-fake-gzip": gz})
        assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n") and r.text.count("data: ") == words + 3
        assert r.headers.get("content-encoding", "identity") == ("gzip" if gz == "1" else "identity")
        ev = built[-1]
        assert ev.inline.response_truncated and len(ev.inline.response_body) == 2048
        assert r.text.startswith(ev.inline.response_body.decode())  # the log's body is the answer's start
        assert ev.usage.known and (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (3, words), gz
        assert ev.cost_known and ev.cost_usd == pytest.approx((3 * 0.15 + words * 0.60) / 1e6)
    anthropic = {"model": "claude-3-5-haiku-latest", "max_tokens": 900, "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    r = await client.post("/v1/messages", json=anthropic, headers={"Helicone-Auth": "Bearer good-key", "x-fake-words": "900",
                                                                   "x-api-key": "sk-ant-test"})
    assert r.status_code == 200 and r.text.count("event: content_block_delta") == 900
    ev = built[-1]
    assert ev.inline.response_truncated and ev.model == "claude-3-5-haiku-latest"
    assert ev.usage.known and (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (2, 900)  # message_start + message_delta


async def test_a_json_answer_longer_than_the_logged_body_still_logs_its_usage(gateway):
    """A large embeddings batch (here 300 vectors of 64 numbers, past the 2048 bytes logged) ends with
    its model and usage: they are read from the answer's tail, as floats, base64 or gzip-encoded."""
    client, fake, built = gateway
    batch = {"model": "text-embedding-3-small", "input": ["three little words"] * 300}
    for fmt, encoding in (("float", "identity"), ("base64", "identity"), ("float", "gzip")):
        r = await client.post("/v1/embeddings", json=dict(batch, encoding_format=fmt),
                              headers={"Helicone-Auth": "Bearer good-key", "x-fake-dims": "64", "accept-encoding": encoding})
        assert r.status_code == 200 and len(r.json()["data"]) == 300
        assert r.headers.get("content-encoding", "identity") == encoding
        ev = built[-1]
        assert ev.inline.response_truncated and len(ev.inline.response_body) == 2048, fmt
        assert ev.usage.known and ev.usage.prompt_tokens == 900 and ev.model == "text-embedding-3-small", (fmt, encoding)
        assert ev.cost_known and ev.cost_usd == pytest.approx(900 * 0.02 / 1e6)


def test_a_capture_keeps_a_bounded_decoded_tail_of_long_event_streams_and_json_only():
    chunks = [b"data: %d %s\n\n" % (i, b"x" * 990) for i in range(5000)]  # 5 MB
    whole = b"".join(chunks)
    plain = Capture(1000, "text/event-stream", "identity")
    for c in chunks:
        plain.add(c)
    assert (plain.data(), plain.truncated, plain.total) == (whole[:1000], True, len(whole))
    assert TAIL_BYTES <= len(plain.end()) <= TAIL_BYTES + 1000 and whole.endswith(plain.end())  # bounded, the end
    encoder = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    gz = [encoder.compress(c) + encoder.flush(zlib.Z_SYNC_FLUSH) for c in chunks] + [encoder.flush()]
    packed = Capture(1000, "text/event-stream; charset=utf-8", "GZIP")
    for c in gz:
        packed.add(c)
    assert packed.data() == b"".join(gz)[:1000] and whole.endswith(packed.end()) and len(packed.end()) >= TAIL_BYTES
    short, other = Capture(len(whole), "text/event-stream", ""), Capture(1000, "text/html", "")
    broken = Capture(10, "text/event-stream", "gzip")  # says gzip, is not: no tail, nothing raised
    for c in chunks:
        short.add(c)
        other.add(c)
        broken.add(c)
    assert short.end() == other.end() == broken.end() == b"" and not short.truncated and other.truncated
    assert gzip.decompress(b"".join(gz)) == whole


def held(gw, outcome: str) -> float:
    """Requests the gateway held for the log backlog so far, by how the wait ended."""
    return gw.metrics.registry.get_sample_value("helicone_gateway_requests_held_total", {"outcome": outcome}) or 0.0


async def test_requests_wait_while_the_log_backlog_is_over_its_budget(tmp_path):
    """Each event is submitted with its body bytes; while the publisher's backlog is over its budget a
    request waits for room before it is read and forwarded, at most publish_backlog_wait, then goes on."""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, in_process_gateway(
        tmp_path, StubKeys(), openai_url=upstream_url, publish_backlog_wait=0.3
    ) as (client, gw, built):
        sizes: list[int] = []
        gw.publisher.submit = lambda builder, size=0: (sizes.append(size), built.append(builder()))
        pub = gw.publisher

        async def call() -> httpx.Response:
            return await client.post("/v1/chat/completions", json=CHAT,
                                      headers={"Helicone-Auth": "Bearer good-key", "accept-encoding": "identity"})

        r = await call()
        assert r.status_code == 200 and sizes == [len(r.request.content) + len(r.content)]
        assert held(gw, "timeout") == held(gw, "room") == 0
        pub._grow(pub.backlog_bytes + 1)  # the logging fell behind
        started = time.perf_counter()
        r = await call()
        assert r.status_code == 200 and time.perf_counter() - started >= 0.3 and held(gw, "timeout") == 1
        waiting = asyncio.create_task(call())
        await asyncio.sleep(0.1)
        assert not waiting.done() and len(fake.state.received) == 2  # not forwarded yet
        pub._shrink(pub.backlog_bytes + 1)  # a batch landed: room
        assert (await waiting).status_code == 200 and held(gw, "room") == 1 and held(gw, "timeout") == 1
        r = await call()
        assert r.status_code == 200 and held(gw, "room") == 1 and len(fake.state.received) == 4 and len(built) == 4


def test_a_capture_decodes_a_bounded_amount_of_a_gzip_bomb(monkeypatch):
    monkeypatch.setattr(usage_mod, "MAX_DECODED_BYTES", 4 << 20)
    encoder = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    head = encoder.compress(os.urandom(3000)) + encoder.flush(zlib.Z_SYNC_FLUSH)
    zeros = encoder.compress(b"\0" * (64 << 20)) + encoder.flush()  # 64 MiB of zeros in about 64 KiB
    capture = Capture(len(head), "text/event-stream", "gzip")
    capture.add(head)
    peak = 0
    for i in range(0, len(zeros), 4096):
        capture.add(zeros[i:i + 4096])
        peak = max(peak, sum(map(len, capture.tail or ())))
    assert capture.truncated and capture.data() == head
    assert peak <= TAIL_BYTES + 64 * 1024 and capture.end() == b""  # past the decode budget: no tail, no usage


async def test_a_logging_path_that_falls_behind_holds_requests_until_it_catches_up(tmp_path, monkeypatch):
    """The real publisher (Kafka unreachable: events go to the journal) with a journal stuck on a slow
    disk: a request with a 1.5 MB body puts the backlog over its 1 MiB budget, the next request waits
    publish_backlog_wait and goes on; once the journal catches up, requests no longer wait."""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, in_process_gateway(
        tmp_path, StubKeys(), openai_url=upstream_url, publish_backlog_bytes=1 << 20, publish_backlog_wait=0.3,
        journal_linger_ms=0,
    ) as (client, gw, built):
        del gw.publisher.submit  # the real one again
        pub, loop = gw.publisher, asyncio.get_running_loop()
        go, in_append = threading.Event(), asyncio.Event()
        real_append = pub.journal.append

        def slow_append(records, **kw):
            loop.call_soon_threadsafe(in_append.set)
            go.wait(10)
            return real_append(records, **kw)

        async def call(body=CHAT) -> float:
            started = time.perf_counter()
            r = await client.post("/v1/chat/completions", json=body, headers={"Helicone-Auth": "Bearer good-key"})
            assert r.status_code == 200
            return time.perf_counter() - started

        monkeypatch.setattr(pub.journal, "append", slow_append)
        try:
            await call(dict(CHAT, messages=[{"role": "user", "content": "word " * 300_000}]))
            await asyncio.wait_for(in_append.wait(), 5)
            assert pub.backlogged and held(gw, "timeout") == 0
            assert await call() >= 0.3 and held(gw, "timeout") == 1
            go.set()
            deadline = loop.time() + 10
            while pub.backlogged and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert not pub.backlogged
            await call()
            assert held(gw, "timeout") == 1 and held(gw, "room") == 0
            while pub.journal.record_count < 3 and loop.time() < deadline:
                await asyncio.sleep(0.02)
            assert pub.journal.record_count == 3
        finally:
            go.set()


async def test_helicone_target_url_overrides_the_provider_base_url(tmp_path):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, openai_url="http://127.0.0.1:1", max_request_bytes=4096, target_url_allowlist=[host_port(upstream_url)]
    ) as (client, built):
        r = await client.post("/v1/chat/completions", json=CHAT,
                              headers={"Helicone-Auth": "Bearer good-key", "Helicone-Target-URL": upstream_url + "/"})
        too_big = await client.post("/v1/chat/completions", content=b"x" * 5000,
                                    headers={"Helicone-Auth": "Bearer good-key", "Helicone-Target-URL": upstream_url})
    assert r.status_code == 200 and fake.state.received[0]["path"] == "/v1/chat/completions"
    assert built[0].target_url == upstream_url
    assert too_big.status_code == 413 and len(fake.state.received) == 1
    assert built[1].status == 413 and built[1].request_id == too_big.headers["helicone-id"]


async def test_a_body_within_the_limit_builds_no_refusal(tmp_path, monkeypatch):
    """The 413 of a body over HELICONE_MAX_REQUEST_BYTES is built when a body is refused, not for every request in case
    it is (an exception and its message per request)."""
    made = []
    init = gateway_app.Rejection.__init__
    monkeypatch.setattr(gateway_app.Rejection, "__init__", lambda self, *args, **kw: made.append(args[:2]) or init(self, *args, **kw))
    auth = {"Helicone-Auth": "Bearer good-key"}
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url, max_request_bytes=4096) as (
            client, built):
        ok = await client.post("/v1/chat/completions", json=CHAT, headers=auth)
        assert ok.status_code == 200 and made == []
        too_big = await client.post("/v1/chat/completions", content=b"x" * 5000, headers=auth)
    message = "request body larger than 4096 bytes (HELICONE_MAX_REQUEST_BYTES)"
    assert too_big.status_code == 413 and too_big.json()["error"] == {"message": message, "type": "request_too_large"}
    assert made == [(413, message)] and [ev.status for ev in built] == [200, 413]


async def test_a_stream_kept_whole_is_searched_for_an_error_event_once(tmp_path, monkeypatch):
    """A stream within the logged body's limit has no tail of its own: the log reads its body for an error event, and
    not the empty tail too (a bytes search per streamed request)."""
    searched = []
    real = gateway_app.stream_failed
    monkeypatch.setattr(gateway_app, "stream_failed", lambda ctype, body: searched.append(body) or real(ctype, body))
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url) as (client, built):
        r = await client.post("/v1/chat/completions", json=dict(CHAT, stream=True), headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 200 and b"data: " in r.content
    assert built[0].streamed and built[0].error == "" and searched == [r.content]


@pytest.mark.parametrize("suffix", ["?api-version=2024-10-21", "/#v1", "?"])
async def test_a_target_url_with_a_query_or_fragment_is_a_400_naming_the_header(tmp_path, suffix):
    """The request's path is appended to Helicone-Target-URL: after a query or fragment it would become
    part of them, and the request would go to "/" (logged as the path it never reached)."""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, target_url_allowlist=[host_port(upstream_url)]
    ) as (client, built):
        r = await client.post("/v1/chat/completions", json=CHAT,
                              headers={"Helicone-Auth": "Bearer good-key", "Helicone-Target-URL": upstream_url + suffix})
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error"
    assert r.json()["error"]["message"].startswith("Helicone-Target-URL must not have a query or fragment")
    assert fake.state.received == []


def target(url: str | bytes) -> list[tuple[str, str | bytes]]:
    return [("Helicone-Auth", "Bearer good-key"), ("Helicone-Target-URL", url)]


async def test_target_urls_into_the_gateways_own_network_are_refused_and_logged(tmp_path, target_sockets):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url) as (client, built):
        port = upstream_url.rsplit(":", 1)[1]
        cases = {  # Target-URL: (metric reason, words in the message)
            f"http://127.0.0.1:{port}": ("loopback", "is a loopback address"),
            f"http://localhost:{port}": ("loopback", "resolves to a loopback address"),  # refused at connect time
            f"http://0.0.0.0:{port}": ("unspecified", "is an unspecified address"),
            f"http://[::1]:{port}": ("loopback", "is a loopback address"),
            f"http://[::ffff:127.0.0.1]:{port}": ("loopback", "is a loopback address"),
            f"http://１２７.０.０.１:{port}".encode(): ("loopback", "is a loopback address"),  # full-width digits
            "http://169.254.169.254/latest/meta-data/": ("cloud_metadata", "is a cloud metadata address"),
            "http://10.0.0.5:8000": ("private", "is a private (RFC 1918) address"),
        }
        answers = [await client.post("/v1/chat/completions", json=CHAT, headers=target(url)) for url in cases]
        odd = [await client.post("/v1/chat/completions", json=CHAT, headers=target(f"http://{host}:{port}"))
               for host in ("2130706433", "0x7f.1", "127.1", "0177.0.0.1")]
        provider = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer good-key"})
        metrics = (await client.get("/metrics")).text
    assert provider.status_code == 200  # the configured provider, on loopback too, is not affected
    assert len(fake.state.received) == 1 and target_sockets == []
    for r, ev, (reason, words) in zip(answers, built[:len(cases)], cases.values(), strict=True):
        error = r.json()["error"]
        assert (r.status_code, error["type"]) == (403, "helicone_target_refused"), error
        assert error["message"].startswith("Helicone-Target-URL ") and words in error["message"]
        assert "HELICONE_TARGET_URL_ALLOWLIST" in error["message"]
        assert ("HELICONE_TARGET_URL_ALLOW_PRIVATE" in error["message"]) == (reason == "private")
        assert (ev.status, ev.request_id, ev.error) == (403, r.headers["helicone-id"], error["message"])
    assert len(built) == len(cases) + 1  # + the provider request; the 400s below are not logged (no valid headers)
    assert [r.status_code for r in odd] == [400] * 4
    assert all("non-standard form" in r.json()["error"]["message"] for r in odd)
    assert 'helicone_gateway_target_refused_total{reason="loopback"} 5.0' in metrics
    assert 'helicone_gateway_target_refused_total{reason="cloud_metadata"} 1.0' in metrics


async def test_a_target_host_no_resolver_can_take_is_a_400_naming_the_header(tmp_path, target_sockets):
    """An empty label (a..b) or one over 63 characters cannot even be put to the resolver: a clear 400,
    not an unhandled error from deep in the upstream connection."""
    async with started_gateway(tmp_path) as (client, built):
        answers = [await client.post("/v1/chat/completions", json=CHAT, headers=target(url))
                   for url in ("http://models..example:8000", f"https://{'a' * 64}.example")]
    for r in answers:
        assert (r.status_code, r.json()["error"]["type"]) == (400, "helicone_header_error"), r.text
        assert r.json()["error"]["message"].startswith("Helicone-Target-URL host ")
        assert "not a valid host name" in r.json()["error"]["message"]
    assert target_sockets == []


async def test_allow_private_opens_private_ranges_but_not_loopback_or_metadata(tmp_path, target_sockets):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, target_url_allow_private=True) as (client, built):
        private = await client.post("/v1/chat/completions", json=CHAT, headers=target("http://10.0.0.5:8000"))
        loopback = await client.post("/v1/chat/completions", json=CHAT, headers=target(upstream_url))
        metadata = await client.post("/v1/chat/completions", json=CHAT, headers=target("http://[fd00:ec2::254]"))
    assert target_sockets == [("10.0.0.5", 8000)]  # let through to the socket (which the test never opens): 502
    assert [private.status_code, loopback.status_code, metadata.status_code] == [502, 403, 403]
    assert "cloud metadata" in metadata.json()["error"]["message"] and fake.state.received == []
    assert [ev.status for ev in built] == [502, 403, 403]


async def test_an_allowlisted_host_port_is_opened_and_nothing_else(tmp_path):
    fake = create_fake_upstream()
    other = f"http://127.0.0.1:{free_port()}"
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, target_url_allowlist=[host_port(upstream_url), "localhost:" + upstream_url.rsplit(":", 1)[1]]
    ) as (client, built):
        by_address = await client.post("/v1/chat/completions", json=CHAT, headers=target(upstream_url))
        by_name = await client.post("/v1/chat/completions", json=CHAT,
                                    headers=target(upstream_url.replace("127.0.0.1", "localhost")))
        other_port = await client.post("/v1/chat/completions", json=CHAT, headers=target(other))
        elsewhere = await client.post("/v1/chat/completions", json=CHAT, headers=target("https://93.184.216.34"))  # public
    assert (by_address.status_code, by_name.status_code) == (200, 200) and len(fake.state.received) == 2
    for r in (other_port, elsewhere):
        assert r.status_code == 403 and "is not in this gateway's HELICONE_TARGET_URL_ALLOWLIST" in r.json()["error"]["message"]
    assert [ev.status for ev in built] == [200, 200, 403, 403]


async def test_a_star_entry_keeps_other_hosts_open_but_only_to_public_addresses(tmp_path):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, target_url_allowlist=["*", host_port(upstream_url)]
    ) as (client, _):
        listed = await client.post("/v1/chat/completions", json=CHAT, headers=target(upstream_url))
        other_port = await client.post("/v1/chat/completions", json=CHAT, headers=target(f"http://127.0.0.1:{free_port()}"))
    assert listed.status_code == 200
    assert other_port.status_code == 403 and "is a loopback address" in other_port.json()["error"]["message"]


async def test_redirects_from_a_target_are_passed_back_never_followed(tmp_path):
    fake = create_fake_upstream()

    async def redirector(scope, receive, send):
        await send({"type": "http.response.start", "status": 307,
                    "headers": [(b"location", location.encode()), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async with serve(fake) as upstream_url, serve(redirector) as redirect_url, started_gateway(
        tmp_path, target_url_allowlist=[host_port(redirect_url)]
    ) as (client, built):
        location = upstream_url + "/v1/chat/completions"  # loopback, not allowlisted
        r = await client.post("/v1/chat/completions", json=CHAT, headers=target(redirect_url))
    assert r.status_code == 307 and r.headers["location"] == location
    assert fake.state.received == [] and built[0].status == 307


async def test_path_encoding_and_query_string_are_forwarded_as_sent(gateway):
    client, fake, _ = gateway
    r = await client.get("/v1/files/file%2Fabc/content?limit=2&after=x%20y", headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 200
    assert r.json() == {"path": "/v1/files/file%2Fabc/content", "query": "limit=2&after=x%20y"}


async def test_path_and_query_reach_the_provider_byte_for_byte_under_a_base_path(tmp_path):
    """The upstream URL was parsed again before sending and re-encoded on the way: escapes of reserved characters were
    decoded (a%3Ab went as a:b, ?ids=a%2Fb as ids=a/b, %3F as ?) and a stray % encoded once more (%ZZ as %25ZZ), so an
    opaque id or signed query reached the provider changed, and the log named a path the provider never saw."""
    fake = create_fake_upstream()
    path = "/v1beta/files/a%3Ab%2Fc%7E%2C/content"
    query = "after=2024-01-01T00%3A00%3A00Z&ids=a%2Fb&ids=c&q=%3F%2B+x%26y&bad=%ZZ"
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, provider_urls={"gemini": upstream_url + "/base"}, target_url_allowlist=[host_port(upstream_url)]
    ) as (client, built):
        auth = {"Helicone-Auth": "Bearer good-key"}
        by_prefix = await client.get(f"/gemini{path}?{query}", headers=auth)
        by_target = await client.get(f"/openai{path}?{query}", headers={**auth, "Helicone-Target-URL": upstream_url + "/t/"})
    assert by_prefix.json() == {"path": "/base" + path, "query": query}
    assert by_target.json() == {"path": "/t" + path, "query": query}
    assert [ev.path for ev in built] == [path, path]


@pytest.mark.parametrize("raw_path", [b"/gemini/../../admin/keys", b"/gemini/v1beta/%2e%2E/%2E%2e/admin/./keys"])
async def test_a_path_with_dot_segments_is_refused_never_sent_above_the_providers_base_path(tmp_path, raw_path):
    """'..' segments (as sent, or percent-encoded as every HTTP client leaves them) were resolved when the upstream URL
    was built: /gemini/../../admin went to the provider host's /admin, out of the base path the operator set (a
    proxy's per-team prefix, an account's path in an AI gateway), while the log named the path under the base."""
    from tests.support.inloop import asgi_request

    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, in_process_gateway(
        tmp_path, StubKeys(), kafka_bootstrap="127.0.0.1:1", provider_urls={"gemini": upstream_url + "/team-a/gemini"}
    ) as (_, gw, built):
        scope = {"type": "http", "http_version": "1.1", "method": "GET", "scheme": "http", "root_path": "",
                 "path": raw_path.decode(), "raw_path": raw_path, "query_string": b"key=AIza-secret",
                 "headers": [(b"helicone-auth", b"Bearer good-key")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080)}
        status, _, answer = await asgi_request(gw.handle, scope, [b""])
    assert status == 400 and json.loads(answer)["error"]["type"] == "helicone_route_error", answer
    assert "'..'" in json.loads(answer)["error"]["message"]
    assert fake.state.received == [] and [ev.status for ev in built] == [400]


async def test_bad_helicone_header_is_a_400(gateway):
    client, _, _ = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer good-key", "Helicone-Request-Id": "x"})
    assert r.status_code == 400 and "UUID" in r.json()["error"]["message"]


async def test_a_property_name_the_log_store_would_refuse_is_a_400(gateway):
    """The log store keeps property names of at most 256 characters (events.validate): a longer
    Helicone-Property-<name> was proxied and answered 200, and its log then refused by ingest (dead-lettered: the
    request never showed). Now it is a 400 naming the limit, like any other header the log cannot take."""
    client, fake, built = gateway
    auth = {"Helicone-Auth": "Bearer good-key"}
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**auth, "Helicone-Property-" + "k" * 257: "v"})
    assert r.status_code == 400 and "longer than 256 characters" in r.json()["error"]["message"], r.text
    assert fake.state.received == []
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**auth, "Helicone-Property-" + "K" * 256: "v"})
    assert r.status_code == 200 and dict(built[-1].properties) == {"k" * 256: "v"}
    for ev in built:  # every log the gateway built is one the store keeps
        events.validate(ev)


async def test_every_gateway_answer_carries_a_helicone_id(gateway):
    client, _, _ = gateway
    answers = [
        await client.post("/v1/chat/completions", json=CHAT),  # 401 missing
        await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer nope"}),  # 401 invalid
        await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Basic x"}),  # 400 header
        await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer good-key"}),  # 200
    ]
    assert [r.status_code for r in answers] == [401, 401, 400, 200]
    ids = [r.headers["helicone-id"] for r in answers]
    assert len(set(ids)) == 4


async def test_utf8_header_values_are_logged_and_forwarded_as_sent(gateway):
    client, fake, built = gateway
    user = "Zoë 東京 🚀"
    r = await client.post("/v1/chat/completions", json=CHAT, headers=[
        ("Helicone-Auth", "Bearer good-key"), ("Helicone-User-Id", user.encode()),
        ("Helicone-Property-City", "Zürich".encode()), ("X-Custom", "naïve".encode())])
    assert r.status_code == 200
    assert built[0].user_id == user and dict(built[0].properties) == {"city": "Zürich"}
    assert fake.state.received[-1]["headers"]["x-custom"].encode("latin-1") == "naïve".encode()
    bad = await client.post("/v1/chat/completions", json=CHAT, headers=[
        ("Helicone-Auth", "Bearer good-key"), ("Helicone-User-Id", b"\xff\xfe")])
    assert bad.status_code == 400 and "helicone-user-id" in bad.json()["error"]["message"]
    assert "UTF-8" in bad.json()["error"]["message"] and len(built) == 1


async def test_date_and_server_headers_are_never_duplicated(tmp_path):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url) as (_, _built):
        app = create_app(GatewaySettings(data_dir=tmp_path / "gw", _env_file=None, openai_url=upstream_url,
                                         kafka_bootstrap="127.0.0.1:1"))
        app.state.gateway.keys = StubKeys()
        async with serve(app, lifespan="on") as gateway_url, httpx.AsyncClient() as http:
            r = await http.post(gateway_url + "/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer good-key"})
    assert r.status_code == 200
    names = [name.lower() for name, _ in r.headers.raw]
    assert names.count(b"date") == 1 and names.count(b"server") <= 1


async def test_gzip_bytes_pass_through_unchanged_and_are_decoded_for_the_log(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer good-key", "Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip"
    assert r.json()["usage"]["completion_tokens"] == 6  # httpx decoded the provider's gzip bytes
    assert built[0].usage.completion_tokens == 6 and json.loads(built[0].inline.response_body)["object"] == "chat.completion"


async def test_ops_endpoints(gateway):
    client, _, _ = gateway
    assert (await client.get("/healthz")).json()["status"] == "ok"
    ready = await client.get("/readyz")
    # no broker and no Postgres here: both optional, so the gateway stays ready and says so
    assert ready.status_code == 200 and ready.json() == {"ready": True, "checks": {
        "http_client": {"ok": True, "required": True}, "key_store": {"ok": True, "required": True},
        "kafka": {"ok": False, "required": False}, "postgres": {"ok": False, "required": False}}}
    assert "helicone_gateway_requests_total" in (await client.get("/metrics")).text



@pytest.mark.parametrize("region", ["eu-west-1", ""])
async def test_every_answer_names_the_gateways_region_when_one_is_set_and_so_does_the_log(tmp_path, region):
    fake = create_fake_upstream()
    auth = {"Helicone-Auth": "Bearer good-key"}
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, openai_url=upstream_url, anthropic_url="http://127.0.0.1:1", region=region,
        max_header_count=12, max_request_bytes=4096,
    ) as (client, built):
        post = client.post
        answers = {  # proxied ones, and every kind of answer the gateway gives itself
            "200": await post("/v1/chat/completions", json=CHAT, headers=auth),
            "200 stream": await post("/v1/chat/completions", json=dict(CHAT, stream=True), headers=auth),
            "500 from the provider": await post("/v1/chat/completions", json=dict(CHAT, model="fail-500"), headers=auth),
            "401": await post("/v1/chat/completions", json=CHAT),
            "503": await post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": "Bearer down"}),
            "400": await post("/v1/chat/completions", json=CHAT, headers={**auth, "Helicone-Request-Id": "x"}),
            "431": await post("/v1/chat/completions", json=CHAT, headers={f"x-h{i}": "v" for i in range(12)}),
            "413": await post("/v1/chat/completions", content=b"x" * 5000, headers=auth),
            "403": await post("/v1/chat/completions", json=CHAT, headers={**auth, "Helicone-Target-URL": "http://127.0.0.1:9"}),
            "502": await post("/v1/messages", json=CHAT, headers=auth),  # the provider cannot be reached
        }
    assert {name: r.status_code for name, r in answers.items()} == {name: int(name[:3]) for name in answers}
    for name, r in answers.items():
        assert r.headers.get_list("helicone-region") == ([region] if region else []), name
    # what was logged (proxied, 413, 403, 502) names the region too
    assert sorted(ev.status for ev in built) == [200, 200, 403, 413, 500, 502]
    assert {ev.region for ev in built} == {region}


async def test_a_lone_surrogate_in_the_bodys_user_still_logs_the_request(tmp_path):
    """JSON may escape a lone surrogate ("\\udfff"), which is no Unicode text: the request goes as sent, and is logged
    with such a user (or model) written as '?' (as the async log writes it), never dropped for a log event that cannot
    be encoded."""
    auth = {"Helicone-Auth": "Bearer good-key"}
    fake = create_fake_upstream()
    body = b'{"model": "gpt-4o-mini", "user": "u\\udfff", "messages": [{"role": "user", "content": "hi"}]}'
    async with serve(fake) as upstream_url, started_gateway(tmp_path, openai_url=upstream_url) as (client, built):
        r = await client.post("/v1/chat/completions", content=body, headers={**auth, "content-type": "application/json"})
    assert r.status_code == 200
    assert len(built) == 1, "the request was not logged"
    assert built[0].user_id == "u?" and built[0].SerializeToString()
