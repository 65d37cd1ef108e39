"""Retries and Helicone-Fallbacks through the embedded stack, driven by the official openai SDK: the
primary fails, is retried, the fallback answers with its own key and model, and the api shows every try."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.e2e.test_request_path import GPT4O_MINI, cost, oai

pytestmark = pytest.mark.e2e

BACKUP_KEY = "sk-proj-e2e-backup-secret-9876543210"


def test_openai_sdk_fallback_serves_and_the_api_lists_every_try(stack):
    prompt = f"fall back {uuid.uuid4().hex}"  # 3 prompt tokens
    fallbacks = [
        # the stack's configured OpenAI URL, which answers 500 to this model
        {"onCodes": [429, {"from": 500, "to": 599}]},
        # the same provider again, with another key and a model that works
        {"headers": {"Authorization": f"Bearer {BACKUP_KEY}"}, "bodyKeyOverride": {"model": "gpt-4o-mini"}},
    ]
    client = oai(stack, **{"Helicone-Fallbacks": json.dumps(fallbacks), "Helicone-Retry-Enabled": "true",
                           "Helicone-Retry-Num": "1", "Helicone-Retry-Min-Timeout": "10",
                           "Helicone-Retry-Max-Timeout": "50"})
    raw = client.chat.completions.with_raw_response.create(model="fail-500", messages=[{"role": "user", "content": prompt}])
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream model"
    assert raw.headers["helicone-fallback-index"] == "1"

    received = [r for r in httpx.get(f"{stack.upstream}/_received", timeout=10).json()
                if r["body"].get("messages") == [{"role": "user", "content": prompt}]]
    assert [r["body"]["model"] for r in received] == ["fail-500", "fail-500", "gpt-4o-mini"]
    assert received[-1]["headers"]["authorization"] == f"Bearer {BACKUP_KEY}"

    logged = stack.wait_for_request(raw.headers["helicone-id"])
    assert logged["status"] == 200 and logged["fallback_index"] == 1 and logged["model"] == "gpt-4o-mini"
    assert logged["cost_usd"] == pytest.approx(cost(GPT4O_MINI, 3, 6))
    tries = [(a["target_url"], a["status"], a["fallback_index"], a["retry"]) for a in logged["attempts"]]
    assert tries == [(stack.upstream, 500, 0, 0), (stack.upstream, 500, 0, 1), (stack.upstream, 200, 1, 0)]
    assert all(a["provider"] == "openai" and a["latency_ms"] >= 0 for a in logged["attempts"])
    assert BACKUP_KEY not in json.dumps(logged)  # the fallback's key went to the provider, not into the log
