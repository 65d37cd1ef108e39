"""The api's log intake: `POST /custom/v1/log` (Helicone's async logging) and `POST /v1/traces`
(OTLP/HTTP GenAI spans). Both answer 200 only once Kafka acknowledged the events (log_publisher.py)."""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from helicone_core import events
from helicone_core.kafka import MAX_RECORD_BYTES, RecordTooLarge, fit_record
from helicone_core.settings import env_name
from pydantic import ConfigDict, Field

from .async_log import AsyncLog, PayloadError, to_event
from .log_publisher import PublishUnavailable
from .models import Answer, documented, error_responses
from .otlp import JSON, OTLP_PATHS, PROTOBUF, OtlpError, decode_request, encode_response, encode_status, media_type, to_events

RETRY_AFTER = "5"
UNAVAILABLE = ("the log store (Kafka) did not acknowledge the log in time; send it again (Kafka may still take "
               "this copy late: a log with the same request id, or a timed one with the same content, replaces it)")


class LogAccepted(Answer):
    model_config = ConfigDict(json_schema_extra={"examples": [{"request_id": "6f1b8e6e-3f1a-4c55-9a43-0d8b43e5b5a1"}]})

    request_id: str = Field(description="the logged request's id (also in the Helicone-Id header)")


class PartialSuccess(Answer):
    rejectedSpans: str = Field(description="how many spans were refused (an int64: a string in OTLP's JSON)")
    errorMessage: str = Field("", description="why the first of them was refused")


class TracesAccepted(Answer):
    """OTLP's ExportTraceServiceResponse in its JSON form: {} when every span was taken."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {}, {"partialSuccess": {"rejectedSpans": "1", "errorMessage": "resourceSpans[0].scopeSpans[0].spans[2]: "
                                                               "startTimeUnixNano must be set and endTimeUnixNano not before it"}}]})

    partialSuccess: PartialSuccess = Field(None, description="only when spans were refused")


class OtlpStatus(Answer):
    """OTLP/HTTP's error answer: a google.rpc.Status, in its JSON form (protobuf when the request was)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"code": 3, "message": "body is not JSON: Expecting value: "
                                                                                        "line 1 column 1 (char 0)"}]})

    code: int = Field(description="the google.rpc.Code of the cause (the HTTP status says whether to retry)")
    message: str = Field(description="what is wrong")


_STATUS_FORM = " (a google.rpc.Status: protobuf when the request was, else its JSON form)"
OTLP_ERRORS: dict[int | str, dict] = {status: {"model": OtlpStatus, "description": cause + _STATUS_FORM} for status, cause in {
    400: "a body that does not decode, or a query string that is not ASCII", 401: "no key, or an unknown or revoked key",
    413: "request body over max_body_bytes (a gzip body: after decompression too)",
    415: "a Content-Type or Content-Encoding not taken", 431: "too many or too large request headers",
    503: "Kafka or the key store did not answer in time; send them again (Retry-After)"}.items()}


def _invalid(field: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "invalid_request", "message": "invalid request",
                                   "details": [{"field": field, "message": message}]}}, status_code=422)


