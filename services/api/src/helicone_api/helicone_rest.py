"""Helicone's REST routes that a script written against api.helicone.ai calls and this api had no counterpart for
(Helicone/helicone valhalla/jawn/src/controllers/public/{userController,sessionController,propertyController}.ts and
managers/{UserManager,SessionManager}.ts), answered in Helicone's shapes: `{"data": ..., "error": null}`.

Their filters are the api's (filters.py: "all", the flat filter or the tree with Helicone's request_response_rmt
leaf) and their SQL is insights.py's, scoped to the caller's org; an error is the api's own (a 422 naming the field).
Helicone's aggregate leaves (users_view, sessions_request_response_rmt) are a 422 naming them, as on every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .filters import AnyFilter, FilterNode
from .insights import (
    PropertyKey,
    PropertyValuesQuery,
    TimeFilterMs,
    TimeFilterSeconds,
    TimeRange,
    TimezoneMinutes,
    UserQuery,
    _conditions,
    _empty_is_none,
    _iso,
    _session_conditions,
    distribution_sql,
    histogram_json,
    one_time_range,
    org_has_users_sql,
    property_keys_sql,
    property_values_sql,
    puts_sql,
    session_names_sql,
    user_count_sql,
    user_list_sql,
)
from .models import Answer, FilterText, HeliconeEnvelope, RequestFilter, documented

# Helicone's pSize: the quantile up to which values are kept in a distribution (from 1 - it too with useInterquartile)
P_SIZES = {"p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99, "p99.9": 0.999}
PSize = Literal[tuple(P_SIZES)]  # type: ignore[valid-type]
MAX_SESSION_NAMES = 1000
MAX_PROPERTY_SEARCH = 25  # values a property search answers, as Helicone's
# Helicone's user metrics sort (SortLeafUsers) -> the user list's (insights.USER_SORTS and USER_ORDER)
USER_METRIC_SORTS = {
    "id": "user_id", "user_id": "user_id", "active_for": "active_days", "first_active": "first_seen",
    "last_active": "last_seen", "total_requests": "requests", "average_requests_per_day_active": "requests_per_active_day",
    "average_tokens_per_request": "tokens_per_request", "total_prompt_tokens": "prompt_tokens",
    "total_completion_tokens": "completion_tokens", "cost": "cost_usd",
}
NameText = Annotated[FilterText | None, BeforeValidator(_empty_is_none)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SessionView(_Strict):
    """Helicone's SessionMetricsQueryParams / SessionNameQueryParams: the requests of sessions that it counts."""

    filter: AnyFilter = Field(default_factory=RequestFilter)
    name_contains: NameText = Field(None, alias="nameContains", description='only requests whose session name holds this '
                                                                           'text (any case); "" or absent: every session')
    time_filter: TimeFilterMs | None = Field(None, alias="timeFilter", description="only the requests strictly between its "
                                                                                  "two Unix-millisecond times")
    timezone_difference: TimezoneMinutes = Field(None, alias="timezoneDifference")
    p_size: PSize = Field("p75", alias="pSize", description="metrics: the sessions kept in each histogram are those up to "
                                                            "this quantile of its value")
    use_interquartile: bool = Field(False, alias="useInterquartile", description="metrics: and from the 1 - pSize quantile on")

    _one_time_range = field_validator("time_filter")(one_time_range)

    @model_validator(mode="after")
    def _time_filter_as_filter(self) -> _SessionView:
        if self.time_filter is not None:
            self.filter = self.time_filter.narrow(self.filter)
        return self

    def conditions(self, org: str) -> tuple[list[str], dict[str, Any]]:
        return _session_conditions(org, self.filter, name_contains=self.name_contains)


class SessionMetricsQuery(_SessionView):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"nameContains": "", "timezoneDifference": 0, "pSize": "p95", "useInterquartile": False,
         "timeFilter": {"startTimeUnixMs": 1772323200000, "endTimeUnixMs": 1772928000000}, "filter": "all"}]})


class SessionNamesQuery(_SessionView):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"nameContains": "check", "timezoneDifference": 0, "filter": "all"}]})

    limit: int = Field(100, ge=1, le=MAX_SESSION_NAMES, description="at most this many names, last used first")


