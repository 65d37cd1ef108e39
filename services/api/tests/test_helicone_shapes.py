"""The api's own list routes answered in Helicone's shapes too, so that a script written against api.helicone.ai works
with only its base URL and key changed: POST /v1/request/query (Helicone's HeliconeRequest rows: Helicone/helicone
packages/llm-mapper/types.ts), POST /v1/session/query (SessionResult: valhalla/jawn/src/managers/SessionManager.ts) and
POST /v1/user/query ({count, prompt_tokens, completion_tokens, user_id, cost}: controllers/public/userController.ts),
each `{"data": ..., "error": null}` (Helicone's Result) with the api's own fields and values unchanged next to them.
On each analytics backend; every expected number is computed here from the rows logged."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from helicone_core import analytics, events
from helicone_core.analytics import GRAINS, make_analytics_store
from helicone_core.settings import CommonSettings

from services.api.tests import test_api, test_insights
from services.api.tests.test_api import add_request
from services.api.tests.test_insights import T0, by, iso, post
from tests.support.synthetic import ORGS, insert_sql

api = test_api.api
logged = test_insights.logged

# Helicone's HeliconeRequest (packages/llm-mapper/types.ts): every field a script may read from a row
HELICONE_REQUEST_FIELDS = (
    "response_id", "response_created_at", "response_body", "response_status", "response_model", "request_id",
    "request_created_at", "request_body", "request_path", "request_user_id", "request_properties", "request_model",
    "model_override", "helicone_user", "provider", "delay_ms", "time_to_first_token", "total_tokens", "prompt_tokens",
    "prompt_cache_write_tokens", "prompt_cache_read_tokens", "completion_tokens", "prompt_audio_tokens",
    "completion_audio_tokens", "cost", "prompt_id", "prompt_version", "feedback_created_at", "feedback_id",
    "feedback_rating", "signed_body_url", "llmSchema", "country_code", "asset_ids", "asset_urls", "scores", "costUSD",
    "properties", "assets", "target_url", "model", "cache_reference_id", "cache_enabled", "updated_at", "request_referrer",
    "ai_gateway_body_mapping", "storage_location",
)
# docs.helicone.ai/rest/request/post-v1requestquery's example body
HELICONE_REQUEST_QUERY = {"filter": "all", "isCached": False, "limit": 10, "offset": 0, "sort": {"created_at": "desc"},
                          "isScored": False, "isPartOfExperiment": False}


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


# ---- what a Helicone script does with the answers (only the base URL and key differ) ---------------------


def helicone_request_report(response: dict) -> list[tuple]:
    """As a script reading Helicone's POST /v1/request/query writes it."""
    if response["error"] is not None:
        raise RuntimeError(response["error"])
    report = []
    for r in response["data"]:
        report.append((r["request_id"], r["request_model"], r["request_created_at"], r["response_status"], r["delay_ms"],
                       r["time_to_first_token"], r["prompt_tokens"], r["completion_tokens"], r["total_tokens"],
                       r["prompt_cache_read_tokens"], r["prompt_cache_write_tokens"], r["cost"], r["request_user_id"],
                       (r["request_properties"] or {}).get("env"), r["prompt_id"], r["prompt_version"], r["feedback_rating"],
                       r["cache_enabled"], r["request_path"]))
    return report


def helicone_session_report(response: dict) -> dict[str, tuple]:
    """As a script reading Helicone's POST /v1/session/query writes it."""
    assert response["error"] is None
    return {s["session_id"]: (s["total_requests"], round(s["total_cost"], 9), round(s["avg_latency"], 6), s["created_at"],
                              s["latest_request_created_at"], sorted(s["user_ids"]), s["prompt_tokens"],
                              s["completion_tokens"], s["total_tokens"]) for s in response["data"]}


