"""Orgs and keys made before a service starts, for tests whose key is only a credential."""

from __future__ import annotations

from helicone_core import db


async def keys_before_start(dsn: str, *orgs: str) -> list[db.CreatedKey]:
    """An org and a key for each name, on `dsn` (migrated first, as a service's start would), made before
    the service starts: its first load of the key set has them. (A key made after the start comes by
    NOTIFY, and the key snapshot's save it schedules, up to a second later, is what the service's stop
    waits for: most of a second per test.)"""
    pool = await db.connect_pool(dsn, max_size=1)
    try:
        await db.migrate(pool)
        return [await db.create_key(pool, await db.create_org(pool, name), "t") for name in orgs]
    finally:
        await pool.close()
