import asyncio
import datetime as dt
import json
import time
import uuid

import pytest
from helicone_core import db, events
from helicone_core.analytics import ChdbStore
from helicone_core.bodies import LocalBodyStore
from helicone_core.metrics import ServiceMetrics
from helicone_ingest import writer as writer_module
from helicone_ingest.metadata import PendingMetadata
from helicone_ingest.writer import BatchWriter
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fault_proxy import postgres_proxy

ORG = str(uuid.uuid4())
OTHER_ORG = str(uuid.uuid4())


def event(*, org=ORG, at: dt.datetime | None = None, body: bytes = b'{"ok":true}', **kw) -> events.RequestLogged:
    fields = dict(
        schema_version=1, request_id=events.new_request_id(), org_id=org, status=200, provider="openai",
        model="gpt-4o-mini", user_id="alice", session_id="s1", session_name="Planner", properties={"env": "prod"},
        usage=events.Usage(prompt_tokens=3, completion_tokens=6, total_tokens=9, known=True), cost_usd=4.05e-6, cost_known=True,
        inline=events.InlineBodies(request_body=b'{"model":"gpt-4o-mini"}', response_body=body,
                                   request_content_type="application/json", response_content_type="application/json"),
        source="gateway",
    )
    ev = events.RequestLogged(**(fields | kw))
    at = at or dt.datetime.now(dt.timezone.utc)
    events.set_time(ev.request_created_at, at)
    events.set_time(ev.response_created_at, at)
    return ev


def new_writer(analytics, bodies, pool, metrics: ServiceMetrics | None = None, webhooks=None) -> BatchWriter:
    metrics = metrics or ServiceMetrics("ingest")
    metadata = PendingMetadata(metrics, retry_max_backoff=0.2)
    metadata.attach(pool)
    return BatchWriter(analytics, bodies, metadata, metrics, webhooks=webhooks)


@pytest.fixture
async def writer(tmp_path, pg_pool):
    analytics = ChdbStore(tmp_path / "chdb", "helicone")
    await analytics.init_schema()
    bodies = LocalBodyStore(tmp_path / "bodies")
    await bodies.start()
    await pg_pool.execute("INSERT INTO orgs(id, name) VALUES ($1, 'acme')", uuid.UUID(ORG))
    yield new_writer(analytics, bodies, pg_pool), analytics, bodies, pg_pool
    await analytics.close()


async def logged(analytics, bodies, org: str, rid: str) -> list[dict]:
    """What the api reads for (org, request id): the FINAL rows, each with its bodies."""
    rows = await analytics.query(
        "SELECT model, request_body_key, response_body_key FROM {db}.request_log FINAL "
        "WHERE org_id = {org:String} AND request_id = {rid:UUID}", {"org": org, "rid": rid})
    return [{"model": r["model"], "request_body": await bodies.get(r["request_body_key"]),
             "response_body": await bodies.get(r["response_body_key"])} for r in rows]


async def count(analytics, rid=None) -> int:
    sql = "SELECT count() AS n FROM {db}.request_log FINAL" + (" WHERE request_id = {rid:UUID}" if rid else "")
    rows = await analytics.query(sql + " SETTINGS output_format_json_quote_64bit_integers=0", {"rid": rid} if rid else None)
    return rows[0]["n"]


async def test_batch_is_written_to_all_three_stores(writer):
    w, analytics, bodies, pool = writer
    evs = [event(), event()]
    good, bad = w.decode([events.encode(e) for e in evs])
    assert bad == [] and len(good) == 2
    await w.write(good)
    assert await w.metadata.flush()
    assert await count(analytics) == 2
    [first] = await logged(analytics, bodies, ORG, evs[0].request_id)
    assert json.loads(first["request_body"]) == {"model": "gpt-4o-mini"}
    assert first["response_body"] == b'{"ok":true}'
    user = await pool.fetchrow("SELECT * FROM request_users")
    assert user["user_id"] == "alice"
    assert (await pool.fetchrow("SELECT * FROM request_sessions"))["session_name"] == "Planner"
    assert [r["key"] for r in await pool.fetch("SELECT key FROM property_keys")] == ["env"]


