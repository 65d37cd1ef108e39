"""Alert rules through the api on a real Postgres and chDB: CRUD and its 422s, evaluation over the
window against numbers computed here from the rows inserted, firing and resolved notifications to a
webhook receiver on 127.0.0.1 (signed with the secret shown at creation), history, org isolation,
two evaluators at once, a dead webhook, and the address guard (with faked connections only)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import uuid

import httpx
import pytest
from aiohttp import web
from helicone_api.alert_evaluator import AlertEvaluator
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db, events
from helicone_core.webhooks import SIGNATURE_HEADER, WebhookSender

from services.api.tests.test_api import documented_answers, wait_for_keys
from tests.support.fake_network import FakeResolver, Recorder
from tests.support.keys import keys_before_start
from tests.support.net import free_port

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def log_row(org, *, seconds_ago, latency_ms=100, status=200, cost=0.01, model="gpt-4o", user="alice", props=None,
            error="", now=None):
    """A request_log row as ingest writes it (the bodies are not needed here)."""
    ev = events.RequestLogged(
        schema_version=1, request_id=events.new_request_id(), org_id=org, status=status, provider="openai", model=model,
        user_id=user, properties=props or {}, latency_ms=latency_ms, time_to_first_token_ms=-1, cost_usd=cost,
        cost_known=True, error=error, usage=events.Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2, known=True),
    )
    events.set_time(ev.request_created_at, (now or NOW) - dt.timedelta(seconds=seconds_ago))
    return events.analytics_row(ev, request_key="", response_key="", request_bytes=0, response_bytes=0,
                                request_content_type="", response_content_type="", truncated=False)


def p(values, q):
    """The linearly interpolated quantile (what ClickHouse's quantile() gives below 8192 values)."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = int(h)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (h - lo)


class Receiver:
    """A webhook on 127.0.0.1: records each notification and answers 200, or `?status=N` what the URL asks."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self.arrived.set()
        return web.Response(status=int(request.query.get("status", 200)))

    def bodies(self) -> list[dict]:
        return [json.loads(b) for _, b in self.received]


@contextlib.asynccontextmanager
async def serving_hook(handler):
    """A webhook receiver on 127.0.0.1 answering POST /hook with `handler`; yields its URL."""
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver():
    r = Receiver()
    async with serving_hook(r.handle) as url:
        r.url = url
        yield r


@pytest.fixture
async def alerts(tmp_path, fresh_db_dsn, chdb_path):
    """(client, state, org, other client, other org): an api whose evaluator is driven by the test
    (HELICONE_ALERT_INTERVAL=0: no loop), with loopback webhooks allowed and its window ending at NOW."""
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, analytics_backend="chdb",
                           chdb_path=chdb_path, clickhouse_database="t_" + uuid.uuid4().hex[:10], alert_interval=0,
                           alert_webhook_allow_loopback=True, alert_webhook_timeout=2, _env_file=None)
    (org, key), (other_org, other_key) = [(k.org_id, k.key) for k in await keys_before_start(fresh_db_dsn, "acme", "other")]
    app = create_app(settings)
    state = app.state.api
    await state.start()
    state.webhooks.backoff = 0.01
    state.alerts.clock = lambda: NOW
    await wait_for_keys(state, key, other_key)
    transport = httpx.ASGITransport(app=app)
    client = httpx.AsyncClient(transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {key}"},
                               event_hooks=documented_answers(app))
    other = httpx.AsyncClient(transport=transport, base_url="http://api", headers={"Authorization": f"Bearer {other_key}"},
                              event_hooks=documented_answers(app))
    yield client, state, org, other, other_org
    await client.aclose()
    await other.aclose()
    await state.stop()


def rule(url, **kw):
    return {"name": "errors", "metric": "error_rate", "window_seconds": 300, "comparison": "gt", "threshold": 0.2,
            "webhook_url": url, **kw}


async def create(client, body) -> dict:
    r = await client.post("/v1/alerts", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def tick(state) -> None:
    """One evaluation of every rule (the rules are due again at once: the interval is 0)."""
    await state.alerts.tick()


def verify(secret: str, headers: dict, body: bytes) -> None:
    fields = dict(part.split("=", 1) for part in headers[SIGNATURE_HEADER].split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)


async def test_rules_are_created_read_replaced_and_deleted_per_org(alerts):
    client, state, org, other, _ = alerts
    created = await create(client, rule("https://hooks.example.invalid/x", filter={"model": "gpt-4o", "properties": {"Env": "prod"}},
                                        min_requests=5))
    rid = created["id"]
    assert created["webhook_secret"].startswith("whsec_")
    assert (created["state"], created["last_value"], created["last_evaluated_at"], created["enabled"]) == ("ok", None, None, True)
    assert created["filter"] == {"model": "gpt-4o", "properties": {"env": "prod"}}
    got = (await client.get(f"/v1/alerts/{rid}")).json()
    assert "webhook_secret" not in got and got == {k: v for k, v in created.items() if k != "webhook_secret"}
    assert [a["id"] for a in (await client.get("/v1/alerts")).json()["data"]] == [rid]

    r = await client.put(f"/v1/alerts/{rid}", json=rule("https://hooks.example.invalid/y", metric="latency_p95_ms", threshold=2500,
                                                        comparison="gte", enabled=False))
    assert r.status_code == 200, r.text
    replaced = r.json()
    assert (replaced["metric"], replaced["threshold"], replaced["comparison"], replaced["enabled"], replaced["filter"],
            replaced["min_requests"]) == ("latency_p95_ms", 2500, "gte", False, {}, 1)

    # another org sees none of it and can change none of it
    assert (await other.get("/v1/alerts")).json()["data"] == []
    for r in (await other.get(f"/v1/alerts/{rid}"), await other.get(f"/v1/alerts/{rid}/history"),
              await other.put(f"/v1/alerts/{rid}", json=rule("https://hooks.example.invalid/z")),
              await other.delete(f"/v1/alerts/{rid}")):
        assert r.status_code == 404 and r.json()["error"]["message"] == f"alert {rid} not found", r.text
    assert (await client.get(f"/v1/alerts/{rid}")).json()["webhook_url"] == "https://hooks.example.invalid/y"

    assert (await client.delete(f"/v1/alerts/{rid}")).status_code == 204
    assert (await client.get(f"/v1/alerts/{rid}")).status_code == 404
    assert (await client.delete(f"/v1/alerts/{rid}")).status_code == 404


@pytest.mark.parametrize("change, field, says", [
    ({"metric": "p99"}, "metric", "cost_usd"),
    ({"window_seconds": 59}, "window_seconds", "greater than or equal to 60"),
    ({"window_seconds": 7 * 86400 + 1}, "window_seconds", "less than or equal to 604800"),
    ({"comparison": "eq"}, "comparison", "'gt', 'gte', 'lt' or 'lte'"),
    ({"threshold": 1.5}, "threshold", "between 0 and 1"),
    ({"threshold": "NaN"}, "threshold", "finite"),
    ({"min_requests": 0}, "min_requests", "greater than or equal to 1"),
    ({"name": ""}, "name", "at least 1 character"),
    ({"filter": {"start": "2026-03-01T00:00:00Z"}}, "filter.start", "window_seconds sets the time range"),
    ({"filter": {"colour": "red"}}, "filter.colour", "Extra inputs"),
    ({"webhook_url": "ftp://hooks.example.invalid/x"}, "webhook_url", "http:// or https://"),
    ({"webhook_url": "https:///x"}, "webhook_url", "has no host"),
    ({"webhook_url": "https://user:pw@hooks.example.invalid/x"}, "webhook_url", "user:password@"),
    ({"webhook_url": "http://169.254.169.254/latest"}, "webhook_url", "a cloud metadata address"),
    ({"webhook_url": "http://10.1.2.3/hook"}, "webhook_url", "a private (RFC 1918) address"),
    ({"webhook_url": "http://[fe80::1]/hook"}, "webhook_url", "a link-local address"),
    ({"webhook_url": "https://hooks..example.invalid/x"}, "webhook_url", "not a valid host name"),
    ({"webhook_url": f"https://{'h' * 64}.example.invalid/x"}, "webhook_url", "not a valid host name"),
    ({"surprise": 1}, "surprise", "Extra inputs"),
    ({"name": "a\x00b"}, "name", "NUL"),
    ({"filter": {"properties": {"env": "a\x00"}}}, "filter", "NUL"),
])
async def test_bad_rules_are_refused_naming_the_field(alerts, change, field, says):
    client, *_ = alerts
    body = rule("https://hooks.example.invalid/x", **change)
    r = await client.post("/v1/alerts", json=body)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert any(d["field"] == field and says in d["message"] for d in details), details
    created = await create(client, rule("https://hooks.example.invalid/x"))
    r = await client.put(f"/v1/alerts/{created['id']}", json=body)
    assert r.status_code == 422 and any(d["field"] == field for d in r.json()["error"]["details"])


async def test_a_malformed_alert_id_is_a_422_naming_it(alerts):
    client, *_ = alerts
    r = await client.get("/v1/alerts/not-a-uuid")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "alert_id"


async def test_error_rate_fires_then_resolves_with_signed_notifications_and_history(alerts, receiver):
    client, state, org, _, other_org = alerts
    rows = [log_row(org, seconds_ago=10 + i, status=s) for i, s in enumerate([200, 500, 200, 429, 200, 200, 0, 200, 200, 200])]
    rows.append(log_row(org, seconds_ago=20, status=200, error="upstream closed the stream"))
    rows += [log_row(org, seconds_ago=400, status=500) for _ in range(5)]  # before the window
    rows += [log_row(org, seconds_ago=5, status=500, model="gpt-4o-mini") for _ in range(5)]  # another model
    rows += [log_row(other_org, seconds_ago=5, status=500) for _ in range(5)]  # another org
    await state.analytics.insert("request_log", rows)
    in_window = [r for r in rows if r["org_id"] == org and r["model"] == "gpt-4o"
                 and NOW - dt.timedelta(seconds=300) <= dt.datetime.fromisoformat(r["request_created_at"] + "+00:00") < NOW]
    errors = sum(1 for r in in_window if r["status"] >= 400 or r["status"] == 0 or r["error"])
    assert (len(in_window), errors) == (11, 4)

    created = await create(client, rule(receiver.url, filter={"model": "gpt-4o"}, min_requests=10))
    await tick(state)
    assert len(receiver.received) == 1
    headers, raw = receiver.received[0]
    verify(created["webhook_secret"], headers, raw)
    note = json.loads(raw)
    assert (note["type"], note["state"], note["previous_state"]) == ("alert.firing", "firing", "ok")
    assert note["value"] == pytest.approx(errors / len(in_window)) and note["requests"] == len(in_window)
    assert note["alert"]["id"] == created["id"] and note["alert"]["filter"] == {"model": "gpt-4o"}
    assert note["window"] == {"start": "2026-03-01T11:55:00Z", "end": "2026-03-01T12:00:00Z"}
    got = (await client.get(f"/v1/alerts/{created['id']}")).json()
    assert (got["state"], got["last_value"], got["last_requests"], got["last_evaluated_at"]) == (
        "firing", pytest.approx(4 / 11), 11, "2026-03-01T12:00:00Z")

    await tick(state)  # still breached: no new notification
    assert len(receiver.received) == 1

    # four minutes later: the oldest rows left the window and new successes dilute the errors
    later = NOW + dt.timedelta(minutes=4)
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=1, now=later) for _ in range(12)])
    state.alerts.clock = lambda: later
    in_window = [r for r in in_window if dt.datetime.fromisoformat(r["request_created_at"] + "+00:00") >= later - dt.timedelta(seconds=300)]
    errors = sum(1 for r in in_window if r["status"] >= 400 or r["status"] == 0 or r["error"])
    await tick(state)
    assert len(receiver.received) == 2
    headers, raw = receiver.received[1]
    verify(created["webhook_secret"], headers, raw)
    note = json.loads(raw)
    assert (note["type"], note["state"], note["previous_state"]) == ("alert.resolved", "resolved", "firing")
    assert note["requests"] == len(in_window) + 12 and note["value"] == pytest.approx(errors / (len(in_window) + 12))
    assert note["value"] <= 0.2

    history = (await client.get(f"/v1/alerts/{created['id']}/history")).json()["data"]
    assert [(h["state"], h["at"]) for h in history] == [("resolved", "2026-03-01T12:04:00Z"), ("firing", "2026-03-01T12:00:00Z")]
    assert all(h["delivery"] == {"result": "delivered", "attempts": 1, "status": 200, "error": None} for h in history)
    assert history[1]["value"] == pytest.approx(4 / 11) and history[1]["requests"] == 11
    assert (await client.get(f"/v1/alerts/{created['id']}/history", params={"limit": 1})).json()["data"] == history[:1]
    metrics = (await client.get("/metrics")).text
    assert 'helicone_api_alert_notifications_total{result="delivered"} 2.0' in metrics
    assert 'helicone_api_alert_evaluations_total{result="breached"} 2.0' in metrics
    assert 'helicone_api_alert_evaluations_total{result="ok"} 1.0' in metrics


async def test_each_metric_matches_the_rows(alerts, receiver):
    client, state, org, _, _ = alerts
    latencies = [120, 95, 3000, 101, 130, 800, 250, 75, 1999, 440, 60, 5000, 333]
    costs = [0.0125 * (i + 1) for i in range(len(latencies))]
    rows = [log_row(org, seconds_ago=30 + i, latency_ms=lat, cost=c, props={"team": "search"})
            for i, (lat, c) in enumerate(zip(latencies, costs, strict=True))]
    rows += [log_row(org, seconds_ago=30, latency_ms=90000, cost=50, props={"team": "other"})]  # filtered out
    await state.analytics.insert("request_log", rows)
    expected = {"cost_usd": sum(costs), "requests": len(latencies), "latency_p95_ms": p(latencies, 0.95),
                "latency_p50_ms": p(latencies, 0.5)}
    assert expected["latency_p95_ms"] == pytest.approx(3800.0)  # the interpolation, worked out by hand
    ids = {}
    for metric, value in expected.items():
        # each rule's threshold a little below the value: every one fires once, with the value seen
        ids[(await create(client, rule(receiver.url, name=metric, metric=metric, comparison="gte", threshold=value * 0.999,
                                       filter={"properties": {"team": "search"}})))["id"]] = metric
    below = await create(client, rule(receiver.url, name="quiet", metric="cost_usd", comparison="lt", threshold=sum(costs) * 0.999,
                                      filter={"properties": {"team": "search"}}))
    await tick(state)
    seen = {ids[n["alert"]["id"]]: (n["value"], n["requests"]) for n in receiver.bodies()}
    assert seen.keys() == expected.keys()
    for metric, value in expected.items():
        assert seen[metric] == (pytest.approx(value), len(latencies)), metric
    assert (await client.get(f"/v1/alerts/{below['id']}")).json()["state"] == "ok"


async def test_too_few_requests_is_no_data_and_keeps_the_state(alerts, receiver):
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(3)])
    created = await create(client, rule(receiver.url, min_requests=4))
    await tick(state)
    got = (await client.get(f"/v1/alerts/{created['id']}")).json()
    assert (got["state"], got["last_value"], got["last_requests"]) == ("ok", None, 3) and not receiver.received
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500)])
    await tick(state)
    assert [n["state"] for n in receiver.bodies()] == ["firing"]
    state.alerts.clock = lambda: NOW + dt.timedelta(hours=1)  # no traffic at all: still firing, no value
    await tick(state)
    got = (await client.get(f"/v1/alerts/{created['id']}")).json()
    assert (got["state"], got["last_value"], got["last_requests"]) == ("firing", None, 0) and len(receiver.received) == 1
    assert 'helicone_api_alert_evaluations_total{result="no_data"} 2.0' in (await client.get("/metrics")).text


async def test_each_org_alerts_on_its_own_traffic(alerts, receiver):
    client, state, org, other, other_org = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10) for _ in range(3)]
                                 + [log_row(other_org, seconds_ago=10) for _ in range(7)])
    mine = await create(client, rule(receiver.url, metric="requests", comparison="gte", threshold=1))
    theirs = await create(other, rule(receiver.url, metric="requests", comparison="gte", threshold=1))
    await tick(state)
    counts = {n["alert"]["id"]: n["requests"] for n in receiver.bodies()}
    assert counts == {mine["id"]: 3, theirs["id"]: 7}
    assert [a["id"] for a in (await other.get("/v1/alerts")).json()["data"]] == [theirs["id"]]


async def test_two_evaluators_at_once_evaluate_and_notify_each_rule_once(alerts, receiver):
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(5)])
    ids = {(await create(client, rule(receiver.url, name=f"r{i}")))["id"] for i in range(6)}
    one, two = (AlertEvaluator(state, interval=60, clock=lambda: NOW) for _ in range(2))
    counts = await asyncio.gather(one.tick(), two.tick())
    assert sum(counts) == len(ids)
    assert sorted(n["alert"]["id"] for n in receiver.bodies()) == sorted(ids)
    assert await asyncio.gather(one.tick(), two.tick()) == [0, 0]  # not due again within the interval

    # an evaluation slower than the interval overlapping the next: the transition is still notified once
    await state.pool.execute("UPDATE alert_rules SET state = 'ok', next_evaluation_at = now()")
    claimed = await state.pool.fetch(
        "SELECT id, org_id, name, metric, window_seconds, comparison, threshold, filter, min_requests, webhook_url, "
        "webhook_secret, state, updated_at FROM alert_rules")
    await asyncio.gather(*(e._evaluate_rule(r) for r in claimed for e in (one, two)))
    assert len(receiver.received) == 2 * len(ids)
    assert 'helicone_api_alert_evaluations_total{result="breached"} 18.0' in (await client.get("/metrics")).text


async def test_a_dead_webhook_is_recorded_and_other_rules_and_later_evaluations_go_on(alerts, receiver):
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(5)])
    nobody = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    dead = await create(client, rule(nobody, name="dead"))
    failing = await create(client, rule(receiver.url + "?status=503", name="failing"))  # tried again, in vain
    refusing = await create(client, rule(receiver.url + "?status=404", name="refusing"))  # a 4xx is final: one try
    alive = await create(client, rule(receiver.url, name="alive"))
    await tick(state)

    async def delivery(alert):
        return [h["delivery"] for h in (await client.get(f"/v1/alerts/{alert['id']}/history")).json()["data"]]

    [d] = await delivery(dead)
    assert (d["result"], d["attempts"], d["status"]) == ("failed", 3, None) and "could not connect" in d["error"]
    expected = {"failing": ("failed", 3, 503, "the webhook answered 503"), "refusing": ("failed", 1, 404, "the webhook answered 404"),
                "alive": ("delivered", 1, 200, None)}
    for a in (failing, refusing, alive):
        [d] = await delivery(a)
        assert (d["result"], d["attempts"], d["status"], d["error"]) == expected[a["name"]]
    assert len(receiver.received) == 5
    for a in (dead, failing, refusing, alive):
        assert (await client.get(f"/v1/alerts/{a['id']}")).json()["state"] == "firing"

    state.alerts.clock = lambda: NOW + dt.timedelta(hours=1)
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=1, now=NOW + dt.timedelta(hours=1))])
    await tick(state)
    for a in (dead, failing, refusing, alive):
        got = (await client.get(f"/v1/alerts/{a['id']}")).json()
        assert (got["state"], got["last_evaluated_at"]) == ("resolved", "2026-03-01T13:00:00Z")
    for a in (failing, refusing, alive):
        d = (await delivery(a))[0]
        assert (d["result"], d["attempts"], d["status"], d["error"]) == expected[a["name"]]
    assert (await delivery(dead))[0]["result"] == "failed"
    assert len(receiver.received) == 10
    metrics = (await client.get("/metrics")).text
    assert 'helicone_api_alert_notifications_total{result="failed"} 6.0' in metrics
    assert 'helicone_api_alert_notifications_total{result="delivered"} 2.0' in metrics


async def test_the_lifespan_starts_a_loop_that_evaluates_every_interval(tmp_path, fresh_db_dsn, chdb_path, receiver):
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, analytics_backend="chdb",
                           chdb_path=chdb_path, clickhouse_database="t_" + uuid.uuid4().hex[:10], alert_interval=0.1,
                           alert_webhook_allow_loopback=True, _env_file=None)
    app = create_app(settings)
    state = app.state.api
    async with app.router.lifespan_context(app):  # what uvicorn runs
        state.alerts.clock = lambda: NOW
        org = await db.create_org(state.pool, "acme")
        await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500)])
        await state.pool.execute(
            "INSERT INTO alert_rules(org_id, name, metric, window_seconds, comparison, threshold, webhook_url, webhook_secret) "
            "VALUES ($1, 'errors', 'error_rate', 300, 'gt', 0.2, $2, 's')", uuid.UUID(org), receiver.url)
        await asyncio.wait_for(receiver.arrived.wait(), 10)
        await asyncio.sleep(0.5)  # a few more intervals: evaluated again, not notified again
        assert state.metrics.registry.get_sample_value("helicone_api_alert_evaluations_total", {"result": "breached"}) >= 3
    assert [n["state"] for n in receiver.bodies()] == ["firing"]
    assert state.alerts._loop is None  # stopped with the app


# ---- the address guard, with a fake DNS and connections that are never made ----------------------

ANSWERS = {
    "internal.example": [["10.0.0.5"]],
    "metadata.example": [["169.254.169.254"]],
    "mapped.example": [["::ffff:192.168.1.1"]],
    "local.example": [["127.0.0.1"]],
    "public.example": [["93.184.216.34"]],
    "rebind.example": [["93.184.216.34"], ["10.0.0.5"]],
}


@pytest.fixture
async def guarded():
    recorder = Recorder()
    sender = WebhookSender(allow_loopback=False, timeout=2, attempts=2, backoff=0.01,
                           resolver=FakeResolver(ANSWERS), open_socket=recorder)
    await sender.start()
    yield sender, recorder
    await sender.close()


@pytest.mark.parametrize("host, says", [
    ("internal.example", "resolves to a private (RFC 1918) address"),
    ("metadata.example", "resolves to a cloud metadata address"),
    ("mapped.example", "resolves to a private (RFC 1918) address"),
    ("local.example", "resolves to a loopback address"),
])
async def test_webhooks_to_names_of_refused_addresses_are_never_connected(guarded, host, says):
    sender, recorder = guarded
    d = await sender.send(f"https://{host}/hook", b"{}", "s")
    assert (d.result, d.attempts) == ("refused", 1) and says in d.error
    # the rule's history shows why, never the internal address a name resolved to (no map of the
    # api's network for whoever can create a rule; the gateway's Target-URL refusals do the same)
    assert ANSWERS[host][0][0] not in d.error
    assert recorder.addresses == []


async def test_webhooks_to_refused_ip_literals_are_refused_before_any_lookup(guarded):
    sender, recorder = guarded
    for url in ("http://127.0.0.1:9/hook", "http://[::1]/hook", "http://100.64.0.1/hook", "http://0.0.0.0/hook",
                "http://168.63.129.16/machine?comp=goalstate", "http://[fd20:ce::254]/computeMetadata/v1/"):
        d = await sender.send(url, b"{}", "s")
        assert (d.result, d.attempts) == ("refused", 0) and "public addresses only" in d.error, url
    assert recorder.addresses == []


async def test_a_stored_webhook_whose_host_no_resolver_can_take_is_refused_not_raised(guarded):
    """send() never raises: a rule stored before its URL's host was checked is recorded as refused."""
    sender, recorder = guarded
    for url in ("https://hooks..example/hook", f"http://{'h' * 64}.example/hook", "https://.example/hook"):
        d = await sender.send(url, b"{}", "s")
        assert (d.result, d.attempts) == ("refused", 0) and "not a valid host name" in d.error, url
    assert recorder.addresses == []


async def test_public_addresses_are_connected_and_a_rebinding_name_is_checked_again(guarded):
    sender, recorder = guarded
    d = await sender.send("https://public.example/hook", b"{}", "s")
    assert (d.result, d.attempts) == ("failed", 2)  # the faked connection fails; it was tried twice
    assert recorder.addresses == [("93.184.216.34", 443)] * 2
    recorder.addresses.clear()
    d = await sender.send("http://rebind.example/hook", b"{}", "s")  # public first, then private
    assert d.result == "refused" and "resolves to a private" in d.error and "10.0.0.5" not in d.error
    assert recorder.addresses == [("93.184.216.34", 80)]


async def test_loopback_is_allowed_only_by_the_operator_setting():
    assert WebhookSender(allow_loopback=True, timeout=1, attempts=1).url_problem("http://127.0.0.1:8080/hook") is None
    assert WebhookSender(allow_loopback=True, timeout=1, attempts=1).url_problem("http://10.0.0.1/hook") is not None
    assert "loopback" in WebhookSender(allow_loopback=False, timeout=1, attempts=1).url_problem("http://127.0.0.1/hook")
    with pytest.raises(ValueError):
        ApiSettings(alert_interval=-1, _env_file=None)


# ---- webhook URLs that cannot be stored or are spelled oddly, the filter tree, answers left unread ----------

async def test_a_webhook_url_that_is_not_storable_text_is_a_422_not_a_500(alerts):
    client, *_ = alerts
    for url in ("https://hooks.example.invalid/\ud800", "https://a\ud800.example.invalid/"):
        body = json.dumps(rule(url))  # ensure_ascii: the lone surrogate travels as the JSON escape \ud800
        r = await client.post("/v1/alerts", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert any(d["field"] == "webhook_url" for d in r.json()["error"]["details"]), r.text


async def test_an_alert_takes_the_filter_tree_of_request_query(alerts, receiver):
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=s) for s in (200, 500, 502, 404)])
    tree = {"left": {"response": {"status": {"gte": 500}}}, "operator": "and", "right": {"request": {"model": {"equals": "gpt-4o"}}}}
    r = await client.post("/v1/alerts", json=rule(receiver.url, metric="requests", comparison="gte", threshold=2, filter=tree))
    assert r.status_code == 201, r.text
    assert r.json()["filter"] == tree
    await tick(state)
    assert [(n["state"], n["requests"], n["value"]) for n in receiver.bodies()] == [("firing", 2, 2)]


