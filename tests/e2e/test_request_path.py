"""The path that must work: official SDKs -> gateway -> Kafka -> ingest -> ClickHouse/S3/Postgres -> api."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import uuid

import anthropic
import grpc
import httpx
import openai
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helicone_core import events

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "sk-proj-e2e-provider-secret-0123456789"
ANTHROPIC_KEY = "sk-ant-e2e-provider-secret-0123456789"
# gpt-4o-mini: $0.15 / $0.60 per 1M tokens; claude-3-5-haiku: $0.80 / $4.00
GPT4O_MINI = (0.15, 0.60)
HAIKU = (0.80, 4.00)


def oai(stack, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=PROVIDER_KEY,
                         default_headers={"Helicone-Auth": f"Bearer {stack.key}", **headers}, max_retries=0)


def claude(stack, **headers) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.gateway, api_key=ANTHROPIC_KEY,
                               default_headers={"Helicone-Auth": f"Bearer {stack.key}", **headers}, max_retries=0)


def cost(prices, prompt, completion) -> float:
    return (prompt * prices[0] + completion * prices[1]) / 1e6


def test_openai_chat_completion(stack):
    client = oai(stack, **{"Helicone-User-Id": "alice", "Helicone-Session-Id": "sess-1", "Helicone-Session-Path": "/plan",
                           "Helicone-Session-Name": "Trip", "Helicone-Property-Environment": "e2e",
                           "Helicone-Property-Feature": "chat"})
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "four words of prompt"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream model"
    rid = raw.headers["helicone-id"]

    logged = stack.wait_for_request(rid)
    assert logged["status"] == 200 and logged["provider"] == "openai" and logged["model"] == "gpt-4o-mini"
    assert logged["path"] == "/v1/chat/completions" and not logged["streamed"]
    assert logged["usage"]["prompt_tokens"] == 4 and logged["usage"]["completion_tokens"] == 6
    assert logged["usage"]["total_tokens"] == 10
    assert logged["cost_usd"] == pytest.approx(cost(GPT4O_MINI, 4, 6))
    assert logged["user_id"] == "alice"
    assert logged["session"] == {"id": "sess-1", "path": "/plan", "name": "Trip"}
    assert logged["properties"] == {"environment": "e2e", "feature": "chat"}
    assert logged["latency_ms"] >= 0 and logged["time_to_first_token_ms"] is not None
    assert logged["request_body"]["messages"] == [{"role": "user", "content": "four words of prompt"}]
    assert logged["response_body"]["id"] == completion.id


def test_openai_streaming(stack):
    client = oai(stack, **{"Helicone-Property-Kind": "stream"})
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream this please"}], stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        rid = resp.headers["helicone-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "Hello from the fake upstream model"
    logged = stack.wait_for_request(rid)
    assert logged["streamed"] and logged["usage"]["prompt_tokens"] == 3 and logged["usage"]["completion_tokens"] == 6
    assert logged["cost_usd"] == pytest.approx(cost(GPT4O_MINI, 3, 6))
    assert isinstance(logged["response_body"], str) and logged["response_body"].rstrip().endswith("data: [DONE]")
    assert '"content": " upstream"' in logged["response_body"]


def test_stream_usage_omitted_bodies_and_request_name(stack):
    # the SDK asks for no usage; Helicone-Stream-Usage gets it logged all the same
    client = oai(stack, **{"Helicone-Stream-Usage": "true", "Helicone-Omit-Request": "true",
                           "Helicone-Omit-Response": "true", "Helicone-Request-Name": "digest"})
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream this please"}], stream=True,
    ) as resp:
        rid = resp.headers["helicone-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "Hello from the fake upstream model"
    logged = stack.wait_for_request(rid)
    assert logged["status"] == 200 and logged["streamed"] and logged["usage"]["completion_tokens"] == 6
    assert logged["cost_usd"] == pytest.approx(cost(GPT4O_MINI, 3, 6))
    assert logged["request_body"] is None and logged["response_body"] is None
    assert logged["properties"] == {"helicone-request-name": "digest"}
    r = httpx.post(f"{stack.gateway}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []},
                   headers={"Helicone-Auth": f"Bearer {stack.key}", "Helicone-Omit-Request": "yes"})
    assert r.status_code == 400 and "Helicone-Omit-Request must be 'true' or 'false'" in r.json()["error"]["message"]


def test_stream_chunks_are_forwarded_as_they_arrive(stack):
    """The provider pauses 0.3 s between chunks: each chunk must reach the client before the next
    one is produced, not all at the end."""
    headers = {"Helicone-Auth": f"Bearer {stack.key}", "x-fake-chunk-delay": "0.3"}
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "slowly"}]}
    arrivals = []
    with httpx.stream("POST", f"{stack.gateway}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        start = time.monotonic()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 7
    # the provider needs 1.8 s from the first chunk to the last; a buffering proxy would deliver
    # them together at the end
    assert arrivals[-1] - arrivals[0] >= 1.2, arrivals


def test_caller_disconnecting_mid_stream_is_logged_as_incomplete(stack):
    headers = {"Helicone-Auth": f"Bearer {stack.key}", "x-fake-chunk-delay": "0.5"}
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "bye"}]}
    with httpx.stream("POST", f"{stack.gateway}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        rid = r.headers["helicone-id"]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # leave after the first chunk; closing the stream drops the connection
    logged = stack.wait_for_request(rid)
    assert logged["error"] and "client disconnected before the response completed" in logged["error"]
    assert logged["response_body"].count("data: {") < 7  # the rest was never read from the provider


def test_anthropic_messages_and_stream(stack):
    client = claude(stack, **{"Helicone-User-Id": "carol"})
    raw = client.messages.with_raw_response.create(
        model="claude-3-5-haiku-20241022", max_tokens=50, messages=[{"role": "user", "content": "hello there claude"}])
    msg = raw.parse()
    assert msg.content[0].text == "Hello from the fake upstream model"
    logged = stack.wait_for_request(raw.headers["helicone-id"])
    assert logged["provider"] == "anthropic" and logged["model"] == "claude-3-5-haiku-20241022"
    assert (logged["usage"]["prompt_tokens"], logged["usage"]["completion_tokens"]) == (3, 6)
    assert logged["cost_usd"] == pytest.approx(cost(HAIKU, 3, 6))
    assert logged["response_body"]["usage"] == {"input_tokens": 3, "output_tokens": 6}

    with client.messages.with_streaming_response.create(
        model="claude-3-5-haiku-20241022", max_tokens=50, stream=True, messages=[{"role": "user", "content": "stream it"}]
    ) as resp:
        rid = resp.headers["helicone-id"]
        chunks = [e for e in resp.parse()]
    assert chunks[0].type == "message_start" and chunks[-1].type == "message_stop"
    logged = stack.wait_for_request(rid)
    assert logged["streamed"] and (logged["usage"]["prompt_tokens"], logged["usage"]["completion_tokens"]) == (2, 6)
    assert logged["user_id"] == "carol"


def test_query_filters(stack):
    run = uuid.uuid4().hex[:8]
    before = dt.datetime.now(dt.timezone.utc)
    ids = {}
    for name, model, user in [("a", "gpt-4o-mini", "u-a"), ("b", "gpt-4o", "u-b"), ("c", "gpt-4o", "u-a")]:
        client = oai(stack, **{"Helicone-User-Id": f"{user}-{run}", "Helicone-Property-Run": run, "Helicone-Property-Name": name})
        raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": name}])
        ids[name] = raw.headers["helicone-id"]
        time.sleep(0.01)
    for rid in ids.values():
        stack.wait_for_request(rid)
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)

    def q(**flt):
        with stack.api_client() as api:
            r = api.post("/v1/request/query", json={"filter": {"properties": {"run": run}, **flt}})
        assert r.status_code == 200, r.text
        return sorted(d["properties"]["name"] for d in r.json()["data"])

    assert q() == ["a", "b", "c"]
    assert q(model="gpt-4o") == ["b", "c"]
    assert q(user_id=f"u-a-{run}") == ["a", "c"]
    assert q(properties={"run": run, "name": "b"}) == ["b"]
    assert q(start=before.isoformat(), end=after.isoformat()) == ["a", "b", "c"]
    assert q(end=before.isoformat()) == []
    assert q(model="gpt-4o", user_id=f"u-b-{run}") == ["b"]


def test_helicone_headers_stripped_provider_key_passed_and_never_logged(stack):
    httpx.delete(f"{stack.upstream}/_received")
    client = oai(stack, **{"Helicone-Property-Secret-Check": "yes"})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    stack.wait_for_request(raw.headers["helicone-id"])
    [received] = httpx.get(f"{stack.upstream}/_received").json()
    assert received["headers"]["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert not [h for h in received["headers"] if h.startswith("helicone-")]
    output = stack.log_path.read_text()
    assert PROVIDER_KEY not in output and ANTHROPIC_KEY not in output
    # the Helicone key is shown once, in the startup banner, and never in a log line
    assert [line for line in output.splitlines() if stack.key in line] == [
        line for line in output.splitlines() if line.startswith("  Helicone API key:")]


def test_auth_errors(stack):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(f"{stack.gateway}/v1/chat/completions", json=body)
    assert r.status_code == 401 and "Helicone-Auth" in r.json()["error"]["message"]
    r = httpx.post(f"{stack.gateway}/v1/chat/completions", json=body, headers={"Helicone-Auth": "Bearer sk-helicone-wrong"})
    assert r.status_code == 401
    assert httpx.post(f"{stack.api}/v1/request/query", json={}).status_code == 401


def test_ops_endpoints_everywhere(stack):
    for base in (stack.gateway, stack.api, stack.ingest_ops, stack.prompts_ops):
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200, (base, ready.text)
        assert "helicone_service_up" in httpx.get(f"{base}/metrics").text
    assert "helicone_gateway_events_published_total" in httpx.get(f"{stack.gateway}/metrics").text
    assert "helicone_ingest_events_total" in httpx.get(f"{stack.ingest_ops}/metrics").text

    async def grpc_health():
        async with grpc.aio.insecure_channel(stack.prompts_grpc) as ch:
            return await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))

    assert asyncio.run(grpc_health()).status == health_pb2.HealthCheckResponse.SERVING


def _event(org_id: str, **kw) -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=org_id, status=200,
                              provider="openai", model="gpt-4o-mini", source="e2e", **kw)
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    return ev


async def _produce(bootstrap: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait("helicone.request-logged.v1", v)
    finally:
        await producer.stop()


def test_replayed_event_is_stored_once(stack):
    run = uuid.uuid4().hex[:8]
    ev = _event(stack.org_id, properties={"replay": run})
    raw = events.encode(ev)
    asyncio.run(_produce(stack.kafka.bootstrap, [raw]))
    stack.wait_for_request(ev.request_id)
    asyncio.run(_produce(stack.kafka.bootstrap, [raw, raw]))
    marker = _event(stack.org_id, properties={"replay": run + "-marker"})
    asyncio.run(_produce(stack.kafka.bootstrap, [events.encode(marker)]))
    stack.wait_for_request(marker.request_id)  # everything before it has been written
    with stack.api_client() as api:
        data = api.post("/v1/request/query", json={"filter": {"properties": {"replay": run}}}).json()["data"]
    assert [d["request_id"] for d in data] == [ev.request_id]


def test_poison_event_goes_to_dead_letter_topic_and_ingest_continues(stack):
    poison = b"\x08\x63 this is not a RequestLogged " + uuid.uuid4().hex.encode()
    good = _event(stack.org_id)
    asyncio.run(_produce(stack.kafka.bootstrap, [poison, events.encode(good)]))
    stack.wait_for_request(good.request_id)

    async def find_in_dlq():
        consumer = AIOKafkaConsumer("helicone.request-logged.v1.dlq", bootstrap_servers=stack.kafka.bootstrap,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for rec in records:
                        if rec.value == poison:
                            return dict(rec.headers)
            return None
        finally:
            await consumer.stop()

    headers = asyncio.run(find_in_dlq())
    assert headers is not None, "poison event not found in the dead-letter topic"
    assert headers["x-helicone-error"]


def metric_samples(url: str, name: str) -> dict[tuple, float]:
    """The samples of one metric on a /metrics page, keyed by their sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


