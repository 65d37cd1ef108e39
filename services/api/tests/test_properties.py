"""PUT /v1/request/{id}/property (Helicone's: add or change one custom property of a logged request) on each
analytics backend: the new value is what every reader sees (the request, queries and exports, property filters,
the property endpoints, groupings and sessions), a put is idempotent and leaves the other properties alone, key
and value follow the gateway's Helicone-Property-* rule, and only the caller's org's logged requests take one."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json

from helicone_core import events
from helicone_core.log_headers import MAX_PROPERTIES

from services.api.tests import test_api
from services.api.tests.test_api import T0, add_request, query

api = test_api.api  # the fixture: an api on a real Postgres and each analytics backend

DAY = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}  # whole UTC days: the pre-aggregated reads


async def put(client, rid, key, value, **kw):
    return await client.put(f"/v1/request/{rid}/property", json={"key": key, "value": value}, **kw)


async def properties(client, rid, **kw) -> dict:
    r = await client.get(f"/v1/request/{rid}", **kw)
    assert r.status_code == 200, r.text
    return r.json()["properties"]


async def values(client, key: str, filter_: dict) -> dict[str, int]:
    r = await client.post(f"/v1/property/{key}/values", json={"filter": filter_})
    assert r.status_code == 200, r.text
    return {d["value"]: d["requests"] for d in r.json()["data"]}


async def keys(client) -> dict[str, int]:
    r = await client.get("/v1/property/keys", params=DAY)
    assert r.status_code == 200, r.text
    return {d["key"]: d["requests"] for d in r.json()["data"]}


async def test_a_put_property_is_on_the_request_and_in_its_queries_and_exports(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0, props={"team": "search", "env": "dev"})
    other = await add_request(state, org, minutes=1, props={"env": "dev"})

    r = await put(client, rid, "Env", " prod ")  # read as the gateway reads Helicone-Property-Env:  prod
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["request_id"], body["key"], body["value"]) == (rid, "env", "prod")
    assert body["properties"] == {"team": "search", "env": "prod"} and body["updated_at"].endswith("Z")
    assert await properties(client, rid) == {"team": "search", "env": "prod"}
    assert (await put(client, rid, "env", "prod")).status_code == 200  # the same put again: still one value
    rows = await state.analytics.query(
        "SELECT key, value FROM {db}.request_property_overrides FINAL WHERE org_id = {org:String}", {"org": org}
    )
    assert rows == [{"key": "env", "value": "prod"}]
    r = await put(client, rid, "stage", "beta")  # a new key: the others stay
    assert r.json()["properties"] == {"team": "search", "env": "prod", "stage": "beta"}
    assert await properties(client, rid) == {"team": "search", "env": "prod", "stage": "beta"}
    assert await properties(client, other) == {"env": "dev"}

    # every filter form reads the put value, never the logged one
    assert await query(client, filter={"properties": {"env": "prod"}}) == [rid]
    assert await query(client, filter={"properties": {"ENV": "dev"}}) == [other]
    assert await query(client, filter={"properties": {"stage": "beta", "team": "search"}}) == [rid]
    assert await query(client, filter={"properties": {"env": {"equals": "prod"}}}) == [rid]
    assert await query(client, filter={"properties": {"env": {"not-equals": "prod"}}}) == [other]
    assert await query(client, filter={"request_response_rmt": {"properties": {"stage": {"contains": "BET"}}}}) == [rid]
    assert await query(
        client,
        filter={
            "left": {"properties": {"env": {"in": ["dev"]}}},
            "operator": "or",
            "right": {"properties": {"stage": {"like": "b%"}}},
        },
        sort="created_at_asc",
    ) == [rid, other]
    r = await client.post("/v1/request/query", json={"sort": "created_at_asc"})
    assert [d["properties"] for d in r.json()["data"]] == [{"team": "search", "env": "prod", "stage": "beta"}, {"env": "dev"}]

    r = await client.post("/v1/request/export", json={"format": "jsonl", "filter": {"properties": {"env": "prod"}}})
    assert [json.loads(line)["properties"] for line in r.text.splitlines()] == [
        {"team": "search", "env": "prod", "stage": "beta"}
    ]
    r = await client.post("/v1/request/export", json={"format": "csv", "sort": "created_at_asc"})
    assert [json.loads(rec["properties"]) for rec in csv.DictReader(io.StringIO(r.text))] == [
        {"env": "prod", "stage": "beta", "team": "search"},
        {"env": "dev"},
    ]

    for value in ("canary", "prod"):  # a newer put replaces the older, each time
        await put(client, rid, "env", value)
        assert (await properties(client, rid))["env"] == value
        assert await query(client, filter={"properties": {"env": value}}) == [rid]


async def test_breakdowns_groupings_and_sessions_read_the_put_values(api):
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, props={"env": "dev"}, session_id="s1", session_path="/a")
    b = await add_request(state, org, minutes=1, props={"env": "dev"}, session_id="s1", session_path="/a/b")
    c = await add_request(state, org, minutes=2, props={"env": "prod"}, model="gpt-4o")
    d = await add_request(state, org, minutes=3)
    assert await values(client, "env", DAY) == {"dev": 2, "prod": 1}
    assert await keys(client) == {"env": 3}

    await put(client, b, "env", "prod")  # a changed value
    await put(client, d, "env", "dev")  # a key the request had not logged
    await put(client, a, "feature", "chat")  # a key no request logged
    await put(client, c, "env", "prod")  # the logged value again: nothing changes
    expected = {"prod": 2, "dev": 2}
    for window in (DAY, {"start": "2026-03-01T11:30:00Z", "end": "2026-03-01T12:30:00Z"}):  # whole days, and not
        assert await values(client, "env", window) == expected
    assert await values(client, "env", {**DAY, "model": "gpt-4o-mini"}) == {"prod": 1, "dev": 2}  # a filter beyond time
    assert await values(client, "feature", DAY) == {"chat": 1}
    assert await keys(client) == {"env": 4, "feature": 1}

    r = await client.post("/v1/metrics/timeseries", json={**DAY, "bucket": "day", "group_by": "property:env"})
    assert {d["group"]: d["requests"] for d in r.json()["data"]} == expected
    # the puts change no total: each request still counts once
    r = await client.get("/v1/metrics/summary", params=DAY)
    assert r.json()["requests"] == 4
    r = await client.post("/v1/metrics/breakdown", json={**DAY, "by": "model"})
    assert {d["key"]: d["requests"] for d in r.json()["data"]} == {"gpt-4o-mini": 3, "gpt-4o": 1}

    session = (await client.get("/v1/session/s1")).json()
    tree = session["tree"]["children"][0]
    assert tree["requests"][0]["properties"] == {"env": "dev", "feature": "chat"}
    assert tree["children"][0]["requests"][0]["properties"] == {"env": "prod"}
    r = await client.post("/v1/session/query", json={"filter": {"properties": {"env": {"equals": "prod"}}}})
    assert [(s["session_id"], s["requests"]) for s in r.json()["data"]] == [("s1", 1)]
    r = await client.post("/v1/user/query", json={"filter": {"properties": {"env": "dev"}}})
    assert [(u["user_id"], u["requests"]) for u in r.json()["data"]] == [("alice", 2)]


async def test_puts_reach_only_the_callers_own_logged_requests(api):
    client, state, org, other_org, other_key = api
    theirs = await add_request(state, other_org, minutes=0, props={"env": "dev"})
    unknown = events.new_request_id()
    for rid in (theirs, unknown):
        r = await put(client, rid, "env", "prod")
        assert r.status_code == 404 and r.json()["error"]["message"] == f"request {rid} not found", r.text
    them = {"Authorization": f"Bearer {other_key}"}
    assert await properties(client, theirs, headers=them) == {"env": "dev"}
    # the same request id logged by both orgs: each org's put is its own
    await add_request(state, org, minutes=1, request_id=theirs, props={"env": "dev"})
    assert (await put(client, theirs, "env", "ours")).status_code == 200
    assert await properties(client, theirs) == {"env": "ours"}
    assert await properties(client, theirs, headers=them) == {"env": "dev"}
    r = await client.post("/v1/request/query", json={"filter": {"properties": {"env": "ours"}}}, headers=them)
    assert r.json()["data"] == []
    r = await client.post("/v1/property/env/values", json={"filter": DAY}, headers=them)
    assert [(d["value"], d["requests"]) for d in r.json()["data"]] == [("dev", 1)]
    # no key: no put
    r = await put(client, theirs, "env", "x", headers={"Authorization": ""})
    assert r.status_code == 401
    assert await properties(client, theirs) == {"env": "ours"}


async def test_keys_and_values_follow_the_gateways_header_rule(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0, props={"env": "dev"})
    bad = [
        ({"key": "my key", "value": "x"}, "key", "cannot be sent as a Helicone-Property-<name> header"),
        ({"key": "", "value": "x"}, "key", "needs a name after the prefix"),
        ({"key": "é", "value": "x"}, "key", "cannot be sent as a Helicone-Property-<name> header"),
        ({"key": "k" * 257, "value": "x"}, "key", "longer than 256 characters"),
        ({"key": "env", "value": "a\nb"}, "value", "control characters"),
        ({"key": "env", "value": "v" * 4097}, "value", "longer than 4096 characters"),
        ({"key": "env", "value": "\ud800"}, "value", "lone surrogate"),
        ({"key": "env", "value": 5}, "value", "string"),
        ({"key": "env"}, "value", "required"),
        ({"key": "env", "value": "x", "extra": 1}, "extra", "not permitted"),
    ]
    for body, field, message in bad:
        # as JSON text: httpx would not encode the lone surrogate
        r = await client.put(
            f"/v1/request/{rid}/property", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422, (body, r.text)
        [detail] = r.json()["error"]["details"]
        assert detail["field"] == field and message in detail["message"], (body, detail)
    r = await client.put(f"/v1/request/{events.new_request_id()[:-1]}/property", json={"key": "env", "value": "x"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "request_id"
    assert await properties(client, rid) == {"env": "dev"}  # nothing was written

    longest = {"k" * 256: "v\tw" + "x" * 4093, "a.b_c-d~e!#$%&'*+^`|": ""}  # the longest name and value, every token mark
    for key, value in longest.items():
        assert (await put(client, rid, key, value)).status_code == 200
    assert await properties(client, rid) == {"env": "dev", **longest}


async def test_a_request_takes_no_more_properties_than_the_gateway_logs(api):
    client, state, org, _, _ = api
    full = {f"p{i}": "v" for i in range(MAX_PROPERTIES)}
    rid = await add_request(state, org, minutes=0, props=full)
    r = await put(client, rid, "one-more", "v")
    assert r.status_code == 409 and f"at most {MAX_PROPERTIES}" in r.json()["error"]["message"], r.text
    assert (await put(client, rid, "p0", "changed")).status_code == 200  # changing one is fine
    assert await properties(client, rid) == {**full, "p0": "changed"}
    spare = await add_request(state, org, minutes=1, props={f"p{i}": "v" for i in range(MAX_PROPERTIES - 1)})
    assert (await put(client, spare, "last", "v")).status_code == 200
    assert (await put(client, spare, "past-the-last", "v")).status_code == 409


async def test_concurrent_puts_of_new_keys_never_take_a_request_past_its_limit(api):
    """Puts of new keys arriving together on a request one short of its limit: one is added, the others get the 409;
    a put changing a key it has goes through alongside them."""
    client, state, org, _, _ = api
    logged = {f"p{i}": "v" for i in range(MAX_PROPERTIES - 1)}
    rid = await add_request(state, org, minutes=0, props=logged)
    answers = await asyncio.gather(*(put(client, rid, key, "v") for key in ("new-a", "new-b", "new-c", "p0")))
    assert sorted(r.status_code for r in answers[:3]) == [200, 409, 409], [r.text for r in answers]
    assert answers[3].status_code == 200
    [added] = [key for key, r in zip(("new-a", "new-b", "new-c"), answers[:3], strict=True) if r.status_code == 200]
    assert await properties(client, rid) == {**logged, added: "v"}


async def test_a_put_keeps_the_logged_request_time_for_retention(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=5, props={"env": "dev"})
    await put(client, rid, "env", "prod")
    rows = await state.analytics.query(
        "SELECT request_created_at FROM {db}.request_property_overrides WHERE org_id = {org:String}", {"org": org}
    )
    assert [dt.datetime.fromisoformat(r["request_created_at"]).replace(tzinfo=dt.timezone.utc) for r in rows] == [
        T0 + dt.timedelta(minutes=5)
    ]