@pytest.mark.parametrize("url", ["http://2130706433/hook", "http://127.1/hook", "http://0177.0.0.1/hook", "http://1.1/hook"])
async def test_a_webhook_url_with_an_ipv4_address_in_an_odd_form_is_a_422(alerts, url):
    client, *_ = alerts
    r = await client.post("/v1/alerts", json=rule(url))
    assert r.status_code == 422, r.text
    assert any(d["field"] == "webhook_url" and "a.b.c.d" in d["message"] for d in r.json()["error"]["details"]), r.text


async def test_a_webhook_answering_200_with_an_endless_body_is_delivered_once_without_reading_it_all():
    """The sender reads the status, not a body of the webhook's choosing: an endless (or huge) answer
    must neither be buffered in the api's memory nor turn a 200 into a timeout and more deliveries."""
    posts, written = [], [0]

    async def endless(request: web.Request) -> web.StreamResponse:
        posts.append(await request.read())
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(2000):  # 128 MiB at most, 6.4 MB/s
                await resp.write(chunk)
                written[0] += len(chunk)
                await asyncio.sleep(0.01)
        except (ConnectionError, RuntimeError):
            pass  # the sender closed the connection: what it should do
        return resp

    async with serving_hook(endless) as url:
        sender = WebhookSender(allow_loopback=True, timeout=1, attempts=3, backoff=0.01)
        await sender.start()
        try:
            d = await sender.send(url, b"{}", "s")
            assert (d.result, d.attempts, d.status) == ("delivered", 1, 200), d
            assert len(posts) == 1
        finally:
            await sender.close()



