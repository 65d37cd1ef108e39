"""Helicone-Token-Limit-Exception-Handler through the real gateway app, against the fake provider's chat and messages
endpoints, which refuse a request too long for `x-fake-context-window` as OpenAI and Anthropic word their refusals
(tests/support/fake_upstream.py: a word is a token)."""

import asyncio
import contextlib
import json

import pytest
import websockets
from helicone_core.cost import CostRegistry

from services.gateway.tests.test_proxy import StubKeys, host_port
from services.gateway.tests.test_proxy import target_sockets as _loopback_only  # noqa: F401 (autouse: loopback only)
from services.gateway.tests.test_realtime import connect, stack
from tests.support.fake_classifier import MODEL as GUARD
from tests.support.fake_classifier import create_app as create_fake_classifier
from tests.support.fake_upstream import REPLY
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.gateway import in_process_gateway
from tests.support.inloop import serve

HEADER = "Helicone-Token-Limit-Exception-Handler"
APPLIED = "helicone-token-limit-exception-handler"
AUTH = {"Helicone-Auth": "Bearer good-key", "Authorization": "Bearer sk-caller"}
WINDOW = 100  # the fake provider's context window (x-fake-context-window), in its tokens (words)
LIMITED = {**AUTH, "x-fake-context-window": str(WINDOW)}


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i:03d}" for i in range(n))


def count(text: str) -> int:
    return len(text.split())


def sample(gw, **labels) -> float:
    return gw.metrics.registry.get_sample_value("helicone_gateway_token_limit_refusals_total", labels) or 0.0


@contextlib.asynccontextmanager
async def limited_gateway(tmp_path, **settings):
    """(client, gateway, built events, fake provider): the fake is the deployment's OpenAI and Anthropic URL."""
    fake = create_fake_upstream()
    async with (
        serve(fake) as url,
        in_process_gateway(tmp_path, StubKeys(), openai_url=url, anthropic_url=url, **settings) as (client, gw, built),
    ):
        yield client, gw, built, fake


@pytest.fixture
async def gateway(tmp_path):
    async with limited_gateway(tmp_path) as parts:
        yield parts


def sent(fake) -> list[dict]:
    return [r["body"] for r in fake.state.received]