async def test_replayed_events_do_not_double_count(writer):
    w, analytics, _, pool = writer
    ev = event()
    raw = events.encode(ev)
    good, _ = w.decode([raw, raw])  # duplicate within a batch
    assert len(good) == 1
    await w.write(good)
    good, _ = w.decode([raw])  # and replayed in a later batch
    await w.write(good)
    assert await w.metadata.flush()
    assert await count(analytics, ev.request_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM request_users") == 1


async def test_an_event_already_past_the_retention_stores_neither_its_row_nor_its_bodies(tmp_path):
    """An event whose request is older than HELICONE_RETENTION_DAYS (an async-log backfill, a backlog in Kafka)
    had its row written, shown until ClickHouse's next TTL merge, and its bodies stored for the whole retention
    from then on: prompts and answers of a request that is gone, kept for another 30 days."""
    analytics = ChdbStore(tmp_path / "chdb", "helicone", retention_days=30)
    await analytics.init_schema()
    bodies = LocalBodyStore(tmp_path / "bodies")
    await bodies.start()
    metrics = ServiceMetrics("ingest")
    w = BatchWriter(analytics, bodies, PendingMetadata(metrics), metrics, retention_days=30)
    now = dt.datetime.now(dt.timezone.utc)
    gone = event(at=now - dt.timedelta(days=30, minutes=1), body=b'{"secret":"gone"}')
    kept = event(at=now - dt.timedelta(days=29, hours=23), body=b'{"secret":"kept"}')
    try:
        good, bad = w.decode([events.encode(gone), events.encode(kept)])
        assert bad == [] and [ev.request_id for ev in good] == [kept.request_id]
        await w.write(good)
        assert await count(analytics) == 1 and await count(analytics, kept.request_id) == 1
        stored = b"".join(p.read_bytes() for p in (tmp_path / "bodies").rglob("*") if p.is_file())
        assert b"kept" in stored and b"gone" not in stored
        assert metrics.registry.get_sample_value("helicone_ingest_events_total", {"result": "expired"}) == 1
    finally:
        await analytics.close()


async def test_undecodable_events_are_rejected_with_reasons(writer):
    w, analytics, _, _ = writer
    bad_version = event()
    bad_version.schema_version = 99
    good, bad = w.decode([b"garbage\xff", events.encode(bad_version), events.encode(event())])
    assert len(good) == 1
    assert len(bad) == 2 and "schema_version" in bad[1].reason
    assert bad[0].raw == b"garbage\xff"


async def test_a_failing_store_raises_so_the_batch_is_retried(writer):
    w, analytics, bodies, _ = writer

    class Broken:
        async def insert_values(self, *a):
            raise ConnectionError("clickhouse down")

    w.analytics = Broken()
    good, _ = w.decode([events.encode(event())])
    with pytest.raises(ConnectionError):
        await w.write(good)
    w.analytics = analytics
    await w.write(good)  # the retry succeeds and the row is there once
    assert await count(analytics) == 1


async def test_the_same_request_id_from_two_orgs_in_one_batch_keeps_both(writer):
    w, analytics, bodies, _ = writer
    rid = events.new_request_id()
    mine = event(request_id=rid, model="mine", body=b'{"org":"mine"}')
    theirs = event(org=OTHER_ORG, request_id=rid, model="theirs", body=b'{"org":"theirs"}')
    good, _ = w.decode([events.encode(mine), events.encode(theirs)])
    assert len(good) == 2
    await w.write(good)
    assert [(r["model"], r["response_body"]) for r in await logged(analytics, bodies, ORG, rid)] == [
        ("mine", b'{"org":"mine"}')]
    assert [(r["model"], r["response_body"]) for r in await logged(analytics, bodies, OTHER_ORG, rid)] == [
        ("theirs", b'{"org":"theirs"}')]


async def test_a_reused_request_id_is_replaced_by_the_newest_request(writer):
    w, analytics, bodies, _ = writer
    rid = events.new_request_id()
    t0 = dt.datetime(2026, 1, 31, 23, 59, tzinfo=dt.timezone.utc)
    older = event(request_id=rid, at=t0, model="older", body=b'{"answer":"older"}')
    newer = event(request_id=rid, at=t0 + dt.timedelta(days=3), model="newer", body=b'{"answer":"newer"}')
    newest = event(request_id=rid, at=t0 + dt.timedelta(days=40), model="newest", body=b'{"answer":"newest"}')

    for batch in ([older], [newer]):
        await w.write(w.decode([events.encode(e) for e in batch])[0])
    assert await logged(analytics, bodies, ORG, rid) == [
        {"model": "newer", "request_body": b'{"model":"gpt-4o-mini"}', "response_body": b'{"answer":"newer"}'}]

    # the newest request arrives in one batch with a late replay of an older one after it
    good, _ = w.decode([events.encode(newest), events.encode(older)])
    assert [e.model for e in good] == ["newest"]
    await w.write(good)
    # and the older ones are replayed once more, on their own
    await w.write(w.decode([events.encode(older), events.encode(newer)])[0])
    assert [(r["model"], r["response_body"]) for r in await logged(analytics, bodies, ORG, rid)] == [
        ("newest", b'{"answer":"newest"}')]


async def test_request_ids_in_another_case_or_notation_are_one_request(writer):
    """The UUID column stores one form, so "ABC..." and "{abc...}" are the request "abc...": a batch
    keeps only the newest of them, stored in the canonical form (ClickHouse cannot read "{...}": such
    an event used to fail its batch's insert on every retry)."""
    w, analytics, bodies, _ = writer
    rid = events.new_request_id()
    t0 = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)
    forms = [event(request_id=rid.upper(), at=t0, model="upper"),
             event(request_id="{" + rid.replace("-", "") + "}", at=t0 + dt.timedelta(seconds=2), model="braces"),
             event(request_id=rid, at=t0 + dt.timedelta(seconds=1), model="canonical")]
    good, bad = w.decode([events.encode(e) for e in forms])
    assert not bad and [e.model for e in good] == ["braces"]
    await w.write(good)
    assert [r["model"] for r in await logged(analytics, bodies, ORG, rid)] == ["braces"]
    assert await count(analytics, rid) == 1


