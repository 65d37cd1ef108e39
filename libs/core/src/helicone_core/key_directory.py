"""A service's local copy of every active API key hash, so that auth answers from memory, keeps
working through a Postgres outage and a restart, and fails closed.

The copy is loaded whole from Postgres, kept current by LISTEN/NOTIFY (a trigger on `api_keys`,
migration 4, sends `<key hash>:<org id or empty>` on every change; its connection is checked every
second, as a silent one would miss revocations) plus a periodic full reload, and
saved as a snapshot file (owner-only: 0600 in a 0700 directory) that a restart loads when Postgres cannot be reached.
While Postgres is down the last known set answers: known keys keep working, unknown keys are
refused. With neither Postgres nor a snapshot, every lookup raises KeyStoreUnavailable (the
caller answers 503): a key is never accepted without being known.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path

import asyncpg

from .cancellation import raise_if_cancelling, wait_for
from .db import KEY_CHANGES_CHANNEL, KeyStoreUnavailable, hash_key
from .filemodes import open_private, private_dir
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1


class KeyDirectory:
    # what is followed (a subclass follows another table: helicone_core.vault.ProviderKeyDirectory)
    channel = KEY_CHANGES_CHANNEL
    down_message = "key store unreachable (%s); answering from the last known key set (%d keys)"
    down_unloaded_message = "key store unreachable (%s) and no key set loaded: every key is refused until it answers"

    def __init__(self, dsn: str, snapshot_path: Path | None, metrics: ServiceMetrics, *,
                 resync_interval: float = 60.0, connect_timeout: float = 2.0, max_backoff: float = 5.0,
                 heartbeat: float = 1.0) -> None:
        self.dsn = dsn
        self.snapshot_path = snapshot_path
        self.resync_interval = resync_interval
        self.heartbeat = heartbeat  # how often the feed's connection is checked (revocations must not wait for the resync)
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self._keys: dict[str, str] = {}  # sha256 hex of the key -> org id
        self._loaded = False
        self._synced = False  # the set came from Postgres at least once (not only from the snapshot)
        self._live = False
        self._said_down = False  # this outage was logged (one that began at start too)
        self._buffer: list[str] | None = None  # notifications that arrive during a full load
        self._task: asyncio.Task | None = None
        self._save_task: asyncio.Task | None = None
        self._last_save = -1.0
        self._save_again = False  # a change came in while a save was under way
        self._writing: asyncio.Task | None = None  # the snapshot write under way (in a thread)
        self._first_load = asyncio.Event()
        self._register_metrics(metrics)

    def _register_metrics(self, metrics: ServiceMetrics) -> None:
        svc = metrics.service
        self.m_entries = metrics.gauge(f"helicone_{svc}_key_directory_entries", "Active API keys known to this service",
                                       merge="livemax")
        self.m_live = metrics.gauge(f"helicone_{svc}_key_directory_live",
                                    "1 while key changes are followed live from Postgres; 0 while answering from the last known set",
                                    merge="livemin")
        self.m_changes = metrics.counter(f"helicone_{svc}_key_directory_changes_total", "Key changes applied", ("kind",))

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self, wait: float | None = None) -> None:
        """Loads the snapshot, then follows Postgres in the background; waits up to `wait` seconds
        (default: the connect timeout) for the first load from Postgres so new keys work at once."""
        await asyncio.to_thread(self._load_snapshot)
        self._task = asyncio.create_task(self._follow(), name="key-directory")
        with contextlib.suppress(TimeoutError):
            await wait_for(self._first_load.wait(), self.connect_timeout if wait is None else wait)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._save_task is not None:
            self._save_task.cancel()  # one waiting for its turn: the save below writes the same set now
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._save_task
        if self._writing is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writing  # a write under way finishes first: two would share its temporary file
        if self._synced:
            await asyncio.to_thread(self._save_snapshot, dict(self._keys))

    # ---- lookups ---------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        """True once the set came from Postgres or a snapshot: lookups can answer."""
        return self._loaded

    @property
    def live(self) -> bool:
        return self._live

    def lookup(self, key: str) -> str | None:
        """The org of an active key, None for an unknown or revoked one; raises
        KeyStoreUnavailable when no key set was ever loaded (fail closed)."""
        if not self._loaded:
            raise KeyStoreUnavailable("no key set loaded yet (Postgres unreachable and no snapshot)")
        return self._keys.get(hash_key(key)) if key else None

    async def resolve(self, key: str) -> str | None:
        return self.lookup(key)

    async def ping(self, timeout: float) -> bool:
        """A real round trip to Postgres on a connection of its own, bounded by `timeout`."""
        try:
            conn = await wait_for(asyncpg.connect(self.dsn, timeout=timeout), timeout)
        except Exception:  # noqa: BLE001 - readiness probe
            return False
        try:
            return await wait_for(conn.fetchval("SELECT 1"), timeout) == 1
        except Exception:  # noqa: BLE001 - readiness probe
            return False
        finally:
            conn.terminate()

    # ---- following Postgres ------------------------------------------------------------
    async def _follow(self) -> None:
        backoff = 0.2
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                # listen before loading, so no change between the load and the listen is missed
                await conn.add_listener(self.channel, self._on_notify)
                while True:
                    await self._reload(conn)
                    self._set_live(True)
                    self._said_down = False
                    backoff = 0.2
                    resync_at = time.monotonic() + self.resync_interval
                    while (left := resync_at - time.monotonic()) > 0:
                        with contextlib.suppress(TimeoutError):
                            await wait_for(lost.wait(), min(left, self.heartbeat))
                        if lost.is_set() or conn.is_closed():
                            raise ConnectionError("key change feed connection lost")
                        # a silently dead feed (a failover, a dropped NAT entry) brings no revocation and no error: it raises here
                        await wait_for(conn.fetchval("SELECT 1"), self.connect_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres away: keep answering from the last known set
                raise_if_cancelling(exc)
                if self._live or not self._said_down:  # once per outage, a first one at start included
                    self._said_down = True
                    if self._loaded:
                        log.warning(self.down_message, exc.__class__.__name__, len(self._keys))
                    else:
                        log.warning(self.down_unloaded_message, exc.__class__.__name__)
                self._set_live(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self._buffer = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.terminate()

    async def _reload(self, conn: asyncpg.Connection) -> None:
        self._buffer = []
        keys = await self._fetch(conn)
        pending, self._buffer = self._buffer, None
        for payload in pending:  # changes committed while the load ran: newer than what it read
            self._apply(keys, payload)
        self._keys = keys
        self._loaded = self._synced = True
        self._first_load.set()
        self.m_entries.set(len(keys))
        self.m_changes.labels("full_reload").inc()
        self._schedule_save()

    async def _fetch(self, conn: asyncpg.Connection) -> dict:
        """The whole set, as Postgres has it now."""
        rows = await wait_for(
            conn.fetch("SELECT key_hash, org_id FROM api_keys WHERE revoked_at IS NULL"), self.connect_timeout * 5
        )
        return {r["key_hash"]: str(r["org_id"]) for r in rows}

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        if self._buffer is not None:
            self._buffer.append(payload)
            return
        self._apply(self._keys, payload)
        self.m_entries.set(len(self._keys))
        self._schedule_save()

    def _apply(self, keys: dict, payload: str) -> None:
        digest, _, org = payload.partition(":")
        if org:
            keys[digest] = org
            self.m_changes.labels("added").inc()
        elif keys.pop(digest, None) is not None:
            self.m_changes.labels("removed").inc()

    def _set_live(self, live: bool) -> None:
        self._live = live
        self.m_live.set(1 if live else 0)

    # ---- snapshot --------------------------------------------------------------------
    def _schedule_save(self) -> None:
        """Saves at once, or a second after the last save when changes come in quick succession;
        off the event loop."""
        if self.snapshot_path is None:
            return
        if self._save_task is not None and not self._save_task.done():
            self._save_again = True  # the save under way may be writing a copy from before this change
            return

        async def save() -> None:
            while True:
                await asyncio.sleep(max(0.0, self._last_save + 1.0 - time.monotonic()))
                self._last_save, self._save_again = time.monotonic(), False
                self._writing = asyncio.ensure_future(asyncio.to_thread(self._save_snapshot, dict(self._keys)))
                try:
                    await asyncio.shield(self._writing)  # a stop's cancel leaves the thread's write to end
                except OSError as exc:
                    log.warning("could not save the key snapshot to %s: %s", self.snapshot_path, exc)
                if not self._save_again:
                    return

        self._save_task = asyncio.get_running_loop().create_task(save())

    def _save_snapshot(self, keys: dict[str, str]) -> None:
        if self.snapshot_path is None:
            return
        path = self.snapshot_path
        if not path.parent.is_dir():
            private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = open_private(tmp)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": SNAPSHOT_FORMAT, "saved_at": time.time(), "keys": keys}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _load_snapshot(self) -> None:
        if self.snapshot_path is None or not self.snapshot_path.exists():
            return
        try:
            data = json.loads(self.snapshot_path.read_text())
            if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT or not isinstance(data.get("keys"), dict):
                raise ValueError("unknown snapshot format")
            keys = {str(k): str(v) for k, v in data["keys"].items()}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the key snapshot %s: %s", self.snapshot_path, exc)
            return
        if not self._loaded:
            self._keys = keys
            self._loaded = True
            self.m_entries.set(len(keys))
            log.info("loaded %d keys from the snapshot %s", len(keys), self.snapshot_path)
