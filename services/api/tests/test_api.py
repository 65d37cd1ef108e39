import datetime as dt
import json
import re

import httpx
import jsonschema
import pytest
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db, events

from tests.support.keys import keys_before_start

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


async def add_request(state, org, *, minutes, model="gpt-4o-mini", user="alice", props=None, status=200, request_id=None,
                      response=b"data: {}\n\ndata: [DONE]\n\n", region="", cache_hit=False, attempts=(), **fields):
    """Stores a request the way ingest does: bodies under the event's own keys, then its row. `fields`:
    any other RequestLogged field (latency_ms, cost_usd, session_id, ...)."""
    ev = events.RequestLogged(**{
        "schema_version": 1, "request_id": request_id or events.new_request_id(), "org_id": org, "status": status,
        "provider": "openai", "model": model, "user_id": user, "properties": props or {}, "latency_ms": 120,
        "time_to_first_token_ms": -1, "region": region,
        "usage": events.Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15, known=True), "cost_known": True,
        # as the gateway logs a cache hit: nothing paid, the provider's price saved
        "cost_usd": 0.0 if cache_hit else 0.5, "cache_hit": cache_hit, "cache_saved_usd": 0.5 if cache_hit else 0.0,
        "attempts": [events.Attempt(**a) for a in attempts],
        **fields,
    })
    events.set_time(ev.request_created_at, T0 + dt.timedelta(minutes=minutes))
    req_key, resp_key = events.body_keys(org, ev.request_id, events.event_version(ev))
    await state.bodies.put(req_key, b'{"model":"%s"}' % model.encode(), "application/json")
    await state.bodies.put(resp_key, response, "text/event-stream")
    row = events.analytics_row(ev, request_key=req_key, response_key=resp_key, request_bytes=1, response_bytes=1,
                               request_content_type="application/json", response_content_type="text/event-stream",
                               truncated=False)
    await state.analytics.insert("request_log", [row])
    return ev.request_id


# An OpenAPI document and its answer validators per set of routes: the document of apps with the same routes
# (endpoints, response models, declared answers) is the same, and FastAPI takes most of a second to build one,
# more than the rest of a test's app costs.
_DOCUMENTS: dict[str, tuple[dict, dict]] = {}


def _routes_key(app) -> str:
    """What an app's OpenAPI answers are built from: each route's path, methods, endpoint and answers."""
    return "\n".join(repr((getattr(r, "path", None), sorted(getattr(r, "methods", None) or ()),
                            getattr(getattr(r, "endpoint", None), "__qualname__", None),
                            getattr(r, "response_model", None), getattr(r, "status_code", None),
                            getattr(r, "responses", None))) for r in app.routes)


