"""Kafka helpers shared by producers and consumers.

`fit_record` is the one place that makes a log event fit one record (the gateway's and the api's).

`client_security` is the one place that turns the Kafka security settings into aiokafka client
options: every client the services create (the gateway's producer, admin and offsets reader,
ingest's Faust consumer and producer, `ensure_topics`, `ping_broker`) is built with them.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from . import events
from .cancellation import wait_for
from .settings import KAFKA_SASL_PROTOCOLS, KAFKA_TLS_PROTOCOLS, CommonSettings

log = logging.getLogger(__name__)

# The options of a plain connection: what the embedded broker (Tansu, loopback only) speaks.
PLAINTEXT: Mapping[str, Any] = {"security_protocol": "PLAINTEXT"}
# The largest record the gateway's and the api's producers send (their max_request_size): an event with
# two bodies at the logged-body limit and its properties. The cluster's topics must take it (k8s/kafka.yaml:
# max.message.bytes; Kafka's default, 1 MiB, would refuse it on every retry).
MAX_RECORD_BYTES = 4 * 1024 * 1024


def record_bytes(key: bytes, value: bytes) -> int:
    """A record's size as the producer holds it against max_request_size (over MAX_RECORD_BYTES: refused at every send)."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])


class RecordTooLarge(ValueError):
    """An event over Kafka's record limit even without its bodies: the producer would refuse it at every
    try (the api refuses it: a /custom/v1/log is a 413, a span is rejected; the gateway drops it, counted)."""


# the event's text fields that the caller's payload sizes, one of which is named when the event cannot fit
_SIZED_FIELDS = ("model", "path", "target_url", "provider", "user_id", "session_id", "session_path", "session_name",
                 "error", "prompt_inputs_json")


def fit_record(ev: events.RequestLogged) -> None:
    """Cuts the event's inline bodies, the larger first (flagged truncated), until it fits one Kafka record
    (MAX_RECORD_BYTES): bodies are cut at max_logged_body_bytes, and two of them at that limit may not fit.
    Raises RecordTooLarge when it does not fit even without them."""
    key = events.message_key(ev)
    size = record_bytes(key, events.encode(ev))
    inline = ev.inline
    while size > MAX_RECORD_BYTES:
        side = "request" if len(inline.request_body) >= len(inline.response_body) else "response"
        body = getattr(inline, f"{side}_body")
        if not body:
            largest = max(_SIZED_FIELDS, key=lambda name: len(getattr(ev, name)))
            raise RecordTooLarge(
                f"the log is {size} bytes without its bodies, over the largest record the log store (Kafka) takes, "
                f"{MAX_RECORD_BYTES} bytes; its {largest} alone is {len(getattr(ev, largest).encode())} bytes")
        # each byte cut takes at least one off the record (the length prefixes only shrink)
        setattr(inline, f"{side}_body", body[:max(0, len(body) - (size - MAX_RECORD_BYTES))])
        setattr(inline, f"{side}_truncated", True)
        size = record_bytes(key, events.encode(ev))


def client_security(settings: CommonSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for the security settings: security_protocol, and
    sasl_mechanism / sasl_plain_username / sasl_plain_password and ssl_context as the protocol needs.

    The result holds the SASL password in clear (aiokafka wants a str): never log it. The TLS
    context is built here, once (it reads the CA bundle): call this at start-up, not per client."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    described = [protocol]
    if protocol in KAFKA_TLS_PROTOCOLS:
        cafile = settings.kafka_ssl_cafile
        # verifies the broker's certificate and host name; no CA bundle: the system's CAs
        options["ssl_context"] = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        described.append(f"CA bundle {cafile}" if cafile else "system CAs")
    if protocol in KAFKA_SASL_PROTOCOLS:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
        described.append(f"{settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r}")
    log.info("kafka security: %s", ", ".join(described))
    return options


async def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, replication_factor: int, timeout: float = 10.0,
    *, security: Mapping[str, Any],
) -> None:
    """Creates the topics that do not exist yet. `security`: client_security(settings)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **security)
    await wait_for(admin.start(), timeout)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(t, partitions, replication_factor) for t in missing])
    finally:
        await admin.close()


async def ping_broker(bootstrap: str, timeout: float, *, security: Mapping[str, Any]) -> bool:
    """True if a broker of `bootstrap` answers a metadata request within `timeout` seconds
    (over the connection `security` describes, authentication included)."""
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=max(1, int(timeout * 1000)), **security)
    try:
        await wait_for(client.bootstrap(), timeout)
        return True
    except Exception:  # noqa: BLE001 - readiness probe: any failure means "not reachable"
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.close()
