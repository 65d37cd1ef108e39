"""Helicone-* request headers: what they mean and what is forwarded upstream."""

from __future__ import annotations

import re
from dataclasses import dataclass

from helicone_core.jsontext import json_object
from helicone_core.log_headers import (  # noqa: F401 - re-exported: the gateway's modules and tests read them here
    HTTP_TOKEN,
    HTTP_VALUE_CONTROL,
    MAX_PROPERTIES,
    OMIT_REQUEST,
    OMIT_RESPONSE,
    PROPERTY_PREFIX,
    REQUEST_NAME_PROPERTY,
    HeaderError,
    LogHeaders,
    read_log_header,
    switch,
)

from .llm_security import LLM_SECURITY_HEADER
from .moderation import MODERATIONS_HEADER
from .prompts import PromptError, PromptRequest, check_environment, check_prompt_id, check_version
from .providers import TARGET_URL_HEADER, base_url
from .resilience import RETRY_PREFIX, FallbackTarget, ResilienceError, RetryPolicy, parse_fallbacks, parse_retry
from .settings import base_url_problem
from .token_limit import TOKEN_LIMIT_HEADER, parse_handler

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",  # not in RFC 9110, but sent by old clients as Connection's twin (dropped as nginx and Go do)
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Set by the gateway's own HTTP server on every response; the provider's copies are dropped so
# that the caller never sees them twice.
SERVER_SET = frozenset({"date", "server"})
CACHE_PREFIX = "helicone-cache-"
STREAM_USAGE = "Helicone-Stream-Usage"
# Response header naming the region whose gateway answered (HELICONE_REGION), when one is set.
REGION_HEADER = "Helicone-Region"
_MODERATIONS = MODERATIONS_HEADER.lower()
_LLM_SECURITY = LLM_SECURITY_HEADER.lower()
_TOKEN_LIMIT = TOKEN_LIMIT_HEADER.lower()
OPENAI_API_BASE = "Helicone-OpenAI-Api-Base"


@dataclass
class HeliconeHeaders(LogHeaders):
    """The log headers (helicone_core.log_headers) and the gateway's own."""

    auth_key: str = ""
    target_url: str = ""
    # Helicone-Cache-* headers as sent (lower-case names); None when there are none (the common case:
    # such a request never touches the cache, see cache.py)
    cache: dict[str, str] | None = None
    prompt: PromptRequest | None = None  # Helicone-Prompt-Id and its companions
    stream_usage: bool = False  # Helicone-Stream-Usage: ask OpenAI-format streams for usage (usage.with_stream_usage)
    # Helicone-RateLimit-Policy as sent (an empty one too: a 400); None (the common case): never near the store (ratelimit.py)
    rate_limit_policy: str | None = None
    retry: RetryPolicy | None = None  # Helicone-Retry-*, when enabled
    fallbacks: tuple[FallbackTarget, ...] | None = None  # Helicone-Fallbacks
    moderations: bool = False  # Helicone-Moderations-Enabled: the latest user message is moderated first (moderation.py)
    llm_security: bool = False  # Helicone-LLM-Security-Enabled: the latest user message is classified first (llm_security.py)
    # either of the two: the one test a request pays for both (prompt_check.py)
    prompt_checked: bool = False
    # Helicone-Token-Limit-Exception-Handler's strategy; None (the common case): the body is never read for it (token_limit.py)
    token_limit: str | None = None


_TOKEN = re.compile(HTTP_TOKEN.encode())
_FORBIDDEN_IN_VALUE = re.compile(HTTP_VALUE_CONTROL.encode())  # RFC 9110: no control characters but HTAB


def decode_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """ASGI header pairs as (lower-case name, value) text. Values are UTF-8 (so a non-ASCII user id
    or property is stored as sent, and forwarded byte for byte); names that are not HTTP tokens and
    values with control characters (CR, LF, NUL: header injection) are refused, whatever server runs the app."""
    out = []
    for name, value in raw:
        if not _TOKEN.fullmatch(name):
            raise HeaderError(f"header name {name[:40]!r} is not a valid HTTP token")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HeaderError(f"header {name.decode('latin-1')!r} contains a control character")
        try:
            out.append((name.decode("latin-1").lower(), value.decode("utf-8")))
        except UnicodeDecodeError:
            raise HeaderError(f"header {name.decode('latin-1')!r} is not valid UTF-8") from None
    return out


