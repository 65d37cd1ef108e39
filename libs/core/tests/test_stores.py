import asyncio
import datetime as dt
from pathlib import Path

import pytest
from helicone_core import analytics, events
from helicone_core.analytics import ChdbStore, make_analytics_store
from helicone_core.bodies import LocalBodyStore, body_ref, split_ref
from helicone_core.settings import CommonSettings


async def test_local_body_store_roundtrip_and_key_safety(tmp_path):
    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("orgs/o/requests/r/request", b'{"a":1}', "application/json")
    assert await store.get("orgs/o/requests/r/request") == b'{"a":1}'
    assert await store.get("orgs/o/requests/missing") is None
    assert await store.ping()
    with pytest.raises(ValueError):
        await store.put("../escape", b"x", "text/plain")
    with pytest.raises(ValueError):
        await store.get("orgs/../../etc/passwd")


async def test_local_body_store_reads_a_body_inside_a_pack_by_its_byte_range(tmp_path):
    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("orgs/o/packs/p1", b'{"req":1}{"resp":1}', "application/octet-stream")
    assert await store.get(body_ref("orgs/o/packs/p1", 9, 10)) == b'{"resp":1}'
    assert await store.get(body_ref("orgs/o/packs/p1", 0, 0)) == b""
    assert await store.get(body_ref("orgs/o/packs/missing", 0, 3)) is None
    assert split_ref("orgs/o/requests/r/1/request") == ("orgs/o/requests/r/1/request", None, None)
    for bad in ("orgs/o/packs/p1#9", "orgs/o/packs/p1#-1+3", "orgs/o/packs/p1#a+b", "../x#0+1"):
        with pytest.raises(ValueError, match="body"):
            await store.get(bad)


async def test_local_body_store_names_a_body_its_pack_holds_only_part_of(tmp_path):
    """A pack file shorter than its rows' ranges (cut by a power loss: the local store does not fsync) gave the
    bytes that were there, a cut body answered as if whole and an empty one as no body at all."""
    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("orgs/o/packs/p1", b'{"req":1}{"re', "application/octet-stream")
    assert await store.get(body_ref("orgs/o/packs/p1", 0, 9)) == b'{"req":1}'
    with pytest.raises(Exception, match="^the stored body is cut short: 4 of its 10 bytes are in the body store$"):
        await store.get(body_ref("orgs/o/packs/p1", 9, 10))
    with pytest.raises(Exception, match="^the stored body is cut short: 0 of its 5 bytes are in the body store$"):
        await store.get(body_ref("orgs/o/packs/p1", 20, 5))


async def test_local_body_store_refuses_to_read_a_body_larger_than_any_log_holds(tmp_path):
    """A body file of any size was read whole into memory (a producer's `location` body of gigabytes)."""
    from helicone_core.kafka import MAX_RECORD_BYTES

    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("orgs/o/requests/r/1/request", b"x" * MAX_RECORD_BYTES, "text/plain")
    await store.put("orgs/o/requests/r/1/response", b"x" * (MAX_RECORD_BYTES + 1), "text/plain")
    assert len(await store.get("orgs/o/requests/r/1/request")) == MAX_RECORD_BYTES
    too_large = f"^the stored body is {MAX_RECORD_BYTES + 1} bytes, more than the {MAX_RECORD_BYTES} an answer holds$"
    with pytest.raises(Exception, match=too_large):
        await store.get("orgs/o/requests/r/1/response")
    with pytest.raises(Exception, match=too_large):  # a range of a pack: refused before a byte is read
        await store.get(body_ref("orgs/o/requests/r/1/response", 0, MAX_RECORD_BYTES + 1))


async def test_local_body_store_sweep_deletes_bodies_past_the_retention_and_keeps_newer(tmp_path):
    import os
    import time

    store = LocalBodyStore(tmp_path / "bodies")
    await store.start()
    await store.put("orgs/o/packs/old", b"old", "application/octet-stream")
    await store.put("orgs/o/requests/r/1/request", b"old", "application/json")  # a body of before the packs
    await store.put("orgs/o/packs/new", b"new", "application/octet-stream")
    forty_days_ago = time.time() - 40 * 86400
    for key in ("orgs/o/packs/old", "orgs/o/requests/r/1/request"):
        os.utime(tmp_path / "bodies" / key, (forty_days_ago, forty_days_ago))
    assert await store.sweep(30 * 86400) == 2
    assert await store.get("orgs/o/packs/old") is None and await store.get("orgs/o/requests/r/1/request") is None
    assert await store.get("orgs/o/packs/new") == b"new"
    # the directories it emptied go too; those still in use stay
    assert not (tmp_path / "bodies" / "orgs/o/requests").exists()
    os.utime(tmp_path / "bodies" / "orgs/o/packs/new", (forty_days_ago, forty_days_ago))
    assert await store.sweep(30 * 86400) == 1
    assert not (tmp_path / "bodies" / "orgs").exists()
    await store.put("orgs/o/packs/newer", b"newer", "application/octet-stream")  # the next write recreates them
    assert await store.get("orgs/o/packs/newer") == b"newer"
    assert await store.ping()


