"""The request explorer on each analytics backend: Helicone's filter tree, sorting on any column,
cursor pages that stay exact while requests arrive, and the streamed CSV / JSON Lines export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from helicone_api.explorer import CSV_COLUMNS
from helicone_api.filters import MAX_CONDITIONS, MAX_DEPTH
from helicone_core import events

from services.api.tests import test_api
from services.api.tests.test_api import T0, add_request
from tests.support.inloop import asgi_exchange

api = test_api.api  # the fixture: an api on a real Postgres and each analytics backend
chdb_only = pytest.mark.parametrize("analytics_settings", ["chdb"], indirect=True)  # validation: no backend involved


async def ids(client, filter_=None, **body) -> list[str]:
    if filter_ is not None:
        body["filter"] = filter_
    r = await client.post("/v1/request/query", json=body)
    assert r.status_code == 200, r.text
    return [d["request_id"] for d in r.json()["data"]]


def tree(op, left, right, *more):
    node = {"left": left, "operator": op, "right": right}
    return tree(op, node, *more) if more else node


async def test_the_filter_tree_selects_what_helicone_s_would(api):
    client, state, org, other_org, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o", user="alice", props={"env": "prod", "team": "Core"},
                          status=200, latency_ms=100, cost_usd=0.25, session_id="s1", session_path="/chat",
                          session_name="Chat bot", region="eu-west-1", prompt_id="greet",
                          usage=events.Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120, known=True))
    b = await add_request(state, org, minutes=1, model="gpt-4o-mini", user="bob", props={"env": "dev"}, status=429,
                          latency_ms=900, cost_usd=0.01, session_id="s2", session_path="/chat/retry", session_name="chat BOT",
                          region="us-east-1")
    c = await add_request(state, org, minutes=2, model="claude-3-5-sonnet", user="carol", props={"env": "prod"}, status=500,
                          latency_ms=2500, cost_usd=1.5, error="upstream timeout", cache_hit=True)
    await add_request(state, other_org, minutes=3, model="gpt-4o", user="alice", status=500, props={"env": "prod"})
    await client.put(f"/v1/request/{a}/score/accuracy", json={"value": 0.9})
    await client.put(f"/v1/request/{b}/score/accuracy", json={"value": 0.4})

    model_is = {"request": {"model": {"equals": "gpt-4o"}}}
    failed = {"response": {"status": {"gte": 400}}}
    cases = [
        (model_is, {a}),
        ({"request": {"model": {"not-equals": "gpt-4o"}}}, {b, c}),
        ({"request": {"model": {"like": "gpt-4o%"}}}, {a, b}),
        ({"request": {"model": {"ilike": "GPT%MINI"}}}, {b}),
        ({"request": {"model": {"contains": "sonnet"}}}, {c}),
        ({"request": {"model": {"in": ["gpt-4o-mini", "claude-3-5-sonnet", "nope"]}}}, {b, c}),
        (failed, {b, c}),
        ({"response": {"status": {"gt": 200, "lt": 500}}}, {b}),  # several operators: all hold
        (tree("and", model_is, failed), set()),
        (tree("or", model_is, failed), {a, b, c}),
        (tree("and", {"request": {"model": {"like": "gpt%"}}}, tree("or", failed, {"scores": {"accuracy": {"gte": 0.5}}})), {a, b}),
        ({"user": {"user_id": {"equals": "alice"}}}, {a}),
        ({"request": {"user_id": {"in": ["bob", "carol"]}}}, {b, c}),
        ({"session": {"session_id": {"equals": "s2"}}}, {b}),
        ({"session": {"session_path": {"like": "/chat%"}}}, {a, b}),
        ({"session": {"session_name": {"ilike": "chat bot"}}}, {a, b}),
        ({"properties": {"ENV": {"equals": "prod"}}}, {a, c}),  # property names are matched in any case
        ({"properties": {"env": {"equals": "prod"}, "team": {"contains": "or"}}}, {a}),
        ({"properties": {"team": {"not-equals": "Core"}}}, {b, c}),  # no such property: ''
        ({"scores": {"accuracy": {"gte": 0.5}}}, {a}),
        ({"scores": {"accuracy": {"lt": 0.5}}}, {b}),  # c has no score: never matches
        ({"scores": {"accuracy": {"in": [0.4, 0.9]}}}, {a, b}),
        ({"request": {"created_at": {"gte": (T0 + dt.timedelta(minutes=1)).isoformat()}}}, {b, c}),
        ({"request": {"created_at": {"lt": "2026-03-01T12:01:00"}}}, {a}),  # naive is UTC
        ({"response": {"latency_ms": {"gt": 500}}}, {b, c}),
        ({"response": {"cost_usd": {"lte": 0.25}}}, {a, b}),
        ({"response": {"total_tokens": {"gte": 100}}}, {a}),
        ({"response": {"error": {"contains": "timeout"}}}, {c}),
        ({"request": {"cache_hit": {"equals": True}}}, {c}),
        ({"request": {"region": {"equals": "eu-west-1"}}}, {a}),
        ({"request": {"prompt_id": {"equals": "greet"}}}, {a}),
        ({"request": {"request_id": {"in": [a, c]}}}, {a, c}),
        # a left-deep chain, as a UI adding one filter at a time builds it
        (tree("and", {"request": {"provider": {"equals": "openai"}}}, {"user": {"user_id": {"not-equals": "x"}}},
              {"response": {"status": {"lt": 999}}}, model_is), {a}),
    ]
    for filter_, expected in cases:
        assert set(await ids(client, filter_)) == expected, filter_
    # text values travel as parameters: quotes, backslashes, LIKE wildcards and SQL are data
    for text in ("it's", "a\\b", "{f0:String}", "') OR 1=1 --"):
        assert await ids(client, {"request": {"model": {"equals": text}}}) == []
        assert await ids(client, {"properties": {text: {"contains": text}}}) == []


async def test_time_conditions_hold_exactly_for_a_time_finer_than_the_stored_millisecond(api):
    """Times are stored to the millisecond; a caller's may carry microseconds (Python's isoformat()). `> x` and
    `<= x` held for x rounded up, so a request 0.5 ms after x was not `> x` but was `<= x`."""
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0)  # created at T0 exactly
    before = (T0 - dt.timedelta(microseconds=500)).isoformat()  # half a millisecond before it
    after = (T0 + dt.timedelta(microseconds=500)).isoformat()
    for op, when, expected in (("gt", before, [rid]), ("gte", before, [rid]), ("lt", before, []), ("lte", before, []),
                               ("gt", after, []), ("gte", after, []), ("lt", after, [rid]), ("lte", after, [rid])):
        assert await ids(client, {"request": {"created_at": {op: when}}}) == expected, (op, when)
    for op in ("equals", "not-equals"):  # no stored time equals it: refused rather than matched against another time
        field, message = await problem(client, {"filter": {"request": {"created_at": {op: before}}}})
        assert field == f"filter.request.created_at.{op}" and "millisecond" in message, message
    assert await ids(client, {"request": {"created_at": {"equals": T0.isoformat()}}}) == [rid]


@chdb_only
async def test_not_contains_selects_the_requests_whose_text_lacks_the_substring(api):
    """Helicone's text operators include not-contains; a filter using it, as Helicone's clients send, was a 422."""
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o", props={"env": "prod-eu"})
    b = await add_request(state, org, minutes=1, model="claude-3-5-sonnet", props={"env": "dev"})
    c = await add_request(state, org, minutes=2, model="gpt-4o-mini")
    assert set(await ids(client, {"request": {"model": {"not-contains": "gpt"}}})) == {b}
    assert set(await ids(client, {"request": {"model": {"not-contains": "GPT"}}})) == {b}  # in any case, as contains
    assert set(await ids(client, {"properties": {"env": {"not-contains": "prod"}}})) == {b, c}  # no such property: ''
    assert set(await ids(client, {"request": {"model": {"contains": "gpt", "not-contains": "mini"}}})) == {a}


@chdb_only
async def test_contains_and_not_contains_match_in_any_case_as_helicone_s_do(api):
    """Helicone's contains and not-contains are ILIKE '%text%' (packages/filters/filters.ts): a script moved from it
    asking for model contains "gpt-4" silently missed "GPT-4o-mini", and not-contains "gpt" kept it."""
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o", props={"team": "Core"})
    b = await add_request(state, org, minutes=1, model="GPT-4o-mini", props={"team": "core-eu"})
    c = await add_request(state, org, minutes=2, model="claude-3-5-sonnet", props={"team": "100%_sure"})
    assert set(await ids(client, {"request": {"model": {"contains": "gpt-4"}}})) == {a, b}
    assert set(await ids(client, {"request": {"model": {"not-contains": "GPT"}}})) == {c}
    assert set(await ids(client, {"properties": {"TEAM": {"contains": "CORE"}}})) == {a, b}
    assert set(await ids(client, {"properties": {"team": {"contains": "%_"}}})) == {c}  # the text itself, never a pattern
    assert set(await ids(client, {"response": {"error": {"not-contains": "x"}}})) == {a, b, c}


@chdb_only
async def test_helicone_s_documented_query_body_is_answered_as_helicone_would(api):
    """Helicone's own example body for POST /v1/request/query (valhalla/jawn/src/controllers/public/requestController.ts):
    `"filter": "all"`, a sort object {"created_at": "desc"} and isCached / isScored / isPartOfExperiment were each a
    422, so no script moved from Helicone got an answer."""
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o", latency_ms=300, usage=events.Usage(
        prompt_tokens=1, completion_tokens=50, total_tokens=51, known=True))
    b = await add_request(state, org, minutes=1, model="gpt-4o-mini", latency_ms=100, cache_hit=True)
    c = await add_request(state, org, minutes=2, model="claude-3-5-sonnet", latency_ms=900)
    documented = {"filter": "all", "isCached": False, "limit": 10, "offset": 0, "sort": {"created_at": "desc"},
                  "isScored": False, "isPartOfExperiment": False, "includeInputs": True}
    assert await ids(client, **documented) == [c, a]  # isCached false: what the provider answered, as Helicone's table
    assert await ids(client, **{**documented, "isCached": True}) == [b]
    assert await ids(client, "all") == [c, b, a]
    assert await ids(client, "all", sort={"created_at": "asc"}) == [a, b, c]
    assert await ids(client, "all", sort={"latency": "desc"}) == [c, a, b]
    assert (await ids(client, "all", sort={"completion_tokens": "desc"}))[0] == a
    assert await ids(client, "all", sort={"body_model": "asc"}) == [c, a, b]
    assert await ids(client, tree("and", "all", {"request": {"model": {"like": "gpt%"}}})) == [b, a]
    assert await ids(client, tree("or", {"request": {"model": {"equals": "x"}}}, "all")) == [c, b, a]
    assert await ids(client, {"model": "gpt-4o-mini"}, isCached=False) == []  # with the flat form too
    export = {**{k: v for k, v in documented.items() if k != "offset"}, "format": "jsonl"}  # the export has no offset
    lines = (await client.post("/v1/request/export", json=export)).text.splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [c, a]


@chdb_only
async def test_helicone_s_request_response_rmt_leaf_selects_by_its_own_field_names(api):
    """Helicone's clickhouse filter leaf (`request_response_rmt`, packages/filters/filterDefs.ts), as its docs'
    examples and its export scripts send it, was a 422 ("Extra inputs are not permitted")."""
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o", user="abc@email.com", props={"env": "prod"},
                          latency_ms=300, status=200)
    b = await add_request(state, org, minutes=1, model="gpt-4o-mini", user="bob", props={"env": "dev"},
                          latency_ms=900, status=429, time_to_first_token_ms=40)
    rmt = "request_response_rmt"
    cases = [
        (tree("and", {rmt: {"user_id": {"equals": "abc@email.com"}}}, {rmt: {"model": {"contains": "GPT-4"}}}), {a}),
        ({rmt: {"properties": {"env": {"equals": "dev"}}}}, {b}),
        ({rmt: {"status": {"gte": 400}, "latency": {"gt": 500}}}, {b}),  # several fields: all hold
        ({rmt: {"time_to_first_token": {"lt": 100}}}, {b}),
        ({rmt: {"request_created_at": {"gte": (T0 + dt.timedelta(minutes=1)).isoformat()}}}, {b}),
        ({rmt: {"request_id": {"equals": a}}}, {a}),
        ({rmt: {"total_tokens": {"equals": 15}, "provider": {"equals": "openai"}}}, {a, b}),
    ]
    for filter_, expected in cases:
        assert set(await ids(client, filter_)) == expected, filter_


@chdb_only
async def test_helicone_s_forms_this_api_cannot_answer_are_a_422_naming_them(api):
    client, *_ = api
    cases = [
        ({"filter": {"request_response_rmt": {"threat": {"equals": True}}}}, "filter.request_response_rmt.threat",
         "not a request_response_rmt field; use "),
        ({"filter": tree("or", "all", {"request_response_rmt": {"scores": {"x": {"equals": "1"}}}})},
         "filter.right.request_response_rmt.scores", "not a request_response_rmt field"),
        ({"filter": "everything"}, "filter", '"all"'),
        ({"sort": {"request_prompt": "asc"}}, "sort", "created_at, latency"),
        ({"sort": {"created_at": "up"}}, "sort", '"asc" or "desc"'),
        ({"sort": {"created_at": "desc", "latency": "asc"}}, "sort", "one field"),
        ({"isScored": True}, "isScored", "not supported"),
        ({"isPartOfExperiment": True}, "isPartOfExperiment", "not supported"),
        ({"filter": {"cache_hit": True}, "isCached": False}, "isCached", "cache_hit"),
    ]
    for body, field, message in cases:
        got_field, got_message = await problem(client, body)
        assert got_field == field and message in got_message, (body, got_field, got_message)


@chdb_only
async def test_a_like_pattern_ending_in_a_lone_backslash_is_a_422_not_a_500(api):
    """A backslash escapes the next character of a like/ilike pattern; one at the very end escapes nothing, and
    ClickHouse failed the query (CANNOT_PARSE_ESCAPE_SEQUENCE): the caller got a 500 for a typo."""
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0, model="C:\\models\\", props={"dir": "a\\"})
    for filter_, field in (({"request": {"model": {"like": "C:\\%\\"}}}, "filter.request.model.like"),
                           ({"properties": {"dir": {"ilike": "\\"}}}, "filter.properties.dir.ilike"),
                           ({"request": {"model": {"like": "x\\\\\\"}}}, "filter.request.model.like")):  # \\ then a lone \
        got_field, message = await problem(client, {"filter": filter_})
        assert (got_field, "backslash" in message) == (field, True), (filter_, message)
    assert await ids(client, {"request": {"model": {"like": "C:\\\\%\\\\"}}}) == [rid]  # an escaped backslash is one
    assert await ids(client, {"properties": {"dir": {"ilike": "A\\\\"}}}) == [rid]


@chdb_only
async def test_a_cost_or_time_to_first_token_the_api_shows_as_unknown_never_matches_a_condition_on_it(api):
    """An unpriced request (cost_usd null) was stored as cost 0 and a non-streamed one (time_to_first_token_ms null) as
    -1, and conditions read those: "cost_usd lte 0.01" listed every unpriced request as cheap, "ttft lt 100" every
    non-streamed one as fast."""
    client, state, org, _, _ = api
    priced = await add_request(state, org, minutes=0, cost_usd=0.25, time_to_first_token_ms=50)
    unknown = await add_request(state, org, minutes=1, cost_usd=0.0, cost_known=False)  # ttft -1: not streamed
    free = await add_request(state, org, minutes=2, cache_hit=True, time_to_first_token_ms=300)  # known: cost 0
    shown = {d["request_id"]: d for d in (await client.post("/v1/request/query", json={})).json()["data"]}
    assert (shown[unknown]["cost_usd"], shown[unknown]["time_to_first_token_ms"], shown[free]["cost_usd"]) == (None, None, 0.0)
    cases = [
        ({"response": {"cost_usd": {"lte": 0.3}}}, {priced, free}),
        ({"response": {"cost_usd": {"equals": 0}}}, {free}),
        ({"response": {"cost_usd": {"not-equals": 0.25}}}, {free}),
        ({"response": {"time_to_first_token_ms": {"lt": 100}}}, {priced}),
        ({"response": {"time_to_first_token_ms": {"not-equals": 50}}}, {free}),
        (tree("or", {"response": {"cost_usd": {"gt": 1}}}, {"request": {"model": {"equals": "gpt-4o-mini"}}}),
         {priced, unknown, free}),
    ]
    for filter_, expected in cases:
        assert set(await ids(client, filter_)) == expected, filter_


async def test_the_flat_filter_still_works_beside_the_tree(api):
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, model="gpt-4o", props={"env": "prod"})
    b = await add_request(state, org, minutes=1, model="gpt-4o-mini")
    assert await ids(client, {"model": "gpt-4o"}) == [a]
    assert await ids(client, {"properties": {"env": "prod"}}) == [a]
    assert await ids(client, {"properties": {"env": {"equals": "prod"}}}) == [a]  # the tree's form of the same
    assert await ids(client, {}) == [b, a]


async def problem(client, body: dict, path: str = "/v1/request/query") -> tuple[str, str]:
    r = await client.post(path, json=body)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    return details[0]["field"], details[0]["message"]


@chdb_only
async def test_a_bad_tree_is_a_422_naming_the_place(api):
    client, *_ = api
    deep = {"request": {"model": {"equals": "x"}}}
    for _ in range(MAX_DEPTH + 1):
        deep = {"left": deep, "operator": "and", "right": {"request": {"model": {"equals": "y"}}}}
    many = {"properties": {f"k{i}": {"equals": "v", "not-equals": "w", "contains": "x", "like": "y"} for i in range(17)}}
    inner = tree("and", {"request": {"model": {"equals": "x"}}}, {"request": {"model": {"gt": "x"}}})
    cases = [
        (tree("and", {"request": {"model": {"equals": "x"}}}, tree("or", {"response": {"status": {"gte": 400}}},
                                                                   {"request": {"modle": {"equals": "x"}}})),
         "filter.right.right.request.modle", "not a request field; use request_id, created_at, model"),
        (inner, "filter.right.request.model.gt", "not an operator for text; use equals, not-equals, like"),
        ({"response": {"status": {"gte": 1000}}}, "filter.response.status.gte", "999"),
        ({"response": {"status": {"gte": "400"}}}, "filter.response.status.gte", "integer"),
        ({"response": {"latency_ms": {"gt": -1}}}, "filter.response.latency_ms.gt", "greater than or equal to 0"),
        ({"response": {"cost_usd": {"gt": True}}}, "filter.response.cost_usd.gt", "not true/false"),
        ({"response": {"cost_usd": {"like": "1%"}}}, "filter.response.cost_usd.like", "not an operator for a number"),
        ({"request": {"cache_hit": {"gt": 0}}}, "filter.request.cache_hit.gt", "not an operator for true/false"),
        ({"request": {"created_at": {"gte": "0001-01-01T00:00:00"}}}, "filter.request.created_at.gte", "between 1900"),
        ({"user": {"user_id": {"in": []}}}, "filter.user.user_id.in", "at least 1"),
        ({"user": {"user_id": {"in": [str(i) for i in range(101)]}}}, "filter.user.user_id.in", "at most 100"),
        ({"user": {"user_id": "alice"}}, "filter.user.user_id", "operator -> value"),
        ({"request": {}}, "filter.request", "name at least one request field"),
        ({"request": {"model": {}}}, "filter.request.model", "at least one operator"),
        ({"request": {"model": {"equals": None}}}, "filter.request.model", "at least one operator"),  # null: not given
        ({"request": {"model": None}}, "filter.request", "name at least one request field"),
        ({"scores": {"bad name!": {"gte": 1}}}, "filter.scores.bad name!.[key]", "pattern"),
        ({"left": {"request": {"model": {"equals": "x"}}}, "operator": "xor", "right": {"user": {"user_id": {"equals": "a"}}}},
         "filter.operator", "'and' or 'or'"),
        ({"left": {"request": {"model": {"equals": "x"}}}, "operator": "and"}, "filter", "missing right"),
        ({"left": {"request": {"model": {"equals": "x"}}}, "operator": "and", "right": 5}, "filter.right", "must be an object"),
        ({"request": {"model": {"equals": "x"}}, "session": {"session_id": {"equals": "s"}}}, "filter",
         "exactly one of request, response, user, session, properties, scores"),
        ({"left": {"request": {"model": {"equals": "x"}}}, "operator": "or", "right": {"requests": {}}}, "filter.right.requests",
         "not a filter key: a node is {left, operator, right} or one of request, response"),
        (deep, "filter", f"deeper than {MAX_DEPTH} levels"),
        (many, "filter", f"at most {MAX_CONDITIONS}"),
    ]
    for filter_, field, message in cases:
        got_field, got_message = await problem(client, {"filter": filter_})
        assert got_field == field and message in got_message, (filter_, got_field, got_message)
        # the export takes the same filter and says the same
        assert await problem(client, {"filter": filter_, "format": "csv"}, "/v1/request/export") == (got_field, got_message)


@chdb_only
async def test_a_property_name_with_a_lone_surrogate_is_refused_saying_so_in_either_form(api):
    """The flat filter's message says what is wrong with such a name; the tree's said only that it was
    not "a valid string" (its property names skipped the UTF-8 check every other filter text has)."""
    client, *_ = api
    for filter_ in ({"properties": {"team\udfff": "x"}}, {"properties": {"team\udfff": {"equals": "x"}}}):
        r = await client.post("/v1/request/query", content=json.dumps({"filter": filter_}), headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        [d] = r.json()["error"]["details"]
        assert d["field"].startswith("filter.properties.team") and "lone surrogate" in d["message"], (filter_, d)


async def test_sorting_on_any_column_either_way_with_the_old_sort_names(api):
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, latency_ms=300, cost_usd=0.1, model="b-model")
    b = await add_request(state, org, minutes=1, latency_ms=100, cost_usd=0.3, model="c-model")
    c = await add_request(state, org, minutes=2, latency_ms=200, cost_usd=0.2, model="a-model")
    assert await ids(client, sort="created_at_desc") == [c, b, a]
    assert await ids(client, sort="created_at_asc") == [a, b, c]
    assert await ids(client, sort="latency_desc") == [a, c, b]
    assert await ids(client, sort="cost_desc") == [b, c, a]
    assert await ids(client, sort={"field": "latency_ms", "direction": "asc"}) == [b, c, a]
    assert await ids(client, sort={"field": "model", "direction": "asc"}) == [c, a, b]
    assert await ids(client, sort={"field": "cost_usd"}) == [b, c, a]  # desc unless asked
    field, message = await problem(client, {"sort": {"field": "body", "direction": "asc"}})
    assert field == "sort.field" and "latency_ms" in message
    field, message = await problem(client, {"sort": "latency_asc"})
    assert field == "sort" and "created_at_desc" in message


@chdb_only
async def test_sorting_on_cost_or_time_to_first_token_puts_requests_where_it_is_unknown_last_either_way(api):
    """The answer shows an unpriced request's cost and a non-streamed one's time to first token as null, but sorting
    read the stored 0 and -1: "fastest first token" began with every non-streamed request, "cheapest" with every
    unpriced one. Unknown values now come last in either direction, as SQL's NULLS LAST, and cursors page through them."""
    client, state, org, _, _ = api
    a = await add_request(state, org, minutes=0, cost_usd=0.25, time_to_first_token_ms=50)
    unknown = {await add_request(state, org, minutes=m, cost_usd=0.0, cost_known=False) for m in (1, 2)}
    c = await add_request(state, org, minutes=3, cache_hit=True, time_to_first_token_ms=300)  # cost known: 0
    for field, direction, known in (("time_to_first_token_ms", "asc", [a, c]), ("time_to_first_token_ms", "desc", [c, a]),
                                    ("cost_usd", "asc", [c, a]), ("cost_usd", "desc", [a, c])):
        sort = {"field": field, "direction": direction}
        everything = await ids(client, sort=sort)
        assert everything[:2] == known and set(everything[2:]) == unknown, sort
        paged, cursor = [], None
        while True:
            r = await client.post("/v1/request/query", json={"sort": sort, "limit": 1, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            paged += [d["request_id"] for d in r.json()["data"]]
            if (cursor := r.json()["next_cursor"]) is None:
                break
        assert paged == everything, sort


async def test_cursor_pages_stay_exact_while_requests_arrive(api):
    client, state, org, other_org, _ = api
    # latencies with ties, so that the request id has to break them
    rows = [await add_request(state, org, minutes=i, latency_ms=1 + 100 * (i % 5)) for i in range(23)]
    await add_request(state, other_org, minutes=0, latency_ms=250)
    sort = {"field": "latency_ms", "direction": "asc"}
    body = {"sort": sort, "limit": 5, "filter": {"request": {"provider": {"equals": "openai"}}}}
    seen, cursor, pages, arrived_late = [], None, 0, []
    while True:
        r = await client.post("/v1/request/query", json={**body, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        seen += [d["request_id"] for d in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # while paging: one request that sorts before the page just read (an offset would shift by it),
        # and one that sorts after every request so far (it must still show up, once)
        await add_request(state, org, minutes=100 + pages, latency_ms=0)
        arrived_late.append(await add_request(state, org, minutes=100 + pages, latency_ms=10_000 + pages))
    assert len(seen) == len(set(seen))  # nothing twice
    everything = await ids(client, sort=sort, limit=1000)
    assert seen == [i for i in everything if i in set(rows) | set(arrived_late)]
    assert set(rows) <= set(seen) and set(arrived_late) <= set(seen)
    # 23 rows and one late one after each page but the last, 5 per page: 6 pages, the last one short and without a cursor
    assert (pages, len(seen)) == (6, 28)


@pytest.mark.parametrize("field", ["created_at", "cost_usd", "model", "time_to_first_token_ms", "total_tokens", "region"])
async def test_cursor_pages_give_the_same_order_as_one_query_on_every_kind_of_column(api, field):
    client, state, org, _, _ = api
    models = ["a\\b", "it's", "tab\tx", "é", "", "a\\b", "{f0:String}", "z"]  # ties and awkward text
    for i, model in enumerate(models):
        await add_request(state, org, minutes=i % 3, model=model, cost_usd=[0.1, 0.2, 1e-7, 0.1 + 0.2][i % 4],
                          time_to_first_token_ms=[-1, 5, 2**40][i % 3], region=["", "eu"][i % 2],
                          usage=events.Usage(prompt_tokens=i, completion_tokens=0, total_tokens=[7, 2**62][i % 2], known=True))
    for direction in ("asc", "desc"):
        sort = {"field": field, "direction": direction}
        everything = await ids(client, sort=sort, limit=1000)
        paged, cursor = [], None
        while True:
            r = await client.post("/v1/request/query", json={"sort": sort, "limit": 3, **({"cursor": cursor} if cursor else {})})
            assert r.status_code == 200, r.text
            paged += [d["request_id"] for d in r.json()["data"]]
            if (cursor := r.json()["next_cursor"]) is None:
                break
        assert paged == everything and len(everything) == len(models), (field, direction)


async def test_filter_sql_is_the_where_clause_for_any_view_of_requests(api):
    """Other views (sessions, users, metrics) build their WHERE from filter_sql: org first, then the filter."""
    from helicone_api.filters import FilterNode, filter_sql

    client, state, org, other_org, _ = api
    await add_request(state, org, minutes=0, model="gpt-4o", user="alice")
    await add_request(state, org, minutes=1, model="gpt-4o", user="bob", status=500)
    await add_request(state, other_org, minutes=1, model="gpt-4o", user="bob", status=500)
    node = FilterNode.model_validate(tree("and", {"request": {"model": {"equals": "gpt-4o"}}}, {"response": {"status": {"gte": 400}}}))
    where, params = filter_sql(org, node)
    assert where[0] == "org_id = {org:String}" and params["org"] == org
    assert "gpt-4o" not in " ".join(where)  # values are parameters, never SQL text
    rows = await state.analytics.query(
        f"SELECT user_id, count() AS n FROM {{db}}.request_log FINAL WHERE {' AND '.join(where)} GROUP BY user_id "
        "SETTINGS output_format_json_quote_64bit_integers = 0", params)
    assert rows == [{"user_id": "bob", "n": 1}]
    assert filter_sql(org, None) == (["org_id = {org:String}"], {"org": org})


async def test_a_changed_or_foreign_cursor_is_a_422(api):
    client, state, org, _, other_key = api
    for i in range(3):
        await add_request(state, org, minutes=i)
    page = (await client.post("/v1/request/query", json={"limit": 1})).json()
    cursor = page["next_cursor"]
    assert cursor and (await client.post("/v1/request/query", json={"limit": 1, "cursor": cursor})).status_code == 200
    body, mac = cursor.split(".")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B") + "." + mac
    for bad, message in ((flipped, "does not belong"), ("x", "not a cursor"), (cursor + "x", "does not belong"),
                         ("a.b.c", "not a cursor")):
        field, got = await problem(client, {"limit": 1, "cursor": bad})
        assert field == "cursor" and message in got, (bad, got)
    # a cursor of another query: another sort, another filter, another org
    assert "does not belong" in (await problem(client, {"limit": 1, "cursor": cursor, "sort": "created_at_asc"}))[1]
    assert "does not belong" in (await problem(client, {"limit": 1, "cursor": cursor, "filter": {"model": "x"}}))[1]
    r = await client.post("/v1/request/query", json={"limit": 1, "cursor": cursor}, headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "cursor"
    assert (await problem(client, {"cursor": cursor, "offset": 1}))[1].endswith("give a cursor or an offset, not both")
    assert (await problem(client, {"cursor": "not base64!"}))[0] == "cursor"


async def many_requests(state, org, n: int) -> list[str]:
    """n requests in one insert, with awkward text for CSV (commas, quotes, newlines)."""
    out, rows = [], []
    for i in range(n):
        ev = events.RequestLogged(
            schema_version=1, request_id=events.new_request_id(), org_id=org, status=200 if i % 7 else 500, provider="openai",
            model="gpt-4o", user_id=f"user,{i % 3}", properties={"note": 'say "hi",\nthen \\leave', "i": str(i)},
            latency_ms=i, time_to_first_token_ms=-1, cost_usd=i / 1000, cost_known=True, session_id=f"s{i % 10}",
            usage=events.Usage(prompt_tokens=i, completion_tokens=1, total_tokens=i + 1, known=True),
        )
        events.set_time(ev.request_created_at, T0 + dt.timedelta(seconds=i))
        rows.append(events.analytics_row(ev, request_key="", response_key="", request_bytes=0, response_bytes=0,
                                         request_content_type="", response_content_type="", truncated=False))
        out.append(ev.request_id)
    await state.analytics.insert("request_log", rows)
    return out


async def export(app, key: str, body: dict) -> tuple[int, dict, list[bytes]]:
    """The export straight through ASGI: status, headers and each body chunk as the api sent it."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/request/export", "raw_path": b"/v1/request/export", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())],
             "client": ("127.0.0.1", 5000), "server": ("api", 80)}
    messages = await asgi_exchange(app, scope, [json.dumps(body).encode()])
    start = next(m for m in messages if m["type"] == "http.response.start")
    chunks = [m["body"] for m in messages if m["type"] == "http.response.body" and m.get("body")]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, chunks


async def test_the_export_streams_every_matching_request_as_csv_or_json_lines(api):
    client, state, org, other_org, _ = api
    rids = await many_requests(state, org, 5000)
    await many_requests(state, other_org, 10)
    await client.put(f"/v1/request/{rids[4999]}/score/accuracy", json={"value": 0.75})
    app, key = client._transport.app, client.headers["authorization"].removeprefix("Bearer ")

    status, headers, chunks = await export(app, key, {"format": "csv", "sort": "created_at_asc"})
    assert status == 200 and headers["content-type"] == "text/csv; charset=utf-8"
    assert headers["content-disposition"] == 'attachment; filename="requests.csv"'
    assert len(chunks) >= 5  # a page at a time (1000 rows), not one body
    records = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert list(records[0]) == list(CSV_COLUMNS)
    assert [r["request_id"] for r in records] == rids
    last = records[-1]
    assert json.loads(last["properties"]) == {"note": 'say "hi",\nthen \\leave', "i": "4999"}
    assert (last["user_id"], last["latency_ms"], last["cost_usd"], last["total_tokens"], last["session_id"]) == (
        "user,1", "4999", "4.999", "5000", "s9")
    assert json.loads(last["scores"]) == {"accuracy": 0.75} and last["usage_known"] == "true" and last["prompt_id"] == ""

    # JSON Lines: each line is the request as the query returns it
    failed = {"response": {"status": {"gte": 500}}}
    status, headers, chunks = await export(app, key, {"format": "jsonl", "filter": failed, "sort": {"field": "latency_ms"}})
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    assert [d["latency_ms"] for d in lines] == sorted((i for i in range(5000) if i % 7 == 0), reverse=True)
    page = (await client.post("/v1/request/query", json={"filter": failed, "sort": {"field": "latency_ms"}, "limit": 3})).json()
    assert lines[:3] == page["data"]

    status, _, chunks = await export(app, key, {"format": "jsonl", "limit": 1234, "sort": "created_at_asc"})
    assert [json.loads(line)["request_id"] for line in b"".join(chunks).decode().splitlines()] == rids[:1234]
    status, _, chunks = await export(app, key, {"format": "csv", "filter": {"model": "nothing"}})
    assert status == 200 and b"".join(chunks).decode().splitlines() == [",".join(CSV_COLUMNS)]


@chdb_only
async def test_the_csv_export_neutralises_text_a_spreadsheet_would_run_as_a_formula(api):
    """Callers choose user ids, properties, session names and models; a CSV cell starting with = + - @ (or a tab or
    carriage return) is run as a formula by Excel and Sheets when the export is opened (CSV injection). Such text
    now starts with a ' in the CSV; numbers and the JSON Lines export are as stored."""
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0, model="+cmd|' /C calc'!A0", user='=HYPERLINK("http://evil","x")',
                            session_id="@SUM(1+1)", session_name="-2+3", error="\t=1+1", region="\r=1", cost_usd=0.25)
    app, key = client._transport.app, client.headers["authorization"].removeprefix("Bearer ")
    status, _, chunks = await export(app, key, {"format": "csv"})
    [record] = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert status == 200 and record["request_id"] == rid
    assert (record["model"], record["user_id"], record["session_id"], record["session_name"], record["error"],
            record["region"]) == ("'+cmd|' /C calc'!A0", '\'=HYPERLINK("http://evil","x")', "'@SUM(1+1)", "'-2+3", "'\t=1+1",
                                  "'\r=1")
    assert (record["cost_usd"], record["latency_ms"], record["provider"]) == ("0.25", "120", "openai")
    status, _, chunks = await export(app, key, {"format": "jsonl"})
    [line] = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    assert (line["user_id"], line["session"]["name"]) == ('=HYPERLINK("http://evil","x")', "-2+3")


@chdb_only
async def test_export_requests_are_checked_before_anything_is_sent(api):
    client, *_ = api
    assert await problem(client, {"filter": {}}, "/v1/request/export") == ("format", "Field required")
    field, message = await problem(client, {"format": "xml"}, "/v1/request/export")
    assert field == "format" and "'csv' or 'jsonl'" in message
    field, _ = await problem(client, {"format": "csv", "limit": 0}, "/v1/request/export")
    assert field == "limit"
    r = await client.post("/v1/request/export", json={"format": "csv"}, headers={"Authorization": ""})
    assert r.status_code == 401


async def test_newest_first_pages_read_without_final_are_what_final_gives(api):
    """Newest-first pages come from the time-ordered projection without FINAL: a log replaced by a newer
    one with its id, and a resent copy not merged yet, must still show as FINAL shows them."""
    client, state, org, _, _ = api
    replaced = events.new_request_id()
    await add_request(state, org, minutes=50, model="gpt-4o", request_id=replaced)  # replaced below, unmerged
    kept = [await add_request(state, org, minutes=m, model="gpt-4o") for m in range(10)]
    resent = kept[3]
    await add_request(state, org, minutes=3, model="gpt-4o", request_id=resent)  # the same log again
    await add_request(state, org, minutes=60, model="o3", request_id=replaced)  # newer, another model
    newest_first = list(reversed(kept))
    for limit in (1, 3, 4, 100):
        seen, cursor = [], None
        while True:
            body = {"filter": {"request": {"model": {"equals": "gpt-4o"}}}, "limit": limit}
            if cursor:
                body["cursor"] = cursor
            r = await client.post("/v1/request/query", json=body)
            assert r.status_code == 200, r.text
            seen += [d["request_id"] for d in r.json()["data"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == newest_first, limit  # the replaced id is o3 now; the resent one shows once
    r = await client.post("/v1/request/query", json={"limit": 2})
    assert [d["request_id"] for d in r.json()["data"]] == [replaced, kept[-1]]
    plan = await state.analytics.query(
        "EXPLAIN SELECT request_id FROM {db}.request_log WHERE org_id = {o:String} ORDER BY request_created_at DESC "
        "LIMIT 5", {"o": org})
    assert any("by_time_v1" in row["explain"] for row in plan)
