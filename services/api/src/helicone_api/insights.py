"""Dashboard analytics over `request_log`: sessions (and their trace tree), users, custom properties,
time series, breakdowns and summary tiles.

Same SQL text on chDB and a ClickHouse server, server-side parameters only; every query is scoped to
the caller's org, and every caller filter becomes SQL in one place (`_conditions`, through
queries.where_sql). Time-series buckets are cut in the caller's IANA time zone by ClickHouse itself
(half-hour offsets, 23- and 25-hour days) and zero-filled with `WITH FILL`.
A custom property is read as the request shows it, with the values put on it through the api
(queries.property_sql, properties.py).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import zoneinfo
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from helicone_core.analytics import AGGREGATES, GRAINS, PROJECTION_SETTINGS, SESSION_USERS, TIME_ORDER_SETTINGS
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .explorer import EXAMPLE_ROW, RequestRow, requests_json
from .filters import AnyFilter, FilterNode, filter_sql, narrowed
from .models import (
    MAX_FILTER_CHARS,
    Answer,
    FilterText,
    HeliconeEnvelope,
    RequestFilter,
    _ch_range,
    _utf8,
    documented,
    error_responses,
)
from .queries import COLUMNS, SETTINGS, _ch_time, _iso, has_property_sql, property_sql

# Bounds that keep one answer small: buckets of a time series, its groups (the rest is "other"),
# the requests one session's tree carries, the users listed per session.
MAX_BUCKETS = 2000
MAX_GROUPS = 50
MAX_SESSION_REQUESTS = 5000
MAX_SESSION_USERS = SESSION_USERS
MAX_USER_IDS = 100  # users one user list may name (Helicone's userIds)
# Aggregations read request_log without FINAL, so that ClickHouse can answer them from its projections
# (helicone_core.analytics.REQUEST_LOG_PROJECTIONS); see _conditions for when it can.
AGG_SETTINGS = f"{SETTINGS}, {PROJECTION_SETTINGS}"
BUCKET_SECONDS = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
# A bucket's key from a DateTime in the caller's zone ({t}), the WITH FILL step between keys, and the
# bucket's start from its key ({k}). Days and weeks are keyed and filled by local Date (23- and 25-hour
# days alike): WITH FILL stepping a DateTime by a DAY lands an hour off where a zone skips midnight
# (Azores, Cairo, Santiago), and added a bucket a day from there on.
BUCKET_SQL = {
    "minute": ("toStartOfMinute({t})", "INTERVAL 1 MINUTE", "{k}"),
    "hour": ("toStartOfHour({t})", "INTERVAL 1 HOUR", "{k}"),
    "day": ("toDate({t})", "INTERVAL 1 DAY", "toDateTime({k}, {{tz:String}})"),
    "week": ("toMonday({t})", "INTERVAL 1 WEEK", "toDateTime({k}, {{tz:String}})"),  # weeks start on Monday
}
GROUP_BY_FORM = '"model", "provider", "user" or "property:<key>"'
GROUP_COLUMNS = {"model": "model", "provider": "provider", "user": "user_id"}
PROPERTY_GROUP = re.compile(r"^property:(.+)$", re.DOTALL)
TZ_FORM = "an IANA time zone name such as UTC, Europe/Berlin or Asia/Kolkata"

SESSION_SORTS = ("requests", "cost_usd", "total_tokens", "duration_ms", "first_seen", "last_seen", "errors")
USER_SORTS = ("requests", "cost_usd", "total_tokens", "active_days", "first_seen", "last_seen")

SearchText = Annotated[str, Field(min_length=1, max_length=256), BeforeValidator(_utf8)]
PropertyKey = Annotated[FilterText, Path(min_length=1, description="a property name (any case)")]

FILTER_EXAMPLE = {"start": "2026-03-01T00:00:00Z", "end": "2026-03-08T00:00:00Z", "model": "gpt-4o-mini"}


class Sort(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str
    direction: Literal["asc", "desc"] = "desc"


class SessionSort(Sort):
    field: Literal[SESSION_SORTS] = "last_seen"  # type: ignore[valid-type]


class UserSort(Sort):
    field: Literal[USER_SORTS] = "last_seen"  # type: ignore[valid-type]


class _ListQuery(BaseModel):
    """A page of sessions or users with requests matching the filter."""

    model_config = ConfigDict(extra="forbid")

    filter: AnyFilter = Field(default_factory=RequestFilter)
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


UnixMs = Annotated[dt.datetime, WithJsonSchema({"type": "number", "description": "Unix milliseconds", "examples": [1772366400000]})]
UnixSeconds = Annotated[dt.datetime, WithJsonSchema({"type": "number", "description": "Unix seconds", "examples": [1772366400]})]


class _UnixTimeFilter(BaseModel):
    """Helicone's `timeFilter`: the requests strictly after start and strictly before end, in Unix time units."""

    model_config = ConfigDict(extra="forbid")
    unit: ClassVar[str]
    unit_ms: ClassVar[int]
    example: ClassVar[int]

    @field_validator("start", "end", mode="before", check_fields=False)
    @classmethod
    def _unix_time(cls, v: Any) -> dt.datetime:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"must be a time in Unix {cls.unit}, such as {cls.example}")
        try:
            t = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=math.floor(v * cls.unit_ms))
        except OverflowError:
            t = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        return _ch_range(t)

    @model_validator(mode="after")
    def _after_start(self) -> _UnixTimeFilter:
        if self.end <= self.start:
            names = [self.model_fields[f].alias for f in ("end", "start")]
            raise ValueError(f"{names[0]} must be after {names[1]}")
        return self

    def narrow(self, f: RequestFilter | FilterNode) -> RequestFilter | FilterNode:
        """`f` with this range: a flat filter's start/end (after start is from start's next millisecond, the stored
        precision), else a tree's created_at condition."""
        return narrowed(f, {"start": self.start + dt.timedelta(milliseconds=1), "end": self.end},
                        {"created_at": {"gt": self.start, "lt": self.end}})


class TimeFilterMs(_UnixTimeFilter):
    """Helicone's session `timeFilter`: the requests strictly after start and strictly before end (Unix milliseconds)."""

    unit, unit_ms, example = "milliseconds", 1, 1772366400000
    start: UnixMs = Field(alias="startTimeUnixMs")
    end: UnixMs = Field(alias="endTimeUnixMs")


class TimeFilterSeconds(_UnixTimeFilter):
    """Helicone's user metrics `timeFilter`: the requests strictly after start and strictly before end (Unix seconds)."""

    unit, unit_ms, example = "seconds", 1000, 1772366400
    start: UnixSeconds = Field(alias="startTimeUnixSeconds")
    end: UnixSeconds = Field(alias="endTimeUnixSeconds")


def one_time_range(v: _UnixTimeFilter | None, info: ValidationInfo) -> _UnixTimeFilter | None:
    """A `timeFilter` validator: with a flat filter's own start/end it is a 422 (two ranges)."""
    flat = info.data.get("filter")
    if v is not None and isinstance(flat, RequestFilter) and (flat.start is not None or flat.end is not None):
        raise ValueError("and filter.start/end are two time ranges: give one of them")
    return v


# Helicone's time zone offsets (timezoneDifference, timeZoneDifferenceMinutes)
TimezoneMinutes = Annotated[int | None, Field(ge=-1440, le=1440, description="Helicone's; read and not used: times are answered in UTC")]


def _empty_is_none(v: Any) -> Any:
    return None if v == "" else v  # Helicone's bodies always carry a search, "" for none