def _row(ev):
    return events.analytics_row(ev, request_key="k1", response_key="k2", request_bytes=1, response_bytes=1,
                                request_content_type="", response_content_type="", truncated=False)


def _event(org_id: str, when: dt.datetime, request_id: str | None = None, **kw) -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=request_id or events.new_request_id(), org_id=org_id, **kw)
    events.set_time(ev.request_created_at, when)
    return ev


T0 = dt.datetime(2026, 1, 31, 23, 59, 59, 500000, tzinfo=dt.timezone.utc)
FINAL_ROWS = ("SELECT org_id, request_id, model, version FROM {db}.request_log FINAL ORDER BY org_id, model "
              "SETTINGS output_format_json_quote_64bit_integers = 0")


async def test_replacing_merge_tree_dedupes_replayed_events(analytics_store):
    store = analytics_store
    ev = _event("org-1", dt.datetime.now(dt.timezone.utc), model="gpt-4o", properties={"env": "prod"})
    other = _event("org-1", dt.datetime.now(dt.timezone.utc), model="gpt-4o", properties={"env": "prod"})
    await store.insert("request_log", [_row(ev)])
    await store.insert("request_log", [_row(ev), _row(other)])  # replay + a new one
    rows = await store.query(
        "SELECT request_id, version FROM {db}.request_log FINAL WHERE org_id = {org:String} "
        "AND properties[{k:String}] = {v:String} ORDER BY request_id",
        {"org": "org-1", "k": "env", "v": "prod"},
    )
    assert sorted(r["request_id"] for r in rows) == sorted([ev.request_id, other.request_id])
    assert await store.ping()


# Text ClickHouse would read as escape sequences, NULL or the end of a value if passed unescaped.
AWKWARD_TEXT = ["a\\b", "ends with \\", "\\N", "\\x41\\0\\t", "tab\there", "new\nline", "cr\rlf", "quote'\"`",
                "nul\x00byte", "{x:String}", "%2F%00", "é中😀", "", "long\\é" * 2000]


async def test_query_parameters_come_back_exactly_as_given(analytics_store):
    for text in AWKWARD_TEXT:
        rows = await analytics_store.query("SELECT {v:String} AS v, length({v:String}) AS n", {"v": text})
        assert rows == [{"v": text, "n": len(text.encode())}], text[:40]


async def test_array_parameters_come_back_exactly_as_given(analytics_store):
    """An array's strings too (chDB took a Python list's repr: a quote failed the query, a non-ASCII
    character came back as its \\u escape)."""
    texts = AWKWARD_TEXT[:-1] + ["it's", "zw\u200bsp", "[x]", "a,b", "]"]
    rows = await analytics_store.query("SELECT {v:Array(String)} AS v, {n:Array(UInt32)} AS n", {"v": texts, "n": [1, 2]})
    assert rows == [{"v": texts, "n": [1, 2]}]


async def test_one_row_per_org_and_request_id_whatever_the_times(analytics_store):
    store = analytics_store
    rid = events.new_request_id()
    first = _event("org-a", T0, rid, model="first")
    newest = _event("org-a", T0 + dt.timedelta(days=40), rid, model="newest")  # another month
    other_org = _event("org-b", T0, rid, model="org-b's own")
    await store.insert("request_log", [_row(first), _row(other_org)])
    await store.insert("request_log", [_row(newest)])
    await store.insert("request_log", [_row(first)])  # a late replay of the older request
    rows = await store.query(FINAL_ROWS)
    assert [(r["org_id"], r["request_id"], r["model"]) for r in rows] == [
        ("org-a", rid, "newest"), ("org-b", rid, "org-b's own")]
    assert rows[0]["version"] == events.event_version(newest)
    sorting_key = await store.query("SELECT sorting_key, partition_key FROM system.tables "
                                    "WHERE database = {d:String} AND name = 'request_log'", {"d": store.database})
    assert sorting_key == [{"sorting_key": "org_id, request_id", "partition_key": ""}]


