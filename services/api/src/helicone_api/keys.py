"""Key management for the caller's own org: list, create, revoke. A revoked key stops working in
every gateway and api within about a second (the key directories follow Postgres live)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from helicone_core import db
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .models import Answer, documented, error_responses, utf8_text


def _storable(name: str) -> str:
    if "\x00" in name:
        raise ValueError("must not contain NUL characters (Postgres text cannot store them)")
    return name


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[utf8_text(200, min_length=1), AfterValidator(_storable)] = Field(
        "api", description="a label to recognise the key by")


KEY_EXAMPLE = {"id": "3d9c1f0e-8a5b-4c1d-9e2f-7a6b5c4d3e2f", "org_id": "0b7f6e5d-4c3b-4a29-8f1e-0d9c8b7a6f5e",
               "name": "ci", "preview": "sk-helicone-Ab3x…", "created_at": "2026-03-01T12:00:00.123456+00:00"}


class ApiKey(Answer):
    """One key of the org, never the key itself."""

    model_config = ConfigDict(json_schema_extra={"examples": [{**KEY_EXAMPLE, "revoked_at": "2026-03-02T09:30:00.654321+00:00"}]})

    id: str
    org_id: str
    name: str
    preview: str = Field(description="enough of the key to recognise it")
    created_at: str
    revoked_at: str | None = Field(description="null while the key works")


class KeyList(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [{**KEY_EXAMPLE, "revoked_at": None}]}]})

    data: list[ApiKey] = Field(description="oldest first, revoked keys too")


class CreatedApiKey(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": KEY_EXAMPLE["id"], "org_id": KEY_EXAMPLE["org_id"], "name": "ci", "key": "sk-helicone-Ab3xk2Jd9vQpL0sTz7YwR4mNc8HfUe1Gi5oBa6WqXyE"}]})

    id: str
    org_id: str
    name: str
    key: str = Field(description="the key itself: shown in this answer only")


def keys_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=error_responses({
        400: "a key given where its id belongs", 404: "no key with this id in the caller's org"}))

    def pool():
        if state.pool is None:
            raise HTTPException(503, "key store unavailable; try again shortly", {"Retry-After": "5"})
        return state.pool

    @router.get("", response_model=documented(KeyList))
    async def list_keys(org: str = Depends(org_id)) -> dict:
        """Every key of your org (revoked ones too); never the key itself, only a preview."""
        return {"data": [k.to_json() for k in await db.list_keys(pool(), org)]}

    @router.post("", status_code=201, response_model=documented(CreatedApiKey))
    async def create_key(new: NewKey, org: str = Depends(org_id)) -> dict:
        """A new key for your org; the plaintext `key` is shown in this answer only."""
        created = await db.create_key(pool(), org, new.name)
        return {"id": created.id, "org_id": created.org_id, "name": new.name, "key": created.key}

    @router.delete("/{key_id}", response_model=documented(ApiKey))
    async def revoke_key(key_id: str, org: str = Depends(org_id)) -> dict:
        """Revokes one of your org's keys (by id); revoking twice is harmless."""
        if key_id.startswith(db.KEY_PREFIX):  # a key in a URL ends up in access logs
            raise HTTPException(400, "revoke by key id (from GET /v1/keys), never by the key itself")
        revoked = await db.revoke_key(pool(), key_id, org)
        if revoked is None:
            shown = key_id if len(key_id) <= 64 else key_id[:64] + "..."
            raise HTTPException(404, f"no key {shown!r} in your org (use the id from GET /v1/keys)")
        return revoked.to_json()

    return router
