"""Feedback and named scores on logged requests, on each analytics backend: write, replace, delete,
read back on the request and in queries, filter on, and 404/422 for what cannot be scored."""

from __future__ import annotations

import json

import pytest
from helicone_core import events

from services.api.tests import test_api
from services.api.tests.test_api import add_request, query

api = test_api.api  # the fixture: an api on a real Postgres and each analytics backend


async def put(client, rid, name, value, **kw):
    return await client.put(f"/v1/request/{rid}/score/{name}", json={"value": value}, **kw)


async def scores(client, rid) -> dict:
    r = await client.get(f"/v1/request/{rid}")
    assert r.status_code == 200, r.text
    return r.json()["scores"]


async def test_scores_are_idempotent_replaceable_and_deletable(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0)
    assert await scores(client, rid) == {}
    r = await put(client, rid, "accuracy", 0.5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["request_id"], body["name"], body["value"]) == (rid, "accuracy", 0.5)
    assert body["updated_at"].endswith("Z")
    assert (await put(client, rid, "accuracy", 0.5)).status_code == 200  # the same write again: still one score
    assert await scores(client, rid) == {"accuracy": 0.5}
    for value in (0.9, 0.1, -3, 1e300, 0.1 + 0.2):  # the newest write wins, every time, exactly
        await put(client, rid, "accuracy", value)
        assert await scores(client, rid) == {"accuracy": value}
    rows = await state.analytics.query(
        "SELECT count() AS n FROM {db}.request_scores FINAL WHERE org_id = {org:String} "
        "SETTINGS output_format_json_quote_64bit_integers = 0", {"org": org})
    assert rows == [{"n": 1}]

    r = await client.post(f"/v1/request/{rid}/feedback", json={"rating": True})
    assert r.status_code == 200 and r.json()["rating"] is True and r.json()["value"] == 1
    await put(client, rid, "helpful.v2-x_y", 7)
    assert await scores(client, rid) == {"accuracy": 0.1 + 0.2, "feedback": 1, "helpful.v2-x_y": 7}
    await client.post(f"/v1/request/{rid}/feedback", json={"rating": False})  # thumbs down replaces thumbs up
    assert (await scores(client, rid))["feedback"] == 0

    r = await client.delete(f"/v1/request/{rid}/score/accuracy")
    assert r.status_code == 204
    assert await scores(client, rid) == {"feedback": 0, "helpful.v2-x_y": 7}
    r = await client.delete(f"/v1/request/{rid}/score/accuracy")
    assert r.status_code == 404 and "no score named 'accuracy'" in r.json()["error"]["message"]
    await put(client, rid, "accuracy", 0.25)  # a write after a delete brings it back
    assert (await scores(client, rid))["accuracy"] == 0.25


async def test_scores_only_go_on_the_orgs_own_logged_requests(api):
    client, state, org, other_org, other_key = api
    theirs = await add_request(state, other_org, minutes=0)
    unknown = events.new_request_id()
    for rid in (theirs, unknown):
        for r in (await put(client, rid, "accuracy", 1), await client.post(f"/v1/request/{rid}/feedback", json={"rating": True}),
                  await client.delete(f"/v1/request/{rid}/score/accuracy")):
            assert r.status_code == 404 and r.json()["error"]["message"] == f"request {rid} not found", r.text
    # the other org's request got no score, and their scores are not ours
    other = {"Authorization": f"Bearer {other_key}"}
    assert (await client.get(f"/v1/request/{theirs}", headers=other)).json()["scores"] == {}
    assert (await put(client, theirs, "accuracy", 0.75, headers=other)).status_code == 200
    # the same request id logged by both orgs: each sees its own scores only
    await add_request(state, org, minutes=1, request_id=theirs)
    assert await scores(client, theirs) == {}
    await put(client, theirs, "accuracy", 0.25)
    assert await scores(client, theirs) == {"accuracy": 0.25}
    assert (await client.get(f"/v1/request/{theirs}", headers=other)).json()["scores"] == {"accuracy": 0.75}
    assert await query(client, filter={"scores": {"accuracy": {"gte": 0.5}}}) == []


