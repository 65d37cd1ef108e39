"""Helicone-Omit-Request/-Response, Helicone-Stream-Usage and Helicone-Request-Name: parsed (unit) and
through the gateway app against the fake provider."""

from __future__ import annotations

import json

import pytest
from helicone_core.usage import with_stream_usage
from helicone_gateway import app as gateway_app
from helicone_gateway.headers import MAX_PROPERTIES, REQUEST_NAME_PROPERTY, HeaderError, parse_helicone_headers

from services.gateway.tests.test_proxy import CHAT, started_gateway
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.inloop import request_body, serve

AUTH = {"Helicone-Auth": "Bearer good-key"}
# spaced as a person would write it: a re-serialised body would be shorter
STREAM_BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}], "stream": true}'


# ---- grammar ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [("true", True), ("false", False), ("TRUE", True), (" False ", False)])
def test_switches_accept_true_and_false(value, expected):
    hh = parse_helicone_headers([("helicone-omit-request", value), ("helicone-omit-response", value),
                                 ("helicone-stream-usage", value)])
    assert (hh.omit_request, hh.omit_response, hh.stream_usage) == (expected, expected, expected)


def test_switches_default_to_off():
    hh = parse_helicone_headers([("helicone-auth", "Bearer k")])
    assert (hh.omit_request, hh.omit_response, hh.stream_usage, hh.request_name) == (False, False, False, "")


@pytest.mark.parametrize("name, display", [("helicone-omit-request", "Helicone-Omit-Request"),
                                           ("helicone-omit-response", "Helicone-Omit-Response"),
                                           ("helicone-stream-usage", "Helicone-Stream-Usage")])
@pytest.mark.parametrize("value", ["yes", "1", "", "truee"])
def test_other_switch_values_name_the_header_and_the_accepted_form(name, display, value):
    with pytest.raises(HeaderError, match=f"{display} must be 'true' or 'false'"):
        parse_helicone_headers([(name, value)])


def test_request_name_is_a_bounded_property_beside_the_custom_ones():
    props = [(f"helicone-property-p{i}", "v") for i in range(MAX_PROPERTIES)]
    hh = parse_helicone_headers([("helicone-request-name", "n" * 256), *props])
    assert hh.request_name == "n" * 256
    logged = hh.logged_properties()
    assert logged[REQUEST_NAME_PROPERTY] == "n" * 256 and len(logged) == MAX_PROPERTIES + 1
    assert REQUEST_NAME_PROPERTY not in hh.properties  # the parsed Helicone-Property-* set is left as sent
    with pytest.raises(HeaderError, match="Helicone-Request-Name is longer than 256 characters"):
        parse_helicone_headers([("helicone-request-name", "n" * 257)])


def test_without_a_request_name_the_properties_are_logged_as_they_are():
    hh = parse_helicone_headers([("helicone-property-team", "search")])
    assert hh.logged_properties() is hh.properties  # no copy per request


# ---- with_stream_usage -----------------------------------------------------------------------

def test_stream_usage_is_added_to_a_stream_that_does_not_ask_for_it():
    out = json.loads(with_stream_usage(STREAM_BODY))
    assert out["stream_options"] == {"include_usage": True}
    assert out["messages"] == CHAT["messages"] and out["stream"] is True
    kept = json.loads(with_stream_usage(b'{"stream": true, "stream_options": {"include_usage": false, "x": 1}}'))
    assert kept["stream_options"] == {"include_usage": True, "x": 1}


@pytest.mark.parametrize("body", [
    b'{"model": "gpt-4o-mini", "stream": false}',
    b'{"model": "gpt-4o-mini"}',
    b'{"stream": "true"}',
    b'{"stream": true, "stream_options": {"include_usage": true}}',
    b'{"stream": true, "stream_options": "weird"}',
    b"[1, 2]",
    b"not json",
    b"\xff\xfe",
    b"",
])
def test_anything_else_is_returned_byte_for_byte(body):
    assert with_stream_usage(body) is body


def test_a_stream_whose_json_holds_a_lone_surrogate_still_asks_for_usage():
    """An escaped lone surrogate is valid JSON but not UTF-8: the body is written back with it escaped, as it came."""
    body = b'{"stream": true, "messages": [{"role": "user", "content": "cut emoji \\ud83d"}]}'
    out = with_stream_usage(body)
    assert b"\\ud83d" in out and json.loads(out)["stream_options"] == {"include_usage": True}


def test_json_nested_past_the_recursion_limit_is_returned_byte_for_byte():
    body = b"[" * 100_000 + b"]" * 100_000
    assert with_stream_usage(body) is body


# ---- through the gateway ---------------------------------------------------------------------

