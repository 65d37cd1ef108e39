"""The provider key vault's routes: an org stores, lists and deletes its own provider API keys (one per provider of the
provider table), encrypted at rest (helicone_core.vault); the gateway then adds the stored key to the org's requests
that carry none. A key is never answered back: the list shows a hint (`sk-...abcd`). Off (503 naming the setting)
while the operator has not set HELICONE_VAULT_KEY."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from helicone_core import db, vault
from helicone_core.providers import PROVIDER_TABLE
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .keys import _storable
from .models import Answer, documented, error_responses, utf8_text

# the providers a key can be stored for: those the gateway knows how to send one to (the provider table's `key`)
VAULT_PROVIDERS = tuple(name for name, p in PROVIDER_TABLE.items() if p.vault_header is not None)
VaultProvider = Literal[VAULT_PROVIDERS]  # type: ignore[valid-type]


def _provider_key(key: str) -> str:
    if not vault.PROVIDER_KEY.fullmatch(key):
        raise ValueError(f"must be the provider's API key as it issued it: {vault.PROVIDER_KEY_FORM}")
    if key.startswith(db.KEY_PREFIX):
        raise ValueError("is a Helicone API key: store the provider's own key (the gateway sends it to the provider)")
    return key


class NewProviderKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: VaultProvider = Field(description="the provider table's name of the provider the key is for")
    key: Annotated[str, AfterValidator(_provider_key)] = Field(
        description="the provider's API key; never answered back, stored encrypted", json_schema_extra={"writeOnly": True})
    name: Annotated[utf8_text(200, min_length=1), AfterValidator(_storable)] = Field(
        "default", description="a label to recognise the key by")


PROVIDER_KEY_EXAMPLE = {"id": "8c1f7a2e-5b3d-4e6f-9a0b-1c2d3e4f5a6b", "org_id": "0b7f6e5d-4c3b-4a29-8f1e-0d9c8b7a6f5e",
                        "provider": "openai", "name": "production", "hint": "sk-...Xy9z",
                        "created_at": "2026-03-01T12:00:00.123456+00:00"}


class ProviderKey(Answer):
    """One stored key of the org, never the key itself."""

    model_config = ConfigDict(json_schema_extra={"examples": [PROVIDER_KEY_EXAMPLE]})

    id: str = Field(description="changes each time the provider's key is replaced")
    org_id: str
    provider: str
    name: str
    hint: str = Field(description="the key's start and last four characters, to recognise it by")
    created_at: str


class ProviderKeyList(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [PROVIDER_KEY_EXAMPLE]}]})

    data: list[ProviderKey] = Field(description="one per provider, by provider name")


def provider_keys_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/provider-keys", tags=["provider keys"], responses=error_responses({
        503: "the vault is off (the operator has not set HELICONE_VAULT_KEY), or Postgres is unavailable"}))
    keyring = state.settings.vault_keyring()

    def vault_on() -> vault.Keyring:
        if keyring is None:
            raise HTTPException(503, vault.vault_off_message())
        if state.pool is None:
            raise HTTPException(503, "key store unavailable; try again shortly", {"Retry-After": "5"})
        return keyring

    @router.get("", response_model=documented(ProviderKeyList))
    async def list_provider_keys(org: str = Depends(org_id), _: vault.Keyring = Depends(vault_on)) -> dict:
        """Your org's stored provider keys: each one's hint, never the key."""
        return {"data": [k.to_json() for k in await vault.list_provider_keys(state.pool, org)]}

    @router.post("", status_code=201, response_model=documented(ProviderKey), responses={
        200: {"model": ProviderKey, "description": "the provider's stored key was replaced by this one (a new id)"}})
    async def store_provider_key(new: NewProviderKey, response: Response, org: str = Depends(org_id),
                                 ring: vault.Keyring = Depends(vault_on)) -> dict:
        """Stores your org's key for a provider (201), or replaces the one stored (200): every gateway adds it, within
        about a second, to your org's requests to that provider that carry no provider key."""
        stored, created = await vault.store_provider_key(state.pool, ring, org, new.provider, new.name, new.key)
        if not created:
            response.status_code = 200
        return stored.to_json()

    @router.delete("/{provider}", response_model=documented(ProviderKey), responses=error_responses({
        404: "your org stores no key for this provider"}))
    async def delete_provider_key(provider: str, org: str = Depends(org_id), _: vault.Keyring = Depends(vault_on)) -> dict:
        """Deletes your org's key for a provider: every gateway stops adding it within about a second."""
        deleted = await vault.delete_provider_key(state.pool, org, provider) if provider in VAULT_PROVIDERS else None
        if deleted is None:
            shown = provider if len(provider) <= 64 else provider[:64] + "..."
            raise HTTPException(404, f"your org stores no key for provider {shown!r} (see GET /v1/provider-keys; providers: "
                                f"{', '.join(VAULT_PROVIDERS)})")
        return deleted.to_json()

    return router
