"""Postgres metadata (the directory of users, sessions and property keys) kept by ingest.

Rows and bodies never wait for Postgres: each batch's metadata is merged into an in-memory
aggregate, one entry per distinct key, and a background task upserts it. While Postgres is
unreachable the aggregate keeps merging (first/last seen, the newest request's session name) and is written
once Postgres answers again. It is bounded by distinct keys: past the bound, keys not already
pending are dropped and counted (`helicone_ingest_metadata_dropped_keys_total{reason="full"}`);
keys already pending keep being updated. The directory is derived data (every request row in
ClickHouse carries its user, session and properties), so a dropped key loses a directory entry,
never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import random
import uuid

from helicone_core import events
from helicone_core.cancellation import raise_if_cancelling, wait_for
from helicone_core.metrics import ServiceMetrics

log = logging.getLogger("helicone.ingest")

UserKey = tuple[uuid.UUID, str]
FLUSH_CHUNK = 5000  # keys per Postgres transaction, so one flush never runs into the command timeout
# The longest user id, session id or property key kept (the producers' own bounds are 512 and 256
# characters): a longer one may not fit a Postgres index entry (2704 bytes), and a key Postgres refuses
# fails its whole chunk on every flush. So does a NUL character, which TEXT cannot hold.
MAX_KEY_CHARS = 512


def _unstorable(key: str) -> bool:
    return len(key) > MAX_KEY_CHARS or "\x00" in key


class PendingMetadata:
    """Metadata waiting to be upserted into Postgres, and the task that upserts it.

    `pool` is None until ingest has connected to Postgres; until then everything stays pending."""

    def __init__(self, metrics: ServiceMetrics, *, max_keys: int = 100_000, retry_max_backoff: float = 5.0) -> None:
        self.max_keys = max_keys
        self.retry_max_backoff = retry_max_backoff
        self.pool = None
        self.users: dict[UserKey, tuple[dt.datetime, dt.datetime]] = {}
        # (first seen, last seen, name, when the request that named it was made: None without a name)
        self.sessions: dict[UserKey, tuple[dt.datetime, dt.datetime, str, dt.datetime | None]] = {}
        self.props: dict[UserKey, dt.datetime] = {}
        self._in_flight = 0  # keys taken by a flush that has not finished yet
        self._failing = False
        self._full = False
        self._wake = asyncio.Event()
        self.m_pending = metrics.gauge(
            "helicone_ingest_metadata_pending_keys", "Users, sessions and property keys waiting to be written to Postgres"
        )
        self.m_dropped = metrics.counter(
            "helicone_ingest_metadata_dropped_keys_total",
            "Users, sessions and property keys never written to Postgres (full: past the pending bound; stopped: "
            "Postgres unreachable at shutdown; invalid: a NUL character or longer than 512 characters)", ("reason",),
        )
        self.m_failures = metrics.counter(
            "helicone_ingest_metadata_flush_failures_total", "Failed metadata upserts to Postgres (retried)"
        )

    def __len__(self) -> int:
        return len(self.users) + len(self.sessions) + len(self.props) + self._in_flight

    # ---- aggregate -------------------------------------------------------------------
    def add(self, batch: list[events.RequestLogged]) -> None:
        """Merges a written batch's metadata; never blocks, never fails. (The merges of
        _merge_user, _merge_session and _merge_prop, inlined: this runs for every event ingest writes.)"""
        dropped = invalid = 0
        users, sessions, props = self.users, self.sessions, self.props
        size, limit = len(self), self.max_keys
        orgs: dict[str, uuid.UUID | None] = {}
        utc = dt.timezone.utc
        times: dict[int, dt.datetime] = {}  # epoch second -> its datetime (a batch's events share a few seconds)
        for ev in batch:
            org_id = ev.org_id
            if org_id in orgs:
                org = orgs[org_id]
            else:
                org = orgs[org_id] = _org_uuid(org_id)
            if org is None:
                continue
            ts = ev.request_created_at
            seconds, nanos = ts.seconds, ts.nanos
            base = times.get(seconds)
            if base is None:
                base = times[seconds] = _second_datetime(ts)
            # what Timestamp.ToDatetime gives (nanos rounded toward zero to microseconds); it raises for invalid ones
            at = base.replace(microsecond=nanos // 1000) if 0 <= nanos < 1_000_000_000 else ts.ToDatetime(tzinfo=utc)
            user = ev.user_id
            if user and _unstorable(user):
                invalid += 1
                user = ""
            if user:
                key = (org, user)
                old = users.get(key)
                if old is not None:
                    if at < old[0] or at > old[1]:
                        users[key] = (min(old[0], at), max(old[1], at))
                elif size < limit:
                    users[key] = (at, at)
                    size += 1
                else:
                    dropped += 1
            session = ev.session_id
            if session and _unstorable(session):
                invalid += 1
                session = ""
            if session:
                key = (org, session)
                old = sessions.get(key)
                name = ev.session_name
                if "\x00" in name:
                    name = name.replace("\x00", "")
                if old is not None:
                    renamed = name and (old[3] is None or at >= old[3])  # the newest request's name wins
                    if at < old[0] or at > old[1] or (renamed and (name != old[2] or at != old[3])):
                        sessions[key] = (min(old[0], at), max(old[1], at), *((name, at) if renamed else old[2:]))
                elif size < limit:
                    sessions[key] = (at, at, name, at if name else None)
                    size += 1
                else:
                    dropped += 1
            for prop in ev.properties:
                if _unstorable(prop):
                    invalid += 1
                    continue
                key = (org, prop)
                old = props.get(key)
                if old is not None:
                    if at < old:
                        props[key] = at
                elif size < limit:
                    props[key] = at
                    size += 1
                else:
                    dropped += 1
        if invalid:
            self.m_dropped.labels("invalid").inc(invalid)
        if dropped:
            self.m_dropped.labels("full").inc(dropped)
            if not self._full:  # once per episode; the counter has the numbers
                log.warning("pending Postgres metadata is full (%d keys): new users, sessions and property keys "
                            "are dropped until Postgres answers", self.max_keys)
            self._full = True
        self._changed()

    def _has_room(self, table: dict, key: UserKey) -> bool:
        return key in table or len(self) < self.max_keys

    def _merge_user(self, key: UserKey, lo: dt.datetime, hi: dt.datetime) -> bool:
        if not self._has_room(self.users, key):
            return False
        old = self.users.get(key)
        self.users[key] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        return True

    def _merge_session(self, key: UserKey, lo: dt.datetime, hi: dt.datetime, name: str, name_at: dt.datetime | None,
                       *, newer: bool = True) -> bool:
        """The name of the newer request wins. Of two requests made at one instant, the one merged later:
        `newer`, `name` was (a later batch), else the pending one was (a failed flush's keys put back)."""
        if not self._has_room(self.sessions, key):
            return False
        old = self.sessions.get(key)
        if old is None:
            self.sessions[key] = (lo, hi, name, name_at)
        else:
            renamed = name_at is not None and (old[3] is None or name_at > old[3] or (newer and name_at == old[3]))
            self.sessions[key] = (min(old[0], lo), max(old[1], hi), *((name, name_at) if renamed else old[2:]))
        return True

    def _merge_prop(self, key: UserKey, at: dt.datetime) -> bool:
        if not self._has_room(self.props, key):
            return False
        old = self.props.get(key)
        self.props[key] = at if old is None else min(old, at)
        return True

    def _changed(self) -> None:
        self.m_pending.set(len(self))
        self._wake.set()

    def _take(self, limit: int) -> tuple[dict, dict, dict]:
        taken = []
        for table in (self.users, self.sessions, self.props):
            keys = list(itertools.islice(table, limit))
            limit -= len(keys)
            taken.append({k: table.pop(k) for k in keys})
        self._in_flight = sum(map(len, taken))
        return taken[0], taken[1], taken[2]

    def _put_back(self, users: dict, sessions: dict, props: dict) -> None:
        """Returns a failed flush's keys; what was merged meanwhile is newer."""
        self._in_flight = 0
        for key, (lo, hi) in users.items():
            self._merge_user(key, lo, hi)
        for key, (lo, hi, name, name_at) in sessions.items():
            self._merge_session(key, lo, hi, name, name_at, newer=False)
        for key, at in props.items():
            self._merge_prop(key, at)
        self.m_pending.set(len(self))

    # ---- Postgres --------------------------------------------------------------------
    async def flush(self) -> bool:
        """Writes everything pending, FLUSH_CHUNK keys per transaction. Returns False (with the
        unwritten keys still pending) when Postgres is not connected or a write failed."""
        while len(self):
            if self.pool is None:
                return False
            users, sessions, props = self._take(FLUSH_CHUNK)
            try:
                await _upsert(self.pool, users, sessions, props)
            except asyncio.CancelledError:
                self._put_back(users, sessions, props)
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres unreachable: keep it pending
                self._put_back(users, sessions, props)
                raise_if_cancelling(exc)
                self.m_failures.inc()
                # warn once per outage, not on every retry
                log.log(logging.DEBUG if self._failing else logging.WARNING, "metadata upsert failed (%s: %s); %d keys pending",
                        exc.__class__.__name__, exc, len(self))
                self._failing = True
                return False
            if self._failing:
                log.info("metadata upserts work again")
                self._failing = False
            self._in_flight = 0
            self._full = False
            self.m_pending.set(len(self))
        return True

    async def run(self) -> None:
        """Flushes whenever something is pending, retrying with backoff while Postgres is away."""
        backoff = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self.flush():
                backoff = 0.2
            elif self.pool is not None:  # a write failed: try again after a pause; batches keep merging
                await asyncio.sleep(backoff * (1 + random.random() / 4))
                backoff = min(backoff * 2, self.retry_max_backoff)
                self._wake.set()
            # not connected yet: attach() wakes this loop

    def attach(self, pool) -> None:
        """Ingest has connected to Postgres: write what has been waiting."""
        self.pool = pool
        self._wake.set()

    async def close(self, timeout: float) -> None:
        """Best-effort last flush at shutdown, bounded by `timeout`; what cannot be written is counted."""
        if len(self):
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(self.flush(), timeout)
        if len(self):
            self.m_dropped.labels("stopped").inc(len(self))
            log.warning("stopping with %d metadata keys not written to Postgres (unreachable)", len(self))


async def _upsert(pool, users: dict, sessions: dict, props: dict) -> None:
    # Rows in key order: two workers upserting shared keys (a popular property key) each in the order its
    # events came in held a row the other wanted next, and Postgres aborted one of them (a deadlock).
    users, sessions, props = (dict(sorted(table.items())) for table in (users, sessions, props))
    async with pool.acquire() as conn:
        async with conn.transaction():
            if users:
                await conn.executemany(
                    """INSERT INTO request_users(org_id, user_id, first_seen, last_seen) VALUES ($1,$2,$3,$4)
                       ON CONFLICT (org_id, user_id) DO UPDATE SET
                         first_seen = least(request_users.first_seen, excluded.first_seen),
                         last_seen = greatest(request_users.last_seen, excluded.last_seen)""",
                    [(o, u, lo, hi) for (o, u), (lo, hi) in users.items()],
                )
            if sessions:
                await conn.executemany(
                    # the newer request's name wins (every SET reads the row as it was)
                    """INSERT INTO request_sessions(org_id, session_id, session_name, first_seen, last_seen, name_at)
                       VALUES ($1,$2,$3,$4,$5,$6)
                       ON CONFLICT (org_id, session_id) DO UPDATE SET
                         session_name = CASE WHEN excluded.name_at >= request_sessions.name_at
                                              OR (excluded.name_at IS NOT NULL AND request_sessions.name_at IS NULL)
                                             THEN excluded.session_name ELSE request_sessions.session_name END,
                         name_at = CASE WHEN excluded.name_at >= request_sessions.name_at
                                         OR (excluded.name_at IS NOT NULL AND request_sessions.name_at IS NULL)
                                        THEN excluded.name_at ELSE request_sessions.name_at END,
                         first_seen = least(request_sessions.first_seen, excluded.first_seen),
                         last_seen = greatest(request_sessions.last_seen, excluded.last_seen)""",
                    [(o, s, name, lo, hi, name_at) for (o, s), (lo, hi, name, name_at) in sessions.items()],
                )
            if props:
                await conn.executemany(
                    """INSERT INTO property_keys(org_id, key, first_seen) VALUES ($1,$2,$3)
                       ON CONFLICT (org_id, key) DO UPDATE SET first_seen = least(property_keys.first_seen, excluded.first_seen)""",
                    [(o, k, at) for (o, k), at in props.items()],
                )


def _second_datetime(ts) -> dt.datetime:
    """The UTC datetime of a Timestamp's whole second (Timestamp.ToDatetime's checks and errors)."""
    if ts.nanos:
        return ts.ToDatetime(tzinfo=dt.timezone.utc).replace(microsecond=0)
    return ts.ToDatetime(tzinfo=dt.timezone.utc)


def _org_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
