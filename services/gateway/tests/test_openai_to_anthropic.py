"""The OpenAI SDK calling Claude through the gateway's /ai route (base_url <gateway>/ai, model "anthropic/<Claude
model>"): each request translated to Anthropic's Messages API and each answer back, against a strict fake Anthropic
(tests.support.fake_anthropic) that refuses what Anthropic refuses, with the gateway on its own HTTP server (a stream
reaches the SDK as it is made). Also what the log keeps: Anthropic's request and answer, its usage and its price."""

import asyncio
import base64
import contextlib
import json

import httpx
import openai
import pytest
import websockets
from helicone_gateway.app import create_app
from helicone_gateway.http_server import HttpServer
from helicone_gateway.settings import GatewaySettings

from services.gateway.tests.test_http_server import running
from services.gateway.tests.test_openai_endpoints import logged
from services.gateway.tests.test_proxy import StubKeys
from tests.support.fake_anthropic import BAD_KEY, REPLY, THINKING, TOOL_PREFACE
from tests.support.fake_anthropic import create_app as create_fake_anthropic
from tests.support.inloop import serve

SONNET = "claude-sonnet-4-5-20250929"
MODEL = f"anthropic/{SONNET}"
AUTH = {"Helicone-Auth": "Bearer good-key"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@contextlib.asynccontextmanager
async def claude_gateway(tmp_path, **settings):
    """(OpenAI SDK client at <gateway>/ai, the strict fake Anthropic, built events, gateway URL). OpenAI's base URL is
    the fake too: a request the gateway does not translate never leaves loopback."""
    fake = create_fake_anthropic()
    async with serve(fake) as upstream_url:
        config = GatewaySettings(data_dir=tmp_path, _env_file=None, anthropic_url=upstream_url, openai_url=upstream_url,
                                 kafka_bootstrap="127.0.0.1:1", port=0, **settings)
        app = create_app(config)
        gw = app.state.gateway
        gw.keys = StubKeys()
        built: list = []
        async with running(server=HttpServer.for_settings(app, config)) as server:
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            url = f"http://127.0.0.1:{server.bound[1]}"
            client = openai.AsyncOpenAI(base_url=url + "/ai", api_key="sk-ant-caller", organization="org-openai",
                                        max_retries=0, default_headers=AUTH)
            async with client:
                yield client, fake, built, url


@pytest.fixture
async def claude(tmp_path):
    async with claude_gateway(tmp_path) as stack:
        yield stack


def words(text: str) -> int:
    return len(text.split())


async def test_a_chat_completion_reaches_claude_as_a_valid_messages_request_and_answers_as_openai(claude):
    client, fake, built, _ = claude
    resp = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
            {"role": "user", "content": "And today?", "name": "ann"},
        ],
        temperature=1.5, top_p=0.9, stop=["strict", "  "], user="user-42", seed=7, presence_penalty=0.5, logprobs=True,
        extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
    )
    [received] = fake.state.received
    assert received["path"] == "/v1/messages"
    headers = received["headers"]
    assert headers["x-api-key"] == "sk-ant-caller" and "authorization" not in headers  # the key once, as Anthropic takes it
    assert (headers["anthropic-version"], headers["anthropic-beta"]) == ("2023-06-01", "prompt-caching-2024-07-31")
    assert "openai-organization" not in headers and "helicone-auth" not in headers
    assert received["body"] == {
        "model": SONNET,
        "system": "You are terse.\nAnswer in English.",  # hoisted from anywhere, joined by a newline
        "messages": [
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "How are you?"}, {"type": "text", "text": "And today?"}]},
        ],
        "max_tokens": 4096, "temperature": 1, "top_p": 0.9, "stop_sequences": ["strict"], "metadata": {"user_id": "user-42"},
    }
    assert resp.object == "chat.completion" and resp.id.startswith("msg_") and resp.model == SONNET
    [choice] = resp.choices
    assert (choice.index, choice.message.role, choice.message.content) == (0, "assistant", "Hello from the ")
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None  # stop_sequence is OpenAI's "stop"
    prompt = words("You are terse. Answer in English. Hi there Hello! How are you? And today?")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (prompt, 3, prompt + 3)
    [ev] = await logged(built)
    assert (ev.status, ev.provider, ev.model, ev.path, ev.user_id) == (200, "anthropic", SONNET, "/v1/messages", "user-42")


