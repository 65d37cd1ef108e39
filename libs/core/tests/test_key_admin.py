"""`python -m helicone_core.key_admin`: the first key of a cluster, made from a shell in a pod."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.net import free_port


def key_admin(dsn: str | None, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HELICONE_POSTGRES_DSN"}
    if dsn is not None:
        env["HELICONE_POSTGRES_DSN"] = dsn
    return subprocess.run([sys.executable, "-m", "helicone_core.key_admin", *argv], env=env, capture_output=True,
                          text=True, timeout=60)


async def test_create_list_revoke_against_the_configured_postgres(fresh_db_dsn):
    import asyncpg
    from helicone_core import db

    created = key_admin(fresh_db_dsn, "create", "--org-name", "acme", "--name", "ops")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    conn = await asyncpg.connect(fresh_db_dsn)
    try:
        org = await conn.fetchval("SELECT org_id::text FROM api_keys WHERE key_hash=$1 AND revoked_at IS NULL", db.hash_key(key["key"]))
        assert org == key["org_id"]
        listed = [json.loads(line) for line in key_admin(fresh_db_dsn, "list").stdout.splitlines()]
        assert [k["id"] for k in listed] == [key["id"]] and key["key"] not in json.dumps(listed)
        assert key_admin(fresh_db_dsn, "revoke", key["id"]).returncode == 0
        assert await conn.fetchval("SELECT revoked_at IS NOT NULL FROM api_keys WHERE id::text=$1", key["id"])
        missing = key_admin(fresh_db_dsn, "revoke", "00000000-0000-0000-0000-000000000000")
        assert missing.returncode == 1 and "no key with id" in missing.stderr
    finally:
        await conn.close()


def test_without_a_dsn_or_a_reachable_postgres_it_says_so_without_the_secret():
    unset = key_admin(None, "list")
    assert unset.returncode == 2 and "HELICONE_POSTGRES_DSN is not set" in unset.stderr
    dsn = f"postgresql://helicone:hunter2-secret@127.0.0.1:{free_port()}/helicone"
    down = key_admin(dsn, "list")
    assert down.returncode == 1 and "cannot reach or update the key store" in down.stderr
    assert "hunter2-secret" not in down.stderr + down.stdout


async def test_an_org_id_that_is_not_one_is_named_not_blamed_on_the_key_store(fresh_db_dsn):
    """`create --org-id` with an org that does not exist (a typo, another database's org) or with an
    id that is not a UUID, and `list --org-id` with such an id: said as such, naming --org-id, never
    "cannot reach or update the key store" (which sent the operator to check Postgres)."""
    created = key_admin(fresh_db_dsn, "create", "--org-name", "acme")
    assert created.returncode == 0, created.stderr
    missing = key_admin(fresh_db_dsn, "create", "--org-id", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "no org with id '00000000-0000-0000-0000-000000000000'" in missing.stderr
    assert "key store" not in missing.stderr and missing.stdout == ""
    for command in ("create", "list"):
        bad = key_admin(fresh_db_dsn, command, "--org-id", "acme")
        assert bad.returncode == 2 and "--org-id 'acme' is not an org id" in bad.stderr, (command, bad.stderr)
    listed = [json.loads(line) for line in key_admin(fresh_db_dsn, "list").stdout.splitlines()]
    assert [k["org_id"] for k in listed] == [json.loads(created.stdout)["org_id"]]  # no key was added to anything


def test_a_dsn_whose_password_is_not_percent_encoded_is_refused_before_any_connection():
    """asyncpg took what followed an unencoded '@' in the password for the host and port (a DNS lookup of part of
    the password); the Job said only "ValueError: cannot reach or update the key store"."""
    refused = key_admin("postgresql://u:S3c@ret:Pw99@127.0.0.1/db", "list")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: HELICONE_POSTGRES_DSN: ") and "%40" in refused.stderr, refused.stderr
    assert not any(piece in refused.stdout + refused.stderr for piece in ("S3c", "ret", "Pw99"))
