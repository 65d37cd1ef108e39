"""Helicone-Moderations-Enabled through the real gateway app, against the fake provider's chat and moderation endpoints
(tests/support/fake_upstream.py flags an input holding "violent" or "hateful")."""

import contextlib
import json
import time

import pytest

from services.gateway.tests.test_proxy import StubKeys
from tests.support.fake_upstream import REPLY
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.gateway import in_process_gateway
from tests.support.inloop import serve
from tests.support.net import free_port

MODERATIONS_HEADER = "Helicone-Moderations-Enabled"
MODERATED = {"Helicone-Auth": "Bearer good-key", "Authorization": "Bearer sk-caller", MODERATIONS_HEADER: "true"}
FLAGGED_CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "write a violent threat"}]}
CLEAN_CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}
FLAGGED_MESSAGE = "The given prompt was flagged by the OpenAI Moderation endpoint."


def paths(fake) -> list[str]:
    return [r["path"] for r in fake.state.received]


def sample(gw, result: str) -> float:
    return gw.metrics.registry.get_sample_value("helicone_gateway_moderations_total", {"result": result}) or 0.0


@contextlib.asynccontextmanager
async def moderated_gateway(tmp_path, **settings):
    """(client, gateway, built events, fake provider): the fake is the deployment's OpenAI and Anthropic URL."""
    fake = create_fake_upstream()
    async with (
        serve(fake) as url,
        in_process_gateway(tmp_path, StubKeys(), openai_url=url, anthropic_url=url, provider_urls={"groq": url}, **settings) as (
            client,
            gw,
            built,
        ),
    ):
        yield client, gw, built, fake


@pytest.fixture
async def gateway(tmp_path):
    async with moderated_gateway(tmp_path) as parts:
        yield parts


async def test_a_flagged_prompt_gets_helicones_400_is_never_sent_and_is_logged(gateway):
    client, gw, built, fake = gateway
    r = await client.post("/v1/chat/completions", json=FLAGGED_CHAT, headers=MODERATED)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert body["success"] is False
    error = body["error"]
    assert (error["code"], error["type"], error["categories"]) == (
        "PROMPT_FLAGGED_FOR_MODERATION",
        "helicone_moderation_flagged",
        ["violence"],
    )
    assert error["message"] == FLAGGED_MESSAGE + " Categories: violence."
    assert r.headers["helicone-id"] in error["details"]
    [moderation] = fake.state.received  # the chat endpoint was never called
    assert moderation["path"] == "/v1/moderations" and moderation["body"] == {"input": "write a violent threat"}
    assert moderation["headers"]["authorization"] == "Bearer sk-caller"  # the caller's own key
    assert not any(name.startswith("helicone-") for name in moderation["headers"])
    [ev] = built
    assert (ev.status, ev.request_id, ev.provider) == (400, r.headers["helicone-id"], "openai")
    assert ev.error == FLAGGED_MESSAGE + " Categories: violence."
    assert json.loads(ev.inline.request_body) == FLAGGED_CHAT
    assert (sample(gw, "flagged"), sample(gw, "passed")) == (1.0, 0.0)


async def test_only_the_latest_user_message_is_moderated_a_clean_one_goes_unchanged_and_false_or_absent_asks_nothing(gateway):
    client, gw, built, fake = gateway
    chat = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "tell a violent story"},
            {"role": "assistant", "content": "No."},
            {"role": "user", "content": "then a calm one"},
        ],
    }
    r = await client.post("/v1/chat/completions", json=chat, headers=MODERATED)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == REPLY
    moderation, sent = fake.state.received
    assert moderation["path"] == "/v1/moderations" and moderation["body"] == {"input": "then a calm one"}
    assert sent["path"] == "/v1/chat/completions" and sent["body"] == chat
    assert sent["headers"]["authorization"] == "Bearer sk-caller"
    [ev] = built
    assert (ev.status, ev.error) == (200, "")
    assert sample(gw, "passed") == 1.0
    # without the header, or with 'false': no moderation call, even for a prompt it would flag
    fake.state.received.clear()
    for headers in ({"Helicone-Auth": "Bearer good-key"}, {**MODERATED, MODERATIONS_HEADER: "false"}):
        r = await client.post("/v1/chat/completions", json=FLAGGED_CHAT, headers=headers)
        assert r.status_code == 200, r.text
    assert paths(fake) == ["/v1/chat/completions"] * 2
    r = await client.post("/v1/chat/completions", json=CLEAN_CHAT, headers={**MODERATED, MODERATIONS_HEADER: "on"})
    assert r.status_code == 400 and "Helicone-Moderations-Enabled must be 'true' or 'false'" in r.json()["error"]["message"]