async def test_max_tokens_the_length_finish_and_a_personal_user(claude):
    """max_completion_tokens (else max_tokens) is Claude's max_tokens, its end "length"; a `user` that is an e-mail
    address (Anthropic refuses one in metadata.user_id) is not sent, yet logged as the user."""
    client, fake, built, _ = claude
    resp = await client.chat.completions.create(model=f"{SONNET}/anthropic", max_completion_tokens=2, max_tokens=9,
                                                messages=[{"role": "user", "content": "Say hello"}], user="ann@example.com")
    sent = fake.state.received[-1]["body"]
    assert (sent["max_tokens"], sent["model"], "metadata" in sent) == (2, SONNET, False)
    assert (resp.choices[0].message.content, resp.choices[0].finish_reason) == ("Hello from", "length")
    resp = await client.chat.completions.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}],
                                                user="1234567890")
    sent = fake.state.received[-1]["body"]
    assert (sent["max_tokens"], sent["metadata"], resp.choices[0].finish_reason) == (3, {"user_id": "1234567890"}, "length")
    assert [e.user_id for e in await logged(built, 2)] == ["ann@example.com", "1234567890"]


async def test_images_go_to_claude_as_base64_and_url_sources(claude):
    client, fake, _, _ = claude
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}])
    assert resp.choices[0].message.content == REPLY
    assert fake.state.received[-1]["body"]["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            {"type": "text", "text": "And this?"}, {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}]}])
    assert refused.value.status_code == 400 and refused.value.param == "messages[0].content[1].image_url.url"
    assert "image/svg+xml" in refused.value.message and len(fake.state.received) == 1  # never sent


async def test_tool_calls_round_trip(claude):
    client, fake, _, _ = claude
    question = {"role": "user", "content": "Weather in Paris and Lyon?"}
    forced = await client.chat.completions.create(
        model=MODEL, messages=[question], tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        extra_headers={"x-fake-tool-input": '{"city": "Paris", "unit": "celsius"}', "x-fake-parallel": "2"})
    sent = fake.state.received[-1]["body"]
    assert sent["tools"] == [{"name": "get_weather", "description": "The weather in a city",
                              "input_schema": WEATHER["function"]["parameters"]}]
    assert sent["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    [choice] = forced.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("toolu_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}

    parallel = await client.chat.completions.create(
        model=MODEL, messages=[question], tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        extra_headers={"x-fake-parallel": "2"})
    assert fake.state.received[-1]["body"]["tool_choice"] == {"type": "tool", "name": "get_weather"}
    calls = parallel.choices[0].message.tool_calls
    assert len(calls) == 2 and len({c.id for c in calls}) == 2

    auto = await client.chat.completions.create(model=MODEL, messages=[question], tools=[WEATHER],
                                                extra_headers={"x-fake-parallel": "2"})
    message = auto.choices[0].message
    assert message.content == TOOL_PREFACE and len(message.tool_calls) == 2
    # the answer goes back as OpenAI sends it: the assistant's tool calls, one tool message per call, then a new question
    follow = await client.chat.completions.create(model=MODEL, tools=[WEATHER], messages=[
        question,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": message.tool_calls[1].id, "content": [{"type": "text", "text": "12 C, rain"}]},
        {"role": "user", "content": "Which is warmer?"},
    ])
    assert follow.choices[0].message.content == REPLY and follow.choices[0].finish_reason == "stop"
    ids = [c.id for c in message.tool_calls]
    assert fake.state.received[-1]["body"]["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": TOOL_PREFACE},
            *({"type": "tool_use", "id": i, "name": "get_weather", "input": {"city": "Paris"}} for i in ids)]},
        {"role": "user", "content": [  # the tool results first, in one user turn with the question
            {"type": "tool_result", "tool_use_id": ids[0], "content": "18 C, sunny"},
            {"type": "tool_result", "tool_use_id": ids[1], "content": [{"type": "text", "text": "12 C, rain"}]},
            {"type": "text", "text": "Which is warmer?"}]},
    ]


