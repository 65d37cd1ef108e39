from helicone_core import db


async def test_keys_resolve_to_their_org_and_revocation_is_honoured(pg_pool):
    org = await db.create_org(pg_pool, "acme")
    created = await db.create_key(pg_pool, org, "ci")
    assert created.key.startswith(db.KEY_PREFIX)
    # only the hash is stored
    stored = await pg_pool.fetchval("SELECT key_hash FROM api_keys")
    assert stored == db.hash_key(created.key) and created.key not in stored
    resolver = db.KeyResolver(pg_pool, ttl=0, negative_ttl=0)
    assert await resolver.resolve(created.key) == org
    assert await resolver.resolve("sk-helicone-wrong") is None
    await pg_pool.execute("UPDATE api_keys SET revoked_at = now()")
    assert await resolver.resolve(created.key) is None


async def test_migrations_are_idempotent(pg_pool):
    assert await db.migrate(pg_pool) == len(db.MIGRATIONS)
    assert await pg_pool.fetchval("SELECT count(*) FROM schema_migrations") == len(db.MIGRATIONS)


def test_bearer_token_parsing():
    assert db.bearer_token("Bearer abc") == "abc"
    assert db.bearer_token("bearer   abc ") == "abc"
    assert db.bearer_token("Basic abc") == ""
    assert db.bearer_token(None) == ""


class _HangingPool:
    def __init__(self):
        self.calls = 0
        self.hang = False

    async def fetchrow(self, sql, digest):
        import asyncio

        self.calls += 1
        if self.hang:
            await asyncio.sleep(30)
        return {"org_id": "org-1"}


async def test_key_lookups_never_wait_long_on_a_hung_store():
    import time

    import pytest

    pool = _HangingPool()
    resolver = db.KeyResolver(pool, ttl=0.0, timeout=0.2, breaker_seconds=5)
    assert await resolver.resolve("k") == "org-1"  # cached, already expired (ttl 0)
    pool.hang = True
    t0 = time.monotonic()
    assert await resolver.resolve("k") == "org-1"  # stale answer after the timeout
    assert time.monotonic() - t0 < 1
    with pytest.raises(db.KeyStoreUnavailable):
        await resolver.resolve("unknown-key")  # breaker open: fails at once, no new lookup
    assert pool.calls == 2
