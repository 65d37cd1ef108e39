"""The gateway response cache through the embedded stack, driven by the official openai SDK:
MISS then HIT (JSON and streamed), the hit logged as a cache hit with the cost it saved."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.e2e.test_request_path import GPT4O_MINI, cost, oai

pytestmark = pytest.mark.e2e


def provider_calls(stack, prompt: str) -> int:
    received = httpx.get(f"{stack.upstream}/_received", timeout=10).json()
    return sum(1 for r in received if r["body"].get("messages") == [{"role": "user", "content": prompt}])


def test_openai_sdk_miss_then_hit_logged_as_a_cache_hit(stack):
    prompt = f"cache me {uuid.uuid4().hex}"  # one word: 3 prompt tokens
    client = oai(stack, **{"Helicone-Cache-Enabled": "true", "Cache-Control": "max-age=600"})
    answers = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
        answers.append((raw.headers, raw.parse()))
    (h1, c1), (h2, c2) = answers
    assert (h1["helicone-cache"], h2["helicone-cache"]) == ("MISS", "HIT")
    assert h2["helicone-cache-bucket-idx"] == "0" and h2["helicone-region"] == stack.region
    assert c2.id == c1.id and c2.choices[0].message.content == "Hello from the fake upstream model"
    assert provider_calls(stack, prompt) == 1

    miss, hit = stack.wait_for_request(h1["helicone-id"]), stack.wait_for_request(h2["helicone-id"])
    price = cost(GPT4O_MINI, 3, 6)
    assert not miss["cache_hit"] and miss["cost_usd"] == pytest.approx(price) and miss["cache_saved_usd"] is None
    assert hit["cache_hit"] and hit["cost_usd"] == 0 and hit["cache_saved_usd"] == pytest.approx(price)
    assert hit["status"] == 200 and hit["usage"]["completion_tokens"] == 6 and hit["response_body"]["id"] == c1.id
    with httpx.Client(base_url=stack.api, headers={"Authorization": f"Bearer {stack.key}"}) as api:
        r = api.post("/v1/request/query", json={"filter": {"cache_hit": True}, "limit": 1000})
    assert h2["helicone-id"] in [row["request_id"] for row in r.json()["data"]]
    assert h1["helicone-id"] not in [row["request_id"] for row in r.json()["data"]]


def test_openai_sdk_stream_replayed_from_the_cache(stack):
    prompt = f"stream me {uuid.uuid4().hex}"
    client = oai(stack, **{"Helicone-Cache-Enabled": "true", "Helicone-Cache-Seed": "e2e"})
    runs = []
    for _ in range(2):
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], stream=True,
            stream_options={"include_usage": True},
        ) as resp:
            chunks = [c for c in resp.parse()]
            runs.append((resp.headers, chunks))
    (h1, c1), (h2, c2) = runs
    assert (h1["helicone-cache"], h2["helicone-cache"]) == ("MISS", "HIT")
    assert [c.model_dump() for c in c2] == [c.model_dump() for c in c1]
    assert "".join(c.choices[0].delta.content or "" for c in c2 if c.choices) == "Hello from the fake upstream model"
    assert c2[-1].usage.completion_tokens == 6 and provider_calls(stack, prompt) == 1
    hit = stack.wait_for_request(h2["helicone-id"])
    assert hit["cache_hit"] and hit["streamed"] and hit["cache_saved_usd"] == pytest.approx(cost(GPT4O_MINI, 3, 6))


def test_bad_cache_header_is_a_400_the_sdk_reports(stack):
    import openai

    client = oai(stack, **{"Helicone-Cache-Bucket-Max-Size": "50", "Helicone-Cache-Enabled": "true"})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "Helicone-Cache-Bucket-Max-Size" in str(err.value) and "from 1 to 20" in str(err.value)
