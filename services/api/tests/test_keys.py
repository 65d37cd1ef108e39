"""Key management through the api: list, create and revoke your org's keys; a revoked key is
refused by the api itself within two seconds."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db

from services.api.tests.test_api import api, documented_answers, wait_for_keys  # noqa: F401 - the fixture


async def test_list_create_and_revoke_keys_of_your_own_org(api):  # noqa: F811
    client, state, org, other_org, other_key = api
    r = await client.post("/v1/keys", json={"name": "ci-bot"})
    assert r.status_code == 201
    created = r.json()
    assert created["org_id"] == org and created["key"].startswith("sk-helicone-")
    await wait_for_keys(state, created["key"])

    listed = (await client.get("/v1/keys")).json()["data"]
    assert [k["name"] for k in listed] == ["t", "ci-bot"] and all(k["org_id"] == org for k in listed)
    assert created["key"] not in str(listed)  # only previews, never a key

    # another org's key id is not yours to see or revoke
    other = (await client.get("/v1/keys", headers={"Authorization": f"Bearer {other_key}"})).json()["data"]
    r = await client.delete(f"/v1/keys/{other[0]['id']}")
    assert r.status_code == 404
    assert (await client.get("/v1/keys", headers={"Authorization": f"Bearer {other_key}"})).status_code == 200

    new_client_headers = {"Authorization": f"Bearer {created['key']}"}
    assert (await client.post("/v1/request/query", json={}, headers=new_client_headers)).status_code == 200
    r = await client.delete(f"/v1/keys/{created['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    t0 = time.monotonic()
    while (await client.post("/v1/request/query", json={}, headers=new_client_headers)).status_code != 401:
        assert time.monotonic() - t0 < 2, "revoked key still accepted after 2 s"
        await asyncio.sleep(0.02)


async def test_key_management_errors_are_clear(api):  # noqa: F811
    client, *_ = api
    r = await client.delete("/v1/keys/sk-helicone-abc")
    assert r.status_code == 400 and "by key id" in r.json()["error"]["message"]
    assert (await client.delete("/v1/keys/not-an-id")).status_code == 404
    r = await client.post("/v1/keys", json={"name": ""})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "name"
    r = await client.post("/v1/keys", json={"name": "x", "admin": True})
    assert r.status_code == 422
    assert (await client.get("/v1/keys", headers={"Authorization": ""})).status_code == 401


async def test_keys_are_stored_only_as_hashes_and_shown_once(api):  # noqa: F811
    client, state, org, *_ = api
    created = (await client.post("/v1/keys", json={"name": "once"})).json()
    rows = await state.pool.fetch("SELECT * FROM api_keys")
    stored = " ".join(str(v) for row in rows for v in row.values())
    assert created["key"] not in stored and db.hash_key(created["key"]) in stored
    listed = (await client.get("/v1/keys")).json()["data"]
    mine = next(k for k in listed if k["id"] == created["id"])
    assert "key" not in mine and created["key"].startswith(mine["preview"].rstrip("…"))
    revoked = (await client.delete(f"/v1/keys/{created['id']}")).json()
    assert "key" not in revoked


ADMIN_TOKEN = "a" * 40


@pytest.fixture
async def admin_api(tmp_path, fresh_db_dsn):
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, analytics_backend="chdb",
                           chdb_path=tmp_path / "chdb", admin_token=ADMIN_TOKEN, _env_file=None)
    app = create_app(settings)
    await app.state.api.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                 event_hooks=documented_answers(app)) as client:
        yield client, app.state.api
    await app.state.api.stop()


async def test_admin_token_creates_an_org_whose_first_key_works(admin_api):
    client, state = admin_api
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = await client.post("/v1/admin/orgs", json={"name": "acme"}, headers=admin)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["name"] == "acme" and out["key"]["key"].startswith(db.KEY_PREFIX) and out["key"]["name"] == "admin"
    await wait_for_keys(state, out["key"]["key"])
    key_headers = {"Authorization": f"Bearer {out['key']['key']}"}
    listed = (await client.get("/v1/keys", headers=key_headers)).json()["data"]
    assert [(k["id"], k["org_id"]) for k in listed] == [(out["key"]["id"], out["org_id"])]
    assert out["key"]["key"] not in str(listed)
    # the admin token is no Helicone key, and a Helicone key is no admin token
    assert (await client.get("/v1/keys", headers=admin)).status_code == 401
    assert (await client.post("/v1/admin/orgs", json={"name": "x"}, headers=key_headers)).status_code == 401
    r = await client.post("/v1/admin/orgs", json={"name": "x"}, headers={"Authorization": "Bearer " + "b" * 40})
    assert r.status_code == 401 and "HELICONE_ADMIN_TOKEN" in r.json()["error"]["message"]
    # auth comes before the body is judged
    assert (await client.post("/v1/admin/orgs", json={}, headers={})).status_code == 401
    r = await client.post("/v1/admin/orgs", json={"name": ""}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "name"


async def test_admin_routes_are_off_without_a_token(api):  # noqa: F811
    client, *_ = api
    r = await client.post("/v1/admin/orgs", json={"name": "acme"}, headers={"Authorization": "Bearer " + "a" * 40})
    assert r.status_code == 404 and "HELICONE_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_a_short_admin_token_stops_the_api_at_start_up():
    with pytest.raises(ValueError, match="at least 32 characters"):
        ApiSettings(admin_token="short", _env_file=None)
    assert ApiSettings(admin_token="", _env_file=None).admin_token is None
