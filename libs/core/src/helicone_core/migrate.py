"""Schema migrations before the services start: `python -m helicone_core.migrate` (the Helm
chart's pre-install/pre-upgrade hook Job) and `helicone-stack up` run the same `apply_migrations`.

It applies the Postgres migrations (db.migrate) and the analytics schema of the store the settings
select (init_schema: the database, then analytics.migrate_schema: every analytics table),
with the settings read from the HELICONE_* environment. A database that does not answer yet (the
hook may run before Postgres or ClickHouse is up) is tried again with backoff for up to
HELICONE_MIGRATE_TIMEOUT seconds.
Exit status 0 once both are migrated; otherwise 1 (2 for invalid settings) and one line on stderr
that names what failed, never a DSN or a password. Both migrations are safe to run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from pydantic import Field, ValidationError

from .cancellation import wait_for
from .logging import configure_logging, redact
from .settings import CommonSettings, describe_settings_error, env_name

log = logging.getLogger("helicone.migrate")

MAX_BACKOFF = 5.0  # seconds between two attempts, at most


class MigrateSettings(CommonSettings):
    # seconds to keep retrying while Postgres or ClickHouse cannot be reached
    migrate_timeout: float = Field(default=300.0, gt=0)


class MigrationError(Exception):
    """A migration that failed: the message is one line, secrets taken out."""


async def apply_migrations(settings: MigrateSettings) -> None:
    """Migrates Postgres, then the analytics store; raises MigrationError."""
    from . import db
    from .analytics import make_analytics_store

    deadline = time.monotonic() + settings.migrate_timeout

    async def postgres() -> None:
        pool = await db.connect_pool(settings.postgres_dsn.get_secret_value(), min_size=1, max_size=1)
        try:
            version = await db.migrate(pool)
        finally:
            await _close_pool(pool)
        log.info("postgres schema at version %d", version)

    async def analytics() -> None:
        store = make_analytics_store(settings)
        try:
            await store.init_schema()
        finally:
            with contextlib.suppress(Exception):
                await store.close()
        log.info("analytics schema (%s, database %s) migrated", settings.analytics_backend, store.database)

    await _until_reachable("postgres", postgres, _postgres_unreachable(), settings, deadline)
    await _until_reachable(settings.analytics_backend, analytics, _analytics_unreachable(settings), settings, deadline)


async def _close_pool(pool) -> None:
    try:
        await wait_for(pool.close(), 5)
    except BaseException:  # cancelled (the deadline) or a hung server: do not wait for it
        pool.terminate()
        raise


def _postgres_unreachable() -> tuple[type[BaseException], ...]:
    import asyncpg

    # OSError: refused, unreachable, a name that does not resolve yet; the others: a server that
    # is starting, full, or dropped the connection
    return (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
            asyncpg.TooManyConnectionsError)


def _analytics_unreachable(settings: CommonSettings) -> tuple[type[BaseException], ...]:
    if settings.analytics_backend == "chdb":
        return ()  # in-process: nothing to wait for
    from clickhouse_connect.driver.exceptions import OperationalError

    return (OSError, TimeoutError, OperationalError)


async def _until_reachable(what: str, attempt: Callable[[], Awaitable[None]], retryable: tuple[type[BaseException], ...],
                           settings: MigrateSettings, deadline: float) -> None:
    backoff = 0.25
    while True:
        try:
            await wait_for(attempt(), max(deadline - time.monotonic(), 0.01))
            return
        except retryable as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MigrationError(
                    f"{what} not reachable within {settings.migrate_timeout:g}s ({env_name('migrate_timeout')}): "
                    f"{_describe(exc, settings)}") from None
            log.info("%s not reachable yet (%s); retrying in %.1fs", what, _describe(exc, settings), min(backoff, left))
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, MAX_BACKOFF)
        except Exception as exc:  # noqa: BLE001 - refused credentials, a failed statement: retrying will not help
            raise MigrationError(f"{what} migration failed: {_describe(exc, settings)}") from None


def _describe(exc: BaseException, settings: CommonSettings) -> str:
    """`Type: message` on one line, with every configured secret taken out."""
    text = f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
    dsn = settings.postgres_dsn.get_secret_value()
    secrets = [dsn, urlsplit(dsn).password, settings.clickhouse_password.get_secret_value(),
               settings.kafka_sasl_password.get_secret_value()]
    secrets += [s.get_secret_value() for s in (settings.s3_access_key_id, settings.s3_secret_access_key) if s is not None]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):  # the DSN before the password inside it
        text = text.replace(secret, "***")
    return " ".join(redact(text).split())


def main() -> int:
    try:
        settings = MigrateSettings()
    except ValidationError as exc:
        print(f"helicone migrate: invalid settings: {describe_settings_error(exc)}", file=sys.stderr)
        return 2
    configure_logging("migrate", settings.log_level)
    try:
        asyncio.run(apply_migrations(settings))
    except MigrationError as exc:
        print(f"helicone migrate: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - still one line, still without secrets
        print(f"helicone migrate: failed: {_describe(exc, settings)}", file=sys.stderr)
        return 1
    log.info("migrations applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