def test_region_flows_from_the_gateway_through_kafka_to_the_api(stack):
    assert stack.region == "eu-west-1"
    run = uuid.uuid4().hex[:8]
    raw = oai(stack, **{"Helicone-Property-Run": run}).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "which region"}])
    assert raw.headers.get_list("helicone-region") == [stack.region]
    rid = raw.headers["helicone-id"]
    assert stack.wait_for_request(rid)["region"] == stack.region
    with stack.api_client() as api:
        def q(region):
            r = api.post("/v1/request/query", json={"filter": {"properties": {"run": run}, "region": region}})
            assert r.status_code == 200, r.text
            return [d["request_id"] for d in r.json()["data"]]
        assert q(stack.region) == [rid] and q("us-east-1") == []
    # the gateway's own answers name the region too
    unauthorized = httpx.post(f"{stack.gateway}/v1/chat/completions", json={"model": "gpt-4o-mini"})
    assert unauthorized.status_code == 401 and unauthorized.headers["helicone-region"] == stack.region


def test_every_service_reports_its_region_and_ingest_its_usage_and_lag(stack):
    import importlib.metadata

    version = importlib.metadata.version("helicone-core")
    for name, url in (("gateway", stack.gateway), ("api", stack.api), ("ingest", stack.ingest_ops),
                      ("prompts", stack.prompts_ops)):
        assert metric_samples(url, "helicone_service_info") == {
            (("region", stack.region), ("service", name), ("version", version)): 1.0}, name

    def prompt_tokens(model: str) -> float:
        return metric_samples(stack.ingest_ops, "helicone_ingest_tokens_total").get(
            (("kind", "prompt"), ("model", model), ("provider", "openai")), 0.0)

    before, other_before = prompt_tokens("gpt-4.1-nano"), prompt_tokens("other")
    private_model = "acme-private-" + uuid.uuid4().hex[:8]  # a model name the caller made up
    rids = []
    for model in ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", private_model):
        raw = oai(stack).chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "count these tokens"}])  # 3 prompt tokens
        rids.append(raw.headers["helicone-id"])
    for rid in rids:
        assert stack.wait_for_request(rid)["usage"]["prompt_tokens"] == 3
    # once each, under the cost registry's name for the model, or "other"; never the caller's string
    assert prompt_tokens("gpt-4.1-nano") - before == 9
    assert prompt_tokens("other") - other_before >= 3
    labels = metric_samples(stack.ingest_ops, "helicone_ingest_tokens_total")
    assert not [k for k in labels if ("model", private_model) in k]
    deadline = time.monotonic() + 30
    while metric_samples(stack.ingest_ops, "helicone_ingest_consumer_lag_events") != {(): 0.0}:
        assert time.monotonic() < deadline, "ingest's lag did not return to 0 after it caught up"
        time.sleep(0.25)


