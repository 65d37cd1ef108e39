"""The provider key vault's routes on a real Postgres: an org stores, lists and deletes its own provider keys; a key is
stored encrypted (never in clear, never answered back), bound to its org and provider, and another org never sees it;
without HELICONE_VAULT_KEY the routes answer a 503 naming it."""

from __future__ import annotations

import asyncio
import base64
import logging

import httpx
import pytest
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import vault

from services.api.tests.test_api import documented_answers, wait_for_keys
from tests.support.keys import keys_before_start

MASTER = base64.b64encode(b"m" * 32).decode()
OPENAI_KEY = "sk-proj-Vault0Secret0Openai0Key0000wxyz"
ANTHROPIC_KEY = "sk-ant-api03-Vault0Secret0Anthropic0Key0abcd"


@pytest.fixture
async def vault_api(tmp_path, fresh_db_dsn):
    """(client as org acme, state, acme's org id, client as org other), on an api with a master key."""
    made = await keys_before_start(fresh_db_dsn, "acme", "other")
    settings = ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, analytics_backend="chdb",
                           chdb_path=tmp_path / "chdb", vault_key=MASTER, _env_file=None)
    app = create_app(settings)
    state = app.state.api
    await state.start()
    await wait_for_keys(state, *(k.key for k in made))
    hooks = documented_answers(app)
    clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", event_hooks=hooks,
                                 headers={"Authorization": f"Bearer {k.key}"}) for k in made]
    yield clients[0], state, made[0].org_id, clients[1]
    for c in clients:
        await c.aclose()
    await state.stop()


