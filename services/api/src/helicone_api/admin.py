"""Operator routes behind HELICONE_ADMIN_TOKEN (not a Helicone key): `POST /v1/admin/orgs` creates
an org with its first key, shown once; from there the org manages its own keys (/v1/keys). Without
the token set the routes answer 404. The CLI path needs no token: `python -m helicone_core.key_admin
create` (or `helicone-stack keys create` on one box)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from helicone_core import db
from helicone_core.settings import env_name
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .keys import _storable
from .models import Answer, documented, error_responses, utf8_text

ADMIN_ORGS_PATH = "/v1/admin/orgs"
ADMIN_PATHS = frozenset({ADMIN_ORGS_PATH})  # skipped by RequestGuard's key check: the route checks the admin token


class NewOrg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[utf8_text(200, min_length=1), AfterValidator(_storable)] = Field(description="the org's name")
    key_name: Annotated[utf8_text(200, min_length=1), AfterValidator(_storable)] = Field(
        "admin", description="a label for the org's first key")


class OrgKey(Answer):
    id: str
    name: str
    key: str = Field(description="the key itself: shown in this answer only")


class CreatedOrg(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "org_id": "0b7f6e5d-4c3b-4a29-8f1e-0d9c8b7a6f5e", "name": "acme",
        "key": {"id": "3d9c1f0e-8a5b-4c1d-9e2f-7a6b5c4d3e2f", "name": "admin", "key": "sk-helicone-Ab3xk2Jd9vQpL0sTz7YwR4mNc8HfUe1Gi5oBa6WqXyE"}}]})

    org_id: str
    name: str
    key: OrgKey = Field(description="the org's first key")


def admin_router(state) -> APIRouter:
    router = APIRouter(prefix="/v1/admin", tags=["admin"])
    token = state.settings.admin_token

    def check(request: Request) -> None:
        if token is None:
            raise HTTPException(404, f"admin routes are off; the operator turns them on with {env_name('admin_token')}")
        given = db.bearer_token(request.headers.get("authorization", ""))
        if not given or not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise HTTPException(401, f"send 'Authorization: Bearer <the admin token>' ({env_name('admin_token')})",
                                {"WWW-Authenticate": "Bearer"})
        if state.pool is None:
            raise HTTPException(503, "key store unavailable; try again shortly", {"Retry-After": "5"})

    @router.post("/orgs", status_code=201, response_model=documented(CreatedOrg), responses=error_responses({
        404: "the admin routes are off: the operator has not set HELICONE_ADMIN_TOKEN"}))
    async def create_org(new: NewOrg, _: None = Depends(check)) -> dict:
        """A new org and its first key; the plaintext `key` is in this answer only (Postgres keeps its hash)."""
        async with state.pool.acquire() as conn, conn.transaction():
            org = await db.create_org(conn, new.name)
            created = await db.create_key(conn, org, new.key_name)
        return {"org_id": org, "name": new.name, "key": {"id": created.id, "name": new.key_name, "key": created.key}}

    return router