def parse_helicone_headers(headers: list[tuple[str, str]]) -> HeliconeHeaders:
    """headers: lower-cased (name, value) pairs as ASGI gives them."""
    from helicone_core.db import bearer_token

    out = HeliconeHeaders()
    prompt: dict[str, str] | None = None
    retry: dict[str, str] | None = None
    seen: set[str] = set()
    for name, value in headers:
        if not name.startswith("helicone-"):
            continue
        # two copies (the app's and a proxy's): never guess which counts (Omit-Request 'true' then 'false')
        if name in seen:
            if name == "helicone-auth":
                raise HeaderError("Helicone-Auth must be sent once: 'Bearer <your Helicone API key>'")
            raise HeaderError(f"{name} was sent more than once; send each Helicone-* header once")
        seen.add(name)
        value = value.strip()
        if name == "helicone-auth":
            out.auth_key = bearer_token(value)
            if not out.auth_key:
                raise HeaderError("Helicone-Auth must be 'Bearer <your Helicone API key>'")
        elif name == "helicone-target-url":
            out.target_url = _target_url(value)
        elif name == STREAM_USAGE.lower():
            out.stream_usage = switch(STREAM_USAGE, value)
        elif name == "helicone-ratelimit-policy":
            out.rate_limit_policy = value
        elif read_log_header(out, name, value):
            pass
        elif name.startswith(CACHE_PREFIX):
            if out.cache is None:
                out.cache = {}
            out.cache[name] = value
        elif name.startswith(PROMPT_PREFIX):
            if prompt is None:
                prompt = {}
            prompt[name] = value
        elif name.startswith(RETRY_PREFIX):
            if retry is None:
                retry = {}
            retry[name] = value
        elif name == "helicone-fallbacks":
            try:
                out.fallbacks = parse_fallbacks(value, _target_url)
            except ResilienceError as exc:
                raise HeaderError(str(exc)) from None
        elif name == _MODERATIONS:
            if switch(MODERATIONS_HEADER, value):
                out.moderations = out.prompt_checked = True
        elif name == _LLM_SECURITY:
            if switch(LLM_SECURITY_HEADER, value):
                out.llm_security = out.prompt_checked = True
        elif name == _TOKEN_LIMIT:
            out.token_limit = parse_handler(value)
        elif name == OPENAI_API_BASE.lower():
            raise HeaderError(f"{OPENAI_API_BASE} is not supported by this gateway: send {TARGET_URL_HEADER}: <base URL> "
                              "instead (for Azure, call /azure/openai/deployments/... with "
                              f"{TARGET_URL_HEADER}: https://<resource>.openai.azure.com)")
    if prompt is not None:
        out.prompt = _prompt_request(prompt)
    if retry is not None:
        try:
            out.retry = parse_retry(retry)
        except ResilienceError as exc:
            raise HeaderError(str(exc)) from None
    return out


PROMPT_PREFIX = "helicone-prompt-"
PROMPT_HEADERS = ("helicone-prompt-id", "helicone-prompt-version", "helicone-prompt-environment", "helicone-prompt-inputs")