async def test_truncate_sends_a_request_that_fits_as_it_is_and_cuts_one_the_provider_refuses_to_fit(gateway):
    client, gw, built, fake = gateway
    fits = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words(60)}]}
    r = await client.post("/v1/chat/completions", json=fits, headers={**LIMITED, HEADER: "truncate"})
    assert r.status_code == 200, r.text
    assert sent(fake) == [fits]  # one try, unchanged
    assert APPLIED not in built[0].properties
    fake.state.received.clear()

    long = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "Answer briefly."},
                                                 {"role": "user", "content": words(300)}]}
    r = await client.post("/v1/chat/completions", json=long, headers={**LIMITED, HEADER: "TRUNCATE"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == REPLY
    first, cut = sent(fake)
    assert first == long  # sent as it is: only the provider's refusal gets it cut
    system, user = cut["messages"]
    assert system == long["messages"][0]  # the short text is kept whole: the longest are cut first
    assert long["messages"][1]["content"].startswith(user["content"])  # truncate keeps the start
    sent_tokens = count(system["content"]) + count(user["content"])
    assert 0.8 * WINDOW <= sent_tokens <= WINDOW  # fits, without giving up much more than it had to
    ev = built[1]
    assert ev.status == 200 and json.loads(ev.inline.request_body) == cut  # logged as sent
    assert ev.properties[APPLIED] == "truncate"
    assert not any(name.startswith("helicone-") for name in fake.state.received[1]["headers"])
    assert sample(gw, handler="truncate", result="resent") == 1.0

    # without the header, the provider's refusal is the answer, as before
    fake.state.received.clear()
    r = await client.post("/v1/chat/completions", json=long, headers=LIMITED)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert sent(fake) == [long] and APPLIED not in built[2].properties


async def test_middle_out_keeps_the_start_and_end_of_the_long_texts_and_never_touches_tool_calls(gateway):
    client, _gw, built, fake = gateway
    call = {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.txt"}'}}
    document = "START " + words(300) + " END"
    chat = {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "You summarise files."},
        {"role": "user", "content": [{"type": "text", "text": "Summarise a.txt"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": document},
        {"role": "user", "content": "In one line, please."},
    ]}
    r = await client.post("/v1/chat/completions", json=chat, headers={**LIMITED, HEADER: "middle-out"})
    assert r.status_code == 200, r.text
    _, cut = sent(fake)
    messages = cut["messages"]
    assert len(messages) == 5 and [m["role"] for m in messages] == [m["role"] for m in chat["messages"]]
    for i in (0, 1, 2, 4):
        assert messages[i] == chat["messages"][i]  # short texts whole, the tool call and its arguments untouched
    tool = messages[3]["content"]
    assert tool.startswith("START w000") and tool.endswith("w299 END") and " … " in tool
    head, tail = tool.split(" … ")
    assert document.startswith(head) and document.endswith(tail)
    assert count(" ".join(str(m["content"]) for m in messages if isinstance(m["content"], str))) + 2 <= WINDOW
    assert built[0].properties[APPLIED] == "middle-out"


async def test_fallback_sends_the_first_model_and_the_next_one_only_when_the_provider_refuses_it(gateway):
    client, gw, built, fake = gateway
    windows = {**AUTH, "x-fake-context-window": json.dumps({"gpt-4o-mini": 50, "gpt-4.1": 10_000})}
    short = {"model": "gpt-4o-mini, gpt-4.1", "messages": [{"role": "user", "content": words(10)}]}
    r = await client.post("/v1/chat/completions", json=short, headers={**windows, HEADER: "fallback"})
    assert r.status_code == 200, r.text
    assert [b["model"] for b in sent(fake)] == ["gpt-4o-mini"]  # the provider takes one model: the first
    assert APPLIED not in built[0].properties
    fake.state.received.clear()

    long = {"model": "gpt-4o-mini,gpt-4.1", "messages": [{"role": "user", "content": words(200)}], "stream": True}
    r = await client.post("/v1/chat/completions", json=long, headers={**windows, HEADER: "fallback"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    assert r.text.endswith("data: [DONE]\n\n")
    assert [b["model"] for b in sent(fake)] == ["gpt-4o-mini", "gpt-4.1"]
    assert sent(fake)[1]["messages"] == long["messages"]  # the prompt is not cut: another model takes it whole
    ev = built[1]
    assert ev.status == 200 and ev.properties[APPLIED] == "fallback:gpt-4.1" and ev.model == "gpt-4.1"
    assert json.loads(ev.inline.request_body)["model"] == "gpt-4.1"
    assert sample(gw, handler="fallback", result="resent") == 1.0


async def test_fallback_tries_each_model_listed_once_even_when_the_body_lists_one_twice(gateway):
    """A model listed twice is tried once: the provider refusing every model ends the request with its refusal, after
    one try a model (it went on sending to the models in a loop, for as long as the caller waited)."""
    client, gw, built, fake = gateway
    windows = {**AUTH, "x-fake-context-window": json.dumps({"gpt-4o-mini": 50, "gpt-4.1": 60})}
    long = {"model": "gpt-4o-mini, gpt-4.1, gpt-4o-mini", "messages": [{"role": "user", "content": words(200)}]}
    r = await asyncio.wait_for(client.post("/v1/chat/completions", json=long, headers={**windows, HEADER: "fallback"}), 5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert [b["model"] for b in sent(fake)] == ["gpt-4o-mini", "gpt-4.1"]
    assert built[0].status == 400 and sample(gw, handler="fallback", result="gave_up") == 1.0
    r = await client.post("/v1/chat/completions", json=dict(long, model="gpt-4o-mini, gpt-4o-mini"),
                          headers={**windows, HEADER: "fallback"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(HEADER), r.text  # one model alone
    assert len(fake.state.received) == 2


async def test_anthropic_messages_are_cut_to_fit_with_the_completion_tokens_they_ask_for(gateway):
    client, _gw, built, fake = gateway
    body = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 40,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": words(90)},
                                                      {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}]},
                         {"role": "assistant", "content": "Go on."},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": words(90, "r")}]}]}
    headers = {**LIMITED, HEADER: "truncate", "anthropic-version": "2023-06-01"}
    r = await client.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == REPLY
    first, cut = sent(fake)
    assert first == body
    assert cut["system"] == body["system"] and cut["max_tokens"] == 40
    text = cut["messages"][0]["content"][0]["text"]
    result = cut["messages"][2]["content"][0]["content"]
    assert cut["messages"][0]["content"][1] == body["messages"][0]["content"][1]  # the image goes as it was
    assert cut["messages"][1] == body["messages"][1]
    prompt = count(text) + count("Go on.")  # as the fake counts: message texts (a tool result's are not)
    assert prompt + 40 <= WINDOW and words(90).startswith(text) and words(90, "r").startswith(result)
    assert count(result) < 90  # both long texts are cut alike
    assert built[0].properties[APPLIED] == "truncate"


async def test_a_refusal_that_counts_nothing_is_cut_by_one_token_a_byte_to_the_registrys_window(tmp_path):
    """A refusal that states neither the tokens nor the limit: the cut assumes a token per UTF-8 byte (an upper bound)
    against the model's window in the cost registry (here one the operator gave in HELICONE_COST_REGISTRY_FILE)."""
    registry = tmp_path / "costs.json"
    registry.write_text(json.dumps({"openai": {"gpt-4o-mini": {"input": 0.15, "output": 0.6, "context_window": WINDOW}}}))
    async with limited_gateway(tmp_path, cost_registry_file=registry) as (client, _gw, built, fake):
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words(400)}]}
        r = await client.post("/v1/chat/completions", json=chat,
                              headers={**LIMITED, HEADER: "truncate", "x-fake-refusal-counts": "0"})
    assert r.status_code == 200, r.text
    _, cut = sent(fake)
    assert 0 < count(cut["messages"][0]["content"]) <= WINDOW
    assert built[0].properties[APPLIED] == "truncate"


async def test_a_request_that_cannot_be_cut_to_fit_gets_the_providers_refusal_as_it_came(gateway):
    client, gw, built, fake = gateway
    chat = {"model": "gpt-4o-mini", "max_tokens": WINDOW + 1, "messages": [{"role": "user", "content": words(20)}]}
    r = await client.post("/v1/chat/completions", json=chat, headers={**LIMITED, HEADER: "truncate"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "101 in the completion" in r.json()["error"]["message"]  # the provider's own words, relayed whole
    assert sent(fake) == [chat]
    assert built[0].status == 400 and APPLIED not in built[0].properties
    assert sample(gw, handler="truncate", result="gave_up") == 1.0


@pytest.mark.parametrize(
    "path, body, value, words_in_message",
    [
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": []}, "cut", "must be one of truncate, middle-out, fallback"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, "truncate", "POST /v1/embeddings is neither"),
        ("/v1/chat/completions", {"model": "my-model", "messages": [{"role": "user", "content": "x"}]}, "middle-out",
         "no context window is known for model 'my-model'"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "truncate", "needs the model"),
        ("/v1/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, "fallback",
         'fallback takes the models to try in the body\'s "model"'),
        ("/v1/chat/completions", {"model": "gpt-4o", "prompt": "x"}, "truncate", "not a chat request with messages"),
    ],
)
async def test_a_bad_value_or_a_request_it_cannot_apply_to_is_a_400_naming_the_header_never_sent(
        gateway, path, body, value, words_in_message):
    client, _gw, _built, fake = gateway
    r = await client.post(path, json=body, headers={**LIMITED, HEADER: value})
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(HEADER) and words_in_message in message, message
    assert fake.state.received == []


async def test_the_cache_keys_on_the_request_with_its_strategy_never_serving_a_cut_answer_without_it(tmp_path):
    async with limited_gateway(tmp_path) as (client, gw, built, fake):
        long = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words(300)}]}
        cached = {**LIMITED, "Helicone-Cache-Enabled": "true"}

        async def post(headers):
            r = await client.post("/v1/chat/completions", json=long, headers=headers)
            await gw.cache.flush()  # the save runs after the answer, off the request's task
            return r

        miss = await post({**cached, HEADER: "truncate"})
        hit = await post({**cached, HEADER: "truncate"})
        calls = len(fake.state.received)
        other = await post({**cached, HEADER: "middle-out"})
        without = await post(cached)
    assert (miss.status_code, miss.headers["helicone-cache"]) == (200, "MISS")
    assert (hit.status_code, hit.headers["helicone-cache"]) == (200, "HIT") and hit.content == miss.content
    assert calls == 2  # the refusal and the cut body; the hit asked nothing (no refused first try)
    assert (other.status_code, other.headers["helicone-cache"]) == (200, "MISS")  # another strategy: its own entry
    assert without.status_code == 400 and without.json()["error"]["code"] == "context_length_exceeded"
    assert [ev.cache_hit for ev in built] == [False, True, False, False]


async def test_streaming_requests_are_cut_before_anything_is_streamed(gateway):
    client, _gw, built, fake = gateway
    chat = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": words(300)}]}
    r = await client.post("/v1/chat/completions", json=chat, headers={**LIMITED, HEADER: "truncate",
                                                                          "Helicone-Stream-Usage": "true"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    assert r.text.endswith("data: [DONE]\n\n")
    first, cut = sent(fake)
    assert first["stream_options"] == cut["stream_options"] == {"include_usage": True}
    assert count(cut["messages"][0]["content"]) <= WINDOW
    ev = built[0]
    assert ev.streamed and ev.usage.known and ev.usage.prompt_tokens == count(cut["messages"][0]["content"])


async def test_with_fallbacks_each_target_is_fitted_and_the_refused_try_is_logged(tmp_path):
    backup = create_fake_upstream()
    async with serve(backup) as backup_url:
        async with limited_gateway(tmp_path, target_url_allowlist=[host_port(backup_url)]) as (client, _gw, built, fake):
            fallbacks = json.dumps([{"onCodes": [{"from": 500, "to": 599}]},
                                    {"target-url": backup_url, "bodyKeyOverride": {"model": "gpt-4.1"}}])
            fake.state.fail_next.append(503)  # the first target fails: the backup is refused for length, then cut
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words(300)}]}
            r = await client.post("/v1/chat/completions", json=chat,
                                  headers={**LIMITED, HEADER: "truncate", "Helicone-Fallbacks": fallbacks})
            unknown = await client.post("/v1/chat/completions", json=chat, headers={
                **LIMITED, HEADER: "truncate",
                "Helicone-Fallbacks": json.dumps([{"onCodes": [503]}, {"bodyKeyOverride": {"model": "my-model"}}])})
    assert r.status_code == 200 and r.headers["helicone-fallback-index"] == "1", r.text
    assert len(fake.state.received) == 1
    refused, cut = sent(backup)
    assert refused["model"] == cut["model"] == "gpt-4.1" and count(cut["messages"][0]["content"]) <= WINDOW
    ev = built[0]
    assert [(a.status, a.fallback_index) for a in ev.attempts] == [(503, 0), (400, 1), (200, 1)]
    assert "refused for its length" in ev.attempts[1].error
    assert json.loads(ev.inline.request_body) == cut and ev.properties[APPLIED] == "truncate"
    # every target's model needs a known window, checked before anything is sent
    assert unknown.status_code == 400 and "Helicone-Fallbacks[1]" in unknown.json()["error"]["message"]
    assert len(fake.state.received) == 1 and len(backup.state.received) == 2


async def test_a_cut_body_is_moderated_before_it_is_sent(gateway):
    client, _gw, built, fake = gateway
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words(300)}]}
    r = await client.post("/v1/chat/completions", json=chat,
                          headers={**LIMITED, HEADER: "middle-out", "Helicone-Moderations-Enabled": "true"})
    assert r.status_code == 200, r.text
    paths = [x["path"] for x in fake.state.received]
    assert paths == ["/v1/moderations", "/v1/chat/completions", "/v1/moderations", "/v1/chat/completions"]
    moderated, cut = fake.state.received[2]["body"], fake.state.received[3]["body"]
    assert moderated == {"input": cut["messages"][0]["content"]} and " … " in moderated["input"]
    assert built[0].properties[APPLIED] == "middle-out"


