"""Analytics store: the `request_log`, `request_properties`, `request_scores` and `request_property_overrides`
tables on chDB (embedded) or a ClickHouse server.

Both backends run the same SQL text, with ClickHouse server-side parameters ({name:Type}),
and insert the same JSONCompactEachRowWithNames payload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import orjson

from .filemodes import private_dir
from .settings import CLICKHOUSE_IDENTIFIER, CommonSettings, env_name

log = logging.getLogger(__name__)

_IDENT = CLICKHOUSE_IDENTIFIER

# A log's identity is (org_id, request_id), and it is the whole sorting key, with no partition key:
# ReplacingMergeTree collapses only rows with equal sorting keys in the same partition, so with the
# request time in either one (the old ORDER BY (org_id, request_created_at, request_id) and
# PARTITION BY month), a reused id sent at another time stayed two rows. Now `FINAL` gives exactly
# one row per (org, request id): the highest `version`, the newest request (events.event_version).
# Queries always filter on org_id, the key prefix; time ranges use the minmax skip index, which
# skips parts and granules outside the range (most effective on recent, not yet merged parts). With
# FINAL it is exact since ClickHouse 25.6 (use_skip_indexes_if_final_exact_mode, on by default:
# never turn it off for this table) and unused before (correct, slower). Retention is a TTL on
# request_created_at (migrate_retention), which needs no partitions.
REQUEST_LOG_SORTING_KEY = "org_id, request_id"

REQUEST_LOG_DDL = """
CREATE TABLE IF NOT EXISTS {db}.{table}
(
    request_id UUID,
    org_id String,
    request_created_at DateTime64(3, 'UTC'),
    response_created_at DateTime64(3, 'UTC'),
    latency_ms UInt32,
    time_to_first_token_ms Int64,
    status Int32,
    provider LowCardinality(String),
    model String,
    method LowCardinality(String),
    path String,
    target_url String,
    user_id String,
    session_id String,
    session_path String,
    session_name String,
    properties Map(String, String),
    prompt_tokens UInt64,
    completion_tokens UInt64,
    total_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    usage_known UInt8,
    cost_usd Float64,
    cost_known UInt8,
    streamed UInt8,
    request_body_key String,
    response_body_key String,
    request_bytes UInt64,
    response_bytes UInt64,
    request_content_type String,
    response_content_type String,
    body_truncated UInt8,
    error String,
    source LowCardinality(String),
    region LowCardinality(String),
    prompt_id String,
    prompt_version UInt32,
    prompt_inputs String,
    cache_hit UInt8,
    cache_saved_usd Float64,
    attempts String,
    fallback_index UInt16,
    version UInt64,
    INDEX request_created_at_minmax request_created_at TYPE minmax GRANULARITY 1{projections}
)
ENGINE = ReplacingMergeTree(version)
ORDER BY ({sorting_key})
SETTINGS deduplicate_merge_projection_mode = 'rebuild'
"""
# Where init_schema moves a request_log with an older sorting key while it copies it into the new one.
REQUEST_LOG_PREVIOUS = "request_log_before_identity"
# Columns added to REQUEST_LOG_DDL after tables were created with it: (name, type, the column it
# follows), added to an existing table by init_schema so that old and new tables look the same.
# Old rows read the type's default ('' for region, prompt_id and attempts, 0 for prompt_version, the cache columns
# and fallback_index).
# Listed in the order they were added: each follows a column that exists by the time it is added.
REQUEST_LOG_ADDED_COLUMNS = (
    ("region", "LowCardinality(String)", "source"),
    ("prompt_id", "String", "region"),
    ("prompt_version", "UInt32", "prompt_id"),
    ("prompt_inputs", "String", "prompt_version"),
    ("cache_hit", "UInt8", "prompt_inputs"),
    ("cache_saved_usd", "Float64", "cache_hit"),
    ("attempts", "String", "cache_saved_usd"),  # JSON list of upstream tries (events.attempts_json); '' when none
    ("fallback_index", "UInt16", "attempts"),
)


# The dashboard's reads. The table is sorted by identity, which keeps FINAL exact but gives a time range or
# an aggregation nothing to skip: at 10 million rows every dashboard query scanned the org's rows
# (250-700 ms on 2 cores). Projections keep the same rows sorted by time and pre-aggregated on the
# grains the dashboard asks for; ClickHouse answers a query from one when the query's filter and
# groups are expressions of the projection's keys and it selects the projection's aggregates, so
# the api builds its aggregations from AGGREGATES and GRAINS below (one place for both sides).
# Replacing merges rebuild the projections (deduplicate_merge_projection_mode), so what a projection
# counts is what FINAL would count once the parts holding a resent or replaced log have merged.
# A request that failed: an error status, no answer at all (status 0) or an error the gateway noted.
ERROR_CONDITION = "(status >= 400 OR status = 0 OR notEmpty(error))"
QUANTILES = (0.5, 0.9, 0.95, 0.99)
_Q = ", ".join(str(q) for q in QUANTILES)
SESSION_USERS = 50  # the users listed per session
# Percentiles are DDSketches with 1 % relative accuracy: each estimate is within 1 % of a value of the
# right rank, however many states are merged (the t-digests used before strayed far at a distribution's
# gaps once thousands of states merged: a p99 of 7,642 ms for an exact 2,579), and their states merge
# about twice as fast. Written as ClickHouse's analyzer rewrites them (notEmpty(x), not x != ''), or a
# query would not match a projection.
QUANTILE_ACCURACY = 0.01
AGGREGATES = {
    "requests": "count()",
    "cost_usd": "sum(cost_usd)",
    "prompt_tokens": "sum(prompt_tokens)",
    "completion_tokens": "sum(completion_tokens)",
    "total_tokens": "sum(total_tokens)",
    "errors": f"countIf({ERROR_CONDITION})",
    "latency_quantiles": f"quantilesDD({QUANTILE_ACCURACY}, {_Q})(latency_ms)",
    "ttft_quantiles": f"quantilesDDIf({QUANTILE_ACCURACY}, {_Q})(time_to_first_token_ms, time_to_first_token_ms >= 0)",
    "avg_latency_ms": "avg(latency_ms)",
    # a sum, not avg: per-day sums add up to a session's, whose mean is then the sum over its requests
    "latency_ms_sum": "sum(latency_ms)",
    "users": "uniqIf(user_id, notEmpty(user_id))",
    "sessions": "uniqIf(session_id, notEmpty(session_id))",
    "cache_hits": "countIf(cache_hit = 1)",
    "cache_saved_usd": "sum(cache_saved_usd)",
    "first_seen": "min(request_created_at)",
    "last_seen": "max(request_created_at)",
    "last_response": "max(response_created_at)",
    "session_name": "argMaxIf(session_name, request_created_at, notEmpty(session_name))",
    "session_users": f"groupUniqArrayIf({SESSION_USERS})(user_id, notEmpty(user_id))",
}
# Time grains of the aggregate projections: a time bound on a grain's boundary is written as a bound
# on the grain's expression (the same rows), which lets the projection answer.
GRAINS = {
    "quarter_hour": ("toStartOfFifteenMinutes(request_created_at)", 15 * 60),
    "half_hour": ("toStartOfInterval(request_created_at, toIntervalMinute(30))", 30 * 60),
    "hour": ("toStartOfHour(request_created_at)", 3600),
    "day": ("toStartOfDay(request_created_at)", 86400),
}


def _aggregate_projection(keys: list[str], aggregates: list[str]) -> str:
    cols = ", ".join(keys + [AGGREGATES[a] for a in aggregates])
    return f"SELECT {cols} GROUP BY {', '.join(keys)}"


_TOTALS = ["requests", "cost_usd", "prompt_tokens", "completion_tokens", "total_tokens"]
_USER_DAYS = _TOTALS + ["errors", "first_seen", "last_seen"]
_SERIES = _TOTALS + ["errors", "latency_quantiles", "ttft_quantiles", "avg_latency_ms", "users", "sessions", "cache_hits",
                     "cache_saved_usd"]
# name -> the projection's query. Renaming one (a new suffix) replaces it on existing tables.
REQUEST_LOG_PROJECTIONS = {
    # request pages, exports and cursors: every column, in time order
    "by_time_v1": "SELECT * ORDER BY org_id, request_created_at",
    # metrics over time in any time zone (every zone's offset is a multiple of 15 minutes), summary tiles
    "series_v2": _aggregate_projection(["org_id", GRAINS["quarter_hour"][0]], _SERIES),
    # the same by UTC half hour: half the sketches to merge, for zones whose offset is a multiple of 30
    # minutes (India, Iran, Newfoundland, central Australia...): their hours and days are whole half hours
    "series_half_hourly_v1": _aggregate_projection(["org_id", GRAINS["half_hour"][0]], _SERIES),
    # the same by UTC hour: a quarter of the sketches to merge, for ranges on whole hours in zones
    # whose offset is whole hours (most), and for summaries over whole hours
    "series_hourly_v2": _aggregate_projection(["org_id", GRAINS["hour"][0]], _SERIES),
    # model/provider breakdowns and series grouped by them (UTC hours)
    "models_v2": _aggregate_projection(["org_id", GRAINS["hour"][0], "provider", "model"],
                                       _TOTALS + ["errors", "latency_quantiles", "avg_latency_ms"]),
    # per user and UTC day: the user list reads every user's sort value here, then all the totals of
    # just the page's users from users_page (the same rows in small granules, see PROJECTION_OPTIONS)
    "users_v1": _aggregate_projection(["org_id", "user_id", GRAINS["day"][0]], _USER_DAYS),
    "users_page_v1": _aggregate_projection(["org_id", "user_id", GRAINS["day"][0]], _USER_DAYS),
    # v2: with latency_ms_sum (a session's mean latency, Helicone's avg_latency)
    "sessions_v2": _aggregate_projection(["org_id", "session_id", GRAINS["day"][0]],
                                         _TOTALS + ["errors", "first_seen", "last_seen", "last_response", "session_name",
                                                    "session_users", "latency_ms_sum"]),
    # properties: see request_properties below
}
# Storage options of some projections, after their query (ClickHouse 26.1 or newer reads WITH SETTINGS).
# A read of a few keys' rows from a pre-aggregated projection pays for every row of the granules it
# touches (each aggregate state is deserialized): in 256-row granules instead of 8,192, a page of 50
# users reads their days in ~50 granules of 256 rows instead of ~16 of 8,192 (nearly all of an org's
# rows in the benchmark). Only for reads of a few users: ClickHouse picks a projection by its marks,
# and for a whole-range read this one has 32 times users_v1's (more than the table's own when users
# make few requests a day), so those read users_v1.
PROJECTION_OPTIONS = {"users_page_v1": "WITH SETTINGS (index_granularity = 256)"}
# Reads that use the projections: a Map subscript read as a subcolumn, or a time bound rewritten
# from a grain's expression to the column, would not match them.
PROJECTION_SETTINGS = "optimize_functions_to_subcolumns = 0, optimize_time_filter_with_preimage = 0"
# Reads in time order (newest first, stopping early): the by_time projection even when the time range
# covers every part, where ClickHouse would otherwise read the table (as many marks, but no order to stop on).
TIME_ORDER_SETTINGS = "preferred_optimize_projection_name = 'by_time_v1'"


def _projection_sql(name: str, query: str) -> str:
    """A projection's definition as CREATE TABLE and ALTER TABLE ... ADD PROJECTION take it."""
    options = PROJECTION_OPTIONS.get(name)
    return f"{name} ({query})" + (f" {options}" if options else "")


