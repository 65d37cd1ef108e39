"""AWS Bedrock for tests: its event stream frames (application/vnd.amazon.eventstream, as the fake upstream streams
ConverseStream and InvokeModelWithResponseStream), and Signature V4 as botocore signs a request and AWS checks it.

The frames are built as AWS's event stream encoding says: [total length, headers length, prelude CRC32]
(big-endian uint32s), headers (name length, name, value type 7 = string, 2-byte value length, value), payload,
message CRC32. botocore's own parser (botocore.eventstream) reads them in the tests."""

from __future__ import annotations

import base64
import json
import struct
import zlib

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

EVENT_STREAM = "application/vnd.amazon.eventstream"
# the fake upstream checks signatures made with these (AWS's documentation example keys)
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
SERVICE = "bedrock"  # the signing name of bedrock-runtime


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    raw = b"".join(
        bytes([len(n)]) + n.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode() for n, v in headers.items()
    )
    total = 16 + len(raw) + len(payload)
    prelude = struct.pack(">II", total, len(raw))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(event_type: str, doc: dict) -> bytes:
    """An event frame as Bedrock sends them: :event-type, :content-type and :message-type headers, a JSON payload."""
    return frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(doc, separators=(",", ":")).encode(),
    )


def chunk(model_event: dict) -> bytes:
    """An InvokeModelWithResponseStream chunk: the model's own stream event, base64 JSON in {"bytes": ...}."""
    encoded = base64.b64encode(json.dumps(model_event).encode()).decode()
    return event("chunk", {"bytes": encoded, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"})


def exception(kind: str, message: str) -> bytes:
    return frame(
        {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
        json.dumps({"message": message}).encode(),
    )


def sign(method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The headers botocore sends for this request, Authorization (SigV4) included: signed for `url`'s host and path."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), SERVICE, REGION).add_auth(request)
    return dict(request.headers.items())


def signature_holds(method: str, host: str, raw_path_qs: str, headers: dict[str, str], body: bytes) -> bool:
    """Whether a received request's SigV4 signature is the one its signed headers, path, query and body give, as
    AWS checks it (recomputed with the same keys, the request's own X-Amz-Date)."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 ") :].split(","))
    signed = fields["SignedHeaders"].split(";")
    kept = {name: value for name, value in headers.items() if name in signed and name != "host"}
    if "host" in signed:
        kept["host"] = host
    request = AWSRequest(method=method, url=f"http://{host}{raw_path_qs}", data=body, headers=kept)
    request.context["timestamp"] = headers.get("x-amz-date", "")
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), SERVICE, REGION)
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    return (
        signer.signature(string_to_sign, request) == fields["Signature"]
        and signer.signed_headers(signer.headers_to_sign(request)) == fields["SignedHeaders"]
    )
