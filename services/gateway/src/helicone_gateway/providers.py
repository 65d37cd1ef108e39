"""Provider routing: which upstream a request goes to, under which path, and how its usage is read.

The facts per provider (prefix, default base URL, usage format) are the provider table
(helicone_core.providers); this module applies them, with the deployment's base URLs, once per
request: one dict lookup on the first path segment."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from helicone_core.providers import PROVIDER_TABLE, Provider
from yarl import URL

from .settings import GatewaySettings, env_name
from .translate_anthropic import OPENAI_CHAT_PREFIX, upstream_path
from .translate_anthropic import PROVIDER as TRANSLATED_PROVIDER

TARGET_URL_HEADER = "Helicone-Target-URL"


@dataclass(frozen=True)
class Route:
    provider: str  # a provider table name: the logged provider and the metric label
    base_url: str  # scheme://host[:port][/prefix], no trailing slash; "" when the deployment names none
    path: str  # path sent upstream, starting with /
    target: bool = False  # base_url came from Helicone-Target-URL (egress-checked, see egress.py)
    usage: str = "openai"  # how model and tokens are read from the answer (helicone_core.providers.USAGE_FORMATS)
    # the caller speaks OpenAI Chat Completions (under OPENAI_CHAT_PREFIX): the gateway translates to and from the
    # provider's own API (translate_anthropic); `path` is then that API's
    openai_chat: bool = False

    def path_model(self) -> str:
        """The model the path names (Gemini's models/<m>:generateContent, Azure's deployment, Claude's on Vertex AI), or ""."""
        p = PROVIDER_TABLE.get(self.provider)
        return p.model_in(self.path) if p is not None else ""

    def takes_stream_options(self) -> bool:
        """Whether this provider's API at this path takes stream_options.include_usage (the provider table's fact)."""
        p = PROVIDER_TABLE.get(self.provider)
        return p is not None and p.takes_stream_options(self.path)


def base_url(url: str) -> str:
    """A base URL in the encoded form (IDNA host, percent-encoded path) the request's raw path and query are
    appended to as they are (see upstream_url); "" stays ""."""
    return str(URL(url)).rstrip("/") if url else ""


def upstream_url(url: str) -> URL:
    """A base URL (base_url's form) plus the request's raw path and query, taken as they are: never re-encoded nor
    normalized (a%3Ab stays a%3Ab, ?ids=a%2Fb stays so)."""
    return URL(url, encoded=True)


def dot_segment(path: str) -> bool:
    """Whether the raw `path` has a '.' or '..' segment, as sent or percent-encoded (%2e%2e, ..%2f): sent on, the
    provider's server would resolve it, and /<prefix>/../.. would leave the base path the deployment names."""
    if "/." not in path and "%" not in path and "\\" not in path:  # the common path: no unquoting
        return False
    return any(s in (".", "..") for s in unquote(path).replace("\\", "/").split("/"))


def dot_segment_message(path: str) -> str:
    """The 400 message for a path dot_segment refuses."""
    return (f"request path {path[:200]!r} has a '.' or '..' segment (or one percent-encoded): send the path it "
            "stands for, without them")


def missing_base_url(provider: str, path: str = "") -> str:
    """The 400 message for a provider whose base URL this deployment does not set, or whose default base URL does not
    serve the API of `path` (a Vertex AI path: Google's regional hosts)."""
    p = PROVIDER_TABLE.get(provider)
    if p is not None and (needed := p.target_needed(path)):
        return (f"{path[:200]!r} is a path of an API {p.label}'s default base URL ({p.base_url}) does not serve: "
                f"send {TARGET_URL_HEADER}: {needed}, or have the gateway's operator set {env_name('provider_urls')} "
                f"for {provider!r}")
    example = p.base_url_form if p is not None and p.base_url_form else "https://..."
    return (f"No base URL for provider {provider!r}: send {TARGET_URL_HEADER}: {example}, or have the gateway's operator "
            f"set {env_name('provider_urls')}='{{\"{provider}\": \"{example}\"}}'")


class Router:
    """Routes with the base URLs of one deployment: the table's defaults, then HELICONE_OPENAI_URL /
    HELICONE_ANTHROPIC_URL, then HELICONE_PROVIDER_URLS."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.base_urls = {name: p.base_url for name, p in PROVIDER_TABLE.items()}
        self.base_urls["openai"] = settings.openai_url
        self.base_urls["anthropic"] = settings.anthropic_url
        self.base_urls.update(settings.provider_urls)
        self.base_urls = {name: base_url(url) for name, url in self.base_urls.items()}
        # providers at their default base URL that does not serve some of their paths (Vertex AI's, at the Gemini API's
        # host): such a path gets no base URL (a 400 naming the one it needs) rather than the wrong API or company
        self.defaulted = {name for name, p in PROVIDER_TABLE.items()
                          if p.target_paths and self.base_urls[name] == base_url(p.base_url)}
        # a path marker that, without a prefix, names its provider (Gemini's ":generateContent"): only one read in the
        # provider's own format; Anthropic's "/chat/completions" (its OpenAI SDK layer) is every OpenAI-format path
        self.markers = tuple((marker, name) for name, p in PROVIDER_TABLE.items() for marker, fmt in p.usage_paths
                             if fmt == name)
        # a path without a colon holds no custom-method marker (Gemini's ":generateContent"): the common path
        # (/v1/chat/completions) is searched for the others only, in the same order
        self.colonless_markers = tuple((marker, name) for marker, name in self.markers if ":" not in marker)

    def route(self, path: str, headers: dict[str, str], target_url: str) -> Route:
        """path is the request path; headers are lower-cased.

        /<provider>/... chooses a provider of the table explicitly; /ai/... (OPENAI_CHAT_PREFIX) is OpenAI Chat
        Completions the gateway translates to Anthropic's Messages API; otherwise a path marker of one
        (Gemini's `:generateContent`, Vertex AI's `/publishers/anthropic/models/` for Claude, Bedrock's `/converse`)
        names it, /v1/messages (or an anthropic-version header) means
        Anthropic and anything else OpenAI. Helicone-Target-URL replaces the provider's base URL,
        keeping the provider (and so how usage is read); where it may go is checked by the egress
        policy, not here. A path the provider's default base URL does not serve (Vertex AI's, the table's
        target_paths) gets no base URL unless Target-URL or the deployment names one."""
        if path[:1] != "/":  # "*@host/...": after a base URL it would name another host (the server refuses it too)
            path = "/" + path
        end = path.find("/", 1)
        provider = PROVIDER_TABLE.get(path[1:end] if end > 0 else path[1:])
        if provider is not None:
            path = path[len(provider.name) + 1:] or "/"
        elif path.startswith(OPENAI_CHAT_PREFIX):  # OpenAI Chat Completions translated to Anthropic's Messages API
            provider = PROVIDER_TABLE[TRANSLATED_PROVIDER]
            path = upstream_path(path[len(OPENAI_CHAT_PREFIX) - 1:])
            return self._route(provider, path, target_url, openai_chat=True)
        else:
            name = ""
            for marker, owner in self.markers if ":" in path else self.colonless_markers:
                if marker in path:
                    name = owner
                    break
            if not name:
                anthropic = path.startswith("/v1/messages") or "anthropic-version" in headers
                name = "anthropic" if anthropic else "openai"
            provider = PROVIDER_TABLE[name]
        return self._route(provider, path, target_url)

    def _route(self, provider: Provider, path: str, target_url: str, openai_chat: bool = False) -> Route:
        usage = provider.usage_for(path)
        if target_url:
            return Route(provider.name, target_url.rstrip("/"), path, target=True, usage=usage, openai_chat=openai_chat)
        if provider.name in self.defaulted and provider.target_needed(path):
            return Route(provider.name, "", path, usage=usage, openai_chat=openai_chat)  # missing_base_url names the host
        return Route(provider.name, self.base_urls[provider.name], path, usage=usage, openai_chat=openai_chat)

    def route_to(self, name: str, path: str, target_url: str = "") -> Route:
        """A route to the provider the table names `name` (a Helicone-Fallbacks entry), its base URL
        replaced by target_url when one is given."""
        return self._route(PROVIDER_TABLE[name], path, target_url)