def _projections_ddl(projections: dict[str, str]) -> str:
    return "".join(f",\n    PROJECTION {_projection_sql(name, query)}" for name, query in projections.items())


def request_log_ddl(database: str, table: str = "request_log") -> str:
    return REQUEST_LOG_DDL.format(db=database, table=table, sorting_key=REQUEST_LOG_SORTING_KEY,
                                  projections=_projections_ddl(REQUEST_LOG_PROJECTIONS))


async def _projections(store, table: str) -> set[str]:
    rows = await store.query(
        "SELECT name FROM system.projections WHERE database = {database:String} AND table = {table:String}",
        {"database": store.database, "table": table},
    )
    return {r["name"] for r in rows}


# A projection's build for the existing parts is a mutation, hours on a large table: never waited for, whatever
# the server's or the user's profile says (chDB's default is 1, which waits).
_IN_BACKGROUND = "SETTINGS mutations_sync = 0"


async def migrate_projections(store, table: str = "request_log", projections: dict[str, str] | None = None) -> None:
    """Brings an existing table's projections to `projections` (REQUEST_LOG_PROJECTIONS for request_log):
    new ones are added and built for the existing parts in the background (a mutation: queries answer
    from the raw rows until a part has it), old versions dropped, their unfinished builds stopped. Safe to
    repeat and to run at once."""
    db, table = store.database, _check_ident(table)
    wanted = REQUEST_LOG_PROJECTIONS if projections is None else projections
    present = await _projections(store, table)
    if set(wanted) == present:
        return
    await store._command(f"ALTER TABLE {db}.{table} MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'")
    for name in sorted(present - set(wanted)):
        log.warning("%s: dropping the projection %s", table, name)
        # ClickHouse refuses to drop a projection whose build is still running (a rollback soon after the
        # release that added it, a replacement soon after the original): that build is no longer wanted
        await store._command(f"KILL MUTATION WHERE database = '{db}' AND table = '{table}' AND NOT is_done "
                             f"AND match(command, '\\\\bMATERIALIZE PROJECTION {_check_ident(name)}\\\\b')")
        await store._command(f"ALTER TABLE {db}.{table} DROP PROJECTION IF EXISTS {name}")
    for name, query in wanted.items():
        if name not in present:
            log.warning("%s: adding the projection %s (built for existing rows in the background)", table, name)
            # one statement: a crash cannot leave it added but never built for the existing parts
            await store._command(f"ALTER TABLE {db}.{table} ADD PROJECTION IF NOT EXISTS {_projection_sql(name, query)}, "
                                 f"MATERIALIZE PROJECTION {name} {_IN_BACKGROUND}")


