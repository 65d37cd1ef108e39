"""Every Kafka client the gateway builds (topic creation, producer, admin, offsets reader, readiness
ping) gets the options of kafka.client_security(settings), and the publisher works over TLS.

The broker is reachable through TLS only (tests/support/kafka_security.py), so an event
acknowledged there went over TLS, verified against the configured CA. SASL_SSL settings are
recorded on every client too; the connection itself then runs as SSL (Tansu cannot authenticate:
see libs/core/tests/test_kafka_security.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import uuid

import pytest
from helicone_core import events
from helicone_core.metrics import ServiceMetrics
from helicone_gateway.app import Gateway
from helicone_gateway.settings import GatewaySettings

from tests.support.kafka_security import ClientRecorder, tls_kafka
from tests.support.net import free_port

PASSWORD = "pw-" + uuid.uuid4().hex


def _event() -> events.RequestLogged:
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id="o")
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    return ev


async def _until(cond, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
async def test_every_gateway_kafka_client_gets_the_security_options(protocol, ca, tmp_path, monkeypatch):
    sasl = {"kafka_sasl_username": "gateway", "kafka_sasl_password": PASSWORD} if protocol == "SASL_SSL" else {}
    recorder = ClientRecorder(downgrade_sasl=True).install(monkeypatch)
    async with tls_kafka(ca, tmp_path / "kafka.log") as bootstrap:
        settings = GatewaySettings(
            _env_file=None, data_dir=tmp_path, kafka_bootstrap=bootstrap, kafka_topic="gw-" + uuid.uuid4().hex[:8],
            kafka_security_protocol=protocol, kafka_ssl_cafile=ca.ca_file, kafka_idempotent_producer=False,
            publish_timeout=5.0, postgres_dsn=f"postgresql://nobody@127.0.0.1:{free_port()}/none", **sasl,
        )
        metrics = ServiceMetrics("gateway")
        gw = Gateway(settings, metrics)
        publisher = gw.publisher
        await publisher.start()
        try:
            publisher.submit(_event)
            published = "helicone_gateway_events_published_total"
            await _until(lambda: (metrics.registry.get_sample_value(published, {"path": "direct"}) or 0)
                         + (metrics.registry.get_sample_value(published, {"path": "resend"}) or 0) >= 1)
            assert await publisher.ping(5)
        finally:
            await publisher.stop()

    expected = dict(publisher.security)
    assert expected["security_protocol"] == protocol and isinstance(expected["ssl_context"], ssl.SSLContext)
    if protocol == "SASL_SSL":
        assert (expected["sasl_plain_username"], expected["sasl_plain_password"]) == ("gateway", PASSWORD)
    # ensure_topics' and the connection's admin, the producer, the offsets reader, the readiness ping
    assert recorder.kinds() == {"AIOKafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaClient"}
    for built in recorder.built:
        assert built.security() == expected, built.cls
        assert built.kwargs["ssl_context"] is expected["ssl_context"]  # one context, built once at start-up
