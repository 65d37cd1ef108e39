"""Dashboard analytics endpoints (sessions, users, properties, time series, breakdowns, summary) on each
analytics backend. Rows go in as ingest writes them (events.analytics_row into the store); every
expected number is computed here in Python from the same rows, never read back from ClickHouse."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import urllib.parse
from collections import defaultdict
from zoneinfo import ZoneInfo

import pytest
from helicone_core import events
from helicone_core.analytics import QUANTILE_ACCURACY
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.api.tests import test_api, test_fuzz_api

api = test_api.api  # the fixture: an api on a real Postgres and each analytics backend

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-3-5-sonnet", "o3-mini")
PROVIDERS = {"gpt-4o-mini": "openai", "gpt-4o": "openai", "claude-3-5-sonnet": "anthropic", "o3-mini": "openai"}
PATHS = ("", "/", "/plan", "/plan/search", "plan/search/", "/answer", "/plan//fetch")


def is_error(r: dict) -> bool:
    return r["status"] >= 400 or r["status"] == 0 or bool(r["error"])


def dataset(seed: int, n: int = 160, start: dt.datetime = T0, hours: int = 72) -> list[dict]:
    """Requests as a gateway would log them: several models, users, sessions with paths, properties,
    failures (4xx/5xx and no response), streamed and non-streamed, spread over `hours`."""
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        model = rnd.choice(MODELS)
        status = rnd.choices((200, 429, 500, 0), weights=(80, 8, 6, 6))[0]
        session = rnd.choice(("", "", "sess-checkout-1", "sess-checkout-2", "Sess-Search-9", "onboarding"))
        props = {}
        if rnd.random() < 0.7:
            props["env"] = rnd.choice(("prod", "staging"))
        if rnd.random() < 0.4:
            props["feature"] = rnd.choice(("chat", "summarize", "chat"))
        prompt, completion = rnd.randint(1, 3000), rnd.randint(0, 800)
        rows.append({
            "id": events.new_request_id(),
            "created": start + dt.timedelta(milliseconds=rnd.randint(0, hours * 3_600_000 - 1)),
            "latency_ms": rnd.randint(40, 9000),
            "ttft_ms": rnd.choice((-1, rnd.randint(20, 900))),
            "status": status,
            "error": "connect: upstream request failed" if status == 0 else "",
            "model": model,
            "provider": PROVIDERS[model],
            "user": rnd.choice(("", "alice", "bob", "carol@example.com", "Dave")),
            "session_id": session,
            "session_path": rnd.choice(PATHS) if session else "",
            "session_name": (rnd.choice(("", f"name of {session}")) if session else ""),
            "props": props,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": round(prompt * 1.5e-7 + completion * 6e-7, 9),
        })
    return rows


async def log(state, org: str, rows: list[dict]) -> None:
    """Writes rows as ingest does: the event's own analytics row, into request_log."""
    out = []
    for r in rows:
        ev = events.RequestLogged(
            schema_version=1, request_id=r["id"], org_id=org, status=r["status"], provider=r["provider"], model=r["model"],
            method="POST", path="/v1/chat/completions", user_id=r["user"], session_id=r["session_id"],
            session_path=r["session_path"], session_name=r["session_name"], properties=r["props"],
            latency_ms=r["latency_ms"], time_to_first_token_ms=r["ttft_ms"], error=r["error"], source="gateway",
            usage=events.Usage(prompt_tokens=r["prompt_tokens"], completion_tokens=r["completion_tokens"],
                               total_tokens=r["prompt_tokens"] + r["completion_tokens"], known=True),
            cost_usd=r["cost_usd"], cost_known=True, streamed=r["ttft_ms"] >= 0,
        )
        events.set_time(ev.request_created_at, r["created"])
        events.set_time(ev.response_created_at, r["created"] + dt.timedelta(milliseconds=r["latency_ms"]))
        out.append(events.analytics_row(ev, request_key="", response_key="", request_bytes=0, response_bytes=0,
                                        request_content_type="", response_content_type="", truncated=False))
    await state.analytics.insert("request_log", out)


def iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Quantile:
    """Equal to a percentile the api computes with a DDSketch (helicone_core.analytics.AGGREGATES): within
    its relative accuracy of a value between one rank below and one rank above the exact one's neighbours."""

    def __init__(self, values: list[float], q: float) -> None:
        xs = sorted(values)
        pos = q * (len(xs) - 1)
        margin = 1 + QUANTILE_ACCURACY
        self.low, self.high = xs[max(int(pos) - 1, 0)] / margin, xs[min(int(pos) + 2, len(xs) - 1)] * margin

    def __eq__(self, other) -> bool:
        return isinstance(other, (int, float)) and self.low <= other <= self.high

    def __repr__(self) -> str:
        return f"Quantile({self.low}..{self.high})"


def quantile(values: list[float], q: float) -> Quantile | None:
    return Quantile(values, q) if values else None


