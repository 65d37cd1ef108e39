"""Feedback (thumbs up/down) and named numeric scores on a logged request.

Scores live in the `request_scores` table next to `request_log` (helicone_core.analytics), one per
(org, request id, name): a write is an insert stamped with this api's clock, and FINAL keeps the
newest, so repeating a write is harmless and a newer one replaces the older. Thumbs up/down is the
score named `feedback` (1 up, 0 down). A score can only be put on a request the caller's org logged.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ConfigDict, Field

from .models import (
    FEEDBACK_SCORE,
    SCORE_NAME_FORM,
    SCORE_NAME_PATTERN,
    Answer,
    Feedback,
    RequestId,
    Score,
    Scores,
    documented,
    error_responses,
)
from .queries import SETTINGS

ScoreNamePath = Annotated[str, Path(pattern=SCORE_NAME_PATTERN, description=f"the score's name: {SCORE_NAME_FORM}")]

LOGGED_SQL = (
    "SELECT count() AS n FROM {db}.request_log WHERE org_id = {org:String} AND request_id = {rid:UUID} " + SETTINGS
)
# FINAL first, then `deleted = 0`: ClickHouse applies WHERE on non-key columns after FINAL's merge,
# so a deleted or replaced score is never read.
SCORES_OF_SQL = (
    "SELECT request_id, name, value FROM {db}.request_scores FINAL "
    "WHERE org_id = {org:String} AND request_id IN {rids:Array(UUID)} AND deleted = 0 ORDER BY request_id, name " + SETTINGS
)
SCORE_SQL = (
    "SELECT count() AS n FROM {db}.request_scores FINAL "
    "WHERE org_id = {org:String} AND request_id = {rid:UUID} AND name = {name:String} AND deleted = 0 " + SETTINGS
)


class ScoreWritten(Answer):
    """A score as PUT /v1/request/{id}/score/{name} wrote it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1", "name": "accuracy", "value": 0.9,
        "updated_at": "2026-03-01T12:00:05.123456Z"}]})

    request_id: str
    name: str
    value: float
    updated_at: str = Field(description="when this api wrote it (UTC, to the microsecond): the newest write wins")


class ScoresWritten(Answer):
    """The scores as POST /v1/request/{id}/score (Helicone's body) wrote them, all at one time."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1", "scores": {"accuracy": 0.9, "passed": 1.0},
        "updated_at": "2026-03-01T12:00:05.123456Z"}]})

    request_id: str
    scores: dict[str, float] = Field(description="name -> the value stored (true/false as 1/0)")
    updated_at: str = Field(description="when this api wrote them (UTC, to the microsecond): the newest write wins")


class FeedbackWritten(ScoreWritten):
    """The rating as POST /v1/request/{id}/feedback wrote it: the score `feedback`, 1 (up) or 0 (down)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1", "name": FEEDBACK_SCORE, "value": 1.0,
        "updated_at": "2026-03-01T12:00:05.123456Z", "rating": True}]})

    rating: bool


