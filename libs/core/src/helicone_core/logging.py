"""JSON logging with secret redaction.

Secrets can reach log lines through exception texts (an upstream error echoing a header, a DSN
in a connection error). Every record passes through ``redact`` before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_SECRET_PATTERNS = [
    # API keys of common providers and our own keys
    re.compile(r"\b(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]{6,}"),
    re.compile(r"\b(sk-ant-[A-Za-z0-9_\-]{4})[A-Za-z0-9_\-]{6,}"),
    # Authorization-style values
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}"),
    # a quoted value (libpq's password='a b'): up to its closing quote, spaces and all
    re.compile(r"(?i)((?:password|secret)[\"']?\s*[:=]\s*')[^']+(')"),
    re.compile(r"(?i)((?:password|secret)[\"']?\s*[:=]\s*\")[^\"]+(\")"),
    re.compile(r"(?i)((?:x-api-key|api[_-]?key|authorization|helicone-auth|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;]{4,}"),
    # credentials inside URLs: scheme://user:pass@host, the user may be empty (redis://:pass@host); up to the
    # last '@' before the path, as redis-py and urllib split them (a password may hold an unencoded '@')
    re.compile(r"(://[^/\s:@]*:)[^\s/?#]+(@)"),
]


def redact(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        if pattern.groups == 2:
            text = pattern.sub(lambda m: m.group(1) + "***" + m.group(2), text)
        else:
            text = pattern.sub(lambda m: m.group(1) + "***", text)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": getattr(record, "service", self.service),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ("request_id", "org_id", "event_count"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


def configure_logging(service: str, level: str = "INFO") -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries: keep their warnings, drop their info lines.
    for name in ("aiokafka", "faust", "mode", "botocore", "aiobotocore", "urllib3", "httpx", "uvicorn.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
