"""The provider key vault through the in-process gateway, on a real Postgres (orgs, Helicone keys and stored provider
keys, followed live by the gateway) and the fake provider on loopback: a request without a provider key gets its
org's stored key in the header its provider takes; the caller's own key wins; a Helicone key sent as the provider key
is never forwarded; a stored key never goes to another org, another provider or an unlisted Helicone-Target-URL
origin; a deleted key stops being sent within the bound of a revoked Helicone key; nothing of it is logged."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
import websockets
from helicone_core import db, events, vault
from helicone_gateway.app import create_app
from helicone_gateway.settings import GatewaySettings

from services.gateway.tests.test_proxy import CHAT, host_port
from services.gateway.tests.test_proxy import target_sockets as _loopback_only  # noqa: F401 (autouse: loopback only)
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import serve

MASTER = base64.b64encode(b"k" * 32).decode()
OPENAI_KEY = "sk-proj-StoredOpenaiKey0000000000vault01"
ANTHROPIC_KEY = "sk-ant-api03-StoredAnthropicKey00000vault02"
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "one two"}]}
FALL_ON_ERRORS = [{"from": 500, "to": 599}]


async def eventually(check, timeout: float = 2.0):
    """Awaits check() until it is true; the time it took (a deleted key must stop within two seconds, as a revoked
    Helicone key does)."""
    t0 = time.monotonic()
    while not await check():
        assert time.monotonic() - t0 < timeout, f"not within {timeout} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@contextlib.asynccontextmanager
async def vault_stack(tmp_path, pg_pool, dsn, list_backup: bool = False, **settings):
    """Orgs acme (openai and anthropic keys stored) and other (none), a fake provider as OpenAI's and a second one as
    Anthropic's (also a loopback Target-URL host the allowlist opens, and HELICONE_VAULT_TARGET_ORIGINS lists with
    `list_backup`), and a gateway with the vault on."""
    acme_org, other_org = await db.create_org(pg_pool, "acme"), await db.create_org(pg_pool, "other")
    acme, other = await db.create_key(pg_pool, acme_org, "t"), await db.create_key(pg_pool, other_org, "t")
    ring = vault.Keyring(base64.b64decode(MASTER))
    await vault.store_provider_key(pg_pool, ring, acme_org, "openai", "prod", OPENAI_KEY)
    await vault.store_provider_key(pg_pool, ring, acme_org, "anthropic", "prod", ANTHROPIC_KEY)
    primary, backup = create_fake_upstream(), create_fake_upstream()
    async with serve(primary) as primary_url, serve(backup) as backup_url:
        settings = {"vault_key": MASTER, "target_url_allowlist": [host_port(backup_url)],
                    "vault_target_origins": [backup_url] if list_backup else [], **settings}
        app = create_app(GatewaySettings(data_dir=tmp_path, _env_file=None, postgres_dsn=dsn, openai_url=primary_url,
                                         anthropic_url=backup_url, kafka_bootstrap="127.0.0.1:1", **settings))
        gw = app.state.gateway
        await gw.start()
        built: list = []
        gw.publisher.submit = lambda builder, size=0: built.append(builder())
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
                yield SimpleNamespace(client=client, gw=gw, app=app, built=built, pool=pg_pool, ring=ring, acme=acme,
                                      other=other, primary=primary, backup=backup, backup_url=backup_url)
        finally:
            await gw.stop()


def sent(fake) -> dict:
    """The headers the fake provider got with its latest request."""
    return fake.state.received[-1]["headers"]


async def test_a_request_without_a_provider_key_gets_its_orgs_stored_key_and_nothing_logs_it(tmp_path, pg_pool,
                                                                                              fresh_db_dsn, caplog):
    caplog.set_level(logging.DEBUG)
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        acme = {"Helicone-Auth": f"Bearer {s.acme.key}"}
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers=acme)
        assert r.status_code == 200 and sent(s.primary)["authorization"] == f"Bearer {OPENAI_KEY}"
        # Anthropic's key goes as x-api-key, the header Anthropic takes it in (and no Authorization)
        r = await s.client.post("/v1/messages", json=MESSAGES, headers=acme)
        assert r.status_code == 200 and sent(s.backup)["x-api-key"] == ANTHROPIC_KEY
        assert "authorization" not in sent(s.backup)
        # the caller's own key always wins, in any header its provider takes one in
        await s.client.post("/v1/chat/completions", json=CHAT, headers={**acme, "Authorization": "Bearer sk-callers-own"})
        assert sent(s.primary)["authorization"] == "Bearer sk-callers-own"
        for own in ({"x-api-key": "sk-ant-callers-own"}, {"Authorization": "Bearer vertex-access-token"}):
            await s.client.post("/v1/messages", json=MESSAGES, headers={**acme, **own})
            assert {k: sent(s.backup).get(k) for k in ("x-api-key", "authorization")} == {
                "x-api-key": own.get("x-api-key"), "authorization": own.get("Authorization")}
        # another org, storing none, never gets acme's: its request goes without a key
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": f"Bearer {s.other.key}"})
        assert r.status_code == 200 and "authorization" not in sent(s.primary)
        metrics = (await s.client.get("/metrics")).text
        assert s.gw.metrics.registry.get_sample_value("helicone_gateway_vault_requests_total", {"result": "added"}) == 2
        assert s.gw.metrics.registry.get_sample_value("helicone_gateway_vault_entries") == 2
    assert len(s.built) == 6 and all(ev.status == 200 for ev in s.built)
    for secret in (OPENAI_KEY, ANTHROPIC_KEY):
        assert not any(secret.encode() in events.encode(ev) for ev in s.built)  # the log event
        assert secret not in caplog.text and secret not in metrics  # the service's logs, its metrics


async def test_a_helicone_key_sent_as_the_provider_key_is_replaced_by_the_stored_key_never_forwarded(tmp_path, pg_pool,
                                                                                                     fresh_db_dsn):
    """Helicone's one-key form: the SDK's api_key is the Helicone key (no Helicone-Auth needed)."""
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        sdk = openai.AsyncOpenAI(base_url="http://gw/v1", api_key=s.acme.key, max_retries=0,
                                 http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=s.app)))
        answer = await sdk.chat.completions.create(**CHAT)
        assert answer.choices[0].message.content == "Hello from the fake upstream model"
        assert sent(s.primary)["authorization"] == f"Bearer {OPENAI_KEY}"
        # the OpenAI SDK calling Claude (/ai, Helicone's AI Gateway form) with only its Helicone key: Anthropic's key
        claude = openai.AsyncOpenAI(base_url="http://gw/ai", api_key=s.acme.key, max_retries=0,
                                    http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=s.app)))
        await claude.chat.completions.create(model="anthropic/claude-haiku-4-5", messages=CHAT["messages"], max_tokens=10)
        assert sent(s.backup)["x-api-key"] == ANTHROPIC_KEY and "authorization" not in sent(s.backup)
        # with Helicone-Auth as well, and Anthropic's x-api-key
        r = await s.client.post("/v1/messages", json=MESSAGES, headers={"Helicone-Auth": f"Bearer {s.acme.key}",
                                                                      "x-api-key": s.acme.key})
        assert r.status_code == 200 and sent(s.backup)["x-api-key"] == ANTHROPIC_KEY
        assert s.built[-1].org_id == s.acme.org_id
        # an org that stores no key for the provider: a 401 saying how to store one, nothing sent
        before = len(s.primary.state.received)
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {s.other.key}"})
        assert r.status_code == 401 and "POST /v1/provider-keys" in r.json()["error"]["message"]
        assert len(s.primary.state.received) == before
        # an unknown Helicone key there is refused as any unknown key
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-helicone-guess"})
        assert r.status_code == 401 and r.json()["error"]["message"] == "Invalid or revoked Helicone API key"
    received = [h for fake in (s.primary, s.backup) for got in fake.state.received for h in got["header_lines"]]
    assert not any(db.KEY_PREFIX in value for _, value in received)  # a Helicone key never reaches a provider


async def test_a_target_url_gets_the_stored_key_only_when_the_operator_lists_its_origin(tmp_path, pg_pool, fresh_db_dsn):
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        acme = {"Helicone-Auth": f"Bearer {s.acme.key}", "Helicone-Target-URL": s.backup_url}
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers=acme)
        assert r.status_code == 200 and "authorization" not in sent(s.backup)  # sent on, without the org's key
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={**acme, "Authorization": f"Bearer {s.acme.key}"})
        assert r.status_code == 403 and "HELICONE_VAULT_TARGET_ORIGINS" in r.json()["error"]["message"]
        assert len(s.backup.state.received) == 1
        assert s.gw.metrics.registry.get_sample_value("helicone_gateway_vault_requests_total",
                                                      {"result": "target_refused"}) == 2
    async with vault_stack(tmp_path / "listed", pg_pool, fresh_db_dsn, list_backup=True) as s2:
        # (a second stack: new orgs of its own)
        r = await s2.client.post("/v1/chat/completions", json=CHAT, headers={
            "Helicone-Auth": f"Bearer {s2.acme.key}", "Helicone-Target-URL": s2.backup_url})
        assert r.status_code == 200 and sent(s2.backup)["authorization"] == f"Bearer {OPENAI_KEY}"


async def test_each_fallback_target_gets_its_own_providers_stored_key_and_a_target_url_none(tmp_path, pg_pool, fresh_db_dsn):
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        s.primary.state.fail_next, s.backup.state.fail_next = [500], [500]
        fallbacks = [{"onCodes": FALL_ON_ERRORS}, {"target-url": s.backup_url, "onCodes": FALL_ON_ERRORS},
                     {"provider": "anthropic"}]
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={
            "Helicone-Auth": f"Bearer {s.acme.key}", "Helicone-Fallbacks": json.dumps(fallbacks)})
        assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "2"
    [first] = s.primary.state.received
    to_target, to_anthropic = s.backup.state.received
    assert first["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "authorization" not in to_target["headers"] and "x-api-key" not in to_target["headers"]
    assert to_anthropic["headers"]["x-api-key"] == ANTHROPIC_KEY and "authorization" not in to_anthropic["headers"]
    assert OPENAI_KEY not in str(s.built[0]) and ANTHROPIC_KEY not in str(s.built[0])


async def test_a_deleted_or_replaced_key_stops_being_sent_within_two_seconds(tmp_path, pg_pool, fresh_db_dsn):
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        acme = {"Helicone-Auth": f"Bearer {s.acme.key}"}

        async def upstream_got(value):
            await s.client.post("/v1/chat/completions", json=CHAT, headers=acme)
            return sent(s.primary).get("authorization") == value

        assert await upstream_got(f"Bearer {OPENAI_KEY}")
        await vault.store_provider_key(s.pool, s.ring, s.acme.org_id, "openai", "rotated", "sk-proj-RotatedKey000000000")
        await eventually(lambda: upstream_got("Bearer sk-proj-RotatedKey000000000"))
        await vault.delete_provider_key(s.pool, s.acme.org_id, "openai")
        await eventually(lambda: upstream_got(None))
        assert s.gw.metrics.registry.get_sample_value("helicone_gateway_vault_entries") == 1  # anthropic's


async def test_an_answer_got_with_a_stored_key_is_never_replayed_once_the_key_is_gone(tmp_path, pg_pool, fresh_db_dsn):
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        cached = {"Helicone-Auth": f"Bearer {s.acme.key}", "Helicone-Cache-Enabled": "true"}

        async def status():
            r = await s.client.post("/v1/chat/completions", json=CHAT, headers=cached)
            await s.gw.cache.flush()  # an answer is stored once it is complete, off the request
            return r.headers.get("helicone-cache")

        assert [await status(), await status()] == ["MISS", "HIT"]
        other = await s.client.post("/v1/chat/completions", json=CHAT, headers={**cached, "Helicone-Auth": f"Bearer {s.other.key}"})
        assert other.headers["helicone-cache"] == "MISS"
        await vault.delete_provider_key(s.pool, s.acme.org_id, "openai")

        async def gone():
            return s.gw.vault.key_for(s.acme.org_id, "openai") is None

        await eventually(gone)
        assert await status() == "MISS" and "authorization" not in sent(s.primary)


async def test_moderation_asks_with_the_stored_key_its_request_goes_with(tmp_path, pg_pool, fresh_db_dsn):
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={
            "Helicone-Auth": f"Bearer {s.acme.key}", "Helicone-Moderations-Enabled": "true"})
        assert r.status_code == 200
    moderation, chat = s.primary.state.received
    assert moderation["path"] == "/v1/moderations" and moderation["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"
    assert chat["headers"]["authorization"] == f"Bearer {OPENAI_KEY}"


async def test_without_a_master_key_nothing_is_added_and_a_helicone_key_is_no_provider_key(tmp_path, pg_pool, fresh_db_dsn):
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn, vault_key="") as s:
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": f"Bearer {s.acme.key}"})
        assert r.status_code == 200 and "authorization" not in sent(s.primary)
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {s.acme.key}"})
        assert r.status_code == 401 and "Helicone-Auth" in r.json()["error"]["message"]


@pytest.mark.parametrize("entry", ["https://az.example.com/openai", "ftp://az.example.com", "https://u:p@az.example.com"])
def test_a_target_origin_that_is_not_an_origin_stops_the_gateway_naming_the_setting(entry):
    with pytest.raises(ValueError, match=r"HELICONE_VAULT_TARGET_ORIGINS\[0\]") as err:
        GatewaySettings(vault_target_origins=[entry], _env_file=None)
    assert "u:p" not in str(err.value)


async def test_a_realtime_session_without_a_provider_key_opens_with_the_stored_key(tmp_path, pg_pool, fresh_db_dsn):
    from services.gateway.tests.test_proxy import ORG
    from services.gateway.tests.test_realtime import PROVIDER_KEY, stack

    await pg_pool.execute("INSERT INTO orgs(id, name) VALUES ($1::uuid, 'stub')", ORG)  # StubKeys' org
    await vault.store_provider_key(pg_pool, vault.Keyring(base64.b64decode(MASTER)), ORG, "openai", "rt", PROVIDER_KEY)
    async with stack(tmp_path, postgres_dsn=fresh_db_dsn, vault_key=MASTER) as (fake, built, url):
        async with asyncio.timeout(5), websockets.connect(url + "?model=gpt-realtime", open_timeout=5,
                                                         additional_headers={"Helicone-Auth": "Bearer good-key"}) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
    [handshake] = fake.handshakes
    assert handshake["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"


async def test_a_helicone_key_in_a_header_another_provider_takes_is_never_forwarded_with_the_stored_key(tmp_path, pg_pool,
                                                                                                        fresh_db_dsn):
    """With Helicone-Auth too: the Helicone key sent as the provider key in another provider's header (x-api-key to
    OpenAI, Authorization to Anthropic) goes nowhere, and the request gets its own provider's stored key."""
    async with vault_stack(tmp_path, pg_pool, fresh_db_dsn) as s:
        acme = {"Helicone-Auth": f"Bearer {s.acme.key}"}
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={**acme, "x-api-key": s.acme.key})
        assert r.status_code == 200 and sent(s.primary)["authorization"] == f"Bearer {OPENAI_KEY}"
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={**acme, "x-goog-api-key": s.acme.key,
                                                                          "api-key": s.acme.key})
        assert r.status_code == 200 and sent(s.primary)["authorization"] == f"Bearer {OPENAI_KEY}"
        # a stored key or none: an org storing none sends its request on without the Helicone key either
        r = await s.client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": f"Bearer {s.other.key}",
                                                                          "x-api-key": s.other.key})
        assert r.status_code == 200 and "authorization" not in sent(s.primary)
    received = [h for fake in (s.primary, s.backup) for got in fake.state.received for h in got["header_lines"]]
    assert not any(db.KEY_PREFIX in value for _, value in received)
