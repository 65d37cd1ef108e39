"""Helicone-RateLimit-Policy through the embedded stack, driven by the official openai SDK: the quota
is served with Helicone-RateLimit-* headers, the next request is a 429 the SDK reports as
RateLimitError (same headers, Retry-After), and the refused request is logged with status 429."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.e2e.test_request_path import oai

pytestmark = pytest.mark.e2e


def test_openai_sdk_gets_a_429_with_helicone_rate_limit_headers_once_the_quota_is_spent(stack):
    user = f"rl-{uuid.uuid4().hex}"  # a bucket of its own
    client = oai(stack, **{"Helicone-RateLimit-Policy": "2;w=60;s=user", "Helicone-User-Id": user})
    messages = [{"role": "user", "content": "rate limit me"}]
    served = [client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages) for _ in range(2)]
    assert [r.headers["helicone-ratelimit-remaining"] for r in served] == ["1", "0"]
    assert all(r.headers["helicone-ratelimit-limit"] == "2" and r.headers["helicone-ratelimit-policy"] == "2;w=60;s=user"
               for r in served)
    assert served[0].parse().choices[0].message.content == "Hello from the fake upstream model"

    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    refused = err.value.response
    assert refused.status_code == 429 and "2;w=60;s=user" in err.value.message
    assert refused.headers["helicone-ratelimit-limit"] == "2" and refused.headers["helicone-ratelimit-remaining"] == "0"
    assert refused.headers["helicone-ratelimit-policy"] == "2;w=60;s=user"
    assert 0 < int(refused.headers["helicone-ratelimit-reset"]) <= 60 and 0 < int(refused.headers["retry-after"]) <= 30
    assert refused.headers["helicone-region"] == stack.region

    logged = stack.wait_for_request(refused.headers["helicone-id"])
    assert logged["status"] == 429 and logged["user_id"] == user and "Rate limit" in logged["error"]
    # another user of the same policy is not held up by this one
    other = oai(stack, **{"Helicone-RateLimit-Policy": "2;w=60;s=user", "Helicone-User-Id": user + "-other"})
    assert other.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages).headers["helicone-ratelimit-remaining"] == "1"
