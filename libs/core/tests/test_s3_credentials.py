"""S3 credentials of the body store: explicit keys from the settings, or the default AWS chain.

Against a moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT: after the first
IAM calls that create a user with S3 rights and its key pair, every request must be signed by a
key moto knows, with the right secret)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from helicone_core.bodies import PACK_CONTENT_TYPE, S3BodyStore, body_ref, make_body_store
from helicone_core.settings import CommonSettings
from pydantic import SecretStr, ValidationError

from tests.support.moto_server import moto_server

SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, access key id, secret) of a moto server that refuses unknown or wrong keys."""
    import boto3

    with moto_server(tmp_path_factory.mktemp("moto"), {"INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}) as endpoint:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="bodies")
        iam.put_user_policy(UserName="bodies", PolicyName="bodies", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="bodies")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def default_chain(monkeypatch, tmp_path):
    """The default credential chain reads only what a test puts in AWS_* (no files, no IMDS)."""
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)

    def use(key_id: str, secret: str) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)

    return use


def _settings(endpoint: str, **kw) -> CommonSettings:
    return CommonSettings(_env_file=None, body_store="s3", s3_endpoint=endpoint, s3_bucket="b-" + uuid.uuid4().hex[:12],
                          s3_create_bucket=True, **kw)


async def _roundtrip(store) -> bytes | None:
    await store.start()
    try:
        await store.put("orgs/o/requests/r/request", b'{"n":1}', "application/json")
        assert await store.ping()
        return await store.get("orgs/o/requests/r/request")
    finally:
        await store.close()


async def test_explicit_keys_are_used_instead_of_the_default_chain(s3, default_chain):
    endpoint, key_id, secret = s3
    default_chain("AKIAWRONGWRONGWRONG0", "wrong-secret")  # what the environment would give
    settings = _settings(endpoint, s3_access_key_id=key_id, s3_secret_access_key=secret)
    assert await _roundtrip(make_body_store(settings)) == b'{"n":1}'


async def test_wrong_explicit_keys_are_refused(s3, default_chain):
    endpoint, key_id, secret = s3
    default_chain(key_id, secret)  # the environment would have worked: the explicit pair wins
    store = make_body_store(_settings(endpoint, s3_access_key_id=key_id, s3_secret_access_key="not-" + secret))
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|403|Forbidden"):
        await _roundtrip(store)


async def test_without_keys_the_default_credential_chain_is_used(s3, default_chain):
    endpoint, key_id, secret = s3
    default_chain(key_id, secret)
    assert await _roundtrip(make_body_store(_settings(endpoint))) == b'{"n":1}'
    default_chain("AKIAWRONGWRONGWRONG0", "wrong-secret")
    with pytest.raises(ClientError, match="InvalidAccessKeyId|403|Forbidden"):
        await _roundtrip(make_body_store(_settings(endpoint)))


@pytest.mark.parametrize("given", [{"s3_access_key_id": "AKIAONLYTHEID0000000"}, {"s3_secret_access_key": "only-the-secret"}])
def test_half_a_key_pair_is_refused_naming_both_variables(given):
    with pytest.raises(ValidationError, match="HELICONE_S3_ACCESS_KEY_ID and HELICONE_S3_SECRET_ACCESS_KEY go together") as info:
        CommonSettings(_env_file=None, **given)
    assert "only-the-secret" not in str(info.value) and "AKIAONLYTHEID" not in str(info.value)
    with pytest.raises(ValueError, match="HELICONE_S3_ACCESS_KEY_ID and HELICONE_S3_SECRET_ACCESS_KEY"):
        S3BodyStore("b", None, "us-east-1", False, **{k.removeprefix("s3_"): SecretStr(v) for k, v in given.items()})


def test_half_a_key_pair_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("HELICONE_S3_SECRET_ACCESS_KEY", "only-the-secret")
    with pytest.raises(ValidationError, match="HELICONE_S3_ACCESS_KEY_ID and HELICONE_S3_SECRET_ACCESS_KEY go together"):
        CommonSettings(_env_file=None)
    monkeypatch.setenv("HELICONE_S3_ACCESS_KEY_ID", "")  # an empty variable is "not set"
    with pytest.raises(ValidationError, match="go together"):
        CommonSettings(_env_file=None)
    monkeypatch.setenv("HELICONE_S3_SECRET_ACCESS_KEY", "")
    assert CommonSettings(_env_file=None).s3_access_key_id is None


def test_the_keys_are_not_shown():
    settings = CommonSettings(_env_file=None, s3_access_key_id="AKIASHOWNOWHERE00000", s3_secret_access_key="secret-shown-nowhere")
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert "AKIASHOWNOWHERE" not in shown and "secret-shown-nowhere" not in shown


async def test_a_body_inside_a_pack_is_read_by_its_byte_range_and_a_whole_object_by_its_key(s3, default_chain):
    endpoint, key_id, secret = s3
    default_chain(key_id, secret)
    store = make_body_store(_settings(endpoint))
    await store.start()
    try:
        await store.put("orgs/o/packs/p1", b'{"req":1}{"resp":1}', PACK_CONTENT_TYPE)
        await store.put("orgs/o/requests/r/1/request", b'{"old":1}', "application/json")
        assert await store.get(body_ref("orgs/o/packs/p1", 9, 10)) == b'{"resp":1}'
        assert await store.get(body_ref("orgs/o/packs/p1", 0, 9)) == b'{"req":1}'
        assert await store.get(body_ref("orgs/o/packs/p1", 9, 0)) == b""  # an omitted body
        assert await store.get("orgs/o/requests/r/1/request") == b'{"old":1}'  # rows written before packs
        assert await store.get(body_ref("orgs/o/packs/missing", 0, 3)) is None
    finally:
        await store.close()


async def test_an_s3_endpoint_that_never_answers_fails_a_read_within_the_timeout():
    """S3 calls wait at most HELICONE_S3_TIMEOUT per try, over 3 tries: aiobotocore's defaults (60 s to read, 5
    tries in its legacy mode) held an api request for a body, and ingest's write of a batch, for minutes on an
    endpoint that took the connection and never answered."""
    import asyncio
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections are taken (the kernel's backlog) and never answered
    endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
    settings = CommonSettings(body_store="s3", s3_endpoint=endpoint, s3_timeout=0.5, s3_access_key_id="k",
                              s3_secret_access_key="s", _env_file=None)
    store = make_body_store(settings)
    await store.start()
    try:
        started = time.monotonic()
        with pytest.raises((BotoCoreError, asyncio.TimeoutError)):  # botocore's read timeout, or aiohttp's
            await asyncio.wait_for(store.get(body_ref("orgs/o/packs/p", 0, 10)), 60)
        # three tries of 0.5 s and the standard mode's backoff between them (up to 1 and 2 s), with room for a busy box
        assert time.monotonic() - started < 15, "still waiting long after three tries"
    finally:
        await store.close()
        silent.close()
    with pytest.raises(ValidationError, match="s3_timeout"):
        CommonSettings(s3_timeout=0, _env_file=None)
