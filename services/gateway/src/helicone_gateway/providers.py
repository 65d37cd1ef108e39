"""Provider routing: which upstream a request goes to, and under which path."""

from __future__ import annotations

from dataclasses import dataclass

from helicone_core.events import PROVIDERS

from .settings import GatewaySettings


@dataclass(frozen=True)
class Route:
    provider: str  # openai or anthropic: decides how usage is read from the response
    base_url: str  # scheme://host[:port][/prefix], no trailing slash
    path: str  # path sent upstream, starting with /
    target: bool = False  # base_url came from Helicone-Target-URL (egress-checked, see egress.py)


PREFIXES = {f"/{name}": name for name in PROVIDERS}


def route(settings: GatewaySettings, path: str, headers: dict[str, str], target_url: str) -> Route:
    """path is the request path; headers are lower-cased.

    /openai/... and /anthropic/... choose the provider explicitly; otherwise /v1/messages (or an
    anthropic-version header) means Anthropic and anything else OpenAI. Helicone-Target-URL
    replaces the provider's base URL, keeping the provider detection for usage parsing (where it
    may go is checked by the gateway's egress policy, not here).
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
        return Route(provider=provider, base_url=target_url.rstrip("/"), path=path, target=True)
    return Route(provider=provider, base_url=provider_base_url(settings, provider), path=path)


def provider_base_url(settings: GatewaySettings, provider: str) -> str:
    """The configured base URL of a provider, without a trailing slash."""
    base = settings.anthropic_url if provider == "anthropic" else settings.openai_url
    return base.rstrip("/")
