"""OpenTelemetry GenAI spans over OTLP/HTTP (`POST /v1/traces`): each span with GenAI
semantic-convention attributes (gen_ai.*) becomes a RequestLogged, as if the gateway had seen the
call; other spans are skipped. Bodies: ExportTraceServiceRequest as protobuf or OTLP JSON.

A span's request id is derived from its trace and span ids (or taken from `helicone.request.id`),
so an exporter that retries a batch replaces the same logs instead of adding copies."""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from helicone_core import events
from helicone_core.cost import CostRegistry, TokenCounts
from helicone_core.kafka import fit_record
from helicone_core.log_headers import HeaderError, LogHeaders, read_log_header
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1 import trace_pb2

from .async_log import MAX_PROVIDER

OTLP_SOURCE = "otlp"
# OTLP/HTTP's path, and Helicone's for the same (its helicone-async / OpenLLMetry loggers export there)
OTLP_PATHS = ("/v1/traces", "/v1/trace/log")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
# Spans with any of these attributes are GenAI calls; the rest are skipped (not rejected).
# OpenTelemetry's gen_ai.provider.name values for providers the gateway logs under other names
OTEL_PROVIDER_NAMES = {"x_ai": "xai", "gcp.gemini": "gemini", "gcp.gen_ai": "gemini", "mistral_ai": "mistral",
                       "az.ai.openai": "azure", "azure.ai.openai": "azure"}
GENAI_MARKERS = ("gen_ai.provider.name", "gen_ai.system", "gen_ai.operation.name", "gen_ai.request.model",
                 "gen_ai.response.model")
_ID_NAMESPACE = uuid.UUID("6f1c7b7e-2f0c-4f35-9b0e-3c1c1e5f2a10")  # request ids of spans: uuid5(this, trace/span)
_MESSAGE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                   "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
_REQUEST_PARAMS = ("temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty", "seed",
                   "stop_sequences")
LATEST_NANOS = events.LATEST_SECONDS * 1_000_000_000
_USER_ATTRS = ("user.id", "enduser.id")
_SESSION_ATTRS = ("session.id", "gen_ai.conversation.id")


class OtlpError(ValueError):
    """A body that is not an ExportTraceServiceRequest (answered 400, as OTLP/HTTP asks)."""


def media_type(content_type: str) -> str:
    """A Content-Type header's media type, lower case, without its parameters (`; charset=utf-8`)."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    msg = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            msg.ParseFromString(body)
        except DecodeError as exc:
            raise OtlpError(f"body is not an OTLP ExportTraceServiceRequest (protobuf): {exc}") from None
        return msg
    if not body.strip():  # an empty request, as an empty protobuf body is: OTLP/HTTP says it SHOULD succeed
        return msg
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise OtlpError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise OtlpError("body is JSON nested too deeply to read") from None
    if not isinstance(doc, dict):
        raise OtlpError("body must be a JSON object with resourceSpans")
    _hex_ids_to_base64(doc)
    try:
        json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpError(f"body is not an OTLP ExportTraceServiceRequest (JSON): {exc}") from None
    except SystemError:  # upb's answer to a field or enum name with a lone surrogate (an unpaired \udXXX escape)
        raise OtlpError("body is not an OTLP ExportTraceServiceRequest (JSON): a field name or enum value is not "
                        "valid Unicode (a lone surrogate)") from None
    return msg


def _hex_ids_to_base64(doc: dict) -> None:
    """OTLP JSON writes trace and span ids as hex, where the protobuf JSON mapping expects base64."""
    for i, rs in enumerate(_list(doc, "resourceSpans", "resource_spans")):
        for j, ss in enumerate(_list(rs, "scopeSpans", "scope_spans")):
            for k, span in enumerate(_list(ss, "spans")):
                place = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                holders = [(span, place)] + [(link, f"{place}.links[{n}]") for n, link in enumerate(_list(span, "links"))]
                for holder, where in holders:
                    for name in ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id"):
                        value = holder.get(name)
                        if isinstance(value, str) and value:
                            try:
                                holder[name] = base64.b64encode(bytes.fromhex(value)).decode()
                            except ValueError:
                                raise OtlpError(f"{where}.{name} must be hex, got {value[:40]!r}") from None


def _list(doc: Any, *names: str) -> list:
    if not isinstance(doc, dict):
        return []
    for name in names:
        value = doc.get(name)
        if isinstance(value, list):
            return [x for x in value if isinstance(x, dict)]
    return []


def encode_response(rejected: int, message: str, content_type: str) -> bytes:
    out = ExportTraceServiceResponse()
    if rejected:
        out.partial_success.rejected_spans = rejected
        out.partial_success.error_message = message
    if content_type == PROTOBUF:
        return out.SerializeToString()
    return json.dumps(json_format.MessageToDict(out)).encode()


def _status_message_class():
    """google.rpc.Status, the body OTLP/HTTP asks of every 4xx and 5xx answer (googleapis-common-protos is
    not a dependency): built from its descriptor, in a pool of its own; `details` is left out (never sent)."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="google/rpc/status.proto", package="google.rpc", syntax="proto3")
    file.message_type.add(name="Status", field=[
        f(name="code", number=1, type=f.TYPE_INT32, label=f.LABEL_OPTIONAL, json_name="code"),
        f(name="message", number=2, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL, json_name="message")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("google.rpc.Status"))


Status = _status_message_class()
# HTTP status of an error answer -> its google.rpc.Code (exporters may record it; OTLP/HTTP retries by the HTTP status)
_RPC_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
              500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}


