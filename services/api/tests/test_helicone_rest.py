"""Helicone's REST routes a script calls that this api lacked (helicone_api.helicone_rest; Helicone/helicone
valhalla/jawn/src/controllers/public/{user,session,property,request}Controller.ts), on each analytics backend: a body
as Helicone's docs (docs.helicone.ai/rest) write it is answered `{"data": ..., "error": null}` with Helicone's field
names, over the caller's org alone. Every expected number is computed here from the rows logged."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

import pytest

from services.api.tests import test_api, test_insights
from services.api.tests.test_insights import T0, by, dataset, iso, log, post

api = test_api.api
logged = test_insights.logged

HELICONE_TREE = {"request_response_rmt": {"model": {"equals": "gpt-4o"}}}


def seconds(t: dt.datetime) -> int:
    return int(t.timestamp())


def expected_user(user: str, rows: list[dict]) -> dict:
    n, days = len(rows), len({r["created"].date() for r in rows})
    prompt, completion = sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows)
    return {"id": user, "user_id": user, "active_for": days, "first_active": iso(min(r["created"] for r in rows)),
            "last_active": iso(max(r["created"] for r in rows)), "total_requests": n,
            "average_requests_per_day_active": pytest.approx(n / days), "average_tokens_per_request": pytest.approx((prompt + completion) / n),
            "total_completion_tokens": completion, "total_prompt_tokens": prompt,
            "cost": pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9)}


def users_of(rows: list[dict]) -> list[dict]:
    return [expected_user(u, rs) for u, rs in by([r for r in rows if r["user"]], lambda r: r["user"]).items()]


async def test_user_metrics_answer_helicones_user_page_sorted_paged_and_filtered(logged):
    client, state, org, other_key, mine, theirs = logged
    body = {"filter": "all", "offset": 0, "limit": 10}
    r = await post(client, "/v1/user/metrics/query", body)
    users = users_of(mine)
    assert r["error"] is None and (r["data"]["count"], r["data"]["hasUsers"]) == (len(users), True)
    assert r["data"]["users"] == sorted(users, key=lambda u: u["last_active"], reverse=True)  # Helicone's default order

    for helicone, field in (("cost", "cost"), ("total_requests", "total_requests"), ("active_for", "active_for"),
                            ("average_tokens_per_request", "average_tokens_per_request"), ("user_id", "user_id"),
                            ("average_requests_per_day_active", "average_requests_per_day_active"),
                            ("total_prompt_tokens", "total_prompt_tokens"), ("first_active", "first_active")):
        for direction in ("asc", "desc"):
            got = (await post(client, "/v1/user/metrics/query", {**body, "sort": {helicone: direction}}))["data"]["users"]
            want = sorted(sorted(users, key=lambda u: u["user_id"]), key=lambda u: getattr(u[field], "expected", u[field]),
                          reverse=direction == "desc")
            assert [u["user_id"] for u in got] == [u["user_id"] for u in want], (helicone, direction)

    # pages of 2: together the whole list once, each with the count of all
    pages = []
    for offset in range(0, len(users), 2):
        page = (await post(client, "/v1/user/metrics/query", {**body, "offset": offset, "limit": 2, "sort": {"total_requests": "desc"}}))["data"]
        assert page["count"] == len(users)
        pages += [u["user_id"] for u in page["users"]]
    assert sorted(pages) == sorted(u["user_id"] for u in users) and len(pages) == len(users)

    # Helicone's timeFilter (Unix seconds, both ends left out) and its filter tree narrow the requests counted
    start, end = T0 + dt.timedelta(hours=10), T0 + dt.timedelta(hours=40)
    inside = [r for r in mine if start < r["created"] < end and r["model"] == "gpt-4o"]
    got = (await post(client, "/v1/user/metrics/query", {**body, "filter": HELICONE_TREE, "sort": {"user_id": "asc"},
                                                         "timeFilter": {"startTimeUnixSeconds": seconds(start), "endTimeUnixSeconds": seconds(end)},
                                                         "timeZoneDifferenceMinutes": -60}))["data"]
    assert got["users"] == sorted(users_of(inside), key=lambda u: u["user_id"]) and got["count"] == len(users_of(inside))

    # the other org's key sees its own users of the same ids
    got = (await post(client, "/v1/user/metrics/query", body, headers={"Authorization": f"Bearer {other_key}"}))["data"]
    assert got["users"] == sorted(users_of(theirs), key=lambda u: u["last_active"], reverse=True)


def qexact(values: list[float], level: float) -> float:
    """ClickHouse's quantileExact: the value at index floor(level * n) of the sorted values."""
    s = sorted(values)
    return s[min(int(level * len(s)), len(s) - 1)]


