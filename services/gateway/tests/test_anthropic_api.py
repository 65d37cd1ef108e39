"""Anthropic's API as its own SDK sends it through the gateway (the `anthropic` package, base_url the gateway's
/anthropic), against the fake upstream: betas and versions forwarded as sent, token counting, Message Batches, Files
and Models relayed and never priced as a message, and the usage and cost of Messages answers (prompt caching by TTL,
server tools, service tiers, a stream the provider gave up on) as Anthropic bills them
(platform.claude.com/docs/en/about-claude/pricing)."""

import json

import anthropic
import httpx2
import pytest

from services.gateway.tests.test_proxy import started_gateway
from tests.support.fake_upstream import REPLY
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import serve

AUTH = {"Helicone-Auth": "Bearer good-key"}
SONNET = "claude-sonnet-4-5-20250929"
REPLY_WORDS = len(REPLY.split(" "))


def usd(*parts: tuple[int, float]) -> float:
    return sum(n * price for n, price in parts) / 1e6


@pytest.fixture
async def claude(tmp_path):
    """(the SDK's async client through the gateway, the fake upstream, the built events)."""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(tmp_path, anthropic_url=upstream_url) as (client, built):
        # the SDK's own HTTP client (httpx2) on the gateway's ASGI app
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=client._transport.app))
        sdk = anthropic.AsyncAnthropic(
            api_key="sk-ant-provider", base_url="http://gw/anthropic", http_client=http, default_headers=AUTH, max_retries=0
        )
        async with http:
            yield sdk, fake, built


MESSAGES = [{"role": "user", "content": "one two three four"}]


async def test_betas_and_version_reach_anthropic_as_sent(claude):
    sdk, fake, built = claude
    betas = ["prompt-caching-2024-07-31", "interleaved-thinking-2025-05-14", "files-api-2025-04-14"]
    msg = await sdk.beta.messages.create(
        model=SONNET, max_tokens=64, messages=MESSAGES, betas=betas, extra_headers={"anthropic-version": "2023-06-01"}
    )
    assert msg.content[0].text == REPLY
    received = fake.state.received[-1]
    assert received["path"] == "/v1/messages"
    assert received["headers"]["anthropic-beta"] == ",".join(betas)
    assert received["headers"]["anthropic-version"] == "2023-06-01"
    assert received["headers"]["authorization"] == "Bearer sk-ant-provider"


async def test_count_tokens_is_routed_to_anthropic_and_never_priced(claude):
    sdk, fake, built = claude
    counted = await sdk.messages.count_tokens(model=SONNET, messages=MESSAGES)
    assert counted.input_tokens == 4 and fake.state.received[-1]["path"] == "/v1/messages/count_tokens"
    [ev] = built
    assert (ev.provider, ev.model, ev.path) == ("anthropic", SONNET, "/v1/messages/count_tokens")
    assert not ev.cost_known and ev.cost_usd == 0


async def test_batches_files_and_models_are_relayed_unchanged_and_never_priced(claude):
    sdk, fake, built = claude
    batch = await sdk.messages.batches.create(
        requests=[
            {"custom_id": f"req-{i}", "params": {"model": SONNET, "max_tokens": 64, "messages": MESSAGES}} for i in range(2)
        ]
    )
    assert batch.id == "msgbatch_fake" and batch.request_counts.processing == 2
    # the SDK downloads a batch's results from its results_url (api.anthropic.com's): the same path through the gateway
    raw = await sdk.get("/v1/messages/batches/msgbatch_fake/results", cast_to=httpx2.Response)
    assert raw.headers["content-type"] == "application/binary"
    lines = [json.loads(x) for x in raw.content.splitlines()]
    assert [x["custom_id"] for x in lines] == ["req-0", "req-1"] and lines[0]["result"]["message"]["usage"][
        "service_tier"
    ] == "batch"
    uploaded = await sdk.beta.files.upload(file=("notes.txt", b"\x00binary\xffbytes " * 300, "text/plain"))
    assert uploaded.id == "file_fake" and uploaded.size_bytes == len(b"\x00binary\xffbytes ") * 300
    content = await sdk.beta.files.download("file_fake")
    assert await content.read() == b"\x00binary\xffbytes " * 300
    models = await sdk.models.list()
    assert [m.id async for m in models] == [SONNET]
    assert len(built) == 5
    for ev in built:
        assert ev.provider == "anthropic" and ev.status == 200 and not ev.cost_known and ev.cost_usd == 0, ev.path


async def test_repeated_beta_header_lines_all_reach_anthropic(claude):
    """A client that sends anthropic-beta as several header lines (HTTP allows it for a list): every line goes on."""
    sdk, fake, built = claude
    http = sdk._client
    r = await http.post(
        "http://gw/anthropic/v1/messages",
        json={"model": SONNET, "max_tokens": 64, "messages": MESSAGES},
        headers=[
            ("Helicone-Auth", "Bearer good-key"),
            ("x-api-key", "sk-ant-provider"),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "context-1m-2025-08-07"),
            ("anthropic-beta", "token-efficient-tools-2025-02-19,output-128k-2025-02-19"),
        ],
    )
    assert r.status_code == 200
    lines = [v for n, v in fake.state.received[-1]["header_lines"] if n == "anthropic-beta"]
    assert lines == ["context-1m-2025-08-07", "token-efficient-tools-2025-02-19,output-128k-2025-02-19"]