def encode_status(status: int, message: str, content_type: str) -> tuple[bytes, str]:
    """An OTLP/HTTP error answer: a google.rpc.Status as the request was encoded (its JSON form unless
    the request was protobuf), and the answer's Content-Type."""
    code = _RPC_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.UNKNOWN)
    out = Status(code=code.value[0], message=message)
    if content_type == PROTOBUF:
        return out.SerializeToString(), PROTOBUF
    return json.dumps(json_format.MessageToDict(out)).encode(), JSON


def any_value(v) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode()
    return getattr(v, kind)


def attributes(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class Converted:
    events: list[events.RequestLogged] = field(default_factory=list)
    skipped: int = 0  # not GenAI spans
    rejected: int = 0
    first_problem: str = ""


def to_events(msg: ExportTraceServiceRequest, *, org_id: str, costs: CostRegistry, region: str,
              body_limit: int) -> Converted:
    out = Converted()
    for i, rs in enumerate(msg.resource_spans):
        resource = attributes(rs.resource.attributes)
        for j, ss in enumerate(rs.scope_spans):
            for k, span in enumerate(ss.spans):
                attrs = {**resource, **attributes(span.attributes)}
                if not any(name in attrs for name in GENAI_MARKERS):
                    out.skipped += 1
                    continue
                try:
                    ev = span_event(span, attrs, org_id=org_id, costs=costs, region=region, body_limit=body_limit)
                    events.validate(ev)
                    fit_record(ev)
                except (ValueError, HeaderError, RecursionError) as exc:  # EventError and RecordTooLarge are ValueErrors
                    out.rejected += 1
                    out.first_problem = out.first_problem or f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]: {exc}"
                    continue
                out.events.append(ev)
    return out


def _text(attrs: dict, *names: str) -> str:
    for name in names:
        value = attrs.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _count(attrs: dict, *names: str) -> int | None:
    for name in names:
        value = attrs.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value < 2**63:
            return int(value)
        if isinstance(value, str) and value.isdigit() and len(value) < 19:
            return int(value)
    return None