async def test_query_rows_carry_their_scores_and_can_be_filtered_on_them(api):
    client, state, org, other_org, other_key = api
    a = await add_request(state, org, minutes=0)
    b = await add_request(state, org, minutes=1)
    c = await add_request(state, org, minutes=2)
    d = await add_request(state, org, minutes=3)
    await put(client, a, "accuracy", 0.2)
    await put(client, b, "accuracy", 0.9)  # replaced below: the old value must not match
    await put(client, b, "accuracy", 0.5)
    await put(client, c, "accuracy", 0.8)
    await put(client, d, "accuracy", 1.0)
    await client.delete(f"/v1/request/{d}/score/accuracy")  # deleted: matches nothing
    for rid, up in ((a, True), (b, False), (c, True)):
        await client.post(f"/v1/request/{rid}/feedback", json={"rating": up})
    theirs = await add_request(state, other_org, minutes=4)
    await put(client, theirs, "accuracy", 0.9, headers={"Authorization": f"Bearer {other_key}"})

    r = await client.post("/v1/request/query", json={"sort": "created_at_asc"})
    assert {row["request_id"]: row["scores"] for row in r.json()["data"]} == {
        a: {"accuracy": 0.2, "feedback": 1}, b: {"accuracy": 0.5, "feedback": 0}, c: {"accuracy": 0.8, "feedback": 1}, d: {}}

    async def matching(**conditions) -> list[str]:
        return await query(client, sort="created_at_asc", filter={"scores": conditions})

    assert await matching(accuracy={"gte": 0.5}) == [b, c]
    assert await matching(accuracy={"gt": 0.5}) == [c]
    assert await matching(accuracy={"lte": 0.5}) == [a, b]
    assert await matching(accuracy={"lt": 0.5}) == [a]
    assert await matching(accuracy={"equals": 0.8}) == [c]
    assert await matching(accuracy={"gte": 0.9}) == []  # b's 0.9 was replaced; d's 1.0 deleted; theirs is theirs
    assert await matching(accuracy={"gt": 0.1, "lt": 0.9}) == [a, b, c]
    assert await matching(feedback={"equals": 1}) == [a, c]
    assert await matching(feedback={"equals": 1}, accuracy={"lt": 0.5}) == [a]
    assert await matching(nothing_named_so={"gte": -1e308}) == []
    assert await query(client, sort="created_at_asc", filter={"scores": {"feedback": {"equals": 0}}, "model": "gpt-4o-mini"}) == [b]


