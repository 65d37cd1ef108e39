import json
import logging

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