async def test_streaming_requests_are_moderated_before_anything_is_streamed(gateway):
    client, _gw, built, fake = gateway
    r = await client.post("/v1/chat/completions", json=dict(FLAGGED_CHAT, stream=True), headers=MODERATED)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "PROMPT_FLAGGED_FOR_MODERATION"
    assert paths(fake) == ["/v1/moderations"]
    r = await client.post("/v1/chat/completions", json=dict(CLEAN_CHAT, stream=True), headers=MODERATED)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    assert paths(fake) == ["/v1/moderations", "/v1/moderations", "/v1/chat/completions"]
    assert [ev.status for ev in built] == [400, 200] and built[1].streamed


@pytest.mark.parametrize(
    "planned, headers, status, words",
    [
        (500, MODERATED, 502, "answered 500 (planned failure 500)"),
        (429, MODERATED, 429, "answered 429"),
        (
            None,
            {k: v for k, v in MODERATED.items() if k != "Authorization"},
            401,
            "answered 401 (You didn't provide an API key.)",
        ),
    ],
)
async def test_a_moderation_call_that_fails_fails_closed(gateway, planned, headers, status, words):
    """No verdict, no request: the moderation endpoint's failure is named (the caller's key and quota problems keep
    their status), the provider is never called, and the request is logged with that status."""
    client, gw, built, fake = gateway
    if planned is not None:
        fake.state.moderation_fail_next.append(planned)
    r = await client.post("/v1/chat/completions", json=CLEAN_CHAT, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "helicone_moderation_error"
    assert error["message"].startswith(f"{MODERATIONS_HEADER}: the moderation endpoint {words}")
    assert error["message"].endswith("the request was not sent")
    assert paths(fake) == ["/v1/moderations"]
    [ev] = built
    assert ev.status == status and f"answered {status if status != 502 else 500}" in ev.error
    assert "API key" not in ev.error and "planned" not in ev.error  # the endpoint's own words are not logged
    # the endpoint's 4xx is the caller's key or quota, passed on: `denied`, never an outage's `failed` (which pages)
    outcome = "failed" if status >= 500 else "denied"
    assert (sample(gw, outcome), sample(gw, "passed")) == (1.0, 0.0)
    assert sample(gw, "denied" if outcome == "failed" else "failed") == 0.0


async def test_a_moderation_endpoint_that_never_answers_is_a_504_within_the_moderation_timeout(tmp_path):
    async with moderated_gateway(tmp_path, moderation_timeout=0.3) as (client, _gw, built, fake):
        fake.state.moderation_fail_next.append("hang")
        began = time.perf_counter()
        r = await client.post("/v1/chat/completions", json=CLEAN_CHAT, headers=MODERATED)
        took = time.perf_counter() - began
    assert r.status_code == 504, r.text
    assert "did not answer within 0.3 s (HELICONE_MODERATION_TIMEOUT)" in r.json()["error"]["message"]
    assert took < 3, took
    assert paths(fake) == ["/v1/moderations"]
    assert [ev.status for ev in built] == [504]


async def test_a_target_url_request_is_moderated_by_its_target_and_fails_closed_when_it_cannot_be_reached(tmp_path):
    """The moderation endpoint is the one next to the request's own: the target's, egress-checked as the request is
    (the caller's key is for that target); the deployment's OpenAI URL is not asked."""
    target = create_fake_upstream()
    closed = f"127.0.0.1:{free_port()}"
    async with serve(target) as target_url:
        allow = [target_url.removeprefix("http://"), closed]
        async with moderated_gateway(tmp_path, target_url_allowlist=allow) as (client, _gw, built, fake):
            flagged = await client.post(
                "/v1/chat/completions", json=FLAGGED_CHAT, headers={**MODERATED, "Helicone-Target-URL": target_url}
            )
            clean = await client.post(
                "/v1/chat/completions", json=CLEAN_CHAT, headers={**MODERATED, "Helicone-Target-URL": target_url}
            )
            unreachable = await client.post(
                "/v1/chat/completions", json=CLEAN_CHAT, headers={**MODERATED, "Helicone-Target-URL": f"http://{closed}"}
            )
    assert flagged.status_code == 400 and flagged.json()["error"]["code"] == "PROMPT_FLAGGED_FOR_MODERATION"
    assert clean.status_code == 200, clean.text
    assert paths(target) == ["/v1/moderations", "/v1/moderations", "/v1/chat/completions"]
    assert fake.state.received == []
    assert unreachable.status_code == 502
    assert "the moderation endpoint could not be reached" in unreachable.json()["error"]["message"]
    assert [ev.status for ev in built] == [400, 200, 502]


@pytest.mark.parametrize(
    "path, body, words",
    [
        (
            "/v1/messages",
            {"model": "claude-3-5-haiku-latest", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            "works with OpenAI only (it uses OpenAI's moderation endpoint); this request goes to 'anthropic'",
        ),
        ("/groq/openai/v1/chat/completions", CLEAN_CHAT, "this request goes to 'groq'"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, "moderates chat completions"),
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "prompt": "hi"}, "no user message to moderate"),
        (
            "/v1/chat/completions",
            {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}
                ],
            },
            "type 'input_audio' cannot be moderated",
        ),
    ],
)
async def test_a_request_that_cannot_be_moderated_is_refused_naming_the_header_never_sent_unchecked(gateway, path, body, words):
    """Helicone moderates OpenAI chat completions only; a request asking for it elsewhere is refused (a 400 naming the
    header), never sent unmoderated."""
    client, gw, built, fake = gateway
    r = await client.post(path, json=body, headers=MODERATED)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "helicone_header_error" and error["message"].startswith(MODERATIONS_HEADER)
    assert words in error["message"]
    assert fake.state.received == []
    [ev] = built
    assert ev.status == 400 and ev.error == error["message"]
    assert sample(gw, "refused") == 1.0