async def test_rows_and_bodies_are_written_while_postgres_is_down(tmp_path, fresh_db_dsn, pg_pool):
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    pool = await db.connect_pool(dsn, max_size=2)
    analytics = ChdbStore(tmp_path / "chdb", "helicone")
    await analytics.init_schema()
    bodies = LocalBodyStore(tmp_path / "bodies")
    await bodies.start()
    metrics = ServiceMetrics("ingest")
    w = new_writer(analytics, bodies, pool, metrics)
    flusher = asyncio.create_task(w.metadata.run())
    try:
        proxy.cut()
        evs = [event(user_id=f"user-{i}", session_id="s-outage", properties={f"k{i % 3}": "v"}) for i in range(30)]
        started = time.monotonic()
        for i in range(0, 30, 10):
            good, _ = w.decode([events.encode(e) for e in evs[i:i + 10]])
            await asyncio.wait_for(w.write(good), 5)
        assert time.monotonic() - started < 5
        assert await count(analytics) == 30
        assert (await logged(analytics, bodies, ORG, evs[7].request_id))[0]["response_body"] == b'{"ok":true}'
        await asyncio.sleep(0.5)  # the flusher has tried (and failed) meanwhile
        assert metrics.registry.get_sample_value("helicone_ingest_metadata_flush_failures_total") >= 1
        # users + the session + property keys, merged
        assert metrics.registry.get_sample_value("helicone_ingest_metadata_pending_keys") == 30 + 1 + 3
        assert await pg_pool.fetchval("SELECT count(*) FROM request_users") == 0

        proxy.restore()
        for _ in range(100):
            if await pg_pool.fetchval("SELECT count(*) FROM request_users") == 30 and not len(w.metadata):
                break
            await asyncio.sleep(0.05)
        assert await pg_pool.fetchval("SELECT count(*) FROM request_users") == 30
        assert await pg_pool.fetchval("SELECT count(*) FROM property_keys") == 3
        assert await pg_pool.fetchval("SELECT count(*) FROM request_sessions") == 1
        assert metrics.registry.get_sample_value("helicone_ingest_metadata_pending_keys") == 0
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await pool.close()
        await proxy.stop()
        await analytics.close()


async def test_pending_metadata_is_bounded_by_distinct_keys():
    metrics = ServiceMetrics("ingest")
    pending = PendingMetadata(metrics, max_keys=3)  # never attached: Postgres is away
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    pending.add([event(user_id=f"u{i}", session_id="", properties={}, at=t0) for i in range(5)])
    assert len(pending) == 3
    assert metrics.registry.get_sample_value("helicone_ingest_metadata_dropped_keys_total", {"reason": "full"}) == 2
    # keys already pending keep being updated past the bound
    pending.add([event(user_id="u0", session_id="", properties={}, at=t0 + dt.timedelta(hours=1))])
    assert pending.users[(uuid.UUID(ORG), "u0")] == (t0, t0 + dt.timedelta(hours=1))
    assert metrics.registry.get_sample_value("helicone_ingest_metadata_dropped_keys_total", {"reason": "full"}) == 2
    assert not await pending.flush()  # nothing to write to yet: it all stays
    await pending.close(timeout=0.1)
    assert metrics.registry.get_sample_value("helicone_ingest_metadata_dropped_keys_total", {"reason": "stopped"}) == 3


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.sampled_from([ORG, OTHER_ORG, "not-a-uuid"]), st.sampled_from(["", "u1", "u2"]),
                                           st.sampled_from(["", "s1", "s2"]), st.sampled_from(["", "Plan", "Act"]),
                                           st.sets(st.sampled_from(["env", "team", "x"])), st.integers(0, 5)),
                                 max_size=8), max_size=4),
       max_keys=st.integers(0, 8))