class UserMetricsOverviewQuery(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"filter": "all", "pSize": "p95", "useInterquartile": False}]})

    filter: AnyFilter = Field(default_factory=RequestFilter)
    p_size: PSize = Field("p75", alias="pSize", description="the users kept in each histogram are those up to this quantile")
    use_interquartile: bool = Field(False, alias="useInterquartile", description="and from the 1 - pSize quantile on")


def _user_sort(value: Any) -> Any:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"must name one field ({', '.join(USER_METRIC_SORTS)}): {{\"last_active\": \"desc\"}}")
    [(name, direction)] = value.items()
    if name not in USER_METRIC_SORTS:
        raise ValueError(f"cannot sort users on {str(name)[:64]!r} here; fields: {', '.join(USER_METRIC_SORTS)}")
    if direction not in ("asc", "desc"):
        raise ValueError(f'{name} must be "asc" or "desc"')
    return (USER_METRIC_SORTS[name], direction)


class UserMetricsQuery(_Strict):
    """Helicone's UserMetricsQueryParams."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"filter": "all", "offset": 0, "limit": 10, "sort": {"cost": "desc"},
         "timeFilter": {"startTimeUnixSeconds": 1772323200, "endTimeUnixSeconds": 1772928000}}]})

    filter: AnyFilter = Field(default_factory=RequestFilter)
    offset: int = Field(0, ge=0, le=1_000_000)
    limit: int = Field(100, ge=1, le=1000)
    time_filter: TimeFilterSeconds | None = Field(None, alias="timeFilter", description="only the requests strictly between its "
                                                                                       "two Unix-second times")
    time_zone_difference_minutes: TimezoneMinutes = Field(None, alias="timeZoneDifferenceMinutes")
    sort: Annotated[tuple[str, str] | None, BeforeValidator(_user_sort), WithJsonSchema({
        "type": "object", "maxProperties": 1, "additionalProperties": False,
        "properties": {f: {"enum": ["asc", "desc"]} for f in USER_METRIC_SORTS},
        "description": 'Helicone\'s one-field object, such as {"cost": "desc"}; {} or absent: last_active desc'})] = None

    _one_time_range = field_validator("time_filter")(one_time_range)

    @model_validator(mode="after")
    def _time_filter_as_filter(self) -> UserMetricsQuery:
        if self.time_filter is not None:
            self.filter = self.time_filter.narrow(self.filter)
        return self


class PropertyListQuery(_Strict):
    """Helicone's body is an empty object."""


class PropertySearchQuery(_Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"searchTerm": "pro"}]})

    search_term: FilterText = Field(alias="searchTerm", description='a substring of the value, any case; "": any value')


# ---- answers ---------------------------------------------------------------------------------------


USER_METRIC_EXAMPLE = {
    "id": "alice", "user_id": "alice", "active_for": 5, "first_active": "2026-03-01T08:12:00.000Z",
    "last_active": "2026-03-07T17:45:10.250Z", "total_requests": 42, "average_requests_per_day_active": 8.4,
    "average_tokens_per_request": 366.7, "total_completion_tokens": 3400, "total_prompt_tokens": 12000, "cost": 0.31,
}


class UserMetric(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [USER_METRIC_EXAMPLE]})

    id: str = Field(description="the user id")
    user_id: str
    active_for: int = Field(description="distinct UTC dates with a request")
    first_active: str
    last_active: str
    total_requests: int
    average_requests_per_day_active: float
    average_tokens_per_request: float = Field(description="(prompt + completion tokens) / requests")
    total_completion_tokens: int
    total_prompt_tokens: int
    cost: float = Field(description="USD")


class UserMetricsPage(Answer):
    users: list[UserMetric]
    count: int = Field(description="the users matching, on every page")
    hasUsers: bool = Field(description="whether the org has logged any request with a user id")  # Helicone's name


class UserMetricsResult(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"data": {"users": [USER_METRIC_EXAMPLE], "count": 1, "hasUsers": True}, "error": None}]})

    data: UserMetricsPage


class HistogramRow(Answer):
    range_start: str = Field(description="the slice's lower end, as text (Helicone's)")
    range_end: str
    value: int = Field(description="how many sessions (users) fall in it")


class AverageRow(Answer):
    average: float | None = Field(description="null without sessions")