class SessionQuery(_ListQuery):
    """Also reads Helicone's SessionQueryParams (valhalla/jawn/src/controllers/public/sessionController.ts in
    Helicone/helicone): `timeFilter` and `nameEquals` narrow the requests counted, as its SessionManager does."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"filter": FILTER_EXAMPLE, "search": "checkout", "sort": {"field": "cost_usd", "direction": "desc"}, "limit": 50},
        {"search": "", "timeFilter": {"startTimeUnixMs": 1772323200000, "endTimeUnixMs": 1772928000000},
         "timezoneDifference": 0, "filter": "all"}]})

    search: Annotated[SearchText | None, BeforeValidator(_empty_is_none)] = Field(
        None, description='a substring of the session id or name (any case); "" for none')
    sort: SessionSort = Field(default_factory=SessionSort)
    time_filter: TimeFilterMs | None = Field(None, alias="timeFilter", description="Helicone's: only the requests strictly "
                                             "between its two Unix-millisecond times (a flat filter's start/end is the other way)")
    name_equals: FilterText | None = Field(None, alias="nameEquals",
                                           description="Helicone's: only the requests of this session name (Helicone-Session-Name)")
    timezone_difference: TimezoneMinutes = Field(None, alias="timezoneDifference")

    _one_time_range = field_validator("time_filter")(one_time_range)

    @model_validator(mode="after")
    def _time_filter_as_filter(self) -> SessionQuery:
        if self.time_filter is not None:
            self.filter = self.time_filter.narrow(self.filter)
        return self


class UserQuery(_ListQuery):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"filter": FILTER_EXAMPLE, "search": "alice", "sort": {"field": "requests", "direction": "desc"}, "limit": 50}]})

    search: SearchText | None = Field(None, description="a substring of the user id (any case)")
    sort: UserSort = Field(default_factory=UserSort)
    user_ids: list[FilterText] | None = Field(
        None, alias="userIds", max_length=MAX_USER_IDS,
        description=f"Helicone's (UserQueryParams): only these users, at most {MAX_USER_IDS}; [] or absent: every user")


class PropertyValuesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"filter": FILTER_EXAMPLE, "limit": 20}]})

    filter: AnyFilter = Field(default_factory=RequestFilter)
    limit: int = Field(100, ge=1, le=1000)


class TimeRange(BaseModel):
    """start/end in the query string of the GET endpoints."""

    model_config = ConfigDict(extra="forbid")

    start: dt.datetime | None = Field(None, description="created at or after (ISO 8601; naive times are UTC)")
    end: dt.datetime | None = Field(None, description="created before")

    @field_validator("start", "end")
    @classmethod
    def _stored_range(cls, v: dt.datetime | None) -> dt.datetime | None:
        return _ch_range(v)

    @field_validator("end")
    @classmethod
    def _after_start(cls, v: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        start = info.data.get("start")
        if v is not None and start is not None and v <= start:
            raise ValueError("must be after start")
        return v


class BreakdownQuery(TimeRange):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"filter": {"provider": "openai"}, "start": "2026-03-01T00:00:00Z", "end": "2026-03-08T00:00:00Z", "by": "model"}]})

    filter: AnyFilter = Field(default_factory=RequestFilter)
    by: Literal["model", "provider"]
    limit: int = Field(100, ge=1, le=1000)


# The answers' shapes, as the *_json functions below build them.
class Totals(Answer):
    requests: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


SESSION_EXAMPLE = {
    "session_id": "sess-checkout-1", "session_name": "Checkout", "requests": 3, "cost_usd": 0.0042, "prompt_tokens": 900,
    "completion_tokens": 240, "total_tokens": 1140, "duration_ms": 5210, "first_seen": "2026-03-01T12:00:00.000Z",
    "last_seen": "2026-03-01T12:00:04.100Z", "errors": 0, "users": ["alice"],
    "created_at": "2026-03-01T12:00:00.000Z", "latest_request_created_at": "2026-03-01T12:00:04.100Z", "total_cost": 0.0042,
    "total_requests": 3, "avg_latency": 1210.0, "user_ids": ["alice"],
}


class SessionTotals(Totals):
    """A session's totals, under this api's names and, next to them, those of Helicone's SessionResult
    (valhalla/jawn/src/managers/SessionManager.ts) that it lacks (same values)."""

    model_config = ConfigDict(json_schema_extra={"examples": [SESSION_EXAMPLE]})

    session_id: str
    session_name: str | None = Field(description="the newest request's Helicone-Session-Name; null when none had one "
                                                 "(Helicone's is \"\")")
    duration_ms: int = Field(description="first request to last response")
    first_seen: str
    last_seen: str
    errors: int
    users: list[str] = Field(description=f"the session's user ids, sorted (at most {MAX_SESSION_USERS})")
    created_at: str = Field(description="Helicone's: first_seen")
    latest_request_created_at: str = Field(description="Helicone's: last_seen")
    total_cost: float = Field(description="Helicone's: cost_usd")
    total_requests: int = Field(description="Helicone's: requests")
    avg_latency: float = Field(description="Helicone's: the mean latency of its requests, ms")
    user_ids: list[str] = Field(description="Helicone's: users")


class SessionPage(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"data": [SESSION_EXAMPLE], "limit": 100, "offset": 0, "error": None}]})

    data: list[SessionTotals]
    limit: int
    offset: int


class SessionNode(Answer):
    """A node of a session's trace tree: a Helicone-Session-Path prefix."""

    path: str = Field(description='"/" for the root')
    name: str = Field(description="the path's last segment; \"\" for the root")
    requests: list[RequestRow] = Field(description="the requests logged exactly at this path, oldest first")
    children: list[SessionNode]
    cost_usd: float = Field(description="over the node's subtree")
    duration_ms: int = Field(description="over the node's subtree: first request to last response")


class SessionDetail(SessionTotals):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **SESSION_EXAMPLE, "requests": 1, "total_requests": 1,
        "tree": {"path": "/", "name": "", "requests": [], "cost_usd": 0.0007, "duration_ms": 1250,
                 "children": [{"path": "/chat", "name": "chat", "requests": [EXAMPLE_ROW],
                               "children": [], "cost_usd": 0.0007, "duration_ms": 1250}]},
        "requests_truncated": False}]})

    tree: SessionNode
    requests_truncated: bool = Field(description=f"the session has more than the {MAX_SESSION_REQUESTS} requests the tree holds")


USER_EXAMPLE = {"user_id": "alice", "requests": 42, "cost_usd": 0.31, "prompt_tokens": 12000, "completion_tokens": 3400,
                "total_tokens": 15400, "active_days": 5, "first_seen": "2026-03-01T08:12:00.000Z",
                "last_seen": "2026-03-07T17:45:10.250Z", "count": 42, "cost": 0.31}


class UserTotals(Totals):
    """A user's totals, with the names of Helicone's POST /v1/user/query rows ({count, prompt_tokens,
    completion_tokens, user_id, cost}: userController.ts) that this api's lack (same values)."""

    model_config = ConfigDict(json_schema_extra={"examples": [USER_EXAMPLE]})

    user_id: str
    active_days: int = Field(description="distinct UTC dates with a request")
    first_seen: str
    last_seen: str
    count: int = Field(description="Helicone's: requests")
    cost: float = Field(description="Helicone's: cost_usd")


class UserPage(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"data": [USER_EXAMPLE], "limit": 100, "offset": 0, "error": None}]})

    data: list[UserTotals]
    limit: int
    offset: int


class PropertyKeyCount(Answer):
    key: str
    requests: int


class PropertyKeyList(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{"key": "env", "requests": 1200}, {"key": "team", "requests": 300}]}]})

    data: list[PropertyKeyCount] = Field(description="most requests first")


class Quantiles(Answer):
    """DDSketch estimates (within 1 %); null without data."""

    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


QUANTILES_EXAMPLE = {"p50": 640.2, "p90": 1510.0, "p95": 1890.7, "p99": 3012.4}