async def _sorting_key(store, table: str) -> str | None:
    rows = await store.query(
        "SELECT sorting_key FROM system.tables WHERE database = {database:String} AND name = {table:String}",
        {"database": store.database, "table": table},
    )
    return rows[0]["sorting_key"] if rows else None


async def _columns(store, table: str) -> list[str]:
    rows = await store.query(
        "SELECT name FROM system.columns WHERE database = {database:String} AND table = {table:String} ORDER BY position",
        {"database": store.database, "table": table},
    )
    return [_check_ident(r["name"]) for r in rows]


async def migrate_request_log(store) -> None:
    """Creates `request_log`, or rebuilds one with an older sorting key into the current one,
    keeping every row (rows of one identity collapse into the highest version, as they would have
    if the table had always had this key).

    Steps, each safe to repeat, so a crash or a second process starting at the same time only
    repeats work: the old table is renamed away (one atomic rename: new rows go to the new table
    from then on, so none is missed), the new table is created, the old rows are copied (copying
    twice is harmless: the copies collapse), the copy is checked (every identity of the old
    table is in the new one) and only then is the old table dropped. Until the copy is done,
    requests logged before the migration are missing from queries.

    Columns added since a table was created (REQUEST_LOG_ADDED_COLUMNS) are added in place: a
    metadata change, no rows rewritten; old rows read the column's default."""
    db = store.database
    key = await _sorting_key(store, "request_log")
    if key is not None and key != REQUEST_LOG_SORTING_KEY:
        log.warning("request_log is sorted by (%s): rebuilding it sorted by (%s)", key, REQUEST_LOG_SORTING_KEY)
        try:
            await store._command(f"RENAME TABLE {db}.request_log TO {db}.{REQUEST_LOG_PREVIOUS}")
        except Exception:
            # another process renamed it first: carry on from the state it left
            if await _sorting_key(store, "request_log") not in (None, REQUEST_LOG_SORTING_KEY):
                raise
    await store._command(request_log_ddl(db))
    present = set(await _columns(store, "request_log"))
    for name, type_, after in REQUEST_LOG_ADDED_COLUMNS:
        if name not in present:  # IF NOT EXISTS: another process starting at once may add it first
            log.warning("request_log has no %s column: adding it", name)
            await store._command(f"ALTER TABLE {db}.request_log ADD COLUMN IF NOT EXISTS {name} {type_} AFTER {after}")
    await migrate_projections(store)
    if await _sorting_key(store, REQUEST_LOG_PREVIOUS) is not None:
        await _copy_previous_request_log(store)