class SessionAverages(Answer):
    session_count: list[AverageRow]
    session_duration: list[AverageRow]
    session_cost: list[AverageRow]


class SessionMetrics(Answer):
    session_count: list[HistogramRow] = Field(description="requests per session")
    session_duration: list[HistogramRow] = Field(description="seconds from a session's first request to its last")
    session_cost: list[HistogramRow] = Field(description="USD per session")
    average: SessionAverages = Field(description="the mean of each over every session (none left out)")


HISTOGRAM_EXAMPLE = [{"range_start": "1", "range_end": "1.9", "value": 12}, {"range_start": "8.2", "range_end": "10", "value": 3}]


class SessionMetricsResult(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": {
        "session_count": HISTOGRAM_EXAMPLE, "session_duration": [{"range_start": "0", "range_end": "4.5", "value": 15}],
        "session_cost": [{"range_start": "0.001", "range_end": "0.04", "value": 15}],
        "average": {"session_count": [{"average": 3.2}], "session_duration": [{"average": 2.9}],
                    "session_cost": [{"average": 0.012}]}}, "error": None}]})

    data: SessionMetrics


class UserMetricsOverview(Answer):
    request_count: list[HistogramRow] = Field(description="requests per user")
    user_cost: list[HistogramRow] = Field(description="USD per user")


class UserMetricsOverviewResult(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": {
        "request_count": HISTOGRAM_EXAMPLE, "user_cost": [{"range_start": "0", "range_end": "0.3", "value": 15}]}, "error": None}]})

    data: UserMetricsOverview


SESSION_NAME_EXAMPLE = {"name": "Checkout", "created_at": "2026-03-01T12:00:00.000Z", "first_used": "2026-03-01T12:00:00.000Z",
                        "last_used": "2026-03-07T09:30:00.000Z", "session_count": 14, "avg_latency": 812.5, "total_cost": 0.42}


class SessionName(Answer):
    name: str = Field(description='Helicone-Session-Name; "" for sessions without one')
    created_at: str = Field(description="its first request (first_used)")
    first_used: str
    last_used: str
    session_count: int
    avg_latency: float = Field(description="ms, over its requests")
    total_cost: float = Field(description="USD")


class SessionNamesResult(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [SESSION_NAME_EXAMPLE], "error": None}]})

    data: list[SessionName] = Field(description="last used first")


class PropertyName(Answer):
    property: str = Field(description="a custom property's name, as stored (lower case)")


class PropertyNamesResult(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{"property": "env"}, {"property": "team"}], "error": None}]})

    data: list[PropertyName] = Field(description="most requests first")