# request_log as created before the sorting key became the log identity
OLD_REQUEST_LOG_DDL = analytics.REQUEST_LOG_DDL.replace(
    "ORDER BY ({sorting_key})", "PARTITION BY toYYYYMM(request_created_at)\nORDER BY (org_id, request_created_at, request_id)"
).replace("    INDEX request_created_at_minmax request_created_at TYPE minmax GRANULARITY 1{projections}\n", "").replace(
    "version UInt64,", "version UInt64").replace("SETTINGS deduplicate_merge_projection_mode = 'rebuild'\n", "")


async def _old_installation(settings: dict, rows: list[dict]):
    store = make_analytics_store(CommonSettings(**settings, _env_file=None))
    await store._command(f"CREATE DATABASE IF NOT EXISTS {store.database}")
    await store._command(OLD_REQUEST_LOG_DDL.format(db=store.database, table="request_log"))
    for row in rows:
        await store.insert("request_log", [row])
    return store


CURRENT_TABLES = {"request_log": "org_id, request_id", "request_scores": "org_id, request_id, name",
                  "request_properties": "org_id, key, request_id", "request_properties_mv": "",
                  "request_property_overrides": "org_id, request_id, key"}


async def _tables(store) -> dict[str, str]:
    rows = await store.query("SELECT name, sorting_key FROM system.tables WHERE database = {d:String}", {"d": store.database})
    return {r["name"]: r["sorting_key"] for r in rows}


def _old_rows() -> tuple[list[dict], list[tuple]]:
    rid = events.new_request_id()
    old = _row(_event("org-a", T0, rid, model="first"))
    reused = _row(_event("org-a", T0 + dt.timedelta(days=40), rid, model="newest"))  # two rows in the old table
    old["version"], reused["version"] = 1_000, 2_000  # ingest used to stamp the write time
    rows = [old, reused, _row(_event("org-b", T0, rid, model="org-b's own"))]
    rows += [_row(_event("org-c", T0 + dt.timedelta(hours=i), model=f"m{i}")) for i in range(20)]
    expected = sorted({(r["org_id"], r["request_id"], r["model"]) for r in rows if r is not old})
    return rows, expected


async def test_init_schema_rebuilds_an_old_request_log_keeping_every_row(analytics_settings):
    rows, expected = _old_rows()
    store = await _old_installation(analytics_settings, rows)
    try:
        assert (await _tables(store))["request_log"] == "org_id, request_created_at, request_id"
        await store.init_schema()
        assert await _tables(store) == CURRENT_TABLES  # the old table is gone
        after = await store.query(FINAL_ROWS)
        assert sorted((r["org_id"], r["request_id"], r["model"]) for r in after) == expected
        # new rows go on collapsing by identity; running the migration again changes nothing
        await store.insert("request_log", [_row(_event("org-c", T0, after[-1]["request_id"], model="m-new"))])
        await store.init_schema()
        assert await _tables(store) == CURRENT_TABLES
        assert len(await store.query(FINAL_ROWS)) == len(expected)
    finally:
        await store.close()


async def test_an_interrupted_rebuild_resumes_and_concurrent_starts_agree(analytics_settings):
    rows, expected = _old_rows()
    store = await _old_installation(analytics_settings, rows)
    other = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    try:
        # a crash after the rename, before the copy: the old table is kept aside, the new one empty
        await store._command(f"RENAME TABLE {store.database}.request_log TO {store.database}.{analytics.REQUEST_LOG_PREVIOUS}")
        await store._command(analytics.request_log_ddl(store.database))
        await asyncio.gather(store.init_schema(), other.init_schema())
        assert await _tables(store) == CURRENT_TABLES
        after = await store.query(FINAL_ROWS)
        assert sorted((r["org_id"], r["request_id"], r["model"]) for r in after) == expected
    finally:
        await other.close()
        await store.close()