@pytest.fixture
async def gateway(tmp_path):
    """(in-process gateway client, fake provider app, events the gateway built)"""
    fake = create_fake_upstream()
    async with serve(fake) as upstream_url, started_gateway(
        tmp_path, openai_url=upstream_url, anthropic_url=upstream_url
    ) as (client, built):
        yield client, fake, built


async def test_omit_request_drops_only_the_request_body_from_the_log(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Omit-Request": "true"})
    assert r.status_code == 200
    assert fake.state.received[-1]["body"] == CHAT  # the provider gets the body all the same
    [ev] = built
    assert ev.inline.request_body == b"" and not ev.inline.request_truncated
    assert json.loads(ev.inline.response_body) == r.json()
    assert ev.status == 200 and ev.model == "gpt-4o-mini"
    assert (ev.usage.prompt_tokens, ev.usage.completion_tokens, ev.usage.known) == (3, 6, True)
    assert ev.cost_known and ev.cost_usd == pytest.approx((3 * 0.15 + 6 * 0.60) / 1e6)


async def test_omit_response_drops_only_the_response_body_and_usage_is_still_read(gateway):
    client, _, built = gateway
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    r = await client.post("/v1/chat/completions", json=body, headers={**AUTH, "Helicone-Omit-Response": "true"})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")  # the caller gets every byte
    [ev] = built
    assert ev.inline.response_body == b"" and not ev.inline.response_truncated
    assert json.loads(ev.inline.request_body) == body
    assert ev.streamed and ev.usage.known and ev.usage.completion_tokens == 6 and ev.cost_known


async def test_omit_both_and_false_values(gateway):
    client, _, built = gateway
    await client.post("/v1/chat/completions", json=CHAT,
                      headers={**AUTH, "Helicone-Omit-Request": "true", "Helicone-Omit-Response": "true"})
    await client.post("/v1/chat/completions", json=CHAT,
                      headers={**AUTH, "Helicone-Omit-Request": "false", "Helicone-Omit-Response": "false"})
    omitted, kept = built
    assert (omitted.inline.request_body, omitted.inline.response_body) == (b"", b"")
    assert omitted.usage.known and omitted.status == 200
    assert json.loads(kept.inline.request_body) == CHAT and json.loads(kept.inline.response_body)["usage"]


async def test_omitted_bodies_stay_out_of_the_log_of_a_failed_request(gateway):
    client, _, built = gateway
    body = dict(CHAT, model="fail-500")
    r = await client.post("/v1/chat/completions", json=body,
                          headers={**AUTH, "Helicone-Omit-Request": "true", "Helicone-Omit-Response": "true"})
    assert r.status_code == 500
    [ev] = built
    assert ev.status == 500 and (ev.inline.request_body, ev.inline.response_body) == (b"", b"")


@pytest.mark.parametrize("header", ["Helicone-Omit-Request", "Helicone-Omit-Response", "Helicone-Stream-Usage"])
async def test_bad_switch_values_are_a_400_before_anything_is_sent_or_logged(gateway, header):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, header: "yes"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "helicone_header_error" and error["message"] == f"{header} must be 'true' or 'false', got 'yes'"
    assert fake.state.received == [] and built == []


async def test_stream_usage_asks_the_provider_for_usage_and_it_is_logged(gateway):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", content=STREAM_BODY,
                          headers={**AUTH, "Helicone-Stream-Usage": "true", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    received = fake.state.received[-1]
    assert received["body"]["stream_options"] == {"include_usage": True}
    assert int(received["headers"]["content-length"]) == len(with_stream_usage(STREAM_BODY)) != len(STREAM_BODY)
    [ev] = built
    assert ev.streamed and ev.usage.known and (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (3, 6)
    assert ev.cost_known and ev.cost_usd > 0
    assert json.loads(ev.inline.request_body)["stream_options"] == {"include_usage": True}  # what was sent


async def test_without_stream_usage_a_stream_has_no_usage_and_is_forwarded_as_sent(gateway):
    client, fake, built = gateway
    for headers in ({}, {"Helicone-Stream-Usage": "false"}):
        r = await client.post("/v1/chat/completions", content=STREAM_BODY,
                              headers={**AUTH, **headers, "Content-Type": "application/json"})
        assert r.status_code == 200
        received = fake.state.received[-1]
        assert "stream_options" not in received["body"]
        assert int(received["headers"]["content-length"]) == len(STREAM_BODY)
    assert [ev.usage.known for ev in built] == [False, False]


async def test_stream_usage_leaves_non_streaming_and_non_json_bodies_untouched(gateway):
    client, fake, built = gateway
    plain = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}'
    r = await client.post("/v1/chat/completions", content=plain,
                          headers={**AUTH, "Helicone-Stream-Usage": "true", "Content-Type": "application/json"})
    assert r.status_code == 200 and built[-1].usage.known
    assert int(fake.state.received[-1]["headers"]["content-length"]) == len(plain)
    assert built[-1].inline.request_body == plain
    r = await client.post("/v1/audio/transcriptions", content=b"\x00binary\xff",
                          headers={**AUTH, "Helicone-Stream-Usage": "true", "Content-Type": "application/octet-stream"})
    assert built[-1].inline.request_body == b"\x00binary\xff"


def strict_provider(received: list):
    """An OpenAI-format provider that, like Mistral's API, refuses stream_options with a 422 and sends the
    usage in its stream's last chunk all the same (received: (path, body) of each request)."""
    async def app(scope, receive, send):
        body = await request_body(receive)
        received.append((scope["path"], body))
        if "stream_options" in json.loads(body):
            answer, status, ctype = b'{"detail": [{"type": "extra_forbidden", "loc": ["body", "stream_options"]}]}', 422, b"application/json"
        else:
            chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "mistral-small-latest",
                     "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
            answer, status, ctype = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode(), 200, b"text/event-stream"
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": answer})
    return app


@pytest.mark.parametrize("path, sent_to", [("/mistral/v1/chat/completions", "/v1/chat/completions"),
                                           ("/v1/responses", "/v1/responses")])
async def test_stream_usage_leaves_the_body_as_sent_where_the_api_refuses_stream_options(tmp_path, path, sent_to):
    """Mistral refuses stream_options (and streams its usage anyway); OpenAI's Responses API does not take it
    (its stream's response.completed carries the usage): the request must not break because of the header."""
    received: list = []
    async with serve(strict_provider(received)) as url, started_gateway(
        tmp_path, openai_url=url, anthropic_url=url, provider_urls={"mistral": url}
    ) as (client, built):
        r = await client.post(path, content=STREAM_BODY,
                              headers={**AUTH, "Helicone-Stream-Usage": "true", "Content-Type": "application/json"})
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n")
    assert received == [(sent_to, STREAM_BODY)]
    [ev] = built
    assert ev.status == 200 and ev.inline.request_body == STREAM_BODY
    assert ev.usage.known and (ev.usage.prompt_tokens, ev.usage.completion_tokens) == (3, 1)


async def test_stream_usage_is_not_applied_to_anthropic_requests(gateway, monkeypatch):
    client, fake, _ = gateway
    calls = []
    monkeypatch.setattr(gateway_app, "with_stream_usage", lambda body: calls.append(body) or body)
    body = {"model": "claude-3-5-haiku-latest", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post("/v1/messages", json=body, headers={**AUTH, "Helicone-Stream-Usage": "true"})
    assert r.status_code == 200 and calls == []
    assert "stream_options" not in fake.state.received[-1]["body"]


async def test_without_the_headers_no_body_is_parsed_or_rewritten(gateway, monkeypatch):
    client, fake, built = gateway
    calls = []
    monkeypatch.setattr(gateway_app, "with_stream_usage", lambda body: calls.append(body) or body)
    r = await client.post("/v1/chat/completions", content=STREAM_BODY, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 200 and calls == []
    r = await client.post("/v1/chat/completions", content=STREAM_BODY,
                          headers={**AUTH, "Helicone-Stream-Usage": "true", "Content-Type": "application/json"})
    assert r.status_code == 200 and calls == [STREAM_BODY]  # the hook is the one the gateway calls
    assert built[0].inline.request_body == STREAM_BODY and REQUEST_NAME_PROPERTY not in built[0].properties


async def test_request_name_is_logged_as_a_property(gateway):
    client, _, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT,
                          headers={**AUTH, "Helicone-Request-Name": "Weekly digest", "Helicone-Property-Team": "search"})
    assert r.status_code == 200
    assert dict(built[0].properties) == {"team": "search", "helicone-request-name": "Weekly digest"}
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Request-Name": "x" * 257})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Helicone-Request-Name is longer than 256 characters"
    assert len(built) == 1


# ---- JSON nested past the recursion limit ------------------------------------------------------

DEEP = b"[" * 5_000 + b"]" * 5_000  # valid JSON that json.loads cannot read (RecursionError, not ValueError)


async def test_a_request_whose_json_nests_past_the_recursion_limit_is_forwarded_and_logged(gateway):
    """Its model cannot be read from it; the request still goes to the provider as sent, and is logged."""
    client, fake, built = gateway
    body = b'{"model": "gpt-4o-mini", "messages": [], "metadata": ' + DEEP + b"}"
    r = await client.post("/v1/chat/completions", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code < 500 or r.headers.get("helicone-id"), r.text  # whatever the provider says, not the gateway's 500
    [ev] = built
    assert ev.inline.request_body == body and ev.status == r.status_code


async def test_fallbacks_nested_past_the_recursion_limit_are_a_400_naming_the_header(gateway):
    client, _, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT,
                          headers={**AUTH, "Helicone-Fallbacks": DEEP.decode()})
    assert r.status_code == 400 and "Helicone-Fallbacks" in r.json()["error"]["message"], r.text


async def test_a_body_override_for_a_body_nested_past_the_recursion_limit_is_a_400(gateway):
    client, fake, _ = gateway
    fallbacks = [{"onCodes": [{"from": 500, "to": 599}]}, {"bodyKeyOverride": {"model": "gpt-4o-mini"}}]
    body = b'{"model": "gpt-4o-mini", "messages": [], "metadata": ' + DEEP + b"}"
    r = await client.post("/v1/chat/completions", content=body,
                          headers={**AUTH, "Content-Type": "application/json", "Helicone-Fallbacks": json.dumps(fallbacks)})
    assert r.status_code == 400 and "bodyKeyOverride" in r.json()["error"]["message"], r.text


# ---- Helicone-Model-Override -------------------------------------------------------------------

async def test_model_override_names_the_logged_model_and_prices_it_while_the_provider_gets_the_body_as_sent(gateway):
    from helicone_core.cost import CostRegistry, TokenCounts

    client, fake, built = gateway
    sent = b'{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "one two three"}]}'  # spaced: byte-exact
    costs = CostRegistry.default()
    for override in ("gpt-4o", "acme-support-bot"):  # a priced model; an alias no price list knows
        r = await client.post("/v1/chat/completions", content=sent, headers={
            **AUTH, "Helicone-Model-Override": f" {override} ", "Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["model"] == "gpt-4o-mini"  # the provider answered for the body's model
        received = fake.state.received[-1]
        assert received["body"]["model"] == "gpt-4o-mini" and int(received["headers"]["content-length"]) == len(sent)
        assert not any(name.startswith("helicone-") for name in received["headers"])
        ev = built[-1]
        tokens = TokenCounts(prompt_tokens=ev.usage.prompt_tokens, completion_tokens=ev.usage.completion_tokens)
        expected = costs.cost("openai", override, tokens)
        assert ev.model == override and ev.usage.known and ev.inline.request_body == sent
        assert (ev.cost_known, ev.cost_usd) == (expected is not None, pytest.approx(expected or 0.0))
    priced = built[0]
    assert priced.cost_usd != pytest.approx(costs.cost("openai", "gpt-4o-mini", TokenCounts(
        prompt_tokens=priced.usage.prompt_tokens, completion_tokens=priced.usage.completion_tokens)))
    r = await client.post("/v1/chat/completions", content=sent, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 200 and built[-1].model == "gpt-4o-mini"  # without it: the answer's model, as before


@pytest.mark.parametrize("value", ["", "   ", "m" * 257, "gpt\t4o"])
async def test_a_bad_model_override_is_a_400_naming_the_header_before_anything_is_sent(gateway, value):
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "Helicone-Model-Override": value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "helicone_header_error" and error["message"].startswith("Helicone-Model-Override ")
    assert "256 characters" in error["message"]
    assert fake.state.received == [] and built == []


# ---- the end user: Helicone-User-Id, else the body's `user` ------------------------------------

async def test_the_bodys_user_parameter_is_the_logged_user_when_no_user_header_is_sent(gateway):
    """Helicone's user metrics take OpenAI's `user` request parameter as the user when no
    Helicone-User-Id is sent (the header wins when both are); the gateway logged such requests with no
    user at all. A `user` that could not be a Helicone-User-Id (not a string, empty, too long, control
    characters) is not one; the body goes to the provider as sent either way."""
    client, fake, built = gateway
    r = await client.post("/v1/chat/completions", json=dict(CHAT, user="alice"), headers=AUTH)
    assert r.status_code == 200 and fake.state.received[-1]["body"]["user"] == "alice"
    assert built[-1].user_id == "alice"
    r = await client.post("/v1/chat/completions", json=dict(CHAT, user="alice"), headers={**AUTH, "Helicone-User-Id": "bob"})
    assert r.status_code == 200 and built[-1].user_id == "bob"
    for user in (42, "", "u" * 513, "a\nb"):
        r = await client.post("/v1/chat/completions", json=dict(CHAT, user=user), headers=AUTH)
        assert r.status_code == 200 and built[-1].user_id == "", user
    # a body the caller hid from the log (Helicone-Omit-Request) names no user either
    r = await client.post("/v1/chat/completions", json=dict(CHAT, user="alice"), headers={**AUTH, "Helicone-Omit-Request": "true"})
    assert r.status_code == 200 and built[-1].user_id == "" and built[-1].inline.request_body == b""
