"""Per-request webhooks (Helicone's /v1/webhooks): an org's destinations for each request it logs,
stored in Postgres (helicone_core.request_webhooks) and delivered by ingest once it has written the
request. The HMAC key that signs deliveries is shown once, in the create answer.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from helicone_core.log_headers import MAX_PROPERTY_VALUE
from helicone_core.request_webhooks import (
    COLUMNS,
    HMAC_KEY_PREFIX,
    MAX_PROPERTY_FILTERS,
    MAX_SAMPLE_RATE,
    MAX_WEBHOOKS_PER_ORG,
    MIN_SAMPLE_RATE,
    ORG_WEBHOOKS_SQL,
    TABLE,
)
from helicone_core.webhooks import WebhookUrl
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .alerts import NUL_MESSAGE
from .models import Answer, RequestId, documented, error_responses, utf8_text


class RequestWebhookSpec(BaseModel):
    """A webhook as created (POST)."""

    model_config = ConfigDict(extra="forbid")

    destination: WebhookUrl = Field(..., description="http(s) URL on a public address; each matching request is POSTed there")
    sample_rate: float = Field(MAX_SAMPLE_RATE, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, allow_inf_nan=False,
                               description="percent of the matching requests sent, 0-100")
    property_filters: dict[utf8_text(256, 1), utf8_text(MAX_PROPERTY_VALUE)] = Field(
        default_factory=dict, max_length=MAX_PROPERTY_FILTERS,
        description="{name: value}: only requests with all these Helicone-Property-<name> values are sent "
                    "(names match in any case, as the gateway stores them in lower case)")
    include_data: bool = Field(True, description="the payload carries request_body and response_body")

    @field_validator("property_filters")
    @classmethod
    def _filters(cls, v: dict[str, str]) -> dict[str, str]:
        if any("\x00" in k or "\x00" in x for k, x in v.items()):
            raise ValueError(NUL_MESSAGE)  # Postgres jsonb cannot hold it
        lowered = {k.lower(): x for k, x in v.items()}
        if len(lowered) != len(v):
            raise ValueError("names differing only in case are the same property: give each once")
        return lowered


WEBHOOK_EXAMPLE = {
    "id": "3c0f6a8e-2b1d-4e7a-9f5c-8d4b2a1e0c9f", "destination": "https://hooks.example.com/helicone",
    "sample_rate": 100.0, "property_filters": {"environment": "production"}, "include_data": True,
    "created_at": "2026-03-01T09:00:00.654321Z",
}


class RequestWebhookState(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [WEBHOOK_EXAMPLE]})

    id: str
    destination: str
    sample_rate: float
    property_filters: dict[str, str]
    include_data: bool
    created_at: str


class CreatedRequestWebhook(RequestWebhookState):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **WEBHOOK_EXAMPLE, "hmac_key": "whsec_kq3V0yG8tYwN2bJc7xRf5LmZp1QsHd9AeU4oTi6Wv0E"}]})

    hmac_key: str = Field(description="signs deliveries (Helicone-Signature: hex HMAC-SHA256 of the body): shown in this answer only")


class RequestWebhookList(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [WEBHOOK_EXAMPLE]}]})

    data: list[RequestWebhookState] = Field(description="oldest first")


def webhook_json(row) -> dict[str, Any]:
    return {"id": str(row["id"]), "destination": row["destination"], "sample_rate": row["sample_rate"],
            "property_filters": json.loads(row["property_filters"]), "include_data": row["include_data"],
            "created_at": row["created_at"].astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")}


def request_webhooks_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=error_responses({
        404: "no webhook of the caller's org has this id", 409: "the org already has the most webhooks allowed"}))

    @router.post("", status_code=201, response_model=documented(CreatedRequestWebhook))
    async def create(spec: RequestWebhookSpec, org: str = Depends(org_id)) -> dict:
        """Creates a webhook; the answer's `hmac_key` (which signs its deliveries) is shown only here."""
        problem = state.webhooks.url_problem(spec.destination)
        if problem:
            raise RequestValidationError([{"loc": ("body", "destination"), "msg": problem, "type": "value_error"}])
        key = HMAC_KEY_PREFIX + secrets.token_urlsafe(32)
        async with state.pool.acquire() as conn, conn.transaction():
            # one org at a time: the count and the insert cannot interleave with another create
            await conn.execute(f"SELECT pg_advisory_xact_lock(hashtext('helicone_{TABLE}:' || $1::text))", org)
            if await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE org_id = $1", uuid.UUID(org)) >= MAX_WEBHOOKS_PER_ORG:
                raise HTTPException(409, f"an org has at most {MAX_WEBHOOKS_PER_ORG} webhooks; delete one first")
            row = await conn.fetchrow(
                f"INSERT INTO {TABLE}(org_id, destination, hmac_key, sample_rate, property_filters, include_data) "
                f"VALUES ($1, $2, $3, $4, $5::jsonb, $6) RETURNING {COLUMNS}",
                uuid.UUID(org), spec.destination, key, spec.sample_rate, json.dumps(spec.property_filters), spec.include_data)
        return {**webhook_json(row), "hmac_key": key}

    @router.get("", response_model=documented(RequestWebhookList))
    async def list_webhooks(org: str = Depends(org_id)) -> dict:
        """The org's webhooks, without their HMAC keys."""
        rows = await state.pool.fetch(ORG_WEBHOOKS_SQL, uuid.UUID(org))
        return {"data": [webhook_json(r) for r in rows]}

    @router.delete("/{webhook_id}", status_code=204)
    async def delete(webhook_id: RequestId, org: str = Depends(org_id)) -> Response:
        """Deletes the webhook (ingest stops delivering to it within its config cache's TTL)."""
        deleted = await state.pool.fetchval(
            f"DELETE FROM {TABLE} WHERE id = $1 AND org_id = $2 RETURNING id", webhook_id, uuid.UUID(org))
        if deleted is None:
            raise HTTPException(404, f"webhook {webhook_id} not found")
        return Response(status_code=204)

    return router