# Feedback and named scores on a logged request. A score's identity is (org_id, request_id, name),
# the whole sorting key; `updated_at` (the api's clock, microseconds) is the version: FINAL keeps
# the newest write of each name, so writing the same score twice leaves one, and a later write
# replaces an earlier one. A delete is a newer row with deleted = 1, so readers filter on
# `deleted = 0` after FINAL. Thumbs up/down is the score named `feedback` (1 up, 0 down).
REQUEST_SCORES_SORTING_KEY = "org_id, request_id, name"
REQUEST_SCORES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.request_scores
(
    org_id String,
    request_id UUID,
    name String,
    value Float64,
    deleted UInt8,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY ({sorting_key})
"""


def request_scores_ddl(database: str) -> str:
    return REQUEST_SCORES_DDL.format(db=database, sorting_key=REQUEST_SCORES_SORTING_KEY)


# Custom properties put on a logged request through the api (PUT /v1/request/{id}/property): one row per
# (org, request id, key), the whole sorting key; `updated_at` (the api's clock, microseconds) is the version, so
# FINAL keeps the newest value and the same put twice leaves one. request_log and request_properties are not
# rewritten: a newer version of a request_log row would count twice in every aggregation read without FINAL (the
# projections) until ClickHouse merged the part holding the old row, which for an old request's large part may
# be days. Readers merge these rows over the logged properties instead (helicone_api.queries.property_sql).
# `request_created_at` is the request's, for retention.
REQUEST_PROPERTY_OVERRIDES_SORTING_KEY = "org_id, request_id, key"
REQUEST_PROPERTY_OVERRIDES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.request_property_overrides
(
    org_id String,
    request_id UUID,
    key String,
    value String,
    request_created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY ({sorting_key})
"""


def request_property_overrides_ddl(database: str) -> str:
    return REQUEST_PROPERTY_OVERRIDES_DDL.format(db=database, sorting_key=REQUEST_PROPERTY_OVERRIDES_SORTING_KEY)


# Custom properties, one row per (request, property key): what the property endpoints read. A projection of
# request_log grouped by the whole property map (as before) has one pre-aggregated row per distinct map and
# day: 450 per day for three small properties, and as many as requests once one property is an id; every
# query for one key merged all of them (150-200 ms at 10 million rows). Here a key's rows lie together
# (the sorting key) and values_v1 holds one row per key, day and value: a key's top values merge only
# their own (50 values x 30 days = 1,500 rows in the benchmark).
# Filled by a materialized view on every insert into request_log, so the gateway, async logs and OTLP
# all land here with no writer of their own; identity (org, key, request id) and `version` as request_log:
# a resent log collapses, a replaced one keeps the newest value, and aggregations read without FINAL like
# request_log's (see ERROR_CONDITION). A key that a replacing log no longer carries keeps the older row.
# Properties put through the api are not copied here (request_property_overrides): a read of a key with puts
# reads request_log instead (helicone_api.insights.property_values_sql).
REQUEST_PROPERTIES_SORTING_KEY = "org_id, key, request_id"
REQUEST_PROPERTIES_PROJECTIONS = {
    "values_v1": _aggregate_projection(["org_id", "key", GRAINS["day"][0], "value"],
                                       ["requests", "cost_usd", "errors", "latency_quantiles", "avg_latency_ms"]),
}
# Until the rows logged before the table existed are copied in (migrate_request_properties), its comment says so.
_PROPERTIES_BACKFILL_PENDING = "backfill pending"
_PROPERTIES_READY = "one row per request and property key, filled from request_log"
REQUEST_PROPERTIES_DDL = """
CREATE TABLE IF NOT EXISTS {db}.request_properties
(
    org_id String,
    key String,
    value String,
    request_id UUID,
    request_created_at DateTime64(3, 'UTC'),
    latency_ms UInt32,
    status Int32,
    error String,
    cost_usd Float64,
    version UInt64{projections}
)
ENGINE = ReplacingMergeTree(version)
ORDER BY ({sorting_key})
SETTINGS deduplicate_merge_projection_mode = 'rebuild'
COMMENT '{comment}'
"""
# request_log's rows as request_properties rows: the view's query and the backfill's
_PROPERTY_ROWS = ("SELECT org_id, key, value, request_id, request_created_at, latency_ms, status, error, cost_usd, version "
                  "FROM {db}.request_log ARRAY JOIN mapKeys(properties) AS key, mapValues(properties) AS value")


def request_properties_ddl(database: str) -> str:
    return REQUEST_PROPERTIES_DDL.format(db=database, sorting_key=REQUEST_PROPERTIES_SORTING_KEY,
                                         projections=_projections_ddl(REQUEST_PROPERTIES_PROJECTIONS),
                                         comment=_PROPERTIES_BACKFILL_PENDING)


async def migrate_request_properties(store) -> None:
    """Creates request_properties and the view that fills it, and copies the rows request_log held
    before: the view first (from then on every insert reaches the table), then the copy (a row both
    write collapses), then the table's comment says it is complete. A crash before that repeats the
    copy at the next start; safe to run again and at once."""
    db = store.database
    await store._command(request_properties_ddl(db))
    await migrate_projections(store, "request_properties", REQUEST_PROPERTIES_PROJECTIONS)
    await store._command(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.request_properties_mv TO {db}.request_properties "
                         f"AS {_PROPERTY_ROWS.format(db=db)}")
    rows = await store.query("SELECT comment FROM system.tables WHERE database = {d:String} AND name = 'request_properties'",
                             {"d": db})
    if rows and rows[0]["comment"] == _PROPERTIES_BACKFILL_PENDING:
        log.warning("request_properties: copying the properties of the requests logged so far")
        await store._command(f"INSERT INTO {db}.request_properties {_PROPERTY_ROWS.format(db=db)}")
        await store._command(f"ALTER TABLE {db}.request_properties MODIFY COMMENT '{_PROPERTIES_READY}'")


# Retention (settings.retention_days): a TTL on each table's time column, so ClickHouse drops rows past the age in
# its merges. request_log and request_properties: the request's time (request_created_at, the time every view
# and filter uses). request_scores has no request time; updated_at is the score's last write, never before its
# request, so a score goes with or after its request. A reused request id's newer row outlives the older one,
# which it replaces anyway (its version is higher).
RETENTION_COLUMNS = {"request_log": "request_created_at", "request_properties": "request_created_at",
                     "request_scores": "updated_at", "request_property_overrides": "request_created_at"}
# the table's TTL as system.tables.create_table_query prints it (one line), up to the clause after it
_TABLE_TTL = re.compile(r" TTL (.+?)(?: SETTINGS | COMMENT |$)")


def retention_ttl(column: str, days: int) -> str:
    """A table's TTL for `days` of retention, written as ClickHouse prints it back (compared to skip the ALTER)."""
    return f"{_check_ident(column)} + toIntervalDay({int(days)})"


async def _table_ttl(store, table: str) -> str | None:
    rows = await store.query("SELECT create_table_query FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                             {"d": store.database, "t": table})
    m = _TABLE_TTL.search(rows[0]["create_table_query"]) if rows else None
    return m.group(1) if m else None


async def migrate_retention(store, days: int) -> None:
    """Brings the TTL of each table of RETENTION_COLUMNS to `days` (0: none). An unchanged setting
    issues no ALTER; a change is a metadata change, and the rows already stored are checked against
    it in the background (a mutation, never waited for: hours on a large table); merges drop what
    is past it from then on. Safe to repeat and to run at once."""
    db = store.database
    for table, column in RETENTION_COLUMNS.items():
        wanted = retention_ttl(column, days) if days else None
        present = await _table_ttl(store, table)
        if present == wanted:
            continue
        if wanted is None:
            log.warning("%s: removing the retention TTL (%s): rows are kept forever", table, present)
            try:
                await store._command(f"ALTER TABLE {db}.{table} REMOVE TTL")
            except Exception:
                if await _table_ttl(store, table) is not None:
                    raise  # not another process removing it first
            continue
        log.warning("%s: retention TTL %s (was %s); applied to existing rows in the background", table, wanted, present)
        await store._command(f"ALTER TABLE {db}.{table} MODIFY TTL {wanted} {_IN_BACKGROUND}")


async def migrate_schema(store) -> None:
    """Every analytics table, created or brought up to date; safe to run again and at once."""
    await migrate_request_log(store)
    await migrate_request_properties(store)
    await store._command(request_scores_ddl(store.database))
    await store._command(request_property_overrides_ddl(store.database))
    await migrate_retention(store, store.retention_days)


async def _copy_previous_request_log(store, attempts: int = 3) -> None:
    db, previous = store.database, REQUEST_LOG_PREVIOUS
    current = set(await _columns(store, "request_log"))
    columns = ", ".join(c for c in await _columns(store, previous) if c in current)
    for _ in range(attempts):
        try:
            await store._command(f"INSERT INTO {db}.request_log ({columns}) SELECT {columns} FROM {db}.{previous}")
            rows = await store.query(
                f"SELECT count() AS n FROM (SELECT DISTINCT org_id, request_id FROM {db}.{previous}) "
                f"WHERE (org_id, request_id) NOT IN (SELECT org_id, request_id FROM {db}.request_log) "
                "SETTINGS output_format_json_quote_64bit_integers = 0"
            )
        except Exception:
            if await _sorting_key(store, previous) is None:
                return  # another process finished the copy and dropped the old table
            raise
        missing = int(rows[0]["n"])
        if missing == 0:
            await store._command(f"DROP TABLE IF EXISTS {db}.{previous}")
            log.warning("request_log rebuilt with sorting key (%s)", REQUEST_LOG_SORTING_KEY)
            return
        # a write that was in flight during the rename landed in the old table: copy again
        log.warning("%d request ids of %s are not in request_log yet; copying again", missing, previous)
    raise RuntimeError(f"could not copy {db}.{previous} into {db}.request_log; the old table is kept")


class AnalyticsStore(Protocol):
    database: str
    retention_days: int  # init_schema's TTL (settings.retention_days); 0: none

    async def init_schema(self) -> None: ...
    async def insert(self, table: str, rows: list[dict[str, Any]]) -> None: ...
    async def insert_values(self, table: str, names: tuple[str, ...], rows: list[list[Any]]) -> None: ...
    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def _check_ident(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise ValueError(f"invalid identifier {name!r}")
    return name


# the json module's encoder for the documents orjson does not take (see _columns_json); json.dumps with
# options would build a new encoder on each call
_ROW_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


ROWS_FORMAT = "JSONColumns"


def _compact_rows(rows: list[dict[str, Any]]) -> str | bytes:
    """Rows that all have the same keys in the same order, as one JSONColumns document."""
    names = tuple(rows[0])
    for row in rows:
        if tuple(row) != names:
            raise ValueError(f"analytics rows of one insert must have the same columns: {sorted(row)} vs {sorted(names)}")
    return _columns_json(names, [list(row.values()) for row in rows])


def _columns_json(names: tuple[str, ...], rows: list[list[Any]]) -> str | bytes:
    """Rows of values in `names` order as JSONColumns: one JSON object of column name -> the column's
    values, parsed by ClickHouse a column at a time. orjson encodes it (a twentieth of the json
    module's time: 0.5 against 8-10 us per request_log row); the json module takes the documents
    orjson would write differently or refuse: a non-finite float (orjson writes null, which
    ClickHouse reads as 0, where json's NaN and Infinity are read as such), a lone surrogate or an
    integer past 64 bits."""
    for name in names:
        _check_ident(name)
    if any(len(row) != len(names) for row in rows):
        raise ValueError(f"every row must have {len(names)} values, one per column")
    document = dict(zip(names, zip(*rows, strict=True), strict=True))
    if _all_finite(document.values()):
        try:
            return orjson.dumps(document)
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an integer past 64 bits
            pass
    return _ROW_JSON(document)


def _all_finite(columns) -> bool:
    """No number of the numeric columns is NaN or infinite (fsum runs in C over a column)."""
    for column in columns:
        if column and isinstance(column[0], (int, float)):
            try:
                if not math.isfinite(math.fsum(column)):
                    return False
            except (OverflowError, TypeError, ValueError):  # a huge integer, a value of another type
                return False
    return True


# ClickHouse parses a query parameter's value in its escaped text format (as TSV fields): a
# backslash starts an escape sequence (a lone \N is NULL) and a raw tab or newline ends the value.
# clickhouse-connect escapes its parameters itself; chDB takes them as given, so they are escaped here.
_PARAM_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n"})


# An array's elements are written as in its text format: strings quoted, with their own escapes (a raw
# tab or newline would still end the value).
_QUOTED_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\t": "\\t", "\n": "\\n"})


def _param_str(value: Any) -> str:
    """A chDB query parameter's value as text, escaped so that ClickHouse reads back exactly `value`."""
    if isinstance(value, str):
        return value.translate(_PARAM_ESCAPES)
    return _param_element(value)


def _param_element(value: Any) -> str:
    """A value in ClickHouse's text format as an array parameter's element, an array, a number or a bool."""
    if isinstance(value, str):
        return "'" + value.translate(_QUOTED_ESCAPES) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(_param_element, value)) + "]"
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


# ClickHouse's codes (errorCodeToName gives each name) for an insert it refuses because of a value in its rows: one it
# cannot parse or convert into its column's type (CANNOT_PARSE_*, TYPE_MISMATCH, CANNOT_CONVERT_TYPE, INCORRECT_DATA,
# VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE, TOO_LARGE_STRING_SIZE, ...). Such an insert fails the same way however often it is
# retried; any other failure (the server unreachable, overloaded, out of memory) may pass.
ROW_REFUSAL_CODES = frozenset({6, 25, 26, 27, 38, 41, 53, 69, 70, 72, 117, 128, 131, 321, 349, 376, 407, 441, 467, 632, 675, 676})
# how both backends' errors quote ClickHouse's (chDB's ChdbError, clickhouse-connect's DatabaseError)
_ERROR_CODE = re.compile(r"\bCode: (\d+)\. DB::Exception")


# READONLY (a read-only profile) and ACCESS_DENIED (a missing grant): the user may not run the migrations' DDL
SCHEMA_REFUSAL_CODES = frozenset({164, 497})


def rows_refused(exc: BaseException) -> bool:
    """The insert failed on a value of its rows (ROW_REFUSAL_CODES), not on the server: retrying the same rows cannot
    succeed."""
    quoted = _ERROR_CODE.search(str(exc))
    if quoted and int(quoted.group(1)) in ROW_REFUSAL_CODES:
        return True
    code = getattr(exc, "code", None)  # clickhouse-connect's, from the X-ClickHouse-Exception-Code header
    return isinstance(code, int) and code in ROW_REFUSAL_CODES


class _Inserts:
    """insert and insert_values of both stores, through their _insert(table, JSONColumns document)."""

    async def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self._insert(table, _compact_rows(rows))

    async def insert_values(self, table: str, names: tuple[str, ...], rows: list[list[Any]]) -> None:
        """insert() for rows given as values in `names` order."""
        if rows:
            await self._insert(table, _columns_json(names, rows))

    async def _insert(self, table: str, body: str | bytes) -> None:
        raise NotImplementedError


# chDB: the tables every ingest batch inserts into keep a part under this many bytes (uncompressed) as one file, and
# each of its projections as one more ("packed" storage), instead of about ten files each: an insert makes 22 files
# and directories instead of 122. Creating them was a large share of its CPU, a cost per insert, not per row (a
# 600-row batch into the whole schema: 130-152 -> 75-77 us of CPU per row on this machine's disk). Larger parts, from
# merges, are stored as usual.
# Not set on a ClickHouse server, where ClickHouse documents the setting for its Cloud.
CHDB_PACKED_PART_BYTES = 10 * 1024 * 1024
CHDB_PACKED_TABLES = ("request_log", "request_properties")


class _ChdbHandle:
    """The one chDB session of a data dir, and the one thread that may use it."""

    def __init__(self, path: Path) -> None:
        from chdb import session as chs

        private_dir(path)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self.session = self.executor.submit(chs.Session, str(path)).result()
        self.refs = 0


class ChdbStore(_Inserts):
    """chDB embedded engine. One process owns a data dir, so every store on the same path in
    this process shares one session, used from a single thread."""

    _handles: dict[Path, _ChdbHandle] = {}
    _handles_lock = threading.Lock()

    def __init__(self, path: Path, database: str, retention_days: int = 0) -> None:
        self.path = Path(path).resolve()
        self.database = _check_ident(database)
        self.retention_days = retention_days
        self._handle: _ChdbHandle | None = None

    def _get_handle(self) -> _ChdbHandle:
        if self._handle is None:
            with self._handles_lock:
                handle = self._handles.get(self.path)
                if handle is None:
                    handle = self._handles[self.path] = _ChdbHandle(self.path)
                handle.refs += 1
                self._handle = handle
        return self._handle

    async def _run(self, fn, *args):
        handle = self._get_handle()
        return await asyncio.get_running_loop().run_in_executor(handle.executor, fn, *args)

    def _exec(self, sql: str, fmt: str = "CSV", params: dict[str, Any] | None = None):
        sess = self._get_handle().session
        if params:
            return sess.query(sql, fmt, params={k: _param_str(v) for k, v in params.items()})
        return sess.query(sql, fmt)

    async def _command(self, sql: str) -> None:
        await self._run(self._exec, sql)

    async def init_schema(self) -> None:
        await self._command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        await migrate_schema(self)
        for table in CHDB_PACKED_TABLES:  # tables made before this setting get it too (parts written from now on)
            await self._command(f"ALTER TABLE {self.database}.{table} "
                                f"MODIFY SETTING min_bytes_for_full_part_storage = {CHDB_PACKED_PART_BYTES}")

    async def _insert(self, table: str, body: str | bytes) -> None:
        text = body if isinstance(body, str) else body.decode()
        await self._run(self._exec, f"INSERT INTO {self.database}.{_check_ident(table)} FORMAT {ROWS_FORMAT}\n" + text)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            res = self._exec(sql.replace("{db}", self.database), "JSONEachRow", params)
            text = res.data() if hasattr(res, "data") else str(res)
            return [json.loads(line) for line in text.splitlines() if line.strip()]

        return await self._run(run)

    async def ping(self) -> bool:
        try:
            await self._run(self._exec, "SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - readiness probe
            return False

    async def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        with self._handles_lock:
            handle.refs -= 1
            if handle.refs > 0:
                return
            self._handles.pop(self.path, None)
        await asyncio.get_running_loop().run_in_executor(handle.executor, handle.session.close)
        handle.executor.shutdown(wait=True)


class ClickHouseServerStore(_Inserts):
    """A ClickHouse server through clickhouse-connect (HTTP)."""

    def __init__(self, url: str, user: str, password: str, database: str, retention_days: int = 0) -> None:
        self.url = url
        self.user = user
        self._password = password
        self.database = _check_ident(database)
        self.retention_days = retention_days
        self._client = None

    async def _client_(self):
        if self._client is None:
            import clickhouse_connect

            self._client = await clickhouse_connect.get_async_client(
                dsn=self.url, username=self.user, password=self._password
            )
        return self._client

    async def _command(self, sql: str) -> None:
        client = await self._client_()
        await client.command(sql)

    async def init_schema(self) -> None:
        try:
            await self._command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
            await migrate_schema(self)
        except Exception as exc:
            quoted = _ERROR_CODE.search(str(exc))
            if not quoted or int(quoted.group(1)) not in SCHEMA_REFUSAL_CODES:
                raise
            reason = " ".join(str(exc)[quoted.start():].split()).split(" (for url ")[0]
            raise RuntimeError(
                f"ClickHouse user {self.user!r} ({env_name('clickhouse_user')}) may not create or alter the analytics "
                f"tables of database {self.database} ({env_name('clickhouse_database')}): {reason}. Give it readonly = 0 "
                f"in its profile and GRANT ALL ON {self.database}.*, or set {env_name('clickhouse_user')} to a user that "
                "has them") from None

    async def _insert(self, table: str, body: str | bytes) -> None:
        client = await self._client_()
        block = body.encode() if isinstance(body, str) else body
        await client.raw_insert(f"{self.database}.{_check_ident(table)}", insert_block=block, fmt=ROWS_FORMAT)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        client = await self._client_()
        raw = await client.raw_query(
            sql.replace("{db}", self.database), parameters=params or {}, fmt="JSONEachRow"
        )
        return [json.loads(line) for line in raw.decode().splitlines() if line.strip()]

    async def ping(self) -> bool:
        try:
            client = await self._client_()
            return bool(await client.ping())
        except Exception:  # noqa: BLE001 - readiness probe
            return False

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


def make_analytics_store(settings: CommonSettings) -> AnalyticsStore:
    if settings.analytics_backend == "chdb":
        return ChdbStore(settings.resolved_chdb_path(), settings.clickhouse_database, settings.retention_days)
    return ClickHouseServerStore(
        settings.clickhouse_url,
        settings.clickhouse_user,
        settings.clickhouse_password.get_secret_value(),
        settings.clickhouse_database,
        settings.retention_days,
    )