def histogram(values: list[float], level: float, interquartile: bool = False) -> list[tuple]:
    """10 equal slices between the smallest (or the 1 - level quantile) and the level quantile, those holding values."""
    hi = qexact(values, level)
    lo = qexact(values, round(1 - level, 6)) if interquartile else min(values)
    kept = [v for v in values if lo <= v <= hi]
    if hi <= lo:
        return [(pytest.approx(lo), pytest.approx(hi), len(kept))]
    slots = Counter(min(int((v - lo) / (hi - lo) * 10), 9) for v in kept)
    w = (hi - lo) / 10
    return [(pytest.approx(lo + i * w), pytest.approx(hi if i == 9 else lo + (i + 1) * w), slots[i]) for i in range(10) if slots[i]]


def rows_of(histogram_rows: list[dict]) -> list[tuple]:
    return [(float(h["range_start"]), float(h["range_end"]), h["value"]) for h in histogram_rows]


def session_values(rows: list[dict]) -> dict[str, list[float]]:
    sessions = by([r for r in rows if r["session_id"]], lambda r: r["session_id"]).values()
    return {
        "session_count": [len(s) for s in sessions],
        "session_duration": [(max(r["created"] for r in s) - min(r["created"] for r in s)) / dt.timedelta(milliseconds=1) / 1000
                             for s in sessions],
        "session_cost": [sum(r["cost_usd"] for r in s) for s in sessions],
    }


def spread(rows: list[dict], field: str, prefix: str, n: int, seed: int) -> list[dict]:
    """The rows over n sessions (users) of uneven sizes, so that each distribution has many values."""
    rnd = random.Random(seed)
    return [{**r, field: f"{prefix}{min(int(rnd.expovariate(0.15)), n - 1)}"} for r in rows]


async def test_session_metrics_are_histograms_and_means_of_each_sessions_requests_duration_and_cost(logged):
    client, state, org, other_key, mine, theirs = logged
    extra = spread(dataset(seed=31, n=300), "session_id", "many-", 40, seed=1)
    await log(state, org, extra)
    mine = mine + extra
    for p_size, level, iqr in (("p75", 0.75, False), ("p50", 0.5, True), ("p99.9", 0.999, False)):
        body = {"nameContains": "", "timezoneDifference": 0, "pSize": p_size, "useInterquartile": iqr, "filter": "all"}
        r = await post(client, "/v1/session/metrics/query", body)
        assert r["error"] is None
        for name, values in session_values(mine).items():
            assert rows_of(r["data"][name]) == histogram(values, level, iqr), (p_size, name)
            assert r["data"]["average"][name] == [{"average": pytest.approx(sum(values) / len(values))}], name
    assert rows_of((await post(client, "/v1/session/metrics/query", {}))["data"]["session_count"]) == histogram(
        session_values(mine)["session_count"], 0.75)  # Helicone's default pSize

    # nameContains (any case), timeFilter (Unix ms, both ends out) and the filter narrow the requests counted
    start, end = T0 + dt.timedelta(hours=5), T0 + dt.timedelta(hours=60)
    chosen = [r for r in mine if "NAME OF SESS".lower() in r["session_name"].lower() and start < r["created"] < end and r["model"] != "o3-mini"]
    body = {"nameContains": "NAME OF SESS", "timeFilter": {"startTimeUnixMs": int(start.timestamp() * 1000), "endTimeUnixMs": int(end.timestamp() * 1000)},
            "filter": {"request_response_rmt": {"model": {"not-equals": "o3-mini"}}}, "timezoneDifference": 0}
    r = await post(client, "/v1/session/metrics/query", body)
    for name, values in session_values(chosen).items():
        assert rows_of(r["data"][name]) == histogram(values, 0.75), name
    assert sum(h["value"] for h in r["data"]["session_count"]) < len(session_values(mine)["session_count"])

    theirs_r = await post(client, "/v1/session/metrics/query", {}, headers={"Authorization": f"Bearer {other_key}"})
    assert rows_of(theirs_r["data"]["session_cost"]) == histogram(session_values(theirs)["session_cost"], 0.75)
    empty = await post(client, "/v1/session/metrics/query", {"nameContains": "no session is named so"})
    assert empty["data"] == {"session_count": [], "session_duration": [], "session_cost": [],
                             "average": {"session_count": [{"average": None}], "session_duration": [{"average": None}],
                                         "session_cost": [{"average": None}]}}


