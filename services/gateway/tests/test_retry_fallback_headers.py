"""Helicone-Retry-* and Helicone-Fallbacks: what the gateway accepts, and the 400 it gives otherwise."""

import datetime as dt
import email.utils
import json

import pytest
from helicone_gateway.headers import HeaderError, parse_helicone_headers
from helicone_gateway.resilience import RetryPolicy, merge_body, retry_after_seconds


def parsed(**headers):
    return parse_helicone_headers([(k.replace("_", "-").lower(), v) for k, v in headers.items()])


def test_retries_are_off_unless_enabled_and_take_helicones_defaults():
    assert parsed(helicone_auth="Bearer k").retry is None
    assert parsed(helicone_retry_enabled="false", helicone_retry_num="3").retry is None
    assert parsed(helicone_retry_enabled="true").retry == RetryPolicy(retries=5, factor=2.0, min_ms=1000, max_ms=10000)
    policy = parsed(helicone_retry_enabled="TRUE", helicone_retry_num="3", helicone_retry_factor="1.5",
                    helicone_retry_min_timeout="10", helicone_retry_max_timeout="200").retry
    assert policy == RetryPolicy(retries=3, factor=1.5, min_ms=10, max_ms=200)


@pytest.mark.parametrize("headers, message", [
    ({"helicone-retry-enabled": "yes"}, "Helicone-Retry-Enabled must be 'true' or 'false'"),
    ({"helicone-retry-enabled": "true", "helicone-retry-num": "-1"}, "Helicone-Retry-Num must be a whole number of retries from 0 to 10"),
    ({"helicone-retry-enabled": "true", "helicone-retry-num": "11"}, "Helicone-Retry-Num must be"),
    ({"helicone-retry-enabled": "true", "helicone-retry-num": "2.5"}, "Helicone-Retry-Num must be"),
    ({"helicone-retry-enabled": "true", "helicone-retry-factor": "0.5"}, "Helicone-Retry-Factor must be a number from 1 to 10"),
    ({"helicone-retry-enabled": "true", "helicone-retry-factor": "nan"}, "Helicone-Retry-Factor must be"),
    ({"helicone-retry-enabled": "true", "helicone-retry-min-timeout": "1s"}, "Helicone-Retry-Min-Timeout must be whole milliseconds"),
    ({"helicone-retry-enabled": "true", "helicone-retry-max-timeout": "60001"}, "Helicone-Retry-Max-Timeout must be whole milliseconds from 0 to 60000"),
    ({"helicone-retry-enabled": "true", "helicone-retry-min-timeout": "20000"},
     r"Helicone-Retry-Min-Timeout \(20000 ms\) is above Helicone-Retry-Max-Timeout \(10000 ms, the default\)"),
    ({"helicone-retry-num": "x"}, "Helicone-Retry-Num must be"),  # checked even while retries are off
    ({"helicone-retry-count": "3"}, "unknown header 'helicone-retry-count'; retry headers are Helicone-Retry-Enabled"),
])
def test_bad_retry_values_name_the_header_and_the_accepted_form(headers, message):
    with pytest.raises(HeaderError, match=message):
        parse_helicone_headers(list(headers.items()))


def test_fallbacks_in_helicones_format():
    value = json.dumps([
        {"target-url": "https://api.openai.com/", "headers": {}, "onCodes": [429, {"from": 500, "to": 599}]},
        {"target-url": "https://backup.example", "headers": {"Authorization": "Bearer sk-2"}, "onCodes": [],
         "bodyKeyOverride": {"model": "gpt-4o"}},
        {"provider": "anthropic", "headers": {"x-api-key": "k"}},  # extensions: no target-url, a provider
    ])
    first, second, third = parsed(helicone_fallbacks=value).fallbacks
    assert first.target_url == "https://api.openai.com" and first.on_codes == ((429, 429), (500, 599))
    assert first.falls_back_on(429) and first.falls_back_on(503) and not first.falls_back_on(400)
    assert second.headers == (("authorization", "Bearer sk-2"),) and second.body_override == {"model": "gpt-4o"}
    assert (third.target_url, third.provider, third.on_codes) == ("", "anthropic", ())
    assert parsed(helicone_auth="Bearer k").fallbacks is None