def test_openai_audio_speech_and_a_large_upload_keep_their_bytes_to_the_api(stack):
    """A binary answer (/v1/audio/speech) relayed byte for byte and an upload larger than a megabyte (streamed through
    the gateway) are logged with their bytes: the api answers a binary body as its base64, said to be so (it was text
    with every byte that is not UTF-8 replaced), and the upload's start as sent. The speech's cost reaches the api."""
    from tests.support.fake_upstream import SPEECH_BYTES_PER_CHAR, binary_bytes

    client = oai(stack)
    raw = client.audio.speech.with_raw_response.create(model="tts-1", voice="alloy", input="hello there")
    assert raw.content == binary_bytes(SPEECH_BYTES_PER_CHAR * len("hello there"))
    speech = stack.wait_for_request(raw.headers["helicone-id"])
    # tts-1 is billed per character of its input ($15 per 1M): priced though its answer, audio, reports no usage
    assert (speech["model"], speech["cost_usd"], speech["usage"]["known"]) == ("tts-1", pytest.approx(11 * 15.0 / 1e6), False)
    assert speech["response_body_encoding"] == "base64"
    assert base64.b64decode(speech["response_body"]) == binary_bytes(SPEECH_BYTES_PER_CHAR * len("hello there"))
    data = binary_bytes(2 * 1024 * 1024)
    upload = client.files.with_raw_response.create(file=("in.bin", data), purpose="batch")
    assert upload.parse().bytes > len(data)
    logged = stack.wait_for_request(upload.headers["helicone-id"])
    assert logged["status"] == 200 and logged["body_truncated"] and logged["request_body_encoding"] == "base64"
    start = base64.b64decode(logged["request_body"])
    assert start.startswith(b"--") and data[:1000] in start
