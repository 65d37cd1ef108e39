"""request_log's projections answer the dashboard's aggregations with the numbers a scan of the
rows gives (analytics.REQUEST_LOG_PROJECTIONS), on both backends, fresh and migrated tables."""

import asyncio
import datetime as dt
import sys
import time
from pathlib import Path

import pytest
from helicone_core import analytics
from helicone_core.analytics import AGGREGATES as A
from helicone_core.analytics import GRAINS, PROJECTION_SETTINGS

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.support.synthetic import ORGS, insert_sql  # noqa: E402

START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
ORG = ORGS[0]
SETTINGS = "output_format_json_quote_64bit_integers = 0"
LO, HI = "'2026-10-02 00:00:00'", "'2026-10-20 00:00:00'"  # on every grain's boundary


def _in_range(grain: str | None) -> str:
    col = GRAINS[grain][0] if grain else "request_created_at"
    return f"org_id = '{ORG}' AND {col} >= {LO} AND {col} < {HI}"


def _aggs(*names: str) -> str:
    return ", ".join(f"{A[n]} AS {n}" for n in names)


# (projection, the dashboard query it serves); each query written on that projection's grain
QUERIES = {
    "series_v2": f"SELECT toStartOfHour(toTimeZone({GRAINS['quarter_hour'][0]}, 'Asia/Kathmandu')) AS b, "
                 f"{_aggs('requests', 'cost_usd', 'prompt_tokens', 'errors', 'latency_quantiles', 'ttft_quantiles')}, "
                 f"{_aggs('users', 'sessions', 'avg_latency_ms', 'cache_hits')} "
                 f"FROM {{db}}.request_log {{final}} WHERE {_in_range('quarter_hour')} GROUP BY b ORDER BY b",
    "series_half_hourly_v1": f"SELECT toStartOfDay(toTimeZone({GRAINS['half_hour'][0]}, 'Asia/Kolkata')) AS b, "
                             f"{_aggs('requests', 'cost_usd', 'errors', 'latency_quantiles', 'ttft_quantiles', 'users')} "
                             f"FROM {{db}}.request_log {{final}} WHERE {_in_range('half_hour')} GROUP BY b ORDER BY b",
    "series_hourly_v2": f"SELECT toStartOfDay(toTimeZone({GRAINS['hour'][0]}, 'Europe/Berlin')) AS b, "
                        f"{_aggs('requests', 'cost_usd', 'errors', 'latency_quantiles', 'ttft_quantiles', 'users')} "
                        f"FROM {{db}}.request_log {{final}} WHERE {_in_range('hour')} GROUP BY b ORDER BY b",
    "models_v2": f"SELECT provider, model, {_aggs('requests', 'cost_usd', 'total_tokens', 'errors', 'latency_quantiles')} "
                 f"FROM {{db}}.request_log {{final}} WHERE {_in_range('hour')} GROUP BY provider, model ORDER BY model",
    "users_page_v1": f"SELECT user_id, toStartOfDay(request_created_at) AS day, {_aggs('requests', 'cost_usd', 'total_tokens')}, "
                     f"{_aggs('errors', 'first_seen', 'last_seen')} FROM {{db}}.request_log {{final}} "
                     f"WHERE {_in_range('day')} AND user_id IN ('user-7', 'user-11') GROUP BY user_id, day ORDER BY user_id, day",
    "users_v1": f"SELECT user_id, {_aggs('requests', 'cost_usd', 'first_seen', 'last_seen')} FROM {{db}}.request_log "
                f"{{final}} WHERE {_in_range('day')} GROUP BY user_id ORDER BY cost_usd DESC, user_id LIMIT 20",
    "sessions_v2": f"SELECT session_id, {_aggs('requests', 'cost_usd', 'errors', 'first_seen', 'last_response')}, "
                   f"{_aggs('session_name', 'session_users', 'latency_ms_sum')} "
                   f"FROM {{db}}.request_log {{final}} WHERE {_in_range('day')} GROUP BY session_id "
                   "ORDER BY last_response DESC, session_id LIMIT 20",
    "by_time_v1": f"SELECT request_id, request_created_at, model FROM {{db}}.request_log {{final}} "
                  f"WHERE {_in_range(None)} AND model = 'gpt-4o' ORDER BY request_created_at DESC LIMIT 50",
}


