"""`python -m helicone_core.migrate`, run as the chart's hook Job runs it: a process configured by
HELICONE_* variables, against the suite's embedded Postgres and chDB (in-process and behind the
ClickHouse HTTP protocol)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from helicone_core import analytics, db
from helicone_core.analytics import make_analytics_store
from helicone_core.settings import CommonSettings

from tests.support.fault_proxy import postgres_proxy
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "pw-" + uuid.uuid4().hex  # unique: any appearance in the output is this test's


def _env(**helicone: str) -> dict[str, str]:
    """This process's environment without its HELICONE_* variables, plus `helicone`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELICONE_")}
    env.update({"HELICONE_" + k.upper(): str(v) for k, v in helicone.items()})
    return env


async def _migrate(env: dict[str, str], timeout: float = 120) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "helicone_core.migrate", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode(), time.monotonic() - started


async def _schema_version(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT max(version) FROM schema_migrations")
    finally:
        await conn.close()


async def _request_log_key(settings: dict) -> list[dict]:
    store = make_analytics_store(CommonSettings(_env_file=None, **settings))
    try:
        return await store.query("SELECT sorting_key FROM system.tables WHERE database = {d:String} AND name = 'request_log'",
                                 {"d": store.database})
    finally:
        await store.close()


async def test_migrates_postgres_and_analytics_and_running_again_changes_nothing(fresh_db_dsn, analytics_settings):
    env = _env(postgres_dsn=fresh_db_dsn, **analytics_settings)
    for _ in range(2):  # the second run finds everything migrated
        code, out, err, _ = await _migrate(env)
        assert code == 0, err
        assert await _schema_version(fresh_db_dsn) == len(db.MIGRATIONS)
        assert await _request_log_key(analytics_settings) == [{"sorting_key": analytics.REQUEST_LOG_SORTING_KEY}]
    assert "migrations applied" in err  # its JSON log
    conn = await asyncpg.connect(fresh_db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(db.MIGRATIONS)
    finally:
        await conn.close()


async def test_unreachable_postgres_fails_after_the_timeout_with_one_line_and_no_secret(chdb_path):
    port = free_port()  # bound and released: nobody listens there
    dsn = f"postgresql://helicone:{PASSWORD}@127.0.0.1:{port}/helicone"
    code, out, err, took = await _migrate(_env(postgres_dsn=dsn, migrate_timeout=2, analytics_backend="chdb", chdb_path=chdb_path))
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("helicone migrate: postgres not reachable within 2s (HELICONE_MIGRATE_TIMEOUT)"), err
    assert f"127.0.0.1', {port}" in last  # says where it tried
    assert PASSWORD not in out + err and dsn not in out + err
    assert "retrying" in err  # it did try again meanwhile
    assert 2 <= took < 30


async def test_unreachable_clickhouse_fails_naming_it_without_its_password(fresh_db_dsn):
    env = _env(postgres_dsn=fresh_db_dsn, migrate_timeout=2, analytics_backend="clickhouse",
               clickhouse_url=f"http://127.0.0.1:{free_port()}", clickhouse_password=PASSWORD)
    code, out, err, _ = await _migrate(env)
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("helicone migrate: clickhouse not reachable within 2s"), err
    assert PASSWORD not in out + err
    assert await _schema_version(fresh_db_dsn) == len(db.MIGRATIONS)  # Postgres went first


async def test_waits_for_a_postgres_that_comes_up_later(fresh_db_dsn, chdb_path):
    proxy, via = await postgres_proxy(fresh_db_dsn)
    proxy.cut()  # refuses connections, like a server that is not up yet
    try:
        run = asyncio.create_task(_migrate(_env(postgres_dsn=via, migrate_timeout=60, analytics_backend="chdb",
                                                chdb_path=chdb_path)))
        await asyncio.sleep(2.0)
        assert not run.done()
        proxy.restore()
        code, _, err, took = await run
    finally:
        await proxy.stop()
    assert code == 0, err
    assert took >= 2.0 and "postgres not reachable yet" in err
    assert await _schema_version(fresh_db_dsn) == len(db.MIGRATIONS)


async def test_wrong_credentials_fail_at_once(fresh_db_dsn, chdb_path):
    dsn = fresh_db_dsn.replace("postgresql://postgres", f"postgresql://nobody:{PASSWORD}", 1)
    assert dsn != fresh_db_dsn
    code, out, err, took = await _migrate(_env(postgres_dsn=dsn, migrate_timeout=60, analytics_backend="chdb", chdb_path=chdb_path))
    assert code == 1 and took < 30  # no point waiting 60s for a refused login
    assert err.strip().splitlines()[-1].startswith("helicone migrate: postgres migration failed:"), err
    assert PASSWORD not in out + err


@pytest.mark.parametrize(("env", "message"), [
    ({"migrate_timeout": "0"}, "HELICONE_MIGRATE_TIMEOUT: Input should be greater than 0"),
    ({"kafka_security_protocol": "SASL_SSL"}, "HELICONE_KAFKA_SASL_USERNAME and HELICONE_KAFKA_SASL_PASSWORD must be set"),
    ({"s3_secret_access_key": PASSWORD}, "HELICONE_S3_ACCESS_KEY_ID and HELICONE_S3_SECRET_ACCESS_KEY go together"),
])
async def test_invalid_settings_are_one_line_naming_the_variable(env, message):
    code, out, err, _ = await _migrate(_env(**env))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("helicone migrate: invalid settings: ") and message in err, err
    assert PASSWORD not in out + err
