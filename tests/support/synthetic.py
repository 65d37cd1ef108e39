"""Synthetic request_log rows generated inside ClickHouse (INSERT ... SELECT FROM numbers): the
dashboard benchmark's data set and the projection tests' data, the same shape at any size.

Shape (the issue's benchmark): 30 days, 2 orgs, 20k users, 300k sessions (each a run of
consecutive requests of one user), a few properties; five
models over three providers, 2 % errors, one streamed request in four. Rows are a pure function of
(row number, seed), so two loads with the same arguments hold the same rows.
"""

from __future__ import annotations

import datetime as dt

ORGS = ("org-bench-a", "org-bench-b")
MODELS = (("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-sonnet-4-5"),
          ("anthropic", "claude-haiku-4-5"), ("groq", "llama-3.3-70b-versatile"))
DAYS = 30


def insert_sql(database: str, rows: int, *, start: dt.datetime, seed: int = 1, users: int = 20_000,
               orgs: tuple[str, ...] = ORGS, sessions: int = 300_000, first_row: int = 0, total: int | None = None) -> str:
    """One INSERT of rows `first_row`..`first_row + rows - 1` of a data set of `total` rows (default: these),
    spread evenly over DAYS days from `start` (a large set loads in several inserts)."""
    total = total or first_row + rows
    span_ms = DAYS * 86_400_000
    t0 = start.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    providers = "[" + ", ".join(f"'{p}'" for p, _ in MODELS) + "]"
    models = "[" + ", ".join(f"'{m}'" for _, m in MODELS) + "]"
    org_list = "[" + ", ".join(f"'{o}'" for o in orgs) + "]"

    def h(k: int) -> str:
        return f"cityHash64(number, {seed}, {k})"

    per_session = max(total // sessions, 1)  # a session: consecutive requests of one user
    m = f"(1 + {h(5)} % {len(MODELS)})"
    created = f"toDateTime64('{t0}', 3, 'UTC') + toIntervalMillisecond(intDiv(number * {span_ms}, {total}))"
    latency = f"(80 + {h(1)} % 2500 + if({h(13)} % 100 = 0, 20000, 0))"
    return f"""
INSERT INTO {database}.request_log (request_id, org_id, request_created_at, response_created_at, latency_ms,
    time_to_first_token_ms, status, provider, model, method, path, user_id, session_id, session_path, session_name,
    properties, prompt_tokens, completion_tokens, total_tokens, cache_read_tokens, usage_known, cost_usd, cost_known,
    streamed, source, version)
SELECT
    reinterpretAsUUID(concat(reinterpretAsString({h(100)}), reinterpretAsString({h(101)}))) AS request_id,
    {org_list}[1 + intDiv(number, {per_session}) % {len(orgs)}],
    {created} AS created,
    created + toIntervalMillisecond({latency}),
    {latency},
    if({h(4)} % 4 = 0, 30 + {h(2)} % 400, -1),
    if({h(3)} % 50 = 0, [429, 500, 502, 0][1 + {h(14)} % 4], 200),
    {providers}[{m}],
    {models}[{m}],
    'POST',
    if({providers}[{m}] = 'anthropic', '/v1/messages', '/v1/chat/completions'),
    concat('user-', toString(cityHash64(intDiv(number, {per_session}), {seed}) % {users})),
    concat('session-', toString(intDiv(number, {per_session}))),
    ['/', '/plan', '/plan/search', '/answer'][1 + {h(8)} % 4],
    concat('flow-', toString(intDiv(number, {per_session}) % 40)),
    map('environment', ['production', 'staging', 'dev'][1 + {h(9)} % 3],
        'feature', concat('feature-', toString({h(10)} % 50)),
        'customer-tier', ['free', 'pro', 'enterprise'][1 + {h(11)} % 3]),
    200 + {h(12)} % 3000 AS pt,
    20 + {h(15)} % 800 AS ct,
    pt + ct,
    if({h(16)} % 5 = 0, intDiv(pt, 2), 0),
    1,
    (pt * 2.5 + ct * 10) / 1e6,
    1,
    {h(4)} % 4 = 0,
    'gateway',
    toUInt64(toUnixTimestamp64Nano(created))  -- events.event_version: the request time in ns
FROM numbers({first_row}, {rows})
"""