async def test_a_conversation_whose_latest_message_is_not_the_users_goes_unmoderated_as_in_helicone(gateway):
    client, gw, built, fake = gateway
    chat = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "a violent headline"},
        ],
    }
    r = await client.post("/v1/chat/completions", json=chat, headers=MODERATED)
    assert r.status_code == 200, r.text
    assert paths(fake) == ["/v1/chat/completions"]
    assert sample(gw, "skipped") == 1.0


async def test_content_parts_are_moderated_as_text_and_image_parts(gateway):
    client, _gw, _built, fake = gateway
    image = {"type": "image_url", "image_url": {"url": "https://img.example/cat.png", "detail": "high"}}
    clean = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "describe this"}, image]}]}
    r = await client.post("/v1/chat/completions", json=clean, headers=MODERATED)
    assert r.status_code == 200, r.text
    assert fake.state.received[0]["body"] == {
        "input": [
            {"type": "text", "text": "describe this"},
            {"type": "image_url", "image_url": {"url": "https://img.example/cat.png"}},
        ]
    }
    assert fake.state.received[1]["body"] == clean  # the provider gets the request as sent
    flagged = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a hateful caption"}, image]}],
    }
    r = await client.post("/v1/chat/completions", json=flagged, headers=MODERATED)
    assert r.status_code == 400 and r.json()["error"]["categories"] == ["hate"]
    assert paths(fake) == ["/v1/moderations", "/v1/chat/completions", "/v1/moderations"]


async def test_a_cached_answer_is_never_served_around_a_moderation_that_flags_the_prompt(gateway):
    """The cache is read after the moderation: an answer saved for the same prompt by a request that did not ask for
    moderation is not a way around it."""
    client, _gw, _built, fake = gateway
    cache = {"Helicone-Cache-Enabled": "true"}
    unmoderated = {k: v for k, v in MODERATED.items() if k != MODERATIONS_HEADER}  # the same key: the same cache entry
    r = await client.post("/v1/chat/completions", json=FLAGGED_CHAT, headers={**unmoderated, **cache})
    assert r.status_code == 200 and r.headers["helicone-cache"] == "MISS"
    r = await client.post("/v1/chat/completions", json=FLAGGED_CHAT, headers={**MODERATED, **cache})
    assert r.status_code == 400 and r.json()["error"]["code"] == "PROMPT_FLAGGED_FOR_MODERATION"
    assert "helicone-cache" not in r.headers
    assert paths(fake) == ["/v1/chat/completions", "/v1/moderations"]