def logs_router(state, org_id: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(tags=["logs"], responses=error_responses({
        503: "Kafka did not take the logs in time; send them again (Retry-After)"}))
    settings = state.settings

    async def publish(evs: list[events.RequestLogged]) -> None:
        try:
            await state.publisher.publish(evs)
        except PublishUnavailable:
            raise HTTPException(503, UNAVAILABLE, {"Retry-After": RETRY_AFTER}) from None

    @router.post("/custom/v1/log", response_model=documented(LogAccepted), responses={200: {"headers": {
        "Helicone-Id": {"description": "the logged request's id", "schema": {"type": "string"}}}}, **error_responses({
        413: f"request body over max_body_bytes, or a log over Kafka's record limit ({MAX_RECORD_BYTES} bytes) "
             "even without its bodies"})})
    async def async_log(payload: AsyncLog, request: Request, org: str = Depends(org_id)) -> JSONResponse:
        """Logs a provider call your app made itself (Helicone's async-log payload); the answer
        comes once the log is in Kafka, and the request shows in the api within about a second.
        Helicone-* headers of this request (user, properties, request id) are read too, under `meta`'s."""
        try:
            ev = to_event(payload, org_id=org, costs=state.costs, region=settings.region,
                          body_limit=settings.max_logged_body_bytes, now=dt.datetime.now(dt.timezone.utc),
                          headers=_helicone_headers(request.scope["headers"]))
            events.validate(ev)
            fit_record(ev)
        except PayloadError as exc:
            return _invalid(exc.field, exc.message)
        except events.EventError as exc:
            return _invalid("providerRequest.meta", str(exc))
        except RecordTooLarge as exc:  # Kafka would refuse it at every try: never a 503 to retry
            raise HTTPException(413, str(exc)) from None
        await publish([ev])
        return JSONResponse({"request_id": ev.request_id}, headers={"Helicone-Id": ev.request_id})

    traces_answer = {"response_model": documented(TracesAccepted), "responses": {200: {
        "description": "the spans were logged (an OTLP ExportTraceServiceResponse, in the request's Content-Type)",
        "content": {PROTOBUF: {"schema": {"type": "string", "format": "binary"}}}}, **OTLP_ERRORS}}

    async def export(request: Request, org: str, content_type: str) -> tuple[int, str]:
        """Logs the GenAI spans of an export: (how many spans were rejected, why the first was)."""
        if content_type not in (PROTOBUF, JSON):
            raise HTTPException(415, f"Content-Type must be {PROTOBUF} or {JSON} (OTLP/HTTP), got {content_type[:80]!r}")
        body = await request.body()
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            body = _gunzip(body, settings.max_body_bytes)
        elif encoding not in ("", "identity"):
            raise HTTPException(415, f"Content-Encoding must be gzip or none, got {encoding[:40]!r}")
        try:
            msg = decode_request(body, content_type)
        except OtlpError as exc:
            raise HTTPException(400, str(exc)) from None
        converted = to_events(msg, org_id=org, costs=state.costs, region=settings.region,
                              body_limit=settings.max_logged_body_bytes)
        await publish(converted.events)
        state.m_spans.labels("logged").inc(len(converted.events))
        state.m_spans.labels("skipped").inc(converted.skipped)
        state.m_spans.labels("rejected").inc(converted.rejected)
        return converted.rejected, converted.first_problem

    async def otlp_traces(request: Request, org: str = Depends(org_id)) -> Response:
        """OTLP/HTTP trace export (protobuf or JSON): GenAI spans become request logs."""
        content_type = media_type(request.headers.get("content-type", ""))
        try:
            rejected, problem = await export(request, org, content_type)
        except HTTPException as exc:  # OTLP/HTTP's error answer: a google.rpc.Status, as the request was encoded
            body, answer_type = encode_status(exc.status_code, exc.detail, content_type)
            return Response(body, exc.status_code, exc.headers, media_type=answer_type)
        return Response(encode_response(rejected, problem, content_type), media_type=content_type)

    for path in OTLP_PATHS:
        router.post(path, **traces_answer)(otlp_traces)

    return router


def _helicone_headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The Helicone-* headers of a request (lower-case names; values UTF-8, as the gateway reads them)."""
    out = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key.startswith("helicone-") and key != "helicone-auth":
            if key in out:  # two copies (the app's and a proxy's): never guess which counts
                raise PayloadError(f"headers.{key}", "was sent more than once; send each Helicone-* header once")
            try:
                out[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise PayloadError(f"headers.{key}", "must be valid UTF-8") from None
    return out


def _gunzip(data: bytes, limit: int) -> bytes:
    """The decompressed body, every gzip member of it (RFC 1952: a body may hold several, one after
    another), held to the same limit as a plain one (413 past it)."""
    out, rest = bytearray(), data
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, limit + 1 - len(out))  # >= 1: never 0, which means "no limit"
        except zlib.error:
            raise HTTPException(400, "body is not valid gzip (Content-Encoding: gzip)") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise HTTPException(413, f"decompressed body larger than {limit} bytes (max_body_bytes, {env_name('max_body_bytes')})")
        if data and not inflater.eof:  # cut short (an empty body is an empty export): a prefix of the spans sent
            raise HTTPException(400, "body is not valid gzip (Content-Encoding: gzip): it ends before its last member does")
        rest = inflater.unused_data
        if not rest:
            return bytes(out)