class PropertyValueStats(Answer):
    value: str
    requests: int
    cost_usd: float
    errors: int
    error_rate: float
    avg_latency_ms: float | None
    latency_ms: Quantiles
    p95_latency_ms: float | None


class PropertyValueList(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "value": "prod", "requests": 900, "cost_usd": 2.5, "errors": 9, "error_rate": 0.01, "avg_latency_ms": 812.3,
        "latency_ms": QUANTILES_EXAMPLE, "p95_latency_ms": 1890.7}]}]})

    data: list[PropertyValueStats] = Field(description="most requests first")


class TimeseriesPoint(Answer):
    bucket: str = Field(description="the bucket's start in the query's time zone, e.g. 2026-03-01T00:00:00+05:30")
    group: str | None = Field(description='the group_by value; "other" for the groups beyond top_groups; null without group_by')
    is_other: bool
    requests: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    errors: int
    error_rate: float
    latency_ms: Quantiles
    ttft_ms: Quantiles = Field(description="time to first token")


class Timeseries(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "bucket": "2026-03-01T00:00:00+01:00", "group": "gpt-4o", "is_other": False, "requests": 120, "cost_usd": 0.84,
        "prompt_tokens": 36000, "completion_tokens": 9000, "errors": 3, "error_rate": 0.025, "latency_ms": QUANTILES_EXAMPLE,
        "ttft_ms": {"p50": 210.0, "p90": 480.5, "p95": 610.0, "p99": 990.1}}]}]})

    data: list[TimeseriesPoint] = Field(description="per group, its buckets in time order, zero-filled")


class BreakdownRow(Answer):
    key: str = Field(description="the model or provider")
    requests: int
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    error_rate: float
    p95_latency_ms: float | None


class Breakdown(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{
        "key": "gpt-4o", "requests": 120, "cost_usd": 0.84, "prompt_tokens": 36000, "completion_tokens": 9000,
        "error_rate": 0.025, "p95_latency_ms": 1890.7}]}]})

    data: list[BreakdownRow] = Field(description="most requests first")


class Summary(Totals):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "requests": 1200, "cost_usd": 8.4, "prompt_tokens": 360000, "completion_tokens": 90000, "total_tokens": 450000,
        "errors": 30, "error_rate": 0.025, "users": 85, "sessions": 240, "avg_latency_ms": 812.3, "p95_latency_ms": 1890.7,
        "cache_hits": 40, "cache_saved_usd": 0.21}]})

    errors: int
    error_rate: float
    users: int
    sessions: int
    avg_latency_ms: float | None = Field(description="null without requests")
    p95_latency_ms: float | None = Field(description="null without requests")
    cache_hits: int
    cache_saved_usd: float


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _group_column(group_by: str | None) -> tuple[str, dict[str, Any]]:
    """The SQL of a group_by value and its parameters ('' and none without one)."""
    if group_by is None:
        return "''", {}
    if group_by in GROUP_COLUMNS:
        return GROUP_COLUMNS[group_by], {}
    return property_sql("{group_key:String}"), {"group_key": PROPERTY_GROUP.match(group_by).group(1).lower()}


# ClickHouse's DateTime (what the bucket and grain functions return) holds 1970-01-01 to 2106-02-07 06:28:15 UTC:
# past its ends they wrap or saturate. Times are stored from 1900 to 2299 (DateTime64).
DATETIME32 = (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc), dt.datetime(2106, 2, 7, 6, 28, 15, tzinfo=dt.timezone.utc))
BUCKET_RANGE = (dt.datetime(1970, 1, 8, tzinfo=dt.timezone.utc), dt.datetime(2106, 1, 31, tzinfo=dt.timezone.utc))


class TimeseriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"filter": {"provider": "openai"}, "start": "2026-03-01T00:00:00Z", "end": "2026-03-08T00:00:00Z",
         "bucket": "day", "timezone": "Europe/Berlin", "group_by": "model", "top_groups": 5}]})

    filter: AnyFilter = Field(default_factory=RequestFilter)
    start: dt.datetime = Field(description="the first bucket is the one holding start (ISO 8601; naive times are UTC)")
    end: dt.datetime = Field(description="buckets up to end (exclusive)")
    timezone: str = Field("UTC", description=TZ_FORM + "; buckets start at its midnights and hours")
    # validate_default: the default bucket is held to MAX_BUCKETS too
    bucket: Literal["minute", "hour", "day", "week"] = Field("hour", validate_default=True, description="weeks start on Monday")
    group_by: str | None = Field(None, description=f"{GROUP_BY_FORM}: one series per value")
    top_groups: int = Field(10, ge=1, le=MAX_GROUPS, description="with group_by: the groups with most requests; the rest is \"other\"")

    @field_validator("start", "end")
    @classmethod
    def _stored_range(cls, v: dt.datetime) -> dt.datetime:
        v = _ch_range(v)
        if not BUCKET_RANGE[0] <= v <= BUCKET_RANGE[1]:  # (a week's bucket, in any zone, starts inside it too)
            raise ValueError(f"series buckets lie between {BUCKET_RANGE[0]:%Y-%m-%d} and {BUCKET_RANGE[1]:%Y-%m-%d} "
                             "(ClickHouse's DateTime, which they are computed in); use the request list for other times")
        return v

    @field_validator("end")
    @classmethod
    def _after_start(cls, v: dt.datetime, info: ValidationInfo) -> dt.datetime:
        start = info.data.get("start")
        if start is not None and v <= start:
            raise ValueError("must be after start")
        return v

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        if v not in _zones():
            raise ValueError(f"must be {TZ_FORM}; {v[:64]!r} is not one")
        return v

    @field_validator("bucket")
    @classmethod
    def _few_buckets(cls, v: str, info: ValidationInfo) -> str:
        start, end = info.data.get("start"), info.data.get("end")
        if start is not None and end is not None:
            n = math.ceil((end - start).total_seconds() / BUCKET_SECONDS[v]) + 1  # +1: the first bucket starts before start
            if n > MAX_BUCKETS:
                raise ValueError(f"{n} {v} buckets between start and end; at most {MAX_BUCKETS}: use a larger bucket "
                                 "or a shorter range")
        return v

    @field_validator("group_by")
    @classmethod
    def _group_form(cls, v: str | None) -> str | None:
        if v is None or v in GROUP_COLUMNS:
            return v
        m = PROPERTY_GROUP.match(v)
        if m is None or len(m.group(1)) > MAX_FILTER_CHARS:
            raise ValueError(f"must be {GROUP_BY_FORM}")
        _utf8(m.group(1))
        return v


def _aligned(t: dt.datetime, seconds: int) -> bool:
    return t.microsecond == 0 and int(t.timestamp()) % seconds == 0


def _zone_grains(zone: str, start: dt.datetime, end: dt.datetime) -> tuple[str, ...]:
    """The time grains (coarsest first) whose UTC boundaries are boundaries of the zone's hours all
    through the range: those dividing its UTC offset, checked daily (an offset lasts months). Every
    offset since 1980 is a multiple of 15 minutes."""
    tz, t, grains = zoneinfo.ZoneInfo(zone), start, ["hour", "half_hour", "quarter_hour"]
    while t <= end + dt.timedelta(days=1) and len(grains) > 1:
        offset = tz.utcoffset(t)
        grains = [g for g in grains if not offset % dt.timedelta(seconds=GRAINS[g][1])]
        t += dt.timedelta(days=1)
    return tuple(grains)


