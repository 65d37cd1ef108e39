"""GET /v1/request/{id}: the bodies as stored, whatever bytes they hold, and the rest of the request
when a body cannot be read."""

import base64
import uuid

import httpx
import pytest
from helicone_api.app import create_app
from helicone_api.settings import ApiSettings
from helicone_core import events
from helicone_core.bodies import PACK_CONTENT_TYPE, body_ref
from helicone_core.kafka import MAX_RECORD_BYTES

from services.api.tests.test_api import T0, api, wait_for_keys  # noqa: F401 - the fixture
from tests.support.keys import keys_before_start
from tests.support.moto_server import moto_server


async def add_row(state, org, request_key: str, response_key: str, content_type: str = "application/json") -> str:
    """A request_log row pointing at the given body keys, as ingest writes it for a producer's `location`."""
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=org, status=200,
                              provider="openai", model="gpt-4o", latency_ms=7, time_to_first_token_ms=-1)
    events.set_time(ev.request_created_at, T0)
    row = events.analytics_row(ev, request_key=request_key, response_key=response_key, request_bytes=1, response_bytes=1,
                               request_content_type=content_type, response_content_type=content_type, truncated=False)
    await state.analytics.insert("request_log", [row])
    return ev.request_id


# JSON that json.loads reads but that cannot go back out as JSON: an escaped lone surrogate (the async
# log route stores such bodies escaped, as they came), and nesting deeper than the serializer's limit or
# Python's recursion limit
@pytest.mark.parametrize("body", [b'{"messages":[{"role":"user","content":"\\ud800"}]}',
                                  b"[" * 300 + b"]" * 300, b'{"a":' * 5000 + b"1" + b"}" * 5000],
                         ids=["lone-surrogate", "300-deep", "5000-deep"])
async def test_a_json_body_that_cannot_be_answered_as_json_comes_back_as_its_text(api, body):  # noqa: F811
    client, state, org, _, _ = api
    key = f"orgs/{org}/requests/odd/1/request"
    await state.bodies.put(key, body, "application/json")
    rid = await add_row(state, org, key, "")
    r = await client.get(f"/v1/request/{rid}")
    assert r.status_code == 200, r.text
    assert r.json()["request_body"] == body.decode() and r.json()["model"] == "gpt-4o"


# an audio answer's start (audio/speech), and an upload whose file is binary (images/edits), as the gateway logs them
AUDIO = bytes(range(256)) * 4
UPLOAD = (b'--b1\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-image-1\r\n--b1\r\nContent-Disposition: form-data; '
          b'name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n\x00\xff\xfe' + AUDIO)


@pytest.mark.parametrize("body, content_type", [(AUDIO, "audio/mpeg"), (UPLOAD, "multipart/form-data; boundary=b1")],
                         ids=["audio", "multipart"])
async def test_a_binary_body_comes_back_whole_as_base64_and_says_so(api, body, content_type):  # noqa: F811
    """A body that is not UTF-8 text (an audio answer, an upload holding an image) was answered as text with each byte
    that is not UTF-8 replaced by U+FFFD: neither the bytes nor a sign that they were binary."""
    client, state, org, _, _ = api
    key = f"orgs/{org}/requests/binary/1/response"
    await state.bodies.put(key, body, content_type)
    rid = await add_row(state, org, "", key, content_type)
    r = await client.get(f"/v1/request/{rid}")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["response_body_encoding"] == "base64" and base64.b64decode(d["response_body"]) == body
    assert (d["request_body"], d["request_body_encoding"]) == (None, None)


