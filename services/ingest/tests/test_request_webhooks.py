"""Per-request webhooks delivered by ingest after it wrote the batch: a real Postgres (the webhooks), chDB and the
local body store (the writes), receivers on 127.0.0.1; the address guard with a faked DNS and connections only."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid

import pytest
from aiohttp import web
from helicone_core import events
from helicone_core.analytics import ChdbStore
from helicone_core.bodies import LocalBodyStore
from helicone_core.metrics import ServiceMetrics
from helicone_core.request_webhooks import TABLE
from helicone_core.webhooks import SIGNATURE_HEADER, WebhookSender
from helicone_ingest.request_webhooks import MAX_BODY_BYTES, RequestWebhooks

from services.api.tests.test_alerts import Receiver, serving_hook
from services.ingest.tests.test_writer import ORG, OTHER_ORG, count, event, new_writer
from tests.support.fake_network import FakeResolver, Recorder


async def add_webhook(pool, org: str, destination: str, *, sample_rate=100, filters=None, include_data=True) -> str:
    """A webhook row as the api's POST /v1/webhooks stores it; returns its HMAC key."""
    key = "whsec_" + uuid.uuid4().hex
    await pool.execute(f"INSERT INTO {TABLE}(org_id, destination, hmac_key, sample_rate, property_filters, include_data) "
                       "VALUES ($1, $2, $3, $4, $5::jsonb, $6)", uuid.UUID(org), destination, key, sample_rate,
                       json.dumps(filters or {}), include_data)
    return key


@pytest.fixture
async def ingest(tmp_path, pg_pool):
    """(writer, webhooks, analytics, pool): a BatchWriter whose written events go to RequestWebhooks."""
    analytics = ChdbStore(tmp_path / "chdb", "helicone")
    await analytics.init_schema()
    bodies = LocalBodyStore(tmp_path / "bodies")
    await bodies.start()
    for org in (ORG, OTHER_ORG):
        await pg_pool.execute("INSERT INTO orgs(id, name) VALUES ($1, 'acme')", uuid.UUID(org))
    metrics = ServiceMetrics("ingest")
    sender = WebhookSender(allow_loopback=True, timeout=1, attempts=1)
    await sender.start()
    hooks = RequestWebhooks(metrics, sender, queue_size=100, ttl=60)
    hooks.attach(pg_pool)
    hooks.start()
    w = new_writer(analytics, bodies, pg_pool, metrics, webhooks=hooks)
    yield w, hooks, analytics, pg_pool
    await hooks.stop()
    await sender.close()
    await analytics.close()


@pytest.fixture
async def receiver():
    r = Receiver()
    async with serving_hook(r.handle) as url:
        r.url = url
        yield r


async def write(w, evs) -> None:
    good, bad = w.decode([events.encode(e) for e in evs])
    assert bad == []
    await w.write(good)


def delivered(hooks, result="delivered") -> float:
    return hooks.m_deliveries.labels(result)._value.get()


async def test_a_written_request_is_delivered_once_signed_with_the_hmac_key(ingest, receiver):
    w, hooks, analytics, pool = ingest
    key = await add_webhook(pool, ORG, receiver.url)
    ev = event(latency_ms=321)
    await write(w, [ev])
    await hooks.idle()
    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], hmac.new(key.encode(), body, hashlib.sha256).hexdigest())
    sent = json.loads(body)
    assert sent == {
        "request_id": ev.request_id, "user_id": "alice", "model": "gpt-4o-mini", "provider": "openai",
        "request_body": '{"model":"gpt-4o-mini"}', "response_body": '{"ok":true}',
        "metadata": {"status": 200, "cost": 4.05e-6, "promptTokens": 3, "completionTokens": 6, "totalTokens": 9,
                     "latencyMs": 321, "properties": {"env": "prod"}},
    }
    assert await count(analytics, ev.request_id) == 1 and delivered(hooks) == 1


async def test_sample_rate_zero_delivers_nothing_and_a_property_filter_selects(ingest, receiver):
    w, hooks, _, pool = ingest
    await add_webhook(pool, ORG, receiver.url + "?which=never", sample_rate=0)
    await add_webhook(pool, ORG, receiver.url + "?which=staging", filters={"env": "staging"})
    await add_webhook(pool, ORG, receiver.url + "?which=prod", filters={"env": "prod"})
    prod, staging, unset = event(), event(properties={"env": "staging"}), event(properties={})
    await write(w, [prod, staging, unset])
    await hooks.idle()
    assert sorted(b["request_id"] for b in receiver.bodies()) == sorted([prod.request_id, staging.request_id])
    by_id = {b["request_id"]: b["metadata"]["properties"]["env"] for b in receiver.bodies()}
    assert by_id == {prod.request_id: "prod", staging.request_id: "staging"}


async def test_include_data_false_leaves_the_bodies_out(ingest, receiver):
    w, hooks, _, pool = ingest
    await add_webhook(pool, ORG, receiver.url, include_data=False)
    await write(w, [event()])
    await hooks.idle()
    [sent] = receiver.bodies()
    assert "request_body" not in sent and "response_body" not in sent
    assert sent["metadata"]["totalTokens"] == 9


