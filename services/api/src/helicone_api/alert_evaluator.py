"""Evaluates alert rules (alerts.py) every HELICONE_ALERT_INTERVAL seconds and notifies transitions.

Every api replica runs this loop; a rule is evaluated by one of them per interval: a tick claims the
rules that are due with `FOR UPDATE SKIP LOCKED` and moves their next evaluation one interval ahead
in the same statement, so another replica's tick skips them (locked) or finds them not due
(committed). An evaluation writes (and notifies) only if the rule was not replaced since its claim
(updated_at) and no evaluation of a later window has written (last_evaluated_at), so one slower than
the interval, or than an edit, is dropped rather than stored over newer results. A transition is a
compare-and-set on the rule's state too, so two evaluations of one rule that overlap notify it once.

Each tick runs its rules concurrently; a rule's webhook delivery (with its retries) runs in that
rule's task and a tick is not awaited by the next, so a slow or dead webhook holds up no other rule.
A notification is sent after its transition is committed, at most once; its result is written to
the history (`pending` until then). Stopping cancels the evaluations but lets the notifications under
way finish (each bounded by the webhook's tries): one cancelled would be lost, and `pending` for good.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from helicone_core.webhooks import ALERT_ID_HEADER, EVENT_ID_HEADER

from .alerts import ALERT_FILTER, COMPARE, FIRING, MAX_HISTORY, METRIC_SQL, RATE_METRICS, RESOLVED, AlertFilter, _iso
from .filters import FilterNode, ch_time, filter_sql
from .queries import SETTINGS

log = logging.getLogger("helicone.api.alerts")

# Evaluation results (the `result` label of helicone_api_alert_evaluations_total).
BREACHED, NOT_BREACHED, NO_DATA, ERROR = "breached", "ok", "no_data", "error"
EVALUATION_RESULTS = (BREACHED, NOT_BREACHED, NO_DATA, ERROR)

CLAIM_SQL = """
WITH due AS (
    SELECT id FROM alert_rules
    WHERE enabled AND next_evaluation_at <= now() AND NOT (id = ANY($3::uuid[]))
    ORDER BY next_evaluation_at LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE alert_rules r SET next_evaluation_at = now() + make_interval(secs => $2)
FROM due WHERE r.id = due.id
RETURNING r.id, r.org_id, r.name, r.metric, r.window_seconds, r.comparison, r.threshold, r.filter, r.min_requests,
          r.webhook_url, r.webhook_secret, r.state, r.updated_at
"""

# An evaluation's results are current: the rule is as claimed ({0}: its updated_at then) and no evaluation of
# a later window has written ({1}: this window's end).
CURRENT = "updated_at = {0} AND (last_evaluated_at IS NULL OR last_evaluated_at <= {1})"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def metric_sql(org_id: str, metric: str, f: AlertFilter | FilterNode, start: dt.datetime | None = None,
               end: dt.datetime | None = None) -> tuple[str, dict[str, Any]]:
    """The window's request count and the rule's metric over the requests the filter (a flat one may carry
    start/end) keeps within [start, end)."""
    where, params = filter_sql(org_id, f)
    if start is not None:
        where.append("request_created_at >= {window_start:DateTime64(3, 'UTC')}")
        params["window_start"] = ch_time(start)
    if end is not None:
        where.append("request_created_at < {window_end:DateTime64(3, 'UTC')}")
        params["window_end"] = ch_time(end)
    sql = (f"SELECT count() AS requests, {METRIC_SQL[metric]} AS value FROM {{db}}.request_log FINAL "
           f"WHERE {' AND '.join(where)} " + SETTINGS)
    return sql, params


class AlertEvaluator:
    def __init__(self, state, interval: float, *, clock: Callable[[], dt.datetime] = utc_now,
                 batch: int = 200, concurrency: int = 8) -> None:
        self.state = state  # ApiState: pool, analytics, webhooks and the alert metrics
        self.interval = interval
        self.clock = clock  # the end of every window (tests move it)
        self.batch = batch
        self._queries = asyncio.Semaphore(concurrency)
        self._in_flight: set[uuid.UUID] = set()  # rules this replica is still evaluating or notifying
        self._tasks: set[asyncio.Task] = set()
        self._notifications: set[asyncio.Task] = set()  # outlive a cancelled tick: stop() awaits them
        self._loop: asyncio.Task | None = None

    def start(self) -> None:
        self._loop = asyncio.create_task(self._run(), name="alert-evaluator")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._notifications, return_exceptions=True)
        self._loop = None

    async def _run(self) -> None:
        while True:
            task = asyncio.create_task(self._tick_logged())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(self.interval)

    async def _tick_logged(self) -> None:
        try:
            await self.tick()
        except Exception:  # noqa: BLE001 - Postgres away: the next tick tries again
            log.exception("alert evaluation tick failed")

    async def tick(self) -> int:
        """Evaluates every due rule that no other evaluator has claimed; returns how many it evaluated."""
        done: list[uuid.UUID] = []
        while True:
            rows = await self.state.pool.fetch(CLAIM_SQL, self.batch, self.interval * 0.9, [*done, *self._in_flight])
            if not rows:
                return len(done)
            done += [r["id"] for r in rows]
            await asyncio.gather(*(self._evaluate(r) for r in rows))
            if len(rows) < self.batch:
                return len(done)

    async def _evaluate(self, rule) -> None:
        self._in_flight.add(rule["id"])
        try:
            await self._evaluate_rule(rule)
        except Exception:  # noqa: BLE001 - one rule's failure never stops the others
            self.state.m_alert_evaluations.labels(ERROR).inc()
            log.exception("alert %s: evaluation failed", rule["id"])
        finally:
            self._in_flight.discard(rule["id"])

    async def _evaluate_rule(self, rule) -> None:
        end = self.clock()
        start = end - dt.timedelta(seconds=rule["window_seconds"])
        f = ALERT_FILTER.validate_python(json.loads(rule["filter"]))
        sql, params = metric_sql(str(rule["org_id"]), rule["metric"], f, start, end)
        async with self._queries:
            row = (await self.state.analytics.query(sql, params))[0]
        requests = int(row["requests"])
        value = None if row["value"] is None else float(row["value"])
        if value is None or (rule["metric"] in RATE_METRICS and requests < rule["min_requests"]):
            self.state.m_alert_evaluations.labels(NO_DATA).inc()
            await self.state.pool.execute(
                "UPDATE alert_rules SET last_value = NULL, last_requests = $2, last_evaluated_at = $3 "
                f"WHERE id = $1 AND {CURRENT.format('$4', '$3')}", rule["id"], requests, end, rule["updated_at"])
            return  # too little traffic to judge: the state stays as it is
        breached = COMPARE[rule["comparison"]](value, rule["threshold"])
        self.state.m_alert_evaluations.labels(BREACHED if breached else NOT_BREACHED).inc()
        new_state = FIRING if breached and rule["state"] != FIRING else RESOLVED if not breached and rule["state"] == FIRING else None
        if new_state is None:
            await self.state.pool.execute(
                "UPDATE alert_rules SET last_value = $2, last_requests = $3, last_evaluated_at = $4 "
                f"WHERE id = $1 AND {CURRENT.format('$5', '$4')}", rule["id"], value, requests, end, rule["updated_at"])
            return
        async with self.state.pool.acquire() as conn, conn.transaction():
            changed = await conn.fetchval(
                "UPDATE alert_rules SET state = $3, last_value = $4, last_requests = $5, last_evaluated_at = $6 "
                f"WHERE id = $1 AND state = $2 AND {CURRENT.format('$7', '$6')} RETURNING id",
                rule["id"], rule["state"], new_state, value, requests, end, rule["updated_at"])
            if changed is None:
                return  # made (and notified) by another evaluation, overtaken by a newer one or an edit, or deleted
            event_id = await conn.fetchval(
                "INSERT INTO alert_events(rule_id, at, state, value, requests) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                rule["id"], end, new_state, value, requests)
            await conn.execute(  # a flapping rule's history would grow for good
                "DELETE FROM alert_events WHERE rule_id = $1 AND id <= (SELECT id FROM alert_events WHERE rule_id = $1 "
                "ORDER BY id DESC OFFSET $2 LIMIT 1)", rule["id"], MAX_HISTORY)
        notification = asyncio.create_task(self._notify(rule, event_id, rule["state"], new_state, value, requests, start, end))
        self._notifications.add(notification)
        notification.add_done_callback(self._notifications.discard)
        await asyncio.shield(notification)

    async def _notify(self, rule, event_id: int, old: str, new: str, value: float, requests: int,
                      start: dt.datetime, end: dt.datetime) -> None:
        body = json.dumps({
            "type": f"alert.{new}",
            "event_id": str(event_id),
            "alert": {
                "id": str(rule["id"]), "name": rule["name"], "metric": rule["metric"], "comparison": rule["comparison"],
                "threshold": rule["threshold"], "window_seconds": rule["window_seconds"], "filter": json.loads(rule["filter"]),
                "min_requests": rule["min_requests"],
            },
            "state": new, "previous_state": old, "value": value, "requests": requests,
            "window": {"start": _iso(start), "end": _iso(end)},
        }, separators=(",", ":")).encode()
        delivery = await self.state.webhooks.send(
            rule["webhook_url"], body, rule["webhook_secret"],
            {ALERT_ID_HEADER: str(rule["id"]), EVENT_ID_HEADER: str(event_id)})
        self.state.m_alert_notifications.labels(delivery.result).inc()
        if delivery.result != "delivered":
            log.warning("alert %s: %s notification %s: %s", rule["id"], new, delivery.result, delivery.error)
        await self.state.pool.execute(
            "UPDATE alert_events SET delivery_result = $2, delivery_attempts = $3, delivery_status = $4, delivery_error = $5 "
            "WHERE id = $1", event_id, delivery.result, delivery.attempts, delivery.status, delivery.error)