def _conditions(org_id: str, f: RequestFilter | FilterNode, start: dt.datetime | None = None, end: dt.datetime | None = None,
                grains: tuple[str, ...] = ()) -> tuple[list[str], dict[str, Any], str | None]:
    """The one place this module turns a caller's filter (and an extra time range) into WHERE conditions,
    their parameters, and the grain the range is written on.

    The time range (the filter's and the extra one, whichever is narrower) is written on the first of
    `grains` (coarsest first: fewer pre-aggregated rows to merge; analytics.GRAINS) on whose boundaries
    both its ends fall: the very same rows, and the form that lets that projection answer; otherwise on
    request_created_at (grain None)."""
    flat = isinstance(f, RequestFilter)  # a filter tree's own time conditions stay in the tree (on the rows)
    lows = [t for t in (f.start if flat else None, start) if t is not None]
    highs = [t for t in (f.end if flat else None, end) if t is not None]
    where, params = filter_sql(org_id, f.model_copy(update={"start": None, "end": None}) if flat else f)
    low, high = (max(lows) if lows else None), (min(highs) if highs else None)
    # a grain's column is a DateTime: the same rows as the range on request_created_at only while both ends lie
    # strictly inside its span (a request of 2200 has the grain of 2106-02-07 06:28:15)
    inside = all(t is None or DATETIME32[0] < t <= DATETIME32[1] for t in (low, high))
    grain = next((g for g in grains if inside and all(t is None or _aligned(t, GRAINS[g][1]) for t in (low, high))), None)
    column = GRAINS[grain][0] if grain else "request_created_at"
    if low is not None:
        where.append(f"{column} >= {{range_start:DateTime64(3, 'UTC')}}")
        params["range_start"] = _ch_time(low)
    if high is not None:
        where.append(f"{column} < {{range_end:DateTime64(3, 'UTC')}}")
        params["range_end"] = _ch_time(high)
    return where, params, grain


def _aggregates(*names: str, prefix: str = "") -> str:
    """The named analytics.AGGREGATES, each AS its name (after prefix): the exact expressions the
    projections hold."""
    return ", ".join(f"{AGGREGATES[n]} AS {prefix}{n}" for n in names)


TOTAL_NAMES = ("requests", "cost_usd", "prompt_tokens", "completion_tokens", "total_tokens", "errors")
# The usage and cost sums every aggregate answer carries.
TOTALS = _aggregates(*TOTAL_NAMES)
# ...and the same summed again over per-day rows whose columns are named d_<name>
TOTALS_OF_DAYS = ", ".join(f"sum(d_{n}) AS {n}" for n in TOTAL_NAMES)


def _totals(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "requests": int(row["requests"]),
        "cost_usd": float(row["cost_usd"]),
        "prompt_tokens": int(row["prompt_tokens"]),
        "completion_tokens": int(row["completion_tokens"]),
        "total_tokens": int(row["total_tokens"]),
    }


def _rate(errors: int, requests: int) -> float:
    return errors / requests if requests else 0.0


def _number(value: Any) -> float | None:
    """A quantile or average, null where there was nothing to measure (ClickHouse gives null or nan)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _session_conditions(org_id: str, f: RequestFilter | FilterNode, *, name_equals: str | None = None,
                        name_contains: str | None = None, grains: tuple[str, ...] = ()) -> tuple[list[str], dict[str, Any]]:
    """The conditions on the requests a session view counts: the filter's, Helicone's nameEquals (the session name) or
    nameContains (a substring of it, any case), and a session id."""
    where, params, _ = _conditions(org_id, f, grains=grains)
    if name_equals is not None:
        where.append("session_name = {name_equals:String}")
        params["name_equals"] = name_equals
    if name_contains:
        where.append("positionCaseInsensitiveUTF8(session_name, {name_contains:String}) > 0")
        params["name_contains"] = name_contains
    where.append("session_id != ''")
    return where, params


def recent_sessions_sql(org_id: str, q: SessionQuery, rows: int, since: dt.datetime | None = None) -> tuple[str, dict[str, Any]]:
    """The sessions of the newest `rows` matching requests (from `since` on), newest first: read in time
    order from the by_time projection, so the default session list (last seen first) need not total
    every session. A recent `since` is what makes ClickHouse pick the projection (fewer marks to read)."""
    where, params = _session_conditions(org_id, q.filter, name_equals=q.name_equals)
    if since is not None:
        where.append("request_created_at >= {since:DateTime64(3, 'UTC')}")
        params["since"] = _ch_time(since)
    params["rows"] = rows
    # n: how many of the rows read each session had (their sum below `rows`: every matching request was read)
    sql = (
        f"SELECT session_id, max(request_created_at) AS seen, count() AS n FROM (SELECT session_id, request_created_at "
        f"FROM {{db}}.request_log WHERE {' AND '.join(where)} ORDER BY request_created_at DESC LIMIT {{rows:UInt32}}) "
        "GROUP BY session_id ORDER BY seen DESC, session_id " + SETTINGS + ", " + TIME_ORDER_SETTINGS
    )
    return sql, params


def session_list_sql(org_id: str, q: SessionQuery | None, session_id: str | None = None,
                     only: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    """Sessions (requests sharing a Helicone-Session-Id) with their totals; one session when session_id is
    given, these sessions when `only` is. Totals per session and UTC day first (what the sessions
    projection holds), then per session. One session's totals are read with FINAL, as its tree is
    (session_requests_sql): a log resent and not merged yet counts once there, as in /v1/request/query."""
    table = "request_log FINAL" if session_id is not None else "request_log"
    if session_id is None:
        where, params = _session_conditions(org_id, q.filter, name_equals=q.name_equals, grains=("day",))
        if only is not None:
            where.append("session_id IN {only:Array(String)}")
            params["only"] = only
    else:
        where, params = ["org_id = {org:String}", "session_id = {sid:String}", "session_id != ''"], {"org": org_id, "sid": session_id}
    having = ""
    if q is not None and q.search:
        having = ("HAVING positionCaseInsensitiveUTF8(session_id, {search:String}) > 0 "
                  "OR positionCaseInsensitiveUTF8(session_name, {search:String}) > 0 ")
        params["search"] = q.search
    sort, direction = (q.sort.field, q.sort.direction.upper()) if q is not None else ("last_seen", "DESC")
    days = (
        f"SELECT session_id, {GRAINS['day'][0]} AS day, "
        + _aggregates(*TOTAL_NAMES, "first_seen", "last_seen", "last_response", "session_name", "session_users",
                      "latency_ms_sum", prefix="d_")
        + f" FROM {{db}}.{table} WHERE {' AND '.join(where)} GROUP BY session_id, day"
    )
    sql = (
        f"SELECT session_id, argMaxIf(d_session_name, d_last_seen, d_session_name != '') AS session_name, "
        f"{TOTALS_OF_DAYS}, min(d_first_seen) AS first_seen, max(d_last_seen) AS last_seen, "
        "sum(d_latency_ms_sum) AS latency_ms_sum, "
        "toUnixTimestamp64Milli(max(d_last_response)) - toUnixTimestamp64Milli(min(d_first_seen)) AS duration_ms, "
        f"arraySlice(arraySort(arrayDistinct(arrayFlatten(groupArray(d_session_users)))), 1, {MAX_SESSION_USERS}) AS users "
        f"FROM ({days}) GROUP BY session_id {having}"
        f"ORDER BY {sort} {direction}, session_id LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}} " + AGG_SETTINGS
    )
    params["limit"] = q.limit if q is not None else 1
    params["offset"] = q.offset if q is not None else 0
    return sql, params


def session_json(row: dict[str, Any]) -> dict[str, Any]:
    """A session_list_sql row in the api's shape, with Helicone's SessionResult names next to the api's."""
    totals = _totals(row)
    first_seen, last_seen = _iso(row["first_seen"]), _iso(row["last_seen"])
    return {
        "session_id": row["session_id"],
        "session_name": row["session_name"] or None,
        **totals,
        "duration_ms": max(int(row["duration_ms"]), 0),
        "first_seen": first_seen,
        "last_seen": last_seen,
        "errors": int(row["errors"]),
        "users": row["users"],
        # Helicone's names (its session_id, session_name and token counts are the api's own)
        "created_at": first_seen,
        "latest_request_created_at": last_seen,
        "total_cost": totals["cost_usd"],
        "total_requests": totals["requests"],
        "avg_latency": int(row["latency_ms_sum"]) / totals["requests"],  # a listed session has a request
        "user_ids": row["users"],
    }