async def test_a_stream_is_translated_event_by_event_with_its_usage_last(claude):
    """Each Anthropic event goes on as its chunk as it comes: the fake holds its stream after the first word until the
    test has read that word through the SDK (a gateway that read the whole answer first would never hand it over)."""
    client, fake, built, url = claude
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "one two three"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"x-fake-hold": "1"})
    chunks = aiter(stream)
    first = await asyncio.wait_for(anext(chunks), 5)
    second = await asyncio.wait_for(anext(chunks), 5)
    assert (first.choices[0].delta.role, second.choices[0].delta.content) == ("assistant", "Hello")
    fake.state.hold.set()
    rest = [c async for c in chunks]
    everything = [first, second, *rest]
    assert {c.object for c in everything} == {"chat.completion.chunk"} and {c.model for c in everything} == {SONNET}
    assert len({c.id for c in everything}) == 1 and first.id.startswith("msg_")
    text = "".join(c.choices[0].delta.content or "" for c in everything if c.choices)
    assert text == REPLY
    finishes = [c.choices[0].finish_reason for c in everything if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = rest[-1]
    assert usage.choices == [] and (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (3, words(REPLY))
    # the wire: OpenAI's SSE, no Anthropic event names, ended by [DONE]; without include_usage no usage chunk
    async with httpx.AsyncClient() as http:
        raw = await http.post(url + "/ai/chat/completions", headers={**AUTH, "Authorization": "Bearer sk-ant-caller"},
                              json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream") and "content-length" not in raw.headers
    assert raw.text.endswith("data: [DONE]\n\n") and "event:" not in raw.text and '"usage"' not in raw.text
    stream_ev, _ = await logged(built, 2)
    assert stream_ev.streamed and (stream_ev.usage.prompt_tokens, stream_ev.usage.completion_tokens) == (3, words(REPLY))


async def test_streamed_tool_calls_carry_their_arguments_as_deltas(claude):
    client, fake, _, _ = claude
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER], stream=True,
        extra_headers={"x-fake-parallel": "2", "x-fake-tool-input": '{"city": "Paris", "days": [1, 2]}'})
    calls: dict[int, dict] = {}
    text, finish = "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for call in delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            if call.id:
                entry["id"], entry["name"] = call.id, call.function.name
            entry["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == TOOL_PREFACE and finish == "tool_calls" and sorted(calls) == [0, 1]
    for entry in calls.values():
        assert entry["id"].startswith("toolu_") and entry["name"] == "get_weather"
        assert json.loads(entry["arguments"]) == {"city": "Paris", "days": [1, 2]}
    # a call without input still has JSON arguments
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                                  tools=[WEATHER], stream=True, extra_headers={"x-fake-tool-input": "{}"})
    arguments = "".join([c.function.arguments or "" async for chunk in stream for c in (chunk.choices[0].delta.tool_calls or [])])
    assert arguments == "{}"


async def test_errors_keep_their_status_in_openai_shape(claude):
    client, fake, built, _ = claude
    messages = [{"role": "user", "content": "Hi"}]
    bad = openai.AsyncOpenAI(base_url=str(client.base_url), api_key=BAD_KEY, max_retries=0, default_headers=AUTH)
    async with bad:
        with pytest.raises(openai.AuthenticationError) as denied:
            await bad.chat.completions.create(model=MODEL, messages=messages)
    assert denied.value.status_code == 401 and denied.value.body["message"] == "invalid x-api-key"
    assert denied.value.body["type"] == "authentication_error"
    with pytest.raises(openai.InternalServerError) as overloaded:
        await client.chat.completions.create(model=MODEL, messages=messages, extra_headers={"x-fake-status": "529"})
    assert overloaded.value.status_code == 529 and overloaded.value.body["type"] == "overloaded_error"
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model=MODEL, messages=messages, extra_headers={"x-fake-status": "429"})
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="anthropic/claude-unknown", messages=messages)
    assert unknown.value.message.endswith("model: claude-unknown")
    sent = len(fake.state.received)
    for kwargs, param in (({"n": 2}, "n"), ({"model": SONNET}, "model"), ({"functions": [WEATHER["function"]]}, "functions"),
                          ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
                          ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format")):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(**{"model": MODEL, "messages": messages, **kwargs})
        assert refused.value.param == param, kwargs
    assert len(fake.state.received) == sent  # refused by the gateway, never sent
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                  extra_headers={"x-fake-stream-error": "1"})
    with pytest.raises(openai.APIError) as broke:
        async for _ in stream:
            pass
    assert broke.value.message == "Overloaded"
    events = await logged(built, 10)
    assert [e.status for e in events[:4]] == [401, 529, 429, 404] and {e.provider for e in events} == {"anthropic"}