def totals(rows: list[dict]) -> dict:
    return {"requests": len(rows), "cost_usd": pytest.approx(sum(r["cost_usd"] for r in rows), rel=1e-9, abs=1e-12),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
            "completion_tokens": sum(r["completion_tokens"] for r in rows),
            "total_tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)}


def expected_session(rows: list[dict]) -> dict:
    named = [r for r in rows if r["session_name"]]
    end = max(r["created"] + dt.timedelta(milliseconds=r["latency_ms"]) for r in rows)
    sums, users = totals(rows), sorted({r["user"] for r in rows if r["user"]})
    first, last = iso(min(r["created"] for r in rows)), iso(max(r["created"] for r in rows))
    return {
        "session_id": rows[0]["session_id"],
        "session_name": max(named, key=lambda r: r["created"])["session_name"] if named else None,
        **sums,
        "duration_ms": round((end - min(r["created"] for r in rows)).total_seconds() * 1000),
        "first_seen": first,
        "last_seen": last,
        "errors": sum(map(is_error, rows)),
        "users": users,
        # Helicone's SessionResult names of the same values
        "created_at": first, "latest_request_created_at": last, "total_cost": sums["cost_usd"], "total_requests": len(rows),
        "avg_latency": pytest.approx(sum(r["latency_ms"] for r in rows) / len(rows)), "user_ids": users,
    }


def by(rows: list[dict], key) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return out


async def post(client, path: str, body: dict, **kw) -> dict:
    r = await client.post(path, json=body, **kw)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
async def logged(api):
    """The api, with a realistic dataset in our org and another in the other org that reuses the
    same session ids, user ids, models and property names (so any leak changes the numbers)."""
    client, state, org, other_org, other_key = api
    mine, theirs = dataset(seed=1), dataset(seed=2)
    await log(state, org, mine)
    await log(state, other_org, theirs)
    return client, state, org, other_key, mine, theirs


async def test_sessions_are_listed_with_totals_sorted_searched_and_filtered(logged):
    client, state, org, other_key, mine, theirs = logged
    sessions = by([r for r in mine if r["session_id"]], lambda r: r["session_id"])
    expected = {sid: expected_session(rows) for sid, rows in sessions.items()}

    body = await post(client, "/v1/session/query", {})
    assert (body["limit"], body["offset"]) == (100, 0)
    assert body["data"] == sorted(expected.values(), key=lambda s: s["last_seen"], reverse=True)

    for field in ("requests", "cost_usd", "total_tokens", "duration_ms", "first_seen", "last_seen", "errors"):
        for direction in ("asc", "desc"):
            data = (await post(client, "/v1/session/query", {"sort": {"field": field, "direction": direction}}))["data"]
            want = sorted(expected.values(), key=lambda s: s["session_id"])
            want.sort(key=lambda s: s[field] if field != "cost_usd" else s[field].expected, reverse=direction == "desc")
            assert [s["session_id"] for s in data] == [s["session_id"] for s in want], (field, direction)

    # search: a substring of the id or the name, any case
    data = (await post(client, "/v1/session/query", {"search": "CHECKOUT"}))["data"]
    assert {s["session_id"] for s in data} == {"sess-checkout-1", "sess-checkout-2"}
    data = (await post(client, "/v1/session/query", {"search": "name of onb"}))["data"]
    assert [s["session_id"] for s in data] == (["onboarding"] if expected["onboarding"]["session_name"] else [])
    assert (await post(client, "/v1/session/query", {"search": "no such session"}))["data"] == []

    # a filter narrows the requests each session's totals count
    data = (await post(client, "/v1/session/query", {"filter": {"model": "gpt-4o"}, "sort": {"field": "requests"}}))["data"]
    narrowed = by([r for r in mine if r["session_id"] and r["model"] == "gpt-4o"], lambda r: r["session_id"])
    assert {s["session_id"]: (s["requests"], s["errors"]) for s in data} == {
        sid: (len(rows), sum(map(is_error, rows))) for sid, rows in narrowed.items()}

    page = await post(client, "/v1/session/query", {"sort": {"field": "first_seen", "direction": "asc"}, "limit": 2, "offset": 1})
    firsts = sorted(expected.values(), key=lambda s: s["first_seen"])
    assert [s["session_id"] for s in page["data"]] == [s["session_id"] for s in firsts[1:3]]
    assert (page["limit"], page["offset"]) == (2, 1)

    # the other org sees its own sessions of the same ids, with its own numbers
    other = (await post(client, "/v1/session/query", {}, headers={"Authorization": f"Bearer {other_key}"}))["data"]
    their = {sid: expected_session(rows) for sid, rows in by([r for r in theirs if r["session_id"]], lambda r: r["session_id"]).items()}
    assert {s["session_id"]: s for s in other} == their


async def test_the_request_name_property_is_filtered_valued_and_listed_by_the_name_it_is_listed_under(api):
    from helicone_core.log_headers import REQUEST_NAME_PROPERTY

    client, state, org, _, _ = api
    rid = await test_api.add_request(state, org, minutes=0, props={"team": "search", REQUEST_NAME_PROPERTY: "digest"})
    [listed] = [k["key"] for k in (await client.get("/v1/property/keys")).json()["data"] if k["key"] != "team"]
    for name in (listed, "Helicone-Request-Name"):  # property names are read in any case
        flat = await post(client, "/v1/request/query", {"filter": {"properties": {name: "digest"}}})
        tree = await post(client, "/v1/request/query", {"filter": {"properties": {name: {"equals": "digest"}}}})
        values = await post(client, f"/v1/property/{name}/values", {})
        assert ([d["request_id"] for d in flat["data"]], [d["request_id"] for d in tree["data"]],
                [v["value"] for v in values["data"]]) == ([rid], [rid], ["digest"]), name


async def test_session_pages_are_whole_when_many_requests_share_the_last_instant(api):
    """The default list reads the newest requests first; when that read stops inside one instant, a session
    last seen at that instant but not read sorts before the ones read (by id): before, page 1 left it out
    and page 2 showed the other session again."""
    client, state, org, _, _ = api

    def row(session: str, request_id: str) -> dict:  # what log() writes, all at one instant
        return {"id": request_id, "status": 200, "provider": "openai", "model": "m", "user": "", "session_id": session,
                "session_path": "", "session_name": "", "props": {}, "latency_ms": 1, "ttft_ms": -1, "error": "",
                "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "created": test_api.T0}

    await log(state, org, [row("a", "00000000-0000-4000-8000-000000000000")]
              + [row("b", events.new_request_id()) for _ in range(2000)])
    pages = [s["session_id"] for offset in (0, 1)
             for s in (await post(client, "/v1/session/query", {"limit": 1, "offset": offset}))["data"]]
    assert pages == ["a", "b"]
    assert [s["session_id"] for s in (await post(client, "/v1/session/query", {"limit": 10}))["data"]] == ["a", "b"]


@pytest.mark.parametrize("when", [dt.datetime(2200, 1, 1, 5, tzinfo=dt.timezone.utc), dt.datetime(1950, 1, 1, 5, tzinfo=dt.timezone.utc)])
async def test_a_request_outside_the_datetime_span_is_counted_whatever_the_ranges_alignment(api, when):
    """A range on whole hours or days is written on a grain's column, a DateTime that saturates past 2106 and
    before 1970: a request of 2200 fell out of its own day (stored times run from 1900 to 2299)."""
    client, state, org, _, _ = api
    await test_api.add_request(state, org, minutes=(when - test_api.T0).total_seconds() / 60)
    day = when.replace(hour=0)
    for start in (day + dt.timedelta(milliseconds=1), day):  # unaligned, aligned
        r = await client.get("/v1/metrics/summary", params={"start": start.isoformat(), "end": (day + dt.timedelta(days=1)).isoformat()})
        assert r.status_code == 200 and r.json()["requests"] == 1, (start, r.text)


@pytest.mark.parametrize("sid", ["it's", "zw\u200bsp", "back\\slash"])
async def test_the_session_list_shows_sessions_whatever_characters_their_ids_hold(api, sid):
    """Session ids come from the caller's Helicone-Session-Id header; the default list reads the page's ids
    back as an array parameter (on chDB a quote in one made the list a 500, other characters hid the session)."""
    client, state, org, _, _ = api
    await test_api.add_request(state, org, minutes=0, session_id=sid)
    assert [s["session_id"] for s in (await post(client, "/v1/session/query", {}))["data"]] == [sid]


def walk(node: dict):
    yield node
    for child in node["children"]:
        yield from walk(child)


async def test_a_session_has_its_totals_and_a_trace_tree_by_session_path(logged):
    client, state, org, other_key, mine, theirs = logged
    base = T0 + dt.timedelta(days=10)
    trace = [  # (ms after base, path, latency, cost)
        (0, "/", 100, 0.01), (200, "/plan", 300, 0.02), (600, "/plan/search", 50, 0.03),
        (700, "plan/search/", 500, 0.04), (1500, "/answer", 250, 0.05), (1600, "/plan//fetch", 10, 0.06),
    ]
    rows = []
    for ms, path, latency, cost in trace:
        r = dataset(seed=ms, n=1)[0]
        r.update(created=base + dt.timedelta(milliseconds=ms), session_id="trace-1", session_path=path, latency_ms=latency,
                 cost_usd=cost, session_name="Trip planner" if ms == 600 else "", status=200, error="")
        rows.append(r)
    await log(state, org, rows)

    r = await client.get("/v1/session/trace-1")
    assert r.status_code == 200, r.text
    body = r.json()
    tree = body.pop("tree")
    assert body.pop("requests_truncated") is False
    assert body == expected_session(rows) and body["session_name"] == "Trip planner"
    assert body["duration_ms"] == 1750  # first request at 0 ms, last response at 1500 + 250

    nodes = {n["path"]: n for n in walk(tree)}
    assert set(nodes) == {"/", "/plan", "/plan/search", "/plan/fetch", "/answer"}
    assert [c["path"] for c in tree["children"]] == ["/plan", "/answer"]
    assert [c["name"] for c in nodes["/plan"]["children"]] == ["search", "fetch"]
    ids = {path: [q["request_id"] for q in n["requests"]] for path, n in nodes.items()}
    assert ids == {"/": [rows[0]["id"]], "/plan": [rows[1]["id"]], "/plan/search": [rows[2]["id"], rows[3]["id"]],
                   "/plan/fetch": [rows[5]["id"]], "/answer": [rows[4]["id"]]}
    # node cost and duration cover the whole subtree
    assert nodes["/"]["cost_usd"] == pytest.approx(0.21)
    assert nodes["/plan"]["cost_usd"] == pytest.approx(0.02 + 0.03 + 0.04 + 0.06)
    assert nodes["/plan/search"]["cost_usd"] == pytest.approx(0.07)
    assert (nodes["/"]["duration_ms"], nodes["/plan"]["duration_ms"], nodes["/plan/search"]["duration_ms"]) == (1750, 1410, 600)
    # request rows are the same shape /v1/request/query gives
    listed = (await post(client, "/v1/request/query", {"filter": {"session_id": "trace-1"}, "sort": "created_at_asc"}))["data"]
    assert [q for n in walk(tree) for q in n["requests"]] != []
    assert sorted((q for n in walk(tree) for q in n["requests"]), key=lambda q: q["created_at"]) == listed

    assert (await client.get("/v1/session/no-such-session")).status_code == 404
    r = await client.get("/v1/session/trace-1", headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 404 and "not found" in r.json()["error"]["message"]  # our session is not theirs
    # a session id the other org also used: each sees its own
    theirs_checkout = [x for x in theirs if x["session_id"] == "sess-checkout-1"]
    r = await client.get("/v1/session/sess-checkout-1", headers={"Authorization": f"Bearer {other_key}"})
    assert r.json()["requests"] == len(theirs_checkout)
    assert sum(len(n["requests"]) for n in walk(r.json()["tree"])) == len(theirs_checkout)


async def test_a_session_page_counts_a_resent_log_once_as_its_tree_and_the_request_list_do(api):
    """A log sent again (ingest retrying a batch, a client resending an async log) is a second row of the
    same identity until ClickHouse merges the parts: the session's page counted it twice in its totals
    (requests, cost, tokens) while its own tree and /v1/request/query, both read with FINAL, showed it once."""
    client, state, org, _, _ = api
    await state.analytics._command(f"SYSTEM STOP MERGES {state.analytics.database}.request_log")  # the copies stay two rows
    rows = dataset(seed=13, n=3)
    for r in rows:
        r.update(session_id="resent", session_path="/a")
    await log(state, org, rows)
    await log(state, org, rows[:1])  # the same log again
    listed = (await post(client, "/v1/request/query", {"filter": {"session_id": "resent"}}))["data"]
    r = await client.get("/v1/session/resent")
    assert r.status_code == 200, r.text
    body = r.json()
    tree = body.pop("tree")
    body.pop("requests_truncated")
    assert (len(listed), sum(len(n["requests"]) for n in walk(tree))) == (3, 3)
    assert body == expected_session(rows)


async def test_users_are_listed_with_totals_and_active_days(logged, monkeypatch):
    client, state, org, other_key, mine, theirs = logged
    extra = dataset(seed=9, n=3, start=T0 + dt.timedelta(days=30), hours=1)
    for r in extra:
        r["user"] = "alice"
    await log(state, org, extra)
    users = by([r for r in mine + extra if r["user"]], lambda r: r["user"])
    expected = {u: {"user_id": u, **totals(rows), "active_days": len({r["created"].date() for r in rows}),
                    "first_seen": iso(min(r["created"] for r in rows)), "last_seen": iso(max(r["created"] for r in rows)),
                    "count": len(rows), "cost": totals(rows)["cost_usd"]}  # Helicone's names of requests, cost_usd
                for u, rows in users.items()}
    assert expected["alice"]["active_days"] >= 2

    data = (await post(client, "/v1/user/query", {"sort": {"field": "requests", "direction": "desc"}}))["data"]
    want = sorted(sorted(expected.values(), key=lambda u: u["user_id"]), key=lambda u: u["requests"], reverse=True)
    assert data == want
    for field in ("cost_usd", "total_tokens", "active_days", "first_seen", "last_seen"):
        data = (await post(client, "/v1/user/query", {"sort": {"field": field, "direction": "asc"}}))["data"]
        values = [u[field] for u in data]
        assert values == sorted(values) and len(values) == len(expected), field
    data = (await post(client, "/v1/user/query", {"search": "EXAMPLE.com"}))["data"]
    assert [u["user_id"] for u in data] == ["carol@example.com"]

    # a time range alone is answered in two steps (sort values, then the page's totals): every sort and
    # direction gives the page one step gives, and pages put together give the whole list once
    from helicone_api import insights as ins

    window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(days=31)).isoformat()}
    two_step = "has(page, user_id)"
    assert two_step in ins.user_list_sql(org, ins.UserQuery(filter=window))[0]
    for other in ({**window, "start": (T0 + dt.timedelta(hours=1)).isoformat()}, {**window, "model": "gpt-4o"}):
        assert two_step not in ins.user_list_sql(org, ins.UserQuery(filter=other))[0]  # the projections cannot answer
    assert two_step not in ins.user_list_sql(org, ins.UserQuery(filter=window, offset=ins.USER_PAGE_TWO_STEPS))[0]
    for field in ins.USER_SORTS:
        for direction in ("asc", "desc"):
            body = {"filter": window, "sort": {"field": field, "direction": direction}}
            two_steps = (await post(client, "/v1/user/query", body))["data"]
            pages = []
            for offset in range(0, len(expected), 2):
                pages += (await post(client, "/v1/user/query", {**body, "limit": 2, "offset": offset}))["data"]
            monkeypatch.setattr(ins, "USER_PAGE_TWO_STEPS", 0)  # one step
            one_step = (await post(client, "/v1/user/query", body))["data"]
            monkeypatch.undo()
            assert two_steps == pages == one_step == sorted(
                sorted(expected.values(), key=lambda u: u["user_id"]),
                key=lambda u: getattr(u[field], "expected", u[field]), reverse=direction == "desc"  # approx: its value
            ), (field, direction)
    end = T0 + dt.timedelta(days=1)
    data = (await post(client, "/v1/user/query", {"filter": {"end": end.isoformat(), "status": 200}}))["data"]
    first_day = by([r for r in mine if r["user"] and r["created"] < end and r["status"] == 200], lambda r: r["user"])
    assert {u["user_id"]: u["requests"] for u in data} == {u: len(rows) for u, rows in first_day.items()}


async def test_property_keys_and_the_top_values_of_a_property(logged):
    client, state, org, other_key, mine, theirs = logged
    r = await client.get("/v1/property/keys")
    assert r.status_code == 200, r.text
    counts = defaultdict(int)
    for row in mine:
        for k in row["props"]:
            counts[k] += 1
    assert r.json()["data"] == [{"key": k, "requests": n} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    end = T0 + dt.timedelta(hours=12)
    r = await client.get("/v1/property/keys", params={"end": end.isoformat()})
    early = sum(1 for row in mine if "env" in row["props"] and row["created"] < end)
    assert {d["key"]: d["requests"] for d in r.json()["data"]}["env"] == early

    data = (await post(client, "/v1/property/ENV/values", {}))["data"]  # property names match in any case
    values = by([row for row in mine if "env" in row["props"]], lambda row: row["props"]["env"])
    assert data == sorted(({
        "value": v, "requests": len(rows), "cost_usd": pytest.approx(sum(x["cost_usd"] for x in rows)),
        "errors": sum(map(is_error, rows)), "error_rate": pytest.approx(sum(map(is_error, rows)) / len(rows)),
        "avg_latency_ms": pytest.approx(sum(x["latency_ms"] for x in rows) / len(rows)),
        "latency_ms": {f"p{round(q * 100)}": quantile([x["latency_ms"] for x in rows], q) for q in (0.5, 0.9, 0.95, 0.99)},
        "p95_latency_ms": quantile([x["latency_ms"] for x in rows], 0.95),
    } for v, rows in values.items()), key=lambda d: (-d["requests"], d["value"]))
    # the same numbers from request_log's rows: a filter beyond the time range reads them (no request here is a cache hit)
    from_rows = (await post(client, "/v1/property/env/values", {"filter": {"cache_hit": False}}))["data"]
    assert from_rows == [{**d, "cost_usd": pytest.approx(d["cost_usd"]), "avg_latency_ms": pytest.approx(d["avg_latency_ms"])}
                         for d in data]
    data = (await post(client, "/v1/property/feature/values", {"filter": {"model": "gpt-4o"}, "limit": 1}))["data"]
    features = by([row for row in mine if "feature" in row["props"] and row["model"] == "gpt-4o"], lambda row: row["props"]["feature"])
    top = min(features.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    assert [(d["value"], d["requests"]) for d in data] == [(top[0], len(top[1]))]
    assert (await post(client, "/v1/property/nothing-named-so/values", {}))["data"] == []


def expected_series(rows: list[dict], buckets: list[dt.datetime], bucket_of, group=None) -> list[dict]:
    out = []
    grouped = by(rows, bucket_of)
    for b in buckets:
        rs = grouped.get(b, [])
        lat = [r["latency_ms"] for r in rs]
        ttft = [r["ttft_ms"] for r in rs if r["ttft_ms"] >= 0]
        errors = sum(map(is_error, rs))
        out.append({
            "bucket": b.isoformat(), "group": group, "requests": len(rs),
            "cost_usd": pytest.approx(sum(r["cost_usd"] for r in rs), abs=1e-12),
            "prompt_tokens": sum(r["prompt_tokens"] for r in rs), "completion_tokens": sum(r["completion_tokens"] for r in rs),
            "errors": errors, "error_rate": pytest.approx(errors / len(rs) if rs else 0.0),
            "latency_ms": {f"p{round(q * 100)}": quantile(lat, q) if lat else None for q in (0.5, 0.9, 0.95, 0.99)},
            "ttft_ms": {f"p{round(q * 100)}": quantile(ttft, q) if ttft else None for q in (0.5, 0.9, 0.95, 0.99)},
        })
    return out


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "is_other"} for r in rows]


async def test_hourly_series_is_zero_filled_and_matches_the_rows(logged):
    client, state, org, other_key, mine, theirs = logged
    start, end = T0 + dt.timedelta(hours=5, minutes=30), T0 + dt.timedelta(hours=30)
    r = await client.post("/v1/metrics/timeseries", json={"start": start.isoformat(), "end": end.isoformat(), "bucket": "hour"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    hours = [T0 + dt.timedelta(hours=h) for h in range(5, 30)]  # the bucket holding start, up to end
    inside = [x for x in mine if start <= x["created"] < end]
    expected = expected_series(inside, hours, lambda x: x["created"].replace(minute=0, second=0, microsecond=0))
    assert [d["bucket"] for d in data] == [h.isoformat() for h in hours] and data[0]["bucket"] == "2026-03-01T05:00:00+00:00"
    assert strip(data) == expected
    assert any(d["requests"] == 0 for d in data) and sum(d["requests"] for d in data) == len(inside)


async def test_grouped_series_keeps_the_top_groups_and_sums_the_rest_as_other(logged):
    client, state, org, other_key, mine, theirs = logged
    start, end = T0, T0 + dt.timedelta(days=3)
    body = {"start": start.isoformat(), "end": end.isoformat(), "bucket": "day", "group_by": "model", "top_groups": 2}
    data = (await post(client, "/v1/metrics/timeseries", body))["data"]
    counts = by(mine, lambda x: x["model"])
    top = sorted(counts, key=lambda m: (-len(counts[m]), m))[:2]
    days = [T0 + dt.timedelta(days=d) for d in range(3)]
    day = lambda x: x["created"].replace(hour=0, minute=0, second=0, microsecond=0)  # noqa: E731
    want = []
    for m in sorted(top):
        want += expected_series(counts[m], days, day, group=m)
    want += expected_series([x for x in mine if x["model"] not in top], days, day, group="other")
    assert strip(data) == want
    assert [d["is_other"] for d in data] == [False] * 6 + [True] * 3

    # a property as the group; requests without it are the group ""
    body = {"start": start.isoformat(), "end": end.isoformat(), "bucket": "day", "group_by": "property:Env"}
    data = (await post(client, "/v1/metrics/timeseries", body))["data"]
    envs = by(mine, lambda x: x["props"].get("env", ""))
    want = []
    for v in sorted(envs):
        want += expected_series(envs[v], days, day, group=v)
    assert strip(data) == want
    # no request in the range: nothing to group
    body = {"start": "2030-01-01T00:00:00Z", "end": "2030-01-02T00:00:00Z", "bucket": "hour", "group_by": "user"}
    assert (await post(client, "/v1/metrics/timeseries", body))["data"] == []
    body.pop("group_by")
    empty = (await post(client, "/v1/metrics/timeseries", body))["data"]
    assert len(empty) == 24 and all(d["requests"] == 0 and d["latency_ms"]["p95"] is None for d in empty)


async def test_buckets_follow_the_time_zone_half_hour_offsets_included(api):
    client, state, org, _, _ = api
    zone = ZoneInfo("Asia/Kolkata")  # UTC+05:30: local hours start at :30 UTC, local days at 18:30 UTC
    rows = dataset(seed=5, n=120, start=T0, hours=48)
    await log(state, org, rows)
    start, end = T0 + dt.timedelta(hours=3, minutes=10), T0 + dt.timedelta(hours=40)
    inside = [x for x in rows if start <= x["created"] < end]

    data = (await post(client, "/v1/metrics/timeseries", {"start": start.isoformat(), "end": end.isoformat(),
                                                          "bucket": "hour", "timezone": "Asia/Kolkata"}))["data"]
    local_hour = lambda x: x["created"].astimezone(zone).replace(minute=0, second=0, microsecond=0)  # noqa: E731
    first = start.astimezone(zone).replace(minute=0, second=0, microsecond=0)
    hours = [first + dt.timedelta(hours=h) for h in range(40)]
    hours = [h for h in hours if h < end]
    assert data[0]["bucket"] == "2026-03-01T08:00:00+05:30"  # 02:30 UTC, the local hour holding 03:10 UTC
    assert strip(data) == expected_series(inside, hours, local_hour)

    end = T0 + dt.timedelta(hours=47)  # 04:30 on March 3rd in Kolkata
    inside = [x for x in rows if start <= x["created"] < end]
    data = (await post(client, "/v1/metrics/timeseries", {"start": start.isoformat(), "end": end.isoformat(),
                                                          "bucket": "day", "timezone": "Asia/Kolkata"}))["data"]
    local_day = lambda x: x["created"].astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)  # noqa: E731
    assert [d["bucket"] for d in data] == ["2026-03-01T00:00:00+05:30", "2026-03-02T00:00:00+05:30", "2026-03-03T00:00:00+05:30"]
    assert strip(data) == expected_series(inside, [dt.datetime(2026, 3, d, tzinfo=zone) for d in (1, 2, 3)], local_day)
    # the local day of March 2nd began at 18:30 UTC on March 1st
    assert data[1]["requests"] == sum(1 for x in inside if dt.datetime(2026, 3, 1, 18, 30, tzinfo=UTC) <= x["created"]
                                      < dt.datetime(2026, 3, 2, 18, 30, tzinfo=UTC))


async def test_days_and_hours_across_daylight_saving_changes_in_new_york(api):
    client, state, org, _, _ = api
    zone = ZoneInfo("America/New_York")
    # 2026-03-08: clocks spring forward (a 23-hour day); 2026-11-01: they fall back (a 25-hour day, 01:00 twice)
    spring = dataset(seed=6, n=90, start=dt.datetime(2026, 3, 7, 5, tzinfo=UTC), hours=72)
    autumn = dataset(seed=7, n=90, start=dt.datetime(2026, 10, 31, 4, tzinfo=UTC), hours=72)
    await log(state, org, spring + autumn)
    local_day = lambda x: x["created"].astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)  # noqa: E731

    for rows, days in ((spring, ((3, 7), (3, 8), (3, 9))), (autumn, ((10, 31), (11, 1), (11, 2)))):
        local = [dt.datetime(2026, m, d, tzinfo=zone) for m, d in days]
        start, end = local[0].astimezone(UTC), (local[-1] + dt.timedelta(days=1)).astimezone(UTC)
        data = (await post(client, "/v1/metrics/timeseries", {"start": start.isoformat(), "end": end.isoformat(),
                                                              "bucket": "day", "timezone": "America/New_York"}))["data"]
        inside = [x for x in rows if start <= x["created"] < end]
        assert strip(data) == expected_series(inside, local, local_day)
    assert [d["bucket"] for d in data] == ["2026-10-31T00:00:00-04:00", "2026-11-01T00:00:00-04:00", "2026-11-02T00:00:00-05:00"]

    # hours on the fall-back day: 01:00 EDT and 01:00 EST are two buckets, an hour apart
    start, end = dt.datetime(2026, 11, 1, 4, tzinfo=UTC), dt.datetime(2026, 11, 1, 8, tzinfo=UTC)
    data = (await post(client, "/v1/metrics/timeseries", {"start": start.isoformat(), "end": end.isoformat(),
                                                          "bucket": "hour", "timezone": "America/New_York"}))["data"]
    assert [d["bucket"] for d in data] == ["2026-11-01T00:00:00-04:00", "2026-11-01T01:00:00-04:00",
                                           "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]
    utc_hour = lambda x: x["created"].replace(minute=0, second=0, microsecond=0)  # noqa: E731
    hours = [start + dt.timedelta(hours=h) for h in range(4)]
    want = expected_series([x for x in autumn if start <= x["created"] < end], hours, utc_hour)
    assert [d["requests"] for d in data] == [w["requests"] for w in want]


@pytest.mark.parametrize("tz, day", [("Atlantic/Azores", (3, 29)), ("America/Santiago", (9, 6)), ("Africa/Cairo", (4, 24)),
                                     ("America/Havana", (11, 1))])
async def test_days_where_the_clocks_change_at_midnight_are_one_bucket_each(api, tz, day):
    """Where clocks spring forward at midnight the day starts at 01:00 (Azores, Santiago, Cairo); where they fall
    back from 01:00, midnight comes twice and the day starts at the first (Havana): one bucket per local date all the same."""
    client, state, org, _, _ = api
    zone = ZoneInfo(tz)

    def day_start(d: dt.date) -> dt.datetime:  # the first instant of a local date (01:00 when midnight is skipped)
        return dt.datetime.fromtimestamp(dt.datetime(d.year, d.month, d.day, tzinfo=zone).timestamp(), zone)

    changed = dt.date(2026, *day)
    dates = [changed + dt.timedelta(days=d) for d in range(-3, 5)]
    start, end = day_start(dates[0]).astimezone(UTC), day_start(dates[-1] + dt.timedelta(days=1)).astimezone(UTC)
    rows = [r for r in dataset(seed=8, n=60, start=start, hours=8 * 24)
            if r["created"] < end and r["created"].astimezone(zone).date() != dates[2]]
    await log(state, org, rows)  # (a day without requests: the one before the change is zero-filled)
    data = (await post(client, "/v1/metrics/timeseries", {"start": start.isoformat(), "end": end.isoformat(),
                                                          "bucket": "day", "timezone": tz}))["data"]
    assert [d["bucket"] for d in data] == [day_start(d).isoformat() for d in dates]
    assert strip(data) == expected_series(rows, [day_start(d) for d in dates], lambda x: day_start(x["created"].astimezone(zone).date()))
    # weeks (from Monday) over the same days
    data = (await post(client, "/v1/metrics/timeseries", {"start": start.isoformat(), "end": end.isoformat(),
                                                          "bucket": "week", "timezone": tz}))["data"]
    assert sum(d["requests"] for d in data) == len(rows)
    assert [d["bucket"] for d in data] == sorted({day_start(d - dt.timedelta(days=d.weekday())).isoformat() for d in dates})


async def test_a_range_ending_inside_a_bucket_has_that_bucket_zero_filled(api):
    """The last bucket is the one holding the range's last millisecond, requests or none, in any grouping."""
    client, state, org, _, _ = api
    await log(state, org, dataset(seed=9, n=1, start=dt.datetime(2030, 1, 1, 1, tzinfo=UTC), hours=1))
    for end, hours in (("2030-01-01T03:00:00.500Z", 4), ("2030-01-01T03:00:00Z", 3), ("2030-01-01T02:59:59.999Z", 3)):
        body = {"start": "2030-01-01T00:00:00.250Z", "end": end, "bucket": "hour"}
        data = (await post(client, "/v1/metrics/timeseries", body))["data"]
        assert [d["bucket"] for d in data] == [f"2030-01-01T0{h}:00:00+00:00" for h in range(hours)], end
        grouped = (await post(client, "/v1/metrics/timeseries", {**body, "group_by": "model"}))["data"]
        assert [d["bucket"] for d in grouped] == [d["bucket"] for d in data], end
        assert sum(d["requests"] for d in grouped) == sum(d["requests"] for d in data) == 1


async def test_breakdown_and_summary(logged):
    client, state, org, other_key, mine, theirs = logged
    start, end = T0 + dt.timedelta(hours=6), T0 + dt.timedelta(hours=50)
    inside = [x for x in mine if start <= x["created"] < end]
    for key in ("model", "provider"):
        data = (await post(client, "/v1/metrics/breakdown", {"by": key, "start": start.isoformat(), "end": end.isoformat()}))["data"]
        groups = by(inside, lambda x: x[key])  # noqa: B023
        assert data == sorted(({
            "key": k, "requests": len(rs), "cost_usd": pytest.approx(sum(x["cost_usd"] for x in rs)),
            "prompt_tokens": sum(x["prompt_tokens"] for x in rs), "completion_tokens": sum(x["completion_tokens"] for x in rs),
            "error_rate": pytest.approx(sum(map(is_error, rs)) / len(rs)),
            "p95_latency_ms": quantile([x["latency_ms"] for x in rs], 0.95),
        } for k, rs in groups.items()), key=lambda d: (-d["requests"], d["key"]))
    data = (await post(client, "/v1/metrics/breakdown", {"by": "model", "filter": {"user_id": "bob"}}))["data"]
    assert {d["key"]: d["requests"] for d in data} == {k: len(v) for k, v in by([x for x in mine if x["user"] == "bob"], lambda x: x["model"]).items()}

    r = await client.get("/v1/metrics/summary", params={"start": start.isoformat(), "end": end.isoformat()})
    assert r.status_code == 200, r.text
    errors = sum(map(is_error, inside))
    assert r.json() == {
        **totals(inside), "errors": errors, "error_rate": pytest.approx(errors / len(inside)),
        "users": len({x["user"] for x in inside if x["user"]}), "sessions": len({x["session_id"] for x in inside if x["session_id"]}),
        "avg_latency_ms": pytest.approx(sum(x["latency_ms"] for x in inside) / len(inside)),
        "p95_latency_ms": quantile([x["latency_ms"] for x in inside], 0.95),
        "cache_hits": 0, "cache_saved_usd": 0.0,
    }
    whole = (await client.get("/v1/metrics/summary")).json()
    assert whole["requests"] == len(mine) and whole["cost_usd"] == pytest.approx(sum(x["cost_usd"] for x in mine))
    other = (await client.get("/v1/metrics/summary", headers={"Authorization": f"Bearer {other_key}"})).json()
    assert other["requests"] == len(theirs) and other["prompt_tokens"] == sum(x["prompt_tokens"] for x in theirs)
    empty = (await client.get("/v1/metrics/summary", params={"start": "2030-01-01T00:00:00Z"})).json()
    assert (empty["requests"], empty["error_rate"], empty["p95_latency_ms"]) == (0, 0.0, None)


async def test_no_endpoint_shows_another_orgs_requests(api):
    client, state, org, other_org, other_key = api
    await log(state, other_org, dataset(seed=3, n=40))
    start, end = T0.isoformat(), (T0 + dt.timedelta(days=3)).isoformat()
    assert (await post(client, "/v1/session/query", {}))["data"] == []
    assert (await client.get("/v1/session/sess-checkout-1")).status_code == 404
    assert (await post(client, "/v1/user/query", {}))["data"] == []
    assert (await client.get("/v1/property/keys")).json()["data"] == []
    assert (await post(client, "/v1/property/env/values", {}))["data"] == []
    series = (await post(client, "/v1/metrics/timeseries", {"start": start, "end": end, "bucket": "day"}))["data"]
    assert [d["requests"] for d in series] == [0, 0, 0]
    assert (await post(client, "/v1/metrics/timeseries", {"start": start, "end": end, "group_by": "model"}))["data"] == []
    assert (await post(client, "/v1/metrics/breakdown", {"by": "model"}))["data"] == []
    assert (await client.get("/v1/metrics/summary")).json()["requests"] == 0
    for path in ("/v1/metrics/summary", "/v1/property/keys", "/v1/session/sess-checkout-1"):  # and no key sees anything
        assert (await client.get(path, headers={"Authorization": ""})).status_code == 401
    assert (await client.post("/v1/session/query", json={}, headers={"Authorization": "Bearer sk-helicone-nope"})).status_code == 401


async def test_bad_input_is_a_422_naming_the_place(api):
    client, *_ = api

    async def problem(method: str, path: str, **kw) -> dict:
        r = await client.request(method, path, **kw)
        assert r.status_code == 422, (path, kw, r.text)
        return r.json()["error"]["details"][0]

    ts = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}
    d = await problem("POST", "/v1/metrics/timeseries", json={**ts, "timezone": "Mars/Olympus"})
    assert d["field"] == "timezone" and "IANA" in d["message"]
    d = await problem("POST", "/v1/metrics/timeseries", json={**ts, "timezone": "../../etc/passwd"})
    assert d["field"] == "timezone"
    d = await problem("POST", "/v1/metrics/timeseries", json={"start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z",
                                                              "bucket": "minute"})
    assert d["field"] == "bucket" and "at most 2000" in d["message"] and "84961 minute buckets" in d["message"]
    d = await problem("POST", "/v1/metrics/timeseries", json={**ts, "bucket": "fortnight"})
    assert d["field"] == "bucket"
    d = await problem("POST", "/v1/metrics/timeseries", json={**ts, "group_by": "colour"})
    assert d["field"] == "group_by" and "property:<key>" in d["message"]
    assert (await problem("POST", "/v1/metrics/timeseries", json={**ts, "group_by": "property:"}))["field"] == "group_by"
    assert (await problem("POST", "/v1/metrics/timeseries", json={**ts, "top_groups": 51}))["field"] == "top_groups"
    d = await problem("POST", "/v1/metrics/timeseries", json={"start": ts["end"], "end": ts["start"]})
    assert d["field"] == "end" and "after start" in d["message"]
    assert (await problem("POST", "/v1/metrics/timeseries", json={"end": ts["end"]}))["field"] == "start"
    for start, end, field in (("1960-01-01T00:00:00Z", "1960-01-04T00:00:00Z", "start"),  # stored, but past the span
                              ("2200-01-01T00:00:00Z", "2200-01-04T00:00:00Z", "start"),  # buckets are computed in:
                              ("2106-01-30T00:00:00Z", "2106-02-02T00:00:00Z", "end")):   # they came back in 2096 / 2063
        d = await problem("POST", "/v1/metrics/timeseries", json={"start": start, "end": end, "bucket": "day"})
        assert d["field"] == field and "between 1970-01-08 and 2106-01-31" in d["message"], start
    d = await problem("POST", "/v1/session/query", json={"sort": {"field": "latency"}})
    assert d["field"] == "sort.field" and "requests" in d["message"]
    assert (await problem("POST", "/v1/user/query", json={"sort": {"field": "errors"}}))["field"] == "sort.field"
    assert (await problem("POST", "/v1/user/query", json={"sort": {"field": "requests", "direction": "up"}}))["field"] == "sort.direction"
    assert (await problem("POST", "/v1/session/query", json={"search": "x" * 257}))["field"] == "search"
    assert (await problem("POST", "/v1/session/query", json={"limit": 1001}))["field"] == "limit"
    assert (await problem("POST", "/v1/session/query", json={"filter": {"modle": "x"}}))["field"] == "filter.modle"
    assert (await problem("POST", "/v1/metrics/breakdown", json={"by": "user"}))["field"] == "by"
    assert (await problem("GET", "/v1/metrics/summary", params={"start": "yesterday"}))["field"] == "query.start"
    d = await problem("GET", "/v1/metrics/summary", params={"start": "2026-03-02T00:00:00Z", "end": "2026-03-01T00:00:00Z"})
    assert d["field"] == "query.end"
    assert (await problem("POST", "/v1/property/env/values", json={"limit": 0}))["field"] == "limit"


# Any body or query string on these endpoints is answered (200 or a 422 naming the place), never a 500.
fuzz_text = test_fuzz_api.text
fuzz_sorts = st.fixed_dictionaries({}, optional={"field": st.one_of(st.sampled_from(["requests", "active_days", "errors"]), fuzz_text),
                                                 "direction": st.one_of(st.sampled_from(["asc", "desc"]), fuzz_text)})
fuzz_bodies = st.fixed_dictionaries({}, optional={
    "filter": st.one_of(test_fuzz_api.filters, test_fuzz_api.json_value), "search": st.one_of(fuzz_text, test_fuzz_api.scalar),
    "sort": st.one_of(fuzz_sorts, test_fuzz_api.json_value), "limit": st.one_of(st.integers(-5, 2000), test_fuzz_api.scalar),
    "offset": st.integers(-5, 2_000_000), "start": test_fuzz_api.when, "end": test_fuzz_api.when,
    "bucket": st.one_of(st.sampled_from(["minute", "hour", "day", "week"]), fuzz_text),
    "timezone": st.one_of(st.sampled_from(["UTC", "Asia/Kolkata", "America/New_York", "Etc/GMT+5", "utc", ""]), fuzz_text),
    "group_by": st.one_of(st.sampled_from(["model", "provider", "user", "property:env", "property:"]),
                          fuzz_text.map(lambda t: "property:" + t), fuzz_text),
    "top_groups": st.integers(-2, 60), "by": st.one_of(st.sampled_from(["model", "provider"]), fuzz_text),
})


def segment(text: str) -> str:
    """A path segment as a client sends it: percent-encoded UTF-8 (a lone surrogate as its raw bytes)."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


fuzz_routes = st.one_of(
    st.sampled_from(["/v1/session/query", "/v1/user/query", "/v1/metrics/timeseries", "/v1/metrics/breakdown"]).map(lambda p: ("POST", p)),
    fuzz_text.map(lambda k: ("POST", f"/v1/property/{segment(k)}/values")), fuzz_text.map(lambda s: ("GET", f"/v1/session/{segment(s)}")),
    st.sampled_from(["/v1/property/keys", "/v1/metrics/summary"]).map(lambda p: ("GET", p)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(route=fuzz_routes, body=fuzz_bodies, query=st.fixed_dictionaries({}, optional={"start": test_fuzz_api.when, "end": test_fuzz_api.when}))
@example(route=("POST", "/v1/metrics/timeseries"), query={},
         body={"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z", "group_by": "property:a\\'\t{x:String}\ud800"})
async def test_any_input_is_answered_never_a_500(api, route, body, query):
    client, *_ = api
    method, path = route
    raw = json.dumps(body, ensure_ascii=True, allow_nan=True)  # lone surrogates travel as \udXXX
    r = await client.request(method, path, content=raw if method == "POST" else None,
                             params={k: str(v).encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in query.items()},
                             headers={"content-type": "application/json"})
    assert r.status_code in (200, 307, 404, 405, 422), (route, body, r.text)
    if r.status_code == 422:
        assert all(d["field"] or d["message"] for d in r.json()["error"]["details"])


async def test_ids_keys_and_search_text_are_matched_exactly_whatever_they_contain(api):
    client, state, org, _, _ = api
    awkward = "a'b\\c\td{x:String}%/é"  # header values: no newline
    rows = dataset(seed=11, n=3)
    for r in rows:
        r.update(session_id=awkward, session_name="", user=awkward, props={awkward.lower(): awkward})
    await log(state, org, rows)
    r = await client.get(f"/v1/session/{segment(awkward)}")
    assert r.status_code == 200 and (r.json()["session_id"], r.json()["requests"]) == (awkward, 3), r.text
    assert [s["session_id"] for s in (await post(client, "/v1/session/query", {"search": "\\C\tD"}))["data"]] == [awkward]
    assert [u["user_id"] for u in (await post(client, "/v1/user/query", {"search": "{X:string}%"}))["data"]] == [awkward]
    assert (await client.get("/v1/property/keys")).json()["data"] == [{"key": awkward.lower(), "requests": 3}]
    data = (await post(client, f"/v1/property/{segment(awkward)}/values", {}))["data"]
    assert [(d["value"], d["requests"]) for d in data] == [(awkward, 3)]
    body = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(days=3)).isoformat(), "bucket": "day",
            "group_by": f"property:{awkward}"}
    assert [(d["group"], d["requests"]) for d in (await post(client, "/v1/metrics/timeseries", body))["data"]] == [
        (awkward, sum(1 for x in rows if x["created"].day == d)) for d in (1, 2, 3)]


async def test_the_openapi_examples_are_accepted_as_they_stand(logged):
    client, *_ = logged
    spec = (await client.get("/openapi.json")).json()
    posted = 0
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            for ex in spec["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {}).get("examples", []):
                if ref.rsplit("/", 1)[-1] in ("SessionQuery", "UserQuery", "PropertyValuesQuery", "TimeseriesQuery", "BreakdownQuery"):
                    r = await client.request(method.upper(), path.replace("{key}", "env"), json=ex)
                    assert r.status_code == 200, (path, r.text)
                    posted += 1
    assert posted == 6


async def test_dashboard_reads_over_whole_hours_or_days_are_answered_from_the_projections(logged):
    """The dashboard's aggregations, over ranges on their grain, read the request_log projections
    (helicone_core.analytics.REQUEST_LOG_PROJECTIONS) and request_properties' (REQUEST_PROPERTIES_PROJECTIONS),
    not the rows: what keeps them fast at scale."""
    from helicone_api import insights as ins

    _, state, org, _, _, _ = logged
    start, end = T0, T0 + dt.timedelta(days=3)
    window = {"start": start, "end": end}
    reads = {
        "series_v2": ins.timeseries_sql(org, ins.TimeseriesQuery(**window, bucket="hour", timezone="Asia/Kathmandu")),
        "series_half_hourly_v1": ins.timeseries_sql(org, ins.TimeseriesQuery(**window, bucket="day", timezone="Asia/Kolkata")),
        "models_v2": ins.breakdown_sql(org, ins.BreakdownQuery(**window, by="model")),
        "users_v1": ins.user_list_sql(org, ins.UserQuery(filter=window), two_steps=False),
        "sessions_v2": ins.session_list_sql(org, ins.SessionQuery(filter=window)),
        "request_properties (values_v1)": ins.property_values_sql(org, "env", ins.PropertyValuesQuery(filter=window)),
        "property keys (values_v1)": ins.property_keys_sql(org, ins.TimeRange(**window)),
    }
    reads["series_hourly_v2"] = ins.timeseries_sql(org, ins.TimeseriesQuery(**window, bucket="day", timezone="Europe/Berlin"))
    reads["summary (series_hourly_v2)"] = ins.summary_sql(org, ins.TimeRange(**window))
    reads["summary on half hours (series_half_hourly_v1)"] = ins.summary_sql(
        org, ins.TimeRange(start=start + dt.timedelta(minutes=30), end=end))
    reads["summary on quarter hours (series_v2)"] = ins.summary_sql(
        org, ins.TimeRange(start=start + dt.timedelta(minutes=15), end=end))
    for projection, (sql, params) in reads.items():
        plan = "\n".join(r["explain"] for r in await state.analytics.query("EXPLAIN " + sql, params))
        name = projection.split('(')[-1].rstrip(')')
        read = re.findall(r"ReadFromMergeTree \(([^)]*)\)", plan)
        assert read and set(read) == {name}, (projection, plan)  # every read of the query from it
    # off the grain (a range ending mid-hour), the same answer comes from the rows
    sql, params = ins.breakdown_sql(org, ins.BreakdownQuery(start=start, end=end - dt.timedelta(minutes=1), by="model"))
    plan = "\n".join(r["explain"] for r in await state.analytics.query("EXPLAIN " + sql, params))
    assert "models_v2" not in plan


async def test_a_series_without_a_bucket_is_held_to_the_bucket_limit_too(api):
    """`bucket` defaults to "hour": a range of more than 2000 hours is refused whether or not the caller
    names the bucket (it was answered with a zero-filled row per hour: 1.1 million for 1971-2100)."""
    client, *_ = api
    r = await client.post("/v1/metrics/timeseries", json={"start": "2026-01-01T00:00:00Z", "end": "2026-06-01T00:00:00Z"})
    assert r.status_code == 422, f"{r.status_code}: {len(r.json().get('data', []))} buckets"
    d = r.json()["error"]["details"][0]
    assert d["field"] == "bucket" and "3625 hour buckets" in d["message"] and "at most 2000" in d["message"]


async def test_a_session_of_exactly_the_request_cap_is_not_called_truncated(api, monkeypatch):
    """The tree carries at most MAX_SESSION_REQUESTS requests; `requests_truncated` says some were left out,
    so a session of exactly that many is whole (it was flagged truncated), and one more is not."""
    from helicone_api import insights as ins

    client, state, org, _, _ = api
    monkeypatch.setattr(ins, "MAX_SESSION_REQUESTS", 3)
    rows = dataset(seed=5, n=4)
    for r in rows:
        r.update(session_id="capped", session_path="/a")
    await log(state, org, rows[:3])
    body = (await client.get("/v1/session/capped")).json()
    assert (body["requests"], len(body["tree"]["children"][0]["requests"]), body["requests_truncated"]) == (3, 3, False)
    await log(state, org, rows[3:])
    body = (await client.get("/v1/session/capped")).json()
    assert (body["requests"], len(body["tree"]["children"][0]["requests"]), body["requests_truncated"]) == (4, 3, True)


async def test_a_session_path_of_many_segments_is_answered_as_a_tree(api):
    """Helicone-Session-Path may hold 1024 characters, so up to 512 segments (an agent's nested steps):
    the session's tree is still answered and opens in the dashboard (from 126 levels on it was a 500,
    the JSON encoder's depth limit), its deepest node holding the rest of the path and the request."""
    client, state, org, _, _ = api
    path = "/step" * 200
    [row] = dataset(seed=7, n=1)
    row.update(session_id="deep", session_path=path)
    await log(state, org, [row])
    r = await client.get("/v1/session/deep")
    assert r.status_code == 200, r.text
    nodes = list(walk(r.json()["tree"]))
    leaf = nodes[-1]
    assert leaf["path"] == path and [q["request_id"] for q in leaf["requests"]] == [row["id"]]
    assert sum(len(n["requests"]) for n in nodes) == 1


async def test_helicones_session_query_body_reads_its_time_range_name_and_empty_search(logged):
    """Helicone's POST /v1/session/query body ({"search": "", "timeFilter": {"startTimeUnixMs", "endTimeUnixMs"},
    "timezoneDifference", "nameEquals"?, "filter"}, Helicone/helicone valhalla/jawn/src/controllers/public/sessionController.ts
    and managers/SessionManager.ts) was a 422 on all of it, its always-sent empty search included."""
    client, state, org, other_key, mine, theirs = logged
    start, end = T0 + dt.timedelta(hours=20), T0 + dt.timedelta(hours=50)
    ms = lambda t: int(t.timestamp() * 1000)  # noqa: E731
    inside = [r for r in mine if r["session_id"] and start < r["created"] < end]  # Helicone's gt/lt: both ends left out

    def expected(rows: list[dict]) -> list[dict]:
        return sorted((expected_session(s) for s in by(rows, lambda r: r["session_id"]).values()),
                      key=lambda s: s["last_seen"], reverse=True)

    helicone = {"search": "", "timeFilter": {"startTimeUnixMs": ms(start), "endTimeUnixMs": ms(end)}, "timezoneDifference": 0}
    assert (await post(client, "/v1/session/query", {**helicone, "filter": "all"}))["data"] == expected(inside)
    # a time filter's own start instant is out (gt), as Helicone's
    first = min(r["created"] for r in inside)
    later = [r for r in inside if r["created"] > first]
    body = {**helicone, "timeFilter": {"startTimeUnixMs": ms(first), "endTimeUnixMs": ms(end)}, "filter": "all"}
    assert (await post(client, "/v1/session/query", body))["data"] == expected(later)

    gpt4o = [r for r in inside if r["model"] == "gpt-4o"]
    tree = {"request_response_rmt": {"model": {"equals": "gpt-4o"}}}
    assert (await post(client, "/v1/session/query", {**helicone, "filter": tree}))["data"] == expected(gpt4o)
    assert (await post(client, "/v1/session/query", {**helicone, "filter": {"model": "gpt-4o"}}))["data"] == expected(gpt4o)

    name = next(r["session_name"] for r in inside if r["session_name"])
    named = [r for r in inside if r["session_name"] == name]
    assert (await post(client, "/v1/session/query", {**helicone, "filter": "all", "nameEquals": name}))["data"] == expected(named)

    r = await client.post("/v1/session/query", json={**helicone, "filter": {"start": iso(start)}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "timeFilter", r.text


async def test_helicones_user_query_body_lists_the_users_it_names(logged):
    """Helicone's POST /v1/user/query names its users in `userIds` (Helicone/helicone
    valhalla/jawn/src/controllers/public/userController.ts): a 422 here, so a script moved from Helicone got no users."""
    client, state, org, other_key, mine, theirs = logged
    users = by([r for r in mine if r["user"]], lambda r: r["user"])
    named = {"alice", "Dave", "nobody-such"}
    data = (await post(client, "/v1/user/query", {"userIds": sorted(named)}))["data"]
    assert {u["user_id"]: u["requests"] for u in data} == {u: len(rows) for u, rows in users.items() if u in named}
    window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(days=2)).isoformat()}  # the two-step path too
    data = (await post(client, "/v1/user/query", {"userIds": ["alice"], "filter": window}))["data"]
    assert [(u["user_id"], u["requests"]) for u in data] == [("alice", sum(r["created"] < T0 + dt.timedelta(days=2) for r in users["alice"]))]
    assert len((await post(client, "/v1/user/query", {"userIds": []}))["data"]) == len(users)  # Helicone's empty list: every user
    r = await client.post("/v1/user/query", json={"userIds": [f"u{i}" for i in range(101)]})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "userIds", r.text