async def test_a_failed_delivery_never_names_the_webhooks_path_or_query():
    """A chat webhook's secret is its path (Slack's /services/T../B../<token>, Discord's /api/webhooks/<id>/<token>):
    aiohttp's error for an answer that is no HTTP (ClientResponseError) repeats the whole URL, which went into the
    api's warning log and the rule's stored history. The error names the webhook's origin only."""
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = WebhookSender(allow_loopback=True, timeout=2, attempts=1)
    await sender.start()
    try:
        d = await sender.send(f"http://127.0.0.1:{port}/services/T000/B000/XXsecretXX?token=abc", b"{}", "s")
    finally:
        await sender.close()
        server.close()
    assert d.result == "failed" and d.error, d
    assert "XXsecretXX" not in d.error and "token=abc" not in d.error, d.error
    assert f"http://127.0.0.1:{port}" in d.error, d.error

# ---- evaluations racing edits, other evaluations and shutdown ----------------------------------------------


class Paused:
    """Wraps the analytics store's query: the first `count` calls wait at `release` once they have told `entered`."""

    def __init__(self, state, count: int = 1) -> None:
        self.query, self.count = state.analytics.query, count
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        state.analytics.query = self

    async def __call__(self, sql, params=None):
        if self.count > 0:
            self.count -= 1
            self.entered.set()
            await self.release.wait()
        return await self.query(sql, params)