async def test_usage_and_cost_are_anthropics_own_counts_with_the_cache(claude):
    """The caller's prompt_tokens count every input token (cache reads and writes too), cached_tokens the reads; the
    log reads Anthropic's own answer (the bodies Anthropic got and gave) and prices it at Claude Sonnet 4.5's prices,
    cache writes and reads apart ($3 in, $15 out, $3.75 cache write, $0.30 cache read per 1M)."""
    client, fake, built, _ = claude
    cache = json.dumps({"cache_read_input_tokens": 1000, "cache_creation_input_tokens": 2000})
    messages = [{"role": "user", "content": "one two three four"}]
    resp = await client.chat.completions.create(model=MODEL, messages=messages, extra_headers={"x-fake-usage": cache})
    assert (resp.usage.prompt_tokens, resp.usage.prompt_tokens_details.cached_tokens) == (3004, 1000)
    assert resp.usage.completion_tokens == words(REPLY) and resp.usage.total_tokens == 3004 + words(REPLY)
    stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                  stream_options={"include_usage": True}, extra_headers={"x-fake-usage": cache})
    last = [c async for c in stream][-1]
    assert (last.usage.prompt_tokens, last.usage.prompt_tokens_details.cached_tokens) == (3004, 1000)
    price = (4 * 3.0 + 2000 * 3.75 + 1000 * 0.30 + words(REPLY) * 15.0) / 1e6
    for ev, received in zip(await logged(built, 2), fake.state.received, strict=True):
        assert (ev.provider, ev.model, ev.path) == ("anthropic", SONNET, "/v1/messages")
        assert (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (3004, words(REPLY))
        assert (ev.usage.cache_read_tokens, ev.usage.cache_write_tokens) == (1000, 2000)
        assert ev.cost_known and ev.cost_usd == pytest.approx(price)
        assert json.loads(ev.inline.request_body) == received["body"]  # what Anthropic got
    plain, streamed = built[:2]
    assert json.loads(plain.inline.response_body)["type"] == "message"  # what Anthropic answered
    assert streamed.streamed and b"event: message_start" in streamed.inline.response_body


async def test_response_format_json_schema_is_answered_as_json_content(claude):
    client, fake, _, _ = claude
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    form = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where?"}],
                                                response_format=form, extra_headers={"x-fake-tool-input": '{"city": "Oslo"}'})
    sent = fake.state.received[-1]["body"]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_tool_call"} and sent["tools"][0]["input_schema"] == schema
    assert json.loads(resp.choices[0].message.content) == {"city": "Oslo"}
    assert resp.choices[0].finish_reason == "stop" and resp.choices[0].message.tool_calls is None
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Where?"}],
                                                  response_format=form, stream=True,
                                                  extra_headers={"x-fake-tool-input": '{"city": "Oslo"}'})
    chunks = [c async for c in stream]
    assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks)) == {"city": "Oslo"}
    assert not any(c.choices[0].delta.tool_calls for c in chunks)


