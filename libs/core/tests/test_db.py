from helicone_core import db


async def test_keys_are_stored_hashed_listed_without_plaintext_and_revoked_by_id(pg_pool):
    org = await db.create_org(pg_pool, "acme")
    other = await db.create_org(pg_pool, "other")
    created = await db.create_key(pg_pool, org, "ci")
    assert created.key.startswith(db.KEY_PREFIX)
    # only the hash is stored
    stored = await pg_pool.fetchval("SELECT key_hash FROM api_keys")
    assert stored == db.hash_key(created.key) and created.key not in stored
    [info] = await db.list_keys(pg_pool, org)
    assert (info.id, info.name, info.revoked_at) == (created.id, "ci", None) and created.key not in str(info.to_json())
    assert await db.list_keys(pg_pool, other) == []
    assert await db.revoke_key(pg_pool, created.id, other) is None  # another org cannot revoke it
    revoked = await db.revoke_key(pg_pool, created.id, org)
    assert revoked is not None and revoked.revoked_at is not None
    again = await db.revoke_key(pg_pool, created.id, org)  # idempotent, keeps the first time
    assert again.revoked_at == revoked.revoked_at
    assert await db.revoke_key(pg_pool, "not-a-uuid") is None


async def test_migrations_are_idempotent(pg_pool):
    assert await db.migrate(pg_pool) == len(db.MIGRATIONS)
    assert await pg_pool.fetchval("SELECT count(*) FROM schema_migrations") == len(db.MIGRATIONS)


def test_bearer_token_parsing():
    assert db.bearer_token("Bearer abc") == "abc"
    assert db.bearer_token("bearer   abc ") == "abc"
    assert db.bearer_token("Basic abc") == ""
    assert db.bearer_token(None) == ""