async def test_two_processes_migrating_at_once_keep_every_row(analytics_settings):
    rows, expected = _old_rows()
    store = await _old_installation(analytics_settings, rows)
    other = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    try:
        await asyncio.gather(store.init_schema(), other.init_schema())
        assert await _tables(store) == CURRENT_TABLES
        after = await store.query(FINAL_ROWS)
        assert sorted((r["org_id"], r["request_id"], r["model"]) for r in after) == expected
    finally:
        await other.close()
        await store.close()


async def test_chdb_stores_on_one_path_share_one_engine(chdb_path):
    a, b = ChdbStore(chdb_path, "shared_db"), ChdbStore(chdb_path, "shared_db")
    try:
        await a.init_schema()
        await a.insert("request_log", [_row(_event("o", dt.datetime.now(dt.timezone.utc)))])
        rows = await b.query("SELECT count() AS n FROM {db}.request_log SETTINGS output_format_json_quote_64bit_integers=0")
        assert rows == [{"n": 1}]
    finally:
        await a.close()
        await b.close()



async def test_chdb_writes_each_insert_as_a_few_packed_files_also_into_tables_made_before(chdb_path):
    """On chDB an insert's parts (request_log's and the properties view's, with their projections) are
    stored packed, a file each instead of about ten, tables made before the setting included."""
    store = ChdbStore(chdb_path, "packed_db")
    try:
        await store.init_schema()
        for table in analytics.CHDB_PACKED_TABLES:  # as a table made before it had the setting
            await store._command(f"ALTER TABLE packed_db.{table} RESET SETTING min_bytes_for_full_part_storage")
        await store.init_schema()
        tables = await store.query("SELECT data_paths FROM system.tables WHERE database = 'packed_db' AND name IN "
                                   f"{analytics.CHDB_PACKED_TABLES}")
        dirs = [Path(d) for t in tables for d in t["data_paths"]]

        def files() -> set[Path]:  # the two tables' files only (not chDB's own logs)
            return {p for d in dirs for p in d.rglob("*") if p.is_file()}

        before = files()
        await store.insert("request_log", [_row(_event("o", dt.datetime.now(dt.timezone.utc), properties={"env": "prod"}))
                                           for _ in range(3)])
        parts = await store.query("SELECT table, part_storage_type AS storage FROM system.parts "
                                  "WHERE database = 'packed_db' AND active ORDER BY table")
        assert parts == [{"table": "request_log", "storage": "Packed"},
                         {"table": "request_properties", "storage": "Packed"}], parts
        made = files() - before
        projections = len(analytics.REQUEST_LOG_PROJECTIONS) + len(analytics.REQUEST_PROPERTIES_PROJECTIONS)
        assert len([p for p in made if p.name == "data.packed"]) == 2 + projections, sorted(map(str, made))
        assert len(made) < 2 * (2 + projections), sorted(map(str, made))  # stored as usual: 111
        rows = await store.query("SELECT count() AS n FROM {db}.request_log FINAL "
                                 "SETTINGS output_format_json_quote_64bit_integers = 0")
        assert rows == [{"n": 3}]
    finally:
        await store.close()


def _ddl_without_projections(db: str) -> str:
    """request_log as created before the projections (they read columns the older tables lacked)."""
    return analytics.REQUEST_LOG_DDL.format(db=db, table="request_log", sorting_key=analytics.REQUEST_LOG_SORTING_KEY,
                                            projections="")


COLUMNS_SQL = ("SELECT name, type FROM system.columns WHERE database = {d:String} AND table = 'request_log' "
               "ORDER BY position")