def helicone_user_report(response: dict) -> dict[str, tuple]:
    """As a script reading Helicone's POST /v1/user/query writes it."""
    assert response["error"] is None
    return {u["user_id"]: (u["count"], round(u["cost"], 9), u["prompt_tokens"], u["completion_tokens"]) for u in response["data"]}


# ---- requests -------------------------------------------------------------------------------------------


async def test_a_helicone_script_reads_the_request_list_with_helicones_field_names(api):
    client, state, org, other_org, other_key = api
    usage = events.Usage(prompt_tokens=120, completion_tokens=40, total_tokens=160, cache_read_tokens=64, cache_write_tokens=8,
                         known=True)
    a = await add_request(state, org, minutes=0, model="gpt-4o", user="alice", props={"env": "prod"}, latency_ms=850,
                          time_to_first_token_ms=210, usage=usage, cost_usd=0.0007, path="/v1/chat/completions")
    b = await add_request(state, org, minutes=1, model="gpt-4o-mini", user="", cache_hit=True, latency_ms=3,
                          prompt_id="greeting", prompt_version=3, prompt_inputs_json='{"name": "Ada"}', path="/v1/chat/completions")
    c = await add_request(state, org, minutes=2, model="claude-3-5-sonnet", user="bob", status=500, cost_known=False,
                          latency_ms=40, path="/v1/messages")
    await add_request(state, other_org, minutes=3, model="gpt-4o", user="alice")  # another org's: never listed
    for rid, rating in ((a, True), (c, False)):
        assert (await client.post(f"/v1/request/{rid}/feedback", json={"rating": rating})).status_code == 200

    t = [iso(test_api.T0 + dt.timedelta(minutes=m)) for m in range(3)]
    expected = [  # newest first; isCached false: what the provider answered (b came from the response cache)
        (c, "claude-3-5-sonnet", t[2], 500, 40, None, 10, 5, 15, 0, 0, None, "bob", None, None, None, False, False, "/v1/messages"),
        (a, "gpt-4o", t[0], 200, 850, 210, 120, 40, 160, 64, 8, 0.0007, "alice", "prod", None, None, True, False,
         "/v1/chat/completions"),
    ]
    cached = [(b, "gpt-4o-mini", t[1], 200, 3, None, 10, 5, 15, 0, 0, 0.0, None, None, "greeting", "3", None, True,
               "/v1/chat/completions")]
    for path in ("/v1/request/query", "/v1/request/query-clickhouse"):
        response = await post(client, path, HELICONE_REQUEST_QUERY)
        assert helicone_request_report(response) == expected, path
        assert response["data"][0]["request_model"] == "claude-3-5-sonnet"
        response_cached = await post(client, path, {**HELICONE_REQUEST_QUERY, "isCached": True})
        assert helicone_request_report(response_cached) == cached, path
        for row in response["data"] + response_cached["data"]:
            assert set(HELICONE_REQUEST_FIELDS) <= set(row), sorted(set(HELICONE_REQUEST_FIELDS) - set(row))
            # what the api does not record: Helicone's empty values
            empty = (row["signed_body_url"], row["asset_ids"], row["asset_urls"], row["assets"], row["llmSchema"])
            assert empty == (None, [], {}, [], None)
            assert row["cost"] == row["costUSD"] == row["cost_usd"]

    # Helicone's names are added next to the api's own; one request's answer carries the same fields and values, with
    # the bodies (as Helicone's GET /v1/request/{id}?includeBody=true)
    from helicone_api.explorer import ApiRequestRow, RequestRow

    ours = set(ApiRequestRow.model_fields)
    assert ours < set(RequestRow.model_fields) and set(HELICONE_REQUEST_FIELDS) <= set(RequestRow.model_fields)
    for row in (await post(client, "/v1/request/query", {"filter": {}, "sort": "created_at_asc"}))["data"]:
        detail = (await client.get(f"/v1/request/{row['request_id']}")).json()
        assert {k: row[k] for k in RequestRow.model_fields} == {
            k: detail[k] if k not in ("request_body", "response_body") else None for k in RequestRow.model_fields}
        assert (row["created_at"], row["latency_ms"], row["usage"]["prompt_tokens"]) == (
            row["request_created_at"], row["delay_ms"], row["prompt_tokens"])
        assert detail["request_body"] == {"model": row["model"]}  # as add_request stored it


