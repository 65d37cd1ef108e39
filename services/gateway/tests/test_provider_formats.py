"""Every provider of the table through the in-process gateway, against the fake upstream speaking
each usage format: the path it reaches upstream, the key it carries, and the logged provider,
model, tokens and cost (streams included)."""

import pytest
from helicone_core.providers import PROVIDER_TABLE

from services.gateway.tests.test_proxy import ORG, host_port, started_gateway
from tests.support.fake_upstream import WHISPER_SECONDS
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import serve

AUTH = {"Helicone-Auth": "Bearer good-key"}
REPLY_WORDS = 6  # "Hello from the fake upstream model"


def chat(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "one two three four"}], **extra}


def usd(prompt: int, completion: int, price_in: float, price_out: float) -> float:
    return (prompt * price_in + completion * price_out) / 1e6


@pytest.fixture
async def gateway(tmp_path):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url:
        urls = {name: upstream_url for name in PROVIDER_TABLE if name not in ("openai", "anthropic", "azure")}
        async with started_gateway(tmp_path, openai_url=upstream_url, anthropic_url=upstream_url, provider_urls=urls,
                                   target_url_allowlist=[host_port(upstream_url)]) as (client, built):
            yield client, fake, built, upstream_url


# (gateway path, upstream path, body model, logged provider, $ in, $ out per 1M)
OPENAI_FORMAT = [
    ("/groq/openai/v1/chat/completions", "/openai/v1/chat/completions", "llama-3.3-70b-versatile", "groq", 0.59, 0.79),
    ("/together/v1/chat/completions", "/v1/chat/completions", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "together", 0.88, 0.88),
    ("/mistral/v1/chat/completions", "/v1/chat/completions", "mistral-small-latest", "mistral", 0.10, 0.30),
    ("/deepseek/chat/completions", "/chat/completions", "deepseek-chat", "deepseek", 0.28, 0.42),
    ("/xai/v1/chat/completions", "/v1/chat/completions", "grok-4-fast-reasoning", "xai", 0.20, 0.50),
    # OpenRouter has no prices of its own: the vendor's, found through the regex for the dotted version
    ("/openrouter/api/v1/chat/completions", "/api/v1/chat/completions", "anthropic/claude-opus-4.5", "openrouter", 5.0, 25.0),
    ("/fireworks/inference/v1/chat/completions", "/inference/v1/chat/completions",
     "accounts/fireworks/models/llama-v3p3-70b-instruct", "fireworks", 0.90, 0.90),
    ("/gemini/v1beta/openai/chat/completions", "/v1beta/openai/chat/completions", "gemini-2.5-flash", "gemini", 0.30, 2.50),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("path, upstream_path, model, provider, price_in, price_out", OPENAI_FORMAT,
                         ids=[c[3] for c in OPENAI_FORMAT])
async def test_openai_compatible_providers(gateway, stream, path, upstream_path, model, provider, price_in, price_out):
    client, fake, built, upstream_url = gateway
    headers = {**AUTH, "Authorization": "Bearer sk-provider", **({"Helicone-Stream-Usage": "true"} if stream else {})}
    # a provider whose API refuses stream_options (Mistral) gets the body as sent, and streams its usage unasked
    asked = stream and PROVIDER_TABLE[provider].takes_stream_options(upstream_path)
    if stream and not asked:
        headers["x-fake-always-usage"] = "1"
    r = await client.post(path, json=chat(model, stream=stream), headers=headers)
    assert r.status_code == 200
    received = fake.state.received[-1]
    assert ("stream_options" in received["body"]) == asked
    assert received["path"] == upstream_path and received["headers"]["authorization"] == "Bearer sk-provider"
    [ev] = built
    assert (ev.provider, ev.model, ev.path, ev.target_url, ev.streamed) == (provider, model, upstream_path, upstream_url, stream)
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.known) == (4, REPLY_WORDS, True)
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd(4, REPLY_WORDS, price_in, price_out))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_audio_tokens_are_logged_at_the_audio_price_or_as_an_unknown_cost(gateway, stream):
    """OpenAI's audio models report usage.prompt_tokens_details.audio_tokens and completion_tokens_details.audio_tokens,
    priced far above their text tokens (gpt-4o-audio-preview: $40 / $80 per 1M audio tokens, $2.50 / $10 text;
    platform.openai.com/docs/pricing). They were priced at the text rate, gpt-4o's: 16x too little for the audio."""
    client, fake, built, _ = gateway
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two three four"}, audio]}]
    headers = {**AUTH, "Authorization": "Bearer sk-provider", **({"Helicone-Stream-Usage": "true"} if stream else {})}
    for model in ("gpt-4o-audio-preview-2024-12-17", "gpt-4o"):
        r = await client.post("/openai/v1/chat/completions", headers=headers, json={
            "model": model, "messages": messages, "modalities": ["text", "audio"], "stream": stream})
        assert r.status_code == 200
    audio_model, text_model = built
    # the fake upstream: 100 tokens for the audio part, 8 audio tokens per word of the reply besides its text
    assert (audio_model.usage.prompt_tokens, audio_model.usage.completion_tokens) == (104, REPLY_WORDS * 9)
    assert audio_model.cost_known and audio_model.cost_usd == pytest.approx(
        usd(4, REPLY_WORDS, 2.50, 10.0) + usd(100, REPLY_WORDS * 8, 40.0, 80.0))
    # a model without an audio price that reports audio tokens: no cost, not one at its text rate
    assert text_model.usage.known and not text_model.cost_known


GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "five words of gemini prompt"}]}]}


@pytest.mark.parametrize("call, query, ctype", [
    ("generateContent", "", "application/json"),
    ("streamGenerateContent", "?alt=sse", "text/event-stream"),
    ("streamGenerateContent", "", "application/json"),  # the JSON-array stream
], ids=["json", "sse", "json-array-stream"])
async def test_gemini_native(gateway, call, query, ctype):
    client, fake, built, upstream_url = gateway
    r = await client.post(f"/gemini/v1beta/models/gemini-2.5-pro:{call}{query}", json=GEMINI_BODY,
                          headers={**AUTH, "x-goog-api-key": "AIza-provider"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    received = fake.state.received[-1]
    assert received["path"] == f"/v1beta/models/gemini-2.5-pro:{call}"
    assert received["headers"]["x-goog-api-key"] == "AIza-provider"
    [ev] = built
    assert (ev.provider, ev.model, ev.streamed) == ("gemini", "gemini-2.5-pro", ctype == "text/event-stream")
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.known) == (5, REPLY_WORDS, True)
    # gemini-2.5-pro up to 200K prompt tokens: $1.25 in, $10 out
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd(5, REPLY_WORDS, 1.25, 10.0))


async def test_gemini_key_in_the_query_reaches_the_provider_and_not_the_log(gateway):
    client, fake, built, _ = gateway
    r = await client.post("/gemini/v1beta/models/gemini-2.5-flash:generateContent?key=AIza-query-secret", json=GEMINI_BODY,
                          headers=AUTH)
    assert r.status_code == 200 and fake.state.received[-1]["query"] == "key=AIza-query-secret"
    [ev] = built
    assert ev.path == "/v1beta/models/gemini-2.5-flash:generateContent" and ev.model == "gemini-2.5-flash"
    assert b"AIza-query-secret" not in ev.SerializeToString()


async def test_azure_deployment_through_target_url_reads_the_model_from_the_answer(gateway):
    client, fake, built, upstream_url = gateway
    body = {"messages": [{"role": "user", "content": "one two three"}]}  # Azure requests name no model
    path = "/azure/openai/deployments/prod-chat/chat/completions?api-version=2024-10-21"
    r = await client.post(path, json=body, headers={**AUTH, "api-key": "azure-provider-key", "Helicone-Target-URL": upstream_url})
    assert r.status_code == 200
    received = fake.state.received[-1]
    assert (received["path"], received["query"]) == ("/openai/deployments/prod-chat/chat/completions", "api-version=2024-10-21")
    assert received["headers"]["api-key"] == "azure-provider-key"
    [ev] = built
    # the fake answers as the deployment's model would: "gpt-4o-mini", priced as OpenAI's
    assert (ev.provider, ev.model, ev.target_url) == ("azure", "gpt-4o-mini", upstream_url)
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd(3, REPLY_WORDS, 0.15, 0.60))


async def test_azure_without_a_base_url_is_a_400_naming_both_ways(gateway):
    client, fake, built, _ = gateway
    r = await client.post("/azure/openai/deployments/d/chat/completions", json=chat("x"), headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_route_error"
    message = r.json()["error"]["message"]
    assert "Helicone-Target-URL" in message and "HELICONE_PROVIDER_URLS" in message and "azure" in message
    assert fake.state.received == []
    [ev] = built
    assert (ev.provider, ev.status, ev.org_id) == ("azure", 400, ORG)


async def test_azure_base_url_from_the_setting(tmp_path):
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, provider_urls={"azure": upstream_url + "/"}) as (client, built):
        r = await client.post("/azure/openai/deployments/d/chat/completions?api-version=2024-10-21",
                              json={"messages": [], "stream": True, "stream_options": {"include_usage": True}}, headers=AUTH)
    assert r.status_code == 200 and fake.state.received[-1]["path"] == "/openai/deployments/d/chat/completions"
    [ev] = built
    assert (ev.provider, ev.model, ev.target_url, ev.usage.completion_tokens) == ("azure", "gpt-4o-mini", upstream_url, 6)


