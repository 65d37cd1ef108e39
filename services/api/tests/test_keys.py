"""Key management through the api: list, create and revoke your org's keys; a revoked key is
refused by the api itself within two seconds."""

from __future__ import annotations

import asyncio
import time

from services.api.tests.test_api import api, wait_for_keys  # noqa: F401 - the fixture


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
