"""Apps that call providers themselves: Helicone async logs (`POST /custom/v1/log`) and OTLP GenAI
spans (`POST /v1/traces`) go api -> Kafka -> ingest -> ClickHouse/S3 like gateway traffic, and
come back from GET /v1/request/{id} and /v1/request/query."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

pytestmark = pytest.mark.e2e


def test_async_log_and_otlp_span_are_stored_and_queried_like_gateway_traffic(stack):
    session = "async-" + uuid.uuid4().hex[:8]
    rid = str(uuid.uuid4())
    now = int(time.time())
    payload = {
        "providerRequest": {
            "url": "https://api.openai.com/v1/chat/completions",
            "json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "logged afterwards"}]},
            "meta": {"Helicone-Request-Id": rid, "Helicone-User-Id": "dana", "Helicone-Session-Id": session,
                     "Helicone-Property-Via": "async"},
        },
        "providerResponse": {
            "json": {"model": "gpt-4o-mini", "choices": [{"message": {"role": "assistant", "content": "ok"}}],
                     "usage": {"prompt_tokens": 1000, "completion_tokens": 2000}},
            "status": 200, "headers": {"content-type": "application/json"},
        },
        "timing": {"startTime": {"seconds": now - 2, "milliseconds": 0}, "endTime": {"seconds": now - 1, "milliseconds": 500}},
    }
    trace, span_id = uuid.uuid4().bytes, uuid.uuid4().bytes[:8]
    start = (now - 3) * 10**9
    span = {
        "traceId": base64.b64encode(trace).decode(), "spanId": base64.b64encode(span_id).decode(), "name": "chat claude",
        "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 250_000_000),
        "attributes": [
            {"key": "gen_ai.provider.name", "value": {"stringValue": "anthropic"}},
            {"key": "gen_ai.request.model", "value": {"stringValue": "claude-3-5-haiku"}},
            {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "100"}},
            {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "50"}},
            {"key": "session.id", "value": {"stringValue": session}},
            {"key": "helicone.property.via", "value": {"stringValue": "otlp"}},
        ],
        "events": [{"name": "gen_ai.user.message", "timeUnixNano": str(start),
                    "attributes": [{"key": "content", "value": {"stringValue": "traced prompt"}}]}],
    }
    export = json_format.ParseDict({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}, ExportTraceServiceRequest())

    with stack.api_client() as api:
        r = api.post("/custom/v1/log", json=payload)
        assert r.status_code == 200, r.text
        assert r.json()["request_id"] == rid
        r = api.post("/v1/traces", content=export.SerializeToString(), headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 200, r.text
        assert ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans == 0

    logged = stack.wait_for_request(rid)
    assert (logged["source"], logged["provider"], logged["model"], logged["status"]) == ("async-log", "openai", "gpt-4o-mini", 200)
    assert logged["user_id"] == "dana" and logged["session"]["id"] == session and logged["properties"] == {"via": "async"}
    assert logged["latency_ms"] == 1500 and logged["region"] == "eu-west-1"
    assert logged["usage"]["prompt_tokens"] == 1000 and logged["usage"]["completion_tokens"] == 2000
    assert logged["cost_usd"] == pytest.approx((1000 * 0.15 + 2000 * 0.60) / 1e6)
    assert logged["request_body"]["messages"][0]["content"] == "logged afterwards"
    assert logged["response_body"]["choices"][0]["message"]["content"] == "ok"

    deadline = time.monotonic() + 45
    with stack.api_client() as api:
        while True:
            found = api.post("/v1/request/query", json={"filter": {"session_id": session}, "sort": "created_at_asc"}).json()["data"]
            if len(found) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert [d["source"] for d in found] == ["otlp", "async-log"], found
        traced = found[0]
        assert (traced["provider"], traced["model"], traced["latency_ms"]) == ("anthropic", "claude-3-5-haiku", 250)
        assert traced["usage"]["prompt_tokens"] == 100 and traced["properties"] == {"via": "otlp"}
        assert traced["cost_usd"] == pytest.approx((100 * 0.80 + 50 * 4.00) / 1e6)
        detail = api.get(f"/v1/request/{traced['request_id']}").json()
        assert detail["request_body"]["messages"] == [{"role": "user", "content": "traced prompt"}]