async def test_user_metrics_overview_is_histograms_of_requests_and_cost_per_user(logged):
    client, state, org, other_key, mine, theirs = logged
    extra = spread(dataset(seed=32, n=300), "user", "user-", 40, seed=2)
    await log(state, org, extra)
    mine = mine + extra
    users = by([r for r in mine if r["user"]], lambda r: r["user"]).values()
    for p_size, level, iqr in (("p95", 0.95, False), ("p75", 0.75, True)):
        r = await post(client, "/v1/user/metrics-overview/query", {"filter": "all", "pSize": p_size, "useInterquartile": iqr})
        assert r["error"] is None
        assert rows_of(r["data"]["request_count"]) == histogram([len(u) for u in users], level, iqr)
        assert rows_of(r["data"]["user_cost"]) == histogram([sum(x["cost_usd"] for x in u) for u in users], level, iqr)
    gpt4o = by([r for r in mine if r["user"] and r["model"] == "gpt-4o"], lambda r: r["user"]).values()
    r = await post(client, "/v1/user/metrics-overview/query", {"filter": HELICONE_TREE, "pSize": "p99", "useInterquartile": False})
    assert rows_of(r["data"]["request_count"]) == histogram([len(u) for u in gpt4o], 0.99)


async def test_session_names_list_each_name_with_its_sessions_times_latency_and_cost(logged):
    client, state, org, other_key, mine, theirs = logged

    def expected(rows: list[dict]) -> list[dict]:
        out = []
        for name, rs in by([r for r in rows if r["session_id"]], lambda r: r["session_name"]).items():
            first, last = iso(min(r["created"] for r in rs)), iso(max(r["created"] for r in rs))
            out.append({"name": name, "created_at": first, "first_used": first, "last_used": last,
                        "session_count": len({r["session_id"] for r in rs}),
                        "avg_latency": pytest.approx(sum(r["latency_ms"] for r in rs) / len(rs)),
                        "total_cost": pytest.approx(sum(r["cost_usd"] for r in rs), rel=1e-9)})
        return sorted(sorted(out, key=lambda n: n["name"]), key=lambda n: n["last_used"], reverse=True)

    r = await post(client, "/v1/session/name/query", {"nameContains": "", "timezoneDifference": 0})
    assert r["error"] is None and r["data"] == expected(mine) and len(r["data"]) > 2
    r = await post(client, "/v1/session/name/query", {"nameContains": "Of SESS-check", "timezoneDifference": 0, "filter": HELICONE_TREE})
    assert r["data"] == expected([x for x in mine if "of sess-check" in x["session_name"].lower() and x["model"] == "gpt-4o"])
    assert len((await post(client, "/v1/session/name/query", {"limit": 1}))["data"]) == 1
    other = await post(client, "/v1/session/name/query", {"nameContains": ""}, headers={"Authorization": f"Bearer {other_key}"})
    assert other["data"] == expected(theirs)


async def test_property_list_and_search_read_the_orgs_properties_and_their_puts(api):
    client, state, org, other_org, other_key = api
    rows = dataset(seed=21, n=40)
    await log(state, org, rows)
    await log(state, other_org, [{**r, "props": {"secret": "theirs", "env": "their-env"}} for r in dataset(seed=22, n=5)])
    counts = Counter(k for r in rows for k in r["props"])
    r = await post(client, "/v1/property/query", {})
    assert r == {"data": [{"property": k} for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))], "error": None}
    assert (await client.post("/v1/property/query")).json() == r  # Helicone's body is empty: none at all is the same

    def values(term: str, key: str = "env") -> list[str]:
        found = Counter(x["props"][key] for x in rows if key in x["props"] and term.lower() in x["props"][key].lower())
        return [v for v, _ in sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))]

    assert (await post(client, "/v1/property/ENV/search", {"searchTerm": "PRO"}))["data"] == values("pro") == ["prod"]
    assert (await post(client, "/v1/property/env/search", {"searchTerm": ""}))["data"] == values("")
    assert (await post(client, "/v1/property/feature/search", {"searchTerm": "a"}))["data"] == values("a", "feature")

    # a property put on a request is listed and found, the key and the value
    plain = next(x for x in rows if "env" not in x["props"])
    assert (await client.put(f"/v1/request/{plain['id']}/property", json={"key": "Stage", "value": "canary-1"})).status_code == 200
    assert {"property": "stage"} in (await post(client, "/v1/property/query", {}))["data"]
    assert (await post(client, "/v1/property/stage/search", {"searchTerm": "NARY"}))["data"] == ["canary-1"]
    assert (await post(client, "/v1/property/secret/search", {"searchTerm": ""}))["data"] == []  # the other org's


async def test_query_clickhouse_is_helicones_second_name_for_the_request_query(logged):
    client, *_ = logged
    body = {"filter": HELICONE_TREE, "isCached": False, "limit": 7, "offset": 2, "sort": {"created_at": "desc"},
            "isScored": False, "isPartOfExperiment": False}
    r = await post(client, "/v1/request/query-clickhouse", body)
    assert r == await post(client, "/v1/request/query", body) and len(r["data"]) == 7
    assert {d["model"] for d in r["data"]} == {"gpt-4o"}


