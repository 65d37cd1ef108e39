"""The request explorer: POST /v1/request/query (a page of requests, by offset or by cursor; Helicone's
POST /v1/request/query-clickhouse is the same route) and
POST /v1/request/export (every matching request, streamed as CSV or JSON Lines).

A filter is the flat RequestFilter the api has always taken or Helicone's filter tree (filters.py);
a cursor is keyset pagination on (sort column, request id), so pages stay exact while new requests arrive."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from helicone_core.analytics import TIME_ORDER_SETTINGS
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .filters import (
    EXAMPLE_TREE,
    AnyFilter,
    CursorCodec,
    CursorError,
    CursorText,
    FilterNode,
    Sort,
    SortSpec,
    after_sql,
    filter_sql,
    narrowed,
    order_sql,
    query_digest,
    sort_value,
)
from .models import Answer, HeliconeEnvelope, RequestFilter, documented
from .properties import puts_of
from .queries import BINARY_ENCODING, COLUMNS, SETTINGS, helicone_request_json, row_to_json
from .scores import scores_of

EXPORT_PAGE = 1000  # rows per internal query of an export
MAX_EXPORT = 1_000_000


class FilteredQuery(BaseModel):
    """A filter, and the options of Helicone's RequestQueryParams (valhalla/jawn/src/controllers/public/requestController.ts
    in Helicone/helicone) that this api can answer, so that Helicone's request bodies select the same requests."""

    model_config = ConfigDict(extra="forbid")

    filter: AnyFilter = Field(default_factory=RequestFilter)
    is_cached: bool | None = Field(None, alias="isCached", description="Helicone's: true only answers from the response cache, "
                                                                         "false only the others (as filter.cache_hit); none: both")
    is_scored: Literal[False] | None = Field(None, alias="isScored", description="Helicone's; only false (the default) is supported")
    is_part_of_experiment: Literal[False] | None = Field(None, alias="isPartOfExperiment",
                                                         description="Helicone's; only false (the default) is supported")
    include_inputs: bool | None = Field(None, alias="includeInputs", description="Helicone's; rows always carry their prompt inputs")

    @field_validator("is_scored", "is_part_of_experiment", mode="before")
    @classmethod
    def _unsupported(cls, v: Any) -> Any:
        if v is True:
            raise ValueError("true is not supported here (no experiments; filter on scores instead); false or absent")
        return v

    @field_validator("is_cached")
    @classmethod
    def _one_cache_condition(cls, v: bool | None, info: ValidationInfo) -> bool | None:
        flat = info.data.get("filter")
        if v is not None and isinstance(flat, RequestFilter) and flat.cache_hit not in (None, v):
            raise ValueError("says the opposite of filter.cache_hit: give one of them")
        return v

    @model_validator(mode="after")
    def _cached_as_filter(self) -> FilteredQuery:
        if self.is_cached is None:
            return self
        self.filter = narrowed(self.filter, {"cache_hit": self.is_cached}, {"cache_hit": {"equals": self.is_cached}})
        return self


class RequestQuery(FilteredQuery):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"filter": {"model": "gpt-4o", "user_id": "alice"}, "limit": 50, "sort": "created_at_desc"},
        {"filter": EXAMPLE_TREE, "sort": {"field": "latency_ms", "direction": "desc"}, "limit": 100},
        {"filter": "all", "isCached": False, "limit": 10, "offset": 0, "sort": {"created_at": "desc"}},
    ]})

    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000, description="rows to skip; with a cursor it must be 0")
    sort: SortSpec = Field("created_at_desc", validate_default=True)
    cursor: CursorText | None = Field(None, description="the next_cursor of the previous page (same filter and sort)")

    @model_validator(mode="after")
    def _cursor_or_offset(self) -> RequestQuery:
        if self.cursor is not None and self.offset:
            raise ValueError("give a cursor or an offset, not both")
        return self


