"""A Kafka broker behind TLS, and a recorder of the options every aiokafka client is built with.

`tls_kafka()`: Tansu (which serves plain text only) behind a TLS-terminating FaultProxy, with
Tansu advertising the proxy as its address, so that every connection a client makes, the
bootstrap one and those to the brokers the metadata names, goes through TLS and verifies the
proxy's certificate against a CA made here.

`ClientRecorder`: wraps the constructors of aiokafka's clients (the real constructors still run)
and records the keyword arguments of each client built by our code, not the clients aiokafka
builds inside them. With `downgrade_sasl`, a SASL_SSL client is built as an SSL client after its
options were recorded: Tansu 0.6 cannot authenticate anybody (see kafka.py's tests), so SASL
settings are checked for reaching every client while the connection still runs for real over TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helicone_runner.embedded import EmbeddedKafka

from tests.support.fault_proxy import FaultProxy
from tests.support.net import free_port

SECURITY_KEYS = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")


@dataclass(frozen=True)
class CertAuthority:
    ca_file: Path  # the CA certificate (PEM): what HELICONE_KAFKA_SSL_CAFILE points at
    cert_file: Path  # the server certificate, for 127.0.0.1 and localhost
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_ca(directory: Path) -> CertAuthority:
    """A throw-away CA and a server certificate it signed, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    valid = dict(not_valid_before=now - dt.timedelta(minutes=5), not_valid_after=now + dt.timedelta(days=1))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "helicone test CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                serial_number=x509.random_serial_number(), **valid)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
                                issuer_name=ca_name, public_key=key.public_key(), serial_number=x509.random_serial_number(), **valid)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    out = CertAuthority(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    out.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return out


class _AdvertisingKafka(EmbeddedKafka):
    """Tansu listening on `port`, telling clients to come back through `advertised_port`."""

    def __init__(self, host: str, port: int, advertised_port: int, log_path: Path) -> None:
        super().__init__(host, port, log_path)
        self.advertised_port = advertised_port

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("--advertised-listener-url") + 1
        argv[at] = f"tcp://{self.host}:{self.advertised_port}"
        return argv


@contextlib.asynccontextmanager
async def tls_kafka(ca: CertAuthority, log_path: Path) -> AsyncIterator[str]:
    """Yields the bootstrap address of a broker reachable over TLS only (certificate of `ca`)."""
    broker_port = free_port()
    proxy = FaultProxy("127.0.0.1", broker_port, tls=ca.server_context())
    broker = _AdvertisingKafka("127.0.0.1", broker_port, proxy.port, log_path)
    await broker.start_async()
    try:
        await proxy.start()
        try:
            yield f"127.0.0.1:{proxy.port}"
        finally:
            await asyncio.wait_for(proxy.stop(), 10)
    finally:
        broker.stop()


@dataclass
class Built:
    cls: str
    kwargs: dict[str, Any]
    thread: str

    def security(self) -> dict[str, Any]:
        return {k: v for k, v in self.kwargs.items() if k in SECURITY_KEYS}


@dataclass
class ClientRecorder:
    downgrade_sasl: bool = False
    built: list[Built] = field(default_factory=list)
    _depth: threading.local = field(default_factory=threading.local)

    def install(self, monkeypatch) -> ClientRecorder:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.client import AIOKafkaClient

        for cls in (AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient, AIOKafkaClient):
            monkeypatch.setattr(cls, "__init__", self._wrap(cls.__name__, cls.__init__))
        return self

    def _wrap(self, name: str, init):
        recorder = self

        def __init__(client, *args, **kwargs):
            depth = getattr(recorder._depth, "n", 0)
            if depth == 0:  # built by our code (or Faust), not by another aiokafka client
                recorder.built.append(Built(name, dict(kwargs), threading.current_thread().name))
                if recorder.downgrade_sasl and kwargs.get("security_protocol") == "SASL_SSL":
                    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("sasl_")} | {"security_protocol": "SSL"}
            recorder._depth.n = depth + 1
            try:
                init(client, *args, **kwargs)
            finally:
                recorder._depth.n = depth

        return __init__

    def kinds(self) -> set[str]:
        return {b.cls for b in self.built}