# 1,000 tokens written for 5 minutes, 2,000 for an hour, 4,000 read; the 4 prompt words uncached
CACHED = {
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 4000,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
}
# Claude Sonnet 4.5: $3 in, $3.75 5-minute writes (1.25x), $6 1-hour writes (2x), $0.30 reads (0.1x), $15 out per 1M
CACHED_USD = usd((4, 3.0), (1000, 3.75), (2000, 6.0), (4000, 0.30), (REPLY_WORDS, 15.0))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_cache_writes_by_ttl_and_reads_are_priced_as_anthropic_lists(claude, stream):
    sdk, fake, built = claude
    headers = {"x-fake-usage": json.dumps(CACHED)}
    if stream:
        async with sdk.messages.stream(model=SONNET, max_tokens=64, messages=MESSAGES, extra_headers=headers) as s:
            msg = await s.get_final_message()
    else:
        msg = await sdk.messages.create(model=SONNET, max_tokens=64, messages=MESSAGES, extra_headers=headers)
    assert msg.usage.cache_creation.ephemeral_1h_input_tokens == 2000
    [ev] = built
    assert (ev.usage.prompt_tokens, ev.usage.cache_write_tokens, ev.usage.cache_read_tokens) == (7004, 3000, 4000)
    assert ev.cost_known and ev.cost_usd == pytest.approx(CACHED_USD)


async def test_a_streams_final_counts_on_message_delta_win_over_message_start(claude):
    """message_start's counts are provisional: message_delta's final input, cache and server tool counts are billed."""
    sdk, fake, built = claude
    final = {
        "input_tokens": 40,
        "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 1000},
        "server_tool_use": {"web_search_requests": 3},
    }
    headers = {"x-fake-usage": json.dumps(CACHED), "x-fake-delta-usage": json.dumps(final)}
    async with sdk.messages.stream(model=SONNET, max_tokens=64, messages=MESSAGES, extra_headers=headers) as s:
        msg = await s.get_final_message()
    assert msg.usage.server_tool_use.web_search_requests == 3
    [ev] = built
    assert (ev.usage.prompt_tokens, ev.usage.cache_write_tokens, ev.usage.cache_read_tokens) == (1040, 1000, 0)
    # three searches at $10 per 1,000 besides the tokens
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd((40, 3.0), (1000, 6.0), (REPLY_WORDS, 15.0)) + 3 * 0.01)


async def test_web_searches_are_priced_at_anthropics_per_search_fee(claude):
    """usage.server_tool_use.web_search_requests: Anthropic bills $10 per 1,000 searches on top of the tokens. The cost
    was the tokens' alone; a price without a web_search fee (a registry override) gives no cost, never the tokens'."""
    sdk, fake, built = claude
    headers = {"x-fake-usage": json.dumps({"server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 1}})}
    msg = await sdk.messages.create(model=SONNET, max_tokens=64, messages=MESSAGES, extra_headers=headers)
    assert msg.usage.server_tool_use.web_search_requests == 2
    [ev] = built
    assert ev.cost_known and ev.cost_usd == pytest.approx(usd((4, 3.0), (REPLY_WORDS, 15.0)) + 2 * 0.01)


@pytest.mark.parametrize(
    "usage",
    [{"service_tier": "priority"}, {"inference_geo": "us"}, {"service_tier": "batch"}],
    ids=["priority-tier", "us-inference", "batch-tier"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_answers_billed_off_the_standard_price_have_no_cost(claude, usage, stream):
    """Priority Tier is priced by contract, US-only inference (inference_geo "us") at 1.1x on Opus 4.6 and newer, the
    batch tier at half: the registry's standard price would be a wrong cost. The usage is still logged."""
    sdk, fake, built = claude
    headers = {"x-fake-usage": json.dumps(usage)}
    model = "claude-opus-4-6"
    if stream:
        async with sdk.messages.stream(model=model, max_tokens=64, messages=MESSAGES, extra_headers=headers) as s:
            await s.get_final_message()
    else:
        await sdk.messages.create(model=model, max_tokens=64, messages=MESSAGES, extra_headers=headers)
    [ev] = built
    assert ev.usage.known and (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (4, REPLY_WORDS)
    assert not ev.cost_known and ev.cost_usd == 0
    # the standard tier, global inference: priced
    await sdk.messages.create(
        model=model,
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps({"service_tier": "standard", "inference_geo": "global"})},
    )
    assert built[-1].cost_known and built[-1].cost_usd == pytest.approx(usd((4, 5.0), (REPLY_WORDS, 25.0)))


async def test_a_stream_ending_in_an_error_event_is_logged_as_an_error_without_a_cost(claude):
    """Anthropic may end a 200 stream with `event: error` (overloaded_error): the SDK raises it. It was logged as a
    success priced from message_start's provisional counts (1 output token): now an error, with the usage read so far
    and no cost."""
    sdk, fake, built = claude
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with sdk.messages.stream(
            model=SONNET, max_tokens=64, messages=MESSAGES, extra_headers={"x-fake-stream-error": "1"}
        ) as s:
            await s.get_final_message()
    [ev] = built
    assert ev.status == 200 and ev.streamed and "error event" in ev.error
    assert ev.usage.prompt_tokens == 4 and not ev.cost_known and ev.cost_usd == 0