async def test_a_rule_replaced_while_it_is_evaluated_is_not_notified_by_its_old_definition(alerts, receiver):
    """The evaluation in flight when a PUT lands computed the old rule: it must neither notify (the old
    threshold, to the old webhook) nor set the state; the replaced rule is evaluated afresh."""
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(5)])
    created = await create(client, rule(receiver.url, threshold=0.2))
    paused = Paused(state)
    evaluating = asyncio.create_task(state.alerts.tick())
    await asyncio.wait_for(paused.entered.wait(), 10)
    r = await client.put(f"/v1/alerts/{created['id']}", json=rule(receiver.url, threshold=1.0))  # an error rate never > 1
    assert r.status_code == 200, r.text
    paused.release.set()
    await evaluating
    await tick(state)  # the replaced rule
    got = (await client.get(f"/v1/alerts/{created['id']}")).json()
    assert (got["state"], got["last_value"], receiver.bodies()) == ("ok", 1.0, [])
    assert (await client.get(f"/v1/alerts/{created['id']}/history")).json()["data"] == []


async def test_a_rule_disabled_while_it_is_evaluated_is_not_notified(alerts, receiver):
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(5)])
    created = await create(client, rule(receiver.url))
    paused = Paused(state)
    evaluating = asyncio.create_task(state.alerts.tick())
    await asyncio.wait_for(paused.entered.wait(), 10)
    r = await client.put(f"/v1/alerts/{created['id']}", json=rule(receiver.url, enabled=False))
    assert r.status_code == 200, r.text
    paused.release.set()
    await evaluating
    got = (await client.get(f"/v1/alerts/{created['id']}")).json()
    assert (got["state"], got["enabled"], receiver.bodies()) == ("ok", False, [])


