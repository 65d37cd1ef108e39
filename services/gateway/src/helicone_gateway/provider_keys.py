"""The provider key vault in the gateway (helicone_core.vault): which requests get their org's stored provider key, in
which header, and where it never goes.

A request gets the stored key of its org for the provider it goes to when it carries no provider key of its own: none
of the headers the provider table says that provider takes one in (nor Gemini's ?key=). A Helicone API key sent where
the provider key goes (`OpenAI(api_key=<Helicone key>)`, Helicone's one-key form) counts as none: it is taken out,
never forwarded, and authenticates the request when Helicone-Auth is absent. The caller's own key always wins. The
stored key goes only to the deployment's base URL of that provider: never to another provider (each Helicone-Fallbacks
target gets its own provider's key, or none) nor to a Helicone-Target-URL host unless the operator lists its origin in
HELICONE_VAULT_TARGET_ORIGINS (a Target-URL of the caller's choosing would otherwise receive the key).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from helicone_core.db import KEY_PREFIX, bearer_token
from helicone_core.providers import PROVIDER_TABLE
from yarl import URL

# The caller's key for each provider: the headers it may come in (lower-case), and Gemini's query parameter.
KEY_HEADERS: dict[str, tuple[str, ...]] = {name: p.key_headers for name, p in PROVIDER_TABLE.items()}
KEY_PARAMS: dict[str, str] = {name: p.key_param for name, p in PROVIDER_TABLE.items() if p.key_param}
# Where a stored key is sent: (lower-case header, value prefix) per provider.
VAULT_HEADERS: dict[str, tuple[str, str]] = {name: p.vault_header for name, p in PROVIDER_TABLE.items() if p.vault_header}
# Every header any provider takes a key in: where a Helicone key sent as the provider key is looked for.
SLOT_HEADERS = tuple(dict.fromkeys(h for headers in KEY_HEADERS.values() for h in headers))
# A browser's Realtime key, sent as a WebSocket subprotocol (OpenAI's form): the caller's own key.
REALTIME_KEY_PROTOCOL = "openai-insecure-api-key."

OWN, NONE, HELICONE = "own", "none", "helicone"  # what a request carries where its provider's key goes


def helicone_key(name: str, value: str) -> str:
    """The Helicone API key a provider-key header carries (`Authorization: Bearer sk-helicone-...`, `x-api-key:
    sk-helicone-...`), or ""."""
    token = bearer_token(value) if name == "authorization" else value.strip()
    return token if token.startswith(KEY_PREFIX) else ""


def take_helicone_key(raw_headers: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """(the first Helicone key sent where a provider key goes, the headers without every such header); ("", the same
    list) when there is none. Asked only of requests without Helicone-Auth, and of those whose route's key header
    holds one."""
    found, kept = "", []
    for name, value in raw_headers:
        key = helicone_key(name, value) if name in SLOT_HEADERS else ""
        if key:
            found = found or key
        else:
            kept.append((name, value))
    return (found, kept) if found else ("", raw_headers)


def caller_key(provider: str, headers: dict[str, str], query: bytes) -> str:
    """OWN when the request carries a key for `provider` in a header it takes one in (or Gemini's ?key=), HELICONE when
    that header holds a Helicone key, else NONE. The common case, a caller's own key in the first such header (OpenAI's
    Authorization), costs one dict lookup."""
    for name in KEY_HEADERS.get(provider, ()):
        value = headers.get(name)
        if value is not None:
            return HELICONE if KEY_PREFIX in value and helicone_key(name, value) else OWN
    param = KEY_PARAMS.get(provider)
    if param and query and param.encode() + b"=" in query:
        if any(n == param for n, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)):
            return OWN
    return NONE


def origin(url: str) -> str:
    """scheme://host[:port] of a base URL, as HELICONE_VAULT_TARGET_ORIGINS entries are compared (default port left out,
    host lower-case and IDNA-encoded)."""
    return str(URL(url).origin())
