"""The api's front door (guard.py), driven through raw ASGI so that it is visible which body bytes
the app asked for: auth and the limits answer before any body byte is read, a streamed body is cut
at max_body_bytes, header limits answer 431 naming their setting, odd ids are a 404 or a 422."""

from __future__ import annotations

import asyncio
import json

import pytest
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db

from services.api.tests.test_api import wait_for_keys
from tests.support.keys import keys_before_start

LIMIT = 64 * 1024


@pytest.fixture
async def guarded(tmp_path, fresh_db_dsn):
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, analytics_backend="chdb",
                           chdb_path=tmp_path / "chdb", max_body_bytes=LIMIT, _env_file=None)
    [made] = await keys_before_start(fresh_db_dsn, "acme")
    key = made.key
    app = create_app(settings)
    state = app.state.api
    await state.start()
    await wait_for_keys(state, key)
    yield app, state, key
    await state.stop()


class Body:
    """receive(): the given chunks (then more of `filler` forever when it is set), counting reads."""

    def __init__(self, chunks=(b"",), filler: bytes | None = None) -> None:
        self.chunks, self.filler, self.reads = list(chunks), filler, 0

    async def __call__(self):
        self.reads += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or self.filler is not None}
        if self.filler is not None:
            return {"type": "http.request", "body": self.filler, "more_body": True}
        await asyncio.sleep(3600)  # a well-behaved server never gets here: the body was all read


async def call(app, method: str, path: str, headers: list[tuple[bytes, bytes]], body: Body | None = None):
    body = body or Body()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode("utf-8", "surrogateescape"), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 5000), "server": ("api", 80)}
    sent = []

    async def send(message):
        sent.append(message)

    await asyncio.wait_for(app(scope, body, send), 10)
    start = sent[0]
    return start["status"], dict(start["headers"]), json.loads(b"".join(m.get("body", b"") for m in sent[1:])), body.reads


def auth(key: str) -> tuple[bytes, bytes]:
    return b"authorization", f"Bearer {key}".encode()


JSON = (b"content-type", b"application/json")


async def test_auth_answers_before_any_body_byte_is_read(guarded):
    app, state, key = guarded
    huge = (b"content-length", b"200000000")
    status, headers, body, reads = await call(app, "POST", "/v1/request/query", [JSON, huge])
    assert (status, reads) == (401, 0) and headers[b"www-authenticate"] == b"Bearer"
    assert body == {"error": {"type": "http_error", "message": "send 'Authorization: Bearer <your Helicone API key>'"}}
    status, _, body, reads = await call(app, "POST", "/v1/request/query", [JSON, huge, auth("sk-helicone-nope")])
    assert (status, reads) == (401, 0) and body["error"]["message"] == "invalid or revoked Helicone API key"
    # chunked (no length): the same, nothing read
    status, _, _, reads = await call(app, "POST", "/v1/request/query", [JSON], Body(filler=b"x" * 65536))
    assert (status, reads) == (401, 0)

    class Unloaded:  # what KeyDirectory does before any key set was loaded: fail closed
        def lookup(self, key):
            raise db.KeyStoreUnavailable("no key set loaded yet")

    keys, state.keys = state.keys, Unloaded()
    try:
        status, headers, body, reads = await call(app, "POST", "/v1/request/query", [JSON, huge, auth(key)])
    finally:
        state.keys = keys
    assert (status, reads, headers[b"retry-after"]) == (503, 0, b"5")
    assert body == {"error": {"type": "http_error", "message": "key store unavailable; try again shortly"}}


async def test_a_declared_body_over_the_limit_is_refused_unread(guarded):
    app, _, key = guarded
    status, headers, body, reads = await call(app, "POST", "/v1/request/query",
                                              [JSON, auth(key), (b"content-length", b"%d" % (LIMIT + 1))])
    assert (status, reads) == (413, 0)
    assert body["error"]["type"] == "request_too_large"
    assert f"{LIMIT} bytes" in body["error"]["message"] and "HELICONE_MAX_BODY_BYTES" in body["error"]["message"]
    status, _, _, reads = await call(app, "POST", "/v1/request/query", [JSON, auth(key), (b"content-length", b"9" * 5000)])
    assert (status, reads) == (413, 0)