def test_pending_metadata_merges_a_batch_as_the_merge_rules_say(batches, max_keys):
    """add() inlines the merges for speed: its aggregate equals the one _merge_user, _merge_session
    and _merge_prop build event by event (first/last seen, the newest request's non-empty session name, the
    bound on distinct keys and the drop count)."""
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    metrics = ServiceMetrics("ingest")
    fast, reference = PendingMetadata(metrics, max_keys=max_keys), PendingMetadata(ServiceMetrics("ingest"), max_keys=max_keys)
    dropped = 0
    for batch in batches:
        evs = [event(org=org, user_id=user, session_id=session, session_name=name, properties=dict.fromkeys(props, "v"),
                     at=t0 + dt.timedelta(minutes=minute)) for org, user, session, name, props, minute in batch]
        fast.add(evs)
        for ev in evs:
            try:
                org = uuid.UUID(ev.org_id)
            except ValueError:
                continue
            at = ev.request_created_at.ToDatetime(tzinfo=dt.timezone.utc)
            if ev.user_id:
                dropped += not reference._merge_user((org, ev.user_id), at, at)
            if ev.session_id:
                dropped += not reference._merge_session((org, ev.session_id), at, at, ev.session_name,
                                                        at if ev.session_name else None)
            for key in ev.properties:
                dropped += not reference._merge_prop((org, key), at)
    assert (fast.users, fast.sessions, fast.props) == (reference.users, reference.sessions, reference.props)
    assert (metrics.registry.get_sample_value("helicone_ingest_metadata_dropped_keys_total", {"reason": "full"}) or 0) == dropped


async def test_a_batch_is_prepared_a_step_at_a_time_with_the_event_loop_running_between_steps(writer, monkeypatch):
    w, analytics, bodies, _ = writer
    monkeypatch.setattr(writer_module, "PREPARE_STEP", 3)
    evs = [event(org=ORG if i % 2 else OTHER_ORG, body=b'{"n":%d}' % i) for i in range(8)]
    turns = 0

    async def ticker():
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = turns
    prepared = await w.prepare_in_steps(evs)
    ticking.cancel()
    assert turns - before >= 2  # three steps, and the loop ran between them
    steps = [w.prepare(evs[i:i + 3]) for i in range(0, len(evs), 3)]
    assert prepared.events == evs
    assert prepared.rows == [row for step in steps for row in step.rows]
    assert prepared.packs == [pack for step in steps for pack in step.packs]
    assert len(prepared.packs) == 6  # one per org and step
    await w.write(prepared)
    for i, ev in enumerate(evs):
        assert await logged(analytics, bodies, ev.org_id, ev.request_id) == [
            {"model": "gpt-4o-mini", "request_body": b'{"model":"gpt-4o-mini"}', "response_body": b'{"n":%d}' % i}]


async def test_a_failure_after_the_rows_are_in_neither_rewrites_the_batch_nor_holds_the_next_turn(writer, monkeypatch):
    w, analytics, bodies, _ = writer
    from helicone_ingest.batches import Turns

    def broken_add(batch):
        raise ValueError("Timestamp is not valid")

    monkeypatch.setattr(w.metadata, "add", broken_add)
    turns = Turns()
    first, second = turns.next(), turns.next()
    ev = event()
    await asyncio.wait_for(w.write(w.prepare([ev]), first), 10)  # does not raise: the caller would write it again
    await asyncio.wait_for(second.wait(), 1)
    assert await count(analytics, ev.request_id) == 1
    assert w.m_write_errors.labels("accounting")._value.get() == 1