class WriteClock:
    """The version of a score write (and of a property put, properties.py): UTC microseconds, strictly increasing
    in this clock, so of two writes through one api the later always wins (across replicas, the later by wall clock)."""

    def __init__(self) -> None:
        self._last = 0

    def now(self) -> int:
        self._last = max(time.time_ns() // 1000, self._last + 1)
        return self._last


def ch_time_us(us: int) -> str:
    """Microseconds since the epoch as a DateTime64(6) text value."""
    seconds, micros = divmod(us, 1_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).replace(microsecond=micros).strftime("%Y-%m-%d %H:%M:%S.%f")


async def scores_of(store, org_id: str, request_ids: list[str]) -> dict[str, dict[str, float]]:
    """request id -> {score name: value} for those of the given requests that have scores."""
    out: dict[str, dict[str, float]] = {}
    if not request_ids:
        return out
    for row in await store.query(SCORES_OF_SQL, {"org": org_id, "rids": request_ids}):
        out.setdefault(row["request_id"], {})[row["name"]] = float(row["value"])
    return out


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 in the api's usual form, for a rule that only this route knows."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def scores_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/request/{request_id}", tags=["scores"],
                       responses=error_responses({404: "no such request in the caller's org, or no such score on it"}))
    clock = WriteClock()

    async def logged(org: str, request_id: uuid.UUID, endpoint: str) -> None:
        rows = await state.analytics.query(LOGGED_SQL, {"org": org, "rid": str(request_id)})
        if not int(rows[0]["n"]):
            state.m_queries.labels(endpoint, "not_found").inc()
            raise HTTPException(404, f"request {request_id} not found")

    async def write(org: str, request_id: uuid.UUID, values: dict[str, float], *, deleted: bool = False) -> str:
        """One insert of every value, all stamped with the same time."""
        at = ch_time_us(clock.now())
        if values:
            await state.analytics.insert("request_scores", [{
                "org_id": org, "request_id": str(request_id), "name": name, "value": value, "deleted": int(deleted), "updated_at": at,
            } for name, value in values.items()])
        return at.replace(" ", "T") + "Z"

    async def put(org: str, request_id: uuid.UUID, name: str, value: float, endpoint: str) -> dict[str, Any]:
        with state.m_query_seconds.labels(endpoint).time():
            await logged(org, request_id, endpoint)
            updated_at = await write(org, request_id, {name: value})
        state.m_queries.labels(endpoint, "ok").inc()
        return {"request_id": str(request_id), "name": name, "value": value, "updated_at": updated_at}

    @router.post("/feedback", response_model=documented(FeedbackWritten))
    async def feedback(request_id: RequestId, body: Feedback, org: str = Depends(org_id)) -> dict:
        """Thumbs up (`true`) or down (`false`): the score `feedback`, 1 or 0; a newer rating replaces this one."""
        out = await put(org, request_id, FEEDBACK_SCORE, 1.0 if body.rating else 0.0, "feedback")
        return {**out, "rating": body.rating}

    @router.put("/score/{name}", response_model=documented(ScoreWritten))
    async def put_score(request_id: RequestId, name: ScoreNamePath, body: Score, org: str = Depends(org_id)) -> dict:
        """Sets the score `name`; writing it again replaces the value."""
        if name == FEEDBACK_SCORE and body.value not in (0.0, 1.0):
            raise _invalid("value", f"the {FEEDBACK_SCORE!r} score is 1 (thumbs up) or 0 (thumbs down)")
        return await put(org, request_id, name, body.value, "score")

    @router.post("/score", status_code=201, response_model=documented(ScoresWritten))
    async def post_scores(request_id: RequestId, body: Scores, org: str = Depends(org_id)) -> dict:
        """Helicone's form: sets every score named in `scores` at once (true/false as 1/0); writing one again
        replaces its value, and the scores not named are left as they are."""
        feedback = body.scores.get(FEEDBACK_SCORE)
        if feedback is not None and feedback not in (0.0, 1.0):
            raise _invalid(f"scores.{FEEDBACK_SCORE}", f"the {FEEDBACK_SCORE!r} score is 1 or true (thumbs up), 0 or false (thumbs down)")
        with state.m_query_seconds.labels("scores").time():
            await logged(org, request_id, "scores")
            updated_at = await write(org, request_id, body.scores)
        state.m_queries.labels("scores", "ok").inc()
        return {"request_id": str(request_id), "scores": body.scores, "updated_at": updated_at}

    @router.delete("/score/{name}", status_code=204)
    async def delete_score(request_id: RequestId, name: ScoreNamePath, org: str = Depends(org_id)) -> Response:
        with state.m_query_seconds.labels("score_delete").time():
            await logged(org, request_id, "score_delete")
            found = await state.analytics.query(SCORE_SQL, {"org": org, "rid": str(request_id), "name": name})
            if not int(found[0]["n"]):
                state.m_queries.labels("score_delete", "not_found").inc()
                raise HTTPException(404, f"request {request_id} has no score named {name!r}")
            await write(org, request_id, {name: 0.0}, deleted=True)
        state.m_queries.labels("score_delete", "ok").inc()
        return Response(status_code=204)

    return router