def documented_answers(app) -> dict:
    """httpx event hooks that hold every JSON answer the tests get to the app's OpenAPI document: a 2xx
    answer must be one it declares, and an answer of a declared status must pass its schema (answers'
    objects are closed: a field the document does not name fails, as does a missing one)."""
    key = _routes_key(app)
    if key not in _DOCUMENTS:
        _DOCUMENTS[key] = (app.openapi(), {})
    doc, validators = _DOCUMENTS[key]
    templates_of: dict[str, list[str]] = {}
    for template, ops in doc["paths"].items():
        for method in ops:
            templates_of.setdefault(method, []).append(template)

    def route(method: str, path: str) -> str | None:
        """The document's path template of a request: literal segments before parameters, and a parameter
        spanning several segments (a session id with "/") only when nothing else matches."""
        templates = templates_of.get(method, [])
        for segment in ("[^/]+", ".+"):
            found = [t for t in templates if re.fullmatch(
                "".join(segment if p.startswith("{") else re.escape(p) for p in re.split(r"(\{[^}]+\})", t)), path)]
            if found:
                return min(found, key=lambda t: t.count("{"))
        return None

    def validator(path: str, method: str, status: int) -> jsonschema.Draft202012Validator | None:
        if (path, method, status) not in validators:
            answer = doc["paths"][path][method]["responses"].get(str(status), {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            validators[path, method, status] = (
                None if schema is None else jsonschema.Draft202012Validator({**schema, "components": doc["components"]}))
        return validators[path, method, status]

    async def check(response: httpx.Response) -> None:
        if response.headers.get("content-type", "").split(";")[0] != "application/json":
            return
        method = response.request.method.lower()
        path = route(method, response.request.url.path)
        if path is None:
            return  # ops and dashboard routes, 404s and 405s
        where = f"{method.upper()} {path} {response.status_code}"
        v = validator(path, method, response.status_code)
        if v is None:
            assert not 200 <= response.status_code < 300, f"{where}: a JSON answer the OpenAPI document does not declare"
            return
        await response.aread()
        problems = [f"{e.message} at {'.'.join(map(str, e.absolute_path)) or 'the top'}" for e in v.iter_errors(response.json())]
        assert problems == [], f"{where}: the answer does not match the OpenAPI document"

    return {"response": [check]}


@pytest.fixture
async def api(tmp_path, fresh_db_dsn, analytics_settings):
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, _env_file=None, **analytics_settings)
    (org, key), (other_org, other_key) = [(k.org_id, k.key) for k in await keys_before_start(fresh_db_dsn, "acme", "other")]
    app = create_app(settings)
    state = app.state.api
    await state.start()
    await wait_for_keys(state, key, other_key)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                               headers={"Authorization": f"Bearer {key}"}, event_hooks=documented_answers(app))
    yield client, state, org, other_org, other_key
    await client.aclose()
    await state.stop()


async def wait_for_keys(state, *keys) -> None:
    """New keys reach the api's key directory through Postgres NOTIFY, a few ms after creation."""
    import asyncio

    for _ in range(200):
        if all(state.keys.lookup(k) for k in keys):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("keys did not reach the key directory")


async def query(client, **body):
    r = await client.post("/v1/request/query", json=body)
    assert r.status_code == 200, r.text
    return [d["request_id"] for d in r.json()["data"]]


async def test_filters(api):
    client, state, org, other_org, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o-mini", user="alice", props={"env": "prod"})
    b = await add_request(state, org, minutes=10, model="gpt-4o", user="bob", props={"env": "dev", "team": "x"})
    c = await add_request(state, org, minutes=20, model="gpt-4o", user="alice", props={"env": "prod", "team": "x"})
    await add_request(state, other_org, minutes=5, model="gpt-4o")

    assert await query(client) == [c, b, a]
    assert await query(client, sort="created_at_asc") == [a, b, c]
    assert await query(client, filter={"model": "gpt-4o"}) == [c, b]
    assert await query(client, filter={"user_id": "alice"}) == [c, a]
    assert await query(client, filter={"properties": {"env": "prod"}}) == [c, a]
    assert await query(client, filter={"properties": {"Env": "prod", "team": "x"}}) == [c]
    start, end = (T0 + dt.timedelta(minutes=5)).isoformat(), (T0 + dt.timedelta(minutes=20)).isoformat()
    assert await query(client, filter={"start": start, "end": end}) == [b]  # end is exclusive
    assert await query(client, filter={"start": "2026-03-01T12:05:00"}) == [c, b]  # naive means UTC
    assert await query(client, limit=1, offset=1) == [b]
    assert await query(client, filter={"model": "gpt-4o", "user_id": "nobody"}) == []