async def test_a_metadata_key_postgres_refuses_does_not_hold_every_other_key(pg_pool):
    """A user id, session id or name with a NUL character (valid in a protobuf string, and the api's
    async-log `meta` or an OTLP attribute carry one as "\\u0000") is refused by Postgres' TEXT: the
    chunk it is in must not fail on every flush, keeping other orgs' users, sessions and property
    keys out of Postgres until ingest stops (and then dropped)."""
    metrics = ServiceMetrics("ingest")
    pending = PendingMetadata(metrics)
    pending.attach(pg_pool)
    pending.add([event(org=OTHER_ORG, user_id="eve\x00", session_id="s\x00", session_name="n\x00", properties={"k\x00": "v"}),
                 event(user_id="bob", session_id="s-bob", session_name="Named\x00", properties={"team": "x"})])
    assert await pending.flush()
    assert not len(pending)
    assert [r["user_id"] for r in await pg_pool.fetch("SELECT user_id FROM request_users")] == ["bob"]
    assert [r["key"] for r in await pg_pool.fetch("SELECT key FROM property_keys")] == ["team"]
    assert [(r["session_id"], r["session_name"]) for r in await pg_pool.fetch("SELECT * FROM request_sessions")] == [
        ("s-bob", "Named")]


async def test_two_workers_upserting_the_same_keys_in_another_order_do_not_deadlock(pg_pool, fresh_db_dsn):
    """Two ingest workers (two partitions' events) flush the same users, sessions and property keys
    (a popular property key is in every worker's pending set), each in the order its events came in.
    Upserted in those orders, the two transactions each held a row the other wanted next: Postgres
    aborted one with a deadlock, and its whole chunk waited for the retry (a warning and a flush
    failure each time, under load again and again). The rows go in one order whatever the events' order."""
    import asyncpg

    users = [f"u{i:03d}" for i in range(200)]
    workers = []
    for order in (users, users[::-1]):
        pending = PendingMetadata(ServiceMetrics("ingest"))
        pending.attach(pg_pool)
        pending.add([event(user_id=u, session_id="", properties={}) for u in order])
        workers.append(pending)
    blocker, watcher = await asyncpg.connect(fresh_db_dsn), await asyncpg.connect(fresh_db_dsn)
    try:
        # a third transaction holds the middle key, so that both flushes are under way when it lets go
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("INSERT INTO request_users VALUES ($1, 'u100', now(), now())", uuid.UUID(ORG))
        flushes = [asyncio.create_task(w.flush()) for w in workers]
        deadline = time.monotonic() + 30
        while await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                     "AND datname = current_database()") < 2:
            assert time.monotonic() < deadline, "the two flushes never both waited"
            await asyncio.sleep(0.05)
        await tx.rollback()
        assert await asyncio.wait_for(asyncio.gather(*flushes), 30) == [True, True]
    finally:
        await blocker.close()
        await watcher.close()
    assert [w.m_failures._value.get() for w in workers] == [0, 0]
    assert await pg_pool.fetchval("SELECT count(*) FROM request_users") == len(users)


async def test_a_session_keeps_the_name_of_its_newest_request_whatever_order_events_arrive_in(pg_pool):
    """A session renamed between two requests: the directory keeps the newer request's name (what the
    api's sessions answer from ClickHouse, argMaxIf(session_name, request_created_at)), also when the
    older request is written after it (another partition's worker behind, or a replay after a rewind),
    whether both are pending together or the newer one is in Postgres already."""
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    old = event(session_id="s-renamed", session_name="Old", at=t0)
    new = event(session_id="s-renamed", session_name="New", at=t0 + dt.timedelta(minutes=5))
    for together in (True, False):
        await pg_pool.execute("DELETE FROM request_sessions")
        pending = PendingMetadata(ServiceMetrics("ingest"))
        pending.attach(pg_pool)
        pending.add([new])
        if not together:
            assert await pending.flush()
        pending.add([old])
        assert await pending.flush()
        assert await pg_pool.fetchval("SELECT session_name FROM request_sessions") == "New", f"together={together}"


async def test_values_past_a_column_range_are_not_wrapped_around(writer):
    """latency_ms (int64 in the event) goes into UInt32 and fallback_index (int32) into UInt16: a value
    past the column's range is kept at the column's largest value, never wrapped to a small one
    (2**32 + 5 ms read as 5 ms, the 65,538th fallback as the 2nd)."""
    w, analytics, _, _ = writer
    ev = event(latency_ms=2**32 + 5, fallback_index=2**16 + 2)
    await w.write(w.decode([events.encode(ev)])[0])
    [row] = await analytics.query(
        "SELECT latency_ms, fallback_index FROM {db}.request_log WHERE request_id = {rid:UUID}", {"rid": ev.request_id})
    assert (row["latency_ms"], row["fallback_index"]) == (2**32 - 1, 2**16 - 1)


