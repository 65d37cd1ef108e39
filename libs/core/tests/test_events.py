import datetime as dt
import uuid

import pytest
from helicone_core import events
from hypothesis import given, settings
from hypothesis import strategies as st


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
        (lambda e: setattr(e.request_created_at, "nanos", 1_500_000_000), "request_created_at is not a time the log store keeps"),
        (lambda e: setattr(e.response_created_at, "seconds", 253_402_300_800), "response_created_at is not a time the log store keeps"),
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


def _decoded_alone(raw: bytes):
    try:
        return events.decode(raw)
    except events.EventError as exc:
        return exc


def _same_answer(got, want) -> bool:
    if isinstance(want, events.EventError):
        return isinstance(got, events.EventError) and str(got) == str(want)
    return got == want


@pytest.mark.parametrize("garbage", [False, True], ids=["all-protobuf", "one-not-protobuf"])
def test_decode_many_answers_what_decode_answers_for_each_value_in_order(garbage):
    bad_version, bad_org = make_event(), make_event()
    bad_version.schema_version = 2
    bad_org.org_id = "../other"
    raws = [events.encode(make_event(user_id=f"u{i}")) for i in range(5)]
    raws[1:1] = [events.encode(bad_version), b"", events.encode(bad_org)]
    if garbage:  # the batch no longer parses as one message: each value is decoded alone
        raws.insert(4, b"\xff\xffnot a protobuf")
    got = events.decode_many(raws)
    want = [_decoded_alone(raw) for raw in raws]
    assert len(got) == len(raws)
    assert all(_same_answer(g, w) for g, w in zip(got, want, strict=True)), (got, want)
    assert sum(isinstance(g, events.RequestLogged) for g in got) == 5
    assert [g.user_id for g in got if isinstance(g, events.RequestLogged)] == [f"u{i}" for i in range(5)]


@pytest.mark.parametrize("garbage", [False, True], ids=["all-protobuf", "one-not-protobuf"])
def test_decode_many_keeps_any_other_failure_to_its_own_value(garbage, monkeypatch):
    validate = events.validate

    def fragile_validate(event):
        if event.user_id == "u1":
            raise RuntimeError("no room")
        validate(event)

    monkeypatch.setattr(events, "validate", fragile_validate)
    raws = [events.encode(make_event(user_id=f"u{i}")) for i in range(3)] + ([b"\xff\xffnot a protobuf"] if garbage else [])
    got = events.decode_many(raws)
    assert [g.user_id for g in got[:3:2]] == ["u0", "u2"]
    assert isinstance(got[1], RuntimeError) and str(got[1]) == "no room"
    if garbage:
        assert isinstance(got[3], events.EventError)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_152])
def test_the_frame_of_a_value_is_protobufs_own_encoding_of_a_batch_entry(size):
    ev = make_event(inline=events.InlineBodies(request_body=b"x" * size))
    raw = events.encode(ev)
    assert events._frame_head(len(raw)) + raw == events.RequestLoggedBatch(events=[ev]).SerializeToString()
    assert events.decode_many([raw, raw]) == [ev, ev]


def test_analytics_row_is_deterministic_and_versioned_by_the_request_time():
    ev = make_event()
    kw = dict(request_key="a", response_key="b", request_bytes=1, response_bytes=2,
              request_content_type="application/json", response_content_type="application/json", truncated=False)
    r1 = events.analytics_row(ev, **kw)
    assert events.analytics_row(events.decode(events.encode(ev)), **kw) == r1  # a replayed copy: the same row
    assert r1["request_created_at"] == "2026-01-02 03:04:05.678"
    assert r1["version"] == events.event_version(ev) == 1767323045678000000  # request time in ns
    # no response time: falls back to the request time
    assert r1["response_created_at"] == r1["request_created_at"]
    later = make_event()
    events.set_time(later.request_created_at, dt.datetime(2026, 1, 2, 3, 4, 5, 678001, tzinfo=dt.timezone.utc))
    assert events.event_version(later) == r1["version"] + 1000  # microseconds apart: ordered


def test_identity_keys_name_the_org_and_the_request():
    ev = make_event()
    assert events.message_key(ev) == f"{ev.org_id}/{ev.request_id}".encode()
    version = events.event_version(ev)
    req, resp = events.body_keys(ev.org_id, ev.request_id, version)
    assert req == f"orgs/{ev.org_id}/requests/{ev.request_id}/{version}/request"
    assert resp == f"orgs/{ev.org_id}/requests/{ev.request_id}/{version}/response"
    # a newer request with the same id gets its own keys
    assert events.body_keys(ev.org_id, ev.request_id, version + 1)[0] != req


