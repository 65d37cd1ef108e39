import json
import logging

import pytest
from helicone_core.logging import JsonFormatter, redact


def test_redacts_keys_and_credentials():
    text = (
        "auth Bearer sk-proj-abcdefghijklmnopqrstuvwxyz123456 and x-api-key: sk-ant-api03-secretsecretsecret "
        "dsn postgresql://user:hunter2@db:5432/x helicone key sk-helicone-AbCdEfGhIjKlMnOpQrStUv"
    )
    out = redact(text)
    for secret in ("abcdefghijklmnopqrstuvwxyz123456", "secretsecretsecret", "hunter2", "AbCdEfGhIjKlMnOpQrStUv"):
        assert secret not in out
    assert "postgresql://user:***@db:5432/x" in out


def test_formatter_emits_json_with_redacted_message():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "upstream said %s", ("Authorization: Bearer sk-live-1234567890abcdef",), None)
    line = json.loads(JsonFormatter("gateway").format(record))
    assert line["level"] == "warning" and line["service"] == "gateway"
    assert "1234567890abcdef" not in line["msg"]


@pytest.mark.parametrize(("text", "kept"), [
    ("redis://:S3cretPw99@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),  # the chart's form: no user
    ("rediss://cache:S3c@retPw99@127.0.0.1:6380", "rediss://cache:***@127.0.0.1:6380"),  # redis-py splits at the last '@'
    ("host=127.0.0.1 user=u password='S3c retPw99' dbname=x", "password='***' dbname=x"),  # a libpq key=value DSN
])
def test_redacts_the_whole_password_of_a_connection_setting(text, kept):
    """A URL without a user (redis://:password@host) was written as is, and a password holding '@' or a space
    was redacted only up to it: the rest reached the log line."""
    out = redact(f"could not connect with {text}: refused")
    assert not any(piece in out for piece in ("S3c", "ret", "Pw99")), out
    assert kept in out