async def test_an_evaluation_overtaken_by_newer_ones_neither_notifies_nor_sets_the_state(alerts, receiver):
    """A slow evaluation (its window three minutes old when its query answers) that two newer evaluations
    overtook (resolved, then firing again) must not notify its stale `resolved` nor leave the rule resolved."""
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10) for _ in range(3)])
    created = await create(client, rule(receiver.url, metric="requests", comparison="gte", threshold=1, window_seconds=60))
    await tick(state)  # NOW: 3 requests, firing
    paused = Paused(state)
    slow = AlertEvaluator(state, interval=0, clock=lambda: NOW + dt.timedelta(seconds=120))  # another replica
    evaluating = asyncio.create_task(slow.tick())
    await asyncio.wait_for(paused.entered.wait(), 10)
    later = NOW + dt.timedelta(seconds=300)
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, now=later) for _ in range(2)])
    state.alerts.clock = lambda: NOW + dt.timedelta(seconds=180)
    await tick(state)  # nothing in the window: resolved
    state.alerts.clock = lambda: later
    await tick(state)  # traffic again: firing
    paused.release.set()
    await evaluating
    assert [n["state"] for n in receiver.bodies()] == ["firing", "resolved", "firing"]
    got = (await client.get(f"/v1/alerts/{created['id']}")).json()
    assert (got["state"], got["last_value"], got["last_evaluated_at"]) == ("firing", 2, "2026-03-01T12:05:00Z")