@pytest.mark.parametrize("org_id", ["../other", "a/b", "o rg", "x" * 129])
def test_org_ids_that_could_escape_their_key_space_are_rejected(org_id):
    ev = make_event()
    ev.org_id = org_id
    with pytest.raises(events.EventError, match="org_id"):
        events.decode(events.encode(ev))


def test_body_locations_must_be_the_orgs_own():
    ev = make_event(location=events.BodyLocation(request_key="orgs/someone-else/requests/x/request",
                                                 response_key="orgs/someone-else/requests/x/response"))
    with pytest.raises(events.EventError, match="location.request_key"):
        events.decode(events.encode(ev))
    own = f"orgs/{ev.org_id}/requests/{ev.request_id}/1"
    ev.location.request_key, ev.location.response_key = own + "/request", own + "/../../x/response"
    with pytest.raises(events.EventError, match="location.response_key"):
        events.decode(events.encode(ev))
    ev.location.response_key = own + "/response"
    assert events.decode(events.encode(ev)) == ev


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: f"{{{u}}}"), st.uuids().map(lambda u: f"urn:uuid:{u}"),
    st.uuids().map(lambda u: f"{u}\n"), st.uuids().map(lambda u: f" {u}"), st.uuids().map(lambda u: str(u)[:-1] + "g"),
    st.text(alphabet="0123456789abcdefABCDEF-{}:urnid\n é", max_size=45),
))
def test_request_ids_are_accepted_exactly_when_uuid_accepts_them(request_id):
    """validate takes the usual UUID form without uuid.UUID; it accepts and refuses what uuid.UUID does."""
    try:
        uuid.UUID(request_id)
        expected = None
    except ValueError:
        expected = f"request_id {request_id!r} is not a UUID"
    ev = make_event()
    ev.request_id = request_id
    if expected is None:
        events.validate(ev)
    else:
        with pytest.raises(events.EventError) as caught:
            events.validate(ev)
        assert str(caught.value) == expected


@pytest.mark.parametrize("when", [
    dt.datetime(2026, 12, 4, 7, 5, 9, 123456, tzinfo=dt.timezone.utc),
    dt.datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    dt.datetime(1969, 12, 31, 23, 59, 58, 500000, tzinfo=dt.timezone.utc),
    dt.datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-7, minutes=-30))),
    dt.datetime(2026, 12, 4, 7, 5, 9, 42),  # naive: local time
])
def test_set_time_stores_what_from_datetime_stores(when):
    ev, expected = events.RequestLogged(), events.RequestLogged()
    events.set_time(ev.request_created_at, when)
    expected.request_created_at.FromDatetime(when.astimezone(dt.timezone.utc))
    assert (ev.request_created_at.seconds, ev.request_created_at.nanos) == \
        (expected.request_created_at.seconds, expected.request_created_at.nanos)


@pytest.mark.parametrize("ns", [1_764_997_509_123_456_789, 0, -1_500_000_000, 1_000_000_000, 999_999_999])
def test_set_time_ns_stores_what_from_nanoseconds_stores(ns):
    ev, expected = events.RequestLogged(), events.RequestLogged()
    events.set_time_ns(ev.request_created_at, ns)
    expected.request_created_at.FromNanoseconds(ns)
    assert (ev.request_created_at.seconds, ev.request_created_at.nanos) == \
        (expected.request_created_at.seconds, expected.request_created_at.nanos)
    assert 0 <= ev.request_created_at.nanos < 1_000_000_000


def test_request_ids_are_distinct_version_4_uuids_in_canonical_form():
    ids = [events.new_request_id() for _ in range(3000)]  # past several blocks of random bytes
    assert len(set(ids)) == len(ids)
    for rid in ids:
        u = uuid.UUID(rid)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, rid)
    # every hex digit turns up where the random bits are (none is stuck by the formatting)
    assert {c for rid in ids for c in rid.replace("-", "")[20:]} == set("0123456789abcdef")


def test_a_forked_child_never_hands_out_its_parent_s_request_ids():
    import multiprocessing

    events.new_request_id()  # this process has a block of random bytes in use: the child must not go on with it
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(_draw_ids, (600,))
    mine = _draw_ids(600)
    assert len(set(child + mine)) == 1200


def _draw_ids(n: int) -> list[str]:
    return [events.new_request_id() for _ in range(n)]
