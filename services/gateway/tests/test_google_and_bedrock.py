"""Google (Gemini API, Vertex AI) and AWS Bedrock traffic through the in-process gateway against the fake upstream,
as the providers' SDKs send it: where it goes, what reaches the provider (a SigV4-signed request as signed, an AWS
event stream byte for byte), and the logged provider, model, usage and cost."""

import contextlib
from urllib.parse import quote

import pytest
from botocore.eventstream import EventStreamBuffer
from helicone_core.providers import PROVIDER_TABLE

from services.gateway.tests.test_proxy import StubKeys, host_port
from tests.support import bedrock as aws
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.gateway import in_process_gateway
from tests.support.inloop import serve

AUTH = {"Helicone-Auth": "Bearer good-key"}
REPLY = "Hello from the fake upstream model"
REPLY_WORDS = 6


def usd(tokens_and_prices) -> float:
    return sum(n * price for n, price in tokens_and_prices) / 1e6


class NoDNS:
    """The upstream pool's resolver here: a provider's public host (a misroute) is never looked up nor reached."""

    async def resolve(self, host, port=0, family=0):
        raise OSError(f"test: {host} is not resolved")


@contextlib.asynccontextmanager
async def started_gateway(tmp_path, **settings):
    async with in_process_gateway(tmp_path, StubKeys(), **settings) as (client, gw, built):
        gw.upstream.resolver = NoDNS()
        yield client, built


@pytest.fixture
async def gateway(tmp_path):
    """Every provider at one fake upstream but Bedrock (no default: Target-URL names its regional host)."""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url:
        urls = {name: upstream_url for name in PROVIDER_TABLE if name not in ("openai", "anthropic", "azure", "bedrock")}
        async with started_gateway(
            tmp_path,
            openai_url=upstream_url,
            anthropic_url=upstream_url,
            provider_urls=urls,
            target_url_allowlist=[host_port(upstream_url)],
        ) as (client, built):
            yield client, fake, built, upstream_url


# ---- AWS Bedrock --------------------------------------------------------------------------------------------
HAIKU = "anthropic.claude-3-5-haiku-20241022-v1:0"
SONNET_US = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"  # a US cross-region inference profile: 10 % above Anthropic's price
CONVERSE_JSON = (
    b'{"system": [{"text": "you answer in one short sentence always"}, {"cachePoint": {"type": "default"}}], '
    b'"messages": [{"role": "user", "content": [{"text": "one two three four"}]}]}'
)
CLAUDE_JSON = (
    b'{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "system": [{"type": "text", '
    b'"text": "you answer in one short sentence always", "cache_control": {"type": "ephemeral"}}], '
    b'"messages": [{"role": "user", "content": "one two three four"}]}'
)
SYSTEM_WORDS, PROMPT_WORDS = 7, 4


def signed(upstream_url: str, model: str, operation: str, body: bytes, **headers) -> tuple[str, dict]:
    """The path (model id percent-encoded, as botocore writes it) and the headers botocore signs for the Bedrock
    host (here the fake's) and that path."""
    path = f"/model/{quote(model, safe='')}/{operation}"
    return path, aws.sign("POST", upstream_url + path, {"Content-Type": "application/json", **headers}, body)