async def test_a_text_body_cut_inside_a_character_is_still_text(api):  # noqa: F811
    """A logged body is cut at the log's limit, which may fall inside a character: that body is text, not binary."""
    client, state, org, _, _ = api
    key = f"orgs/{org}/requests/cut/1/response"
    await state.bodies.put(key, "data: caf\u00e9".encode()[:-1], "text/event-stream")
    rid = await add_row(state, org, "", key, "text/event-stream")
    r = await client.get(f"/v1/request/{rid}")
    assert r.status_code == 200, r.text
    assert (r.json()["response_body"], r.json()["response_body_encoding"]) == ("data: caf\ufffd", None)


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """The endpoint of a moto S3 server on loopback."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
async def s3_api(moto_s3, tmp_path, fresh_db_dsn, analytics_settings):
    """(client, state, org, bucket): the api on a body store in S3 (moto) whose bucket is made at start."""
    bucket = "b-" + uuid.uuid4().hex[:12]
    settings = ApiSettings(data_dir=tmp_path, postgres_dsn=fresh_db_dsn, _env_file=None, body_store="s3", s3_endpoint=moto_s3,
                           s3_bucket=bucket, s3_create_bucket=True, s3_access_key_id="test", s3_secret_access_key="test",
                           **analytics_settings)
    [made] = await keys_before_start(fresh_db_dsn, "acme")
    org, key = made.org_id, made.key
    app = create_app(settings)
    state = app.state.api
    await state.start()
    await wait_for_keys(state, key)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://api",
                               headers={"Authorization": f"Bearer {key}"})
    yield client, state, org, bucket
    await client.aclose()
    await state.stop()


async def test_a_body_the_store_cannot_give_is_named_and_the_rest_of_the_request_still_answers(s3_api):
    client, state, org, bucket = s3_api
    pack = f"orgs/{org}/packs/p1"
    await state.bodies.put(pack, b'{"n":1}', PACK_CONTENT_TYPE)
    gone = await add_row(state, org, body_ref(pack, 0, 7), body_ref(f"orgs/{org}/packs/deleted", 0, 5))
    crafted = await add_row(state, org, f"orgs/{org}/packs/p1#seven+1", "")

    def detail(rid):
        return client.get(f"/v1/request/{rid}")

    r = await detail(gone)  # e.g. removed by the bucket's lifecycle rule before the row
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["request_body"], d["request_body_error"], d["response_body"]) == ({"n": 1}, None, None)
    assert "not found" in d["response_body_error"]
    r = await detail(crafted)
    assert r.status_code == 200, r.text
    assert r.json()["request_body"] is None and "not valid" in r.json()["request_body_error"]
    assert r.json()["response_body_error"] is None  # no key: no body, and nothing wrong

    # the store fails (a bucket named wrong: NoSuchBucket on every body): the request's fields still come back
    await state.bodies._client.delete_object(Bucket=bucket, Key=pack)
    await state.bodies._client.delete_bucket(Bucket=bucket)
    r = await detail(gone)
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["request_id"], d["model"], d["latency_ms"], d["request_body"]) == (gone, "gpt-4o", 7, None)
    assert "NoSuchBucket" in d["request_body_error"] and "NoSuchBucket" in d["response_body_error"]


async def test_a_body_whose_pack_is_cut_short_is_named_cut_short_never_answered_cut_or_as_the_store_failing(s3_api):
    """A pack holding less than its rows point at was answered as the bytes that were there: a cut body as if
    whole, and a range past its end as the store failing (InvalidRange) when the store answers well."""
    client, state, org, _ = s3_api
    pack = f"orgs/{org}/packs/cut"
    await state.bodies.put(pack, b'{"req":1}{"re', PACK_CONTENT_TYPE)  # written whole it was '{"req":1}{"resp":1}'
    part = await add_row(state, org, body_ref(pack, 0, 9), body_ref(pack, 9, 10))
    r = await client.get(f"/v1/request/{part}")
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["request_body"], d["request_body_error"], d["response_body"]) == ({"req": 1}, None, None)
    assert d["response_body_error"] == "the stored body is cut short: 4 of its 10 bytes are in the body store"
    past = await add_row(state, org, body_ref(pack, 20, 5), "")
    r = await client.get(f"/v1/request/{past}")
    assert r.status_code == 200, r.text
    assert r.json()["request_body"] is None
    assert r.json()["request_body_error"] == "the stored body is cut short: 0 of its 5 bytes are in the body store"


async def test_a_stored_body_larger_than_any_log_holds_is_named_not_read_into_the_answer(s3_api):
    """A producer's `location` body of any size was read whole into memory, decoded and answered: one
    request for a body of gigabytes could take the api down. The largest body a log holds (one Kafka record)
    is answered; one larger is named with its size."""
    client, state, org, _ = s3_api
    fits, over = f"orgs/{org}/requests/r/1/request", f"orgs/{org}/requests/r/1/response"
    await state.bodies.put(fits, b"x" * MAX_RECORD_BYTES, "text/plain")
    await state.bodies.put(over, b"x" * (MAX_RECORD_BYTES + 1), "text/plain")
    rid = await add_row(state, org, fits, over, content_type="text/plain")
    r = await client.get(f"/v1/request/{rid}")
    assert r.status_code == 200, r.text
    d = r.json()
    assert len(d["request_body"]) == MAX_RECORD_BYTES and d["request_body_error"] is None
    assert d["response_body"] is None
    assert d["response_body_error"] == (f"the stored body is {MAX_RECORD_BYTES + 1} bytes, more than the {MAX_RECORD_BYTES} "
                                        "an answer holds")
