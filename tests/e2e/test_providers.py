"""Providers of the table through the whole stack: the official OpenAI SDK pointed at a provider's
prefix on the gateway, and Gemini's native API; the api shows the provider, usage and cost logged.
The stack sends every provider to the fake upstream (tests/support/stack.py)."""

from __future__ import annotations

import uuid

import httpx
import openai
import pytest

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "gsk-e2e-provider-secret-0123456789"


def sdk(stack, base: str, **headers) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway}{base}", api_key=PROVIDER_KEY,
                         default_headers={"Helicone-Auth": f"Bearer {stack.key}", **headers}, max_retries=0)


def usd(prompt: int, completion: int, price_in: float, price_out: float) -> float:
    return (prompt * price_in + completion * price_out) / 1e6


def test_groq_through_the_openai_sdk(stack):
    run = uuid.uuid4().hex[:8]
    client = sdk(stack, "/groq/openai/v1", **{"Helicone-Property-Run": run})
    raw = client.chat.completions.with_raw_response.create(
        model="llama-3.3-70b-versatile", messages=[{"role": "user", "content": "four words of prompt"}])
    assert raw.parse().choices[0].message.content == "Hello from the fake upstream model"
    logged = stack.wait_for_request(raw.headers["helicone-id"])
    assert (logged["provider"], logged["model"], logged["path"]) == ("groq", "llama-3.3-70b-versatile", "/openai/v1/chat/completions")
    assert (logged["usage"]["prompt_tokens"], logged["usage"]["completion_tokens"]) == (4, 6)
    assert logged["cost_usd"] == pytest.approx(usd(4, 6, 0.59, 0.79))  # Groq's price, not another host's

    # streamed, usage asked for by the gateway (Helicone-Stream-Usage)
    with sdk(stack, "/groq/openai/v1", **{"Helicone-Property-Run": run, "Helicone-Stream-Usage": "true"}) \
            .chat.completions.with_streaming_response.create(
                model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "stream it"}], stream=True) as resp:
        rid = resp.headers["helicone-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "Hello from the fake upstream model"
    logged = stack.wait_for_request(rid)
    assert logged["streamed"] and logged["provider"] == "groq"
    assert (logged["usage"]["prompt_tokens"], logged["usage"]["completion_tokens"]) == (2, 6)
    assert logged["cost_usd"] == pytest.approx(usd(2, 6, 0.05, 0.08))

    with stack.api_client() as api:
        r = api.post("/v1/request/query", json={"filter": {"provider": "groq", "properties": {"run": run}}})
    assert r.status_code == 200 and len(r.json()["data"]) == 2


def test_gemini_openai_compatible_and_native(stack):
    raw = sdk(stack, "/gemini/v1beta/openai").chat.completions.with_raw_response.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "three word prompt"}])
    logged = stack.wait_for_request(raw.headers["helicone-id"])
    assert (logged["provider"], logged["model"]) == ("gemini", "gemini-2.5-flash")
    assert logged["cost_usd"] == pytest.approx(usd(3, 6, 0.30, 2.50))

    # the native streaming API (SSE), the model named only in the path
    r = httpx.post(f"{stack.gateway}/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                   json={"contents": [{"role": "user", "parts": [{"text": "two words"}]}]},
                   headers={"Helicone-Auth": f"Bearer {stack.key}", "x-goog-api-key": PROVIDER_KEY}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    logged = stack.wait_for_request(r.headers["helicone-id"])
    assert (logged["provider"], logged["model"], logged["streamed"]) == ("gemini", "gemini-2.5-pro", True)
    assert (logged["usage"]["prompt_tokens"], logged["usage"]["completion_tokens"]) == (2, 6)
    assert logged["cost_usd"] == pytest.approx(usd(2, 6, 1.25, 10.0))