# ---- sessions -------------------------------------------------------------------------------------------


def expected_sessions(rows: list[dict]) -> dict[str, tuple]:
    out = {}
    for sid, rs in by([r for r in rows if r["session_id"]], lambda r: r["session_id"]).items():
        out[sid] = (len(rs), round(sum(r["cost_usd"] for r in rs), 9), round(sum(r["latency_ms"] for r in rs) / len(rs), 6),
                    iso(min(r["created"] for r in rs)), iso(max(r["created"] for r in rs)),
                    sorted({r["user"] for r in rs if r["user"]}), sum(r["prompt_tokens"] for r in rs),
                    sum(r["completion_tokens"] for r in rs), sum(r["prompt_tokens"] + r["completion_tokens"] for r in rs))
    return out


async def test_a_helicone_script_reads_sessions_with_helicones_totals_from_the_sessions_projection(logged):
    client, state, org, other_key, mine, theirs = logged
    assert len(expected_sessions(mine)) > 2
    # Helicone's body (SessionQueryParams), its time range strictly around every request
    body = {"search": "", "timeFilter": {"startTimeUnixMs": ms(T0) - 1, "endTimeUnixMs": ms(T0 + dt.timedelta(days=4))},
            "timezoneDifference": 0, "filter": "all"}
    assert helicone_session_report(await post(client, "/v1/session/query", body)) == expected_sessions(mine)
    # the api's default list (last seen first, from the newest requests) and a sorted one (every session totalled)
    assert helicone_session_report(await post(client, "/v1/session/query", {})) == expected_sessions(mine)
    cost_sorted = await post(client, "/v1/session/query", {"sort": {"field": "cost_usd", "direction": "desc"}, "limit": 2})
    top = sorted(expected_sessions(mine).items(), key=lambda kv: kv[1][1], reverse=True)[:2]
    assert helicone_session_report(cost_sorted) == dict(top)
    # narrowed to gpt-4o: the totals of those requests
    gpt_4o = {"request_response_rmt": {"model": {"equals": "gpt-4o"}}}
    narrowed = await post(client, "/v1/session/query", {**body, "filter": gpt_4o})
    assert helicone_session_report(narrowed) == expected_sessions([r for r in mine if r["model"] == "gpt-4o"])
    # the other org: its own sessions of the same ids
    other = await post(client, "/v1/session/query", {}, headers={"Authorization": f"Bearer {other_key}"})
    assert helicone_session_report(other) == expected_sessions(theirs)

    # over whole UTC days the list, avg_latency included, is answered from the per-session-day projection alone
    from helicone_api import insights as ins

    window = {"start": T0.isoformat(), "end": (T0 + dt.timedelta(days=3)).isoformat()}
    assert helicone_session_report(await post(client, "/v1/session/query", {"filter": window})) == expected_sessions(mine)
    sql, params = ins.session_list_sql(org, ins.SessionQuery(filter=window))
    plan = "\n".join(r["explain"] for r in await state.analytics.query("EXPLAIN " + sql, params))
    assert re.findall(r"ReadFromMergeTree \(([^)]*)\)", plan) == ["sessions_v2"], plan

    # one session's answer carries the same names
    sid, want = next(iter(expected_sessions(mine).items()))
    detail = (await client.get(f"/v1/session/{sid}")).json()
    assert helicone_session_report({"data": [detail], "error": None}) == {sid: want}


OLD_SESSIONS = ("sessions_v1", analytics._aggregate_projection(
    ["org_id", "session_id", GRAINS["day"][0]],
    analytics._TOTALS + ["errors", "first_seen", "last_seen", "last_response", "session_name", "session_users"]))


