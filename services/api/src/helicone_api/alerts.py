"""Alert rules: an org's conditions on its own traffic (cost, error rate, latency, request count over
a trailing window), stored in Postgres (`alert_rules`, history in `alert_events`), evaluated on a
schedule by alert_evaluator.AlertEvaluator and notified to a webhook (webhooks.py).

A rule is `ok` until its condition holds, then `firing`; when the condition stops holding it is
`resolved` (and `firing` again if it comes back). Each transition is one history entry and one
notification. The webhook secret that signs notifications is shown once, when the rule is created.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.exceptions import RequestValidationError
from helicone_core.webhooks import DELIVERY_RESULTS, WebhookUrl
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationInfo, field_validator

from .filters import FLAT, TREE, FilterNode, _filter_form
from .models import Answer, RequestFilter, RequestId, documented, error_responses, utf8_text
from .queries import ERROR_CONDITION

Metric = Literal["cost_usd", "error_rate", "latency_p95_ms", "latency_p50_ms", "requests"]
Comparison = Literal["gt", "gte", "lt", "lte"]
State = Literal["ok", "firing", "resolved"]
OK, FIRING, RESOLVED = "ok", "firing", "resolved"
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda v, t: v > t, "gte": lambda v, t: v >= t, "lt": lambda v, t: v < t, "lte": lambda v, t: v <= t,
}
# Each metric over the window's requests, as ClickHouse computes it. quantile() keeps a sample of
# 8192 values: exact (linearly interpolated) up to that many requests in the window, sampled beyond.
METRIC_SQL: dict[str, str] = {
    "cost_usd": "sum(cost_usd)",
    "error_rate": f"if(count() = 0, 0, countIf({ERROR_CONDITION}) / count())",
    "latency_p95_ms": "quantile(0.95)(latency_ms)",
    "latency_p50_ms": "quantile(0.5)(latency_ms)",
    "requests": "count()",
}
# Metrics that mean nothing over too few requests: min_requests applies to these.
RATE_METRICS = frozenset({"error_rate", "latency_p95_ms", "latency_p50_ms"})
MIN_WINDOW, MAX_WINDOW = 60, 7 * 86400
MAX_RULES_PER_ORG = 500
MAX_HISTORY = 1000  # history entries kept per rule (the newest): what GET /history shows at most
NUL_MESSAGE = "must not contain the NUL character (\\u0000)"

Threshold = Annotated[float, Field(allow_inf_nan=False, strict=False)]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(_has_nul(v) for v in value)


class AlertFilter(RequestFilter):
    """Which requests a rule looks at: the query filter, without start/end (the window sets the time)."""

    @field_validator("start", "end", mode="before")
    @classmethod
    def _no_time_range(cls, v):
        if v is not None:
            raise ValueError("an alert's filter has no start or end: window_seconds sets the time range")
        return v


# A rule's `filter`: the flat filter without start/end, or the filter tree of /v1/request/query (whose
# own time conditions, if any, narrow the window further).
AnyAlertFilter = Annotated[
    Annotated[AlertFilter, Tag(FLAT)] | Annotated[FilterNode, Tag(TREE)],
    Discriminator(_filter_form),
]
ALERT_FILTER = TypeAdapter(AnyAlertFilter)


class AlertRule(BaseModel):
    """A rule as created (POST) or replaced (PUT)."""

    model_config = ConfigDict(extra="forbid")

    name: utf8_text(200, 1) = Field(..., description="1-200 characters")
    metric: Metric
    window_seconds: int = Field(..., ge=MIN_WINDOW, le=MAX_WINDOW, description="the trailing window: 60 s to 7 days")
    comparison: Comparison = Field(..., description="fires when `metric comparison threshold` holds")
    threshold: Threshold
    filter: AnyAlertFilter = Field(default_factory=AlertFilter)
    min_requests: int = Field(1, ge=1, le=1_000_000,
                              description="error_rate and latencies: fewer requests in the window is no data (state kept)")
    webhook_url: WebhookUrl = Field(..., description="http(s) URL on a public address; notifications are POSTed there")
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError(NUL_MESSAGE)  # Postgres text cannot hold it
        return v

    @field_validator("filter")
    @classmethod
    def _filter_storable(cls, v: AlertFilter | FilterNode) -> AlertFilter | FilterNode:
        if _has_nul(v.model_dump(mode="json")):
            raise ValueError(NUL_MESSAGE)  # Postgres jsonb cannot hold it
        return v

    @field_validator("threshold")
    @classmethod
    def _rate_threshold(cls, v: float, info: ValidationInfo) -> float:
        if info.data.get("metric") == "error_rate" and not 0 <= v <= 1:
            raise ValueError("an error_rate threshold is a fraction between 0 and 1 (0.05 is 5%)")
        return v


RULE_COLUMNS = (
    "id, name, metric, window_seconds, comparison, threshold, filter, min_requests, webhook_url, enabled, "
    "state, last_value, last_requests, last_evaluated_at, created_at, updated_at"
)


def _iso(t: dt.datetime | None) -> str | None:
    return t.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z") if t else None


# A notification's outcome; "pending" (alert_events' default) until the webhook was tried.
DeliveryResult = Literal[(*DELIVERY_RESULTS, "pending")]  # type: ignore[valid-type]
RULE_EXAMPLE = {
    "id": "9a1c7e52-5b0d-4f3e-8c6a-2d1e0f9b8a7c", "name": "gpt-4o error rate", "metric": "error_rate", "window_seconds": 300,
    "comparison": "gt", "threshold": 0.05, "filter": {"model": "gpt-4o"}, "min_requests": 20,
    "webhook_url": "https://hooks.example.com/helicone", "enabled": True, "state": "firing", "last_value": 0.125,
    "last_requests": 48, "last_evaluated_at": "2026-03-01T12:05:00.123456Z", "created_at": "2026-03-01T09:00:00.654321Z",
    "updated_at": "2026-03-01T09:00:00.654321Z",
}


class AlertRuleState(Answer):
    """A rule as rule_json gives it: its definition, state and last evaluation."""

    model_config = ConfigDict(json_schema_extra={"examples": [RULE_EXAMPLE]})

    id: str
    name: str
    metric: Metric
    window_seconds: int
    comparison: Comparison
    threshold: float
    filter: dict[str, Any] = Field(description="the rule's filter as given (the flat form or the tree), defaults left out")
    min_requests: int
    webhook_url: str
    enabled: bool
    state: State
    last_value: float | None = Field(description="the metric at the last evaluation; null before one, or with no data")
    last_requests: int | None = Field(description="the requests in the window at the last evaluation")
    last_evaluated_at: str | None
    created_at: str
    updated_at: str


class CreatedAlertRule(AlertRuleState):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **RULE_EXAMPLE, "state": "ok", "last_value": None, "last_requests": None, "last_evaluated_at": None,
        "webhook_secret": "whsec_kq3V0yG8tYwN2bJc7xRf5LmZp1QsHd9AeU4oTi6Wv0E"}]})

    webhook_secret: str = Field(description="signs the rule's notifications (Helicone-Signature): shown in this answer only")


class AlertRuleList(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [RULE_EXAMPLE]}]})

    data: list[AlertRuleState] = Field(description="oldest first")


class Delivery(Answer):
    result: DeliveryResult
    attempts: int
    status: int | None = Field(description="the webhook's last answer status; null when it did not answer")
    error: str | None


class AlertEvent(Answer):
    at: str
    state: State = Field(description="the state the rule went to")
    value: float | None
    requests: int | None
    delivery: Delivery = Field(description="how the notification went")


class AlertHistory(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "at": "2026-03-01T12:05:00.123456Z", "state": "firing", "value": 0.125, "requests": 48,
        "delivery": {"result": "delivered", "attempts": 1, "status": 200, "error": None}}]}]})

    data: list[AlertEvent] = Field(description="newest first")


def rule_json(row) -> dict[str, Any]:
    return {
        "id": str(row["id"]), "name": row["name"], "metric": row["metric"], "window_seconds": row["window_seconds"],
        "comparison": row["comparison"], "threshold": row["threshold"], "filter": json.loads(row["filter"]),
        "min_requests": row["min_requests"], "webhook_url": row["webhook_url"], "enabled": row["enabled"],
        "state": row["state"], "last_value": row["last_value"], "last_requests": row["last_requests"],
        "last_evaluated_at": _iso(row["last_evaluated_at"]),
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
    }


def event_json(row) -> dict[str, Any]:
    return {
        "at": _iso(row["at"]), "state": row["state"], "value": row["value"], "requests": row["requests"],
        "delivery": {"result": row["delivery_result"], "attempts": row["delivery_attempts"],
                     "status": row["delivery_status"], "error": row["delivery_error"]},
    }


def _filter_json(f: AlertFilter | FilterNode) -> str:
    return json.dumps(f.model_dump(mode="json", exclude_defaults=True))


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


AlertId = RequestId  # any UUID, one message for a malformed one


def alerts_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/alerts", tags=["alerts"], responses=error_responses({
        404: "no alert rule of the caller's org has this id", 409: "the org already has the most alert rules allowed"}))

    def check_url(rule: AlertRule) -> None:
        problem = state.webhooks.url_problem(rule.webhook_url)
        if problem:
            raise _invalid("webhook_url", problem)

    async def found(row, alert_id: uuid.UUID):
        if row is None:
            raise HTTPException(404, f"alert {alert_id} not found")
        return row

    @router.post("", status_code=201, response_model=documented(CreatedAlertRule))
    async def create(rule: AlertRule, org: str = Depends(org_id)) -> dict:
        """Creates a rule; the answer's `webhook_secret` (which signs its notifications) is shown only here."""
        check_url(rule)
        secret = "whsec_" + secrets.token_urlsafe(32)
        async with state.pool.acquire() as conn, conn.transaction():
            # one org at a time: the count and the insert cannot interleave with another create
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('helicone_alert_rules:' || $1::text))", org)
            if await conn.fetchval("SELECT count(*) FROM alert_rules WHERE org_id = $1", uuid.UUID(org)) >= MAX_RULES_PER_ORG:
                raise HTTPException(409, f"an org has at most {MAX_RULES_PER_ORG} alert rules; delete one first")
            row = await conn.fetchrow(
                "INSERT INTO alert_rules(org_id, name, metric, window_seconds, comparison, threshold, filter, min_requests, "
                "webhook_url, webhook_secret, enabled) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11) "
                f"RETURNING {RULE_COLUMNS}",
                uuid.UUID(org), rule.name, rule.metric, rule.window_seconds, rule.comparison, rule.threshold,
                _filter_json(rule.filter), rule.min_requests, rule.webhook_url, secret, rule.enabled,
            )
        return {**rule_json(row), "webhook_secret": secret}

    @router.get("", response_model=documented(AlertRuleList))
    async def list_rules(org: str = Depends(org_id)) -> dict:
        rows = await state.pool.fetch(
            f"SELECT {RULE_COLUMNS} FROM alert_rules WHERE org_id = $1 ORDER BY created_at, id", uuid.UUID(org))
        return {"data": [rule_json(r) for r in rows]}

    @router.get("/{alert_id}", response_model=documented(AlertRuleState))
    async def get_rule(alert_id: AlertId, org: str = Depends(org_id)) -> dict:
        """The rule with its state (`ok`, `firing`, `resolved`), last value and when it was last evaluated."""
        row = await state.pool.fetchrow(
            f"SELECT {RULE_COLUMNS} FROM alert_rules WHERE id = $1 AND org_id = $2", alert_id, uuid.UUID(org))
        return rule_json(await found(row, alert_id))

    @router.put("/{alert_id}", response_model=documented(AlertRuleState))
    async def replace_rule(alert_id: AlertId, rule: AlertRule, org: str = Depends(org_id)) -> dict:
        """Replaces the rule's definition; its state, history and webhook secret are kept."""
        check_url(rule)
        row = await state.pool.fetchrow(
            "UPDATE alert_rules SET name = $3, metric = $4, window_seconds = $5, comparison = $6, threshold = $7, "
            "filter = $8::jsonb, min_requests = $9, webhook_url = $10, enabled = $11, updated_at = now(), "
            f"next_evaluation_at = now() WHERE id = $1 AND org_id = $2 RETURNING {RULE_COLUMNS}",
            alert_id, uuid.UUID(org), rule.name, rule.metric, rule.window_seconds, rule.comparison, rule.threshold,
            _filter_json(rule.filter), rule.min_requests, rule.webhook_url, rule.enabled,
        )
        return rule_json(await found(row, alert_id))

    @router.delete("/{alert_id}", status_code=204)
    async def delete_rule(alert_id: AlertId, org: str = Depends(org_id)) -> Response:
        """Deletes the rule and its history."""
        deleted = await state.pool.fetchval(
            "DELETE FROM alert_rules WHERE id = $1 AND org_id = $2 RETURNING id", alert_id, uuid.UUID(org))
        await found(deleted, alert_id)
        return Response(status_code=204)

    @router.get("/{alert_id}/history", response_model=documented(AlertHistory))
    async def history(alert_id: AlertId, org: str = Depends(org_id),
                      limit: int = Query(100, ge=1, le=MAX_HISTORY, description="newest first, at most this many")) -> dict:
        """The rule's transitions, newest first: when, to which state, the value, and how the notification went."""
        await found(await state.pool.fetchval(
            "SELECT id FROM alert_rules WHERE id = $1 AND org_id = $2", alert_id, uuid.UUID(org)), alert_id)
        rows = await state.pool.fetch(
            "SELECT at, state, value, requests, delivery_result, delivery_attempts, delivery_status, delivery_error "
            "FROM alert_events WHERE rule_id = $1 ORDER BY id DESC LIMIT $2", alert_id, limit)
        return {"data": [event_json(r) for r in rows]}

    return router