async def test_any_openai_compatible_server_through_target_url(gateway):
    """No prefix: a Target-URL server is read as OpenAI (or Gemini, by its native path)."""
    client, fake, built, upstream_url = gateway
    r = await client.post("/v1/chat/completions", json=chat("my-vllm-model"), headers={**AUTH, "Helicone-Target-URL": upstream_url})
    assert r.status_code == 200
    r = await client.post("/v1beta/models/gemini-2.0-flash:generateContent", json=GEMINI_BODY,
                          headers={**AUTH, "Helicone-Target-URL": upstream_url})
    assert r.status_code == 200
    vllm, gemini = built
    assert (vllm.provider, vllm.model, vllm.usage.known, vllm.cost_known) == ("openai", "my-vllm-model", True, False)
    assert (gemini.provider, gemini.model, gemini.usage.prompt_tokens) == ("gemini", "gemini-2.0-flash", 5)
    assert gemini.cost_usd == pytest.approx(usd(5, REPLY_WORDS, 0.10, 0.40))


async def test_provider_metric_label_is_the_table_name(gateway):
    client, _, _, _ = gateway
    await client.post("/groq/openai/v1/chat/completions", json=chat("llama-3.1-8b-instant"), headers=AUTH)
    metrics = (await client.get("/metrics")).text
    line = next(x for x in metrics.splitlines() if x.startswith("helicone_gateway_requests_total{") and 'provider="groq"' in x)
    assert line.endswith(" 1.0") and 'status_class="2xx"' in line


async def test_cost_registry_file_overrides_and_extends_the_shipped_prices(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text('{"groq": {"llama-3.3-70b-versatile": {"input": 1.0, "output": 2.0}},'
                      ' "together": {"house-model": {"pattern": "house-*", "input": 3.0, "output": 4.0}}}')
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(
            tmp_path, cost_registry_file=prices, provider_urls={"groq": upstream_url, "together": upstream_url}) as (client, built):
        for path, model in (("/groq/openai/v1/chat/completions", "llama-3.3-70b-versatile"),
                            ("/together/v1/chat/completions", "house-v2"),
                            ("/together/v1/chat/completions", "meta-llama/Llama-3.3-70B-Instruct-Turbo")):
            assert (await client.post(path, json=chat(model), headers=AUTH)).status_code == 200
    groq, house, shipped = built
    assert groq.cost_usd == pytest.approx(usd(4, REPLY_WORDS, 1.0, 2.0))
    assert house.cost_usd == pytest.approx(usd(4, REPLY_WORDS, 3.0, 4.0))
    assert shipped.cost_usd == pytest.approx(usd(4, REPLY_WORDS, 0.88, 0.88))


def test_a_bad_cost_registry_file_stops_the_gateway_naming_the_entry(tmp_path):
    from helicone_gateway.app import create_app
    from helicone_gateway.settings import GatewaySettings

    prices = tmp_path / "prices.json"
    prices.write_text('{"groq": {"llama-3.3-70b-versatile": {"input": 1.0, "ouptut": 2.0}}}')
    with pytest.raises(ValueError, match=r"\(HELICONE_COST_REGISTRY_FILE\): groq/llama-3.3-70b-versatile: unknown field\(s\) \['ouptut'\]"):
        create_app(GatewaySettings(data_dir=tmp_path, cost_registry_file=prices, _env_file=None))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_anthropic_openai_sdk_compatibility_endpoint_is_read_as_openai(gateway, stream):
    """Anthropic serves the OpenAI SDK at /v1/chat/completions (platform.claude.com/docs/en/api/openai-sdk): its
    answers carry OpenAI's usage (prompt_tokens, completion_tokens). Read as Anthropic's Messages usage they gave
    0 and 0 tokens as a known usage: a logged cost of $0 for every such request, and no usage on its streams."""
    client, fake, built, upstream_url = gateway
    headers = {**AUTH, "x-api-key": "sk-ant-provider", **({"Helicone-Stream-Usage": "true"} if stream else {})}
    r = await client.post("/anthropic/v1/chat/completions", json=chat("claude-sonnet-4-5", stream=stream), headers=headers)
    assert r.status_code == 200
    received = fake.state.received[-1]
    assert received["path"] == "/v1/chat/completions"
    assert received["body"].get("stream_options") == ({"include_usage": True} if stream else None)
    [ev] = built
    assert (ev.provider, ev.model) == ("anthropic", "claude-sonnet-4-5")
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.known) == (4, REPLY_WORDS, True)
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd(4, REPLY_WORDS, 3.0, 15.0))


WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4  # an upload's bytes, binary as audio is


def multipart(model: str, model_last: bool) -> tuple[bytes, str]:
    """A transcription upload as an SDK sends it: the model a form field, before or after the file."""
    boundary = "----helicone-test-8a1b"
    file_part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="model.wav"\r\n'
                 "Content-Type: audio/wav\r\n\r\n").encode() + WAV + b"\r\n"
    model_part = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'.encode()
    parts = [file_part, model_part] if model_last else [model_part, file_part]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f'multipart/form-data; boundary="{boundary}"'


@pytest.mark.parametrize("model_last", [False, True], ids=["model-first", "model-last"])
async def test_audio_transcriptions_are_logged_with_the_form_models_cost(gateway, model_last):
    """POST /v1/audio/transcriptions is multipart/form-data: the model is a form field and the answer names none.
    The logged model was "" and the cost unknown, though gpt-4o-transcribe's answer carries its usage
    (audio tokens in: $6 per 1M, text out $10; platform.openai.com/docs/pricing). whisper-1 is priced per minute
    of audio ($0.006), by the seconds its answer's usage reports."""
    client, fake, built, _ = gateway
    headers = {**AUTH, "Authorization": "Bearer sk-provider"}
    for model in ("gpt-4o-transcribe", "whisper-1"):
        body, ctype = multipart(model, model_last)
        r = await client.post("/openai/v1/audio/transcriptions", content=body, headers={**headers, "Content-Type": ctype})
        assert r.status_code == 200 and r.json()["text"]
        assert fake.state.received[-1]["body"] == {"model": model, "bytes": len(body)}  # the upload went on whole
    transcribe, whisper = built
    assert (transcribe.provider, transcribe.model, transcribe.path) == ("openai", "gpt-4o-transcribe", "/v1/audio/transcriptions")
    assert (transcribe.usage.prompt_tokens, transcribe.usage.completion_tokens, transcribe.usage.known) == (100, REPLY_WORDS, True)
    assert transcribe.cost_known and transcribe.cost_usd == pytest.approx(usd(100, REPLY_WORDS, 6.0, 10.0))
    assert whisper.model == "whisper-1" and whisper.cost_known and whisper.cost_usd == pytest.approx(WHISPER_SECONDS / 60 * 0.006)


VERTEX_CLAUDE = "/v1/projects/acme/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929"


@pytest.mark.parametrize("call, ctype", [("rawPredict", "application/json"), ("streamRawPredict", "text/event-stream")],
                         ids=["json", "sse"])
async def test_anthropic_on_vertex_ai_without_a_prefix_is_read_as_anthropic(gateway, call, ctype):
    """Claude on Vertex AI (publishers/anthropic/models/<m>:rawPredict, the AnthropicVertex SDK's path, Helicone-Target-URL
    naming the region's host): the body names no model and carries anthropic_version, not the header. It was read as
    OpenAI's: logged as provider "openai" with no cost (Claude has no price there), its cache tokens dropped, and its
    stream logged with no model and 0 prompt tokens as a known usage."""
    client, fake, built, upstream_url = gateway
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64, "messages": [{"role": "user", "content": "one two three four"}]}
    headers = {**AUTH, "Authorization": "Bearer ya29.gcp-token", "Helicone-Target-URL": upstream_url}
    r = await client.post(f"{VERTEX_CLAUDE}:{call}", json=body, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
    received = fake.state.received[-1]
    assert received["path"] == f"{VERTEX_CLAUDE}:{call}" and received["headers"]["authorization"] == "Bearer ya29.gcp-token"
    fake.state.fail_next.append(429)  # Vertex's quota error names no model: the path's is logged
    assert (await client.post(f"{VERTEX_CLAUDE}:{call}", json=body, headers=headers)).status_code == 429
    ok, quota = built
    assert (ok.provider, ok.model) == ("anthropic", "claude-sonnet-4-5-20250929")
    assert (ok.usage.prompt_tokens, ok.usage.completion_tokens, ok.usage.known) == (4, REPLY_WORDS, True)
    assert ok.cost_known and ok.cost_usd == pytest.approx(usd(4, REPLY_WORDS, 3.0, 15.0))
    assert (quota.provider, quota.model, quota.status) == ("anthropic", "claude-sonnet-4-5", 429)