async def test_a_table_with_the_old_sessions_projection_gets_the_one_with_latency_and_answers_avg_latency(analytics_settings):
    """An upgrade: request_log's sessions projection (v1, without a latency sum) is replaced by sessions_v2 at start
    (analytics.migrate_projections), and the session list's avg_latency is then read from it, as the rows give it."""
    from helicone_api import insights as ins

    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db, org, start = store.database, ORGS[0], dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    old = {**{k: v for k, v in analytics.REQUEST_LOG_PROJECTIONS.items() if not k.startswith("sessions_")},
           OLD_SESSIONS[0]: OLD_SESSIONS[1]}
    try:
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        await store._command(analytics.REQUEST_LOG_DDL.format(
            db=db, table="request_log", sorting_key=analytics.REQUEST_LOG_SORTING_KEY, projections=analytics._projections_ddl(old)))
        await store._command(insert_sql(db, 4_000, start=start, sessions=200, users=50))
        await store.init_schema()
        names = {r["name"] for r in await store.query(
            "SELECT name FROM system.projections WHERE database = {d:String} AND table = 'request_log'", {"d": db})}
        assert "sessions_v1" not in names and "sessions_v2" in names
        await store._command(f"OPTIMIZE TABLE {db}.request_log FINAL")  # the parts rebuilt with it

        window = {"start": (start + dt.timedelta(days=2)).isoformat(), "end": (start + dt.timedelta(days=9)).isoformat()}
        sql, params = ins.session_list_sql(org, ins.SessionQuery(filter=window, sort={"field": "requests"}, limit=1000))
        plan = "\n".join(r["explain"] for r in await store.query("EXPLAIN " + sql, params))
        assert re.findall(r"ReadFromMergeTree \(([^)]*)\)", plan) == ["sessions_v2"], plan
        got = {s["session_id"]: s["avg_latency"] for s in map(ins.session_json, await store.query(sql, params))}
        raw = await store.query(
            "SELECT session_id, avg(latency_ms) AS a FROM {db}.request_log FINAL WHERE org_id = {org:String} AND session_id != '' "
            "AND request_created_at >= {s:DateTime64(3, 'UTC')} AND request_created_at < {e:DateTime64(3, 'UTC')} "
            "GROUP BY session_id SETTINGS output_format_json_quote_64bit_integers = 0",
            {"org": org, "s": "2026-10-03 00:00:00.000", "e": "2026-10-10 00:00:00.000"})
        assert len(got) == len(raw) > 10
        assert got == {r["session_id"]: pytest.approx(r["a"], rel=1e-12) for r in raw}
    finally:
        await store.close()


# ---- users ----------------------------------------------------------------------------------------------


def expected_users(rows: list[dict]) -> dict[str, tuple]:
    users = by([r for r in rows if r["user"]], lambda r: r["user"])
    return {u: (len(rs), round(sum(r["cost_usd"] for r in rs), 9), sum(r["prompt_tokens"] for r in rs),
                sum(r["completion_tokens"] for r in rs)) for u, rs in users.items()}


async def test_a_helicone_script_reads_users_with_helicones_count_and_cost(logged):
    client, state, org, other_key, mine, theirs = logged
    assert helicone_user_report(await post(client, "/v1/user/query", {})) == expected_users(mine)
    picked = await post(client, "/v1/user/query", {"userIds": ["alice", "Dave", "nobody"]})  # Helicone's UserQueryParams
    assert helicone_user_report(picked) == {u: v for u, v in expected_users(mine).items() if u in ("alice", "Dave")}
    for u in picked["data"]:  # the api's own names, same values
        assert (u["count"], u["cost"]) == (u["requests"], u["cost_usd"])
    other = await post(client, "/v1/user/query", {}, headers={"Authorization": f"Bearer {other_key}"})
    assert helicone_user_report(other) == expected_users(theirs)
