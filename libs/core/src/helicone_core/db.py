"""Postgres: connection pool, migrations, organisations and API keys.

API keys are stored only as SHA-256 hashes; the plaintext is shown once, at creation.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import asyncpg

KEY_PREFIX = "sk-helicone-"

MIGRATIONS: list[str] = [
    # 1: organisations and keys
    """
    CREATE TABLE orgs (
        id UUID PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE api_keys (
        key_hash TEXT PRIMARY KEY,
        org_id UUID NOT NULL REFERENCES orgs(id),
        name TEXT NOT NULL,
        key_preview TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        revoked_at TIMESTAMPTZ
    );
    CREATE INDEX api_keys_org ON api_keys(org_id);
    """,
    # 2: prompt templates, versioned
    """
    CREATE TABLE prompt_versions (
        org_id UUID NOT NULL REFERENCES orgs(id),
        prompt_id TEXT NOT NULL,
        version INT NOT NULL,
        template JSONB NOT NULL,
        model TEXT NOT NULL DEFAULT '',
        variables TEXT[] NOT NULL DEFAULT '{}',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (org_id, prompt_id, version)
    );
    """,
    # 3: request metadata kept by ingest (directory of users, sessions and property keys)
    """
    CREATE TABLE request_users (
        org_id UUID NOT NULL,
        user_id TEXT NOT NULL,
        first_seen TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (org_id, user_id)
    );
    CREATE TABLE request_sessions (
        org_id UUID NOT NULL,
        session_id TEXT NOT NULL,
        session_name TEXT NOT NULL DEFAULT '',
        first_seen TIMESTAMPTZ NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (org_id, session_id)
    );
    CREATE TABLE property_keys (
        org_id UUID NOT NULL,
        key TEXT NOT NULL,
        first_seen TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (org_id, key)
    );
    """,
]


async def connect_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)


async def migrate(pool: asyncpg.Pool) -> int:
    """Applies pending migrations under an advisory lock; returns the schema version."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(727274)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
            for version, sql in enumerate(MIGRATIONS, start=1):
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations(version) VALUES ($1)", version)
            return len(MIGRATIONS)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    org_id: str
    key: str  # plaintext: shown once


async def create_org(pool: asyncpg.Pool, name: str) -> str:
    org_id = str(uuid.uuid4())
    await pool.execute("INSERT INTO orgs(id, name) VALUES ($1, $2)", uuid.UUID(org_id), name)
    return org_id


async def create_key(pool: asyncpg.Pool, org_id: str, name: str) -> CreatedKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    await pool.execute(
        "INSERT INTO api_keys(key_hash, org_id, name, key_preview) VALUES ($1, $2, $3, $4)",
        hash_key(key),
        uuid.UUID(org_id),
        name,
        key[: len(KEY_PREFIX) + 4] + "…",
    )
    return CreatedKey(org_id=org_id, key=key)


class KeyStoreUnavailable(RuntimeError):
    """Postgres could not answer a key lookup in time."""


class KeyResolver:
    """Maps a Helicone API key to its org, with an in-memory cache.

    resolve() returns the org id, or None for an unknown/revoked key. When Postgres does not answer
    within `timeout`, a cached answer is used even if expired; without one, KeyStoreUnavailable is
    raised. After a failure, lookups fail fast for `breaker_seconds` instead of waiting again.
    """

    def __init__(self, pool: asyncpg.Pool, ttl: float = 60.0, negative_ttl: float = 5.0, max_entries: int = 100_000,
                 timeout: float = 1.0, breaker_seconds: float = 2.0) -> None:
        self.pool = pool
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self.breaker_seconds = breaker_seconds
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._down_until = 0.0

    async def resolve(self, key: str) -> str | None:
        if not key:
            return None
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            if now < self._down_until:
                raise KeyStoreUnavailable("key store marked down")
            row = await asyncio.wait_for(
                self.pool.fetchrow("SELECT org_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest),
                self.timeout,
            )
        except Exception as exc:
            if not isinstance(exc, KeyStoreUnavailable):
                self._down_until = time.monotonic() + self.breaker_seconds
            if hit is not None:
                return hit[1]  # stale, but better than failing the caller during an outage
            raise KeyStoreUnavailable(str(exc) or exc.__class__.__name__) from exc
        org = str(row["org_id"]) if row else None
        if len(self._cache) >= self.max_entries:
            self._cache.clear()
        self._cache[digest] = (now + (self.ttl if org else self.negative_ttl), org)
        return org


def bearer_token(header_value: str | None) -> str:
    if not header_value:
        return ""
    parts = header_value.strip().split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return ""
