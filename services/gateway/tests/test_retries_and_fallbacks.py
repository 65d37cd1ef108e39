"""Helicone-Retry-* and Helicone-Fallbacks through the in-process gateway, against fake providers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from services.gateway.tests.test_proxy import CHAT, StubKeys, host_port
from services.gateway.tests.test_proxy import target_sockets as _loopback_only  # noqa: F401 (autouse: loopback only)
from services.gateway.tests.test_upstream_faults import RawProvider
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.gateway import in_process_gateway
from tests.support.inloop import serve
from tests.support.net import free_port

AUTH = {"Helicone-Auth": "Bearer good-key", "Authorization": "Bearer sk-primary"}
# fast retries: the waits are milliseconds so the tests measure behaviour, not the defaults
FAST = {"Helicone-Retry-Enabled": "true", "Helicone-Retry-Num": "3", "Helicone-Retry-Min-Timeout": "5",
        "Helicone-Retry-Max-Timeout": "20"}
FALL_ON_ERRORS = [429, {"from": 500, "to": 599}]


def sample(gw, name, **labels) -> float:
    return gw.metrics.registry.get_sample_value(name, labels) or 0.0


def tries(ev) -> list[tuple]:
    return [(a.target_url, a.status, a.fallback_index, a.retry) for a in ev.attempts]


@contextlib.asynccontextmanager
async def two_providers(tmp_path, allow=(), **settings):
    """(client, gateway, built events, primary fake, its URL, backup fake, its URL): the primary is the
    configured OpenAI URL, the backup a loopback Target-URL host the gateway's allowlist opens (with `allow`)."""
    primary, backup = create_fake_upstream(), create_fake_upstream()
    async with serve(primary) as primary_url, serve(backup) as backup_url:
        async with in_process_gateway(tmp_path, StubKeys(), openai_url=primary_url, anthropic_url=primary_url,
                                      target_url_allowlist=[host_port(backup_url), *allow], **settings) as (client, gw, built):
            yield client, gw, built, primary, primary_url, backup, backup_url


async def test_a_retry_succeeds_after_503s_and_every_try_is_logged(tmp_path):
    async with two_providers(tmp_path) as (client, gw, built, primary, primary_url, _, _):
        primary.state.fail_next = [503, 503]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, **FAST})
        sent = len(primary.state.received)
        plain = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream model"
    assert "helicone-fallback-index" not in r.headers  # no Helicone-Fallbacks, no index
    assert sent == 3
    ev = built[0]
    assert tries(ev) == [(primary_url, 503, 0, 0), (primary_url, 503, 0, 1), (primary_url, 200, 0, 2)]
    assert ev.status == 200 and ev.fallback_index == 0 and all(a.provider == "openai" for a in ev.attempts)
    assert all(a.latency_ms >= 0 for a in ev.attempts) and ev.usage.known
    assert sample(gw, "helicone_gateway_retry_attempts_total", provider="openai", cause="5xx") == 2
    # a request without the headers has no attempts
    assert plain.status_code == 200 and len(built[1].attempts) == 0


async def test_retries_give_up_after_num_and_answer_with_the_providers_last_answer(tmp_path):
    async with two_providers(tmp_path) as (client, _gw, built, primary, primary_url, _, _):
        primary.state.fail_next = [503] * 5
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, **FAST, "Helicone-Retry-Num": "2"})
    assert r.status_code == 503 and r.json()["error"]["message"] == "planned failure 503"
    assert len(primary.state.received) == 3  # the first try and 2 retries
    assert [a.retry for a in built[0].attempts] == [0, 1, 2] and built[0].status == 503


async def test_retry_after_is_honoured_and_capped_by_the_max_timeout(tmp_path):
    async with two_providers(tmp_path) as (client, _gw, built, primary, _, _, _):
        headers = {**AUTH, "Helicone-Retry-Enabled": "true", "Helicone-Retry-Min-Timeout": "1"}
        primary.state.fail_next = [(429, {"retry-after": "1"})]
        t0 = time.perf_counter()
        honoured = await client.post("/v1/chat/completions", json=CHAT, headers={**headers, "Helicone-Retry-Max-Timeout": "5000"})
        waited = time.perf_counter() - t0
        primary.state.fail_next = [(429, {"retry-after": "30"})]
        t0 = time.perf_counter()
        capped = await client.post("/v1/chat/completions", json=CHAT, headers={**headers, "Helicone-Retry-Max-Timeout": "200"})
        capped_wait = time.perf_counter() - t0
    assert honoured.status_code == 200 and capped.status_code == 200
    assert waited >= 1.0  # Retry-After: 1, though the backoff alone would have waited ~1 ms
    assert 0.2 <= capped_wait < 5  # 30 s asked, 200 ms allowed
    assert [a.status for a in built[0].attempts] == [429, 200]