async def test_init_schema_adds_the_region_and_cache_columns_to_an_existing_table_keeping_its_rows(analytics_settings):
    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    other = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db = store.database
    try:
        # request_log as created before the added columns existed (region, then cache_hit, cache_saved_usd)
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        pre_region = _ddl_without_projections(db)
        for name, type_, _ in analytics.REQUEST_LOG_ADDED_COLUMNS:
            pre_region = pre_region.replace(f"    {name} {type_},\n", "")
            assert f" {name} " not in pre_region
        await store._command(pre_region)
        old = _row(_event("org-a", T0, model="before"))
        for name, _, _ in analytics.REQUEST_LOG_ADDED_COLUMNS:
            del old[name]
        await store.insert("request_log", [old])

        await asyncio.gather(store.init_schema(), other.init_schema())  # two processes starting at once
        await store.init_schema()  # and once more: nothing changes
        await store.insert("request_log", [_row(_event("org-a", T0, model="after", region="eu-west-1", cache_hit=True,
                                                       cache_saved_usd=0.25, fallback_index=1,
                                                       attempts=[events.Attempt(target_url="https://a", status=503)]))])
        rows = await store.query("SELECT model, region, cache_hit, cache_saved_usd, attempts, fallback_index "
                                 "FROM {db}.request_log FINAL ORDER BY model")
        assert rows == [{"model": "after", "region": "eu-west-1", "cache_hit": 1, "cache_saved_usd": 0.25,
                         "attempts": '[{"target_url":"https://a","provider":"","status":503,"error":"","latency_ms":0,'
                                     '"fallback_index":0,"retry":0}]', "fallback_index": 1},
                        {"model": "before", "region": "", "cache_hit": 0, "cache_saved_usd": 0, "attempts": "", "fallback_index": 0}]

        # the same columns, in the same order, as a table created today
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}_fresh")
        await store._command(analytics.request_log_ddl(f"{db}_fresh"))
        columns = await store.query(COLUMNS_SQL, {"d": db})
        assert columns == await store.query(COLUMNS_SQL, {"d": f"{db}_fresh"})
        assert {"name": "region", "type": "LowCardinality(String)"} in columns
        assert {"name": "cache_hit", "type": "UInt8"} in columns
        assert {"name": "cache_saved_usd", "type": "Float64"} in columns
    finally:
        await other.close()
        await store.close()


async def test_init_schema_adds_the_prompt_columns_to_a_table_that_predates_them(analytics_settings):
    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db = store.database
    try:
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        before = _ddl_without_projections(db)
        for line in ("    prompt_id String,\n", "    prompt_version UInt32,\n", "    prompt_inputs String,\n"):
            assert line in before
            before = before.replace(line, "")
        await store._command(before)
        old = _row(_event("org-a", T0, model="before"))
        for name in ("prompt_id", "prompt_version", "prompt_inputs"):
            del old[name]
        await store.insert("request_log", [old])
        await store.init_schema()
        new = _row(_event("org-a", T0, model="after"))
        new.update(prompt_id="triage", prompt_version=3, prompt_inputs='{"topic": "x"}')
        await store.insert("request_log", [new])
        rows = await store.query("SELECT model, prompt_id, prompt_version, prompt_inputs FROM {db}.request_log FINAL "
                                 "ORDER BY model SETTINGS output_format_json_quote_64bit_integers=0")
        assert rows == [{"model": "after", "prompt_id": "triage", "prompt_version": 3, "prompt_inputs": '{"topic": "x"}'},
                        {"model": "before", "prompt_id": "", "prompt_version": 0, "prompt_inputs": ""}]
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}_fresh")
        await store._command(analytics.request_log_ddl(f"{db}_fresh"))
        assert await store.query(COLUMNS_SQL, {"d": db}) == await store.query(COLUMNS_SQL, {"d": f"{db}_fresh"})
    finally:
        await store.close()


SCORES = ("SELECT org_id, toString(request_id) AS rid, name, value FROM {db}.request_scores FINAL WHERE deleted = 0 "
          "ORDER BY org_id, rid, name")


def _score(org: str, rid: str, name: str, value: float, at: str, deleted: int = 0) -> dict:
    return {"org_id": org, "request_id": rid, "name": name, "value": value, "deleted": deleted, "updated_at": at}


