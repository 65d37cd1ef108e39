"""Property-based fuzzing of the api straight through its ASGI entry point (so any bytes can be sent,
not only what an HTTP client allows), against a real Postgres and each analytics backend: random
methods, paths and ids, query strings, headers, and filter, score, property and Helicone's REST bodies (awkward text,
lone surrogates, far-off dates, non-finite and huge numbers, wrong types, broken JSON, filter trees, sorts, cursors and
exports) sent in random chunks. The api never answers 500, always
answers in JSON, and never hangs."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid

import asyncpg
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db
from helicone_core.log_headers import MAX_PROPERTIES, PropertyError, custom_property
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.api.tests.test_api import add_request, wait_for_keys
from tests.support.inloop import asgi_request

KEY = "<the test's key>"  # replaced by the real one once it exists
LOGGED = "<a logged request id>"  # in paths: replaced by the id of a request the key's org logged

# text a caller can send, lone surrogates included (JSON \udXXX escapes carry them)
text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec=None, categories=None), max_size=40),
    st.sampled_from(["\\", "\\N", "a\\", "\t", "\n", "\x00", "'", '"', "{x:String}", "\ud800", "é" * 2000, "%ff"]),
)
years = st.integers(min_value=1, max_value=9999)
when = st.one_of(
    st.builds(lambda y, s, tz: f"{y:04d}-01-01T00:00:{s:02d}{tz}", years, st.integers(0, 59),
              st.sampled_from(["", "Z", "+01:00", "-23:59", "+14:00"])),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)).map(dt.datetime.isoformat),
    st.integers(min_value=-(2**70), max_value=2**70), text,
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=True, allow_infinity=True), text)
json_value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
                          max_leaves=12)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10**400), max_value=10**400), scalar)
score_names = st.one_of(st.sampled_from(["accuracy", "feedback", "a.b-c_D9", "x" * 64, "x" * 65, ""]), text)
bounds = st.fixed_dictionaries({}, optional={op: numbers for op in ("equals", "gt", "gte", "lt", "lte", "bogus")})
filters = st.fixed_dictionaries({}, optional={
    "start": when, "end": when, "model": text, "provider": text, "user_id": text, "session_id": text, "region": text,
    "status": st.one_of(st.integers(-5, 2000), scalar), "properties": st.one_of(st.dictionaries(text, text, max_size=25), json_value),
    "scores": st.one_of(st.dictionaries(score_names, st.one_of(bounds, json_value), max_size=22), json_value),
    "bogus": json_value,
})
# Helicone's filter tree: known and unknown tables, fields and operators, any value, nested and ANDed/ORed
tree_fields = st.sampled_from(["model", "status", "created_at", "latency_ms", "cost_usd", "cache_hit", "user_id", "session_id",
                               "request_id", "total_tokens", "prompt_version", "bogus"])
tree_ops = st.sampled_from(["equals", "not-equals", "like", "ilike", "contains", "gt", "gte", "lt", "lte", "in", "bogus"])
conditions = st.one_of(st.dictionaries(tree_ops, st.one_of(numbers, when, st.lists(st.one_of(numbers, text), max_size=4)),
                                       max_size=3), json_value)
tree_leaves = st.builds(lambda table, fields: {table: fields},
                        st.sampled_from(["request", "response", "user", "session", "properties", "scores", "bogus"]),
                        st.one_of(st.dictionaries(st.one_of(tree_fields, text), conditions, max_size=3), json_value))
trees = st.recursive(tree_leaves, lambda inner: st.fixed_dictionaries(
    {"left": inner, "right": inner}, optional={"operator": st.one_of(st.sampled_from(["and", "or"]), scalar)}), max_leaves=8)
sorts = st.one_of(st.sampled_from(["created_at_desc", "created_at_asc", "latency_desc", "cost_desc"]), text,
                  st.fixed_dictionaries({"field": st.one_of(tree_fields, text)},
                                        optional={"direction": st.sampled_from(["asc", "desc", "up"])}))
queries = st.fixed_dictionaries({}, optional={
    "filter": st.one_of(filters, trees, json_value), "limit": st.one_of(st.integers(-5, 5000), scalar),
    "offset": st.one_of(st.integers(-5, 2_000_000), scalar), "sort": sorts,
    "cursor": st.one_of(text, st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=80)),
    "format": st.one_of(st.sampled_from(["csv", "jsonl"]), scalar),
})


def encoded(document) -> bytes:
    return json.dumps(document, ensure_ascii=True, allow_nan=True).encode()  # ascii: surrogates travel as \udXXX


property_keys = st.one_of(st.sampled_from(["env", "Env", "a.b_c-d~e!#$%&'*+^`|", "k" * 256, "k" * 257, "", "my key", "é"]),
                          text)
property_values = st.one_of(st.sampled_from(["prod", " prod\t", "", "v" * 4096, "v" * 4097, "a\tb", "a\nb", "\\N"]), text)
property_bodies = st.fixed_dictionaries({}, optional={"key": st.one_of(property_keys, scalar),
                                                      "value": st.one_of(property_values, scalar), "bogus": json_value})
score_bodies = st.one_of(st.fixed_dictionaries({}, optional={"value": numbers, "rating": scalar, "bogus": json_value}),
                         st.fixed_dictionaries({"value": st.floats(allow_nan=False, allow_infinity=False)}),
                         st.fixed_dictionaries({"rating": st.booleans()}))
# alert rules; webhook hosts never resolve (.invalid) and no evaluation runs here (HELICONE_ALERT_INTERVAL=0)
alert_bodies = st.fixed_dictionaries({}, optional={
    "name": text, "metric": st.one_of(st.sampled_from(["cost_usd", "error_rate", "latency_p95_ms", "requests"]), text),
    "window_seconds": numbers, "comparison": st.one_of(st.sampled_from(["gt", "lte"]), text), "threshold": numbers,
    "filter": st.one_of(queries.map(lambda q: q.get("filter", {})), json_value), "min_requests": numbers, "enabled": scalar,
    "webhook_url": st.one_of(text, st.sampled_from(["https://hooks.example.invalid/x", "http://127.0.0.1:1/x", "http://[::1]/",
                                                    "http://[zz/", "http://hooks.example.invalid:99999/", "http://10.0.0.1/"])),
})
# Helicone's bodies for its REST routes (helicone_api.helicone_rest): Unix-ms and -second time filters, pSize, one-field
# sorts, session names and search terms
helicone_times = st.fixed_dictionaries({}, optional={k: numbers for k in ("startTimeUnixMs", "endTimeUnixMs", "startTimeUnixSeconds",
                                                                         "endTimeUnixSeconds", "bogus")})
helicone_sorts = st.dictionaries(st.sampled_from(["cost", "last_active", "average_tokens_per_request", "user_id", "rate_limited_count",
                                                  "bogus"]), st.one_of(st.sampled_from(["asc", "desc", "up"]), scalar), max_size=2)
helicone_bodies = st.fixed_dictionaries({}, optional={
    "filter": st.one_of(st.just("all"), filters, trees, json_value), "timeFilter": st.one_of(helicone_times, json_value),
    "pSize": st.one_of(st.sampled_from(["p50", "p75", "p95", "p99", "p99.9", "p42"]), scalar), "useInterquartile": scalar,
    "nameContains": st.one_of(text, scalar), "timezoneDifference": numbers, "timeZoneDifferenceMinutes": numbers,
    "sort": st.one_of(helicone_sorts, json_value), "limit": st.one_of(st.integers(-5, 5000), scalar),
    "offset": st.one_of(st.integers(-5, 2_000_000), scalar), "searchTerm": st.one_of(text, scalar), "bogus": json_value,
})
bodies = st.one_of(queries.map(encoded), json_value.map(encoded), st.binary(max_size=200), score_bodies.map(encoded),
                   alert_bodies.map(encoded), property_bodies.map(encoded), helicone_bodies.map(encoded),
                   queries.map(encoded).map(lambda b: b[: len(b) // 2]),  # cut short
                   st.just(b"[" * 5000), st.just(b'{"limit": 5}' + b" " * 70_000))  # deeply nested, over the limit
ids = st.one_of(st.uuids().map(str), text, st.binary(max_size=60).map(lambda b: b.decode("latin-1")), st.just("x" * 5000),
                st.just("sk-helicone-" + "a" * 20))
# (method, path) pairs: mostly the routes that exist, so that examples get past routing
routes = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/request/query")),
    st.tuples(st.just("POST"), st.just("/v1/request/query")),
    st.tuples(st.just("POST"), st.just("/v1/request/export")),
    st.tuples(st.just("GET"), ids.map(lambda i: "/v1/request/" + i)),
    st.tuples(st.just("POST"), st.one_of(st.just(LOGGED), ids).map(lambda i: f"/v1/request/{i}/feedback")),
    st.tuples(st.sampled_from(["PUT", "DELETE", "PUT"]),
              st.builds(lambda i, n: f"/v1/request/{i}/score/{n}", st.one_of(st.just(LOGGED), ids), score_names)),
    st.tuples(st.just("PUT"), st.one_of(st.just(LOGGED), ids).map(lambda i: f"/v1/request/{i}/property")),
    st.tuples(st.just("POST"), st.sampled_from(["/v1/user/metrics/query", "/v1/user/metrics-overview/query", "/v1/session/metrics/query",
                                                "/v1/session/name/query", "/v1/property/query", "/v1/request/query-clickhouse"])),
    st.tuples(st.just("POST"), property_keys.map(lambda k: f"/v1/property/{k}/search")),
    st.tuples(st.just("POST"), ids.map(lambda i: f"/v1/session/{i}/feedback")),
    st.tuples(st.just("DELETE"), ids.map(lambda i: "/v1/keys/" + i)),
    st.tuples(st.sampled_from(["GET", "POST"]), st.just("/v1/keys")),
    st.tuples(st.sampled_from(["GET", "POST"]), st.just("/v1/alerts")),
    st.tuples(st.sampled_from(["GET", "PUT", "DELETE"]), ids.map(lambda i: "/v1/alerts/" + i)),
    st.tuples(st.just("GET"), ids.map(lambda i: f"/v1/alerts/{i}/history")),
    st.tuples(st.sampled_from(["GET", "POST", "DELETE", "PUT", "OPTIONS", "HEAD"]),
              st.one_of(ids.map(lambda i: "/v1/" + i), st.sampled_from(["/healthz", "/readyz", "/", "/v1/keys/", "/nowhere"]))),
)
# a working key most of the time (the routes behind auth are where the interesting input goes)
auth_values = st.one_of(st.sampled_from([b"Bearer <key>"] * 6 + [b"bearer   <key>  ", b"<key>", b"Bearer sk-helicone-nope", b"Bearer "]),
                        st.binary(max_size=60))
header_names = st.one_of(st.sampled_from([b"content-type", b"content-length", b"transfer-encoding", b"expect", b"x-anything"]),
                         st.binary(min_size=1, max_size=20).map(bytes.lower))
header_values = st.one_of(st.sampled_from([b"application/json", b"text/plain", b"0", b"5", b"99999999999999999999", b"-1", b"9" * 5000]),
                          st.binary(max_size=100))
requests = st.fixed_dictionaries({
    "route": routes,
    "query": st.one_of(st.just(b""), st.text(st.characters(max_codepoint=127), max_size=60).map(str.encode), st.binary(max_size=60)),
    "auth": st.one_of(auth_values, st.none()),
    "content_type": st.one_of(st.just(b"application/json"), st.none(), st.binary(max_size=30)),
    "headers": st.lists(st.tuples(header_names, header_values), max_size=4),
    "body": bodies,
    "chunk": st.integers(min_value=1, max_value=70_000),
})


OK = {"route": ("POST", "/v1/request/query"), "query": b"", "auth": b"Bearer <key>", "content_type": b"application/json",
      "headers": [], "body": b'{"filter": {"user_id": "a\\\\b"}}', "chunk": 5}


async def call(app, r: dict, key: str, logged: str) -> tuple[int, bytes]:
    method, path = r["route"]
    path = path.replace(LOGGED, logged)
    headers = [(n, v) for n, v in r["headers"]]
    if r["content_type"] is not None:
        headers.append((b"content-type", r["content_type"]))
    if r["auth"] is not None:
        headers.append((b"authorization", r["auth"].replace(b"<key>", key.encode())))
    body, chunk = r["body"], r["chunk"]
    parts = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("utf-8", "surrogatepass"), "query_string": r["query"],
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000), "server": ("api", 80)}
    status, _, content = await asgi_request(app, scope, parts)
    return status, content


def test_the_api_never_fails_on_any_request(pg_dsn, analytics_settings, tmp_path):
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()

    async def start():
        name = "f_" + uuid.uuid4().hex[:12]
        admin = await asyncpg.connect(pg_dsn)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()
        app = create_app(ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=pg_dsn.replace("/postgres?", f"/{name}?"),
                                     max_body_bytes=64 * 1024, alert_interval=0, _env_file=None, **analytics_settings))
        state = app.state.api
        await state.start()
        stack.push_async_callback(state.stop)
        org = await db.create_org(state.pool, "acme")
        key = (await db.create_key(state.pool, org, "fuzz")).key
        await wait_for_keys(state, key)
        logged = await add_request(state, org, minutes=0)
        # scored already, so the DELETE example below finds a score whichever example runs first
        await state.analytics.insert("request_scores", [{"org_id": org, "request_id": logged, "name": "accuracy", "value": 1,
                                                         "deleted": 0, "updated_at": "2026-01-01 00:00:00.000000"}])
        return app, key, logged

    try:
        app, key, logged = loop.run_until_complete(start())
        seen: set[int] = set()

        @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(r=requests)
        @example(r=OK)
        @example(r=dict(OK, body=encoded({"filter": {"user_id": "\ud800", "start": "0001-01-01T00:00:00+01:00"}})))
        @example(r=dict(OK, auth=None))
        @example(r=dict(OK, route=("PUT", f"/v1/request/{LOGGED}/score/accuracy"), body=b'{"value": 0.5}'))
        @example(r=dict(OK, route=("DELETE", f"/v1/request/{LOGGED}/score/accuracy"), body=b""))
        @example(r=dict(OK, route=("POST", f"/v1/request/{LOGGED}/feedback"), body=b'{"rating": true}'))
        @example(r=dict(OK, route=("PUT", f"/v1/request/{LOGGED}/property"), body=b'{"key": "env", "value": "a\\\\N"}'))
        @example(r=dict(OK, body=encoded({"filter": {"scores": {"feedback": {"equals": 1}, "accuracy": {"gte": 1e308}}}})))
        @example(r=dict(OK, route=("POST", "/v1/alerts"), body=encoded({
            "name": "x", "metric": "requests", "window_seconds": 60, "comparison": "gt", "threshold": 1e308,
            "filter": {"properties": {"a": "\\N"}}, "webhook_url": "https://hooks.example.invalid/x"})))
        @example(r=dict(OK, body=encoded({"filter": {"left": {"request": {"model": {"in": ["a\\", "\ud800"]}}}, "operator": "or",
                                                     "right": {"response": {"status": {"gte": 400}}}}})))
        @example(r=dict(OK, route=("POST", "/v1/request/export"), body=encoded({"format": "csv", "sort": {"field": "model"}})))
        @example(r=dict(OK, route=("POST", "/v1/session/metrics/query"), body=encoded({
            "pSize": "p99.9", "useInterquartile": True, "nameContains": "a\\%_'", "timezoneDifference": 0,
            "timeFilter": {"startTimeUnixMs": 0, "endTimeUnixMs": 4e12}, "filter": {"request_response_rmt": {"latency": {"gt": 1}}}})))
        @example(r=dict(OK, route=("POST", "/v1/user/metrics/query"), body=encoded({
            "filter": "all", "offset": 0, "limit": 3, "sort": {"average_requests_per_day_active": "desc"},
            "timeFilter": {"startTimeUnixSeconds": 1, "endTimeUnixSeconds": 4e9}})))
        @example(r=dict(OK, route=("POST", "/v1/property/env/search"), body=encoded({"searchTerm": "\\N%"})))
        @example(r=dict(OK, route=("GET", "/"), auth=None))  # the dashboard page: HTML, not JSON
        def check(r):
            status, answer = loop.run_until_complete(asyncio.wait_for(call(app, r, key, logged), 10))
            assert status != 500, answer
            # redirects (/v1/keys/ -> /v1/keys) and 204 (a deleted score) have no body
            if r["route"] == ("GET", "/") and status == 200:  # the dashboard page
                assert answer.startswith(b"<!doctype html>"), answer[:200]
            elif r["route"] == ("POST", "/v1/request/export") and status == 200:  # CSV or JSON Lines
                assert answer.startswith(b"request_id,") or all(json.loads(line) for line in answer.splitlines()), answer[:200]
            elif r["route"][0] != "HEAD" and not 300 <= status < 400 and status != 204:
                assert isinstance(json.loads(answer), dict), answer[:200]
            seen.add(status)

        check()
        assert {200, 201, 204, 401, 422} <= seen, seen  # the examples above got past auth and validation

        # Scores on the logged request: any number a caller sends is stored and read back exactly,
        # or refused with a 422 naming `value`; a name is taken or refused as a whole.
        headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]

        async def send(method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
            raw = path.encode("utf-8", "surrogatepass")
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                     "path": path, "raw_path": raw, "query_string": b"", "root_path": "", "headers": headers,
                     "client": ("127.0.0.1", 5000), "server": ("api", 80)}
            status, _, content = await asgi_request(app, scope, [body])
            return status, content

        stored = json.loads(loop.run_until_complete(send("GET", f"/v1/request/{logged}"))[1])["scores"]

        # the second backend repeats the first's validation work; what differs is the stored value's
        # round trip, which the examples below (the float extremes) and 60 generated ones still take
        score_examples = 150 if analytics_settings["analytics_backend"] == "chdb" else 60

        @settings(max_examples=score_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(name=score_names, value=numbers, delete=st.booleans())
        @example(name="accuracy", value=5e-324, delete=False)  # the smallest subnormal
        @example(name="accuracy", value=-0.0, delete=False)
        @example(name="accuracy", value=1.7976931348623157e308, delete=False)
        @example(name="accuracy", value=10**400, delete=False)
        @example(name="0/", value=1, delete=False)  # a trailing slash: redirected, never stored
        def check_scores(name, value, delete):
            path = f"/v1/request/{logged}/score/{name}"
            if "/" in name or not name:  # another path: no route, or a redirect for a trailing slash (.../score/)
                status, answer = loop.run_until_complete(send("DELETE" if delete else "PUT", path, encoded({"value": value})))
                assert status in (307, 404, 405), answer
            elif delete:
                had = name in stored
                status, answer = loop.run_until_complete(send("DELETE", path))
                assert status in ((204,) if had else (404, 422)), answer
                stored.pop(name, None)
            else:
                status, answer = loop.run_until_complete(send("PUT", path, encoded({"value": value})))
                assert status in (200, 404, 422), answer
                if status == 200:
                    stored[name] = json.loads(answer)["value"]
                    assert stored[name] == value and not isinstance(value, bool), (value, answer)
                elif status == 422:
                    details = json.loads(answer)["error"]["details"]
                    assert details and {d["field"] for d in details} <= {"name", "value"}, details
            status, answer = loop.run_until_complete(send("GET", f"/v1/request/{logged}"))
            got = json.loads(answer)["scores"]
            assert got == stored and all(str(got[n]) == str(stored[n]) for n in got), (got, stored)  # 5e-324 stays 5e-324

        check_scores()

        # Properties put on the logged request: what the gateway would log for the header Helicone-Property-<key>:
        # <value> (log_headers.custom_property) is stored, shown on the request and matched by a filter on it, exactly;
        # what it would refuse is a 422 naming `key` or `value`.
        put = json.loads(loop.run_until_complete(send("GET", f"/v1/request/{logged}"))[1])["properties"]  # the fuzzing's puts

        def utf8(text: str) -> bool:
            try:
                text.encode()
            except UnicodeEncodeError:
                return False
            return True

        @settings(max_examples=score_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(key=st.one_of(property_keys, scalar), value=st.one_of(property_values, scalar))
        @example(key="Env", value=" prod ")
        @example(key="x", value="{x:String}\\N\t'")
        @example(key="k", value="\ud800")
        def check_properties(key, value):
            status, answer = loop.run_until_complete(send("PUT", f"/v1/request/{logged}/property", encoded({"key": key, "value": value})))
            if not (isinstance(key, str) and isinstance(value, str) and utf8(key) and utf8(value)):
                assert status == 422, answer
                return
            try:
                name, stored = custom_property(key, value)
            except PropertyError as exc:
                assert status == 422 and [d["field"] for d in json.loads(answer)["error"]["details"]] == [exc.part], answer
                return
            if name not in put and len(put) >= MAX_PROPERTIES:
                assert status == 409, answer
                return
            assert status == 200 and json.loads(answer)["properties"] == {**put, name: stored}, answer
            put[name] = stored
            assert json.loads(loop.run_until_complete(send("GET", f"/v1/request/{logged}"))[1])["properties"] == put
            status, answer = loop.run_until_complete(send("POST", "/v1/request/query", encoded({"filter": {"properties": {name: stored}}})))
            assert status == 200 and [d["request_id"] for d in json.loads(answer)["data"]] == [logged], answer

        check_properties()
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