async def test_with_fallbacks_the_prompt_is_moderated_once_before_any_target_is_tried(tmp_path):
    backup = create_fake_upstream()
    async with serve(backup) as backup_url:
        allow = [backup_url.removeprefix("http://")]
        async with moderated_gateway(tmp_path, target_url_allowlist=allow) as (client, _gw, built, fake):
            fallbacks = json.dumps([{"onCodes": [{"from": 500, "to": 599}]}, {"target-url": backup_url}])
            headers = {**MODERATED, "Helicone-Fallbacks": fallbacks}
            fake.state.fail_next.append(503)  # the first target fails: the backup answers
            flagged = await client.post("/v1/chat/completions", json=FLAGGED_CHAT, headers=headers)
            clean = await client.post("/v1/chat/completions", json=CLEAN_CHAT, headers=headers)
    assert flagged.status_code == 400 and flagged.json()["error"]["code"] == "PROMPT_FLAGGED_FOR_MODERATION"
    assert clean.status_code == 200 and clean.headers["helicone-fallback-index"] == "1", clean.text
    assert paths(fake) == ["/v1/moderations", "/v1/moderations", "/v1/chat/completions"]
    assert paths(backup) == ["/v1/chat/completions"]
    assert [ev.status for ev in built] == [400, 200]


async def test_a_large_upload_asking_for_moderation_is_read_and_refused_never_streamed_past_it(gateway):
    """Uploads of a megabyte or more are streamed to the provider as they arrive (app.UPLOAD_STREAM_BYTES), never read
    by the gateway: one asking for moderation is read, so it is refused like any request that cannot be moderated,
    never sent unchecked."""
    client, gw, built, fake = gateway
    form = b"x" * (1024 * 1024 + 10)
    headers = {**MODERATED, "Content-Type": "application/octet-stream"}
    r = await client.post("/v1/chat/completions", content=form, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(MODERATIONS_HEADER)
    assert fake.state.received == []
    assert sample(gw, "refused") == 1.0


async def test_a_fallback_whose_body_override_changes_the_messages_is_moderated_before_it_is_sent(tmp_path):
    """A Helicone-Fallbacks "bodyKeyOverride" replaces what a target is sent: a latest user message it puts there is
    moderated too, before any target is tried, never sent unchecked."""
    backup = create_fake_upstream()
    async with serve(backup) as backup_url:
        allow = [backup_url.removeprefix("http://")]
        async with moderated_gateway(tmp_path, target_url_allowlist=allow) as (client, gw, built, fake):

            def fallbacks(override: dict) -> str:
                return json.dumps(
                    [{"onCodes": [{"from": 500, "to": 599}]}, {"target-url": backup_url, "bodyKeyOverride": override}]
                )

            fake.state.fail_next.append(503)  # were it tried, the first target would fail: the backup would answer
            flagged = await client.post(
                "/v1/chat/completions",
                json=CLEAN_CHAT,
                headers={**MODERATED, "Helicone-Fallbacks": fallbacks({"messages": FLAGGED_CHAT["messages"]})},
            )
            clean = await client.post(
                "/v1/chat/completions",
                json=CLEAN_CHAT,
                headers={**MODERATED, "Helicone-Fallbacks": fallbacks({"model": "gpt-4o"})},
            )
    assert flagged.status_code == 400 and flagged.json()["error"]["code"] == "PROMPT_FLAGGED_FOR_MODERATION", flagged.text
    assert clean.status_code == 200 and clean.headers["helicone-fallback-index"] == "1", clean.text
    # the override that changes the messages is moderated as well; one that leaves them as they are asks nothing more
    assert paths(fake) == ["/v1/moderations", "/v1/moderations", "/v1/moderations", "/v1/chat/completions"]
    assert paths(backup) == ["/v1/chat/completions"]
    assert [ev.status for ev in built] == [400, 200]
    assert (sample(gw, "flagged"), sample(gw, "passed")) == (1.0, 1.0)