async def test_rows_name_their_region_and_can_be_filtered_by_it(api):
    client, state, org, other_org, _ = api
    eu = await add_request(state, org, minutes=0, region="eu-west-1")
    us = await add_request(state, org, minutes=1, region="us-east-1")
    unset = await add_request(state, org, minutes=2)
    await add_request(state, other_org, minutes=3, region="eu-west-1")
    assert await query(client, filter={"region": "eu-west-1"}) == [eu]
    assert await query(client, filter={"region": "us-east-1", "model": "gpt-4o-mini"}) == [us]
    assert await query(client, filter={"region": ""}) == [unset]
    assert await query(client, filter={"region": "ap-south-1"}) == []
    r = await client.post("/v1/request/query", json={"filter": {}, "sort": "created_at_asc"})
    assert [(d["request_id"], d["region"]) for d in r.json()["data"]] == [(eu, "eu-west-1"), (us, "us-east-1"), (unset, None)]
    assert (await client.get(f"/v1/request/{eu}")).json()["region"] == "eu-west-1"
    assert (await client.get(f"/v1/request/{unset}")).json()["region"] is None


async def test_rows_say_whether_the_gateway_cache_answered_and_can_be_filtered_by_it(api):
    client, state, org, other_org, _ = api
    paid = await add_request(state, org, minutes=0)
    hit = await add_request(state, org, minutes=1, cache_hit=True)
    await add_request(state, other_org, minutes=2, cache_hit=True)
    assert await query(client, filter={"cache_hit": True}) == [hit]
    assert await query(client, filter={"cache_hit": False}) == [paid]
    assert set(await query(client)) == {paid, hit}
    row = (await client.get(f"/v1/request/{hit}")).json()
    assert (row["cache_hit"], row["cache_saved_usd"], row["cost_usd"]) == (True, 0.5, 0.0)
    row = (await client.get(f"/v1/request/{paid}")).json()
    assert (row["cache_hit"], row["cache_saved_usd"], row["cost_usd"]) == (False, None, 0.5)
    r = await client.post("/v1/request/query", json={"filter": {"cache_hit": "maybe"}})
    assert r.status_code in (400, 422) and "cache_hit" in r.text


async def test_filter_values_are_matched_exactly_whatever_they_contain(api):
    client, state, org, _, _ = api
    awkward = ["dom\\alice", "ends\\", "\\N", "\\t", "tab\tx", "line\nx", "cr\rx", "it's \"q\"", "nul\x00x",
               "{user_id:String}", "", "é\\" * 1500]  # the last one only fits in a ClickHouse request body
    ids = {user: await add_request(state, org, minutes=i, user=user, props={"dept": user})
           for i, user in enumerate(awkward)}
    plain = await add_request(state, org, minutes=99, user="dom", props={"dept": "dom"})
    for user, rid in ids.items():
        if user:  # an empty user id is stored as "no user"
            assert await query(client, filter={"user_id": user}) == [rid], user[:20]
        assert await query(client, filter={"properties": {"dept": user}}) == [rid], user[:20]
    assert await query(client, filter={"user_id": "dom"}) == [plain]
    assert await query(client, filter={"user_id": "dom\\"}) == []