def _span_headers(attrs: dict) -> LogHeaders:
    """`helicone.<header>` attributes (dots for dashes: helicone.user.id, helicone.property.env) read
    as the Helicone-* headers; else user and session from user.id / session.id and their kin."""
    hh = LogHeaders()
    for name, value in attrs.items():
        if name.startswith("helicone.") and value is not None:
            header = "helicone-" + name[len("helicone."):].replace(".", "-").lower()
            text = value if isinstance(value, str) else json.dumps(value)
            try:
                read_log_header(hh, header, text.strip())
            except HeaderError as exc:
                raise ValueError(f"attribute {name}: {exc}") from None
    hh.user_id = hh.user_id or _text(attrs, *_USER_ATTRS)[:512]
    hh.session_id = hh.session_id or _text(attrs, *_SESSION_ATTRS)[:512]
    return hh


def _json_attr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to read: kept as the text it is
            return value
    return value


def _messages(span, attrs: dict) -> tuple[list, list]:
    """(input messages, output messages) from gen_ai.input/output.messages attributes, the gen_ai.*
    message and choice events, or indexed gen_ai.prompt.N / gen_ai.completion.N attributes."""
    inputs: list = []
    outputs: list = []
    system = _json_attr(attrs.get("gen_ai.system_instructions"))
    if system:
        inputs.append({"role": "system", "content": system})
    given_in, given_out = _json_attr(attrs.get("gen_ai.input.messages")), _json_attr(attrs.get("gen_ai.output.messages"))
    for ev in span.events:
        ev_attrs = attributes(ev.attributes)
        if ev.name in _MESSAGE_EVENTS:
            message = {"role": _MESSAGE_EVENTS[ev.name], **{k: _json_attr(v) for k, v in ev_attrs.items()
                                                            if not k.startswith("gen_ai.")}}
            inputs.append(message)
        elif ev.name == "gen_ai.choice":
            outputs.append({k: _json_attr(v) for k, v in ev_attrs.items() if not k.startswith("gen_ai.")})
        elif ev.name == "gen_ai.client.inference.operation.details":
            given_in = given_in or _json_attr(ev_attrs.get("gen_ai.input.messages"))
            given_out = given_out or _json_attr(ev_attrs.get("gen_ai.output.messages"))
        elif ev.name in ("gen_ai.content.prompt", "gen_ai.content.completion"):
            value = _json_attr(ev_attrs.get("gen_ai.prompt" if ev.name.endswith("prompt") else "gen_ai.completion"))
            (inputs if ev.name.endswith("prompt") else outputs).extend(value if isinstance(value, list) else [value])
    if isinstance(given_in, list):
        inputs.extend(given_in)
    if isinstance(given_out, list):
        outputs.extend(given_out)
    for prefix, target in (("gen_ai.prompt.", inputs), ("gen_ai.completion.", outputs)):
        indexed: dict[int, dict] = {}
        for name, value in attrs.items():
            if name.startswith(prefix):
                index, _, key = name[len(prefix):].partition(".")
                if index.isdigit() and key:
                    indexed.setdefault(int(index), {})[key] = _json_attr(value)
        target.extend(indexed[i] for i in sorted(indexed))
    return [m for m in inputs if m is not None], [m for m in outputs if m is not None]