async def test_connection_failures_are_retried_then_answered_with_a_502(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with in_process_gateway(tmp_path, StubKeys(), openai_url=closed) as (client, _gw, built):
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, **FAST, "Helicone-Retry-Num": "2"})
    assert r.status_code == 502
    ev = built[0]
    assert [(a.status, a.retry) for a in ev.attempts] == [(0, 0), (0, 1), (0, 2)]
    assert all(a.error.startswith("ClientConnectorError") for a in ev.attempts) and ev.status == 502


async def test_no_retry_once_the_answer_has_started_streaming(tmp_path):
    async with two_providers(tmp_path) as (_client, gw, built, primary, _, _, _):
        body = dict(CHAT, model="break-stream", stream=True)
        sent = await call(gw, {**AUTH, **FAST}, body)
    assert sent[0]["status"] == 200
    text = b"".join(m.get("body", b"") for m in sent[1:])
    assert b'"content": "Hello"' in text and b"[DONE]" not in text
    assert all(m.get("more_body") for m in sent[1:])  # the answer was cut short, never completed
    assert len(primary.state.received) == 1  # the first byte had gone to the caller: never sent again
    assert [a.status for a in built[0].attempts] == [200]
    assert built[0].error == "provider stream broke before the response completed"


@pytest.mark.parametrize("failure", [500, 429])
async def test_fallback_to_the_next_target_with_its_own_key_and_body(tmp_path, failure):
    async with two_providers(tmp_path) as (client, gw, built, primary, primary_url, backup, backup_url):
        primary.state.fail_next = [failure]
        fallbacks = [
            {"onCodes": FALL_ON_ERRORS},  # the request's own destination: the configured OpenAI URL
            {"target-url": backup_url, "headers": {"Authorization": "Bearer sk-backup"}, "onCodes": [],
             "bodyKeyOverride": {"model": "gpt-4o-mini", "temperature": 0}},
        ]
        r = await client.post("/v1/chat/completions", json=dict(CHAT, model="gpt-4o"),
                              headers={**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1"
    [first] = primary.state.received
    [second] = backup.state.received
    assert first["headers"]["authorization"] == "Bearer sk-primary" and first["body"]["model"] == "gpt-4o"
    assert second["headers"]["authorization"] == "Bearer sk-backup"
    assert second["body"] == dict(CHAT, model="gpt-4o-mini", temperature=0)
    ev = built[0]
    assert ev.fallback_index == 1 and ev.target_url == backup_url and ev.model == "gpt-4o-mini"
    assert json.loads(ev.inline.request_body) == second["body"]  # the body the answering target got
    assert tries(ev) == [(primary_url, failure, 0, 0), (backup_url, 200, 1, 0)]
    assert "sk-backup" not in str(ev) and "sk-primary" not in str(ev)  # provider keys are never logged
    assert sample(gw, "helicone_gateway_fallbacks_total", provider="openai") == 1


async def test_retries_apply_to_each_target_before_falling_back(tmp_path):
    async with two_providers(tmp_path) as (client, _gw, built, primary, primary_url, backup, backup_url):
        primary.state.fail_next = [503, 503]
        backup.state.fail_next = [503]
        fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"target-url": backup_url}]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={
            **AUTH, **FAST, "Helicone-Retry-Num": "1", "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1"
    assert tries(built[0]) == [(primary_url, 503, 0, 0), (primary_url, 503, 0, 1), (backup_url, 503, 1, 0),
                               (backup_url, 200, 1, 1)]


async def test_stream_usage_is_asked_only_of_the_targets_whose_api_takes_it(tmp_path):
    """Helicone-Stream-Usage adds stream_options where the target's provider takes it: a fallback to
    Mistral (which refuses it with a 422) gets the body as sent, an OpenAI one gets it."""
    async with two_providers(tmp_path) as (client, _gw, built, primary, _, backup, backup_url):
        body = dict(CHAT, stream=True)
        headers = {**AUTH, "Helicone-Stream-Usage": "true"}
        primary.state.fail_next = [500]
        to_mistral = [{"onCodes": FALL_ON_ERRORS}, {"provider": "mistral", "target-url": backup_url}]
        r = await client.post("/v1/chat/completions", json=body, headers={**headers, "Helicone-Fallbacks": json.dumps(to_mistral)})
        assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1"
        assert primary.state.received[-1]["body"]["stream_options"] == {"include_usage": True}
        assert backup.state.received[-1]["body"] == body
        backup.state.fail_next = [500]
        to_openai = [{"provider": "mistral", "target-url": backup_url, "onCodes": FALL_ON_ERRORS},
                     {"bodyKeyOverride": {"model": "gpt-4o"}}]
        r = await client.post("/v1/chat/completions", json=body, headers={**headers, "Helicone-Fallbacks": json.dumps(to_openai)})
        assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1"
        assert backup.state.received[-1]["body"] == body
        assert primary.state.received[-1]["body"] == dict(body, model="gpt-4o", stream_options={"include_usage": True})
    assert [ev.provider for ev in built] == ["mistral", "openai"] and built[1].usage.known


async def test_a_status_outside_on_codes_is_answered_from_that_target(tmp_path):
    async with two_providers(tmp_path) as (client, _gw, built, primary, _, backup, backup_url):
        primary.state.fail_next = [400]
        fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"target-url": backup_url}]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 400 and r.headers["helicone-fallback-index"] == "0"
    assert backup.state.received == [] and built[0].fallback_index == 0