async def _run(store, name: str, raw: bool) -> list[dict]:
    sql = QUERIES[name].replace("{final}", "FINAL" if raw else "")
    if raw:
        sql += f" SETTINGS optimize_use_projections = 0, {SETTINGS}"
    else:
        # preferred, not forced (users_page_v1 and users_v1 hold the same groups; forced, a projection
        # that is not picked is an error without the plan): the plan shows which is read
        sql += f" SETTINGS preferred_optimize_projection_name = '{name}', {PROJECTION_SETTINGS}, {SETTINGS}"
        plan = "\n".join(r["explain"] for r in await store.query("EXPLAIN " + sql))
        assert f"ReadFromMergeTree ({name})" in plan, plan
    return await store.query(sql)


def _same(from_projection: list[dict], from_rows: list[dict]) -> None:
    assert len(from_projection) == len(from_rows) > 0
    for p, r in zip(from_projection, from_rows, strict=True):
        assert p.keys() == r.keys()
        for key in p:
            if key.endswith("quantiles"):  # sketches merged per part vs one sketch: the same buckets
                assert [q is None for q in p[key]] == [q is None for q in r[key]]  # none: no such requests (NaN)
                assert [q for q in p[key] if q is not None] == pytest.approx([q for q in r[key] if q is not None], rel=1e-9)
            elif isinstance(p[key], list):  # groupUniqArray: no order
                assert sorted(p[key]) == sorted(r[key]), key
            elif isinstance(p[key], float):
                assert p[key] == pytest.approx(r[key], rel=1e-9)
            else:
                assert p[key] == r[key], key


async def _load(store, rows: int = 40_000) -> None:
    # two inserts: two parts, as a live table has, whose projections merge at query time
    half = rows // 2
    for first, count in ((0, half), (half, rows - half)):
        await store._command(insert_sql(store.database, count, start=START, sessions=1_500, users=400,
                                        first_row=first, total=rows))


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_each_projection_answers_its_dashboard_query_as_the_rows_do(analytics_store, name):
    await _load(analytics_store)
    assert set(QUERIES) == set(analytics.REQUEST_LOG_PROJECTIONS)
    _same(await _run(analytics_store, name, raw=False), await _run(analytics_store, name, raw=True))


async def test_after_a_merge_a_resent_or_replaced_log_counts_once_in_the_projections(analytics_store):
    store = analytics_store
    await _load(store, 40_000)  # enough granules in the table that a page of users reads fewer
    rows = await store.query(f"SELECT * FROM {{db}}.request_log WHERE org_id = '{ORG}' "
                             f"ORDER BY request_created_at LIMIT 3 SETTINGS {SETTINGS}")
    resent, replaced = rows[0], dict(rows[1])
    replaced.update(model="gpt-4o-mini", cost_usd=123.0, version=replaced["version"] + 1)  # its id reused later
    await store.insert("request_log", [resent, replaced])
    await store._command(f"OPTIMIZE TABLE {store.database}.request_log FINAL")
    for name in QUERIES:
        _same(await _run(store, name, raw=False), await _run(store, name, raw=True))


async def test_a_table_from_before_the_projections_gets_them_and_keeps_its_rows(analytics_settings):
    from helicone_core.analytics import make_analytics_store
    from helicone_core.settings import CommonSettings

    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db = store.database
    try:
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        await store._command(analytics.REQUEST_LOG_DDL.format(db=db, table="request_log", projections="",
                                                              sorting_key=analytics.REQUEST_LOG_SORTING_KEY)
                             .replace("SETTINGS deduplicate_merge_projection_mode = 'rebuild'\n", ""))
        await _load(store, 40_000)
        await store.init_schema()
        await store.init_schema()  # a second start changes nothing
        names = {r["name"] for r in await store.query(
            "SELECT name FROM system.projections WHERE database = {d:String} AND table = 'request_log'", {"d": db})}
        assert names == set(analytics.REQUEST_LOG_PROJECTIONS)
        await store._command(f"OPTIMIZE TABLE {db}.request_log FINAL")  # waits for the parts, projections built
        for name in QUERIES:
            _same(await _run(store, name, raw=False), await _run(store, name, raw=True))
        count = await store.query(f"SELECT count() AS n FROM {{db}}.request_log SETTINGS {SETTINGS}")
        assert count == [{"n": 40_000}]
    finally:
        await store.close()



def _table_without_projections(db: str) -> str:
    return (analytics.REQUEST_LOG_DDL.format(db=db, table="request_log", projections="",
                                             sorting_key=analytics.REQUEST_LOG_SORTING_KEY)
            .replace("SETTINGS deduplicate_merge_projection_mode = 'rebuild'\n", ""))