async def test_a_streamed_body_is_cut_at_the_limit(guarded):
    app, _, key = guarded
    chunk = 4096
    status, headers, body, reads = await call(app, "POST", "/v1/request/query", [JSON, auth(key)],
                                              Body([b'{"filter": {"model": "'], filler=b"a" * chunk))
    assert status == 413 and body["error"]["type"] == "request_too_large"
    assert reads == LIMIT // chunk + 1  # read up to the first byte over the limit, not one chunk more

    # exactly at the limit is fine, one byte more is not, whether declared or streamed
    doc = b'{"limit": 5}'
    exact = doc + b" " * (LIMIT - len(doc))
    for payload, expected in ((exact, 200), (exact + b" ", 413)):
        parts = [payload[i:i + 1000] for i in range(0, len(payload), 1000)]
        status, _, body, _ = await call(app, "POST", "/v1/request/query", [JSON, auth(key)], Body(parts))
        assert status == expected, body
        length = (b"content-length", str(len(payload)).encode())
        status, _, body, _ = await call(app, "POST", "/v1/request/query", [JSON, auth(key), length], Body(parts))
        assert status == expected, body


async def test_header_limits_answer_431_naming_the_setting_before_auth(guarded):
    app, state, _ = guarded
    many = [(b"x-h%d" % i, b"v") for i in range(state.settings.max_header_count + 1)]
    for path in ("/v1/request/query", "/healthz"):
        status, _, body, reads = await call(app, "POST", path, many)
        assert (status, reads) == (431, 0)
        assert body["error"]["type"] == "request_headers_too_large"
        assert "at most 100" in body["error"]["message"] and "HELICONE_MAX_HEADER_COUNT" in body["error"]["message"]
    big = [(b"x-big", b"a" * state.settings.max_header_bytes)]
    status, _, body, reads = await call(app, "GET", "/v1/keys", big)
    assert (status, reads) == (431, 0) and "HELICONE_MAX_HEADER_BYTES" in body["error"]["message"]
    # just within both limits: on to auth
    within = [(b"x-h%d" % i, b"a" * 600) for i in range(99)]
    assert (await call(app, "GET", "/v1/keys", within))[0] == 401


async def test_ops_and_docs_routes_need_no_key_and_everything_else_does(guarded):
    app, _, key = guarded
    assert (await call(app, "GET", "/healthz", []))[0] == 200
    assert (await call(app, "GET", "/openapi.json", []))[0] == 200
    for method, path in (("GET", "/v1/keys"), ("DELETE", "/v1/keys/x"), ("GET", "/v1/request/x"), ("GET", "/nowhere")):
        assert (await call(app, method, path, []))[0] == 401
    status, _, body, _ = await call(app, "GET", "/nowhere", [auth(key)])
    assert status == 404 and body == {"error": {"type": "http_error", "message": "Not Found"}}
    assert (await call(app, "GET", "/v1/keys", [auth(key)]))[0] == 200


async def test_two_authorization_headers_are_refused(guarded):
    # the gateway and the prompts service would read the last, this guard the first: one credential, or a 400
    app, state, key = guarded
    other = (await db.create_key(state.pool, await db.create_org(state.pool, "globex"), "t")).key
    await wait_for_keys(state, other)
    for first, second in ((key, other), (other, key), (key, "sk-helicone-nope")):
        status, _, body, _ = await call(app, "GET", "/v1/keys", [auth(first), auth(second)])
        assert status == 400 and "Authorization" in body["error"]["message"]


ODD_IDS = ["x" * 10_000, "\x00", "a\nb", "\x1b[31m", "\udcff\udcfe", "\ufffd", "é", " ", "%00", "..", "6f1b8e6e" * 100]


async def test_odd_ids_are_a_404_or_a_422(guarded):
    app, _, key = guarded
    for odd in ODD_IDS:
        status, _, body, _ = await call(app, "GET", "/v1/request/" + odd, [auth(key)])
        assert status == 422 and body["error"]["details"][0]["field"] == "request_id", (odd, body)
        assert "UUID" in body["error"]["details"][0]["message"]
        status, _, body, _ = await call(app, "DELETE", "/v1/keys/" + odd, [auth(key)])
        assert status == 404 and "GET /v1/keys" in body["error"]["message"], (odd, body)
        assert len(body["error"]["message"]) < 200
    rid = "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1"
    status, _, body, _ = await call(app, "GET", "/v1/request/" + rid, [auth(key)])
    assert status == 404 and body["error"]["message"] == f"request {rid} not found"
