"""Every Kafka client ingest builds (topic creation, Faust's consumer and producer through
broker_credentials, the readiness ping) gets the options of kafka.client_security(settings), and
ingest consumes and writes an event over TLS.

The broker is reachable through TLS only (tests/support/kafka_security.py). SASL_SSL settings are
recorded on every client too; the connection itself then runs as SSL (Tansu cannot authenticate:
see libs/core/tests/test_kafka_security.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
import uuid

import faust
import pytest
from aiokafka import AIOKafkaProducer
from helicone_core import events
from helicone_core.kafka import client_security, ensure_topics
from helicone_ingest.app import IngestService, faust_credentials
from helicone_ingest.settings import IngestSettings

from tests.support.kafka_security import ClientRecorder, tls_kafka
from tests.support.net import free_port

PASSWORD = "pw-" + uuid.uuid4().hex


def _settings(tmp_path, bootstrap: str, protocol: str, ca_file, **kw) -> IngestSettings:
    topic = "ingest-sec-" + uuid.uuid4().hex[:8]
    sasl = {"kafka_sasl_username": "ingest", "kafka_sasl_password": PASSWORD} if protocol.startswith("SASL") else {}
    tls = {"kafka_ssl_cafile": ca_file} if protocol.endswith("SSL") else {}
    return IngestSettings(
        _env_file=None, data_dir=tmp_path, body_store="local", analytics_backend="chdb", kafka_bootstrap=bootstrap,
        kafka_topic=topic, kafka_dlq_topic=topic + ".dlq", consumer_group="g-" + topic, kafka_security_protocol=protocol,
        postgres_dsn=f"postgresql://nobody@127.0.0.1:{free_port()}/none", batch_size=10, batch_within=0.2,
        broker_rebalance_timeout=2.0, broker_session_timeout=6.0, broker_heartbeat_interval=1.0,
        metadata_stop_timeout=0.2, **sasl, **tls, **kw,
    )


@pytest.mark.parametrize(("protocol", "kind", "wire"), [
    ("PLAINTEXT", None, {"security_protocol": "PLAINTEXT"}),
    ("SSL", faust.SSLCredentials, {"security_protocol": "SSL"}),
    ("SASL_PLAINTEXT", faust.SASLCredentials, {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                                "sasl_plain_username": "ingest", "sasl_plain_password": PASSWORD}),
    ("SASL_SSL", faust.SASLCredentials, {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                          "sasl_plain_username": "ingest", "sasl_plain_password": PASSWORD}),
])
def test_faust_credentials_give_faust_clients_the_same_options(protocol, kind, wire, ca, tmp_path):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    security = client_security(_settings(tmp_path, "127.0.0.1:1", protocol, ca.ca_file))
    credentials = faust_credentials(security)
    assert credentials is None if kind is None else isinstance(credentials, kind)
    assert PASSWORD not in repr(credentials)
    # what Faust's driver hands to aiokafka, for its consumer and its producer (ssl_context=None: aiokafka's default)
    auth = credentials_to_aiokafka_auth(credentials)
    assert {k: v for k, v in auth.items() if v is not None} == security
    assert {k: v for k, v in security.items() if k != "ssl_context"} == wire


async def _produce(bootstrap: str, settings: IngestSettings, ev: events.RequestLogged) -> None:
    security = client_security(settings)
    await ensure_topics(bootstrap, [settings.kafka_topic], 1, 1, security=security)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, **security)
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka_topic, events.encode(ev), key=events.message_key(ev))
    finally:
        await producer.stop()


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
async def test_every_ingest_kafka_client_gets_the_security_options(protocol, ca, tmp_path, monkeypatch):
    ev = events.RequestLogged(schema_version=1, request_id=events.new_request_id(), org_id=str(uuid.uuid4()))
    events.set_time(ev.request_created_at, dt.datetime.now(dt.timezone.utc))
    async with tls_kafka(ca, tmp_path / "kafka.log") as bootstrap:
        settings = _settings(tmp_path, bootstrap, protocol, ca.ca_file)
        if protocol == "SSL":
            await _produce(bootstrap, settings, ev)
        else:  # the test's own producer cannot authenticate either: it goes as SSL
            await _produce(bootstrap, settings.model_copy(update={"kafka_security_protocol": "SSL"}), ev)
        recorder = ClientRecorder(downgrade_sasl=True).install(monkeypatch)  # from here on: ingest's clients only
        svc = IngestService(settings)
        await svc.start()
        try:
            deadline = time.monotonic() + 60
            while True:
                rows = await svc.analytics.query("SELECT request_id FROM {db}.request_log WHERE org_id = {o:String}",
                                                 {"o": ev.org_id})
                if rows:
                    break
                assert time.monotonic() < deadline, "ingest did not write the event"
                await asyncio.sleep(0.2)
            assert rows == [{"request_id": ev.request_id}]
            checks = await svc.ready()
            assert checks["kafka"].ok, checks
        finally:
            await svc.stop()

    expected = dict(svc.kafka_security)
    assert expected["security_protocol"] == protocol and isinstance(expected["ssl_context"], ssl.SSLContext)
    # ensure_topics' admin, Faust's consumer and producer (the consumer is built on Faust's own thread), the ping
    assert {"AIOKafkaAdminClient", "AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaClient"} <= recorder.kinds()
    for built in recorder.built:
        assert built.security() == expected, (built.cls, built.thread)
