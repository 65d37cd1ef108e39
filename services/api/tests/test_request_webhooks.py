"""/v1/webhooks (per-request webhooks) through the api on a real Postgres: the HMAC key shown once, org
isolation, the checks of the destination (a private address refused without any connection) and of the fields."""

from __future__ import annotations

import uuid

from helicone_core.request_webhooks import org_webhooks

from services.api.tests.test_alerts import alerts  # noqa: F401 - the fixture: an api on Postgres and chDB


async def test_the_create_answer_shows_the_hmac_key_and_get_never_does(alerts):  # noqa: F811
    client, state, org, other, _ = alerts
    r = await client.post("/v1/webhooks", json={"destination": "https://hooks.example.com/h", "sample_rate": 25,
                                                "property_filters": {"Environment": "production"}, "include_data": False})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["hmac_key"].startswith("whsec_") and len(created["hmac_key"]) > 30
    assert (created["sample_rate"], created["property_filters"], created["include_data"]) == (25, {"environment": "production"}, False)
    listed = (await client.get("/v1/webhooks")).json()["data"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "hmac_key" not in listed[0] and created["hmac_key"] not in (await client.get("/v1/webhooks")).text
    # what ingest reads: the key that signs, the filters as the gateway stores property names
    [stored] = await org_webhooks(state.pool, org)
    assert (stored.hmac_key, stored.property_filters, stored.sample_rate) == (created["hmac_key"], {"environment": "production"}, 25)


async def test_an_org_never_sees_or_deletes_another_orgs_webhooks(alerts):  # noqa: F811
    client, _, _, other, _ = alerts
    mine = (await client.post("/v1/webhooks", json={"destination": "https://hooks.example.com/h"})).json()
    assert (await other.get("/v1/webhooks")).json() == {"data": []}
    r = await other.delete(f"/v1/webhooks/{mine['id']}")
    assert r.status_code == 404 and mine["id"] in r.json()["error"]["message"]
    assert (await client.delete(f"/v1/webhooks/{mine['id']}")).status_code == 204
    assert (await client.get("/v1/webhooks")).json() == {"data": []}
    assert (await client.delete(f"/v1/webhooks/{uuid.uuid4()}")).status_code == 404


async def test_a_destination_on_a_private_address_is_refused_naming_the_field(alerts):  # noqa: F811
    client, state, org, _, _ = alerts
    for url, says in [("http://10.0.0.5/hook", "private"), ("http://169.254.169.254/latest", "metadata"),
                      ("ftp://hooks.example.com/", "http:// or https://"), ("https://u:p@hooks.example.com/", "user:password")]:
        r = await client.post("/v1/webhooks", json={"destination": url})
        assert r.status_code == 422, url
        assert "destination" in r.text and says in r.text, (url, r.text)
    assert await org_webhooks(state.pool, org) == []


async def test_sample_rate_and_filters_out_of_range_are_422s_naming_the_field(alerts):  # noqa: F811
    client, *_ = alerts
    for body, field in [({"sample_rate": 101}, "sample_rate"), ({"sample_rate": -1}, "sample_rate"),
                        ({"property_filters": {"env": 1}}, "property_filters"),
                        ({"property_filters": {"Env": "a", "env": "b"}}, "property_filters"),
                        ({"hmac_key": "mine"}, "hmac_key")]:
        r = await client.post("/v1/webhooks", json={"destination": "https://hooks.example.com/h", **body})
        assert r.status_code == 422 and field in r.text, (body, r.text)
