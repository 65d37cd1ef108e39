"""/v1/prompts: the REST facade against a real prompts gRPC server, and analytics per prompt
version from the request log."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import grpc
import httpx
import pytest
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import events
from helicone_prompts.server import PromptsServer
from helicone_prompts.settings import PromptsSettings

from services.api.tests.test_api import documented_answers
from tests.support.keys import keys_before_start

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
TEMPLATE = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Reply in {{hc:lang:string}}"},
                                                 {"role": "user", "content": "{{question}}"}],
            "max_tokens": "{{hc:limit:number}}"}


@pytest.fixture
async def api(tmp_path, fresh_db_dsn, analytics_settings):
    made, made_other = await keys_before_start(fresh_db_dsn, "acme", "other")
    org, key, other = made.org_id, made.key, made_other.key
    prompts = PromptsServer(PromptsSettings(postgres_dsn=fresh_db_dsn, grpc_port=0, data_dir=tmp_path / "p", _env_file=None))
    await prompts.start()
    app = create_app(ApiSettings(data_dir=tmp_path / "a", body_store="local", postgres_dsn=fresh_db_dsn, _env_file=None,
                                 prompts_target=f"127.0.0.1:{prompts.bound_port}", **analytics_settings))
    state = app.state.api
    await state.start()
    for _ in range(300):  # the keys are in both key directories' first load
        if all(d.lookup(k) for d in (state.keys, prompts.keys) for k in (key, other)):
            break
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 headers={"Authorization": f"Bearer {key}"}, event_hooks=documented_answers(app)) as client:
        yield client, state, org, other, prompts
    await state.stop()
    await prompts.stop()


async def test_create_list_get_promote_rollback_render_archive(api):
    client, _, _, other, _ = api
    r = await client.post("/v1/prompts/support/versions", json={"template": TEMPLATE, "message": "v1", "environments": ["production"]})
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == 1 and v1["model"] == "gpt-4o-mini" and v1["environments"] == ["production"]
    assert v1["variables"] == [{"name": "lang", "type": "string"}, {"name": "question", "type": "string"},
                               {"name": "limit", "type": "number"}]
    r = await client.post("/v1/prompts/support/versions", json={"template": {**TEMPLATE, "model": "gpt-4o"}})
    assert r.json()["version"] == 2 and r.json()["changed_fields"] == ["model"]

    assert [p["prompt_id"] for p in (await client.get("/v1/prompts")).json()["data"]] == ["support"]
    assert [v["version"] for v in (await client.get("/v1/prompts/support/versions")).json()["data"]] == [2, 1]
    assert (await client.get("/v1/prompts/support", params={"environment": "production"})).json()["version"] == 1
    assert (await client.get("/v1/prompts/support")).json()["version"] == 2

    r = await client.put("/v1/prompts/support/environments/production", json={"version": 2})
    assert r.status_code == 200 and r.json()["environments"] == ["production"]
    assert (await client.get("/v1/prompts/support", params={"environment": "production"})).json()["version"] == 2
    r = await client.post("/v1/prompts/support/render", json={"environment": "production",
                                                               "inputs": {"lang": "German", "question": "hi?", "limit": 20}})
    assert r.status_code == 200 and r.json()["prompt"]["version"] == 2
    assert r.json()["rendered"] == {"model": "gpt-4o", "max_tokens": 20, "messages": [
        {"role": "system", "content": "Reply in German"}, {"role": "user", "content": "hi?"}]}
    r = await client.post("/v1/prompts/support/render", json={"inputs": {"lang": "x", "question": "y", "limit": "many"}})
    assert r.status_code == 400 and "'limit' must be a number" in r.json()["error"]["message"]

    assert (await client.post("/v1/prompts/support/environments/production/rollback")).json()["version"] == 1
    r = await client.post("/v1/prompts/support/environments/production/rollback")
    assert r.status_code == 409 and "no earlier version" in r.json()["error"]["message"]

    # another org's key sees none of it
    r = await client.get("/v1/prompts/support", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404

    r = await client.post("/v1/prompts/support/versions", json={"template": TEMPLATE, "new_prompt": True})
    assert r.status_code == 409 and "already exists" in r.json()["error"]["message"]
    assert (await client.post("/v1/prompts/support/archive")).json() == {"prompt_id": "support", "archived": True, "versions": 2}
    assert (await client.get("/v1/prompts/support")).status_code == 409
    assert (await client.get("/v1/prompts")).json()["data"] == []


@pytest.mark.parametrize("method, path, body, status, words", [
    ("post", "/v1/prompts/bad%20id/versions", {"template": {}}, 422, "prompt_id"),
    ("post", "/v1/prompts/p/versions", {"template": {"messages": [{"role": "wizard"}]}}, 400, "messages[0].role"),
    ("post", "/v1/prompts/p/versions", {"template": []}, 422, "template"),
    ("put", "/v1/prompts/p/environments/Prod", {"version": 1}, 422, "environment"),
    ("put", "/v1/prompts/p/environments/prod", {"version": 0}, 422, "version"),
    ("get", "/v1/prompts/ghost", None, 404, "'ghost' not found"),
])
async def test_bad_requests_name_the_problem(api, method, path, body, status, words):
    client = api[0]
    r = await client.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert words in json.dumps(r.json())


async def test_prompts_service_down_is_a_503(api):
    client, _, _, _, prompts = api
    await prompts.stop()
    r = await client.get("/v1/prompts")
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and "prompts service unavailable" in r.json()["error"]["message"]


async def all_pages(client, path: str, **params) -> tuple[list, int]:
    """Every item of a prompts listing, following next_cursor; and how many pages it took."""
    items, pages = [], 0
    while True:
        r = await client.get(path, params=params)
        assert r.status_code == 200, r.text[:300]
        pages += 1
        items += r.json()["data"]
        if r.json()["next_cursor"] is None:
            return items, pages
        params["cursor"] = r.json()["next_cursor"]


async def test_lists_larger_than_a_grpc_message_answer_page_by_page(api):
    """18 versions of a 250 kB template were over the 4 MiB gRPC answer the api receives: the list was a
    503 "prompts service unavailable (RESOURCE_EXHAUSTED)", for good."""
    client = api[0]
    for n in range(18):
        template = {**TEMPLATE, "messages": [{"role": "system", "content": f"{n} " + "x" * 250_000}]}
        assert (await client.post("/v1/prompts/big/versions", json={"template": template})).status_code == 201
    versions, pages = await all_pages(client, "/v1/prompts/big/versions")
    assert [v["version"] for v in versions] == list(range(18, 0, -1)) and pages > 1
    assert versions[-1]["template"]["messages"][0]["content"].startswith("0 ")


async def test_list_limit_and_cursor(api):
    client = api[0]
    for prompt_id in ("b", "d", "f"):
        assert (await client.post(f"/v1/prompts/{prompt_id}/versions", json={"template": TEMPLATE})).status_code == 201
    r = await client.get("/v1/prompts", params={"limit": 2})
    assert [p["prompt_id"] for p in r.json()["data"]] == ["b", "d"] and r.json()["next_cursor"]
    assert (await client.post("/v1/prompts/a/versions", json={"template": TEMPLATE})).status_code == 201  # before the cursor
    rest, _ = await all_pages(client, "/v1/prompts", limit=2, cursor=r.json()["next_cursor"])
    assert [p["prompt_id"] for p in rest] == ["f"]
    assert [p["prompt_id"] for p in (await all_pages(client, "/v1/prompts", limit=1))[0]] == ["a", "b", "d", "f"]

    for _ in range(2):
        assert (await client.post("/v1/prompts/b/versions", json={"template": TEMPLATE})).status_code == 201
    r = await client.get("/v1/prompts/b/versions", params={"limit": 2})
    assert [v["version"] for v in r.json()["data"]] == [3, 2]
    assert (await client.post("/v1/prompts/b/versions", json={"template": TEMPLATE})).status_code == 201
    rest, _ = await all_pages(client, "/v1/prompts/b/versions", limit=2, cursor=r.json()["next_cursor"])
    assert [v["version"] for v in rest] == [1]
    r = await client.get("/v1/prompts/b/versions")
    assert [v["version"] for v in r.json()["data"]] == [4, 3, 2, 1] and r.json()["next_cursor"] is None


@pytest.mark.parametrize("path, params, field", [
    ("/v1/prompts", {"limit": 0}, "query.limit"),
    ("/v1/prompts", {"limit": 1001}, "query.limit"),
    ("/v1/prompts", {"limit": "ten"}, "query.limit"),
    ("/v1/prompts/b/versions", {"limit": -1}, "query.limit"),
    ("/v1/prompts", {"cursor": "not a cursor!"}, "query.cursor"),
    ("/v1/prompts", {"cursor": "bm90LWEtY3Vyc29y"}, "query.cursor"),  # well-formed text, but no cursor of ours
    ("/v1/prompts/b/versions", {"cursor": "bm90LWEtY3Vyc29y"}, "query.cursor"),
])
async def test_bad_limits_and_cursors_are_a_422_naming_the_field(api, path, params, field):
    client = api[0]
    assert (await client.post("/v1/prompts/b/versions", json={"template": TEMPLATE})).status_code == 201
    r = await client.get(path, params=params)
    assert r.status_code == 422 and [d["field"] for d in r.json()["error"]["details"]] == [field], r.text


async def test_a_cursor_of_another_list_is_a_422(api):
    client = api[0]
    for prompt_id in ("b", "b", "d"):
        assert (await client.post(f"/v1/prompts/{prompt_id}/versions", json={"template": TEMPLATE})).status_code == 201
    cursor = (await client.get("/v1/prompts/b/versions", params={"limit": 1})).json()["next_cursor"]
    for path in ("/v1/prompts", "/v1/prompts/d/versions"):
        r = await client.get(path, params={"cursor": cursor})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "query.cursor", r.text


@pytest.mark.parametrize("code, status", [
    (grpc.StatusCode.OUT_OF_RANGE, 400),
    (grpc.StatusCode.UNAUTHENTICATED, 401),
    (grpc.StatusCode.ABORTED, 409),
    (grpc.StatusCode.UNIMPLEMENTED, 501),
    (grpc.StatusCode.DATA_LOSS, 502),
    (grpc.StatusCode.INTERNAL, 502),
    (grpc.StatusCode.UNKNOWN, 502),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, 502),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (grpc.StatusCode.UNAVAILABLE, 503),
])
async def test_grpc_codes_map_to_honest_http_statuses(api, code, status):
    """Only UNAVAILABLE (and CANCELLED) mean "try again shortly": the rest were all a 503 with Retry-After."""
    client, state, _, _, _ = api

    class Failing:
        def __getattr__(self, method):
            async def fail(*_a, **_kw):
                raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="the reason")
            return fail

    state.prompts.stub = Failing()
    r = await client.get("/v1/prompts/support")
    message = r.json()["error"]["message"]
    assert r.status_code == status and ("the reason" in message if status < 500 else code.name in message), r.text
    assert ("retry-after" in r.headers) == (status == 503)


def logged(org: str, version: int, *, minutes: int, status: int = 200, latency: int = 100, cost: float = 0.01,
           prompt_id: str = "support", error: str = "") -> dict:
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=org, status=status, provider="openai",
                              model="gpt-4o-mini", latency_ms=latency, time_to_first_token_ms=-1, cost_usd=cost, cost_known=True,
                              error=error, prompt_id=prompt_id, prompt_version=version, prompt_inputs_json='{"lang": "en"}')
    events.set_time(ev.request_created_at, T0 + dt.timedelta(minutes=minutes))
    return events.analytics_row(ev, request_key="", response_key="", request_bytes=0, response_bytes=0,
                                request_content_type="", response_content_type="", truncated=False)


async def test_analytics_per_prompt_version(api):
    client, state, org, _, _ = api
    rows = [logged(org, 1, minutes=0, latency=100, cost=0.01), logged(org, 1, minutes=1, latency=300, cost=0.03, status=500),
            logged(org, 2, minutes=2, latency=50, cost=0.02), logged(org, 2, minutes=3, status=0, error="timeout"),
            logged(org, 2, minutes=30, latency=70), logged(org, 1, minutes=4, prompt_id="other"),
            logged("another-org", 1, minutes=5)]
    await state.analytics.insert("request_log", rows)
    r = await client.post("/v1/prompts/support/analytics", json={})
    assert r.status_code == 200, r.text
    by_version = {d["version"]: d for d in r.json()["data"]}
    assert sorted(by_version) == [1, 2]
    one, two = by_version[1], by_version[2]
    assert (one["requests"], one["errors"], one["error_rate"]) == (2, 1, 0.5)
    assert one["cost_usd"] == pytest.approx(0.04) and one["latency_ms"]["avg"] == pytest.approx(200)
    assert (two["requests"], two["errors"]) == (3, 1) and two["error_rate"] == pytest.approx(1 / 3)
    # the same filter tree as /v1/request/query
    end = (T0 + dt.timedelta(minutes=10)).isoformat()
    r = await client.post("/v1/prompts/support/analytics", json={"filter": {"end": end, "status": 200}})
    assert {d["version"]: d["requests"] for d in r.json()["data"]} == {1: 1, 2: 1}
    r = await client.post("/v1/prompts/support/analytics", json={"filter": {"nope": 1}})
    assert r.status_code == 422
    # ...and the tree form of that filter (the README: "filter": <as /v1/request/query>)
    ok_before = {"left": {"request": {"created_at": {"lt": end}}}, "operator": "and",
                 "right": {"response": {"status": {"equals": 200}}}}
    r = await client.post("/v1/prompts/support/analytics", json={"filter": ok_before})
    assert r.status_code == 200, r.text
    assert {d["version"]: d["requests"] for d in r.json()["data"]} == {1: 1, 2: 1}
    r = await client.post("/v1/prompts/support/analytics", json={"filter": {"response": {"status": {"gte": 400}}}})
    assert {d["version"]: (d["requests"], d["errors"]) for d in r.json()["data"]} == {1: (1, 1)}


async def test_analytics_per_prompt_version_include_scores_and_feedback(api):
    client, state, org, other_key, _ = api
    rows = {name: logged(org, version, minutes=i) for i, (name, version) in enumerate(
        [("r1", 1), ("r2", 1), ("r3", 1), ("r4", 1), ("r5", 2), ("r6", 2), ("r7", 3)])}
    rows["elsewhere"] = logged(org, 1, minutes=9, prompt_id="other")
    await state.analytics.insert("request_log", list(rows.values()))
    theirs = logged(state.keys.lookup(other_key), 1, minutes=10)
    await state.analytics.insert("request_log", [theirs])
    rid = {name: row["request_id"] for name, row in rows.items()}

    async def score(name: str, score_name: str, value: float, key: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = await client.put(f"/v1/request/{rid.get(name, name)}/score/{score_name}", json={"value": value}, headers=headers)
        assert r.status_code == 200, r.text

    async def thumbs(name: str, up: bool) -> None:
        assert (await client.post(f"/v1/request/{rid[name]}/feedback", json={"rating": up})).status_code == 200

    await score("r1", "accuracy", 0.5)
    await score("r2", "accuracy", 0.25)
    await thumbs("r1", True)
    await thumbs("r2", True)
    await thumbs("r2", False)  # replaced: r2 counts as thumbs down only
    await thumbs("r3", True)
    await score("r5", "accuracy", 0.0)
    await score("r5", "accuracy", 1.0)
    await score("r6", "accuracy", 0.75)
    assert (await client.delete(f"/v1/request/{rid['r6']}/score/accuracy")).status_code == 204
    await score("r6", "tone", 3)
    await score("elsewhere", "accuracy", 0.0)  # another prompt's request
    await score(theirs["request_id"], "accuracy", 0.0, other_key)  # another org's request of a prompt with this id
    r = await client.post(f"/v1/request/{theirs['request_id']}/feedback", json={"rating": False},
                          headers={"Authorization": f"Bearer {other_key}"})
    assert r.status_code == 200

    r = await client.post("/v1/prompts/support/analytics", json={})
    assert r.status_code == 200, r.text
    got = {d["version"]: (d["requests"], d["scores"], d["feedback"]) for d in r.json()["data"]}
    assert got == {
        1: (4, {"accuracy": {"avg": 0.375, "count": 2}}, {"up": 2, "down": 1, "count": 3, "ratio": 2 / 3}),
        2: (2, {"accuracy": {"avg": 1.0, "count": 1}, "tone": {"avg": 3.0, "count": 1}},
            {"up": 0, "down": 0, "count": 0, "ratio": None}),
        3: (1, {}, {"up": 0, "down": 0, "count": 0, "ratio": None}),
    }
    # the request filter applies to the scores too, score filters included
    r = await client.post("/v1/prompts/support/analytics", json={"filter": {"scores": {"feedback": {"equals": 1}}}})
    got = {d["version"]: (d["requests"], d["scores"], d["feedback"]) for d in r.json()["data"]}
    assert got == {1: (2, {"accuracy": {"avg": 0.5, "count": 1}}, {"up": 2, "down": 0, "count": 2, "ratio": 1.0})}
    end = (T0 + dt.timedelta(minutes=1)).isoformat()  # r1 only
    r = await client.post("/v1/prompts/support/analytics", json={"filter": {"end": end}})
    [v1] = r.json()["data"]
    assert (v1["version"], v1["scores"], v1["feedback"]["ratio"]) == (1, {"accuracy": {"avg": 0.5, "count": 1}}, 1.0)
    r = await client.post("/v1/prompts/support/analytics", json={"filter": {"scores": {"accuracy": {"gte": "x"}}}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "filter.scores.accuracy.gte"


@pytest.mark.parametrize("raw", ['{"template": {"model": "m", "temperature": NaN}}',
                                 '{"template": {"model": "m", "temperature": 1e400}}'])
async def test_a_non_finite_number_in_a_template_is_a_4xx_and_nothing_is_stored(api, raw):
    client = api[0]
    r = await client.post("/v1/prompts/nan/versions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), (r.status_code, r.text)
    assert (await client.get("/v1/prompts/nan")).status_code == 404


async def test_render_with_an_out_of_range_number_input_is_a_400(api):
    client = api[0]
    assert (await client.post("/v1/prompts/support/versions", json={"template": TEMPLATE})).status_code == 201
    raw = '{"inputs": {"lang": "en", "question": "q", "limit": 1' + "0" * 400 + "}}"
    r = await client.post("/v1/prompts/support/render", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "'limit'" in r.json()["error"]["message"], (r.status_code, r.text)