UNFINISHED = ("SELECT command FROM system.mutations WHERE database = {d:String} AND table = 'request_log' "
              "AND NOT is_done ORDER BY command")


async def test_projections_added_to_an_existing_table_are_built_in_the_background(analytics_settings):
    """Building a new projection for a table's existing rows is a mutation (hours on a large table): a start
    must not wait for it, whatever mutations_sync the server (chDB: 1) or the user's profile sets."""
    from helicone_core.analytics import make_analytics_store
    from helicone_core.settings import CommonSettings

    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db = store.database
    try:
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        await store._command(_table_without_projections(db))
        await _load(store, 2_000)
        # no mutation runs until merges start again: a start that waited for the builds would never end
        await store._command(f"SYSTEM STOP MERGES {db}.request_log")
        await asyncio.wait_for(store.init_schema(), 60)
        pending = [r["command"] for r in await store.query(UNFINISHED, {"d": db})]
        assert len(pending) == len(analytics.REQUEST_LOG_PROJECTIONS), pending
        assert all("MATERIALIZE PROJECTION" in c for c in pending), pending
        count = await store.query(f"SELECT count() AS n FROM {{db}}.request_log FINAL SETTINGS {SETTINGS}")
        assert count == [{"n": 2_000}]  # read from the rows meanwhile

        await store._command(f"SYSTEM START MERGES {db}.request_log")
        deadline = time.monotonic() + 120
        while await store.query(UNFINISHED, {"d": db}) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        parts = await store.query("SELECT projections FROM system.parts WHERE database = {d:String} "
                                  "AND table = 'request_log' AND active", {"d": db})
        assert parts and all(set(p["projections"]) == set(analytics.REQUEST_LOG_PROJECTIONS) for p in parts), parts
    finally:
        await store.close()


async def test_a_retired_projection_whose_build_has_not_finished_is_dropped(analytics_settings):
    """A projection a newer release added and an older one does not know (a rollback), or one replaced by a
    new version, may still be building on the existing parts: dropping it stops its build instead of failing
    the start ("Cannot drop projection ... affected by mutation")."""
    from helicone_core.analytics import make_analytics_store
    from helicone_core.settings import CommonSettings

    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db = store.database
    try:
        await store.init_schema()
        await _load(store, 2_000)
        # a build that cannot finish stands for one that takes hours: its mutation stays unfinished
        await store._command(f"ALTER TABLE {db}.request_log ADD PROJECTION retired_v1 "
                             "(SELECT org_id, sum(throwIf(latency_ms >= 0, 'still building')) GROUP BY org_id), "
                             "MATERIALIZE PROJECTION retired_v1 SETTINGS mutations_sync = 0")
        pending = [r["command"] for r in await store.query(UNFINISHED, {"d": db})]
        assert len(pending) == 1 and "MATERIALIZE PROJECTION retired_v1" in pending[0], pending
        await store.init_schema()
        names = {r["name"] for r in await store.query(
            "SELECT name FROM system.projections WHERE database = {d:String} AND table = 'request_log'", {"d": db})}
        assert names == set(analytics.REQUEST_LOG_PROJECTIONS)
        assert await store.query(UNFINISHED, {"d": db}) == []
        count = await store.query(f"SELECT count() AS n FROM {{db}}.request_log FINAL SETTINGS {SETTINGS}")
        assert count == [{"n": 2_000}]
    finally:
        await store.close()


async def test_the_users_page_projection_keeps_small_granules(analytics_store):
    """users_page_v1 is written in 256-row granules (analytics.PROJECTION_OPTIONS), the other projections in
    the table's 8,192-row ones."""
    await _load(analytics_store, 8_000)
    parts = await analytics_store.query(
        "SELECT name, sum(rows) AS rows, sum(marks) AS marks FROM system.projection_parts WHERE database = {d:String} "
        f"AND table = 'request_log' AND active AND name IN ('users_page_v1', 'users_v1') GROUP BY name SETTINGS {SETTINGS}",
        {"d": analytics_store.database})
    by_name = {p["name"]: p for p in parts}
    page, users = by_name["users_page_v1"], by_name["users_v1"]
    assert page["rows"] == users["rows"] > 1_000
    assert page["marks"] >= page["rows"] / 256  # one mark per 256 rows (and one closing mark per part)
    assert users["marks"] <= 4  # one or two per part