def span_event(span, attrs: dict, *, org_id: str, costs: CostRegistry, region: str,
               body_limit: int) -> events.RequestLogged:
    if len(span.trace_id) != 16 or len(span.span_id) != 8:
        raise ValueError("traceId must be 16 bytes and spanId 8 bytes")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start or end < start:
        raise ValueError("startTimeUnixNano must be set and endTimeUnixNano not before it")
    if end > LATEST_NANOS:
        raise ValueError("endTimeUnixNano is after 2299-12-31 (the newest time the log store keeps)")
    hh = _span_headers(attrs)
    provider = _text(attrs, "gen_ai.provider.name", "gen_ai.system").lower()
    provider = (OTEL_PROVIDER_NAMES.get(provider, provider) or events.CUSTOM_PROVIDER)[:MAX_PROVIDER]
    req_model = _text(attrs, "gen_ai.request.model")
    model = _text(attrs, "gen_ai.response.model") or req_model
    prompt = _count(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    completion = _count(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    tokens = TokenCounts(
        prompt_tokens=prompt or 0, completion_tokens=completion or 0,
        cache_read_tokens=_count(attrs, "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens") or 0,
        cache_write_tokens=_count(attrs, "gen_ai.usage.cache_creation.input_tokens",
                                  "gen_ai.usage.cache_creation_input_tokens") or 0,
    )
    known = prompt is not None or completion is not None
    logged_model = hh.logged_model(model)  # the log's model and the cost's; the logged bodies keep the span's
    cost = costs.cost(provider, logged_model, tokens) if known else None
    failed = span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    status = _count(attrs, "http.response.status_code", "http.status_code")
    if status is None or status > 999:
        status = 500 if failed else 200
    error = (span.status.message or _text(attrs, "error.type")) if failed else ""
    inputs, outputs = _messages(span, attrs)
    request_doc: dict[str, Any] = {"model": req_model} if req_model else {}
    for param in _REQUEST_PARAMS:
        if f"gen_ai.request.{param}" in attrs:
            request_doc[param] = attrs[f"gen_ai.request.{param}"]
    request_doc["messages"] = inputs
    response_doc: dict[str, Any] = {"model": model} if model else {}
    if _text(attrs, "gen_ai.response.id"):
        response_doc["id"] = _text(attrs, "gen_ai.response.id")
    response_doc["output"] = outputs
    if attrs.get("gen_ai.response.finish_reasons") is not None:
        response_doc["finish_reasons"] = attrs["gen_ai.response.finish_reasons"]
    if known:
        response_doc["usage"] = {"input_tokens": tokens.prompt_tokens, "output_tokens": tokens.completion_tokens}
    req_body = json.dumps(request_doc, ensure_ascii=False).encode()
    resp_body = json.dumps(response_doc, ensure_ascii=False).encode()
    trace_hex, span_hex = binascii.hexlify(span.trace_id).decode(), binascii.hexlify(span.span_id).decode()
    server = _text(attrs, "server.address")
    port = _count(attrs, "server.port")
    ttft = attrs.get("gen_ai.response.time_to_first_chunk")  # seconds
    ttft_ms = int(ttft * 1000) if isinstance(ttft, (int, float)) and not isinstance(ttft, bool) and 0 <= ttft < 86400 else -1
    ev = events.RequestLogged(
        schema_version=events.SCHEMA_VERSION,
        request_id=hh.request_id or str(uuid.uuid5(_ID_NAMESPACE, f"{trace_hex}/{span_hex}")),
        org_id=org_id,
        latency_ms=(end - start) // 1_000_000,
        time_to_first_token_ms=ttft_ms,
        status=status,
        provider=provider,
        model=logged_model,
        method="POST",
        path=_text(attrs, "gen_ai.operation.name") or span.name[:256],
        target_url=(f"https://{server}" + (f":{port}" if port else "")) if server else "",
        user_id=hh.user_id,
        session_id=hh.session_id,
        session_path=hh.session_path,
        session_name=hh.session_name,
        properties=hh.logged_properties(),
        usage=events.Usage(
            prompt_tokens=tokens.prompt_tokens, completion_tokens=tokens.completion_tokens,
            total_tokens=tokens.prompt_tokens + tokens.completion_tokens, cache_read_tokens=tokens.cache_read_tokens,
            cache_write_tokens=tokens.cache_write_tokens, known=known,
        ),
        cost_usd=cost or 0.0,
        cost_known=cost is not None,
        streamed=attrs.get("gen_ai.request.stream") is True,
        inline=hh.inline_bodies(req_body, JSON, resp_body, JSON, body_limit),
        error=error[:1024],
        source=OTLP_SOURCE,
        region=region,
    )
    ev.request_created_at.FromNanoseconds(start)
    ev.response_created_at.FromNanoseconds(end)
    return ev