class PropertyValuesResult(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": ["prod", "preprod"], "error": None}]})

    data: list[str] = Field(description=f"at most {MAX_PROPERTY_SEARCH}, most requests first")


# ---- routes ----------------------------------------------------------------------------------------


def user_metric_json(row: dict[str, Any]) -> dict[str, Any]:
    requests, days = int(row["requests"]), int(row["active_days"])
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
    return {"id": row["user_id"], "user_id": row["user_id"], "active_for": days, "first_active": _iso(row["first_seen"]),
            "last_active": _iso(row["last_seen"]), "total_requests": requests,
            "average_requests_per_day_active": requests / days if days else 0.0,
            "average_tokens_per_request": (prompt + completion) / requests if requests else 0.0,
            "total_completion_tokens": completion, "total_prompt_tokens": prompt, "cost": float(row["cost_usd"])}


def _average(row: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [{"average": float(row[f"{name}_avg"]) if int(row["n"]) else None}]


SESSION_METRICS = {
    "session_count": "count()",
    "session_duration": "(toUnixTimestamp64Milli(max(request_created_at)) - toUnixTimestamp64Milli(min(request_created_at))) / 1000",
    "session_cost": "sum(cost_usd)",
}
USER_METRICS = {"request_count": "count()", "user_cost": "sum(cost_usd)"}


def helicone_rest_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["helicone"])

    async def run(endpoint: str, sql_params: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        with state.m_query_seconds.labels(endpoint).time():
            rows = await state.analytics.query(*sql_params)
        state.m_queries.labels(endpoint, "ok").inc()
        return rows

    @router.post("/user/metrics/query", response_model=documented(UserMetricsResult))
    async def user_metrics(q: UserMetricsQuery, org: str = Depends(org_id)) -> dict:
        """Helicone's user metrics: a page of users with requests matching the filter, their totals over those
        requests, last active first unless `sort` says otherwise; `count` is every page's."""
        users = UserQuery(filter=q.filter, limit=q.limit, offset=q.offset)
        rows = await run("user_metrics", user_list_sql(org, users, order=q.sort))
        [count] = await run("user_metrics", user_count_sql(org, users))
        [has] = await run("user_metrics", org_has_users_sql(org))
        return {"data": {"users": [user_metric_json(r) for r in rows], "count": int(count["n"]), "hasUsers": bool(int(has["n"]))},
                "error": None}

    @router.post("/user/metrics-overview/query", response_model=documented(UserMetricsOverviewResult))
    async def user_metrics_overview(q: UserMetricsOverviewQuery, org: str = Depends(org_id)) -> dict:
        """Helicone's user overview: histograms of requests and cost per user (10 equal slices between the
        smallest and the pSize quantile, of the users with requests matching the filter)."""
        where, params, _ = _conditions(org, q.filter)
        [row] = await run("user_overview", distribution_sql((where, params), "user_id", USER_METRICS,
                                                             P_SIZES[q.p_size], q.use_interquartile))
        return {"data": {name: histogram_json(row, name) for name in USER_METRICS}, "error": None}

    @router.post("/session/metrics/query", response_model=documented(SessionMetricsResult))
    async def session_metrics(q: SessionMetricsQuery, org: str = Depends(org_id)) -> dict:
        """Helicone's session metrics: histograms of requests, duration (first to last request, seconds) and cost per
        session (10 equal slices between the smallest and the pSize quantile) and the mean of each."""
        [row] = await run("session_metrics", distribution_sql(q.conditions(org), "session_id", SESSION_METRICS,
                                                               P_SIZES[q.p_size], q.use_interquartile))
        return {"data": {**{name: histogram_json(row, name) for name in SESSION_METRICS},
                         "average": {name: _average(row, name) for name in SESSION_METRICS}}, "error": None}

    @router.post("/session/name/query", response_model=documented(SessionNamesResult))
    async def session_names(q: SessionNamesQuery, org: str = Depends(org_id)) -> dict:
        """Helicone's session names: per Helicone-Session-Name of the requests matching, its sessions, first and last
        request, mean latency and cost; last used first."""
        rows = await run("session_names", session_names_sql(q.conditions(org), q.limit))
        return {"data": [{"name": r["name"], "created_at": _iso(r["first_used"]), "first_used": _iso(r["first_used"]),
                          "last_used": _iso(r["last_used"]), "session_count": int(r["session_count"]),
                          "avg_latency": float(r["avg_latency"]), "total_cost": float(r["total_cost"])} for r in rows],
                "error": None}

    @router.post("/property/query", response_model=documented(PropertyNamesResult))
    async def property_names(q: PropertyListQuery | None = None, org: str = Depends(org_id)) -> dict:
        """Helicone's property list: every custom property name the org's requests have, most requests first."""
        put = bool(int((await run("property_names", puts_sql(org, None, None)))[0]["n"]))
        rows = await run("property_names", property_keys_sql(org, TimeRange(), put))
        return {"data": [{"property": r["key"]} for r in rows], "error": None}

    @router.post("/property/{key:path}/search", response_model=documented(PropertyValuesResult))
    async def property_search(key: PropertyKey, q: PropertySearchQuery, org: str = Depends(org_id)) -> dict:
        """Helicone's property search: the property's values holding `searchTerm` (any case), most requests first."""
        name = key.lower()
        try:
            condition = FilterNode(properties={name: {"contains": q.search_term}})
        except ValidationError as exc:  # a name longer than a filter's property name (so than any property's): the key's 422
            raise RequestValidationError([{"loc": ("path", "key"), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]) from None
        # a tree filter: read from request_log's rows, with the values put on them
        values = PropertyValuesQuery(filter=condition, limit=MAX_PROPERTY_SEARCH)
        rows = await run("property_search", property_values_sql(org, name, values))
        return {"data": [r["value"] for r in rows], "error": None}

    return router

