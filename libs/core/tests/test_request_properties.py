"""request_properties: one row per request and property key, filled from request_log by a materialized view
(and, for rows logged before it existed, by a copy at start); its values projection answers the property
endpoints' aggregations as its rows do, on both backends."""

import datetime as dt
import sys
import uuid
from pathlib import Path

from helicone_core import analytics
from helicone_core.analytics import AGGREGATES as A
from helicone_core.analytics import PROJECTION_SETTINGS

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tests.support.synthetic import ORGS, insert_sql  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_projections import SETTINGS, _same  # noqa: E402

START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
ORG = ORGS[0]
DAYS = "toStartOfDay(request_created_at) >= '2026-10-02 00:00:00' AND toStartOfDay(request_created_at) < '2026-10-20 00:00:00'"
VALUES = (f"SELECT value, {', '.join(f'{A[n]} AS {n}' for n in ('requests', 'cost_usd', 'errors', 'avg_latency_ms', 'latency_quantiles'))} "
          f"FROM {{db}}.request_properties {{final}} WHERE org_id = '{ORG}' AND key = 'feature' AND {DAYS} "
          "GROUP BY value ORDER BY requests DESC, value")
KEYS = (f"SELECT key, count() AS requests FROM {{db}}.request_properties {{final}} WHERE org_id = '{ORG}' AND {DAYS} "
        "GROUP BY key ORDER BY key")
# the same numbers straight from request_log's rows
LOG_VALUES = (f"SELECT properties['feature'] AS value, "
              f"{', '.join(f'{A[n]} AS {n}' for n in ('requests', 'cost_usd', 'errors', 'avg_latency_ms', 'latency_quantiles'))} "
              f"FROM {{db}}.request_log FINAL WHERE org_id = '{ORG}' AND mapContains(properties, 'feature') AND {DAYS} "
              "GROUP BY value ORDER BY requests DESC, value")


async def _query(store, sql: str, projection: bool) -> list[dict]:
    sql = sql.replace("{final}", "" if projection else "FINAL")
    if projection:
        return await store.query(f"{sql} SETTINGS force_optimize_projection_name = 'values_v1', {PROJECTION_SETTINGS}, {SETTINGS}")
    return await store.query(f"{sql} SETTINGS optimize_use_projections = 0, {SETTINGS}")


async def _load(store, rows: int) -> None:
    half = rows // 2  # two inserts: two parts
    for first, count in ((0, half), (half, rows - half)):
        await store._command(insert_sql(store.database, count, start=START, sessions=1_500, users=400,
                                        first_row=first, total=rows))


async def _count(store, sql: str) -> int:
    return int((await store.query(f"{sql} SETTINGS {SETTINGS}"))[0]["n"])


async def test_the_values_projection_answers_as_the_rows_and_as_request_log_do(analytics_store):
    store = analytics_store
    await _load(store, 40_000)
    assert set(analytics.REQUEST_PROPERTIES_PROJECTIONS) == {"values_v1"}
    from_projection = await _query(store, VALUES, projection=True)
    _same(from_projection, await _query(store, VALUES, projection=False))
    _same(from_projection, await store.query(f"{LOG_VALUES} SETTINGS optimize_use_projections = 0, {SETTINGS}"))
    assert len(from_projection) == 50  # feature-0 .. feature-49
    keys = await _query(store, KEYS, projection=True)
    assert [k["key"] for k in keys] == ["customer-tier", "environment", "feature"]
    assert keys == await _query(store, KEYS, projection=False)
    # every request carries the three keys: three rows each
    assert await _count(store, "SELECT count() AS n FROM {db}.request_properties") == 3 * 40_000


async def test_a_resent_log_counts_once_and_a_replaced_one_keeps_its_newest_value(analytics_store):
    store = analytics_store
    await _load(store, 4_000)
    rows = await store.query(f"SELECT * FROM {{db}}.request_log WHERE org_id = '{ORG}' "
                             f"ORDER BY request_created_at LIMIT 3 OFFSET 500 SETTINGS {SETTINGS}")
    resent, replaced = rows[0], dict(rows[1])
    replaced.update(properties={**replaced["properties"], "feature": "feature-new"}, cost_usd=123.0,
                    version=replaced["version"] + 1)
    await store.insert("request_log", [resent, replaced])  # through the view, like every insert
    await store._command(f"OPTIMIZE TABLE {store.database}.request_properties FINAL")
    values = await _query(store, VALUES, projection=True)
    _same(values, await _query(store, VALUES, projection=False))
    _same(values, await store.query(f"{LOG_VALUES} SETTINGS optimize_use_projections = 0, {SETTINGS}"))
    new = [v for v in values if v["value"] == "feature-new"]
    assert [(v["requests"], v["cost_usd"], v["avg_latency_ms"]) for v in new] == [(1, 123.0, replaced["latency_ms"])]
    assert await _count(store, "SELECT count() AS n FROM {db}.request_properties FINAL") == 3 * 4_000


async def test_rows_logged_before_the_table_existed_are_copied_once_at_start(analytics_settings):
    from helicone_core.analytics import make_analytics_store
    from helicone_core.settings import CommonSettings

    store = make_analytics_store(CommonSettings(**analytics_settings, _env_file=None))
    db = store.database
    try:
        await store._command(f"CREATE DATABASE IF NOT EXISTS {db}")
        await store._command(analytics.request_log_ddl(db))  # a request_log from before request_properties
        await _load(store, 6_000)
        await store.init_schema()
        comment = "SELECT comment FROM system.tables WHERE database = {d:String} AND name = 'request_properties'"
        assert (await store.query(comment, {"d": db}))[0]["comment"] != "backfill pending"
        await store.init_schema()  # a second start copies nothing again
        assert await _count(store, "SELECT count() AS n FROM {db}.request_properties") == 3 * 6_000
        # a start that stopped before marking the copy done copies again: the copies collapse
        await store._command(f"ALTER TABLE {db}.request_properties MODIFY COMMENT 'backfill pending'")
        await store.init_schema()
        assert await _count(store, "SELECT count() AS n FROM {db}.request_properties FINAL") == 3 * 6_000
        await store._command(f"OPTIMIZE TABLE {db}.request_properties FINAL")
        _same(await _query(store, VALUES, projection=True),
              await store.query(f"{LOG_VALUES} SETTINGS optimize_use_projections = 0, {SETTINGS}"))
        # and new logs arrive through the view
        row = (await store.query(f"SELECT * FROM {{db}}.request_log LIMIT 1 SETTINGS {SETTINGS}"))[0]
        await store.insert("request_log", [{**row, "request_id": str(uuid.uuid4()), "properties": {"only": "one"}}])
        assert await _count(store, "SELECT count() AS n FROM {db}.request_properties FINAL") == 3 * 6_000 + 1
    finally:
        await store.close()