async def test_reasoning_effort_becomes_extended_thinking(claude):
    """low/medium/high: a thinking budget (max_tokens grows by it), the thinking answered as reasoning_content; the
    answer to tool results goes without thinking (Anthropic wants the tool-using turn's signed thinking back, which
    OpenAI's messages cannot carry)."""
    client, fake, _, _ = claude
    resp = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Think"}],
                                                reasoning_effort="low")
    sent = fake.state.received[-1]["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024} and sent["max_tokens"] == 4096 + 1024
    assert resp.choices[0].message.content == REPLY and resp.choices[0].message.reasoning_content == THINKING
    stream = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Think"}],
                                                  reasoning_effort="high", max_completion_tokens=5000, stream=True)
    chunks = [c async for c in stream]
    assert fake.state.received[-1]["body"]["thinking"]["budget_tokens"] == 4096
    assert "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices) == THINKING
    question = {"role": "user", "content": "Weather in Paris?"}
    asked = await client.chat.completions.create(model=MODEL, messages=[question], tools=[WEATHER], reasoning_effort="medium")
    assert fake.state.received[-1]["body"]["thinking"]["budget_tokens"] == 2048
    message = asked.choices[0].message
    assert message.reasoning_content == THINKING and message.tool_calls
    follow = await client.chat.completions.create(model=MODEL, tools=[WEATHER], reasoning_effort="medium", messages=[
        question, message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "18 C"}])
    assert follow.choices[0].message.content == REPLY and "thinking" not in fake.state.received[-1]["body"]


async def test_only_chat_completions_under_ai_are_translated(claude):
    """/ai/chat/completions only, by POST, without the features that cannot apply; Anthropic's own API at /anthropic
    goes as sent."""
    _, fake, _, url = claude
    key = {**AUTH, "Authorization": "Bearer sk-ant-caller"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/ai/v1/chat/completions", headers=key, json=body)).json()["object"] == "chat.completion"
        own = {**AUTH, "x-api-key": "sk-ant-own", "Authorization": "Bearer proxy-token"}  # a key of its own: both as sent
        assert (await http.post("/ai/chat/completions", headers=own, json=body)).status_code == 200
        sent = fake.state.received[-1]["headers"]
        assert (sent["x-api-key"], sent["authorization"]) == ("sk-ant-own", "Bearer proxy-token")
        for other in ("/ai/embeddings", "/ai/v1/messages"):
            refused = await http.post(other, headers=key, json=body)
            assert refused.status_code == 404 and "/ai/chat/completions" in refused.json()["error"]["message"], other
        got = await http.get("/ai/chat/completions", headers=key)
        assert got.status_code == 405 and got.headers["allow"] == "POST"
        fallbacks = await http.post("/ai/chat/completions", json=body,
                                    headers={**key, "Helicone-Fallbacks": json.dumps([{"onCodes": [429]}, {}])})
        assert fallbacks.status_code == 400 and "Helicone-Fallbacks" in fallbacks.json()["error"]["message"]
        native = await http.post("/anthropic/v1/messages", json={"model": SONNET, "max_tokens": 10, "messages": body["messages"]},
                                 headers={**AUTH, "x-api-key": "sk-ant-caller", "anthropic-version": "2023-06-01"})
        assert native.json()["type"] == "message"
    with pytest.raises(websockets.InvalidStatus) as upgrade:
        async with asyncio.timeout(5), websockets.connect(url.replace("http", "ws", 1) + "/ai/chat/completions",
                                                          additional_headers=key):
            pass
    assert upgrade.value.response.status_code == 405
    assert [r["path"] for r in fake.state.received] == ["/v1/messages"] * 3


async def test_a_cached_answer_is_replayed_translated(claude):
    """The cache keeps Anthropic's answer as it came; a hit is translated as the live answer was. Its key is the body
    the caller sent: Helicone-Cache-Ignore-Keys names OpenAI's fields (`user`, which Anthropic gets as metadata)."""
    client, fake, built, _ = claude
    cache = {"Helicone-Cache-Enabled": "true", "Helicone-Cache-Ignore-Keys": "user"}
    messages = [{"role": "user", "content": "cache me"}]
    first = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, extra_headers=cache,
                                                                   user="u-1")
    second = await client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, extra_headers=cache,
                                                                    user="u-2")
    assert (first.headers["helicone-cache"], second.headers["helicone-cache"]) == ("MISS", "HIT")
    a, b = first.parse(), second.parse()
    assert a.choices[0].message.content == b.choices[0].message.content == REPLY and a.id == b.id
    stream_args = {"model": MODEL, "messages": messages, "stream": True, "extra_headers": cache}
    live = [c async for c in await client.chat.completions.create(**stream_args)]
    replay = [c async for c in await client.chat.completions.create(**stream_args)]
    assert "".join(c.choices[0].delta.content or "" for c in replay) == REPLY and len(replay) == len(live)
    assert len(fake.state.received) == 2
    hits = [e for e in await logged(built, 4) if e.cache_hit]
    assert len(hits) == 2 and all(e.usage.prompt_tokens == 2 and e.model == SONNET for e in hits)


