"""Async logging (Helicone's `POST /custom/v1/log`): apps that call a provider themselves send the
request, the response and its timing afterwards; it becomes the same RequestLogged the gateway
emits (usage and cost read by helicone_core.usage), with source "async-log"."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from helicone_core import events
from helicone_core.cost import CostRegistry
from helicone_core.log_headers import HeaderError, LogHeaders, read_log_header
from helicone_core.providers import PROVIDER_TABLE
from helicone_core.usage import Parsed, billed_by_request, is_stream, parse_response, usage_is_its_own
from pydantic import BaseModel, ConfigDict, Field, model_validator

ASYNC_LOG_SOURCE = "async-log"
MAX_URL = 2048
MAX_PROVIDER = 64
_ID_NAMESPACE = uuid.UUID("0b6c1d8e-54a3-4f0e-9d8c-7a2f5e1c3b90")  # ids of timed logs sent without one: uuid5(this, content)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MS = dt.timedelta(milliseconds=1)
# The provider a request URL's host names, when the payload does not say.
# a provider's host, from the provider table's default base URLs (api.openai.com -> openai, ...)
_HOST_PROVIDERS = tuple((urlsplit(p.base_url).hostname, p.name) for p in PROVIDER_TABLE.values() if p.base_url)


class Instant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: int = Field(ge=0, le=events.LATEST_SECONDS)  # Unix seconds
    milliseconds: int = Field(0, ge=0, le=999)

    def to_datetime(self) -> dt.datetime:
        # exact (no float seconds: 1767000001.001 s is 1767000001.0009999 as a float, a millisecond lost)
        return _EPOCH + dt.timedelta(seconds=self.seconds, milliseconds=self.milliseconds)


class Timing(BaseModel):
    model_config = ConfigDict(extra="ignore")

    startTime: Instant
    endTime: Instant
    timeToFirstToken: float | None = Field(None, ge=0, le=86_400_000, description="milliseconds from start to the first token")

    @model_validator(mode="after")
    def _ordered(self) -> Timing:
        if self.endTime.to_datetime() < self.startTime.to_datetime():
            raise ValueError("endTime is before startTime")
        return self


class ProviderRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url: str = Field(max_length=MAX_URL, description="the provider URL called, or a name such as custom-model-nopath")
    json_: dict[str, Any] = Field(alias="json", description="the request body sent to the provider")
    meta: dict[str, str] = Field(default_factory=dict, description="Helicone-* header names and their values")


class ProviderResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    json_: dict[str, Any] | list[Any] | None = Field(None, alias="json")
    textBody: str | None = None
    status: int = Field(ge=0, le=999)
    headers: dict[str, str] = Field(default_factory=dict)


class AsyncLog(BaseModel):
    model_config = ConfigDict(extra="ignore")

    providerRequest: ProviderRequest
    providerResponse: ProviderResponse
    timing: Timing | None = None
    provider: str | None = Field(None, max_length=MAX_PROVIDER)


class PayloadError(ValueError):
    """A payload that validates as JSON but cannot be logged (answered 422 naming `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def log_headers(meta: dict[str, str], field: str, out: LogHeaders | None = None) -> LogHeaders:
    """The log headers among `meta` (names in any case), applied over `out`; the rest (Helicone-Auth
    included) is ignored."""
    out = out if out is not None else LogHeaders()
    for name, value in meta.items():
        _storable(f"{field}.{name}", name + value)
        try:
            read_log_header(out, name.strip().lower(), value.strip())
        except HeaderError as exc:
            raise PayloadError(f"{field}.{name}", str(exc)) from None
    return out


# Helicone's own names for providers it names otherwise than our provider table does (its SDK sends them)
HELICONE_PROVIDER_NAMES = {"google": "gemini", "x": "xai"}


def _provider(given: str | None, url: str) -> str:
    if given and given.strip():
        name = given.strip().lower()
        return HELICONE_PROVIDER_NAMES.get(name, name)
    host = (urlsplit(url).hostname or "") if "://" in url else ""
    for provider_host, name in _HOST_PROVIDERS:
        if host == provider_host or host.endswith("." + provider_host):
            return name
    if host.endswith(".openai.azure.com"):
        return "azure"
    return events.CUSTOM_PROVIDER


def _target(url: str) -> tuple[str, str]:
    """(base URL without credentials, path) of an absolute http(s) URL; ("", url) for a name. Never the
    query or fragment: a provider's key may be there (Gemini's ?key=)."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}", parts.path or "/"
    return "", url.split("?", 1)[0].split("#", 1)[0]


def _json_bytes(doc: Any, field: str) -> bytes:
    try:
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:  # parsed at a shallower stack than this: nested too deeply to write back
        raise PayloadError(field, "JSON nested too deeply") from None
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (sent as a \udXXX escape): kept escaped, as it came
        return json.dumps(doc, separators=(",", ":")).encode()


def _storable(field: str, text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise PayloadError(field, "must be valid UTF-8 text (no lone surrogates)") from None
    return text


def to_event(payload: AsyncLog, *, org_id: str, costs: CostRegistry, region: str, body_limit: int,
             now: dt.datetime, headers: dict[str, str] | None = None) -> events.RequestLogged:
    """headers: the Helicone-* headers of the log request itself (Helicone's manual loggers send the
    user, properties and request id there); `providerRequest.meta` is read over them."""
    req, resp = payload.providerRequest, payload.providerResponse
    hh = log_headers(headers or {}, "headers")
    hh = log_headers(req.meta, "providerRequest.meta", hh)
    _storable("providerRequest.url", req.url)
    _storable("provider", payload.provider or "")
    try:
        target_url, path = _target(req.url)
    except ValueError as exc:  # urlsplit refuses e.g. a bad port or bracketed host
        raise PayloadError("providerRequest.url", f"not a valid URL ({exc})") from None
    provider = _provider(payload.provider, req.url)
    resp_headers = {k.lower(): v for k, v in resp.headers.items()}
    stream_asked = req.json_.get("stream") is True
    # textBody first, as Helicone reads it: its loggers send `json: {}` next to the text of a string answer
    if resp.textBody:
        resp_body = resp.textBody.encode(errors="replace")  # a lone surrogate is no text: stored as '?'
        # a streamed answer logged without its headers (Helicone's loggers send none) is its SSE text
        default_ctype = "text/event-stream" if stream_asked else "text/plain"
        resp_ctype = _storable("providerResponse.headers.content-type", resp_headers.get("content-type", default_ctype))
    elif resp.json_ is not None:
        resp_body, resp_ctype = _json_bytes(resp.json_, "providerResponse.json"), "application/json"
    elif resp.textBody is not None:
        resp_body = b""
        resp_ctype = _storable("providerResponse.headers.content-type", resp_headers.get("content-type", "text/plain"))
    else:
        resp_body, resp_ctype = b"", ""
    table = PROVIDER_TABLE.get(provider)
    # the table says how each provider's answers carry usage; any other answer is read as OpenAI's
    parsed = parse_response(table.usage_for(path) if table else "openai", resp_body, resp_ctype)
    req_body = _json_bytes(req.json_, "providerRequest.json")
    if not usage_is_its_own("POST", path):  # a batch object: its whole batch's usage, not this call's (as the gateway)
        parsed = Parsed(model=parsed.model)
    else:  # tts-1's characters, dall-e's images: billed by what the request asked for (as the gateway)
        parsed = billed_by_request(parsed, path, req_body, "application/json", 200 <= resp.status < 300)
    req_model = req.json_.get("model") if isinstance(req.json_.get("model"), str) else ""
    # as the gateway: the answer's model, else the one the path names (Gemini, Azure deployments), else the request's
    path_model = table.model_in(path) if table else ""
    model = (parsed.model or path_model or req_model).encode(errors="replace").decode()  # a lone surrogate is no text
    model = hh.logged_model(model)
    cost = parsed.cost(costs, provider, model)
    if payload.timing is not None:
        started, finished = payload.timing.startTime.to_datetime(), payload.timing.endTime.to_datetime()
        ttft = payload.timing.timeToFirstToken
    else:
        started = finished = now
        ttft = None
    ev = events.RequestLogged(
        schema_version=events.SCHEMA_VERSION,
        request_id=hh.request_id,
        org_id=org_id,
        latency_ms=(finished - started) // _MS,
        time_to_first_token_ms=int(ttft) if ttft is not None else -1,
        status=resp.status,
        provider=provider,
        model=model,
        method="POST",
        path=path,
        target_url=target_url,
        user_id=hh.user_id,
        session_id=hh.session_id,
        session_path=hh.session_path,
        session_name=hh.session_name,
        properties=hh.logged_properties(),
        usage=parsed.logged_usage(),
        cost_usd=cost or 0.0,
        cost_known=cost is not None,
        streamed=stream_asked or is_stream(resp_ctype),
        inline=hh.inline_bodies(req_body, "application/json", resp_body, resp_ctype, body_limit),
        source=ASYNC_LOG_SOURCE,
        region=region,
    )
    events.set_time(ev.request_created_at, started)
    events.set_time(ev.response_created_at, finished)
    if not ev.request_id:
        # A timed log without a Helicone-Request-Id gets an id from its content, so that sending it again
        # (after a 503: Kafka may still take the first copy later) replaces it instead of adding a copy.
        # Untimed logs are timed at arrival: each is its own request.
        ev.request_id = (str(uuid.uuid5(_ID_NAMESPACE, f"{org_id}/{hashlib.sha256(events.encode(ev)).hexdigest()}"))
                         if payload.timing is not None else events.new_request_id())
    return ev
