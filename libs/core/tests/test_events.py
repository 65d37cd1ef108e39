import datetime as dt

import pytest
from helicone_core import events


def make_event(**kw) -> events.RequestLogged:
    ev = events.RequestLogged(
        schema_version=1, request_id=events.new_request_id(), org_id="8c6f3c52-8a55-4a36-9d0a-1f0a0b2b9e11",
        status=200, provider="openai", model="gpt-4o-mini", properties={"env": "prod"}, **kw,
    )
    events.set_time(ev.request_created_at, dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc))
    return ev


def test_roundtrip_and_validation():
    ev = make_event()
    assert events.decode(events.encode(ev)) == ev


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: setattr(e, "schema_version", 2), "schema_version"),
        (lambda e: setattr(e, "request_id", "nope"), "UUID"),
        (lambda e: setattr(e, "org_id", ""), "org_id"),
        (lambda e: e.ClearField("request_created_at"), "request_created_at"),
        (lambda e: e.properties.__setitem__("k", "v" * 5000), "property"),
    ],
)
def test_invalid_events_are_rejected_with_a_reason(mutate, message):
    ev = make_event()
    mutate(ev)
    with pytest.raises(events.EventError, match=message):
        events.decode(events.encode(ev))


def test_garbage_is_rejected():
    with pytest.raises(events.EventError):
        events.decode(b"\xff\xff\xff not protobuf")


def test_analytics_row_is_deterministic_apart_from_version():
    ev = make_event()
    kw = dict(request_key="a", response_key="b", request_bytes=1, response_bytes=2,
              request_content_type="application/json", response_content_type="application/json", truncated=False)
    r1 = events.analytics_row(ev, version=1, **kw)
    r2 = events.analytics_row(ev, version=2, **kw)
    assert {k: v for k, v in r1.items() if k != "version"} == {k: v for k, v in r2.items() if k != "version"}
    assert r1["request_created_at"] == "2026-01-02 03:04:05.678"
    # no response time: falls back to the request time
    assert r1["response_created_at"] == r1["request_created_at"]
