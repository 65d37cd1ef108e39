"""Custom properties put on a logged request after the fact: Helicone's PUT /v1/request/{id}/property, and its
POST /v1/session/{id}/feedback (the property Helicone-Session-Feedback on the session's first request).

A put is a row of `request_property_overrides` (helicone_core.analytics), one per (org, request id, key),
stamped with this api's clock: FINAL keeps the newest, so the same put twice leaves one value and a newer one
replaces it; the request's other properties are left as they are. The logged row is never rewritten; every
reader merges the puts over the logged properties: the request's answer, the query and export rows and a
session's tree through puts_of, filters, groupings and the property endpoints through queries.property_sql.
Key and value follow the gateway's rule for a Helicone-Property-<key> header (log_headers.custom_property).
A put's check of the request's property count and its write are one step per (org, request) in this process
(PutsUnderWay); two api replicas can still each add one key to a request one short of the limit at the same moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.exceptions import RequestValidationError
from helicone_core.log_headers import MAX_PROPERTIES, PropertyError, custom_property
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .models import Answer, Feedback, FilterText, RequestId, _utf8, documented, error_responses
from .queries import SETTINGS
from .scores import WriteClock, ch_time_us

# The request as a put finds it: its logged properties and time (FINAL: the newest request with the id).
LOGGED_SQL = (
    "SELECT properties, request_created_at FROM {db}.request_log FINAL "
    "WHERE org_id = {org:String} AND request_id = {rid:UUID} LIMIT 1 " + SETTINGS
)
# A session's first request: where Helicone's session feedback is put
FIRST_OF_SESSION_SQL = (
    "SELECT request_id FROM {db}.request_log FINAL WHERE org_id = {org:String} AND session_id = {sid:String} "
    "ORDER BY request_created_at, request_id LIMIT 1 " + SETTINGS
)
SESSION_FEEDBACK = "Helicone-Session-Feedback"  # the property Helicone's POST /v1/session/{id}/feedback puts
PUTS_OF_SQL = (
    "SELECT request_id, key, value FROM {db}.request_property_overrides FINAL "
    "WHERE org_id = {org:String} AND request_id IN {rids:Array(UUID)} ORDER BY request_id, key " + SETTINGS
)

Text = Annotated[str, BeforeValidator(_utf8), Field(strict=True)]


class PropertyPut(BaseModel):
    """Helicone's body: one custom property of the request, added or changed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"key": "env", "value": "prod"}]})

    key: Text = Field(
        description="the property's name, as in a Helicone-Property-<key> header: 1-256 of A-Z a-z 0-9 "
        "! # $ % & ' * + - . ^ _ ` | ~, stored in lower case (names are read in any case)"
    )
    value: Text = Field(
        description="at most 4096 characters, without control characters but tab; stored without "
        "leading and trailing white space, as a header's value"
    )


class PropertyWritten(Answer):
    """The property as PUT /v1/request/{id}/property wrote it, and the request's properties now."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1",
                    "key": "env",
                    "value": "prod",
                    "updated_at": "2026-03-01T12:00:05.123456Z",
                    "properties": {"env": "prod", "team": "search"},
                }
            ]
        }
    )

    request_id: str
    key: str = Field(description="the name as stored (lower case)")
    value: str = Field(description="the value as stored")
    updated_at: str = Field(description="when this api wrote it (UTC, to the microsecond): the newest write wins")
    properties: dict[str, str] = Field(description="every property of the request after this write")


class SessionFeedbackWritten(Answer):
    """Helicone's answer ({"data", "error": null}), with the put on the session's first request as data."""

    data: PropertyWritten
    error: None = Field(description="always null: an error is the api's {\"error\": {...}} with its status")


async def puts_of(store, org_id: str, request_ids: list[str]) -> dict[str, dict[str, str]]:
    """request id -> {key: value put on it} for those of the given requests that have puts."""
    out: dict[str, dict[str, str]] = {}
    if not request_ids:
        return out
    for row in await store.query(PUTS_OF_SQL, {"org": org_id, "rids": request_ids}):
        out.setdefault(row["request_id"], {})[row["key"]] = row["value"]
    return out


class PutsUnderWay:
    """One put at a time per (org, request id): its count of the request's properties and its write are never
    interleaved with another's, so two new keys put together on a request one short of the limit cannot both be
    added. Only requests with a put under way, or waiting, have an entry."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._users: dict[tuple[str, str], int] = {}  # puts holding or awaiting each lock

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, org: str, rid: str):
        request = (org, rid)
        lock = self._locks.get(request)
        if lock is None:
            lock = self._locks[request] = asyncio.Lock()
        self._users[request] = self._users.get(request, 0) + 1
        try:
            async with lock:
                yield
        finally:
            if self._users[request] == 1:
                del self._users[request], self._locks[request]
            else:
                self._users[request] -= 1