@pytest.mark.parametrize("value, message", [
    ("not json", r"Helicone-Fallbacks must be a JSON list of targets, e\.g\."),
    ("[]", "Helicone-Fallbacks must be a JSON list"),
    (json.dumps({"target-url": "https://a"}), "Helicone-Fallbacks must be a JSON list"),
    (json.dumps([{"target-url": "https://a"}] * 11), "at most 10"),
    (json.dumps(["https://a"]), r"Helicone-Fallbacks\[0\] must be a JSON object"),
    (json.dumps([{"targetUrl": "https://a"}]), r"Helicone-Fallbacks\[0\] has unknown key 'targetUrl'; keys are target-url"),
    (json.dumps([{}, {"target-url": "ftp://a"}]), r'Helicone-Fallbacks\[1\]\."target-url" must be an absolute http\(s\) URL'),
    (json.dumps([{"target-url": "https://u:p@a"}]), r'Helicone-Fallbacks\[0\]\."target-url" must not contain credentials'),
    (json.dumps([{"target-url": "http://127.1"}]), "non-standard form"),
    (json.dumps([{"target-url": 5}]), "must be a string"),
    (json.dumps([{"provider": "acme"}]), r'"provider" must be one of openai, anthropic'),
    (json.dumps([{"onCodes": "500"}]), r'"onCodes" must be a list of status codes \(100-599\) and ranges'),
    (json.dumps([{"onCodes": [{"from": 599, "to": 500}]}]), '"onCodes" must be a list'),
    (json.dumps([{"onCodes": [700]}]), '"onCodes" must be a list'),
    (json.dumps([{"onCodes": [True]}]), '"onCodes" must be a list'),
    (json.dumps([{"headers": ["a"]}]), '"headers" must be a JSON object of header names to string values'),
    (json.dumps([{"headers": {"Helicone-Auth": "Bearer x"}}]), "cannot be set per target"),
    (json.dumps([{"headers": {"Content-Length": "1"}}]), "cannot be set per target"),
    (json.dumps([{"headers": {"Proxy-Connection": "close"}}]), "cannot be set per target"),
    (json.dumps([{"target-url": "https://backup.example?api-version=1"}]),
     r'Helicone-Fallbacks\[0\]\."target-url" must not have a query or fragment'),
    (json.dumps([{"headers": {"bad name": "1"}}]), "not a valid header name"),
    (json.dumps([{"headers": {"x-a": "1\r\nx-b: 2"}}]), "without control characters"),
    (json.dumps([{"headers": {"x-a": 1}}]), "must be a string"),
    (json.dumps([{"bodyKeyOverride": ["model"]}]), '"bodyKeyOverride" must be a JSON object'),
])
def test_bad_fallbacks_name_the_entry_and_the_accepted_form(value, message):
    with pytest.raises(HeaderError, match=message):
        parse_helicone_headers([("helicone-fallbacks", value)])


def test_backoff_grows_by_the_factor_with_bounded_jitter_and_honours_retry_after_up_to_the_max():
    policy = RetryPolicy(retries=5, factor=2, min_ms=100, max_ms=1000)
    for _ in range(50):
        assert 0.1 <= policy.delay(1) <= 0.125
        assert 0.4 <= policy.delay(3) <= 0.5
        assert policy.delay(5) == 1.0  # 1.6 s capped
        assert policy.delay(1, retry_after=0.5) == 0.5
        assert policy.delay(1, retry_after=30) == 1.0  # Retry-After is capped by the max timeout too


def test_retry_after_in_seconds_or_as_an_http_date():
    now = 1_700_000_000.0
    assert retry_after_seconds("3", now) == 3.0
    date = email.utils.format_datetime(dt.datetime.fromtimestamp(now + 7, dt.timezone.utc), usegmt=True)
    assert retry_after_seconds(date, now) == pytest.approx(7, abs=1)
    past = email.utils.format_datetime(dt.datetime.fromtimestamp(now - 60, dt.timezone.utc), usegmt=True)
    assert retry_after_seconds(past, now) == 0.0
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None


def test_body_key_override_merges_into_the_json_body():
    body = json.dumps({"model": "a", "messages": [], "stream_options": {"include_usage": True}}).encode()
    merged = json.loads(merge_body(body, {"model": "b", "stream_options": {"x": 1}}, "Helicone-Fallbacks[1]"))
    assert merged == {"model": "b", "messages": [], "stream_options": {"include_usage": True, "x": 1}}
    with pytest.raises(ValueError, match=r'Helicone-Fallbacks\[1\]\."bodyKeyOverride" needs a JSON object request body'):
        merge_body(b"[1]", {"model": "b"}, "Helicone-Fallbacks[1]")