class ExportQuery(FilteredQuery):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"filter": EXAMPLE_TREE, "sort": "created_at_desc", "format": "csv", "limit": 10000},
    ]})

    sort: SortSpec = Field("created_at_desc", validate_default=True)
    format: Literal["csv", "jsonl"] = Field(..., description="csv: a header row, then one row per request (text starting with = + - @, a tab or a carriage return "
                                                         "gets a leading ', so a spreadsheet shows it rather than runs it); jsonl: one request per line")
    limit: int | None = Field(None, ge=1, le=MAX_EXPORT, description=f"at most this many requests; none: all (up to {MAX_EXPORT})")


class Usage(Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    known: bool


class SessionRef(Answer):
    id: str
    path: str | None
    name: str | None


class PromptRef(Answer):
    id: str
    version: int
    inputs: dict[str, Any]


_API_EXAMPLE_ROW = {
    "request_id": "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1", "created_at": "2026-03-01T12:00:00.000Z",
    "response_created_at": "2026-03-01T12:00:01.250Z", "latency_ms": 1250, "time_to_first_token_ms": 310, "status": 200,
    "provider": "openai", "model": "gpt-4o", "method": "POST", "path": "/v1/chat/completions",
    "target_url": "https://api.openai.com/v1/chat/completions", "user_id": "alice",
    "session": {"id": "s-42", "path": "/chat", "name": "Support chat"}, "properties": {"env": "prod"},
    "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160, "cache_read_tokens": 0,
              "cache_write_tokens": 0, "known": True},
    "cost_usd": 0.0007, "streamed": True, "request_bytes": 512, "response_bytes": 2048, "body_truncated": False, "error": None,
    "source": "gateway", "region": "eu-west-1", "prompt": None, "cache_hit": False, "cache_saved_usd": None,
    "attempts": [], "fallback_index": 0, "scores": {"accuracy": 0.9, "feedback": 1.0},
}
EXAMPLE_ROW = {**_API_EXAMPLE_ROW, **helicone_request_json(_API_EXAMPLE_ROW)}


class UpstreamAttempt(Answer):
    """One try of the provider (Helicone-Retry-* / Helicone-Fallbacks), as RequestLogged.attempts logs it."""

    target_url: str
    provider: str
    status: int = Field(description="the provider's status; 0 when it did not answer (see error)")
    error: str
    latency_ms: int
    fallback_index: int = Field(description="which Helicone-Fallbacks target; 0 the first")
    retry: int = Field(description="0 the target's first try, 1 its first retry, ...")


class ApiRequestRow(Answer):
    """This api's own fields of a logged request (RequestRow adds Helicone's names)."""

    request_id: str
    created_at: str
    response_created_at: str
    latency_ms: int
    time_to_first_token_ms: int | None
    status: int
    provider: str
    model: str
    method: str
    path: str
    target_url: str
    user_id: str | None
    session: SessionRef | None
    properties: dict[str, str] = Field(description="the custom properties logged (Helicone-Property-*), "
                                                   "with those put since (PUT /v1/request/{id}/property) over them")
    usage: Usage
    cost_usd: float | None
    streamed: bool
    request_bytes: int
    response_bytes: int
    body_truncated: bool
    error: str | None
    source: str
    region: str | None
    prompt: PromptRef | None
    cache_hit: bool
    cache_saved_usd: float | None
    attempts: list[UpstreamAttempt] = Field(description="every try of the provider when retries or fallbacks were asked for, else []")
    fallback_index: int = Field(description="the Helicone-Fallbacks target that answered; 0 the first")
    scores: dict[str, float]