def _invalid(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def properties_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(
        tags=["requests"],
        responses=error_responses(
            {
                404: "no request of the caller's org has this id (yet: logging takes about a second)",
                409: f"the request has {MAX_PROPERTIES} properties already: another one is not added (changing one is)",
            }
        ),
    )
    clock = WriteClock()
    under_way = PutsUnderWay()

    async def put(org: str, rid: str, key: str, value: str) -> dict[str, Any]:
        """Puts the property (as custom_property reads it) on the org's logged request `rid`: the put's answer."""
        # the count checked is still the count when the row is written
        async with under_way.one_at_a_time(org, rid):
            with state.m_query_seconds.labels("property").time():
                logged = await state.analytics.query(LOGGED_SQL, {"org": org, "rid": rid})
                if not logged:
                    state.m_queries.labels("property", "not_found").inc()
                    raise HTTPException(404, f"request {rid} not found")
                properties = {**logged[0]["properties"], **(await puts_of(state.analytics, org, [rid])).get(rid, {})}
                if key not in properties and len(properties) >= MAX_PROPERTIES:
                    state.m_queries.labels("property", "refused").inc()
                    raise HTTPException(
                        409,
                        f"request {rid} has {len(properties)} properties; at most {MAX_PROPERTIES} "
                        f"are kept, so {key!r} is not added (an existing one can be changed)",
                    )
                at = ch_time_us(clock.now())
                await state.analytics.insert(
                    "request_property_overrides",
                    [
                        {
                            "org_id": org,
                            "request_id": rid,
                            "key": key,
                            "value": value,
                            "request_created_at": logged[0]["request_created_at"],
                            "updated_at": at,
                        }
                    ],
                )
        state.m_queries.labels("property", "ok").inc()
        return {
            "request_id": rid,
            "key": key,
            "value": value,
            "updated_at": at.replace(" ", "T") + "Z",
            "properties": {**properties, key: value},
        }

    @router.put("/v1/request/{request_id}/property", response_model=documented(PropertyWritten))
    async def put_property(request_id: RequestId, body: PropertyPut, org: str = Depends(org_id)) -> dict[str, Any]:
        """Adds the custom property `key` to a logged request, or changes its value; its other properties stay.
        Every read of the request's properties sees it from the answer on: the request, queries and exports,
        property filters, the property endpoints, groupings and sessions. Putting the same value again changes nothing."""
        try:
            key, value = custom_property(body.key, body.value)
        except PropertyError as exc:
            raise _invalid(exc.part, str(exc)) from None
        return await put(org, str(request_id), key, value)

    @router.post("/v1/session/{session_id:path}/feedback", tags=["helicone"], response_model=documented(SessionFeedbackWritten),
                 responses=error_responses({404: "no session of the caller's org has this id"}))
    async def session_feedback(session_id: Annotated[FilterText, Path()], body: Feedback, org: str = Depends(org_id)) -> dict[str, Any]:
        """Helicone's session feedback: the property Helicone-Session-Feedback, "1" (thumbs up) or "0", put on the
        session's first request (as Helicone's SessionManager puts it)."""
        first = await state.analytics.query(FIRST_OF_SESSION_SQL, {"org": org, "sid": session_id})
        if not first:
            state.m_queries.labels("property", "not_found").inc()
            raise HTTPException(404, f"session {session_id[:200]!r} not found")
        key, value = custom_property(SESSION_FEEDBACK, "1" if body.rating else "0")
        return {"data": await put(org, first[0]["request_id"], key, value), "error": None}

    return router
