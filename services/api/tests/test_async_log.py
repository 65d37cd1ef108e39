"""Async logging through the api against a real broker: `POST /custom/v1/log` (Helicone's payload)
and `POST /v1/traces` (OTLP GenAI spans) become RequestLogged events on the request-log topic,
answered 200 only once Kafka acknowledged them."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import db, events
from helicone_core.kafka import PLAINTEXT, ensure_topics
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from services.api.tests.test_api import documented_answers, wait_for_keys
from tests.support.keys import keys_before_start

T0 = 1_767_000_000  # seconds


def _settings(tmp_path, dsn, bootstrap, topic, **kw) -> ApiSettings:
    return ApiSettings(data_dir=tmp_path, body_store="local", postgres_dsn=dsn, analytics_backend="chdb",
                       chdb_path=tmp_path / "chdb", kafka_bootstrap=bootstrap, kafka_topic=topic, _env_file=None, **kw)


@pytest.fixture
async def logging_api(request, tmp_path, fresh_db_dsn, kafka_bootstrap):
    """(client, api state, org id, topic); a test's own settings: parametrize it indirectly with them."""
    topic = "asynclog-" + uuid.uuid4().hex[:8]
    await ensure_topics(kafka_bootstrap, [topic], 1, 1, security=PLAINTEXT)
    [made] = await keys_before_start(fresh_db_dsn, "acme")
    org, key = made.org_id, made.key
    settings = {"publish_timeout": 3.0, **getattr(request, "param", {})}
    app = create_app(_settings(tmp_path, fresh_db_dsn, kafka_bootstrap, topic, **settings))
    state = app.state.api
    await state.start()
    await wait_for_keys(state, key)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                               headers={"Authorization": f"Bearer {key}"}, event_hooks=documented_answers(app))
    yield client, state, org, topic
    await client.aclose()
    await state.stop()


async def consume(bootstrap: str, topic: str, want: int, timeout: float = 20) -> list[events.RequestLogged]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    got: list[events.RequestLogged] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    ev = events.decode(r.value)
                    assert r.key == events.message_key(ev)
                    got.append(ev)
    finally:
        await consumer.stop()
    return got


def helicone_payload(**over) -> dict:
    payload = {
        "providerRequest": {
            "url": "https://api.openai.com/v1/chat/completions",
            "json": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
            "meta": {"Helicone-Auth": "Bearer ignored", "Helicone-User-Id": "alice", "helicone-session-id": "s-1",
                     "Helicone-Session-Path": "/a", "Helicone-Property-Env": "dev", "Helicone-Request-Name": "greet"},
        },
        "providerResponse": {
            "json": {"id": "c1", "model": "gpt-4o-mini-2024-07-18",
                     "choices": [{"message": {"role": "assistant", "content": "Hello!"}}],
                     "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 200}}},
            "status": 200, "headers": {"content-type": "application/json"},
        },
        "timing": {"startTime": {"seconds": T0, "milliseconds": 250}, "endTime": {"seconds": T0 + 1, "milliseconds": 750},
                   "timeToFirstToken": 300},
    }
    payload.update(over)
    return payload


async def test_an_async_log_is_the_event_the_gateway_would_emit(logging_api, kafka_bootstrap):
    client, state, org, topic = logging_api
    rid = str(uuid.uuid4())
    payload = helicone_payload()
    payload["providerRequest"]["meta"]["Helicone-Request-Id"] = rid
    r = await client.post("/custom/v1/log", json=payload)
    assert r.status_code == 200, r.text
    assert r.json() == {"request_id": rid} and r.headers["helicone-id"] == rid

    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert (ev.org_id, ev.request_id, ev.source) == (org, rid, "async-log")
    assert (ev.provider, ev.model, ev.status, ev.method) == ("openai", "gpt-4o-mini-2024-07-18", 200, "POST")
    assert (ev.target_url, ev.path) == ("https://api.openai.com", "/v1/chat/completions")
    assert (ev.user_id, ev.session_id, ev.session_path) == ("alice", "s-1", "/a")
    assert dict(ev.properties) == {"env": "dev", "helicone-request-name": "greet"}
    assert (ev.latency_ms, ev.time_to_first_token_ms) == (1500, 300)
    assert ev.request_created_at.ToMilliseconds() == T0 * 1000 + 250
    u = ev.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cache_read_tokens, u.known) == (1000, 500, 1500, 200, True)
    assert ev.cost_known and ev.cost_usd == pytest.approx(state.costs.cost("openai", "gpt-4o-mini", _tokens(1000, 500, 200)))
    assert json.loads(ev.inline.request_body)["messages"][0]["content"] == "Hi"
    assert json.loads(ev.inline.response_body)["choices"][0]["message"]["content"] == "Hello!"
    assert ev.inline.response_content_type == "application/json"


def _tokens(prompt, completion, cached):
    from helicone_core.cost import TokenCounts

    return TokenCounts(prompt_tokens=prompt, completion_tokens=completion, cache_read_tokens=cached)


async def test_anthropic_text_stream_and_omitted_bodies(logging_api, kafka_bootstrap):
    client, _, _, topic = logging_api
    sse = ('event: message_start\ndata: {"type":"message_start","message":{"model":"claude-haiku-4-5",'
           '"usage":{"input_tokens":12,"output_tokens":1}}}\n\n'
           'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n')
    payload = {
        "providerRequest": {"url": "https://api.anthropic.com/v1/messages", "json": {"model": "claude-haiku-4-5", "stream": True},
                            "meta": {"Helicone-Omit-Request": "true", "Helicone-Omit-Response": "TRUE"}},
        "providerResponse": {"textBody": sse, "status": 200, "headers": {"Content-Type": "text/event-stream"}},
    }
    r = await client.post("/custom/v1/log", json=payload)
    assert r.status_code == 200, r.text
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert (ev.provider, ev.model, ev.streamed) == ("anthropic", "claude-haiku-4-5", True)
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (12, 7)
    assert ev.inline.request_body == b"" and ev.inline.response_body == b""
    assert ev.time_to_first_token_ms == -1  # no timing: logged at arrival, latency unknown
    assert abs(ev.request_created_at.ToSeconds() - time.time()) < 60