async def test_a_cut_body_is_checked_by_the_classifier_before_it_is_sent(tmp_path):
    """middle-out joins a long text's start and end, a text never classified: a cut is classified again before it is
    sent, as the request was (Helicone-LLM-Security-Enabled)."""
    classifier = create_fake_classifier()
    async with serve(classifier) as guard, limited_gateway(tmp_path, llm_security_url=guard + "/v1",
                                                           llm_security_model=GUARD) as (client, _gw, built, fake):
        chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": words(300)}]}
        headers = {**LIMITED, HEADER: "middle-out", "Helicone-LLM-Security-Enabled": "true"}
        r = await client.post("/v1/chat/completions", json=chat, headers=headers)
        assert r.status_code == 200, r.text
        asked = [x["body"]["messages"][-1]["content"] for x in classifier.state.received]
        cut = fake.state.received[-1]["body"]["messages"][0]["content"]
        assert len(asked) == 2 and " … " in cut and cut in asked[1]  # the request's text, then the cut's


async def test_a_websocket_session_asking_for_it_is_refused_never_opened_without_it(tmp_path):
    async with stack(tmp_path) as (fake, _built, url):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url + "?model=gpt-realtime", headers={HEADER: "truncate"}):
                pass
    response = info.value.response
    assert response.status_code == 400 and json.loads(response.body)["error"]["message"].startswith(HEADER)
    assert not fake.handshakes