@pytest.mark.parametrize("operation", ["converse", "converse-stream"])
@pytest.mark.parametrize("prefix", ["/bedrock", ""], ids=["prefix", "no-prefix"])
async def test_bedrock_converse_signed_by_botocore_reaches_aws_as_signed_and_logs_its_usage(gateway, operation, prefix):
    """A SigV4-signed Converse (the signature covers content-type, host, x-amz-date, the path and the body) through
    /bedrock (or, as Helicone's gateway takes it, without a prefix) with Helicone-Target-URL naming the region's host:
    the provider checks the signature, the event stream comes back byte for byte, and the usage is Converse's (its
    stream's metadata event), cache reads included. Bedrock had no route: /bedrock/... went to OpenAI's API, and
    /model/.../converse was logged as OpenAI's with a known usage of 0 tokens."""
    client, fake, built, upstream_url = gateway
    path, headers = signed(upstream_url, HAIKU, operation, CONVERSE_JSON)
    assert "%3A0" in path and "SignedHeaders=content-type;host;x-amz-date" in headers["Authorization"]
    r = await client.post(
        prefix + path,
        content=CONVERSE_JSON,
        headers={**headers, **AUTH, "Helicone-Target-URL": upstream_url, "x-fake-cache": "read"},
    )
    assert r.status_code == 200, r.text  # the fake answers 403 as AWS does when the signature does not hold
    received = fake.state.received[-1]
    assert received["path"] == path and received["body"] == CONVERSE_JSON
    assert "helicone-auth" not in received["headers"] and "helicone-target-url" not in received["headers"]
    stream = operation == "converse-stream"
    if stream:
        assert r.headers["content-type"] == aws.EVENT_STREAM and r.content == received["answer"]
        buffer = EventStreamBuffer()
        buffer.add_data(r.content)
        events = [m.headers[":event-type"] for m in buffer]  # botocore reads every frame (its CRCs hold)
        assert events[0] == "messageStart" and events[-2:] == ["messageStop", "metadata"]
    [ev] = built
    assert (ev.provider, ev.model, ev.path, ev.streamed) == ("bedrock", HAIKU, path, stream)
    assert (ev.usage.prompt_tokens, ev.usage.cache_read_tokens, ev.usage.completion_tokens, ev.usage.known) == (
        PROMPT_WORDS + SYSTEM_WORDS,
        SYSTEM_WORDS,
        REPLY_WORDS,
        True,
    )
    # Claude 3.5 Haiku on Bedrock in its region: Anthropic's price, $0.80 in, $0.08 cache read, $4 out per 1M
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd([(PROMPT_WORDS, 0.80), (SYSTEM_WORDS, 0.08), (REPLY_WORDS, 4.0)]))


@pytest.mark.parametrize("operation", ["invoke", "invoke-with-response-stream"])
async def test_bedrock_invoke_claude_logs_anthropic_usage_at_the_inference_profiles_price(gateway, operation):
    """InvokeModel with Claude's Messages body answers Anthropic's usage (its cache writes too), the stream as
    base64 JSON in each event stream chunk's bytes. The answer names the model without the inference profile:
    the path's id is logged and priced (a US profile of Claude Sonnet 4.5 costs 10 % more). It was logged as
    OpenAI's: no cost, the cache writes dropped, the stream's usage unread."""
    client, fake, built, upstream_url = gateway
    path, headers = signed(upstream_url, SONNET_US, operation, CLAUDE_JSON)
    r = await client.post(
        "/bedrock" + path, content=CLAUDE_JSON, headers={**headers, **AUTH, "Helicone-Target-URL": upstream_url}
    )
    assert r.status_code == 200, r.text
    received = fake.state.received[-1]
    assert received["path"] == path
    stream = operation.endswith("-stream")
    if stream:
        assert r.content == received["answer"]
    else:
        assert r.json()["model"] == "claude-sonnet-4-5-20250929"
    [ev] = built
    assert (ev.provider, ev.model, ev.streamed) == ("bedrock", SONNET_US, stream)
    assert (ev.usage.prompt_tokens, ev.usage.cache_write_tokens, ev.usage.completion_tokens) == (
        PROMPT_WORDS + SYSTEM_WORDS,
        SYSTEM_WORDS,
        REPLY_WORDS,
    )
    # Bedrock's US profile of Claude Sonnet 4.5: $3.30 in, $4.125 cache write, $16.50 out per 1M
    assert ev.cost_known and ev.cost_usd == pytest.approx(
        usd([(PROMPT_WORDS, 3.30), (SYSTEM_WORDS, 4.125), (REPLY_WORDS, 16.50)])
    )


@pytest.mark.parametrize("operation", ["converse-stream", "invoke-with-response-stream"])
async def test_a_bedrock_stream_longer_than_the_logged_body_still_logs_its_usage(tmp_path, operation):
    """The usage of an event stream is in its last frames: past the logged body's limit the capture keeps the
    stream's tail, read from its first whole frame."""
    fake = create_fake_upstream()
    body = CONVERSE_JSON if operation.startswith("converse") else CLAUDE_JSON
    async with (
        serve(fake) as upstream_url,
        started_gateway(tmp_path, max_logged_body_bytes=4096, target_url_allowlist=[host_port(upstream_url)]) as (client, built),
    ):
        path, headers = signed(upstream_url, HAIKU, operation, body)
        r = await client.post(
            "/bedrock" + path,
            content=body,
            headers={**headers, **AUTH, "Helicone-Target-URL": upstream_url, "x-fake-words": "3000"},
        )
    assert r.status_code == 200 and len(r.content) > 100_000 and r.content == fake.state.received[-1]["answer"]
    [ev] = built
    assert ev.inline.response_truncated and len(ev.inline.response_body) == 4096
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.known) == (PROMPT_WORDS + SYSTEM_WORDS, 3000, True)
    assert ev.cost_known