async def test_bad_async_log_payloads_are_422_naming_the_place(logging_api):
    client, *_ = logging_api

    async def problem(payload) -> tuple[str, str]:
        r = await client.post("/custom/v1/log", json=payload)
        assert r.status_code == 422, r.text
        detail = r.json()["error"]["details"][0]
        return detail["field"], detail["message"]

    p = helicone_payload()
    del p["providerResponse"]["status"]
    assert (await problem(p))[0] == "providerResponse.status"
    p = helicone_payload()
    p["providerRequest"]["json"] = [1, 2]
    assert (await problem(p))[0] == "providerRequest.json"
    p = helicone_payload(timing={"startTime": {"seconds": T0 + 5}, "endTime": {"seconds": T0}})
    field, message = await problem(p)
    assert field == "timing" and "endTime is before startTime" in message
    p = helicone_payload()
    p["timing"]["startTime"]["milliseconds"] = 1000
    assert (await problem(p))[0] == "timing.startTime.milliseconds"
    p = helicone_payload()
    p["providerRequest"]["meta"]["Helicone-Request-Id"] = "not-a-uuid"
    assert await problem(p) == ("providerRequest.meta.Helicone-Request-Id", "Helicone-Request-Id must be a UUID")
    p = helicone_payload()
    p["providerRequest"]["meta"]["Helicone-Omit-Response"] = "yes"
    field, message = await problem(p)
    assert field == "providerRequest.meta.Helicone-Omit-Response" and "'true' or 'false'" in message
    assert (await client.post("/custom/v1/log", json=helicone_payload(), headers={"Authorization": ""})).status_code == 401


async def test_too_large_async_log_is_413(tmp_path, fresh_db_dsn):
    app = create_app(_settings(tmp_path, fresh_db_dsn, "127.0.0.1:1", "t", max_body_bytes=2048))
    state = app.state.api
    await state.start()
    try:
        org = await db.create_org(state.pool, "acme")
        key = (await db.create_key(state.pool, org, "t")).key
        await wait_for_keys(state, key)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            p = helicone_payload()
            p["providerRequest"]["json"]["messages"][0]["content"] = "x" * 5000
            r = await client.post("/custom/v1/log", json=p, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 413 and "HELICONE_MAX_BODY_BYTES" in r.json()["error"]["message"]
    finally:
        await state.stop()


async def test_no_kafka_ack_means_503_with_retry_after(tmp_path, fresh_db_dsn):
    """Nothing listens on the broker address: the log is not accepted, and the caller is told to retry."""
    app = create_app(_settings(tmp_path, fresh_db_dsn, "127.0.0.1:1", "t", publish_timeout=0.5))
    state = app.state.api
    await state.start()
    try:
        org = await db.create_org(state.pool, "acme")
        key = (await db.create_key(state.pool, org, "t")).key
        await wait_for_keys(state, key)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            t0 = time.monotonic()
            r = await client.post("/custom/v1/log", json=helicone_payload())
            assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
            assert "send it again" in r.json()["error"]["message"]
            assert time.monotonic() - t0 < 3
            r = await client.post("/v1/traces", content=_otlp_request().SerializeToString(),
                                  headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 503 and r.headers["retry-after"] == "5"  # OTLP/HTTP: retryable, after this long
            code, message = _rpc_status(r, "application/x-protobuf")
            assert code == 14 and "send it again" in message  # UNAVAILABLE
            ready = await client.get("/readyz")
            assert ready.json()["checks"]["kafka"]["ok"] is False and ready.status_code == 200  # queries still served
    finally:
        await state.stop()


def _kv(key, value) -> dict:
    if isinstance(value, bool):
        v = {"boolValue": value}
    elif isinstance(value, int):
        v = {"intValue": str(value)}
    elif isinstance(value, float):
        v = {"doubleValue": value}
    else:
        v = {"stringValue": value}
    return {"key": key, "value": v}


def _otlp_json(spans: list[dict], resource: dict | None = None) -> dict:
    return {"resourceSpans": [{
        "resource": {"attributes": [_kv(k, v) for k, v in (resource or {"service.name": "bot"}).items()]},
        "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai"}, "spans": spans}],
    }]}


def _span(trace: str, span: str, attrs: dict, *, start=T0 * 10**9, end=T0 * 10**9 + 800_000_000, status=None, events_=()) -> dict:
    out = {"traceId": trace, "spanId": span, "name": "chat gpt-4o", "kind": 3, "startTimeUnixNano": str(start),
           "endTimeUnixNano": str(end), "attributes": [_kv(k, v) for k, v in attrs.items()], "events": list(events_)}
    if status:
        out["status"] = status
    return out


GENAI = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
         "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20,
         "gen_ai.usage.cache_read.input_tokens": 40, "user.id": "bob", "session.id": "chat-9", "helicone.property.team": "ml",
         "gen_ai.request.temperature": 0.2}