async def test_an_org_stores_lists_replaces_and_deletes_its_provider_keys_never_seeing_them_again(vault_api, caplog):
    client, state, org, other = vault_api
    caplog.set_level(logging.DEBUG)
    r = await client.post("/v1/provider-keys", json={"provider": "openai", "key": OPENAI_KEY, "name": "prod"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert (created["provider"], created["name"], created["org_id"], created["hint"]) == ("openai", "prod", org, "sk-...wxyz")
    assert (await client.post("/v1/provider-keys", json={"provider": "anthropic", "key": ANTHROPIC_KEY})).status_code == 201

    listed = (await client.get("/v1/provider-keys")).json()["data"]
    assert [(k["provider"], k["name"], k["hint"]) for k in listed] == [("anthropic", "default", "sk-...abcd"),
                                                                       ("openai", "prod", "sk-...wxyz")]
    assert (await other.get("/v1/provider-keys")).json() == {"data": []}  # another org sees none of them

    # replacing: 200, a new id, the new key's hint
    r = await client.post("/v1/provider-keys", json={"provider": "openai", "key": OPENAI_KEY[:-4] + "9876"})
    assert r.status_code == 200 and r.json()["id"] != created["id"] and r.json()["hint"] == "sk-...9876"

    # another org can neither delete nor replace acme's keys: its own delete finds nothing
    assert (await other.delete("/v1/provider-keys/openai")).status_code == 404
    assert len((await client.get("/v1/provider-keys")).json()["data"]) == 2

    r = await client.delete("/v1/provider-keys/openai")
    assert r.status_code == 200 and r.json()["provider"] == "openai"
    assert [k["provider"] for k in (await client.get("/v1/provider-keys")).json()["data"]] == ["anthropic"]
    r = await client.delete("/v1/provider-keys/openai")
    assert r.status_code == 404 and "no key for provider 'openai'" in r.json()["error"]["message"]

    # never in clear: not in Postgres, not in any answer, not in the logs
    rows = await state.pool.fetch("SELECT * FROM provider_keys")
    assert ANTHROPIC_KEY.encode() not in b"".join(bytes(v) if isinstance(v, bytes) else str(v).encode()
                                                   for row in rows for v in row.values())
    assert ANTHROPIC_KEY not in caplog.text and OPENAI_KEY[:-4] not in caplog.text


async def test_a_stored_key_decrypts_only_as_its_own_orgs_key_for_its_provider(vault_api):
    client, state, org, other = vault_api
    await client.post("/v1/provider-keys", json={"provider": "openai", "key": OPENAI_KEY})
    await other.post("/v1/provider-keys", json={"provider": "openai", "key": "sk-other-org-key-00000000"})
    ring = state.settings.vault_keyring()
    mine = await state.pool.fetchrow("SELECT org_id, ciphertext FROM provider_keys WHERE org_id = $1::uuid", org)
    assert ring.decrypt(org, "openai", mine["ciphertext"]) == OPENAI_KEY
    with pytest.raises(vault.VaultError):  # moved to another provider
        ring.decrypt(org, "anthropic", mine["ciphertext"])
    # copied into the other org's row (someone with write access to Postgres): that org's key no longer decrypts
    await state.pool.execute("UPDATE provider_keys SET ciphertext = $1 WHERE org_id <> $2::uuid", mine["ciphertext"], org)
    theirs = await state.pool.fetchrow("SELECT org_id, ciphertext FROM provider_keys WHERE org_id <> $1::uuid", org)
    with pytest.raises(vault.VaultError, match="does not decrypt"):
        ring.decrypt(str(theirs["org_id"]), "openai", theirs["ciphertext"])


async def test_an_old_master_key_still_decrypts_and_reencrypt_moves_keys_to_the_new_one(vault_api, fresh_db_dsn,
                                                                                         monkeypatch, capsys):
    client, state, org, _ = vault_api
    await client.post("/v1/provider-keys", json={"provider": "openai", "key": OPENAI_KEY})
    new, spare = base64.b64encode(b"n" * 32).decode(), base64.b64encode(b"o" * 32).decode()
    rotated = ApiSettings(vault_key=new, vault_old_keys=f"{MASTER}, {spare}", _env_file=None).vault_keyring()
    blob = await state.pool.fetchval("SELECT ciphertext FROM provider_keys")
    assert rotated.decrypt(org, "openai", blob) == OPENAI_KEY and not rotated.current(blob)
    # the rotation's last step, as the operator runs it
    for name, value in (("POSTGRES_DSN", fresh_db_dsn), ("VAULT_KEY", new), ("VAULT_OLD_KEYS", f"{MASTER},{spare}")):
        monkeypatch.setenv(f"HELICONE_{name}", value)
    assert [await asyncio.to_thread(vault.main, ["reencrypt"]) for _ in range(2)] == [0, 0]
    assert capsys.readouterr().out.split() == ['{"reencrypted":', "1}", '{"reencrypted":', "0}"]
    blob = await state.pool.fetchval("SELECT ciphertext FROM provider_keys")
    assert rotated.current(blob) and rotated.decrypt(org, "openai", blob) == OPENAI_KEY
    alone = ApiSettings(vault_key=MASTER, _env_file=None).vault_keyring()  # the old key alone no longer reads it
    with pytest.raises(vault.VaultError, match="HELICONE_VAULT_OLD_KEYS"):
        alone.decrypt(org, "openai", blob)
    # a key no master key decrypts is named (by id), and nothing is half done
    monkeypatch.setenv("HELICONE_VAULT_OLD_KEYS", spare)
    monkeypatch.setenv("HELICONE_VAULT_KEY", MASTER)
    assert await asyncio.to_thread(vault.main, ["reencrypt"]) == 1
    err = capsys.readouterr().err
    assert "stored openai key" in err and "HELICONE_VAULT_OLD_KEYS" in err and OPENAI_KEY not in err


BAD_KEYS = [
    ({"provider": "nosuch", "key": OPENAI_KEY}, "provider", "'openai'"),
    ({"provider": "openai", "key": "sk-with\r\nx-injected: 1"}, "key", "visible ASCII"),
    ({"provider": "openai", "key": "sk key with spaces"}, "key", "visible ASCII"),
    ({"provider": "openai", "key": "short"}, "key", "8 to 1024"),
    ({"provider": "openai", "key": "sk-helicone-" + "a" * 40}, "key", "Helicone API key"),
    ({"provider": "openai", "key": OPENAI_KEY, "admin": True}, "admin", "Extra inputs"),
]


async def test_a_key_that_could_not_be_sent_as_a_header_is_refused_naming_the_field(vault_api):
    client, state, *_ = vault_api
    for body, field, says in BAD_KEYS:
        r = await client.post("/v1/provider-keys", json=body)
        assert r.status_code == 422, body
        [detail] = r.json()["error"]["details"]
        assert detail["field"] == field and says in detail["message"], (body, detail)
        assert body["key"] not in r.text  # the input is never echoed
    assert await state.pool.fetchval("SELECT count(*) FROM provider_keys") == 0


async def test_without_a_master_key_the_routes_answer_503_naming_the_setting(tmp_path, fresh_db_dsn):
    [made] = await keys_before_start(fresh_db_dsn, "acme")
    app = create_app(ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=fresh_db_dsn, analytics_backend="chdb",
                                 chdb_path=tmp_path / "chdb", _env_file=None))
    state = app.state.api
    await state.start()
    try:
        await wait_for_keys(state, made.key)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers={"Authorization": f"Bearer {made.key}"}) as client:
            for r in (await client.get("/v1/provider-keys"), await client.delete("/v1/provider-keys/openai"),
                      await client.post("/v1/provider-keys", json={"provider": "openai", "key": OPENAI_KEY})):
                assert r.status_code == 503 and "HELICONE_VAULT_KEY" in r.json()["error"]["message"], r.text
            assert (await client.get("/v1/provider-keys", headers={"Authorization": ""})).status_code == 401
        assert await state.pool.fetchval("SELECT count(*) FROM provider_keys") == 0
    finally:
        await state.stop()


def test_a_master_key_that_is_not_32_bytes_of_base64_stops_the_api_naming_the_setting():
    for bad in ("short", base64.b64encode(b"x" * 16).decode(), "!" * 44):
        with pytest.raises(ValueError, match="HELICONE_VAULT_KEY must be 32 random bytes in base64"):
            ApiSettings(vault_key=bad, _env_file=None)
    with pytest.raises(ValueError, match="HELICONE_VAULT_OLD_KEYS is set but HELICONE_VAULT_KEY is not"):
        ApiSettings(vault_old_keys=MASTER, _env_file=None)
    assert ApiSettings(vault_key="", _env_file=None).vault_keyring() is None
    urlsafe = base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")  # either alphabet, padding optional
    assert ApiSettings(vault_key=urlsafe, _env_file=None).vault_keyring() is not None