async def test_request_scores_keep_one_score_per_name_the_newest_write(analytics_store):
    store = analytics_store
    await store.init_schema()  # a second run changes nothing
    assert await _tables(store) == CURRENT_TABLES == {"request_log": analytics.REQUEST_LOG_SORTING_KEY,
                                                      "request_scores": analytics.REQUEST_SCORES_SORTING_KEY,
                                                      "request_properties": analytics.REQUEST_PROPERTIES_SORTING_KEY,
                                                      "request_properties_mv": "",
                                                      "request_property_overrides":
                                                          analytics.REQUEST_PROPERTY_OVERRIDES_SORTING_KEY}
    rid, other = events.new_request_id(), events.new_request_id()
    first = _score("org-a", rid, "accuracy", 0.5, "2026-03-01 12:00:00.000001")
    await store.insert("request_scores", [first])
    await store.insert("request_scores", [first])  # a retried write
    assert await store.query(SCORES) == [{"org_id": "org-a", "rid": rid, "name": "accuracy", "value": 0.5}]
    # the newest timestamp wins, whatever order the writes arrive in
    await store.insert("request_scores", [_score("org-a", rid, "accuracy", 0.75, "2026-03-01 12:00:00.000003")])
    await store.insert("request_scores", [_score("org-a", rid, "accuracy", 0.25, "2026-03-01 12:00:00.000002")])
    await store.insert("request_scores", [_score("org-b", rid, "accuracy", 1.0, "2026-03-01 12:00:00.000001"),
                                          _score("org-a", other, "accuracy", 2.0, "2026-03-01 12:00:00.000001"),
                                          _score("org-a", rid, "feedback", 1.0, "2026-03-01 12:00:00.000001")])
    assert [(r["org_id"], r["rid"], r["name"], r["value"]) for r in await store.query(SCORES)] == sorted([
        ("org-a", rid, "accuracy", 0.75), ("org-a", rid, "feedback", 1.0), ("org-a", other, "accuracy", 2.0),
        ("org-b", rid, "accuracy", 1.0)])
    # a delete is a newer row marked deleted
    await store.insert("request_scores", [_score("org-a", rid, "accuracy", 0.0, "2026-03-01 12:00:00.000004", deleted=1)])
    assert {(r["org_id"], r["rid"], r["name"]) for r in await store.query(SCORES)} == {
        ("org-a", rid, "feedback"), ("org-a", other, "accuracy"), ("org-b", rid, "accuracy")}


async def test_rows_come_back_exactly_as_written_whatever_their_values(analytics_store):
    """Ingest sends a batch's rows as one JSONColumns document (insert_values): every column of a row
    with awkward values reads back equal to what analytics_row gives for the event."""
    store = analytics_store
    awkward = events.RequestLogged(
        schema_version=1, request_id=events.new_request_id(), org_id="org-x", provider="openai", model='m"\\N\t\n€😀',
        method="POST", path="/v1/x?a=1&b=\\", status=599, latency_ms=2**31, time_to_first_token_ms=-1,
        user_id="\\N", session_id="s\u2028", session_path="/a/b", session_name="", error="\x00\x1f",
        properties={"k\\": "\\N", "ünï": "v\"", "": "empty key"}, cost_usd=1e-300, cost_known=True,
        prompt_id="p", prompt_version=7, prompt_inputs_json='{"a":"\\u0000"}', cache_hit=True, cache_saved_usd=0.25,
        fallback_index=3, attempts=[events.Attempt(target_url="https://x/\\", provider="p", status=500, error="e\n")],
    )
    events.set_time(awkward.request_created_at, T0)
    events.set_time(awkward.response_created_at, T0 + dt.timedelta(seconds=1, milliseconds=1))
    awkward.usage.prompt_tokens, awkward.usage.completion_tokens, awkward.usage.total_tokens = 2**40, 1, 2**40 + 1
    awkward.usage.known = True
    plain = _event("org-x", T0, model="plain")
    rows = [events.analytics_values(ev, "orgs/org-x/packs/p#0+1", "r\\", 2**63 - 1, 0, "application/json; x=\"y\"",
                                    "", True) for ev in (awkward, plain)]
    await store.insert_values("request_log", events.ANALYTICS_COLUMNS, rows)
    got = await store.query(
        "SELECT * EXCEPT (request_created_at, response_created_at), toString(request_created_at) AS request_created_at, "
        "toString(response_created_at) AS response_created_at FROM {db}.request_log FINAL WHERE org_id = 'org-x' "
        "ORDER BY model SETTINGS output_format_json_quote_64bit_integers = 0")
    expected = sorted((dict(zip(events.ANALYTICS_COLUMNS, row, strict=True)) for row in rows), key=lambda r: r["model"])
    assert len(got) == 2
    for want, row in zip(expected, got, strict=True):
        assert row == want
    with pytest.raises(ValueError, match="one per column"):
        await store.insert_values("request_log", events.ANALYTICS_COLUMNS, [rows[0][:-1]])


