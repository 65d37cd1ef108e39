"""The key directory: answers from memory, follows Postgres live, survives its outage and a
restart from the snapshot, and fails closed when it has never seen the key set."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
import time

import pytest
from helicone_core import db
from helicone_core.key_directory import KeyDirectory
from helicone_core.metrics import ServiceMetrics

from tests.support.fault_proxy import postgres_proxy


def directory(dsn: str, snapshot, **kw) -> KeyDirectory:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("max_backoff", 0.2)
    return KeyDirectory(dsn, snapshot, ServiceMetrics("test"), **kw)


async def eventually(check, timeout: float = 2.0) -> float:
    """Seconds until check() holds; fails after `timeout`."""
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_new_and_revoked_keys_take_effect_within_two_seconds(pg_pool, fresh_db_dsn, tmp_path):
    org = await db.create_org(pg_pool, "acme")
    first = await db.create_key(pg_pool, org, "first")
    keys = directory(fresh_db_dsn, tmp_path / "keys.json")
    await keys.start()
    try:
        assert keys.live and keys.lookup(first.key) == org and keys.lookup("sk-helicone-unknown") is None
        second = await db.create_key(pg_pool, org, "second")
        added = await eventually(lambda: keys.lookup(second.key) == org)
        await db.revoke_key(pg_pool, first.id, org)
        revoked = await eventually(lambda: keys.lookup(first.key) is None)
        assert added < 2 and revoked < 2
        assert keys.lookup(second.key) == org
    finally:
        await keys.stop()


async def test_postgres_outage_keeps_known_keys_and_refuses_unknown_ones(pg_pool, fresh_db_dsn, tmp_path):
    org = await db.create_org(pg_pool, "acme")
    known = await db.create_key(pg_pool, org, "known")
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    snapshot = tmp_path / "keys" / "svc.snapshot.json"
    keys = directory(dsn, snapshot)
    await keys.start()
    try:
        assert keys.live
        proxy.cut()
        await eventually(lambda: not keys.live)
        later = await db.create_key(pg_pool, org, "created during the outage")
        assert keys.lookup(known.key) == org
        assert keys.lookup(later.key) is None and keys.lookup("sk-helicone-guess") is None
        # a restart during the outage answers from the snapshot
        await keys.stop()
        assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
        keys = directory(dsn, snapshot)
        await keys.start(wait=0.3)
        assert not keys.live and keys.lookup(known.key) == org and keys.lookup("sk-helicone-guess") is None
        # Postgres back: the change feed resumes and catches up with what happened meanwhile
        proxy.restore()
        await eventually(lambda: keys.live, timeout=5)
        assert keys.lookup(later.key) == org
        await db.revoke_key(pg_pool, known.id)
        await eventually(lambda: keys.lookup(known.key) is None)
    finally:
        await keys.stop()
        await proxy.stop()


async def test_revocation_reaches_a_directory_whose_change_feed_went_silent(pg_pool, fresh_db_dsn, tmp_path):
    # The feed's connection stops carrying anything without closing (a failover, a NAT entry dropped)
    # while Postgres takes new connections: no notification comes, and no error says so.
    org = await db.create_org(pg_pool, "acme")
    created = await db.create_key(pg_pool, org, "k")
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    keys = directory(dsn, tmp_path / "keys.json")  # the default resync interval (60 s)
    await keys.start()
    try:
        assert keys.live and keys.lookup(created.key) == org
        proxy.stall()
        await db.revoke_key(pg_pool, created.id)
        await eventually(lambda: keys.lookup(created.key) is None, timeout=5)
    finally:
        await keys.stop()
        await proxy.stop()


async def test_without_postgres_or_snapshot_every_lookup_fails_closed(pg_pool, fresh_db_dsn, tmp_path):
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    proxy.cut()
    keys = directory(dsn, tmp_path / "none.json")
    await keys.start(wait=0.3)
    try:
        assert not keys.loaded
        with pytest.raises(db.KeyStoreUnavailable):
            keys.lookup("sk-helicone-anything")
        org = await db.create_org(pg_pool, "acme")
        created = await db.create_key(pg_pool, org, "k")
        proxy.restore()
        await eventually(lambda: keys.loaded, timeout=5)
        assert keys.lookup(created.key) == org
    finally:
        await keys.stop()
        await proxy.stop()


async def test_a_change_that_arrives_during_a_full_reload_is_not_lost():
    keys = directory("postgresql://unused", None)

    class Conn:
        async def fetch(self, sql):
            # committed after the reload's snapshot was taken: the reload's rows do not have it
            keys._on_notify(None, 0, db.KEY_CHANGES_CHANNEL, "hash-new:org-2")
            keys._on_notify(None, 0, db.KEY_CHANGES_CHANNEL, "hash-old:")
            return [{"key_hash": "hash-old", "org_id": "org-1"}]

    await keys._reload(Conn())
    assert keys._keys == {"hash-new": "org-2"}


async def test_a_revocation_while_the_snapshot_is_written_reaches_the_snapshot(tmp_path):
    # else a crash, then a start while Postgres is unreachable, accepts the revoked key again
    path = tmp_path / "keys.json"
    keys = directory("postgresql://unused", path)
    keys._keys, keys._loaded, keys._synced = {"hash-a": "org-1", "hash-b": "org-1"}, True, True
    writing, release, write = threading.Event(), threading.Event(), keys._save_snapshot

    def slow_write(snapshot):
        writing.set()
        release.wait(5)
        write(snapshot)

    keys._save_snapshot = slow_write
    keys._schedule_save()
    assert await asyncio.to_thread(writing.wait, 5)
    keys._on_notify(None, 0, db.KEY_CHANGES_CHANNEL, "hash-a:")  # revoked while the set before it is written
    release.set()
    await eventually(lambda: path.exists() and json.loads(path.read_text())["keys"] == {"hash-b": "org-1"}, timeout=3)


async def test_a_stop_does_not_wait_for_a_snapshot_save_whose_turn_has_not_come(tmp_path):
    """Changes in quick succession are saved a second after the last save; a stop meanwhile writes the set at once
    (before, it waited for the pending save's turn, then wrote the set again: up to a second more per stop)."""
    path = tmp_path / "keys.json"
    keys = directory("postgresql://unused", path)
    keys._keys, keys._loaded, keys._synced = {"hash-a": "org-1"}, True, True
    keys._last_save = time.monotonic() + 3600  # the pending save's turn, far off: a stop that waits for it hangs
    keys._on_notify(None, 0, db.KEY_CHANGES_CHANNEL, "hash-b:org-2")
    stopping = asyncio.create_task(keys.stop())
    await asyncio.wait({stopping}, timeout=10)  # not wait_for: stop() swallows a cancel while it awaits the save
    assert stopping.done(), "stop waits for a save whose turn has not come"
    assert json.loads(path.read_text())["keys"] == {"hash-a": "org-1", "hash-b": "org-2"}


async def test_a_stop_while_the_snapshot_is_written_lets_the_write_end_first(tmp_path):
    path = tmp_path / "keys.json"
    keys = directory("postgresql://unused", path)
    keys._keys, keys._loaded, keys._synced = {"hash-a": "org-1"}, True, True
    writing, release, write, writes = threading.Event(), threading.Event(), keys._save_snapshot, []

    def slow_write(snapshot):
        writes.append(("start", dict(snapshot)))
        writing.set()
        release.wait(5)
        write(snapshot)
        writes.append(("end", dict(snapshot)))

    keys._save_snapshot = slow_write
    keys._schedule_save()
    assert await asyncio.to_thread(writing.wait, 5)
    keys._on_notify(None, 0, db.KEY_CHANGES_CHANNEL, "hash-a:")
    stopping = asyncio.create_task(keys.stop())
    await asyncio.sleep(0.2)
    release.set()
    await asyncio.wait_for(stopping, 10)
    # one write at a time (they share a temporary file), the last one of the set as it is now
    assert [w[0] for w in writes] == ["start", "end", "start", "end"] and writes[-1][1] == {}
    assert json.loads(path.read_text())["keys"] == {}


@pytest.mark.parametrize("text", ["{not json", "null", "[]", '"keys"', '{"format": 1, "keys": []}'])
def test_corrupt_snapshot_is_ignored(tmp_path, text):
    """Not JSON, or JSON that is not the snapshot's object (a wrong file mounted there): ignored with a
    warning, as the docstring says; valid JSON of another shape raised AttributeError and stopped start()."""
    path = tmp_path / "keys.json"
    path.write_text(text)
    keys = directory("postgresql://unused", path)
    keys._load_snapshot()
    assert not keys.loaded


async def test_a_key_store_never_reached_says_so_once_in_the_log(pg_pool, fresh_db_dsn, tmp_path, caplog):
    """The warning came only when a live directory lost Postgres: one that never reached it (a wrong DSN, no rights)
    answered from its snapshot, or refused every key, and logged nothing. It says so once per outage, and again
    after it was back and lost it again."""
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    proxy.cut()
    keys = directory(dsn, tmp_path / "none.json")
    caplog.set_level("WARNING", logger="helicone_core.key_directory")
    said = lambda: [r for r in caplog.records if "key store unreachable" in r.getMessage()]  # noqa: E731
    await keys.start(wait=0.3)
    try:
        await eventually(lambda: len(said()) == 1, timeout=5)
        await asyncio.sleep(1.0)  # several retries at max_backoff 0.2 s
        assert len(said()) == 1 and "no key set loaded" in said()[0].getMessage(), [r.getMessage() for r in said()]
        proxy.restore()
        await eventually(lambda: keys.loaded, timeout=5)
        proxy.cut()
        await eventually(lambda: len(said()) == 2, timeout=5)
    finally:
        await keys.stop()
        await proxy.stop()