def _prompt_request(values: dict[str, str]) -> PromptRequest:
    """Helicone-Prompt-Id (+ Helicone-Prompt-Version or Helicone-Prompt-Environment, and
    Helicone-Prompt-Inputs, a JSON object)."""
    for name in values:
        if name not in PROMPT_HEADERS:
            raise HeaderError(f"unknown header {name!r}; prompt headers are "
                              "Helicone-Prompt-Id, -Version, -Environment and -Inputs")
    try:
        if "helicone-prompt-id" not in values:
            raise HeaderError("Helicone-Prompt-Version, -Environment and -Inputs need Helicone-Prompt-Id")
        version, environment = values.get("helicone-prompt-version"), values.get("helicone-prompt-environment")
        if version is not None and environment is not None:
            raise HeaderError("give Helicone-Prompt-Version or Helicone-Prompt-Environment, not both")
        inputs: object = {}
        if "helicone-prompt-inputs" in values:
            inputs = json_object(values["helicone-prompt-inputs"])
            if inputs is None:
                raise HeaderError("Helicone-Prompt-Inputs must be a JSON object of variable values, "
                                  'e.g. {"topic": "billing", "max_words": 50}')
        return PromptRequest(
            prompt_id=check_prompt_id(values["helicone-prompt-id"], "Helicone-Prompt-Id"),
            version=check_version(version, "Helicone-Prompt-Version") if version is not None else 0,
            environment=check_environment(environment, "Helicone-Prompt-Environment") if environment else "",
            inputs=inputs,
        )
    except PromptError as exc:
        raise HeaderError(exc.message) from None


def _target_url(value: str, name: str = "Helicone-Target-URL") -> str:
    """A target base URL (Helicone-Target-URL, or a Helicone-Fallbacks "target-url": `name` says which)."""
    problem = base_url_problem(value)
    if problem:
        raise HeaderError(f"{name} {problem}")
    return base_url(value)  # encoded (IDNA host, escaped path): the request's raw path and query follow it as sent


# Encodings the gateway can decode for the log. The response bytes themselves are passed through
# unchanged; only the offer to the provider is narrowed.
LOGGABLE_ENCODINGS = ("gzip", "deflate", "identity")


def narrow_accept_encoding(value: str) -> str:
    offered = [part.strip() for part in value.split(",") if part.strip()]
    kept = [part for part in offered if part.split(";", 1)[0].strip().lower() in LOGGABLE_ENCODINGS]
    return ", ".join(kept) or "identity"


def _named_by_connection(values) -> frozenset[str]:
    """The headers a Connection header names: hop-by-hop as well (RFC 9110 7.6.1), never forwarded."""
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,\s]+)")


def sigv4_signed(headers: list[tuple[str, str]], name: str) -> bool:
    """Whether an AWS Signature V4 Authorization header (Bedrock's SDKs sign every request) covers the header
    `name` (lower-case): AWS refuses a request whose signed header was changed on the way (403)."""
    for n, v in headers:
        if n == "authorization" and v.startswith("AWS4-"):
            m = _SIGNED_HEADERS.search(v)
            return m is not None and name in m.group(1).lower().split(";")
    return False


def forward_request_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Everything but Helicone-*, hop-by-hop headers (those a Connection header names too), Host and
    Content-Length (re-computed). Accept-Encoding is narrowed to what the log can decode, unless a SigV4
    signature covers it (then it goes as signed: the answer's usage may be unreadable, the request is not refused)."""
    out = []
    connection = [v for n, v in headers if n == "connection"]
    named = _named_by_connection(connection) if connection else frozenset()
    for n, v in headers:
        if n.startswith("helicone-") or n in HOP_BY_HOP or n in ("host", "content-length") or n in named:
            continue
        if n == "accept-encoding":
            narrowed = narrow_accept_encoding(v)
            if narrowed != v and not sigv4_signed(headers, n):
                v = narrowed
        out.append((n, v))
    return out


def forward_response_headers(headers) -> list[tuple[bytes, bytes]]:
    """Raw (bytes) provider headers minus hop-by-hop ones (those a Connection header names too; the
    ASGI server re-frames the body), the ones our server sets itself (Date, Server) and Helicone-* ones:
    those are this gateway's answer headers (Helicone-Id, -Cache, ...), never a target's copies
    (another Helicone gateway's), which the caller would see next to ours."""
    out = []
    named: frozenset[str] = frozenset()
    for n, v in headers:
        if len(n) == 10 and n.lower() == b"connection":
            named |= _named_by_connection([v.decode("latin-1")])
    for n, v in headers:
        name = n.lower()
        text = name.decode("latin-1")
        if text not in HOP_BY_HOP and text not in SERVER_SET and text not in named and not text.startswith("helicone-"):
            out.append((name, v))
    return out