async def test_filter_values_that_cannot_be_stored_are_a_422_naming_the_field(api):
    client, *_ = api

    async def problem(filter_: dict) -> dict:
        r = await client.post("/v1/request/query", content=json.dumps({"filter": filter_}),
                              headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        [detail] = r.json()["error"]["details"]
        return detail

    d = await problem({"user_id": "a\ud800b"})
    assert d["field"] == "filter.user_id" and "lone surrogate" in d["message"] and "position 1" in d["message"]
    d = await problem({"properties": {"team\udfff": "x"}})
    assert d["field"].startswith("filter.properties.team") and "lone surrogate" in d["message"]
    d = await problem({"model": "m" * 4097})
    assert d["field"] == "filter.model" and "4096" in d["message"]
    d = await problem({"properties": {"Env": "prod", "env": "dev"}})  # one property, two values: the last one won
    assert d["field"] == "filter.properties" and "'env' is named more than once" in d["message"]
    for field, value in (("start", "0001-01-01T00:00:00"), ("start", "0001-01-01T00:30:00+01:00"),
                         ("start", "1899-12-31T23:59:59.999Z"), ("end", "2300-01-01T00:00:00Z"),
                         ("end", "9999-12-31T23:59:59-01:00")):
        d = await problem({field: value})
        assert d["field"] == f"filter.{field}", value
        assert "between 1900-01-01T00:00:00Z and 2299-12-31T23:59:59.999Z" in d["message"], value


async def test_time_filters_cover_the_whole_stored_range_at_millisecond_precision(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0)  # created at T0 exactly
    assert await query(client, filter={"start": "1900-01-01T00:00:00Z", "end": "2299-12-31T23:59:59.999Z"}) == [rid]
    assert await query(client, filter={"start": (T0 - dt.timedelta(microseconds=500)).isoformat()}) == [rid]
    assert await query(client, filter={"start": (T0 + dt.timedelta(microseconds=1)).isoformat()}) == []
    assert await query(client, filter={"end": (T0 + dt.timedelta(microseconds=1)).isoformat()}) == [rid]
    assert await query(client, filter={"end": T0.isoformat()}) == []


async def test_detail_returns_bodies_and_usage(api):
    client, state, org, _, other_key = api
    rid = await add_request(state, org, minutes=1, props={"env": "prod"})
    r = await client.get(f"/v1/request/{rid}")
    assert r.status_code == 200
    d = r.json()
    assert d["request_id"] == rid and d["status"] == 200 and d["latency_ms"] == 120
    assert d["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cache_read_tokens": 0,
                          "cache_write_tokens": 0, "known": True}
    assert d["cost_usd"] == 0.5 and d["properties"] == {"env": "prod"} and d["time_to_first_token_ms"] is None
    assert d["request_body"] == {"model": "gpt-4o-mini"}
    assert d["response_body"] == "data: {}\n\ndata: [DONE]\n\n"
    assert d["created_at"] == "2026-03-01T12:01:00.000Z"
    # another org cannot see it
    r = await client.get(f"/v1/request/{rid}", headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 404


async def test_a_reused_request_id_shows_the_newest_request_only(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=60 * 24 * 40, model="newest", response=b"newest answer")
    await add_request(state, org, minutes=0, model="first", request_id=rid, response=b"first answer")  # a late replay
    await add_request(state, org, minutes=5, model="second", request_id=rid, response=b"second answer")
    d = (await client.get(f"/v1/request/{rid}")).json()
    assert (d["model"], d["request_body"], d["response_body"]) == ("newest", {"model": "newest"}, "newest answer")
    assert d["created_at"] == "2026-04-10T12:00:00.000Z"
    assert await query(client) == [rid]
    # the earlier requests are gone, also from the time range they were sent in
    assert await query(client, filter={"end": (T0 + dt.timedelta(days=1)).isoformat()}) == []
    assert await query(client, filter={"model": "first"}) == []


async def test_a_request_id_never_crosses_orgs(api):
    client, state, org, other_org, other_key = api
    theirs = await add_request(state, other_org, minutes=1, model="theirs", response=b"their answer")
    assert (await client.get(f"/v1/request/{theirs}")).status_code == 404  # their id is not yours
    # the same id sent by both orgs: each sees its own request and bodies
    await add_request(state, org, minutes=2, model="mine", request_id=theirs, response=b"my answer")
    mine = (await client.get(f"/v1/request/{theirs}")).json()
    other = (await client.get(f"/v1/request/{theirs}", headers={"Authorization": f"Bearer {other_key}"})).json()
    assert (mine["model"], mine["response_body"]) == ("mine", "my answer")
    assert (other["model"], other["response_body"]) == ("theirs", "their answer")
    assert await query(client) == [theirs]


async def test_errors_are_clear(api):
    client, *_ = api
    r = await client.get("/v1/request/not-a-uuid")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "request_id"
    assert "UUID" in r.json()["error"]["details"][0]["message"]
    r = await client.post("/v1/request/query", json={"limit": 0, "filter": {"start": "2026-01-02", "end": "2026-01-01"}})
    assert r.status_code == 422
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert "limit" in fields and "filter" in fields
    r = await client.post("/v1/request/query", json={"filter": {"modle": "typo"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "filter.modle"
    r = await client.post("/v1/request/query", json={}, headers={"Authorization": ""})
    assert r.status_code == 401
    r = await client.post("/v1/request/query", json={}, headers={"Authorization": "Bearer sk-helicone-nope"})
    assert r.status_code == 401


async def test_key_store_outage_is_a_503(api):
    client, state, *_ = api

    class Down:
        def lookup(self, key):
            raise db.KeyStoreUnavailable("no key set loaded")

        async def stop(self):
            pass

    state.keys = Down()
    r = await client.post("/v1/request/query", json={})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json() == {"error": {"type": "http_error", "message": "key store unavailable; try again shortly"}}


async def test_ops_endpoints(api):
    client, *_ = api
    assert (await client.get("/readyz")).json()["ready"] is True
    assert "helicone_api_queries_total" in (await client.get("/metrics")).text


async def test_readiness_reports_postgres_and_clickhouse_as_they_are(tmp_path, fresh_db_dsn, clickhouse_http_url):
    """Each check is a real round trip with a short timeout: a cut connection shows within it."""
    import time
    import urllib.parse
    import uuid

    from tests.support.fault_proxy import FaultProxy, postgres_proxy

    pg_proxy, dsn = await postgres_proxy(fresh_db_dsn)
    ch = urllib.parse.urlsplit(clickhouse_http_url)
    ch_proxy = await FaultProxy(ch.hostname, ch.port).start()
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=dsn, analytics_backend="clickhouse",
                           clickhouse_url=f"http://127.0.0.1:{ch_proxy.port}", clickhouse_database="t_" + uuid.uuid4().hex[:10],
                           readiness_timeout=0.5, _env_file=None)
    app = create_app(settings)
    state = app.state.api
    await state.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    try:
        async def readyz() -> tuple[int, dict[str, bool]]:
            r = await client.get("/readyz")
            checks = r.json()["checks"]
            assert checks.pop("kafka")["required"] is False  # only async logs wait for Kafka
            assert all(c["required"] for c in checks.values())
            return r.status_code, {name: c["ok"] for name, c in checks.items()}

        assert await readyz() == (200, {"postgres": True, "analytics": True, "bodies": True, "key_store": True})
        pg_proxy.cut()
        started = time.monotonic()
        assert await readyz() == (503, {"postgres": False, "analytics": True, "bodies": True, "key_store": True})
        assert time.monotonic() - started < 2
        pg_proxy.restore()
        ch_proxy.cut()
        status, checks = await readyz()
        assert status == 503 and checks["analytics"] is False and checks["postgres"] is True
        ch_proxy.restore()
        assert (await readyz())[0] == 200
    finally:
        await client.aclose()
        pg_proxy.restore()
        ch_proxy.restore()
        await state.stop()
        await pg_proxy.stop()
        await ch_proxy.stop()


async def test_the_detail_lists_every_upstream_try_and_the_fallback_that_answered(api):
    client, state, org, _, _ = api
    tries = [
        {"target_url": "https://api.openai.com", "provider": "openai", "status": 503, "error": "", "latency_ms": 40,
         "fallback_index": 0, "retry": 0},
        {"target_url": "https://api.openai.com", "provider": "openai", "status": 0, "error": "ClientConnectorError: upstream request failed",
         "latency_ms": 3, "fallback_index": 0, "retry": 1},
        {"target_url": "https://backup.example", "provider": "openai", "status": 200, "error": "", "latency_ms": 90,
         "fallback_index": 1, "retry": 0},
    ]
    fell_back = await add_request(state, org, minutes=0, attempts=tries, fallback_index=1)
    plain = await add_request(state, org, minutes=1)
    row = (await client.get(f"/v1/request/{fell_back}")).json()
    assert row["attempts"] == tries and row["fallback_index"] == 1
    row = (await client.get(f"/v1/request/{plain}")).json()
    assert row["attempts"] == [] and row["fallback_index"] == 0


async def test_a_row_without_body_keys_is_answered_with_null_bodies(api):
    client, state, org, _, _ = api
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=org, status=200,
                              provider="openai", model="gpt-4o", latency_ms=5, time_to_first_token_ms=-1)
    events.set_time(ev.request_created_at, T0)
    row = events.analytics_row(ev, request_key="", response_key="", request_bytes=0, response_bytes=0,
                               request_content_type="", response_content_type="", truncated=False)
    await state.analytics.insert("request_log", [row])
    r = await client.get(f"/v1/request/{ev.request_id}")
    assert r.status_code == 200, r.text
    assert (r.json()["request_body"], r.json()["response_body"]) == (None, None)


async def test_bodies_ingest_wrote_into_body_packs_come_back_and_a_replay_writes_the_same(api):
    """Ingest stores a batch's bodies in one object per org (byte ranges in the rows); the api returns them
    like bodies stored one object each (rows written before packs), and replaying the batch changes nothing."""
    from helicone_core.metrics import ServiceMetrics
    from helicone_ingest.metadata import PendingMetadata
    from helicone_ingest.writer import BatchWriter

    client, state, org, other_org, _ = api
    metrics = ServiceMetrics("ingest")
    writer = BatchWriter(state.analytics, state.bodies, PendingMetadata(metrics), metrics)
    evs = []
    for i, o in enumerate([org, org, other_org, org]):
        ev = events.RequestLogged(
            schema_version=1, request_id=events.new_request_id(), org_id=o, status=200, provider="openai", model="gpt-4o",
            inline=events.InlineBodies(request_body=b'{"n":%d}' % i, request_content_type="application/json",
                                       response_body=b"" if i == 3 else b"data: %d\n\n" % i,
                                       response_content_type="text/event-stream"))
        events.set_time(ev.request_created_at, T0 + dt.timedelta(seconds=i))
        evs.append(ev)
    raws = [events.encode(e) for e in evs]
    await writer.write(writer.decode(raws)[0])
    old = await add_request(state, org, minutes=1, response=b'{"old":true}')  # one object per body

    async def detail(rid):
        r = await client.get(f"/v1/request/{rid}")
        assert r.status_code == 200, r.text
        return r.json()["request_body"], r.json()["response_body"]

    assert [await detail(e.request_id) for e in (evs[0], evs[1], evs[3])] == [
        ({"n": 0}, "data: 0\n\n"), ({"n": 1}, "data: 1\n\n"), ({"n": 3}, None)]
    assert (await client.get(f"/v1/request/{evs[2].request_id}")).status_code == 404  # another org's
    assert await detail(old) == ({"model": "gpt-4o-mini"}, {"old": True})
    packs = sorted(p.relative_to(state.bodies.root) for p in state.bodies.root.rglob("packs/*"))
    assert len(packs) == 2 and all(str(p).startswith(f"orgs/{o}/packs/") for p, o in zip(packs, sorted([org, other_org]), strict=True))

    sql = ("SELECT request_id, request_body_key, response_body_key FROM {db}.request_log FINAL ORDER BY request_id "
           "SETTINGS output_format_json_quote_64bit_integers = 0")
    rows = await state.analytics.query(sql)
    await writer.write(writer.decode(list(reversed(raws)))[0])  # replayed, in another order: the same pack, the same rows
    assert await state.analytics.query(sql) == rows
    assert sorted(p.relative_to(state.bodies.root) for p in state.bodies.root.rglob("packs/*")) == packs
    await writer.write(writer.decode(raws[1:2])[0])  # replayed in another batch: its own pack, the same bodies
    assert await detail(evs[1].request_id) == ({"n": 1}, "data: 1\n\n")
    assert len(await state.analytics.query(sql)) == len(rows)