async def test_non_finite_costs_and_odd_strings_are_written_as_the_json_module_wrote_them(analytics_store):
    """The fast encoder (orjson) would write NaN and infinities as null (read as 0): those documents,
    and strings it refuses, go through the json module, as every insert did before."""
    store = analytics_store
    evs = [_event("org-nan", T0, model=model, cost_usd=cost, cost_known=True)
           for model, cost in (("nan", float("nan")), ("inf", float("inf")), ("minus", float("-inf")), ("plain", 0.5))]
    rows = [events.analytics_values(ev, "k1", "k2", 1, 1, "", "", False) for ev in evs]
    assert analytics._all_finite(zip(*rows, strict=True)) is False
    assert isinstance(analytics._columns_json(events.ANALYTICS_COLUMNS, rows), str)  # the json module's
    assert isinstance(analytics._columns_json(events.ANALYTICS_COLUMNS, rows[3:]), bytes)  # orjson's
    await store.insert_values("request_log", events.ANALYTICS_COLUMNS, rows)
    got = await store.query("SELECT model, toString(cost_usd) AS cost FROM {db}.request_log FINAL WHERE org_id = 'org-nan' "
                            "ORDER BY model")
    assert {r["model"]: r["cost"] for r in got} == {"inf": "inf", "minus": "-inf", "nan": "nan", "plain": "0.5"}


async def test_an_insert_refused_for_a_value_of_its_rows_is_told_from_one_that_may_pass(analytics_store, tmp_path):
    """Ingest dead-letters the rows ClickHouse refuses for their values (retried, they would hold their
    partition for good) and retries every other failed insert: rows_refused tells the two apart, on
    both backends (chDB's error and clickhouse-connect's quote ClickHouse's)."""
    store = analytics_store
    values = events.analytics_values(_event("org-1", T0), "k1", "k2", 1, 1, "", "", False)
    values[events.ANALYTICS_COLUMNS.index("request_bytes")] = -1  # UInt64: CANNOT_PARSE_NUMBER
    with pytest.raises(Exception) as refused:
        await store.insert_values("request_log", events.ANALYTICS_COLUMNS, [values])
    assert analytics.rows_refused(refused.value), refused.value
    with pytest.raises(Exception) as missing:  # UNKNOWN_TABLE: a deployment's fault, not the rows'
        await store.insert_values("no_such_table", ("a",), [[1]])
    assert not analytics.rows_refused(missing.value), missing.value
    if isinstance(store, analytics.ClickHouseServerStore):  # nothing listens there: unreachable, not refused
        from tests.support.net import free_port

        gone = analytics.ClickHouseServerStore(f"http://127.0.0.1:{free_port()}", "default", "", store.database)
        with pytest.raises(Exception) as down:
            await gone.insert_values("request_log", events.ANALYTICS_COLUMNS, [values])
        assert not analytics.rows_refused(down.value), down.value
        await gone.close()


async def test_a_clickhouse_user_that_may_not_change_the_schema_gets_an_error_naming_the_setting(tmp_path):
    """A user whose profile is read-only (or lacks the grants) cannot create or alter the tables: the start
    says which user, which setting names it and what the user needs, on one line."""
    from tests.support import chdb_http

    proc, url = chdb_http.start(tmp_path / "readonly")  # a server of its own: its session is made read-only
    store = analytics.ClickHouseServerStore(url, "helicone_reader", "", "t_readonly")
    try:
        await store._command("SET readonly = 2")  # as a user with readonly = 2 in its profile: reads and settings only
        with pytest.raises(RuntimeError) as refused:
            await store.init_schema()
        message = str(refused.value)
        assert "'helicone_reader'" in message and "HELICONE_CLICKHOUSE_USER" in message, message
        assert "readonly = 0" in message and "Cannot execute query in readonly mode" in message, message
        assert "\n" not in message
    finally:
        await store.close()
        proc.terminate()
        proc.wait(10)


# Retention (settings.retention_days): rows of requests past the age leave every request-level table.
RETENTION_TABLES = {"request_log": "request_created_at", "request_properties": "request_created_at",
                    "request_scores": "updated_at", "request_property_overrides": "request_created_at"}


def _retained_store(analytics_settings, days: int):
    return make_analytics_store(CommonSettings(**analytics_settings, retention_days=days, _env_file=None))


async def _ttls(store) -> dict[str, str | None]:
    return {table: await analytics._table_ttl(store, table) for table in RETENTION_TABLES}


async def _log_requests(store, org: str, age_days: int, count: int) -> None:
    """`count` requests logged `age_days` ago, each with a property, a score and a property put on it later."""
    db = store.database
    await store._command(
        f"INSERT INTO {db}.request_log (request_id, org_id, request_created_at, properties, version) "
        f"SELECT generateUUIDv4(), '{org}', now64(3) - toIntervalDay({age_days}), map('team', 'a'), 1 FROM numbers({count})")
    await store._command(
        f"INSERT INTO {db}.request_scores (org_id, request_id, name, value, updated_at) "
        f"SELECT org_id, request_id, 'feedback', 1, request_created_at FROM {db}.request_log WHERE org_id = '{org}'")
    await store._command(  # put today: it goes with its request all the same
        f"INSERT INTO {db}.request_property_overrides (org_id, request_id, key, value, request_created_at, updated_at) "
        f"SELECT org_id, request_id, 'team', 'b', request_created_at, now64(6) FROM {db}.request_log WHERE org_id = '{org}'")