async def test_a_sigv4_signed_accept_encoding_goes_as_signed(gateway):
    """The gateway narrows Accept-Encoding to what it can decode for the log (no br, no zstd): a signature that covers
    it (aws4fetch, the AWS SDKs in a browser sign every header they are given) no longer held, and AWS refused the
    request with a 403. Signed, it goes as sent; unsigned, it is still narrowed."""
    client, fake, built, upstream_url = gateway
    path, headers = signed(upstream_url, HAIKU, "converse", CONVERSE_JSON, **{"Accept-Encoding": "gzip, deflate, br"})
    assert "accept-encoding" in headers["Authorization"]
    r = await client.post(path, content=CONVERSE_JSON, headers={**headers, **AUTH, "Helicone-Target-URL": upstream_url})
    assert r.status_code == 200, r.text
    assert fake.state.received[-1]["headers"]["accept-encoding"] == "gzip, deflate, br"
    r = await client.post(
        "/v1/chat/completions",
        headers={**AUTH, "Accept-Encoding": "gzip, deflate, br"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200 and fake.state.received[-1]["headers"]["accept-encoding"] == "gzip, deflate"


async def test_a_changed_body_breaks_the_signature_as_aws_would_see_it(gateway):
    """The fake checks signatures as AWS does: the same request with one byte of its body changed is refused (403),
    so a 200 above means the request reached it as signed."""
    client, fake, built, upstream_url = gateway
    path, headers = signed(upstream_url, HAIKU, "converse", CONVERSE_JSON)
    r = await client.post(
        path, content=CONVERSE_JSON.replace(b"four", b"fore"), headers={**headers, **AUTH, "Helicone-Target-URL": upstream_url}
    )
    assert r.status_code == 403 and "signature" in r.json()["message"]


async def test_bedrock_without_a_base_url_is_a_400_naming_the_regional_host(gateway):
    client, fake, built, _ = gateway
    r = await client.post(f"/bedrock/model/{quote(HAIKU, safe='')}/converse", content=CONVERSE_JSON, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_route_error"
    assert "https://bedrock-runtime.<region>.amazonaws.com" in r.json()["error"]["message"]
    assert fake.state.received == []


# ---- Gemini API and Vertex AI -----------------------------------------------------------------------------
CONTENTS = {"contents": [{"role": "user", "parts": [{"text": "five words of gemini prompt"}]}]}


async def test_gemini_embeddings_and_token_counts_without_a_prefix_go_to_gemini(tmp_path):
    """The google-genai SDK pointed at the gateway sends every method without a prefix: only :generateContent and
    :streamGenerateContent were Gemini's, so :embedContent, :batchEmbedContents and :countTokens went to OpenAI's API,
    the caller's x-goog-api-key with them. They reach Gemini, logged with the path's model; the Gemini API's answers
    carry no usage: no usage and no cost (countTokens costs nothing), never a wrong one."""
    gemini, openai = create_fake_upstream(), create_fake_upstream()
    async with (
        serve(gemini) as gemini_url,
        serve(openai) as openai_url,
        started_gateway(tmp_path, openai_url=openai_url, provider_urls={"gemini": gemini_url}) as (client, built),
    ):
        headers = {**AUTH, "x-goog-api-key": "AIza-provider"}
        for call, body in (
            (":embedContent", {"content": CONTENTS["contents"][0]}),
            (":batchEmbedContents", {"requests": [{"model": "models/gemini-embedding-001", "content": CONTENTS["contents"][0]}]}),
            (":countTokens", CONTENTS),
        ):
            model = "gemini-2.5-flash" if call == ":countTokens" else "gemini-embedding-001"
            r = await client.post(f"/v1beta/models/{model}{call}", json=body, headers=headers)
            assert r.status_code == 200, r.text
    assert openai.state.received == [] and len(gemini.state.received) == 3
    assert all(x["headers"]["x-goog-api-key"] == "AIza-provider" for x in gemini.state.received)
    for ev, model in zip(built, ("gemini-embedding-001", "gemini-embedding-001", "gemini-2.5-flash"), strict=True):
        assert (ev.provider, ev.model, ev.usage.known, ev.cost_known) == ("gemini", model, False, False)


VERTEX = "/v1/projects/acme/locations/us-central1/publishers"


@pytest.mark.parametrize(
    "path",
    [
        f"{VERTEX}/google/models/gemini-2.5-flash:generateContent",
        f"{VERTEX}/google/models/text-embedding-005:predict",
        f"{VERTEX}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
        f"/gemini{VERTEX}/google/models/gemini-2.5-flash:streamGenerateContent",
    ],
    ids=["gemini", "predict", "claude", "gemini-prefix"],
)
async def test_a_vertex_ai_path_without_target_url_is_a_400_naming_the_regional_host(tmp_path, path):
    """Vertex AI is served at https://<location>-aiplatform.googleapis.com only (Helicone's gateway too takes it
    through Helicone-Target-URL only). Without one, a Vertex path went to the Gemini API's host (a 404), Claude's to
    api.anthropic.com and :predict to api.openai.com, the caller's Google access token with them."""
    async with started_gateway(tmp_path) as (client, built):  # every provider at its default base URL (never looked up)
        r = await client.post(
            path,
            json={"contents": [], "instances": [], "messages": []},
            headers={**AUTH, "Authorization": "Bearer ya29.google-token"},
        )
        assert r.status_code == 400 and r.json()["error"]["type"] == "helicone_route_error"
        assert "Helicone-Target-URL: https://<location>-aiplatform.googleapis.com" in r.json()["error"]["message"]
        # the Gemini API's and Anthropic's own paths still go to their hosts (here unreachable: a 502)
        for own in ("/v1beta/models/gemini-2.5-flash:generateContent", "/v1/messages"):
            assert (await client.post(own, json={"contents": [], "messages": []}, headers=AUTH)).status_code == 502
    refused, gemini, anthropic = built
    assert refused.status == 400 and refused.target_url == ""
    assert (gemini.target_url, anthropic.target_url) == ("https://generativelanguage.googleapis.com", "https://api.anthropic.com")


@pytest.mark.parametrize(
    "call, query, stream",
    [("generateContent", "", False), ("streamGenerateContent", "?alt=sse", True), ("streamGenerateContent", "", False)],
    ids=["json", "sse", "json-array"],
)
async def test_vertex_gemini_usage_with_cache_thinking_and_tool_use(gateway, call, query, stream):
    """Vertex's usageMetadata: cachedContentTokenCount is part of promptTokenCount (priced at the cache rate),
    thoughtsTokenCount is billed as output, toolUsePromptTokenCount (a Google Search tool's) as input."""
    client, fake, built, upstream_url = gateway
    body = {
        **CONTENTS,
        "cachedContent": "projects/acme/locations/us-central1/cachedContents/123",
        "generationConfig": {"thinkingConfig": {"thinkingBudget": 1024}},
        "tools": [{"googleSearch": {}}],
    }
    path = f"{VERTEX}/google/models/gemini-2.5-flash:{call}"
    r = await client.post(
        path + query,
        json=body,
        headers={**AUTH, "Authorization": "Bearer ya29.google-token", "Helicone-Target-URL": upstream_url},
    )
    assert r.status_code == 200
    assert fake.state.received[-1]["path"] == path
    [ev] = built
    assert (ev.provider, ev.model, ev.streamed) == ("gemini", "gemini-2.5-flash", stream)
    # 5 prompt words + 1,000 cached + 30 tool-use tokens in; 6 reply words + 50 thinking tokens out
    assert (ev.usage.prompt_tokens, ev.usage.cache_read_tokens, ev.usage.completion_tokens) == (1035, 1000, 56)
    # Gemini 2.5 Flash: $0.30 in, $0.03 cached, $2.50 out per 1M
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd([(35, 0.30), (1000, 0.03), (56, 2.50)]))


async def test_vertex_embeddings_log_their_token_counts_and_never_a_wrong_cost(gateway):
    """Vertex's :predict for embeddings answers each input's token count (predictions[].embeddings.statistics):
    logged as the usage. Vertex bills text-embedding-005 and its kin by characters, which the registry does not
    price: no cost rather than one from token prices (text-embedding-004 is free on the Gemini API, not on Vertex).
    :embedContent (gemini-embedding-001, priced by tokens) answers a usageMetadata; :countTokens costs nothing.
    These paths were OpenAI's API to the gateway: no usage at all."""
    client, fake, built, upstream_url = gateway
    headers = {**AUTH, "Authorization": "Bearer ya29.google-token", "Helicone-Target-URL": upstream_url}
    for model in ("text-embedding-005", "text-embedding-004"):
        r = await client.post(
            f"{VERTEX}/google/models/{model}:predict",
            headers=headers,
            json={"instances": [{"content": "one two three", "task_type": "RETRIEVAL_DOCUMENT"}, {"content": "four five"}]},
        )
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
    r = await client.post(
        f"{VERTEX}/google/models/gemini-embedding-001:embedContent",
        headers=headers,
        json={"content": {"parts": [{"text": "one two three four"}]}},
    )
    assert r.status_code == 200
    r = await client.post(f"{VERTEX}/google/models/gemini-2.5-flash:countTokens", headers=headers, json=CONTENTS)
    assert r.status_code == 200 and r.json()["totalTokens"] == 5
    predict_005, predict_004, embed, count = built
    for ev, model in ((predict_005, "text-embedding-005"), (predict_004, "text-embedding-004")):
        assert (ev.provider, ev.model, ev.usage.prompt_tokens, ev.usage.known) == ("gemini", model, 5, True)
        assert not ev.cost_known and ev.cost_usd == 0
    assert (embed.model, embed.usage.prompt_tokens, embed.usage.known) == ("gemini-embedding-001", 4, True)
    # Gemini Embedding: $0.15 per 1M input tokens
    assert embed.cost_known and embed.cost_usd == pytest.approx(usd([(4, 0.15)]))
    assert (count.model, count.usage.known, count.cost_known) == ("gemini-2.5-flash", False, False)


async def test_boto3_through_the_gateway_as_the_readme_says(tmp_path):
    """boto3's bedrock-runtime client signs for the region's endpoint (here the fake's), then a before-send hook sends
    the signed request to the gateway's /bedrock with the Helicone headers: the SDK's own parser reads the relayed
    ConverseStream and InvokeModel answers, and both are logged with their usage."""
    import asyncio

    import boto3
    from botocore.config import Config
    from helicone_gateway.app import create_app
    from helicone_gateway.settings import GatewaySettings

    fake = create_fake_upstream()
    async with serve(fake) as upstream_url:
        app = create_app(
            GatewaySettings(
                data_dir=tmp_path, _env_file=None, kafka_bootstrap="127.0.0.1:1", target_url_allowlist=[host_port(upstream_url)]
            )
        )
        gw = app.state.gateway
        gw.keys = StubKeys()
        built = []
        async with serve(app, lifespan="on") as gateway_url:
            gw.publisher.submit = lambda builder, size=0: built.append(builder())
            client = boto3.client(
                "bedrock-runtime",
                region_name=aws.REGION,
                endpoint_url=upstream_url,
                aws_access_key_id=aws.ACCESS_KEY,
                aws_secret_access_key=aws.SECRET_KEY,
                config=Config(retries={"max_attempts": 1}),
            )

            def to_gateway(request, **_):
                request.url = request.url.replace(upstream_url, gateway_url + "/bedrock", 1)
                request.headers["Helicone-Auth"] = "Bearer good-key"
                request.headers["Helicone-Target-URL"] = upstream_url

            client.meta.events.register("before-send.bedrock-runtime.*", to_gateway)

            def calls():
                stream = client.converse_stream(
                    modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "one two three four"}]}]
                )
                text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in stream["stream"] if "contentBlockDelta" in e)
                answer = client.invoke_model(modelId=SONNET_US, body=CLAUDE_JSON)
                return text, answer["body"].read()

            text, invoked = await asyncio.to_thread(calls)
    assert text == REPLY and b'"usage"' in invoked
    converse, invoke = built
    assert (converse.provider, converse.model, converse.streamed, converse.usage.prompt_tokens) == ("bedrock", HAIKU, True, 4)
    assert (invoke.provider, invoke.model, invoke.usage.cache_write_tokens, invoke.cost_known) == ("bedrock", SONNET_US, 7, True)