async def test_bad_scores_and_filters_are_a_422_naming_the_place(api):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0)

    async def problem(method: str, path: str, body: str | None = None) -> dict:
        r = await client.request(method, path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (path, body, r.text)
        return r.json()["error"]["details"][0]

    score = f"/v1/request/{rid}/score"
    for value in ("NaN", "Infinity", "-Infinity", "1e400", "true", '"0.5"', "null", "[1]"):
        d = await problem("PUT", f"{score}/accuracy", f'{{"value": {value}}}')
        assert d["field"] == "value", (value, d)
    assert (await problem("PUT", f"{score}/accuracy", "{}"))["field"] == "value"
    assert (await problem("PUT", f"{score}/accuracy", '{"value": 1, "extra": 2}'))["field"] == "extra"
    for name in ("a" * 65, "sp ace", "é", "a+b", "a:b", "%00"):
        d = await problem("PUT", f"{score}/{name}", '{"value": 1}')
        assert d["field"] == "name" and "A-Za-z0-9_.-" in d["message"], name
    assert (await problem("DELETE", f"{score}/{'x' * 65}"))["field"] == "name"
    d = await problem("PUT", f"{score}/feedback", '{"value": 0.5}')
    assert d["field"] == "value" and "1 (thumbs up) or 0 (thumbs down)" in d["message"]
    for body in ('{"rating": 1}', '{"rating": "yes"}', '{"rating": null}', "{}"):
        assert (await problem("POST", f"/v1/request/{rid}/feedback", body))["field"] == "rating", body
    d = await problem("PUT", "/v1/request/not-a-uuid/score/accuracy", '{"value": 1}')
    assert d["field"] == "request_id" and "UUID" in d["message"]

    async def bad_filter(scores_filter) -> dict:
        return await problem("POST", "/v1/request/query", json.dumps({"filter": {"scores": scores_filter}}))

    assert (await bad_filter({"accuracy": {}}))["field"] == "filter.scores.accuracy"
    assert "at least one of equals, gt, gte, lt, lte" in (await bad_filter({"accuracy": {}}))["message"]
    assert (await bad_filter({"accuracy": {"gte": "high"}}))["field"] == "filter.scores.accuracy.gte"
    assert (await bad_filter({"accuracy": {"gte": True}}))["field"] == "filter.scores.accuracy.gte"
    assert (await bad_filter({"accuracy": {"above": 1}}))["field"] == "filter.scores.accuracy.above"
    assert (await problem("POST", "/v1/request/query", '{"filter": {"scores": {"a": {"lt": NaN}}}}'))["field"] == "filter.scores.a.lt"
    assert (await bad_filter({"bad name": {"gte": 1}}))["field"].startswith("filter.scores.bad name")
    assert (await bad_filter({f"s{i}": {"gte": 1} for i in range(21)}))["field"] == "filter.scores"
    assert (await bad_filter([1]))["field"] == "filter.scores"


@pytest.mark.parametrize("value", [0.0, 1.0])
async def test_the_feedback_score_can_be_put_as_zero_or_one(api, value):
    client, state, org, _, _ = api
    rid = await add_request(state, org, minutes=0)
    assert (await put(client, rid, "feedback", value)).status_code == 200
    assert await scores(client, rid) == {"feedback": value}


async def test_an_integer_a_score_cannot_hold_exactly_is_refused_not_rounded():
    from helicone_api.models import Score
    from pydantic import ValidationError

    assert Score.model_validate({"value": 2**53}).value == 2**53
    for too_big in (2**53 + 1, 10**400):
        with pytest.raises(ValidationError) as err:
            Score.model_validate({"value": too_big})
        assert "cannot be stored exactly" in str(err.value)


async def test_helicones_score_body_sets_every_named_score_at_once_booleans_as_one_or_zero(api):
    """Helicone's POST /v1/request/{id}/score ({"scores": {name: number | boolean}}, Helicone/helicone
    valhalla/jawn/src/managers/score/ScoreManager.ts) was a 404 "Not Found": a script moved from Helicone lost its scores."""
    client, state, org, other_org, _ = api
    rid = await add_request(state, org, minutes=0)
    await put(client, rid, "accuracy", 0.1)
    r = await client.post(f"/v1/request/{rid}/score", json={"scores": {"accuracy": 0.75, "passed": True, "toxic": False, "n": 3}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["request_id"], body["scores"]) == (rid, {"accuracy": 0.75, "passed": 1, "toxic": 0, "n": 3})
    assert body["updated_at"].endswith("Z")
    assert await scores(client, rid) == {"accuracy": 0.75, "passed": 1, "toxic": 0, "n": 3}  # the newer write replaced 0.1
    assert (await client.post(f"/v1/request/{rid}/score", json={"scores": {}})).status_code == 201  # Helicone's example body
    assert await scores(client, rid) == {"accuracy": 0.75, "passed": 1, "toxic": 0, "n": 3}

    theirs = await add_request(state, other_org, minutes=0)
    r = await client.post(f"/v1/request/{theirs}/score", json={"scores": {"accuracy": 1}})
    assert r.status_code == 404 and r.json()["error"]["message"] == f"request {theirs} not found"
    for bad, field in (({"scores": {"bad name": 1}}, "scores.bad name"), ({"scores": {"accuracy": "0.5"}}, "scores.accuracy"),
                       ({"scores": {"feedback": 0.5}}, "scores.feedback"), ({"score": 1}, "scores")):
        r = await client.post(f"/v1/request/{rid}/score", json=bad)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"].startswith(field), (bad, r.text)
    assert await scores(client, rid) == {"accuracy": 0.75, "passed": 1, "toxic": 0, "n": 3}  # nothing of a refused body written