def _otlp_request() -> ExportTraceServiceRequest:
    from google.protobuf import json_format

    doc = _otlp_json([_span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", GENAI)])
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:  # protobuf JSON wants base64 ids
        import base64

        span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
        span["spanId"] = base64.b64encode(bytes.fromhex(span["spanId"])).decode()
    return json_format.ParseDict(doc, ExportTraceServiceRequest())


async def test_otlp_protobuf_genai_span_becomes_a_request_log(logging_api, kafka_bootstrap):
    client, state, org, topic = logging_api
    body = gzip.compress(_otlp_request().SerializeToString())
    r = await client.post("/v1/traces", content=body,
                          headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert not answer.HasField("partial_success")
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert (ev.org_id, ev.source, ev.provider, ev.model, ev.status) == (org, "otlp", "openai", "gpt-4o-2024-08-06", 200)
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.cache_read_tokens) == (100, 20, 40)
    assert ev.cost_known and ev.cost_usd > 0
    assert (ev.user_id, ev.session_id, dict(ev.properties)) == ("bob", "chat-9", {"team": "ml"})
    assert ev.latency_ms == 800 and ev.request_created_at.ToNanoseconds() == T0 * 10**9
    assert json.loads(ev.inline.request_body) == {"model": "gpt-4o", "temperature": 0.2, "messages": []}
    # the same span exported again (here to Helicone's path for OTLP) is the same log: ids derive from trace and span ids
    r = await client.post("/v1/trace/log", content=_otlp_request().SerializeToString(),
                          headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200
    again = await consume(kafka_bootstrap, topic, 2)
    assert [e.request_id for e in again] == [ev.request_id, ev.request_id]


async def test_otlp_json_skips_other_spans_and_reports_rejected_ones(logging_api, kafka_bootstrap):
    client, _, _, topic = logging_api
    trace = "0af7651916cd43dd8448eb211c80319c"
    messages = [
        {"timeUnixNano": str(T0 * 10**9), "name": "gen_ai.system.message", "attributes": [_kv("content", "Be brief.")]},
        {"timeUnixNano": str(T0 * 10**9), "name": "gen_ai.user.message", "attributes": [_kv("content", "Hi there")]},
        {"timeUnixNano": str(T0 * 10**9), "name": "gen_ai.choice",
         "attributes": [_kv("index", 0), _kv("finish_reason", "stop"), _kv("message", '{"role":"assistant","content":"Hey"}')]},
    ]
    spans = [
        _span(trace, "00f067aa0ba902b7", {"http.route": "/chat"}),  # not GenAI: skipped
        _span(trace, "b7ad6b7169203331", {"gen_ai.system": "anthropic", "gen_ai.request.model": "claude-haiku-4-5",
                                          "gen_ai.usage.input_tokens": 9, "gen_ai.usage.output_tokens": 3,
                                          "helicone.user.id": "carol", "helicone.session.id": "s-7",
                                          "error.type": "overloaded"},
              status={"code": 2, "message": "overloaded_error"}, events_=messages),
        _span(trace, "c7ad6b7169203331", GENAI, start=T0 * 10**9, end=T0 * 10**9 - 1),  # ends before it starts
        _span(trace, "d7ad6b7169203331", {**GENAI, "helicone.request.id": "nope"}),
    ]
    r = await client.post("/v1/traces", json=_otlp_json(spans))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] in (2, "2")
    assert partial["errorMessage"].startswith("resourceSpans[0].scopeSpans[0].spans[2]: ")
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert (ev.provider, ev.model, ev.status, ev.error) == ("anthropic", "claude-haiku-4-5", 500, "overloaded_error")
    assert (ev.user_id, ev.session_id) == ("carol", "s-7")
    assert json.loads(ev.inline.request_body)["messages"] == [{"role": "system", "content": "Be brief."},
                                                             {"role": "user", "content": "Hi there"}]
    out = json.loads(ev.inline.response_body)
    assert out["output"] == [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hey"}}]


async def test_otlp_bad_bodies_are_clear(logging_api):
    client, *_ = logging_api
    r = await client.post("/v1/traces", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/x-protobuf" in _rpc_status(r, "application/json")[1]
    r = await client.post("/v1/traces", content=b"\xff\xff\xff", headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 400 and "protobuf" in _rpc_status(r, "application/x-protobuf")[1]
    bad_id = _otlp_json([_span("zz", "eee19b7ec3c1b174", GENAI)])
    r = await client.post("/v1/traces", json=bad_id)
    assert r.status_code == 400 and "resourceSpans[0].scopeSpans[0].spans[0].traceId must be hex" in r.json()["message"]
    r = await client.post("/v1/traces", content=b"not gzip", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 400
    # nothing GenAI: nothing logged, nothing rejected
    r = await client.post("/v1/traces", json=_otlp_json([_span("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7", {})]))
    assert r.status_code == 200 and r.json() == {}


def _rpc_status(r: httpx.Response, content_type: str) -> tuple[int, str]:
    """(code, message) of a google.rpc.Status answer, read without the api's own classes: its JSON form,
    or its protobuf fields by number (code = 1, message = 2)."""
    assert r.headers["content-type"] == content_type, (r.status_code, r.headers["content-type"], r.content[:200])
    if content_type == "application/json":
        doc = r.json()
        assert set(doc) <= {"code", "message", "details"}, doc
        return doc.get("code", 0), doc.get("message", "")
    from google.protobuf import empty_pb2
    from google.protobuf.unknown_fields import UnknownFieldSet

    fields = {f.field_number: f.data for f in UnknownFieldSet(empty_pb2.Empty.FromString(r.content))}
    assert set(fields) <= {1, 2, 3}, fields
    return fields.get(1, 0), fields.get(2, b"").decode()


@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
async def test_otlp_errors_are_a_google_rpc_status_in_the_requests_encoding(logging_api, content_type):
    """OTLP/HTTP: every 4xx/5xx body is a google.rpc.Status, encoded as the request was, so an
    exporter (the collector's otlphttp, the SDKs) reads the cause instead of a body it cannot decode."""
    client, *_ = logging_api
    bad = b"\xff\xff\xff" if content_type == "application/x-protobuf" else b"not json"
    cases = [
        (400, bad, {}, "not"),
        (400, b"not gzip", {"Content-Encoding": "gzip"}, "gzip"),
        (415, b"", {"Content-Encoding": "br"}, "Content-Encoding"),
        (413, gzip.compress(b"\0" * (4 << 20)), {"Content-Encoding": "gzip"}, "HELICONE_MAX_BODY_BYTES"),
        (401, b"", {"Authorization": "Bearer sk-helicone-not-a-key"}, "key"),  # answered before the route
        (413, b"\0" * ((1 << 20) + 1), {}, "HELICONE_MAX_BODY_BYTES"),
    ]
    for status, body, headers, said in cases:
        r = await client.post("/v1/traces", content=body, headers={"Content-Type": content_type, **headers})
        assert r.status_code == status, (status, r.content[:200])
        code, message = _rpc_status(r, content_type)
        assert said in message and code == (16 if status == 401 else 3), (status, code, message)


async def test_publish_waits_while_held_and_answers_after_release(logging_api, kafka_bootstrap):
    """The embedded runner holds producers while it recycles the topic: an async log waits, then lands."""
    client, state, _, topic = logging_api
    await state.publisher.hold()
    pending = asyncio.create_task(client.post("/custom/v1/log", json=helicone_payload()))
    await asyncio.sleep(0.3)
    assert not pending.done()
    state.publisher.release()
    r = await pending
    assert r.status_code == 200
    assert len(await consume(kafka_bootstrap, topic, 1)) == 1


async def test_odd_numbers_in_spans_never_break_the_receiver(logging_api, kafka_bootstrap):
    client, _, _, topic = logging_api
    trace = "1af7651916cd43dd8448eb211c80319c"
    late = 10_500_000_000 * 10**9  # after 2299
    spans = [_span(trace, "a1ad6b7169203331", GENAI), _span(trace, "a2ad6b7169203331", GENAI, start=late, end=late)]
    odd = {"gen_ai.usage.input_tokens": "Infinity", "gen_ai.usage.output_tokens": 1e30,
           "gen_ai.response.time_to_first_chunk": "NaN"}  # OTLP JSON spells these doubles as strings
    for kv in spans[0]["attributes"]:
        if kv["key"] in odd:
            kv["value"] = {"doubleValue": odd[kv["key"]]}
    spans[0]["attributes"].append({"key": "gen_ai.response.time_to_first_chunk", "value": {"doubleValue": "NaN"}})
    r = await client.post("/v1/traces", content=json.dumps(_otlp_json(spans)), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert "2299" in r.json()["partialSuccess"]["errorMessage"]
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.time_to_first_token_ms) == (0, 0, -1)
    p = helicone_payload()
    p["timing"]["endTime"]["seconds"] = 10**11
    r = await client.post("/custom/v1/log", json=p)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "timing.endTime.seconds"


AWKWARD = [None, -1, 2**70, 1e308, "x", "", [], {}, "\ud800", "é" * 5000, True]


def _leaves(doc, path=()):
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list) and doc:
        for i, v in enumerate(doc):
            yield from _leaves(v, (*path, i))
    yield path


def _replaced(doc, path, value):
    if not path:
        return value
    out = json.loads(json.dumps(doc))
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


async def test_every_field_of_a_payload_takes_awkward_values_without_a_500(logging_api):
    """Each leaf and branch of a valid payload replaced by awkward values: a 200 or a 422, never a 500."""
    client, *_ = logging_api
    base = helicone_payload()
    base["providerRequest"]["meta"]["Helicone-Request-Id"] = str(uuid.uuid4())  # retries replace one log
    seen = set()
    for path in _leaves(base):
        for value in AWKWARD:
            body = json.dumps(_replaced(base, path, value), ensure_ascii=True).encode()
            r = await client.post("/custom/v1/log", content=body, headers={"Content-Type": "application/json"})
            seen.add(r.status_code)
            assert r.status_code in (200, 422), (path, value, r.text)
            assert r.headers["content-type"] == "application/json"
    assert seen == {200, 422}
    span = _span("2af7651916cd43dd8448eb211c80319c", "b1ad6b7169203331", GENAI)
    for i in range(len(span["attributes"])):
        for value in AWKWARD:
            awkward = json.loads(json.dumps(span))
            awkward["attributes"][i]["value"] = {"stringValue": value} if isinstance(value, str) else {"intValue": str(value)}
            r = await client.post("/v1/traces", content=json.dumps(_otlp_json([awkward]), ensure_ascii=True),
                                  headers={"Content-Type": "application/json"})
            assert r.status_code in (200, 400), (i, value, r.text)


# ---- review44: Helicone SDK payload shapes, timing, model detection, odd input ----

_SSE = ('data: {"id":"c","model":"gpt-4o-mini-2024-07-18","choices":[{"delta":{"content":"Hi"}}]}\n\n'
        'data: {"id":"c","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2}}\n\n'
        'data: [DONE]\n\n')


def _sdk_payload(request: dict, text_body: str) -> dict:
    """What Helicone's HeliconeManualLogger (TS and Python helpers) sends for a response given as a string:
    `json: {}` next to `textBody`, the logger's own headers (no content-type) and `url: custom-model-nopath`."""
    return {
        "providerRequest": {"url": "custom-model-nopath", "json": request, "meta": {}},
        "providerResponse": {"headers": {}, "status": 200, "json": {}, "textBody": text_body},
        "timing": {"startTime": {"seconds": T0, "milliseconds": 0}, "endTime": {"seconds": T0 + 1, "milliseconds": 0}},
    }


async def test_sdk_log_with_empty_json_next_to_text_body_keeps_the_text_body(logging_api, kafka_bootstrap):
    """logSingleRequest(request, body: string): the answer is in textBody, json is {} (Helicone reads textBody first)."""
    client, _, _, topic = logging_api
    answer = json.dumps({"id": "c1", "model": "gpt-4o-mini", "choices": [{"message": {"role": "assistant", "content": "Hello"}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 2}})
    r = await client.post("/custom/v1/log", json=_sdk_payload({"model": "gpt-4o-mini", "messages": []}, answer))
    assert r.status_code == 200, r.text
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert ev.inline.response_body == answer.encode()
    assert (ev.usage.known, ev.usage.prompt_tokens, ev.usage.completion_tokens) == (True, 10, 2)
    assert ev.cost_known


async def test_sdk_streamed_log_without_content_type_is_read_as_a_stream(logging_api, kafka_bootstrap):
    """logStream / logSingleStream: the SSE text in textBody, no content-type; the request says stream: true."""
    client, _, _, topic = logging_api
    r = await client.post("/custom/v1/log", json=_sdk_payload({"model": "gpt-4o-mini", "stream": True, "messages": []}, _SSE))
    assert r.status_code == 200, r.text
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert ev.inline.response_body == _SSE.encode() and ev.streamed
    assert (ev.model, ev.usage.known, ev.usage.prompt_tokens, ev.usage.completion_tokens) == ("gpt-4o-mini-2024-07-18", True, 10, 2)
    assert ev.cost_known


async def test_helicone_headers_on_the_log_request_itself_are_read(logging_api, kafka_bootstrap):
    """Helicone's manual loggers send user, properties and request id as headers of the log POST (additionalHeaders)."""
    client, _, _, topic = logging_api
    rid = str(uuid.uuid4())
    payload = helicone_payload()
    payload["providerRequest"]["meta"] = {"Helicone-Property-Env": "meta-wins"}
    r = await client.post("/custom/v1/log", json=payload, headers={
        "Helicone-User-Id": "erin", "Helicone-Request-Id": rid, "Helicone-Property-Team": "ml", "Helicone-Property-Env": "hdr"})
    assert r.status_code == 200, r.text
    assert r.json() == {"request_id": rid}
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert (ev.request_id, ev.user_id, dict(ev.properties)) == (rid, "erin", {"team": "ml", "env": "meta-wins"})
    r = await client.post("/custom/v1/log", json=helicone_payload(), headers={"Helicone-Request-Id": "nope"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "headers.helicone-request-id"



async def test_a_helicone_header_sent_twice_on_the_log_request_is_a_422_naming_it(logging_api, kafka_bootstrap):
    """As the gateway: two copies (the app's and a proxy's) were read last-wins, so a privacy proxy's
    Helicone-Omit-Request: true followed by the app's 'false' logged the body the caller hid."""
    client, _, _, topic = logging_api
    r = await client.post("/custom/v1/log", json=helicone_payload(),
                          headers=[("Helicone-Omit-Request", "true"), ("Helicone-Omit-Request", "false")])
    assert r.status_code == 422, r.text
    [detail] = r.json()["error"]["details"]
    assert detail["field"] == "headers.helicone-omit-request" and "more than once" in detail["message"], detail

def test_async_log_latency_is_exact_to_the_millisecond():
    import datetime as dt

    from helicone_api.async_log import AsyncLog, to_event
    from helicone_core.cost import CostRegistry

    costs, wrong = CostRegistry.default(), []
    for start_ms, end_ms in [(0, 1), (0, 3), (7, 12), (250, 751), (999, 0)]:
        p = AsyncLog.model_validate({
            "providerRequest": {"url": "https://api.openai.com/v1/chat/completions", "json": {"model": "gpt-4o"}},
            "providerResponse": {"status": 200, "json": {}},
            "timing": {"startTime": {"seconds": T0, "milliseconds": start_ms}, "endTime": {"seconds": T0 + 1, "milliseconds": end_ms}}})
        ev = to_event(p, org_id="o", costs=costs, region="", body_limit=1 << 20, now=dt.datetime.now(dt.timezone.utc))
        if ev.latency_ms != 1000 + end_ms - start_ms:
            wrong.append((start_ms, end_ms, ev.latency_ms))
    assert wrong == []


def test_async_log_model_comes_from_the_path_when_the_answer_names_none():
    """As the gateway does (parsed model, else the path's model, else the request's): Gemini and Azure name the
    model in the URL, not in the request body."""
    import datetime as dt

    from helicone_api.async_log import AsyncLog, to_event
    from helicone_core.cost import CostRegistry

    costs = CostRegistry.default()
    for url, answer, model in [
        ("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
         {"candidates": [], "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}}, "gemini-2.0-flash"),
        ("https://acme.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
         {"error": {"code": "429", "message": "Rate limit"}}, "gpt-4o"),
    ]:
        p = AsyncLog.model_validate({"providerRequest": {"url": url, "json": {"contents": []}},
                                     "providerResponse": {"status": 200, "json": answer}})
        ev = to_event(p, org_id="o", costs=costs, region="", body_limit=1 << 20, now=dt.datetime.now(dt.timezone.utc))
        assert (ev.provider in ("gemini", "azure"), ev.model) == (True, model), url


def test_an_async_log_of_a_batch_object_keeps_its_model_and_no_usage():
    """A batch object (batches.retrieve, polled until done) carries its whole batch's usage, billed at the batch API's
    prices: logged, each poll was priced once more at the standard rate. As the gateway: the model, no usage."""
    import datetime as dt

    from helicone_api.async_log import AsyncLog, to_event
    from helicone_core.cost import CostRegistry

    batch = {"id": "batch_1", "object": "batch", "status": "completed", "model": "gpt-4o-mini",
             "usage": {"input_tokens": 100_000, "output_tokens": 50_000, "total_tokens": 150_000}}
    p = AsyncLog.model_validate({"providerRequest": {"url": "https://api.openai.com/v1/batches/batch_1/cancel", "json": {}},
                                 "providerResponse": {"status": 200, "json": batch}})
    ev = to_event(p, org_id="o", costs=CostRegistry.default(), region="", body_limit=1 << 20, now=dt.datetime.now(dt.timezone.utc))
    assert (ev.model, ev.usage.known, ev.cost_known) == ("gpt-4o-mini", False, False)


def test_an_async_log_of_speech_or_dall_e_is_priced_by_its_request_as_the_gateway_prices_it():
    """tts-1's answer is audio and dall-e's names no usage: as the gateway, the request's `input` characters ($15 per
    1M) and images (dall-e-3 hd 1024x1792: $0.12) price them; an error answer is not priced."""
    import datetime as dt

    from helicone_api.async_log import AsyncLog, to_event
    from helicone_core.cost import CostRegistry

    costs = CostRegistry.default()
    cases = [
        ("https://api.openai.com/v1/audio/speech", {"model": "tts-1", "input": "Hello there", "voice": "alloy"},
         {"status": 200, "textBody": "ID3..."}, 11 * 15.0 / 1e6),
        ("https://api.openai.com/v1/images/generations",
         {"model": "dall-e-3", "prompt": "a cat", "size": "1024x1792", "quality": "hd"},
         {"status": 200, "json": {"created": T0, "data": [{"url": "https://img.example/1.png"}]}}, 0.12),
        ("https://api.openai.com/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat"},
         {"status": 400, "json": {"error": {"message": "content policy"}}}, None),
    ]
    for url, request, response, want in cases:
        p = AsyncLog.model_validate({"providerRequest": {"url": url, "json": request}, "providerResponse": response})
        ev = to_event(p, org_id="o", costs=costs, region="", body_limit=1 << 20, now=dt.datetime.now(dt.timezone.utc))
        assert (ev.model, ev.usage.known) == (request["model"], False)
        assert (ev.cost_usd if ev.cost_known else None) == pytest.approx(want), url


async def test_deeply_nested_json_is_a_4xx_never_a_500(logging_api):
    client, *_ = logging_api
    app = client._transport.app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api",
                                 headers=client.headers) as c:
        statuses = {}
        for depth in range(880, 960):  # around where json.loads stops: some depths parse but cannot be written back
            body = json.dumps(helicone_payload()).replace('"messages": [', '"deep": ' + "[" * depth + "]" * depth + ', "messages": [', 1)
            r = await c.post("/custom/v1/log", content=body, headers={"Content-Type": "application/json"})
            statuses.setdefault(r.status_code, []).append(depth)
        assert 500 not in statuses, statuses.get(500)


async def test_otlp_attribute_of_deeply_nested_json_text_is_never_a_500(logging_api, kafka_bootstrap):
    """An attribute holding deeply nested JSON text: the span is logged (or rejected), the batch is not a 500."""
    client, _, _, topic = logging_api
    app = client._transport.app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api",
                                 headers=client.headers) as c:
        deep = "[" * 5000 + "]" * 5000
        spans = [_span("3af7651916cd43dd8448eb211c80319c", "c1ad6b7169203331", {**GENAI, "gen_ai.input.messages": deep}),
                 _span("3af7651916cd43dd8448eb211c80319c", "c2ad6b7169203331", GENAI)]
        r = await c.post("/v1/traces", json=_otlp_json(spans))
        assert r.status_code == 200, r.text
    assert len(await consume(kafka_bootstrap, topic, 2, timeout=5)) == 2


@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,  # deeper than json.loads goes
    '{"resourceSpans": [{"scopeSpans": [{"spans": ' + "[" * 5000 + "]" * 5000 + "}]}]}",
    '{"\\ud800": 1}',  # a lone surrogate as a field name, an enum value, a message
    '{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": "\\ud800"}]}]}]}',
    '{"resourceSpans": [{"resource": "\\ud800"}]}',
], ids=["deep-array", "deep-spans", "surrogate-key", "surrogate-enum", "surrogate-message"])
async def test_otlp_json_too_deep_or_not_unicode_is_a_400_never_a_500(logging_api, body):
    client, *_ = logging_api
    app = client._transport.app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api",
                                 headers=client.headers) as c:
        r = await c.post("/v1/traces", content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert "JSON" in r.json()["message"]


async def test_otlp_gzip_body_of_several_members_is_read_whole(logging_api, kafka_bootstrap):
    """A gzip body may hold several members (RFC 1952); protobuf messages concatenated are one message merged."""
    client, _, _, topic = logging_api
    from google.protobuf import json_format

    def one(span_hex: str) -> bytes:
        doc = _otlp_json([_span("4af7651916cd43dd8448eb211c80319c", span_hex, GENAI)])
        for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
            import base64

            span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
            span["spanId"] = base64.b64encode(bytes.fromhex(span["spanId"])).decode()
        return json_format.ParseDict(doc, ExportTraceServiceRequest()).SerializeToString()

    body = gzip.compress(one("d1ad6b7169203331")) + gzip.compress(one("d2ad6b7169203331"))
    assert len(ExportTraceServiceRequest.FromString(gzip.decompress(body)).resource_spans) == 2
    r = await client.post("/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert r.status_code == 200
    assert len(await consume(kafka_bootstrap, topic, 2, timeout=5)) == 2


@pytest.mark.parametrize("cut", [4, 8, 40], ids=["no-size", "no-trailer", "mid-stream"])
async def test_otlp_gzip_body_cut_short_is_a_400_not_a_partial_export(logging_api, kafka_bootstrap, cut):
    """A gzip body that ends before its member does (no CRC/size trailer, or cut in the deflate stream)
    is not valid gzip: answered 400, not taken as the spans that happened to come out of it."""
    client, _, _, topic = logging_api
    body = gzip.compress(_otlp_request().SerializeToString())[:-cut]
    r = await client.post("/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    assert r.status_code == 400, r.content[:200]
    assert "gzip" in _rpc_status(r, "application/x-protobuf")[1]
    assert await consume(kafka_bootstrap, topic, 1, timeout=1) == []


async def test_a_timed_log_sent_again_after_a_503_is_stored_once(logging_api, kafka_bootstrap):
    """A 503 (Kafka slower than publish_timeout) does not take back what the producer already buffered:
    Kafka may still store that copy. The caller sends the log again without a Helicone-Request-Id, and
    it must replace the first copy, not add a second request."""
    client, state, _, topic = logging_api
    other = helicone_payload()
    other["providerRequest"]["meta"]["Helicone-Request-Id"] = str(uuid.uuid4())
    assert (await client.post("/custom/v1/log", json=other)).status_code == 200  # producer connected
    state.publisher.timeout = 0.001  # acks=all takes longer than this
    r = await client.post("/custom/v1/log", json=helicone_payload())
    assert r.status_code == 503, r.text
    state.publisher.timeout = 3.0
    assert (await client.post("/custom/v1/log", json=helicone_payload())).status_code == 200  # the caller's retry
    got = await consume(kafka_bootstrap, topic, 3, timeout=5)
    stored = {(ev.org_id, ev.request_id) for ev in got}  # ingest keeps one log per (org, request id)
    assert len(stored) == 2, f"{len(stored)} logs stored after one 200, one 503 and its retry"


@pytest.mark.parametrize("url", [
    "generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent?key=AIzaNOT-A-REAL-KEY",
    "grpc://models.example.invalid/v1/chat?api_key=NOT-A-REAL-KEY#frag",
])
def test_a_url_without_an_http_scheme_is_stored_without_its_query(url):
    """An http(s) URL is stored as base URL and path, never its query; one without that scheme used to be
    stored whole, with a key in its query (Gemini's ?key=) kept in the log."""
    import datetime as dt

    from helicone_api.async_log import AsyncLog, to_event
    from helicone_core.cost import CostRegistry

    p = AsyncLog.model_validate({"providerRequest": {"url": url, "json": {"model": "m"}},
                                 "providerResponse": {"status": 200, "json": {}}})
    ev = to_event(p, org_id="o", costs=CostRegistry.default(), region="", body_limit=1 << 20,
                  now=dt.datetime.now(dt.timezone.utc))
    assert "NOT-A-REAL-KEY" not in ev.path and "NOT-A-REAL-KEY" not in ev.target_url, (ev.path, ev.target_url)
    assert ev.path == url.split("?")[0]


@pytest.mark.parametrize("given, provider, url", [
    ("GOOGLE", "gemini", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"),
    ("gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"),
    ("X", "xai", "https://api.x.ai/v1/chat/completions"),
    ("OPENAI", "openai", "https://api.openai.com/v1/chat/completions"),
])
def test_helicones_provider_names_are_read_as_the_providers_they_name(given, provider, url):
    """Helicone's SDK sends its own provider names (GOOGLE for Gemini, X for xAI): read as such, the
    answer's usage is read the provider's way (Gemini's usageMetadata), not as an unknown provider's."""
    import datetime as dt

    from helicone_api.async_log import AsyncLog, to_event
    from helicone_core.cost import CostRegistry

    answer = ({"candidates": [], "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3}} if provider == "gemini"
              else {"model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    p = AsyncLog.model_validate({"provider": given,
                                 "providerRequest": {"url": url, "json": {"model": "m"}},
                                 "providerResponse": {"status": 200, "json": answer}})
    ev = to_event(p, org_id="o", costs=CostRegistry.default(), region="", body_limit=1 << 20,
                  now=dt.datetime.now(dt.timezone.utc))
    assert (ev.provider, ev.usage.known, ev.usage.prompt_tokens, ev.usage.completion_tokens) == (provider, True, 5, 3)


@pytest.mark.parametrize("given, provider", [("x_ai", "xai"), ("gcp.gemini", "gemini"), ("mistral_ai", "mistral"),
                                             ("az.ai.openai", "azure"), ("OpenAI", "openai"), ("acme-llm", "acme-llm")])
def test_otel_provider_names_are_stored_under_the_gateways_names(given, provider):
    """OpenTelemetry's gen_ai.provider.name values (x_ai, gcp.gemini, ...) are stored under the names the
    gateway logs the same providers by, so a breakdown or filter by provider counts them together."""
    import base64

    from google.protobuf import json_format
    from helicone_api.otlp import to_events
    from helicone_core.cost import CostRegistry

    doc = _otlp_json([_span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", {**GENAI, "gen_ai.provider.name": given})])
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
        span["spanId"] = base64.b64encode(bytes.fromhex(span["spanId"])).decode()
    out = to_events(json_format.ParseDict(doc, ExportTraceServiceRequest()), org_id="o", costs=CostRegistry.default(),
                    region="", body_limit=1 << 20)
    assert [ev.provider for ev in out.events] == [provider]


async def test_model_override_names_the_logged_model_and_its_cost(logging_api, kafka_bootstrap):
    """Helicone-Model-Override, in `meta` or on the log request itself: the log's model and cost; the logged bodies as sent."""
    client, state, _, topic = logging_api
    payload = helicone_payload()
    payload["providerRequest"]["meta"]["Helicone-Model-Override"] = " gpt-4o "
    r = await client.post("/custom/v1/log", json=payload)
    assert r.status_code == 200, r.text
    r = await client.post("/custom/v1/log", json=helicone_payload(), headers={"Helicone-Model-Override": "acme-support-bot"})
    assert r.status_code == 200, r.text
    priced, unpriced = await consume(kafka_bootstrap, topic, 2)
    tokens = _tokens(1000, 500, 200)
    assert priced.model == "gpt-4o" and priced.cost_known
    assert priced.cost_usd == pytest.approx(state.costs.cost("openai", "gpt-4o", tokens))
    assert priced.cost_usd != pytest.approx(state.costs.cost("openai", "gpt-4o-mini", tokens))
    assert json.loads(priced.inline.request_body)["model"] == "gpt-4o-mini"
    assert json.loads(priced.inline.response_body)["model"] == "gpt-4o-mini-2024-07-18"
    expected = state.costs.cost("openai", "acme-support-bot", tokens)
    assert unpriced.model == "acme-support-bot" and unpriced.usage.known
    assert (unpriced.cost_known, unpriced.cost_usd) == (expected is not None, pytest.approx(expected or 0.0))


@pytest.mark.parametrize("value", ["", "  ", "m" * 257, "gpt-4o\nx", "gpt\x00"])
async def test_a_bad_model_override_is_a_422_naming_it(logging_api, value):
    client, *_ = logging_api
    payload = helicone_payload()
    payload["providerRequest"]["meta"]["Helicone-Model-Override"] = value
    r = await client.post("/custom/v1/log", json=payload)
    assert r.status_code == 422, r.text
    detail = r.json()["error"]["details"][0]
    assert detail["field"] == "providerRequest.meta.Helicone-Model-Override"
    assert detail["message"].startswith("Helicone-Model-Override ") and "256 characters" in detail["message"]


def test_otlp_model_override_attribute_names_the_logged_model_and_its_cost():
    import base64

    from google.protobuf import json_format
    from helicone_api.otlp import to_events
    from helicone_core.cost import CostRegistry, TokenCounts

    doc = _otlp_json([_span("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", {**GENAI, "helicone.model.override": "gpt-4o-mini"}),
                      _span("5b8efff798038103d269b633813fc60c", "fee19b7ec3c1b174", {**GENAI, "helicone.model.override": ""})])
    for span in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        span["traceId"] = base64.b64encode(bytes.fromhex(span["traceId"])).decode()
        span["spanId"] = base64.b64encode(bytes.fromhex(span["spanId"])).decode()
    costs = CostRegistry.default()
    out = to_events(json_format.ParseDict(doc, ExportTraceServiceRequest()), org_id="o", costs=costs, region="", body_limit=1 << 20)
    [ev] = out.events
    tokens = TokenCounts(prompt_tokens=100, completion_tokens=20, cache_read_tokens=40)
    assert ev.model == "gpt-4o-mini" and ev.cost_usd == pytest.approx(costs.cost("openai", "gpt-4o-mini", tokens))
    assert ev.cost_usd != pytest.approx(costs.cost("openai", "gpt-4o-2024-08-06", tokens))
    assert json.loads(ev.inline.response_body)["model"] == "gpt-4o-2024-08-06"  # the span's, as it came
    assert out.rejected == 1 and "helicone.model.override" in out.first_problem and "Helicone-Model-Override" in out.first_problem


# an operator's limits above Kafka's record (4 MiB): a request body of 16 MiB, bodies logged up to 3 MiB each
LARGE_LIMITS = {"max_body_bytes": 16 << 20, "max_logged_body_bytes": 3 << 20}


@pytest.mark.parametrize("logging_api", [LARGE_LIMITS], indirect=True)
async def test_an_async_log_larger_than_a_kafka_record_is_never_answered_send_it_again(logging_api, kafka_bootstrap):
    """Kafka's producer refuses a record over MAX_RECORD_BYTES at every try: the api answered 503 "send it
    again", and the caller's retries could never succeed (the log lost). Bodies that make it too large are
    cut further (flagged truncated) so the log is kept; a log too large without its bodies is a 413 naming the limit."""
    from helicone_core.kafka import MAX_RECORD_BYTES

    client, _, _, topic = logging_api
    big = helicone_payload()
    big["providerRequest"]["meta"]["Helicone-Request-Id"] = rid = str(uuid.uuid4())
    big["providerRequest"]["json"]["messages"][0]["content"] = "q" * (4 << 20)
    big["providerResponse"]["json"]["choices"][0]["message"]["content"] = "a" * (4 << 20)
    r = await client.post("/custom/v1/log", json=big)
    assert r.status_code == 200, r.text[:300]
    [ev] = await consume(kafka_bootstrap, topic, 1)
    assert ev.request_id == rid and len(events.encode(ev)) <= MAX_RECORD_BYTES
    assert ev.inline.request_truncated and ev.inline.response_truncated
    assert ev.inline.request_body.startswith(b'{"model":"gpt-4o-mini"') and ev.inline.response_body.startswith(b'{"id":"c1"')
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (1000, 500)  # read from the whole answer

    huge_model = helicone_payload()
    huge_model["providerResponse"]["json"]["model"] = "m" * (5 << 20)
    r = await client.post("/custom/v1/log", json=huge_model)
    assert r.status_code == 413, r.text[:300]
    message = r.json()["error"]["message"]
    assert str(MAX_RECORD_BYTES) in message and "model" in message, message
    assert "send it again" not in message and "retry-after" not in r.headers
    assert [e.request_id for e in await consume(kafka_bootstrap, topic, 2, timeout=1)] == [rid]


@pytest.mark.parametrize("logging_api", [LARGE_LIMITS], indirect=True)
async def test_an_otlp_span_larger_than_a_kafka_record_is_rejected_alone(logging_api, kafka_bootstrap):
    """One span too large for a Kafka record made the whole export a 503 that every retry met again; now
    the others are logged, a span whose messages make it too large is logged with them cut, and one too
    large without them is counted in partial_success, naming the limit."""
    from helicone_core.kafka import MAX_RECORD_BYTES

    client, _, _, topic = logging_api
    trace = "2af7651916cd43dd8448eb211c80319c"
    spans = [
        _span(trace, "e1ad6b7169203331", GENAI),
        _span(trace, "e2ad6b7169203331", {**GENAI, "gen_ai.response.model": "m" * (5 << 20)}),
        _span(trace, "e3ad6b7169203331", {**GENAI, "gen_ai.input.messages": json.dumps([{"role": "user", "content": "q" * (4 << 20)}]),
                                          "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": "a" * (4 << 20)}])}),
    ]
    r = await client.post("/v1/traces", content=json.dumps(_otlp_json(spans)), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    partial = r.json()["partialSuccess"]
    assert partial["rejectedSpans"] in (1, "1")
    message = partial["errorMessage"]
    assert message.startswith("resourceSpans[0].scopeSpans[0].spans[1]: ") and str(MAX_RECORD_BYTES) in message, message
    got = await consume(kafka_bootstrap, topic, 2)
    assert [e.model for e in got] == ["gpt-4o-2024-08-06"] * 2
    assert all(len(events.encode(e)) <= MAX_RECORD_BYTES for e in got)
    assert got[1].inline.request_truncated and got[1].inline.response_truncated


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("content_type", ["application/x-protobuf", "application/json"])
async def test_an_empty_otlp_export_succeeds_in_either_encoding(logging_api, content_type, gzipped):
    """OTLP/HTTP: "If the server receives an empty request (a request that does not carry any telemetry
    data) the server SHOULD respond with success." An empty body was a 200 as protobuf but a 400 as JSON."""
    client, *_ = logging_api
    body, headers = (gzip.compress(b""), {"Content-Encoding": "gzip"}) if gzipped else (b"", {})
    r = await client.post("/v1/traces", content=body, headers={"Content-Type": content_type, **headers})
    assert r.status_code == 200, r.content[:200]
    assert r.headers["content-type"] == content_type
    if content_type == "application/json":
        assert r.json() == {}
    else:
        assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")


async def test_a_broker_that_never_answers_leaves_no_half_started_producer_behind(tmp_path):
    """Kafka slow, not down: it takes connections and answers nothing. Each log is a 503 at publish_timeout, whose
    deadline cancelled the producer's start: that producer was never stopped, and each 503 left one behind,
    reported as an "Unclosed AIOKafkaProducer" error when collected."""
    import gc

    from helicone_api.log_publisher import LogPublisher, PublishUnavailable
    from helicone_core.metrics import ServiceMetrics

    async def silent(reader, writer):
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop, unclosed = asyncio.get_running_loop(), []
    loop.set_exception_handler(lambda _loop, context: unclosed.append(context["message"]))
    publisher = LogPublisher(_settings(tmp_path, "postgresql://unused@127.0.0.1/x", f"127.0.0.1:{port}", "t",
                                       publish_timeout=0.3), ServiceMetrics("api"))
    try:
        await publisher.start()
        await publisher._warm_up  # its own connect attempt times out (and stops its producer)
        ev = events.RequestLogged(schema_version=events.SCHEMA_VERSION, request_id=str(uuid.uuid4()), org_id="o")
        for _ in range(2):
            with pytest.raises(PublishUnavailable):
                await publisher.publish([ev])
        await publisher.stop()
        gc.collect()
        await asyncio.sleep(0)
        assert not [m for m in unclosed if "Unclosed" in m], unclosed
    finally:
        loop.set_exception_handler(None)
        server.close()