def session_requests_sql(org_id: str, session_id: str) -> tuple[str, dict[str, Any]]:
    sql = (
        f"SELECT {COLUMNS} FROM {{db}}.request_log FINAL WHERE org_id = {{org:String}} AND session_id = {{sid:String}} "
        "ORDER BY request_created_at, request_id LIMIT {limit:UInt32} " + SETTINGS
    )
    # one more than the tree carries: whether any was left out
    return sql, {"org": org_id, "sid": session_id, "limit": MAX_SESSION_REQUESTS + 1}


# The session tree's deepest level: the segments past it are one node (its name "x/y/..."), so the tree
# stays within what its JSON encoding and the dashboard nest (a 1024-character path has up to 512 segments).
MAX_TREE_DEPTH = 32


def _segments(session_path: str) -> list[str]:
    """"/a/b", "a/b/" and "/a//b" are all the node /a/b; "" and "/" the root."""
    segments = [s for s in session_path.split("/") if s]
    return segments[: MAX_TREE_DEPTH - 1] + ["/".join(segments[MAX_TREE_DEPTH - 1:])] if len(segments) > MAX_TREE_DEPTH else segments


def session_tree(rows: list[dict[str, Any]], requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The session's trace tree from Helicone-Session-Path: a node per path prefix, each with the
    requests logged exactly at its path (oldest first) and its children; cost_usd and duration_ms
    cover the node's whole subtree (duration: first request to last response)."""
    root: dict[str, Any] = {"path": "/", "name": "", "requests": [], "children": []}
    for row, req in zip(rows, requests, strict=True):
        node, segments = root, _segments(row["session_path"])
        for i, segment in enumerate(segments):
            child = next((c for c in node["children"] if c["name"] == segment), None)
            if child is None:
                child = {"path": "/" + "/".join(segments[: i + 1]), "name": segment, "requests": [], "children": []}
                node["children"].append(child)
            node = child
        node["requests"].append(req)

    def finish(node: dict[str, Any]) -> tuple[float, str | None, str | None]:
        cost = sum(r["cost_usd"] or 0.0 for r in node["requests"])
        starts = [r["created_at"] for r in node["requests"]]
        ends = [r["response_created_at"] for r in node["requests"]]
        for child in node["children"]:
            c_cost, c_start, c_end = finish(child)
            cost += c_cost
            starts += [c_start] if c_start else []
            ends += [c_end] if c_end else []
        first, last = (min(starts), max(ends)) if starts else (None, None)
        node["cost_usd"] = cost
        node["duration_ms"] = max(_ms(last) - _ms(first), 0) if first else 0
        return cost, first, last

    finish(root)
    return root


def _ms(iso: str) -> int:
    return round(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


# The user page in two steps for at most this many users up to its end (offset + limit): more, and one
# step reading every user's totals costs less than carrying their ids into the second.
USER_PAGE_TWO_STEPS = 5000
# The page's users read from the projection of small granules (analytics.PROJECTION_OPTIONS), their
# sort values (every user) from the plain one: ClickHouse would pick by marks, which favours large
# granules; named, it also skips weighing the others (~10 ms of planning measured on 10M rows).
PAGE_SETTINGS = f"{AGG_SETTINGS}, preferred_optimize_projection_name = 'users_page_v1'"
# A user's sort value read straight from the users projection (GROUP BY user_id over its per-day rows);
# active_days counts the user's (user, day) groups.
_USER_SORT_VALUE = {name: AGGREGATES[name] for name in ("requests", "cost_usd", "prompt_tokens", "completion_tokens",
                                                         "total_tokens", "first_seen", "last_seen")}
# What a user list may be ordered by beyond USER_SORTS (Helicone's user metrics sorts): a column of the per-user
# totals, or an expression of them (none of these two-step).
USER_ORDER = {"user_id": "user_id", "prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens",
              "requests_per_active_day": "requests / active_days",
              "tokens_per_request": "(prompt_tokens + completion_tokens) / requests"}


def _only_time(f: RequestFilter | FilterNode) -> bool:
    """Whether the filter is a time range alone (or nothing): what the pre-aggregated tables can answer."""
    return isinstance(f, RequestFilter) and f.model_copy(update={"start": None, "end": None}) == RequestFilter()


def _user_conditions(org_id: str, q: UserQuery) -> tuple[list[str], dict[str, Any], str | None]:
    """The conditions on the requests a user list counts: the filter's, a user id, the search and Helicone's userIds."""
    where, params, grain = _conditions(org_id, q.filter, grains=("day",))
    where.append("user_id != ''")
    if q.search:
        where.append("positionCaseInsensitiveUTF8(user_id, {search:String}) > 0")
        params["search"] = q.search
    if q.user_ids:
        where.append("user_id IN {user_ids:Array(String)}")
        params["user_ids"] = q.user_ids
    return where, params, grain


def user_list_sql(org_id: str, q: UserQuery, two_steps: bool = True,
                  order: tuple[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """Users (Helicone-User-Id) with their totals; active_days counts distinct UTC dates with a request.
    Totals per user and UTC day first (what the users projection holds), then per user. `order`: (a USER_SORTS
    or USER_ORDER field, direction) in place of the query's sort.

    A filter of a time range alone, on whole UTC days, is answered in two steps: first every user's sort
    value alone from the users projection (one aggregate read per row instead of nine), the page's users
    in order, then all the totals of just those users from users_page (their rows in small granules), in
    that order; other filters (which the projections cannot answer) read request_log's rows once."""
    where, params, grain = _user_conditions(org_id, q)
    field, direction = order or (q.sort.field, q.sort.direction)
    direction = direction.upper()
    conditions = " AND ".join(where)

    def days_of(cond: str) -> str:  # the per-(user, day) rows under a condition
        return (f"SELECT user_id, {GRAINS['day'][0]} AS day, " + _aggregates(*TOTAL_NAMES, "first_seen", "last_seen", prefix="d_")
                + f" FROM {{db}}.request_log WHERE {cond} GROUP BY user_id, day")

    columns = (f"SELECT user_id, {TOTALS_OF_DAYS}, count() AS active_days, min(d_first_seen) AS first_seen, "
               "max(d_last_seen) AS last_seen")
    params["limit"] = q.limit
    params["offset"] = q.offset
    two_steps = two_steps and (field in _USER_SORT_VALUE or field == "active_days")
    if two_steps and _only_time(q.filter) and grain == "day" and q.offset + q.limit <= USER_PAGE_TWO_STEPS:
        if field == "active_days":
            values = (f"SELECT user_id, count() AS v FROM (SELECT user_id, {GRAINS['day'][0]} AS day FROM {{db}}.request_log "
                      f"WHERE {conditions} GROUP BY user_id, day) GROUP BY user_id")
        else:
            values = f"SELECT user_id, {_USER_SORT_VALUE[field]} AS v FROM {{db}}.request_log WHERE {conditions} GROUP BY user_id"
        page = (f"(SELECT groupArray(user_id) FROM ({values} ORDER BY v {direction}, user_id "
                "LIMIT {page_end:UInt32}) SETTINGS preferred_optimize_projection_name = 'users_v1')")
        params["page_end"] = q.offset + q.limit
        sql = (
            f"WITH {page} AS page {columns} FROM ({days_of(conditions + ' AND has(page, user_id)')}) GROUP BY user_id "
            "ORDER BY indexOf(page, user_id) LIMIT {limit:UInt32} OFFSET {offset:UInt32} " + PAGE_SETTINGS
        )
        return sql, params
    sql = (
        f"{columns} FROM ({days_of(conditions)}) GROUP BY user_id "
        f"ORDER BY {USER_ORDER.get(field, field)} {direction}, user_id LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}} "
        + AGG_SETTINGS
    )
    return sql, params


def user_count_sql(org_id: str, q: UserQuery) -> tuple[str, dict[str, Any]]:
    """How many users the list has in all (every page)."""
    where, params, _ = _user_conditions(org_id, q)
    return f"SELECT uniqExact(user_id) AS n FROM {{db}}.request_log WHERE {' AND '.join(where)} " + AGG_SETTINGS, params


def org_has_users_sql(org_id: str) -> tuple[str, dict[str, Any]]:
    """Whether the org has logged a request with a user id at all (Helicone's hasUsers)."""
    return ("SELECT count() AS n FROM (SELECT 1 FROM {db}.request_log WHERE org_id = {org:String} AND user_id != '' "
            "LIMIT 1) " + SETTINGS, {"org": org_id})


def user_json(row: dict[str, Any]) -> dict[str, Any]:
    """A user_list_sql row in the api's shape, with Helicone's names (count, cost) next to the api's."""
    totals = _totals(row)
    return {"user_id": row["user_id"], **totals, "active_days": int(row["active_days"]),
            "first_seen": _iso(row["first_seen"]), "last_seen": _iso(row["last_seen"]),
            "count": totals["requests"], "cost": totals["cost_usd"]}


def puts_sql(org_id: str, start: dt.datetime | None, end: dt.datetime | None,
             key: str | None = None) -> tuple[str, dict[str, Any]]:
    """Whether any property (or the property `key`) was put on a request of the org in the range (properties.py):
    without one, the property endpoints read request_properties alone."""
    where, params, _ = _conditions(org_id, RequestFilter(), start, end)
    if key is not None:
        where.append("key = {pkey:String}")
        params["pkey"] = key
    sql = (f"SELECT count() AS n FROM (SELECT 1 FROM {{db}}.request_property_overrides WHERE {' AND '.join(where)} "
           "LIMIT 1) " + SETTINGS)
    return sql, params


def property_keys_sql(org_id: str, r: TimeRange, put: bool = False) -> tuple[str, dict[str, Any]]:
    """The keys in use, most requests first, from request_properties (its values projection over whole days);
    with `put` (puts_sql), plus each key put on a request that had not logged it."""
    where, params, _ = _conditions(org_id, RequestFilter(), r.start, r.end, grains=("day",))
    conditions = " AND ".join(where)
    counts = f"SELECT key, count() AS requests FROM {{db}}.request_properties WHERE {conditions} GROUP BY key"
    if put:
        added = (f"SELECT key, count() AS n FROM {{db}}.request_property_overrides FINAL WHERE {conditions} "
                 "AND (key, request_id) NOT IN (SELECT key, request_id FROM {db}.request_properties WHERE org_id = {org:String} "
                 "AND (key, request_id) IN (SELECT key, request_id FROM {db}.request_property_overrides WHERE org_id = {org:String})) "
                 "GROUP BY key")
        logged = f"SELECT key, count() AS n FROM {{db}}.request_properties WHERE {conditions} GROUP BY key"
        counts = f"SELECT key, sum(n) AS requests FROM ({logged} UNION ALL {added}) GROUP BY key"
    return f"{counts} ORDER BY requests DESC, key LIMIT 1000 " + AGG_SETTINGS, params


PROPERTY_VALUE_AGGREGATES = ("requests", "cost_usd", "errors", "avg_latency_ms", "latency_quantiles")


def property_values_sql(org_id: str, key: str, q: PropertyValuesQuery, put: bool = False) -> tuple[str, dict[str, Any]]:
    """The values of one property, most requests first, with their cost, errors and latency.

    A filter of a time range alone reads request_properties (the key's own rows; over whole days its
    values projection), unless the key was put on a request in the range (`put`, puts_sql); any other filter,
    or such a put, needs the request's other columns: request_log's rows, with the values put on them."""
    f = q.filter
    where, params, _ = _conditions(org_id, f, grains=("day",))
    if _only_time(f) and not put:
        table, value = "request_properties", "value"
        where.append("key = {pkey:String}")
    else:
        table, value = "request_log", property_sql("{pkey:String}")
        where.append(has_property_sql("{pkey:String}"))
    params["pkey"] = key
    params["limit"] = q.limit
    sql = (
        f"SELECT {value} AS value, " + _aggregates(*PROPERTY_VALUE_AGGREGATES)
        + f" FROM {{db}}.{table} WHERE {' AND '.join(where)} GROUP BY value "
        "ORDER BY requests DESC, value LIMIT {limit:UInt32} " + AGG_SETTINGS
    )
    return sql, params


def property_value_json(row: dict[str, Any]) -> dict[str, Any]:
    requests, errors = int(row["requests"]), int(row["errors"])
    return {"value": row["value"], "requests": requests, "cost_usd": float(row["cost_usd"]), "errors": errors,
            "error_rate": _rate(errors, requests), "avg_latency_ms": _number(row["avg_latency_ms"]),
            "latency_ms": _quantiles(row["latency_quantiles"]), "p95_latency_ms": _p95(row["latency_quantiles"])}


QUANTILE_NAMES = ("p50", "p90", "p95", "p99")  # of analytics.QUANTILES
P95 = QUANTILE_NAMES.index("p95")
# Since 1980 every time zone's UTC offset is a multiple of 15 minutes, so an hour, day or week in any zone
# is a whole number of quarter hours: such buckets are cut from the quarter-hour grain (the series projection).
QUARTER_HOUR_ZONES_SINCE = dt.datetime(1980, 1, 1, tzinfo=dt.timezone.utc)


def _quantiles(values: list | None) -> dict[str, float | None]:
    values = values or [None] * len(QUANTILE_NAMES)
    return {name: _number(v) for name, v in zip(QUANTILE_NAMES, values, strict=True)}


def _p95(values: list | None) -> float | None:
    return _number(values[P95]) if values else None


def timeseries_sql(org_id: str, q: TimeseriesQuery) -> tuple[str, dict[str, Any]]:
    """One row per (group, bucket), zero-filled by WITH FILL within each group from the bucket holding
    start to end. The groups are the top_groups values with most requests in the range; every other
    value is summed into one group flagged `is_other`. Buckets come out as Unix seconds
    (date_time_output_format), so a bucket that repeats a local time (the DST fall-back hour) stays distinct."""
    grains: tuple[str, ...] = ()
    if q.bucket != "minute" and q.start >= QUARTER_HOUR_ZONES_SINCE:
        grains = _zone_grains(q.timezone, q.start, q.end)
    where, params, grain = _conditions(org_id, q.filter, q.start, q.end, grains)
    # the fill runs from the bucket holding start to the one holding the range's last millisecond
    params.update(tz=q.timezone, fill_start=_ch_time(q.start), fill_last=_ch_time(q.end - dt.timedelta(milliseconds=1)))
    key_of, step, start_of = BUCKET_SQL[q.bucket]
    time = GRAINS[grain][0] if grain else "request_created_at"
    key = key_of.format(t=f"toDateTime({time}, {{tz:String}})")
    fill_from = key_of.format(t="toDateTime({fill_start:DateTime64(3, 'UTC')}, {tz:String})")
    fill_to = key_of.format(t="toDateTime({fill_last:DateTime64(3, 'UTC')}, {tz:String})") + f" + {step}"
    group, group_params = _group_column(q.group_by)
    params.update(group_params)
    conditions = " AND ".join(where)
    if q.group_by is None:
        grouping = "'' AS grp, 0 AS is_other"
    else:
        # grouped by an alias: a group holding a scalar subquery (a property, queries.property_sql) written out
        # again in ORDER BY is not recognised as the grouping key
        top = (f"SELECT {group} AS top_group FROM {{db}}.request_log WHERE {conditions} GROUP BY top_group "
               "ORDER BY count() DESC, top_group LIMIT {top:UInt32}")
        # both keys repeat the IN: a shared alias would not be a grouping key (ClickHouse builds the set once)
        grouping = f"toUInt8(({group}) NOT IN ({top})) AS is_other, if(is_other, '', {group}) AS grp"
        params["top"] = q.top_groups
    filled = (
        f"SELECT {grouping}, {key} AS bucket_key, {TOTALS}, "
        + _aggregates("latency_quantiles", "ttft_quantiles")
        + f" FROM {{db}}.request_log WHERE {conditions} GROUP BY is_other, grp, bucket_key "
        f"ORDER BY is_other, grp, bucket_key WITH FILL FROM {fill_from} TO {fill_to} STEP {step}"
    )
    sql = (
        f"SELECT is_other, grp, {start_of.format(k='bucket_key')} AS bucket, {', '.join(TOTAL_NAMES)}, latency_quantiles, "
        f"ttft_quantiles FROM ({filled}) ORDER BY is_other, grp, bucket_key "
        f"{AGG_SETTINGS}, date_time_output_format = 'unix_timestamp'"
    )
    return sql, params


def timeseries_json(row: dict[str, Any], q: TimeseriesQuery, zone: zoneinfo.ZoneInfo) -> dict[str, Any]:
    requests, errors = int(row["requests"]), int(row["errors"])
    other = q.group_by is not None and bool(int(row["is_other"]))
    return {
        "bucket": dt.datetime.fromtimestamp(int(row["bucket"]), zone).isoformat(),
        "group": None if q.group_by is None else ("other" if other else row["grp"]),
        "is_other": other,
        "requests": requests,
        "cost_usd": float(row["cost_usd"]),
        "prompt_tokens": int(row["prompt_tokens"]),
        "completion_tokens": int(row["completion_tokens"]),
        "errors": errors,
        "error_rate": _rate(errors, requests),
        "latency_ms": _quantiles(row["latency_quantiles"]),
        "ttft_ms": _quantiles(row["ttft_quantiles"]),
    }


def breakdown_sql(org_id: str, q: BreakdownQuery) -> tuple[str, dict[str, Any]]:
    where, params, _ = _conditions(org_id, q.filter, q.start, q.end, grains=("hour",))
    params["limit"] = q.limit
    sql = (
        f"SELECT {q.by} AS key, {TOTALS}, " + _aggregates("latency_quantiles")
        + f" FROM {{db}}.request_log WHERE {' AND '.join(where)} GROUP BY key "
        "ORDER BY requests DESC, key LIMIT {limit:UInt32} " + AGG_SETTINGS
    )
    return sql, params


def breakdown_json(row: dict[str, Any]) -> dict[str, Any]:
    totals = _totals(row)
    return {"key": row["key"], "requests": totals["requests"], "cost_usd": totals["cost_usd"],
            "prompt_tokens": totals["prompt_tokens"], "completion_tokens": totals["completion_tokens"],
            "error_rate": _rate(int(row["errors"]), totals["requests"]), "p95_latency_ms": _p95(row["latency_quantiles"])}


def summary_sql(org_id: str, r: TimeRange) -> tuple[str, dict[str, Any]]:
    where, params, _ = _conditions(org_id, RequestFilter(), r.start, r.end, grains=("hour", "half_hour", "quarter_hour"))
    sql = (
        f"SELECT {TOTALS}, "
        + _aggregates("users", "sessions", "avg_latency_ms", "latency_quantiles", "cache_hits", "cache_saved_usd")
        + f" FROM {{db}}.request_log WHERE {' AND '.join(where)} " + AGG_SETTINGS
    )
    return sql, params


def summary_json(row: dict[str, Any]) -> dict[str, Any]:
    totals = _totals(row)
    return {**totals, "errors": int(row["errors"]), "error_rate": _rate(int(row["errors"]), totals["requests"]),
            "users": int(row["users"]), "sessions": int(row["sessions"]),
            "avg_latency_ms": _number(row["avg_latency_ms"]) if totals["requests"] else None,
            "p95_latency_ms": _p95(row["latency_quantiles"]) if totals["requests"] else None,
            "cache_hits": int(row["cache_hits"]), "cache_saved_usd": float(row["cache_saved_usd"])}


HISTOGRAM_BINS = 10


def distribution_sql(where_params: tuple[list[str], dict[str, Any]], key: str, metrics: dict[str, str],
                     upper: float, interquartile: bool) -> tuple[str, dict[str, Any]]:
    """Helicone's distributions (its metrics and metrics-overview routes): per value of `key` (a session, a user) each
    of `metrics` (name -> aggregate) over its requests meeting the conditions `where_params`; then of each metric
    `<name>_avg`, the mean over every key, and the values kept (up to its `upper` quantile, and with `interquartile`
    from its 1 - upper one too; quantileExact: the kept ends are values) as `<name>_lo`, `<name>_hi` and
    `<name>_bins`: how many fall in each of HISTOGRAM_BINS equal slices of [lo, hi] (hi in the last). Each key's
    values are computed once (kept in arrays), so a value compared with an end is that very value."""
    where, params = where_params
    where = [*where, f"{key} != ''"]
    per = (f"SELECT {key} AS k, " + ", ".join(f"{expr} AS {name}" for name, expr in metrics.items())
           + f" FROM {{db}}.request_log WHERE {' AND '.join(where)} GROUP BY k")
    upper, lower = float(upper), round(1 - float(upper), 6)  # written into the SQL: numbers (of P_SIZES), never text
    parts = []
    for name in metrics:
        lo, hi = f"{name}_lo", f"{name}_hi"
        low = f"arrayReduce('quantileExact({lower!r})', {name})" if interquartile else f"arrayMin({name})"
        slot = (f"if({hi} > {lo}, least(toUInt32(floor((x - {lo}) / ({hi} - {lo}) * {HISTOGRAM_BINS})), {HISTOGRAM_BINS - 1}), 0)")
        parts.append(
            f"{low} AS {lo}, arrayReduce('quantileExact({upper!r})', {name}) AS {hi}, arrayAvg({name}) AS {name}_avg, "
            f"arrayMap(x -> {slot}, arrayFilter(x -> x >= {lo} AND x <= {hi}, {name})) AS {name}_slots, "
            f"arrayMap(i -> countEqual({name}_slots, i), range({HISTOGRAM_BINS})) AS {name}_bins")
    columns = ", ".join(f"groupArray({name}) AS {name}" for name in metrics)
    sql = f"SELECT n, {', '.join(parts)} FROM (SELECT count() AS n, {columns} FROM ({per})) " + SETTINGS
    return sql, params


def histogram_json(row: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Helicone's HistogramRow list of one metric of distribution_sql's row: the slices holding values, each
    {"range_start", "range_end"} (as text, as Helicone's) and "value" (how many)."""
    if not int(row["n"]):
        return []
    lo, hi, bins = float(row[f"{name}_lo"]), float(row[f"{name}_hi"]), [int(b) for b in row[f"{name}_bins"]]
    if hi <= lo:
        return [{"range_start": _number_text(lo), "range_end": _number_text(hi), "value": sum(bins)}]
    width = (hi - lo) / HISTOGRAM_BINS
    return [{"range_start": _number_text(lo + i * width), "range_end": _number_text(hi if i == HISTOGRAM_BINS - 1 else lo + (i + 1) * width),
             "value": b} for i, b in enumerate(bins) if b]


def _number_text(x: float) -> str:
    """A number as JavaScript writes it (3, not 3.0), as Helicone's range ends are."""
    return str(int(x)) if x.is_integer() and abs(x) < 1e21 else repr(x)


def session_names_sql(where_params: tuple[list[str], dict[str, Any]], limit: int) -> tuple[str, dict[str, Any]]:
    """Per session name (Helicone-Session-Name; "" for requests of a session without one) of the requests meeting the
    conditions (_session_conditions'): its sessions, first and last request, mean latency and cost; last used first."""
    where, params = where_params
    params = {**params, "limit": limit}
    sql = (
        "SELECT session_name AS name, uniqExact(session_id) AS session_count, min(request_created_at) AS first_used, "
        "max(request_created_at) AS last_used, avg(latency_ms) AS avg_latency, sum(cost_usd) AS total_cost "
        f"FROM {{db}}.request_log WHERE {' AND '.join(where)} GROUP BY name ORDER BY last_used DESC, name "
        "LIMIT {limit:UInt32} " + SETTINGS
    )
    return sql, params


def insights_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["insights"], responses=error_responses({404: "no session of the caller's org has this id"}))

    async def run(endpoint: str, sql_params: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
        with state.m_query_seconds.labels(endpoint).time():
            rows = await state.analytics.query(*sql_params)
        state.m_queries.labels(endpoint, "ok").inc()
        return rows

    async def put(org: str, start: dt.datetime | None, end: dt.datetime | None, key: str | None = None) -> bool:
        rows = await state.analytics.query(*puts_sql(org, start, end, key))
        return bool(int(rows[0]["n"]))

    async def recent_sessions(q: SessionQuery, org: str) -> list[str] | None:
        """The ids of the page of sessions last seen first, from the newest requests; None when that
        order is not asked for (or a search narrows the list) and the sessions must all be totalled."""
        if (q.sort.field, q.sort.direction) != ("last_seen", "desc") or q.search:
            return None
        want = q.offset + q.limit
        f = q.filter
        end = f.end if isinstance(f, RequestFilter) and f.end is not None else await newest_hour(org)
        if end is None:
            return []  # the org has logged nothing
        for since in (end - dt.timedelta(hours=1), end - dt.timedelta(days=1), end - dt.timedelta(days=7), None):
            rows = max(2000, 40 * want)
            for _ in range(3):
                found = await state.analytics.query(*recent_sessions_sql(org, q, rows, since))
                cut = sum(int(r["n"]) for r in found) >= rows  # not every matching request since `since` was read
                # a session with any of the rows read has its newest request among them, and every session
                # not read was last seen before all of them, or at the very instant the read stopped at: those
                # last seen then may sort after one not read (by id), so only the sessions seen later lead the list
                led = [r for r in found if r["seen"] != found[-1]["seen"]] if cut else found
                if len(led) >= want:
                    return [r["session_id"] for r in led][q.offset:want]
                if not cut:
                    if since is None:
                        return [r["session_id"] for r in found][q.offset:want]
                    break
                rows *= 8
            else:
                return None
        return None

    async def newest_hour(org: str) -> dt.datetime | None:
        """The end of the org's newest hour with a request (from the hourly series projection)."""
        rows = await state.analytics.query(
            f"SELECT count() AS n, max({GRAINS['hour'][0]}) AS h FROM {{db}}.request_log WHERE org_id = {{org:String}} "
            + AGG_SETTINGS, {"org": org})
        if not rows or not int(rows[0]["n"]):
            return None
        return dt.datetime.fromisoformat(rows[0]["h"]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(hours=1)

    @router.post("/session/query", response_model=documented(SessionPage))
    async def query_sessions(q: SessionQuery, org: str = Depends(org_id)) -> dict:
        """Sessions with requests matching the filter, their totals over those requests."""
        ids = await recent_sessions(q, org)
        if ids is not None:
            page = q.model_copy(update={"offset": 0})
            rows = await run("session_query", session_list_sql(org, page, only=ids)) if ids else []
            return {"data": [session_json(r) for r in rows], "limit": q.limit, "offset": q.offset, "error": None}
        rows = await run("session_query", session_list_sql(org, q))
        return {"data": [session_json(r) for r in rows], "limit": q.limit, "offset": q.offset, "error": None}

    @router.get("/session/{session_id:path}", response_model=documented(SessionDetail))  # :path: a session id may contain "/"
    async def get_session(session_id: Annotated[FilterText, Path()], org: str = Depends(org_id)) -> dict:
        """One session's totals and its trace tree (Helicone-Session-Path), with every request in it."""
        found = await run("session_detail", session_list_sql(org, None, session_id))
        if not found:
            state.m_queries.labels("session_detail", "not_found").inc()
            raise HTTPException(404, f"session {session_id[:200]!r} not found")
        rows = await state.analytics.query(*session_requests_sql(org, session_id))
        truncated, rows = len(rows) > MAX_SESSION_REQUESTS, rows[:MAX_SESSION_REQUESTS]
        requests = await requests_json(state.analytics, org, rows)
        return {**session_json(found[0]), "tree": session_tree(rows, requests),
                "requests_truncated": truncated}

    @router.post("/user/query", response_model=documented(UserPage))
    async def query_users(q: UserQuery, org: str = Depends(org_id)) -> dict:
        """Users with requests matching the filter, their totals over those requests."""
        rows = await run("user_query", user_list_sql(org, q))
        return {"data": [user_json(r) for r in rows], "limit": q.limit, "offset": q.offset, "error": None}

    @router.get("/property/keys", response_model=documented(PropertyKeyList))
    async def property_keys(r: Annotated[TimeRange, Query()], org: str = Depends(org_id)) -> dict:
        """The custom property names (Helicone-Property-*) logged, most requests first."""
        rows = await run("property_keys", property_keys_sql(org, r, await put(org, r.start, r.end)))
        return {"data": [{"key": row["key"], "requests": int(row["requests"])} for row in rows]}

    @router.post("/property/{key:path}/values", response_model=documented(PropertyValueList))
    async def property_values(key: PropertyKey, q: PropertyValuesQuery, org: str = Depends(org_id)) -> dict:
        """A property's values, most requests first: requests, cost, errors and latency percentiles per value."""
        f = q.filter
        put_in_range = _only_time(f) and await put(org, f.start, f.end, key.lower())  # other filters read request_log anyway
        rows = await run("property_values", property_values_sql(org, key.lower(), q, put_in_range))
        return {"data": [property_value_json(row) for row in rows]}

    @router.post("/metrics/timeseries", response_model=documented(Timeseries))
    async def timeseries(q: TimeseriesQuery, org: str = Depends(org_id)) -> dict:
        """Requests, cost, tokens, errors and latency/TTFT percentiles per time bucket (and group), zero-filled."""
        rows = await run("timeseries", timeseries_sql(org, q))
        if q.group_by is not None and not any(int(r["requests"]) for r in rows):
            rows = []  # no group had a request: only the fill rows of an empty group are left
        zone = zoneinfo.ZoneInfo(q.timezone)
        return {"data": [timeseries_json(r, q, zone) for r in rows]}

    @router.post("/metrics/breakdown", response_model=documented(Breakdown))
    async def breakdown(q: BreakdownQuery, org: str = Depends(org_id)) -> dict:
        """Totals per model or provider, most requests first."""
        rows = await run("breakdown", breakdown_sql(org, q))
        return {"data": [breakdown_json(r) for r in rows]}

    @router.get("/metrics/summary", response_model=documented(Summary))
    async def summary(r: Annotated[TimeRange, Query()], org: str = Depends(org_id)) -> dict:
        """Totals for dashboard tiles."""
        rows = await run("summary", summary_sql(org, r))
        return summary_json(rows[0])

    return router