class RefusingOneRow:
    """A real chDB store given one row with a value ClickHouse cannot read (-1 in request_bytes, a UInt64 column), as
    an event a future producer or a missed clamp could make: ClickHouse refuses the insert of any batch holding it."""

    def __init__(self, store: ChdbStore, request_id: str) -> None:
        self.store, self.request_id, self.inserts = store, request_id, 0

    async def insert_values(self, table, names, rows):
        self.inserts += 1
        rid, size = names.index("request_id"), names.index("request_bytes")
        rows = [[*r[:size], -1, *r[size + 1:]] if r[rid] == self.request_id else r for r in rows]
        await self.store.insert_values(table, names, rows)


async def test_a_row_clickhouse_refuses_is_handed_back_to_dead_letter_and_the_rest_of_its_batch_is_written(writer):
    """Retried, a batch holding a row ClickHouse refuses would fail for ever, and its partition with it: the writer
    inserts the batch in halves down to the refused row, writes every other event (rows, metadata, usage), and hands
    the refused event back, as its record (value and key), with ClickHouse's reason, for ingest to dead-letter."""
    w, analytics, _, pool = writer
    evs = [event(user_id=f"user-{i}") for i in range(9)]
    bad = evs[4]
    w.analytics = RefusingOneRow(analytics, bad.request_id)
    good, _ = w.decode([events.encode(e) for e in evs])
    [rejected] = await asyncio.wait_for(w.write(good), 30)
    assert (events.decode(rejected.raw), rejected.key) == (bad, events.message_key(bad))
    assert "ClickHouse refused its row" in rejected.reason and "CANNOT_PARSE_NUMBER" in rejected.reason
    assert await count(analytics) == 8 and await count(analytics, bad.request_id) == 0
    assert w.analytics.inserts <= 1 + 2 * 4  # the whole batch, then two halves per level (9 rows: 4 levels)
    assert await w.metadata.flush()
    assert sorted(r["user_id"] for r in await pool.fetch("SELECT user_id FROM request_users")) == sorted(
        f"user-{i}" for i in range(9) if i != 4)
    assert w.m_tokens.labels("openai", "gpt-4o-mini", "prompt")._value.get() == 8 * 3  # the refused one not counted


async def test_a_store_that_is_down_still_fails_the_write_for_the_caller_to_retry(writer):
    """Only a refusal for the rows' values is handed back: ClickHouse unreachable (or any other failure) fails the
    write as before, and no event is dead-lettered."""
    w, analytics, _, _ = writer

    class Down:
        inserts = 0

        async def insert_values(self, *a):
            Down.inserts += 1
            raise ConnectionError("clickhouse down")

    w.analytics = Down()
    good, _ = w.decode([events.encode(event()) for _ in range(4)])
    with pytest.raises(ConnectionError):
        await w.write(good)
    assert Down.inserts == 1  # not split: every half would fail the same way


@pytest.mark.parametrize("year", [1, 1899, 2300, 2600, 9999])
async def test_a_request_time_outside_the_log_stores_range_is_rejected_not_written_wrong(writer, year):
    """ClickHouse's DateTime64 keeps 1900 to 2299, and a row's version (the request time in ns, a UInt64) passes 2**64
    after 2554, where ClickHouse wraps it round: such an event, which any producer of the topic can send (the api
    refuses those times), was written with a version that no longer says which request is newest. It is rejected, with
    the field and the range in the reason, for ingest to dead-letter as it came."""
    w, analytics, _, _ = writer
    far = event(at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    far.request_created_at.seconds = int(dt.datetime(year, 6, 1, tzinfo=dt.timezone.utc).timestamp())
    good, bad = w.decode([events.encode(far)])
    assert good == []
    [rejected] = bad
    assert rejected.raw == events.encode(far)
    assert "request_created_at" in rejected.reason and "1900-01-01" in rejected.reason and "2299-12-31" in rejected.reason


async def test_the_edges_of_the_log_stores_range_are_written(writer):
    w, analytics, _, _ = writer
    first = event(at=dt.datetime(1900, 1, 1, tzinfo=dt.timezone.utc))
    last = event(at=dt.datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=dt.timezone.utc))
    good, bad = w.decode([events.encode(first), events.encode(last)])
    assert bad == []
    await w.write(good)
    assert await count(analytics) == 2
