"""Rate limits (Helicone-RateLimit-Policy): grammar, 429s and their headers, buckets per org/policy/
segment, u=cents charged after the answer, two replicas on one Redis, and stores that are down."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from helicone_gateway.headers import HeaderError, HeliconeHeaders
from helicone_gateway.ratelimit import (
    CHARGE,
    CHECK,
    TAKE,
    MemoryRateLimitStore,
    RedisRateLimitStore,
    bucket_key,
    parse_policy,
    rate_limit_request,
)

from services.gateway.tests import test_cache
from services.gateway.tests.test_cache import AUTH, OTHER_ORG, black_hole, cache_gateway, sample
from services.gateway.tests.test_proxy import CHAT, ORG
from tests.support.net import free_port

upstream = test_cache.upstream  # the fake provider on a loopback port (a fixture)

POLICY = "Helicone-RateLimit-Policy"


def run_id() -> str:
    """A fresh segment value: each test run gets buckets of its own on the shared Redis."""
    return uuid.uuid4().hex


def limited(policy: str, **extra) -> dict:
    return {**AUTH, POLICY: policy, **extra}


# ---- grammar ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("100;w=60", (100, 60, "request", "", "100;w=60")),
    (" 1000;w=3600 ", (1000, 3600, "request", "", "1000;w=3600")),
    ("500;w=86400;s=user", (500, 86400, "request", "user", "500;w=86400;s=user")),
    ("10;w=900;u=cents", (10, 900, "cents", "", "10;w=900;u=cents")),
    ("0.5;w=60;u=cents", (0.5, 60, "cents", "", "0.5;w=60;u=cents")),
    ("300;W=1800;U=Request;S=Feature", (300, 1800, "request", "feature", "300;w=1800;s=feature")),
    ("007;w=60;u=request;s=team-a_1", (7, 60, "request", "team-a_1", "7;w=60;s=team-a_1")),
    ("5;w=31536000", (5, 31536000, "request", "", "5;w=31536000")),
])
def test_policy_grammar(value, expected):
    p = parse_policy(value)
    assert (p.quota, p.window, p.unit, p.segment, p.text) == expected


@pytest.mark.parametrize(("value", "says"), [
    ("", "<quota>;w=<seconds>"),
    ("100", "<quota>;w=<seconds>"),
    ("100;w=60s", "<quota>;w=<seconds>"),
    ("w=60;100", "<quota>;w=<seconds>"),
    ("100;s=user;w=60", "<quota>;w=<seconds>"),  # Helicone's order: quota, w, u, s
    ("-1;w=60", "<quota>;w=<seconds>"),
    ("100;w=60;s=a:b", "<quota>;w=<seconds>"),
    ("0;w=60", "more than 0"),
    ("0.0;w=60;u=cents", "more than 0"),
    ("1.5;w=60", "whole number"),
    ("100;w=59", "from 60 to 31536000 seconds"),
    ("100;w=31536001", "from 60 to 31536000 seconds"),
    ("100;w=60;u=tokens", "'request' or 'cents'"),
    ("9999999999999;w=60", "at most 1000000000000"),
    # ASCII only, as every other Helicone-* number: no Arabic-Indic or fullwidth digits, no Kelvin sign for k
    ("\u0661\u0660\u0660;w=60", "<quota>;w=<seconds>"),
    ("100;w=\uff16\uff10", "<quota>;w=<seconds>"),
    ("100;w=60;s=\u212aey", "<quota>;w=<seconds>"),
])
def test_bad_policies_name_the_header_and_the_form(value, says):
    with pytest.raises(HeaderError) as err:
        parse_policy(value)
    assert POLICY in str(err.value) and says in str(err.value)


def test_segments_come_from_the_user_id_or_the_named_property():
    hh = HeliconeHeaders(user_id="u-1", properties={"feature": "chat"})
    assert rate_limit_request("5;w=60;s=user", hh).segment_value == "u-1"
    assert rate_limit_request("5;w=60;s=Feature", hh).segment_value == "chat"
    assert rate_limit_request("5;w=60", hh).segment_value == ""
    with pytest.raises(HeaderError, match="s=user needs a Helicone-User-Id"):
        rate_limit_request("5;w=60;s=user", HeliconeHeaders())
    with pytest.raises(HeaderError, match="s=team needs a Helicone-Property-team"):
        rate_limit_request("5;w=60;s=team", hh)


def test_buckets_are_per_org_policy_and_segment_value():
    hh = HeliconeHeaders(user_id="u-1", properties={"team": "u-1"})
    user, team = rate_limit_request("5;w=60;s=user", hh), rate_limit_request("5;w=60;s=team", hh)
    keys = {bucket_key(ORG, user), bucket_key(OTHER_ORG, user), bucket_key(ORG, team),
            bucket_key(ORG, rate_limit_request("6;w=60;s=user", hh)),
            bucket_key(ORG, rate_limit_request("5;w=60;s=user", HeliconeHeaders(user_id="u-2")))}
    assert len(keys) == 5
    assert bucket_key(ORG, user) == bucket_key(ORG, rate_limit_request("5;W=60;S=USER", hh))  # same policy, same bucket


# ---- stores -------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        s = MemoryRateLimitStore()
    else:
        s = RedisRateLimitStore(request.getfixturevalue("redis_url"), 2.0)
    yield s
    await s.close()


async def test_token_bucket_bursts_to_the_quota_then_refills_at_quota_per_window(store):
    key = f"test:{run_id()}"
    # 60 per 60 s: a full bucket of 60, then one more per second
    results = [await store.take(key, 60, 60, 1, TAKE) for _ in range(61)]
    assert [a for a, _ in results] == [True] * 60 + [False]
    assert results[0][1] == pytest.approx(59, abs=0.1) and results[-1][1] < 1
    await asyncio.sleep(1.1)
    allowed, left = await store.take(key, 60, 60, 1, TAKE)
    assert allowed and left < 1
    assert (await store.take(key, 60, 60, 1, TAKE))[0] is False


async def test_cents_go_negative_and_refuse_until_refilled(store):
    key = f"test:{run_id()}"
    assert await store.take(key, 1, 60, 0, CHECK) == (True, 1.0)
    allowed, left = await store.take(key, 1, 60, 3, CHARGE)  # the answer cost more than was left
    assert allowed and left == pytest.approx(-2, abs=0.01)
    assert (await store.take(key, 1, 60, 0, CHECK))[0] is False
    # overspent a million times over on a year's window: still recorded (the Redis key's expiry is capped)
    year = f"test:{run_id()}"
    assert (await store.take(year, 0.0001, 31536000, 100, CHARGE))[0]
    assert (await store.take(year, 0.0001, 31536000, 0, CHECK)) == (False, pytest.approx(-99.9999))


async def test_redis_reloads_the_script_after_the_server_forgot_it(redis_url):
    store = RedisRateLimitStore(redis_url, 2.0)
    try:
        key = f"test:{run_id()}"
        assert (await store.take(key, 2, 60, 1, TAKE))[0]
        await store.client.script_flush()  # as after a Redis restart: EVALSHA answers NOSCRIPT
        assert await store.take(key, 2, 60, 1, TAKE) == (True, pytest.approx(0, abs=0.01))
        assert (await store.take(key, 2, 60, 1, TAKE))[0] is False
        ttl = await store.client.pttl(key)
        assert 0 < ttl <= 61_000  # gone once the bucket would be full again
    finally:
        await store.close()


async def test_memory_store_forgets_the_least_recently_charged_bucket_past_its_bound():
    store = MemoryRateLimitStore(max_buckets=2)
    for key in ("a", "b", "c"):
        await store.take(key, 1, 60, 1, TAKE)
    assert len(store) == 2
    assert (await store.take("a", 1, 60, 1, TAKE))[0]  # forgotten: full again
    assert not (await store.take("c", 1, 60, 1, TAKE))[0]



async def test_a_full_memory_store_forgets_a_refilled_bucket_before_a_spent_one():
    store = MemoryRateLimitStore(max_buckets=3)
    assert (await store.take("spent", 1, 60, 1, TAKE))[0]  # empty for the next 60 s
    assert (await store.take("respent", 1000, 60, 1, TAKE))[0]  # full again within 0.06 s...
    assert (await store.take("refills", 1000, 60, 1, TAKE))[0]  # and this one too
    await asyncio.sleep(0.1)
    assert all([(await store.take("respent", 1000, 60, 1, TAKE))[0] for _ in range(1000)])  # ...but spent since
    assert (await store.take("new", 1, 60, 1, TAKE))[0]
    assert len(store) == 3
    assert not (await store.take("spent", 1, 60, 1, TAKE))[0]  # the least recently used, but still spent: kept
    assert not (await store.take("respent", 1000, 60, 1, TAKE))[0]


async def test_a_memory_store_keeps_every_bucket_in_its_refill_schedule_when_it_rebuilds_it():
    """The schedule is rebuilt once forgotten buckets' entries pile up; the bucket being created then
    must be in it, or it is never found refilled and a spent bucket is forgotten (reset) in its place."""
    store = MemoryRateLimitStore(max_buckets=3)
    assert (await store.take("spent", 1, 3600, 1, TAKE, "a"))[0]
    for i in range(1500):  # a flood of spent buckets: each new one forgets one, whose entry stays till due
        assert (await store.take(f"flood-{i}", 1, 3600, 1, TAKE, "b"))[0]
        assert set(store._buckets) <= {key for _, key in store._refills}, i


# ---- through the gateway ------------------------------------------------------------------


async def test_an_org_making_buckets_by_the_thousand_never_resets_another_orgs_bucket(tmp_path, upstream):
    """A full in-memory store never lets one org's new buckets push out another org's spent one (a reset to
    full, a way round the other org's quota): it forgets refilled buckets first, then the busiest org's."""
    url, _fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        gw.ratelimits.store = MemoryRateLimitStore(max_buckets=10)

        async def status(headers) -> int:
            return (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code

        assert [await status(limited("1;w=60")) for _ in range(2)] == [200, 429]
        other = {"Helicone-Auth": "Bearer other-key", POLICY: "1;w=60;s=user"}
        for i in range(25):  # distinct users: a new spent bucket each, 2.5 times the store's bound
            assert await status({**other, "Helicone-User-Id": f"user-{i}"}) == 200
        assert len(gw.ratelimits.store) == 10
        assert await status(limited("1;w=60")) == 429  # still spent
        # the busiest org paid for the room: its own least recently used buckets were forgotten
        assert await status({**other, "Helicone-User-Id": "user-24"}) == 429
        assert await status({**other, "Helicone-User-Id": "user-0"}) == 200


async def test_quota_then_429_with_helicone_headers_and_a_logged_429(tmp_path, upstream):
    url, fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        answers = [await client.post("/v1/chat/completions", json=CHAT, headers=limited("3;w=60")) for _ in range(4)]
        assert [r.status_code for r in answers] == [200, 200, 200, 429]
        assert len(fake.state.received) == 3
        assert all(POLICY.lower() not in r["headers"] for r in fake.state.received)  # never forwarded
        for r, remaining in zip(answers, ("2", "1", "0", "0"), strict=True):
            assert r.headers["helicone-ratelimit-limit"] == "3"
            assert r.headers["helicone-ratelimit-remaining"] == remaining
            assert r.headers["helicone-ratelimit-policy"] == "3;w=60"
            assert 0 < int(r.headers["helicone-ratelimit-reset"]) <= 60
        refused = answers[-1]
        assert refused.json()["error"]["type"] == "helicone_rate_limited"
        assert "3;w=60" in refused.json()["error"]["message"] and POLICY in refused.json()["error"]["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # one request back after 60/3 s at most
        assert refused.headers["helicone-id"] == built[-1].request_id
        assert built[-1].status == 429 and "Rate limit" in built[-1].error and built[-1].inline.request_body
        assert [e.status for e in built] == [200, 200, 200, 429]
        assert sample(gw, "helicone_gateway_ratelimit_decisions_total", result="allowed") == 3
        assert sample(gw, "helicone_gateway_ratelimit_decisions_total", result="limited") == 1


async def test_bad_policy_or_missing_segment_header_is_a_400_naming_it(tmp_path, upstream):
    url, fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        bad = await client.post("/v1/chat/completions", json=CHAT, headers=limited("100;w=10"))
        no_user = await client.post("/v1/chat/completions", json=CHAT, headers=limited("100;w=60;s=user"))
        for r in (bad, no_user):
            assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error"
            assert POLICY in r.json()["error"]["message"]
        assert "from 60 to" in bad.json()["error"]["message"]
        assert "Helicone-User-Id" in no_user.json()["error"]["message"]
        assert not fake.state.received


@pytest.mark.parametrize("value", ["", "   "])
async def test_an_empty_policy_is_a_400_not_an_unlimited_request(tmp_path, upstream, value):
    """A policy header sent empty (e.g. from an unset variable) is refused, as a bad one is: never silently unlimited."""
    url, fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        r = await client.post("/v1/chat/completions", json=CHAT, headers=limited(value))
        assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_header_error"
        assert POLICY in r.json()["error"]["message"] and "<quota>;w=<seconds>" in r.json()["error"]["message"]
        assert not fake.state.received


async def test_users_properties_and_orgs_have_their_own_buckets(tmp_path, upstream):
    url, _fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        async def status(**headers) -> int:
            return (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status_code

        per_user = "1;w=60;s=user"
        assert await status(**limited(per_user, **{"Helicone-User-Id": "alice"})) == 200
        assert await status(**limited(per_user, **{"Helicone-User-Id": "alice"})) == 429
        assert await status(**limited(per_user, **{"Helicone-User-Id": "bob"})) == 200
        per_team = "1;w=60;s=team"
        assert await status(**limited(per_team, **{"Helicone-Property-Team": "a"})) == 200
        assert await status(**limited(per_team, **{"Helicone-Property-Team": "a"})) == 429
        assert await status(**limited(per_team, **{"Helicone-Property-Team": "b"})) == 200
        assert await status(**limited("1;w=60")) == 200
        assert await status(**limited("1;w=60")) == 429
        assert await status(**{"Helicone-Auth": "Bearer other-key", POLICY: "1;w=60"}) == 200  # another org
        assert await status(**limited("2;w=60")) == 200  # another policy


async def test_cache_hits_carry_the_headers_and_count_against_the_quota(tmp_path, upstream):
    url, fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        headers = limited("2;w=60", **{"Helicone-Cache-Enabled": "true"})
        first = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        await gw.cache.flush()
        hit = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        third = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert (first.headers["helicone-cache"], hit.headers["helicone-cache"]) == ("MISS", "HIT")
        assert hit.headers["helicone-ratelimit-remaining"] == "0" and hit.headers["helicone-ratelimit-limit"] == "2"
        assert third.status_code == 429 and len(fake.state.received) == 1


@pytest.mark.parametrize("where", ["memory", "redis"])
async def test_cents_are_charged_after_the_answer_from_the_logged_cost(tmp_path, upstream, where, request):
    url, _fake = upstream
    settings = {"redis_url": request.getfixturevalue("redis_url")} if where == "redis" else {}
    async with cache_gateway(tmp_path, url, **settings) as (client, gw, built):
        # a hundredth of a cent per minute: the first answer (~0.0004 cents) spends more than that
        headers = limited("0.0001;w=60;u=cents;s=run", **{"Helicone-Property-Run": run_id()})
        first = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert first.status_code == 200 and first.headers["helicone-ratelimit-policy"] == "0.0001;w=60;u=cents;s=run"
        assert first.headers["helicone-ratelimit-limit"] == "0.0001"
        await gw.ratelimits.flush()
        spent = built[0].cost_usd * 100
        assert spent > 0.0001
        req = rate_limit_request(headers[POLICY], HeliconeHeaders(properties={"run": headers["Helicone-Property-Run"]}))
        _, left = await gw.ratelimits.store.take(bucket_key(ORG, req), 0.0001, 60, 0, CHECK)
        assert left == pytest.approx(0.0001 - spent, abs=0.00001)
        second = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert second.status_code == 429 and second.headers["helicone-ratelimit-remaining"] == "0"
        assert built[-1].status == 429 and built[-1].cost_usd == 0


async def test_two_gateways_sharing_redis_never_exceed_the_quota(tmp_path, upstream, redis_url):
    url, fake = upstream
    quota, sent = 7, 40
    async with cache_gateway(tmp_path / "a", url, redis_url=redis_url) as (client_a, gw_a, _), \
            cache_gateway(tmp_path / "b", url, redis_url=redis_url) as (client_b, gw_b, _):
        assert isinstance(gw_a.ratelimits.store, RedisRateLimitStore)
        headers = limited(f"{quota};w=3600;s=run", **{"Helicone-Property-Run": run_id()})
        answers = await asyncio.gather(*(
            (client_a if i % 2 else client_b).post("/v1/chat/completions", json=CHAT, headers=headers)
            for i in range(sent)))
        statuses = [r.status_code for r in answers]
        assert statuses.count(200) == quota and statuses.count(429) == sent - quota
        assert len(fake.state.received) == quota
        assert sorted(r.headers["helicone-ratelimit-remaining"] for r in answers if r.status_code == 200) == \
            [str(i) for i in range(quota)]


async def test_requests_without_the_header_never_touch_the_store(tmp_path, upstream):
    url, _fake = upstream

    class Watched(MemoryRateLimitStore):
        calls = 0

        async def take(self, *args):
            Watched.calls += 1
            return await super().take(*args)

    async with cache_gateway(tmp_path, url) as (client, gw, built):
        gw.ratelimits.store = Watched()
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200
        r = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert not any(name.startswith("helicone-ratelimit") for name in r.headers)
        assert Watched.calls == 0
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=limited("5;w=60"))).status_code == 200
        assert Watched.calls == 1  # the spy does see a request that names a policy


@pytest.mark.parametrize("store_state", ["refused", "silent"])
async def test_a_store_that_is_down_or_silent_fails_open_fast(tmp_path, upstream, store_state):
    url, fake = upstream
    timeout = 0.2
    with black_hole() as silent:
        redis_url = f"redis://127.0.0.1:{free_port()}/0" if store_state == "refused" else silent
        async with cache_gateway(tmp_path, url, redis_url=redis_url, cache_store_timeout=timeout) as (client, gw, built):
            await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)  # warm the upstream connection
            answers, elapsed = [], []
            for policy in ("1;w=60", "1;w=60", "0.0001;w=60;u=cents"):
                started = time.perf_counter()
                answers.append(await client.post("/v1/chat/completions", json=CHAT, headers=limited(policy)))
                elapsed.append(time.perf_counter() - started)
            await gw.ratelimits.flush()
            assert [r.status_code for r in answers] == [200, 200, 200]  # a quota of 1, yet nothing is refused
            assert answers[0].json()["choices"][0]["message"]["content"] == "Hello from the fake upstream model"
            assert answers[0].headers["helicone-ratelimit-policy"] == "1;w=60"
            assert "helicone-ratelimit-remaining" not in answers[0].headers  # unknown: the store did not answer
            assert max(elapsed) < timeout + 1.5  # one bounded check per request, nothing more
            assert sample(gw, "helicone_gateway_ratelimit_errors_total", op="check") == 3
            assert sample(gw, "helicone_gateway_ratelimit_errors_total", op="charge") == 1  # the cents one, after the answer
            assert sample(gw, "helicone_gateway_ratelimit_decisions_total", result="failed_open") == 3
            assert len(fake.state.received) == 4 and [e.status for e in built] == [200] * 4


async def test_gateway_errors_after_an_allowed_check_carry_the_headers_too(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # a closed loopback port: the provider cannot be reached
    async with cache_gateway(tmp_path, dead) as (client, gw, built):
        r = await client.post("/v1/chat/completions", json=CHAT, headers=limited("2;w=60"))
        assert r.status_code == 502 and r.headers["helicone-ratelimit-remaining"] == "1"
        assert r.headers["helicone-ratelimit-policy"] == "2;w=60" and built[-1].status == 502


async def test_requests_the_gateway_refuses_for_the_callers_own_error_spend_no_token(tmp_path, upstream):
    """A body Helicone-Fallbacks' bodyKeyOverride cannot merge into is a 400 before anything is sent: the
    caller fixes it and sends again, and that request is not refused for a token the 400 spent."""
    url, fake = upstream
    async with cache_gateway(tmp_path, url) as (client, gw, built):
        fallbacks = json.dumps([{"onCodes": [500]}, {"bodyKeyOverride": {"model": "gpt-4o-mini"}}])
        bad = await client.post("/v1/chat/completions", content=b"plain text",
                                headers=limited("1;w=60", **{"Helicone-Fallbacks": fallbacks}))
        assert bad.status_code == 400 and "bodyKeyOverride" in bad.json()["error"]["message"]
        good = await client.post("/v1/chat/completions", json=CHAT, headers=limited("1;w=60", **{"Helicone-Fallbacks": fallbacks}))
        assert good.status_code == 200 and good.headers["helicone-ratelimit-remaining"] == "0"
        assert len(fake.state.received) == 1 and [e.status for e in built] == [400, 200]


async def test_cents_are_charged_for_openai_streams_that_did_not_ask_for_usage(tmp_path, upstream):
    """An OpenAI stream carries its usage only when asked (stream_options.include_usage): under a u=cents
    policy the gateway asks for it, else the answer's cost is unknown, never charged, and the budget never spent."""
    url, fake = upstream
    async with cache_gateway(tmp_path, url, provider_urls={"mistral": url}) as (client, gw, built):
        headers = limited("0.0001;w=60;u=cents;s=run", **{"Helicone-Property-Run": run_id()})
        first = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers)
        assert first.status_code == 200 and "Hello" in first.text
        assert fake.state.received[-1]["body"]["stream_options"] == {"include_usage": True}
        await gw.ratelimits.flush()
        assert built[0].cost_known and built[0].cost_usd * 100 > 0.0001
        second = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers)
        assert second.status_code == 429 and len(fake.state.received) == 1
        # a u=request policy leaves the body as the caller sent it, and so does a u=cents one to another provider
        # (Mistral refuses stream_options with a 422)
        plain = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=limited("5;w=60"))
        assert plain.status_code == 200 and "stream_options" not in fake.state.received[-1]["body"]
        mistral = await client.post("/mistral/v1/chat/completions", json={**CHAT, "stream": True},
                                    headers=limited("1;w=60;u=cents"))
        assert mistral.status_code == 200 and fake.state.received[-1]["path"] == "/v1/chat/completions"
        assert "stream_options" not in fake.state.received[-1]["body"]