class RequestRow(ApiRequestRow):
    """One logged request as the query, the export, a session's tree and GET /v1/request/{id} return it: the api's
    fields and, next to them, those of Helicone's HeliconeRequest it lacks (queries.helicone_request_json, the same
    values), so that a script written against Helicone's POST /v1/request/query reads its rows."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_ROW]})

    response_id: None = Field(description="Helicone's response id: none here (one id per request); always null")
    response_body: None = Field(description="null: GET /v1/request/{id} answers the bodies")
    response_status: int = Field(description="status")
    response_model: str = Field(description="model")
    request_created_at: str = Field(description="created_at")
    request_body: None = Field(description="null: GET /v1/request/{id} answers the bodies")
    request_path: str = Field(description="path")
    request_user_id: str | None = Field(description="user_id")
    request_properties: dict[str, str] = Field(description="properties")
    request_model: str = Field(description="model")
    model_override: None = Field(description="not logged; always null")
    helicone_user: None = Field(description="Helicone's dashboard user of the key: none here; always null")
    delay_ms: int = Field(description="latency_ms")
    time_to_first_token: int | None = Field(description="time_to_first_token_ms")
    total_tokens: int = Field(description="usage.total_tokens")
    prompt_tokens: int = Field(description="usage.prompt_tokens")
    prompt_cache_write_tokens: int = Field(description="usage.cache_write_tokens")
    prompt_cache_read_tokens: int = Field(description="usage.cache_read_tokens")
    completion_tokens: int = Field(description="usage.completion_tokens")
    prompt_audio_tokens: None = Field(description="not logged apart; always null")
    completion_audio_tokens: None = Field(description="not logged apart; always null")
    cost: float | None = Field(description="cost_usd")
    costUSD: float | None = Field(description="cost_usd")  # Helicone's spelling
    prompt_id: str | None = Field(description="prompt.id")
    prompt_version: str | None = Field(description="prompt.version, as text (Helicone's)")
    feedback_created_at: None = Field(description="not answered here; always null")
    feedback_id: None = Field(description="none here (feedback is the score `feedback`); always null")
    feedback_rating: bool | None = Field(description="the `feedback` score: true for 1 (up), false for 0; null without")
    signed_body_url: None = Field(description="no signed URLs here; always null (GET /v1/request/{id} has the bodies)")
    llmSchema: None = Field(description="Helicone's parsed bodies: not built here; always null")
    country_code: None = Field(description="not logged; always null")
    asset_ids: list[str] = Field(description="no assets here; always []")
    asset_urls: dict[str, str] = Field(description="no assets here; always {}")
    assets: list[str] = Field(description="no assets here; always []")
    cache_reference_id: None = Field(description="the request a cached answer came from is not logged; always null "
                                                 "(cache_hit says whether it was one)")
    cache_enabled: bool = Field(description="cache_hit: true for answers from the response cache; false otherwise "
                                            "(whether a miss asked for the cache is not logged)")
    updated_at: None = Field(description="not logged; always null")
    request_referrer: None = Field(description="not logged; always null")
    ai_gateway_body_mapping: None = Field(description="Helicone's AI gateway's: none here; always null")
    storage_location: None = Field(description="Helicone's body storage: none here; always null")


class RequestDetail(RequestRow):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {**EXAMPLE_ROW, "request_body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}]},
         "response_body": "data: {...}\n\ndata: [DONE]\n\n"}]})
    request_body: Any = Field(description="JSON when the body was JSON, else text; base64 text when it is not UTF-8 "
                                          "text (request_body_encoding); null when not stored")
    response_body: Any = Field(description="JSON when the body was JSON, else text (SSE streams as sent); base64 text when "
                                           "it is not UTF-8 text (audio, an image: response_body_encoding); null when not stored")
    request_body_encoding: Literal[BINARY_ENCODING] | None = Field(None, description='"base64" when request_body is the base64 '
                                                                              "of a binary body (an upload holding a file); "
                                                                              "else null")
    response_body_encoding: Literal[BINARY_ENCODING] | None = Field(None, description='"base64" when response_body is the base64 '
                                                                               "of a binary body; else null")
    request_body_error: str | None = Field(None, description="why the stored request body could not be read (it is then "
                                                             "null): not found in the body store, cut short there, "
                                                             "larger than an answer holds, or the store failed")
    response_body_error: str | None = Field(None, description="as request_body_error, for the response body")


class QueryPage(HeliconeEnvelope):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"data": [EXAMPLE_ROW], "limit": 1, "offset": 0,
         "next_cursor": "WyIyMDI2LTAzLTAxIDEyOjAwOjAwLjAwMCIsIjZmMWIiXQ.q8Jb0x", "error": None}]})
    data: list[RequestRow]
    limit: int
    offset: int
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: this is the last page")


# The CSV columns of an export: the row's fields, nested ones flattened; maps and lists as JSON text.
CSV_COLUMNS = (
    "request_id", "created_at", "response_created_at", "latency_ms", "time_to_first_token_ms", "status", "provider", "model",
    "method", "path", "target_url", "user_id", "session_id", "session_path", "session_name", "properties", "prompt_tokens",
    "completion_tokens", "total_tokens", "cache_read_tokens", "cache_write_tokens", "usage_known", "cost_usd", "streamed",
    "request_bytes", "response_bytes", "body_truncated", "error", "source", "region", "prompt_id", "prompt_version",
    "prompt_inputs", "cache_hit", "cache_saved_usd", "fallback_index", "attempts", "scores",
)


# What a spreadsheet opening the CSV runs as a formula when a cell starts with it (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as its CSV cell: text a spreadsheet would run as a formula starts with a ' (shown, not run)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_record(row: dict[str, Any]) -> list[Any]:
    session, prompt, usage = row["session"] or {}, row["prompt"] or {}, row["usage"]
    flat = {**row, "session_id": session.get("id"), "session_path": session.get("path"), "session_name": session.get("name"),
            "prompt_id": prompt.get("id"), "prompt_version": prompt.get("version"),
            "prompt_inputs": json.dumps(prompt["inputs"], ensure_ascii=False) if prompt else None,
            "properties": json.dumps(row["properties"], ensure_ascii=False, sort_keys=True),
            "scores": json.dumps(row["scores"], sort_keys=True), "usage_known": usage["known"],
            "attempts": json.dumps(row["attempts"], ensure_ascii=False) if row["attempts"] else "",
            **{k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens", "cache_write_tokens")}}
    return [csv_cell(flat[c]) for c in CSV_COLUMNS]


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


async def requests_json(store, org_id: str, rows: list[dict]) -> list[dict[str, Any]]:
    """request_log rows in the api's shape, with their scores and the properties put on them: every answer
    that shows requests (one request, pages, exports, a session's tree) builds them here."""
    ids = [r["request_id"] for r in rows]
    scores, puts = await scores_of(store, org_id, ids), await puts_of(store, org_id, ids)
    return [row_to_json(r, scores.get(r["request_id"]), puts.get(r["request_id"])) for r in rows]


class RequestPager:
    """Pages of one org's requests under one filter and sort, by offset or by keyset cursor."""

    def __init__(self, state, codec: CursorCodec, org: str, filter_: RequestFilter | FilterNode, sort: Sort) -> None:
        self.state, self.codec, self.org, self.sort = state, codec, org, sort
        self.filter = filter_
        self.digest = query_digest(filter_, sort)

    def after(self, cursor: str) -> tuple[Any, str]:
        try:
            return self.codec.decode(self.org, self.digest, self.sort, cursor)
        except CursorError as exc:
            raise _invalid("cursor", str(exc)) from None

    async def page(self, limit: int, *, offset: int = 0, after: tuple[Any, str] | None = None) -> tuple[list[dict], tuple | None]:
        """Up to `limit` rows (raw) and the keyset position after the last one (None when no row follows)."""
        if self.sort.field == "created_at" and offset == 0:
            rows = await self._in_time_order(limit + 1, after)
            if rows is not None:
                return (rows, None) if len(rows) <= limit else (rows[:limit], self._position(rows[limit - 1]))
        where, params = filter_sql(self.org, self.filter)
        if after is not None:
            where.append(after_sql(self.sort, *after, params))
        params.update(limit=limit + 1, offset=offset)  # one more than asked: whether another page follows
        sql = (f"SELECT {COLUMNS} FROM {{db}}.request_log FINAL WHERE {' AND '.join(where)} "
               f"ORDER BY {order_sql(self.sort)} LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}} " + SETTINGS)
        rows = await self.state.analytics.query(sql, params)
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, self._position(rows[-1])

    def _position(self, row: dict) -> tuple[Any, str]:
        return sort_value(row, self.sort), row["request_id"]

    async def _in_time_order(self, want: int, after: tuple[Any, str] | None) -> list[dict] | None:
        """The first `want` rows in time order, as FINAL would give them, without FINAL: read in time
        order from the by_time projection (ClickHouse stops after the rows asked for), the newest
        version of each id checked by id (a log replaced by a newer one with its id, or a resent copy
        not merged yet, is dropped). None: leave it to the FINAL query (every row at one instant)."""
        direction = self.sort.direction.upper()
        fetch = want + 16
        for _ in range(4):
            where, params = filter_sql(self.org, self.filter)
            if after is not None:
                where.append(after_sql(self.sort, *after, params))
            params["fetch"] = fetch
            # inner: time order only, which the projection serves; outer: the tie-break on request_id
            sql = (f"SELECT * FROM (SELECT {COLUMNS}, version FROM {{db}}.request_log WHERE {' AND '.join(where)} "
                   f"ORDER BY request_created_at {direction} LIMIT {{fetch:UInt32}}) "
                   f"ORDER BY {order_sql(self.sort)} " + SETTINGS + ", " + TIME_ORDER_SETTINGS)
            rows = await self.state.analytics.query(sql, params)
            full = len(rows) == fetch
            if full:  # the last instant read may have more rows than were read: not part of this answer
                edge = rows[-1]["request_created_at"]
                rows = [r for r in rows if r["request_created_at"] != edge]
                if not rows:
                    return None
            rows = await self._newest_versions(rows)
            if len(rows) >= want or not full:
                return rows[:want]
            fetch *= 4  # replaced or repeated rows filled the window: read a wider one
        return None

    async def _newest_versions(self, rows: list[dict]) -> list[dict]:
        if not rows:
            return rows
        # a newer version of a log is a later request (events.event_version): only rows from the oldest
        # candidate on can replace one, which the by_time projection reads without scanning the org
        newest = await self.state.analytics.query(
            "SELECT toString(request_id) AS id, max(version) AS v FROM {db}.request_log "
            "WHERE org_id = {org:String} AND request_created_at >= {oldest:DateTime64(3, 'UTC')} "
            "AND request_id IN {ids:Array(UUID)} GROUP BY request_id " + SETTINGS + ", " + TIME_ORDER_SETTINGS,
            {"org": self.org, "ids": [r["request_id"] for r in rows],
             "oldest": min(r["request_created_at"] for r in rows)})
        latest = {n["id"]: int(n["v"]) for n in newest}
        out, seen = [], set()
        for r in rows:
            if int(r["version"]) == latest.get(r["request_id"]) and r["request_id"] not in seen:
                seen.add(r["request_id"])
                out.append(r)
        return out

    def cursor(self, position: tuple | None) -> str | None:
        return None if position is None else self.codec.encode(self.org, self.digest, *position)

    async def rows_json(self, rows: list[dict]) -> list[dict[str, Any]]:
        return await requests_json(self.state.analytics, self.org, rows)


def explorer_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/request", tags=["requests"])
    # Cursors are signed with a key every replica shares and no caller knows: derived from the Postgres DSN
    # (its password), so no new secret has to be deployed; changing it only invalidates open cursors.
    codec = CursorCodec(state.settings.postgres_dsn.get_secret_value().encode())

    @router.post("/query", response_model=documented(QueryPage))
    async def query_requests(
        q: Annotated[RequestQuery, Body(openapi_examples={
            "flat": {"summary": "the flat filter", "value": RequestQuery.model_config["json_schema_extra"]["examples"][0]},
            "tree": {"summary": "a filter tree, sorted by latency", "value": RequestQuery.model_config["json_schema_extra"]["examples"][1]},
            "next page": {"summary": "the page after a cursor", "value": {"filter": {"model": "gpt-4o"}, "cursor": "<next_cursor>"}},
        })],
        org: str = Depends(org_id),
    ) -> dict:
        """A page of the caller's requests, newest first unless `sort` says otherwise. Page by `cursor`
        (keyset: exact while new requests arrive) or by `offset`."""
        with state.m_query_seconds.labels("query").time():
            pager = RequestPager(state, codec, org, q.filter, q.sort)
            after = pager.after(q.cursor) if q.cursor is not None else None
            rows, position = await pager.page(q.limit, offset=q.offset, after=after)
            data = await pager.rows_json(rows)
            next_cursor = pager.cursor(position)
        state.m_queries.labels("query", "ok").inc()
        return {"data": data, "limit": q.limit, "offset": q.offset, "next_cursor": next_cursor, "error": None}

    # Helicone's second name for its request list (read from ClickHouse there; this api's list always is)
    router.add_api_route("/query-clickhouse", query_requests, methods=["POST"], response_model=documented(QueryPage),
                         summary="Query Requests (Helicone's query-clickhouse)",
                         description="The same as POST /v1/request/query: Helicone's body and this api's answer.")

    @router.post("/export", response_class=StreamingResponse, responses={200: {
        "description": "CSV (text/csv, a header row) or JSON Lines (application/x-ndjson, one request per line as in the query's data)",
        "content": {"text/csv": {"schema": {"type": "string"}, "example": ",".join(CSV_COLUMNS[:4]) + "\r\n"},
                    "application/x-ndjson": {"schema": {"type": "string"}, "example": '{"request_id": "…", "model": "gpt-4o"}\n'}},
    }})
    async def export_requests(
        q: Annotated[ExportQuery, Body(openapi_examples={
            "csv": {"summary": "failed gpt-4o requests as CSV", "value": {
                "filter": {"left": {"request": {"model": {"equals": "gpt-4o"}}}, "operator": "and",
                           "right": {"response": {"status": {"gte": 400}}}}, "format": "csv"}},
            "jsonl": {"summary": "the newest 10,000 requests as JSON Lines", "value": {"format": "jsonl", "limit": 10000}},
        })],
        org: str = Depends(org_id),
    ) -> StreamingResponse:
        """Every matching request (or the first `limit`), streamed page by page: never the whole result in memory."""
        pager = RequestPager(state, codec, org, q.filter, q.sort)
        total = q.limit or MAX_EXPORT
        # the first page before answering, so that a failing query is an error status, not a cut stream
        first, position = await pager.page(min(EXPORT_PAGE, total))

        def encode(rows: list[dict[str, Any]], header: bool) -> bytes:
            if q.format == "jsonl":
                return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
            out = io.StringIO()
            writer = csv.writer(out)
            if header:
                writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_record(r) for r in rows)
            return out.getvalue().encode()

        async def stream() -> AsyncIterator[bytes]:
            started, sent, rows, after = time.monotonic(), 0, first, position
            result = "error"
            try:
                yield encode(await pager.rows_json(rows), header=True)
                sent += len(rows)
                while after is not None and sent < total:
                    rows, after = await pager.page(min(EXPORT_PAGE, total - sent), after=after)
                    yield encode(await pager.rows_json(rows), header=False)
                    sent += len(rows)
                result = "ok"
            finally:
                state.m_queries.labels("export", result).inc()
                state.m_query_seconds.labels("export").observe(time.monotonic() - started)

        kind = "text/csv; charset=utf-8" if q.format == "csv" else "application/x-ndjson"
        return StreamingResponse(stream(), media_type=kind,
                                 headers={"content-disposition": f'attachment; filename="requests.{q.format}"'})

    return router