async def test_bad_helicone_bodies_are_a_422_naming_the_field_and_no_key_reads_nothing(api):
    client, state, org, other_org, other_key = api

    async def field(path: str, body: dict) -> str:
        r = await client.post(path, json=body)
        assert r.status_code == 422, (path, body, r.text)
        return r.json()["error"]["details"][0]["field"]

    assert await field("/v1/user/metrics/query", {"limit": 1001}) == "limit"
    assert await field("/v1/user/metrics/query", {"sort": {"rate_limited_count": "desc"}}) == "sort"
    assert await field("/v1/user/metrics/query", {"sort": {"cost": "up"}}) == "sort"
    assert await field("/v1/user/metrics/query", {"filter": {"users_view": {"user_cost": {"gt": 1}}}}) == "filter.users_view"
    assert await field("/v1/user/metrics/query", {"timeFilter": {"startTimeUnixSeconds": 5, "endTimeUnixSeconds": 4}}) == "timeFilter"
    assert await field("/v1/user/metrics/query", {"filter": {"start": "2026-03-01T00:00:00Z"},
                                                  "timeFilter": {"startTimeUnixSeconds": 1, "endTimeUnixSeconds": 9}}) == "timeFilter"
    assert await field("/v1/user/metrics-overview/query", {"pSize": "p42"}) == "pSize"
    assert await field("/v1/session/metrics/query", {"timezoneDifference": 99999}) == "timezoneDifference"
    assert await field("/v1/session/metrics/query", {"filter": {"sessions_request_response_rmt": {}}}) == "filter.sessions_request_response_rmt"
    assert await field("/v1/session/name/query", {"timeFilter": {"startTimeUnixMs": "yesterday", "endTimeUnixMs": 1}}) == "timeFilter.startTimeUnixMs"
    assert await field("/v1/property/query", {"bogus": 1}) == "bogus"
    assert await field("/v1/property/env/search", {}) == "searchTerm"
    # an org without users: none listed, and Helicone's hasUsers says so
    await log(state, org, [{**r, "user": ""} for r in dataset(seed=23, n=3)])
    await log(state, other_org, dataset(seed=24, n=20))
    r = await post(client, "/v1/user/metrics/query", {"filter": "all", "offset": 0, "limit": 10})
    assert r["data"] == {"users": [], "count": 0, "hasUsers": False}
    for path in ("/v1/user/metrics/query", "/v1/session/metrics/query", "/v1/session/name/query", "/v1/property/query",
                 "/v1/user/metrics-overview/query", "/v1/request/query-clickhouse"):
        assert (await client.post(path, json={}, headers={"Authorization": ""})).status_code == 401, path


async def test_session_feedback_is_a_property_on_the_sessions_first_request(api):
    client, state, org, other_org, other_key = api
    rows = [{**r, "session_id": "chat/42", "session_path": "/"} for r in dataset(seed=25, n=4)]
    await log(state, org, rows)
    await log(state, other_org, [{**r, "session_id": "chat/42"} for r in dataset(seed=26, n=2)])  # the same id, another org
    first = min(rows, key=lambda r: (r["created"], r["id"]))

    r = await client.post("/v1/session/chat/42/feedback", json={"rating": True})  # a session id may hold "/"
    assert r.status_code == 200, r.text
    assert r.json()["error"] is None and r.json()["data"]["request_id"] == first["id"]
    assert (await client.get(f"/v1/request/{first['id']}")).json()["properties"] == {**first["props"], "helicone-session-feedback": "1"}
    tree = {"properties": {"Helicone-Session-Feedback": {"equals": "1"}}}
    assert [d["request_id"] for d in (await post(client, "/v1/request/query", {"filter": tree}))["data"]] == [first["id"]]
    assert (await client.post("/v1/session/chat/42/feedback", json={"rating": False})).status_code == 200  # the newer rating wins
    assert (await client.get(f"/v1/request/{first['id']}")).json()["properties"]["helicone-session-feedback"] == "0"
    other = await client.post("/v1/request/query", json={"filter": {"properties": {"helicone-session-feedback": {"in": ["0", "1"]}}}},
                              headers={"Authorization": f"Bearer {other_key}"})
    assert other.json()["data"] == []  # the other org's session of the same id is untouched

    r = await client.post("/v1/session/no-such-session/feedback", json={"rating": True})
    assert r.status_code == 404, r.text
    r = await client.post("/v1/session/chat/42/feedback", json={"rating": "yes"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "rating", r.text


@pytest.mark.parametrize("key", ["k" * 257, "İ" * 200])  # past the filter's 256 characters (İ is two in lower case)
async def test_a_property_search_on_a_name_no_property_can_have_is_a_422_naming_the_key(api, key):
    client = api[0]
    r = await client.post(f"/v1/property/{key}/search", json={"searchTerm": "a"})
    assert r.status_code == 422, r.text
    [problem] = r.json()["error"]["details"]
    assert problem["field"] == "key" and "256 characters" in problem["message"]
