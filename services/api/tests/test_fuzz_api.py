"""Property-based fuzzing of the api straight through its ASGI entry point (so any bytes can be sent,
not only what an HTTP client allows), against a real Postgres and each analytics backend: random
methods, paths and ids, query strings, headers, and filter bodies (awkward text, lone surrogates,
far-off dates, wrong types, broken JSON) sent in random chunks. The api never answers 500, always
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
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.api.tests.test_api import wait_for_keys
from tests.support.inloop import asgi_request

KEY = "<the test's key>"  # replaced by the real one once it exists

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
filters = st.fixed_dictionaries({}, optional={
    "start": when, "end": when, "model": text, "provider": text, "user_id": text, "session_id": text, "region": text,
    "status": st.one_of(st.integers(-5, 2000), scalar), "properties": st.one_of(st.dictionaries(text, text, max_size=25), json_value),
    "bogus": json_value,
})
queries = st.fixed_dictionaries({}, optional={
    "filter": st.one_of(filters, json_value), "limit": st.one_of(st.integers(-5, 5000), scalar),
    "offset": st.one_of(st.integers(-5, 2_000_000), scalar),
    "sort": st.one_of(st.sampled_from(["created_at_desc", "created_at_asc", "latency_desc", "cost_desc"]), text),
})


def encoded(document) -> bytes:
    return json.dumps(document, ensure_ascii=True, allow_nan=True).encode()  # ascii: surrogates travel as \udXXX


bodies = st.one_of(queries.map(encoded), json_value.map(encoded), st.binary(max_size=200),
                   queries.map(encoded).map(lambda b: b[: len(b) // 2]),  # cut short
                   st.just(b"[" * 5000), st.just(b'{"limit": 5}' + b" " * 70_000))  # deeply nested, over the limit
ids = st.one_of(st.uuids().map(str), text, st.binary(max_size=60).map(lambda b: b.decode("latin-1")), st.just("x" * 5000),
                st.just("sk-helicone-" + "a" * 20))
# (method, path) pairs: mostly the routes that exist, so that examples get past routing
routes = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/request/query")),
    st.tuples(st.just("POST"), st.just("/v1/request/query")),
    st.tuples(st.just("GET"), ids.map(lambda i: "/v1/request/" + i)),
    st.tuples(st.just("DELETE"), ids.map(lambda i: "/v1/keys/" + i)),
    st.tuples(st.sampled_from(["GET", "POST"]), st.just("/v1/keys")),
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


async def call(app, r: dict, key: str) -> tuple[int, bytes]:
    method, path = r["route"]
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
                                     max_body_bytes=64 * 1024, _env_file=None, **analytics_settings))
        state = app.state.api
        await state.start()
        stack.push_async_callback(state.stop)
        org = await db.create_org(state.pool, "acme")
        key = (await db.create_key(state.pool, org, "fuzz")).key
        await wait_for_keys(state, key)
        return app, key

    try:
        app, key = loop.run_until_complete(start())
        seen: set[int] = set()

        @settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(r=requests)
        @example(r=OK)
        @example(r=dict(OK, body=encoded({"filter": {"user_id": "\ud800", "start": "0001-01-01T00:00:00+01:00"}})))
        @example(r=dict(OK, auth=None))
        def check(r):
            status, answer = loop.run_until_complete(asyncio.wait_for(call(app, r, key), 10))
            assert status != 500, answer
            if r["route"][0] != "HEAD" and not 300 <= status < 400:  # redirects (/v1/keys/ -> /v1/keys) have no body
                assert isinstance(json.loads(answer), dict), answer[:200]
            seen.add(status)

        check()
        assert {200, 401, 422} <= seen, seen  # the examples above got past auth and validation
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()
