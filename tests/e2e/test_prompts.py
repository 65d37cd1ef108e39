"""Stored prompts end to end: created through the api, called through the gateway with the
official OpenAI and Anthropic SDKs, promoted to production, and served from the gateway's cache
while the prompts service (a process of its own here) is stopped."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import anthropic
import httpx
import openai
import pytest

from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "sk-proj-e2e-provider-secret-0123456789"
CACHE_TTL = 3600  # HELICONE_PROMPT_CACHE_TTL of the gateway under test: only the change stream can expire an entry
V1 = {"model": "gpt-4o-mini", "temperature": "{{hc:temperature:number}}",
      "messages": [{"role": "system", "content": "You answer questions about {{hc:product:string}}."},
                   {"role": "user", "content": "{{question}}"}]}
V2 = {**V1, "messages": [{"role": "system", "content": "You answer {{hc:product:string}} questions in one line."},
                         V1["messages"][1]]}
INPUTS = {"temperature": 0.2, "product": "Acme Cloud", "question": "How do I reset my password?"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_dsn) -> Stack:
    import asyncpg

    name = "e2e_prompts_" + uuid.uuid4().hex[:8]

    async def create_db() -> None:
        admin = await asyncpg.connect(pg_dsn)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()

    asyncio.run(create_db())
    with running_stack(tmp_path_factory.mktemp("e2e-prompts"), s3=False, postgres_dsn=pg_dsn.replace("/postgres?", f"/{name}?"),
                       prompts_apart=True, extra_env={"HELICONE_PROMPT_CACHE_TTL": str(CACHE_TTL)}) as s:
        yield s


def received(stack) -> list[dict]:
    return httpx.get(f"{stack.upstream}/_received", timeout=5).json()


def oai(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}/v1", api_key=PROVIDER_KEY, max_retries=0,
                         default_headers={"Helicone-Auth": f"Bearer {stack.key}"})


def ask_openai(stack, prompt_id="support"):
    """The header form: Helicone-Prompt-Id + environment + inputs, no messages of the caller's own."""
    return oai(stack).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[],
        extra_headers={"Helicone-Prompt-Id": prompt_id, "Helicone-Prompt-Environment": "production",
                       "Helicone-Prompt-Inputs": json.dumps(INPUTS)})


def test_prompt_lifecycle_through_api_gateway_and_sdks(stack):
    api = stack.api_client()
    r = api.post("/v1/prompts/support/versions", json={"template": V1, "message": "first", "environments": ["production"]})
    assert r.status_code == 201, r.text
    assert api.post("/v1/prompts/unused/versions", json={"template": V1, "environments": ["production"]}).status_code == 201

    # OpenAI SDK, header form
    raw = ask_openai(stack)
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream model"
    sent = received(stack)[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"] == {"model": "gpt-4o-mini", "temperature": 0.2, "messages": [
        {"role": "system", "content": "You answer questions about Acme Cloud."},
        {"role": "user", "content": "How do I reset my password?"}]}
    logged = stack.wait_for_request(raw.headers["helicone-id"])
    assert logged["prompt"] == {"id": "support", "version": 1, "inputs": INPUTS}
    assert logged["request_body"] == sent["body"]  # the log holds what the provider was sent

    # Anthropic SDK, body form: system messages become Anthropic's top-level system
    claude = anthropic.Anthropic(base_url=stack.gateway, api_key="sk-ant-e2e", max_retries=0,
                                 default_headers={"Helicone-Auth": f"Bearer {stack.key}"})
    raw = claude.messages.with_raw_response.create(
        model="claude-3-5-haiku-latest", max_tokens=64, messages=[],
        extra_body={"prompt_id": "support", "environment": "production", "inputs": INPUTS})
    assert raw.parse().content[0].text == "Hello from the fake upstream model"
    sent = received(stack)[-1]
    assert sent["path"] == "/v1/messages"
    assert sent["body"]["system"] == "You answer questions about Acme Cloud."
    assert sent["body"]["messages"] == [{"role": "user", "content": "How do I reset my password?"}]
    assert not {"prompt_id", "environment", "inputs"} & set(sent["body"])
    assert stack.wait_for_request(raw.headers["helicone-id"])["prompt"]["version"] == 1

    # a new version promoted to production: the next call after the gateway's cache TTL uses it
    assert api.post("/v1/prompts/support/versions", json={"template": V2, "message": "shorter"}).json()["version"] == 2
    assert api.put("/v1/prompts/support/environments/production", json={"version": 2}).json()["version"] == 2
    deadline, v1_calls = time.monotonic() + 10, 2
    while True:  # the prompts service's change stream expires the gateway's cached version
        raw = ask_openai(stack)
        if received(stack)[-1]["body"]["messages"][0]["content"] == "You answer Acme Cloud questions in one line.":
            break
        v1_calls += 1
        assert time.monotonic() < deadline, "the promoted version never reached the gateway"
        time.sleep(0.1)
    assert stack.wait_for_request(raw.headers["helicone-id"])["prompt"]["version"] == 2

    # the prompts service stops: the cached version keeps serving, an uncached prompt is a 503
    stack.stop_prompts()
    try:
        time.sleep(1)  # the gateway's change stream sees the service go
        raw = ask_openai(stack)
        assert raw.parse().choices[0].message.content == "Hello from the fake upstream model"
        assert received(stack)[-1]["body"]["messages"][0]["content"] == "You answer Acme Cloud questions in one line."
        before = len(received(stack))
        with pytest.raises(openai.APIStatusError) as err:
            ask_openai(stack, prompt_id="unused")
        assert err.value.status_code == 503 and "prompts service unavailable" in err.value.message
        assert len(received(stack)) == before  # nothing went upstream
        assert api.get("/v1/prompts").status_code == 503
    finally:
        stack.start_prompts()

    # analytics per version, from the request log
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = api.post("/v1/prompts/support/analytics", json={}).json()["data"]
        counts = {d["version"]: d["requests"] for d in data}
        if counts == {1: v1_calls, 2: 2}:
            break
        time.sleep(0.5)
    assert counts == {1: v1_calls, 2: 2}
    assert all(d["error_rate"] == 0 and d["cost_usd"] > 0 for d in data)