async def test_another_orgs_webhook_never_receives_this_orgs_requests(ingest, receiver):
    w, hooks, _, pool = ingest
    other = Receiver()
    async with serving_hook(other.handle) as other_url:
        await add_webhook(pool, OTHER_ORG, other_url)
        await add_webhook(pool, ORG, receiver.url)
        mine = event()
        await write(w, [mine])
        await hooks.idle()
    assert [b["request_id"] for b in receiver.bodies()] == [mine.request_id] and other.received == []


async def test_a_hanging_webhook_never_holds_ingest_writes(ingest):
    w, hooks, analytics, pool = ingest
    await hooks.stop()
    hooks.concurrency, hooks.sender.timeout = 1, 30  # one delivery at a time, and it hangs
    hooks.start()
    stuck, release = asyncio.Event(), asyncio.Event()

    async def hang(request):
        stuck.set()
        await asyncio.wait_for(release.wait(), 30)
        return web.Response()

    async with serving_hook(hang) as url:
        await add_webhook(pool, ORG, url)
        await write(w, [event()])  # the org's webhooks are read; its delivery hangs
        await asyncio.wait_for(stuck.wait(), 5)
        started = time.monotonic()
        batches = [[event() for _ in range(50)] for _ in range(4)]
        for batch in batches:
            await write(w, batch)
        elapsed = time.monotonic() - started
        release.set()
    assert elapsed < 5  # the writes queue their deliveries or drop them, never wait for them
    assert await count(analytics) == 201
    # of the 200 deliveries, the queue holds 100 and the task one more (waiting for the hanging one's slot)
    assert delivered(hooks, "dropped") == 200 - 100 - 1


async def test_orgs_without_webhooks_cost_no_queued_delivery_and_one_read_for_all(ingest, monkeypatch):
    """The usual org has no webhooks: its events, written faster than the webhooks are first read, never take a place
    in the delivery queue (150 events against a queue of 100 used to drop 34 deliveries that would never have been
    made, and queue 100 more), and one read a ttl serves every org (it was one per org: thousands of orgs, thousands
    of Postgres queries every ttl on the pool the metadata writes use)."""
    w, hooks, analytics, _ = ingest
    import helicone_ingest.request_webhooks as module

    reads = []
    real = module.all_webhooks

    async def counted(pool):
        reads.append(1)
        await asyncio.sleep(0.2)  # a slow Postgres: the whole batch is offered before the answer
        return await real(pool)

    monkeypatch.setattr(module, "all_webhooks", counted)
    await write(w, [event() for _ in range(50)] + [event(org_id=OTHER_ORG) for _ in range(50)])
    assert hooks._queue.qsize() == 0
    await hooks.idle()
    await write(w, [event() for _ in range(50)] + [event(org_id=OTHER_ORG) for _ in range(50)])
    await hooks.idle()
    assert len(reads) == 1
    assert (delivered(hooks, "dropped"), delivered(hooks), delivered(hooks, "failed")) == (0, 0, 0)
    assert await count(analytics) == 200


async def test_a_queued_delivery_holds_the_payloads_bodies_never_the_events(ingest):
    """A delivery waits in a queue of up to HELICONE_WEBHOOK_QUEUE_SIZE (10,000) while receivers are slow; it held the
    whole event, whose logged bodies may be hundreds of KiB each (gigabytes for a full queue). It holds what the payload
    carries: bodies over 10 KiB are Helicone's "too large" text. So do the events waiting for the first read."""
    w, hooks, _, pool = ingest
    await hooks.stop()
    hooks.concurrency = 1
    hooks.start()
    release = asyncio.Event()

    async def hang(request):
        await asyncio.wait_for(release.wait(), 30)
        return web.Response()

    big = b'{"text": "' + b"x" * 300_000 + b'"}'
    async with serving_hook(hang) as url:
        await add_webhook(pool, ORG, url)
        await write(w, [event(body=big) for _ in range(3)])  # before the first read: they wait for it
        assert len(hooks._waiting) == 3
        held = [len(x.request_body or "") + len(x.response_body or "") for x in hooks._waiting]
        await write(w, [event(body=big) for _ in range(20)])
        while hooks._hooks is None:
            await asyncio.sleep(0.01)
        await write(w, [event(body=big) for _ in range(20)])
        held += [len(x.request_body or "") + len(x.response_body or "") for _, x in list(hooks._queue._queue)]
        release.set()
    assert len(held) > 20 and max(held) <= 2 * MAX_BODY_BYTES


# ---- the address guard: a faked DNS, connections never made ---------------------------------------

async def test_a_webhook_to_a_name_of_a_private_address_is_refused_never_connected(tmp_path, pg_pool):
    await pg_pool.execute("INSERT INTO orgs(id, name) VALUES ($1, 'acme')", uuid.UUID(ORG))
    recorder, resolver = Recorder(), FakeResolver({"internal.example": [["10.0.0.5"]]})
    sender = WebhookSender(allow_loopback=False, timeout=1, attempts=2, backoff=0.01, resolver=resolver, open_socket=recorder)
    await sender.start()
    hooks = RequestWebhooks(ServiceMetrics("ingest"), sender, ttl=60)
    hooks.attach(pg_pool)
    hooks.start()
    try:
        await add_webhook(pg_pool, ORG, "https://internal.example/hook")
        hooks.offer([event()])
        await hooks.idle()
        assert delivered(hooks, "refused") == 1 and delivered(hooks) == 0
        assert resolver.asked == ["internal.example"] and recorder.addresses == []
    finally:
        await hooks.stop()
        await sender.close()