def test_the_registry_knows_the_documented_windows_and_guesses_none(tmp_path):
    costs = CostRegistry.default()
    assert costs.context_window("openai", "gpt-4o-2024-08-06") == 128_000
    assert costs.context_window("azure", "gpt-4.1-mini") == 1_047_576  # no section of its own: every section
    assert costs.context_window("openai", "o3-mini") == 200_000
    assert costs.context_window("anthropic", "claude-sonnet-4-5-20250929") == 200_000
    assert costs.context_window("anthropic", "claude-opus-4-6") == 1_000_000
    for provider, model in [("openai", "gpt-4o-transcribe"), ("openai", "gpt-4.5-preview"), ("openai", "ft:gpt-4o:org::1"),
                            ("groq", "llama-3.3-70b-versatile"), ("openai", "my-model")]:
        assert costs.context_window(provider, model) is None, model
    bad = tmp_path / "costs.json"
    bad.write_text(json.dumps({"openai": {"gpt-4o": {"input": 1, "output": 1, "context_window": "128k"}}}))
    with pytest.raises(ValueError, match="gpt-4o: context_window must be a whole number of tokens"):
        CostRegistry.load(bad)


@pytest.mark.parametrize(
    "shape, status, error, expected",
    [  # the providers' own words (OpenAI's, GPT-5's input limit, an OpenAI-compatible server's, Anthropic's two)
        ("chat", 400, {"message": "This model's maximum context length is 128000 tokens. However, your messages resulted "
                                  "in 204308 tokens. Please reduce the length of the messages.",
                       "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"},
         (204308, 128000, False)),
        ("chat", 400, {"message": "This model's maximum context length is 4097 tokens. However, you requested 4120 tokens "
                                  "(3120 in the messages, 1000 in the completion). Please reduce the length of the "
                                  "messages or completion.", "type": "invalid_request_error", "code": "context_length_exceeded"},
         (3120, 4097, False)),
        ("chat", 400, {"message": "Input tokens exceed the configured limit of 272000 tokens. Your messages resulted in "
                                  "289650 tokens. Please reduce the length of the messages.", "type": "invalid_request_error",
                       "code": "context_length_exceeded"},
         (289650, 272000, True)),
        ("chat", 400, {"message": "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
                                  "(8000 in the messages, 1000 in the completion).", "type": "BadRequestError", "code": 400},
         (8000, 8192, False)),
        ("chat", 400, {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
                       "code": "model_not_found"}, None),
        ("chat", 429, {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}, None),
        ("messages", 400, {"type": "invalid_request_error", "message": "prompt is too long: 208656 tokens > 200000 maximum"},
         (208656, 200000, False)),
        ("messages", 400, {"type": "invalid_request_error", "message": "input length and `max_tokens` exceed context limit: "
                                                                        "178959 + 64000 > 200000, decrease input length or "
                                                                        "`max_tokens` and try again"},
         (178959, 200000, False)),
        ("messages", 400, {"type": "invalid_request_error", "message": "messages: roles must alternate"}, None),
    ],
)
def test_the_providers_refusals_for_length_are_read_and_no_other_answer_is(shape, status, error, expected):
    from helicone_gateway.token_limit import read_refusal

    body = json.dumps({"error": error} if shape == "chat" else {"type": "error", "error": error}).encode()
    refusal = read_refusal(shape, status, body)
    assert (None if refusal is None else (refusal.tokens, refusal.limit, refusal.input_only)) == expected