@pytest.mark.parametrize("depth", [990, 5000])
async def test_tool_call_arguments_nested_too_deep_are_a_400_never_a_500(claude, depth):
    """arguments is a string the gateway parses: JSON nested deeper than it can read or write back is the caller's error."""
    _, fake, _, url = claude
    nested = '{"a":' * depth + "1" + "}" * depth
    body = {"model": MODEL, "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": nested}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}
    async with httpx.AsyncClient() as http:
        r = await http.post(url + "/ai/chat/completions", json=body, headers={**AUTH, "x-api-key": "sk-ant-caller"})
    assert r.status_code == 400, r.text
    assert "arguments" in r.json()["error"]["message"]
    assert fake.state.received == []  # nothing sent


def test_arguments_nested_as_deep_as_json_is_read_or_written_are_a_translation_error():
    """Around the depth where parsing the arguments, or writing them into the Messages request, runs out of stack."""
    from helicone_gateway.translate_anthropic import TranslationError, translate_request

    for depth in range(960, 1010, 2):
        nested = '{"a":' * depth + "1" + "}" * depth
        body = json.dumps({"model": MODEL, "messages": [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": nested}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x"}]}).encode()
        try:
            translate_request(body)
        except TranslationError:
            pass


def test_a_long_stream_line_arriving_in_small_chunks_is_read_in_linear_time():
    """A 24 MB line (under the limit) in 16 KB reads: translated without holding the event loop for seconds (each read
    copied the whole line so far: quadratic)."""
    import time

    from helicone_gateway.translate_anthropic import StreamAnswer, translate_request

    _, chat, _ = translate_request(json.dumps({"model": MODEL, "stream": True, "messages": [
        {"role": "user", "content": "hi"}]}).encode())
    answer = StreamAnswer(chat, "")
    text = "y" * (24 * 1024 * 1024)
    line = b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + text.encode() + b'"}}\n'
    t0 = time.perf_counter()
    out = b"".join(answer.feed(line[i:i + 16384]) for i in range(0, len(line), 16384)) + answer.end()
    assert time.perf_counter() - t0 < 2
    assert json.loads(out[len(b"data: "):])["choices"][0]["delta"]["content"] == text