async def test_a_connection_failure_falls_back_as_a_502(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    async with two_providers(tmp_path, allow=[host_port(closed)]) as (client, _gw, built, _, _, backup, backup_url):
        fallbacks = [{"target-url": closed, "onCodes": [502]}, {"target-url": backup_url}]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1"
    assert [(a.status, a.fallback_index) for a in built[0].attempts] == [(0, 0), (200, 1)]


async def test_fallback_targets_pass_the_egress_checks_before_anything_is_sent(tmp_path, request):
    target_sockets = request.getfixturevalue("_loopback_only")  # non-loopback sockets the gateway tried
    async with two_providers(tmp_path, allow=["*"]) as (client, _gw, built, primary, _, _, _):
        refused = f"http://127.0.0.1:{free_port()}"  # loopback: any host is open, but not these addresses
        fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"target-url": refused}]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)})
        metadata = [{"onCodes": FALL_ON_ERRORS}, {"target-url": "http://169.254.169.254"}]
        r2 = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Fallbacks": json.dumps(metadata)})
    assert r.status_code == 403 and r2.status_code == 403
    assert r.json()["error"]["message"].startswith('Helicone-Fallbacks[1]."target-url" 127.0.0.1:')
    assert "is refused: it is a loopback address" in r.json()["error"]["message"]
    assert "is refused: it is a cloud metadata address" in r2.json()["error"]["message"]
    assert primary.state.received == [] and target_sockets == []
    assert built[0].status == 403


