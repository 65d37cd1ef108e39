"""Postgres: connection pool, migrations, organisations and API keys.

API keys are stored only as SHA-256 hashes; the plaintext is shown once, at creation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass

import asyncpg

KEY_PREFIX = "sk-helicone-"
# Postgres NOTIFY channel for api_keys changes; payload "<key hash>:<org id, empty when revoked or deleted>"
KEY_CHANGES_CHANNEL = "helicone_api_keys"
# Postgres NOTIFY channel for prompt changes; payload "<org id>:<prompt id>"
PROMPT_CHANGES_CHANNEL = "helicone_prompt_changes"
# Postgres NOTIFY channel for provider_keys changes (the vault); payload "<org id>:<provider>:<key id>:<hex ciphertext>",
# the last two empty when the org's key for that provider is gone
PROVIDER_KEY_CHANGES_CHANNEL = "helicone_provider_keys"

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
    # 4: key ids (to list and revoke keys without their plaintext) and a change feed for key directories
    f"""
    ALTER TABLE api_keys ADD COLUMN id UUID NOT NULL DEFAULT gen_random_uuid();
    CREATE UNIQUE INDEX api_keys_id ON api_keys(id);
    CREATE FUNCTION helicone_notify_api_key_change() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('{KEY_CHANGES_CHANNEL}', OLD.key_hash || ':');
            RETURN OLD;
        END IF;
        IF TG_OP = 'UPDATE' AND OLD.key_hash <> NEW.key_hash THEN
            PERFORM pg_notify('{KEY_CHANGES_CHANNEL}', OLD.key_hash || ':');
        END IF;
        PERFORM pg_notify('{KEY_CHANGES_CHANNEL}',
                          NEW.key_hash || ':' || CASE WHEN NEW.revoked_at IS NULL THEN NEW.org_id::text ELSE '' END);
        RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION helicone_notify_api_key_change();
    """,
    # 5: prompts as things of their own (archive), typed variables and change notes per version,
    # environment labels and their history (what a rollback returns to)
    """
    CREATE TABLE prompts (
        org_id UUID NOT NULL REFERENCES orgs(id),
        prompt_id TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        archived_at TIMESTAMPTZ,
        PRIMARY KEY (org_id, prompt_id)
    );
    INSERT INTO prompts(org_id, prompt_id, created_at)
        SELECT org_id, prompt_id, min(created_at) FROM prompt_versions GROUP BY org_id, prompt_id;
    ALTER TABLE prompt_versions ADD COLUMN variable_types TEXT[] NOT NULL DEFAULT '{}';  -- parallel to variables; '{}' means all string
    ALTER TABLE prompt_versions ADD COLUMN message TEXT NOT NULL DEFAULT '';
    ALTER TABLE prompt_versions ADD COLUMN changed_fields TEXT[] NOT NULL DEFAULT '{}';
    CREATE TABLE prompt_environments (
        org_id UUID NOT NULL,
        prompt_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        version INT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (org_id, prompt_id, environment),
        FOREIGN KEY (org_id, prompt_id, version) REFERENCES prompt_versions(org_id, prompt_id, version)
    );
    CREATE TABLE prompt_environment_history (
        id BIGSERIAL PRIMARY KEY,
        org_id UUID NOT NULL,
        prompt_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        version INT NOT NULL,
        set_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX prompt_environment_history_env ON prompt_environment_history(org_id, prompt_id, environment, id);
    """,
    # 6: a change feed of prompts (new versions, environment labels, archives) for the caches of every gateway
    f"""
    CREATE FUNCTION helicone_notify_prompt_change() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('{PROMPT_CHANGES_CHANNEL}', NEW.org_id::text || ':' || NEW.prompt_id);
        RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER prompt_versions_notify AFTER INSERT ON prompt_versions
        FOR EACH ROW EXECUTE FUNCTION helicone_notify_prompt_change();
    CREATE TRIGGER prompt_environments_notify AFTER INSERT OR UPDATE ON prompt_environments
        FOR EACH ROW EXECUTE FUNCTION helicone_notify_prompt_change();
    CREATE TRIGGER prompts_notify AFTER UPDATE ON prompts
        FOR EACH ROW EXECUTE FUNCTION helicone_notify_prompt_change();
    """,
    # 7: alert rules (helicone_api.alerts), their state and the history of their transitions
    """
    CREATE TABLE alert_rules (
        id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id UUID NOT NULL REFERENCES orgs(id),
        name TEXT NOT NULL,
        metric TEXT NOT NULL,
        window_seconds INT NOT NULL,
        comparison TEXT NOT NULL,
        threshold DOUBLE PRECISION NOT NULL,
        filter JSONB NOT NULL DEFAULT '{}',
        min_requests INT NOT NULL DEFAULT 1,
        webhook_url TEXT NOT NULL,
        webhook_secret TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT true,
        state TEXT NOT NULL DEFAULT 'ok',
        last_value DOUBLE PRECISION,
        last_requests BIGINT,
        last_evaluated_at TIMESTAMPTZ,
        next_evaluation_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX alert_rules_org ON alert_rules(org_id, created_at);
    CREATE INDEX alert_rules_due ON alert_rules(next_evaluation_at) WHERE enabled;
    CREATE TABLE alert_events (
        id BIGSERIAL PRIMARY KEY,
        rule_id UUID NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
        at TIMESTAMPTZ NOT NULL DEFAULT now(),
        state TEXT NOT NULL,
        value DOUBLE PRECISION,
        requests BIGINT,
        delivery_result TEXT NOT NULL DEFAULT 'pending',
        delivery_attempts INT NOT NULL DEFAULT 0,
        delivery_status INT,
        delivery_error TEXT
    );
    CREATE INDEX alert_events_rule ON alert_events(rule_id, id);
    """,
    # 8: the time of the request a session's name came from: the newest request's name wins, whatever order
    # ingest writes them in (NULL: a name kept before this, or none)
    """
    ALTER TABLE request_sessions ADD COLUMN name_at TIMESTAMPTZ;
    """,
    # 9: per-request webhooks (helicone_api.request_webhooks routes, delivered by ingest after it wrote the request)
    """
    CREATE TABLE request_webhooks (
        id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id UUID NOT NULL REFERENCES orgs(id),
        destination TEXT NOT NULL,
        hmac_key TEXT NOT NULL,
        sample_rate DOUBLE PRECISION NOT NULL DEFAULT 100,
        property_filters JSONB NOT NULL DEFAULT '{}',
        include_data BOOLEAN NOT NULL DEFAULT true,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE INDEX request_webhooks_org ON request_webhooks(org_id, created_at);
    """,
    # 10: the provider key vault (helicone_core.vault): one stored key per org and provider, encrypted (AES-GCM under the
    # deployment's master key, bound to its org and provider), and a change feed for the gateways' copies
    f"""
    CREATE TABLE provider_keys (
        id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
        org_id UUID NOT NULL REFERENCES orgs(id),
        provider TEXT NOT NULL,
        name TEXT NOT NULL,
        hint TEXT NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        UNIQUE (org_id, provider)
    );
    CREATE FUNCTION helicone_notify_provider_key_change() RETURNS trigger AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('{PROVIDER_KEY_CHANGES_CHANNEL}', OLD.org_id::text || ':' || OLD.provider || '::');
            RETURN OLD;
        END IF;
        IF TG_OP = 'UPDATE' AND (OLD.org_id <> NEW.org_id OR OLD.provider <> NEW.provider) THEN
            PERFORM pg_notify('{PROVIDER_KEY_CHANGES_CHANNEL}', OLD.org_id::text || ':' || OLD.provider || '::');
        END IF;
        PERFORM pg_notify('{PROVIDER_KEY_CHANGES_CHANNEL}', NEW.org_id::text || ':' || NEW.provider || ':' || NEW.id::text
                          || ':' || encode(NEW.ciphertext, 'hex'));
        RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER provider_keys_notify AFTER INSERT OR UPDATE OR DELETE ON provider_keys
        FOR EACH ROW EXECUTE FUNCTION helicone_notify_provider_key_change();
    """,
]


async def connect_pool(dsn: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, command_timeout=30)


async def ping(pool: asyncpg.Pool | None) -> bool:
    """A real round trip (a pool object says nothing about the server); the caller bounds the time."""
    return pool is not None and await pool.fetchval("SELECT 1") == 1


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
    id: str = ""


async def create_org(pool: asyncpg.Pool, name: str) -> str:
    org_id = str(uuid.uuid4())
    await pool.execute("INSERT INTO orgs(id, name) VALUES ($1, $2)", uuid.UUID(org_id), name)
    return org_id


async def create_key(pool: asyncpg.Pool, org_id: str, name: str) -> CreatedKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = await pool.fetchval(
        "INSERT INTO api_keys(key_hash, org_id, name, key_preview) VALUES ($1, $2, $3, $4) RETURNING id",
        hash_key(key),
        uuid.UUID(org_id),
        name,
        key[: len(KEY_PREFIX) + 4] + "…",
    )
    return CreatedKey(org_id=org_id, key=key, id=str(key_id))


class KeyStoreUnavailable(RuntimeError):
    """No key set is available to answer a lookup (auth must then fail closed)."""


@dataclass(frozen=True)
class KeyInfo:
    id: str
    org_id: str
    name: str
    preview: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    def to_json(self) -> dict:
        return {"id": self.id, "org_id": self.org_id, "name": self.name, "preview": self.preview,
                "created_at": self.created_at.isoformat(), "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


async def list_keys(pool: asyncpg.Pool, org_id: str | None = None) -> list[KeyInfo]:
    """Every key (revoked ones too), oldest first; only one org's with `org_id`."""
    rows = await pool.fetch(
        "SELECT id, org_id, name, key_preview, created_at, revoked_at FROM api_keys "
        "WHERE $1::uuid IS NULL OR org_id = $1::uuid ORDER BY created_at, id",
        uuid.UUID(org_id) if org_id else None,
    )
    return [KeyInfo(str(r["id"]), str(r["org_id"]), r["name"], r["key_preview"], r["created_at"], r["revoked_at"]) for r in rows]


async def revoke_key(pool: asyncpg.Pool, key_id: str, org_id: str | None = None) -> KeyInfo | None:
    """Revokes a key by id (or by its plaintext); with `org_id`, only a key of that org.
    Returns the key (already revoked ones too), or None when there is no such key."""
    if key_id.startswith(KEY_PREFIX):
        where, arg = "key_hash = $1", hash_key(key_id)
    else:
        try:
            where, arg = "id = $1::uuid", uuid.UUID(key_id)
        except ValueError:
            return None
    row = await pool.fetchrow(
        f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE {where} "
        "AND ($2::uuid IS NULL OR org_id = $2::uuid) RETURNING id, org_id, name, key_preview, created_at, revoked_at",
        arg, uuid.UUID(org_id) if org_id else None,
    )
    if row is None:
        return None
    return KeyInfo(str(row["id"]), str(row["org_id"]), row["name"], row["key_preview"], row["created_at"], row["revoked_at"])


def bearer_token(header_value: str | None) -> str:
    if not header_value:
        return ""
    parts = header_value.strip().split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1].strip()
    return ""