async def _counts(store) -> dict[str, int]:
    counts = {}
    for table in RETENTION_TABLES:
        rows = await store.query(f"SELECT org_id, count() AS n FROM {{db}}.{table} GROUP BY org_id ORDER BY org_id "
                                 "SETTINGS output_format_json_quote_64bit_integers = 0")
        counts[table] = {r["org_id"]: r["n"] for r in rows}
    return counts


async def test_rows_past_the_retention_leave_every_request_table_and_newer_rows_stay(analytics_settings):
    store = _retained_store(analytics_settings, 0)
    try:
        await store.init_schema()
        await _log_requests(store, "org-old", 40, 3)
        await _log_requests(store, "org-new", 20, 2)
    finally:
        await store.close()
    store = _retained_store(analytics_settings, 30)  # the next release's pods start with a retention
    try:
        await store.init_schema()
        for table in RETENTION_TABLES:
            await store._command(f"OPTIMIZE TABLE {store.database}.{table} FINAL")
        assert await _counts(store) == {table: {"org-new": 2} for table in RETENTION_TABLES}
        # what the dashboard reads from a projection drops them too
        sql = (f"SELECT org_id, {analytics.AGGREGATES['requests']} AS n FROM {{db}}.request_log "
               f"GROUP BY org_id, {analytics.GRAINS['hour'][0]} SETTINGS preferred_optimize_projection_name = "
               f"'series_hourly_v2', {analytics.PROJECTION_SETTINGS}, output_format_json_quote_64bit_integers = 0")
        plan = "\n".join(r["explain"] for r in await store.query("EXPLAIN " + sql))
        assert "ReadFromMergeTree (series_hourly_v2)" in plan, plan
        assert await store.query(sql) == [{"org_id": "org-new", "n": 2}]
        # rows logged from now on: past the age, dropped; within it, kept
        await _log_requests(store, "org-old", 31, 1)
        await _log_requests(store, "org-new", 29, 1)
        for table in RETENTION_TABLES:
            await store._command(f"OPTIMIZE TABLE {store.database}.{table} FINAL")
        assert await _counts(store) == {table: {"org-new": 3} for table in RETENTION_TABLES}
    finally:
        await store.close()


async def test_a_changed_retention_changes_the_ttl_0_removes_it_and_an_unchanged_one_alters_nothing(analytics_settings):
    def ttl(days):
        return {table: f"{column} + toIntervalDay({days})" for table, column in RETENTION_TABLES.items()}

    async def start(days: int) -> list[str]:
        store = _retained_store(analytics_settings, days)
        commands, command = [], store._command

        async def spy(sql: str) -> None:
            commands.append(sql)
            await command(sql)

        store._command = spy
        try:
            await store.init_schema()
            assert await _ttls(store) == (ttl(days) if days else dict.fromkeys(RETENTION_TABLES))
        finally:
            await store.close()
        return [sql for sql in commands if "TTL" in sql]

    assert await start(0) == []  # the default: keep forever, no TTL, nothing altered
    first = await start(30)
    assert len(first) == len(RETENTION_TABLES) and all("mutations_sync = 0" in sql for sql in first)  # never waits for a rewrite
    assert await start(30) == []  # unchanged: no ALTER
    assert len(await start(7)) == len(RETENTION_TABLES)
    assert len(await start(0)) == len(RETENTION_TABLES)  # REMOVE TTL
    assert await start(0) == []


async def test_pods_starting_at_once_agree_on_the_retention(analytics_settings):
    for days in (30, 0):
        stores = [_retained_store(analytics_settings, days) for _ in range(2)]
        try:
            await asyncio.gather(*(s.init_schema() for s in stores))
            assert set((await _ttls(stores[0])).values()) == ({f"request_created_at + toIntervalDay({days})",
                                                               f"updated_at + toIntervalDay({days})"} if days else {None})
        finally:
            for s in stores:
                await s.close()