async def test_a_body_key_override_needs_a_json_object_body(tmp_path):
    async with two_providers(tmp_path) as (client, _gw, _built, primary, _, _, backup_url):
        fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"target-url": backup_url, "bodyKeyOverride": {"model": "x"}}]
        r = await client.post("/v1/chat/completions", content=b"plain text",
                              headers={**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 400 and "bodyKeyOverride" in r.json()["error"]["message"]
    assert primary.state.received == []


async def test_a_bad_retry_header_is_a_400_before_anything_is_sent(tmp_path):
    async with two_providers(tmp_path) as (client, _gw, _built, primary, _, _, _):
        r = await client.post("/v1/chat/completions", json=CHAT,
                              headers={**AUTH, "Helicone-Retry-Enabled": "true", "Helicone-Retry-Num": "many"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error"
    assert "Helicone-Retry-Num must be a whole number of retries from 0 to 10" in r.json()["error"]["message"]
    assert primary.state.received == []


async def test_a_caller_that_leaves_during_the_backoff_cancels_it(tmp_path):
    async with two_providers(tmp_path) as (_client, gw, built, primary, _, _, _):
        primary.state.fail_next = [503] * 5
        headers = {**AUTH, "Helicone-Retry-Enabled": "true", "Helicone-Retry-Min-Timeout": "30000",
                   "Helicone-Retry-Max-Timeout": "30000"}
        t0 = time.perf_counter()
        sent = await call(gw, headers, CHAT, leave_after=0.5)  # the caller gives up while the gateway waits 30 s
        elapsed = time.perf_counter() - t0
    assert elapsed < 5 and sent == []  # nothing was answered: the caller is gone
    assert len(primary.state.received) == 1  # no retry was sent
    assert built[0].status == 499 and [a.status for a in built[0].attempts] == [503]


async def test_a_caller_that_leaves_while_a_try_is_awaited_logs_that_try_as_cancelled(tmp_path):
    """The try in flight when the caller left reached the provider (and may be billed): it is one of the
    logged attempts, with no status (none came back) and an error saying it was cancelled."""
    async with RawProvider(lambda c, r: "hang") as silent:
        silent_url = f"http://127.0.0.1:{silent.port}"
        async with two_providers(tmp_path, allow=[host_port(silent_url)]) as (_client, gw, built, primary, primary_url, _, _):
            primary.state.fail_next = [503]
            fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"target-url": silent_url}]
            sent = await call(gw, {**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)}, CHAT, leave_after=0.5)
            await asyncio.wait_for(silent.closed_by_peer.wait(), 3)  # the hung request was cancelled
    assert sent == [] and silent.requests == [(1, 1)]
    ev = built[0]
    assert ev.status == 499 and ev.fallback_index == 1 and ev.target_url == silent_url
    assert tries(ev) == [(primary_url, 503, 0, 0), (silent_url, 0, 1, 0)]
    assert ev.attempts[1].error == "client disconnected before the provider answered; upstream request cancelled"
    assert ev.attempts[1].latency_ms >= 400


async def call(gw, headers: dict, body: dict, leave_after: float | None = None) -> list[dict]:
    """One request straight into Gateway.handle (no HTTP client in between, so a cut-short answer
    is seen as sent); the caller disconnects `leave_after` seconds after sending, or once answered."""
    raw = json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in
                                              {**headers, "content-type": "application/json"}.items()]}
    messages = [{"type": "http.request", "body": raw, "more_body": False}]
    answered = asyncio.Event()

    async def receive():
        if messages:
            return messages.pop(0)
        if leave_after is not None:
            await asyncio.sleep(leave_after)
        else:
            await answered.wait()
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)

    try:
        await asyncio.wait_for(gw.handle(scope, receive, send), 20)
    finally:
        answered.set()
    return sent


async def test_requests_without_the_headers_never_build_a_plan(tmp_path):
    async with two_providers(tmp_path) as (client, gw, built, primary, _, _, _):
        def no_plan(*_args, **_kw):
            raise AssertionError("a plan was built for a request without Helicone-Retry-* or Helicone-Fallbacks")

        gw._plan = no_plan
        primary.state.fail_next = [503]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Retry-Enabled": "false"})
    assert r.status_code == 503 and len(primary.state.received) == 1  # sent once, answered as the provider answered
    assert len(built[0].attempts) == 0 and "helicone-fallback-index" not in r.headers


async def test_a_fallback_to_a_provider_without_a_base_url_is_a_400_before_anything_is_sent(tmp_path):
    """Azure has no default base URL: a Helicone-Fallbacks entry naming it without a target-url cannot
    be sent anywhere; that is the header's fault (a 400 naming the entry), not a provider's 502."""
    async with two_providers(tmp_path) as (client, _gw, built, primary, _, _, _):
        primary.state.fail_next = [503]
        fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"provider": "azure"}]
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_route_error"
    assert r.json()["error"]["message"].startswith("Helicone-Fallbacks[1]: No base URL for provider 'azure'")
    assert primary.state.received == [] and built[0].status == 400


@pytest.mark.parametrize("retry_after", ["Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
                                         "Mon, 01 Jan 2024 00:00:00 +9999999999999999999999", "\u00b2"])
async def test_an_unreadable_retry_after_leaves_the_backoff_to_decide(tmp_path, retry_after):
    """A Retry-After the gateway cannot read (a date out of every range, a digit that is no number)
    is ignored, as the README says: the request is retried after the backoff, never answered with a 500."""
    async with two_providers(tmp_path) as (client, _gw, built, primary, _, _, _):
        primary.state.fail_next = [(429, {"retry-after": retry_after.encode().decode("latin-1")})]  # sent as UTF-8 bytes
        r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, **FAST})
    assert r.status_code == 200 and len(primary.state.received) == 2
    assert [a.status for a in built[0].attempts] == [429, 200]
