"""Provider routing: which upstream a request goes to, and under which path."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .settings import GatewaySettings


class RoutingError(ValueError):
    pass


@dataclass(frozen=True)
class Route:
    provider: str  # openai or anthropic: decides how usage is read from the response
    base_url: str  # scheme://host[:port][/prefix], no trailing slash
    path: str  # path sent upstream, starting with /


PREFIXES = {"/openai": "openai", "/anthropic": "anthropic"}


def route(settings: GatewaySettings, path: str, headers: dict[str, str], target_url: str) -> Route:
    """path is the request path; headers are lower-cased.

    /openai/... and /anthropic/... choose the provider explicitly; otherwise /v1/messages (or an
    anthropic-version header) means Anthropic and anything else OpenAI. Helicone-Target-URL
    replaces the provider's base URL, keeping the provider detection for usage parsing.
    """
    provider = ""
    for prefix, name in PREFIXES.items():
        if path == prefix or path.startswith(prefix + "/"):
            provider, path = name, path[len(prefix):] or "/"
            break
    if not provider:
        if path.startswith("/v1/messages") or "anthropic-version" in headers:
            provider = "anthropic"
        else:
            provider = "openai"
    if target_url:
        host = (urlsplit(target_url).hostname or "").lower()
        allow = [h.lower() for h in settings.target_url_allowlist]
        if allow and host not in allow:
            raise RoutingError(f"Helicone-Target-URL host {host!r} is not allowed by this gateway")
        base = target_url
    else:
        base = settings.anthropic_url if provider == "anthropic" else settings.openai_url
    return Route(provider=provider, base_url=base.rstrip("/"), path=path)