async def test_stopping_the_api_mid_delivery_finishes_the_notification_and_records_it(alerts):
    """A transition committed is notified at most once and never again: a shutdown (a rolling deploy) that
    cancelled its delivery left it unsent or unrecorded for good, its history `pending` forever."""
    client, state, org, _, _ = alerts
    arrived, answer = asyncio.Event(), asyncio.Event()

    async def slow_hook(request: web.Request) -> web.Response:
        await request.read()
        arrived.set()
        await answer.wait()
        return web.Response(status=200)

    async with serving_hook(slow_hook) as url:
        try:
            await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(5)])
            created = await create(client, rule(url))
            state.alerts.interval = 3600
            state.alerts.start()  # the lifespan's loop: its first tick at once
            await asyncio.wait_for(arrived.wait(), 10)
            stopping = asyncio.create_task(state.alerts.stop())
            await asyncio.sleep(0)  # stop() has cancelled what it cancels
            answer.set()
            await asyncio.wait_for(stopping, 10)
            [h] = (await client.get(f"/v1/alerts/{created['id']}/history")).json()["data"]
            assert (h["state"], h["delivery"]) == ("firing", {"result": "delivered", "attempts": 1, "status": 200, "error": None})
        finally:
            answer.set()


async def test_a_rules_history_keeps_the_newest_transitions_the_api_can_show(alerts, receiver):
    """A flapping rule writes a history entry per transition (two a minute at most, forever): the table keeps
    the newest 1000 per rule, what GET /history can show at most, not every entry since the rule was made."""
    client, state, org, _, _ = alerts
    await state.analytics.insert("request_log", [log_row(org, seconds_ago=10, status=500) for _ in range(5)])
    created = await create(client, rule(receiver.url))
    assert (await client.get(f"/v1/alerts/{created['id']}/history", params={"limit": 1001})).status_code == 422
    await state.pool.execute(
        "INSERT INTO alert_events(rule_id, at, state, value, requests, delivery_result) "
        "SELECT $1, $2::timestamptz - make_interval(mins => i), CASE WHEN i % 2 = 0 THEN 'firing' ELSE 'resolved' END, 0.5, 5, "
        "'delivered' FROM generate_series(1000, 1, -1) AS i", uuid.UUID(created["id"]), NOW)
    await tick(state)  # firing: entry 1001
    assert [n["state"] for n in receiver.bodies()] == ["firing"]
    kept = await state.pool.fetch("SELECT at FROM alert_events WHERE rule_id = $1 ORDER BY id", uuid.UUID(created["id"]))
    assert len(kept) == 1000 and kept[0]["at"] == NOW - dt.timedelta(minutes=999) and kept[-1]["at"] == NOW
    history = (await client.get(f"/v1/alerts/{created['id']}/history", params={"limit": 1000})).json()["data"]
    assert len(history) == 1000 and history[0]["state"] == "firing" and history[0]["delivery"]["result"] == "delivered"
