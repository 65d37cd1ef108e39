"""Settings base shared by every service.

Every field can be set from the environment with the ``HELICONE_`` prefix
(e.g. ``HELICONE_KAFKA_BOOTSTRAP=kafka:9092``). Service settings subclass
``CommonSettings`` and add their own fields.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .gc_tuning import DEFAULT_YOUNG_THRESHOLD

REQUEST_LOGGED_TOPIC = "helicone.request-logged.v1"
ENV_PREFIX = "HELICONE_"
MAX_RETENTION_DAYS = 3650  # ten years: longer is keeping forever (0)

KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
KafkaSaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
KAFKA_TLS_PROTOCOLS = ("SSL", "SASL_SSL")
KAFKA_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def env_name(setting: str) -> str:
    """The environment variable of a setting (HELICONE_<NAME>), for error messages."""
    return ENV_PREFIX + setting.upper()


def describe_settings_error(exc: ValidationError) -> str:
    """A settings ValidationError on one line: each failing variable with what it accepts (pydantic
    names the accepted values of a Literal and the bounds of a number; inputs are hidden)."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{env_name(field)}: {msg}" if field else msg)
    return "; ".join(dict.fromkeys(parts))


S3_KEY_PAIR_ERROR = (f"{env_name('s3_access_key_id')} and {env_name('s3_secret_access_key')} go together: "
                     "set both, or neither to use the default AWS credential chain")

# A region name goes into a response header, a metric label and every log row: short and plain.
_REGION = re.compile(r"[a-z0-9-]{1,32}")


def _region(value: str) -> str:
    if value and not _REGION.fullmatch(value):
        raise ValueError(f"HELICONE_REGION {value[:40]!r} must be empty or 1-32 lower-case letters, digits and '-' "
                         "(e.g. eu-west-1)")
    return value


# A ClickHouse database, table or column name as the analytics SQL writes it: unquoted.
CLICKHOUSE_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _clickhouse_database(value: str) -> str:
    if not CLICKHOUSE_IDENTIFIER.fullmatch(value):
        raise ValueError(f"HELICONE_CLICKHOUSE_DATABASE {value[:40]!r} must be letters, digits and '_', not starting "
                         "with a digit (e.g. helicone_prod)")
    return value


_URI_DELIMITERS = re.compile(r"[/?#]")


def check_postgres_dsn(dsn: str) -> None:
    """ValueError unless a postgresql:// URI's user and password are percent-encoded. asyncpg ends the user info at
    the first '@' and the host list at the first '/', '?' or '#': with one of those (or a second '@') left as is, the
    rest of the password is taken for a host (looked up in DNS) or a port (echoed in every connection error).
    The message never repeats the DSN (nor names the setting). A DSN that is no URI is left to the driver's own error."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return
    authority = _URI_DELIMITERS.split(rest, maxsplit=1)[0]
    after = rest[len(authority):]
    path = after.partition("?")[0].partition("#")[0] if after.startswith("/") else ""
    userinfo, _, hosts = authority.rpartition("@")
    ports = [spec.rpartition("]")[2].partition(":")[2] if spec.startswith("[") else spec.partition(":")[2]
             for spec in hosts.split(",")]
    if "@" in userinfo or any(port and not port.isdigit() for port in ports) or (not userinfo and "@" in path):
        raise ValueError("the user or password holds a character a URI must percent-encode "
                         "(@ as %40, : as %3A, / as %2F, ? as %3F, # as %23), or a port is not a number; as written, part "
                         "of the password would be taken for the host or the port")


def _postgres_dsn(value: SecretStr) -> SecretStr:
    check_postgres_dsn(value.get_secret_value())
    return value


def _retention_days(value: int) -> int:
    if not 0 <= value <= MAX_RETENTION_DAYS:
        raise ValueError(f"{env_name('retention_days')} {value} must be 0 (keep every request forever) or a number of days "
                         f"from 1 to {MAX_RETENTION_DAYS}")
    return value


class CommonSettings(BaseSettings):
    # hide_input_in_errors: a validation error would otherwise print the input, secrets included
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", hide_input_in_errors=True)

    log_level: str = "INFO"
    data_dir: Path = Path("./.helicone-data")
    readiness_timeout: float = Field(default=1.0, gt=0)  # seconds for each /readyz check (they run concurrently)
    # Where this deployment runs (e.g. eu-west-1): the gateway's Helicone-Region header, each log
    # row's `region` and the `region` label of helicone_service_info. Empty: not multi-region.
    region: Annotated[str, AfterValidator(_region)] = ""
    # Model prices (cost.py): the gateway prices requests with them, ingest names models by them in
    # its metrics. The registry shipped with helicone_core, with this file (same shape) merged over it.
    cost_registry_file: Path | None = None
    # Python's garbage collector: young-generation threshold (gc_tuning.py; 0: Python's 700)
    gc_young_threshold: int = Field(default=DEFAULT_YOUNG_THRESHOLD, ge=0)

    # Kafka
    kafka_bootstrap: str = "localhost:9092"
    kafka_topic: str = REQUEST_LOGGED_TOPIC
    kafka_dlq_topic: str = REQUEST_LOGGED_TOPIC + ".dlq"
    # Partitions of the request-log topic: created with this many, and the gateway writes only to
    # 0..N-1 (a broker may auto-create the topic with more before anyone creates it properly).
    kafka_topic_partitions: int = 1
    # Ingest's consumer group; the gateway reads its committed offsets to trim its journal.
    consumer_group: str = "helicone-ingest"
    # How every Kafka client of the services reaches the brokers (kafka.py builds the client options).
    kafka_security_protocol: KafkaSecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: KafkaSaslMechanism = "SCRAM-SHA-512"  # SASL_PLAINTEXT / SASL_SSL only
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = None  # CA bundle (PEM) for SSL / SASL_SSL; None: the system's CAs

    # Postgres (metadata, keys, prompts)
    postgres_dsn: Annotated[SecretStr, AfterValidator(_postgres_dsn)] = SecretStr("postgresql://postgres@localhost:5432/postgres")
    # Local copy of the API key hashes (see key_directory.py): survives Postgres outages and restarts.
    key_snapshot_file: Path | None = None  # defaults to <data_dir>/keys/<service>.snapshot.json
    key_resync_interval: float = Field(default=60.0, gt=0)  # full reload besides the live change feed

    # Analytics store: same SQL on both backends
    analytics_backend: Literal["chdb", "clickhouse"] = "clickhouse"
    chdb_path: Path | None = None  # defaults to <data_dir>/chdb
    clickhouse_url: str = "http://localhost:8123"
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    clickhouse_database: Annotated[str, AfterValidator(_clickhouse_database)] = "helicone"
    # Days a request's log rows are kept (a ClickHouse TTL set by the schema migration, see
    # analytics.migrate_retention); 0: forever. Bodies: an S3 lifecycle rule, or the local store's sweep.
    retention_days: Annotated[int, AfterValidator(_retention_days)] = Field(
        default=0, json_schema_extra={"minimum": 0, "maximum": MAX_RETENTION_DAYS})  # the bounds in the chart schema too

    # Object store for request/response bodies
    body_store: Literal["local", "s3"] = "s3"
    body_dir: Path | None = None  # defaults to <data_dir>/bodies
    s3_endpoint: str | None = None
    s3_bucket: str = "helicone-bodies"
    s3_region: str = "us-east-1"
    s3_create_bucket: bool = False
    # Seconds to connect, and to wait for each answer, per try of an S3 call (bodies.S3_TRIES tries)
    s3_timeout: float = Field(default=10.0, gt=0)
    # Both or neither; neither: the default AWS credential chain (IRSA, instance role, AWS_* variables).
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None

    @field_validator("kafka_topic_partitions")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @field_validator("s3_access_key_id", "s3_secret_access_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, v):
        return None if v == "" else v  # an empty variable (e.g. rendered by a chart) means "not set"

    @model_validator(mode="after")
    def _kafka_security(self) -> CommonSettings:
        protocol = env_name("kafka_security_protocol")
        if self.kafka_security_protocol in KAFKA_SASL_PROTOCOLS:
            given = {"kafka_sasl_username": self.kafka_sasl_username, "kafka_sasl_password": self.kafka_sasl_password.get_secret_value()}
            missing = [env_name(field) for field, value in given.items() if not value]
            if missing:
                raise ValueError(f"{' and '.join(missing)} must be set when {protocol} is {self.kafka_security_protocol}")
        elif self.kafka_sasl_username or self.kafka_sasl_password.get_secret_value():
            # credentials that would silently go unused hide a wrong protocol
            raise ValueError(f"{env_name('kafka_sasl_username')} / {env_name('kafka_sasl_password')} are set but "
                             f"{protocol} is {self.kafka_security_protocol}; use SASL_PLAINTEXT or SASL_SSL")
        if self.kafka_ssl_cafile is not None:
            cafile = env_name("kafka_ssl_cafile")
            if self.kafka_security_protocol not in KAFKA_TLS_PROTOCOLS:
                raise ValueError(f"{cafile} is set but {protocol} is {self.kafka_security_protocol}, "
                                 "which does not use TLS; use SSL or SASL_SSL")
            if not (self.kafka_ssl_cafile.is_file() and os.access(self.kafka_ssl_cafile, os.R_OK)):
                raise ValueError(f"{cafile}: {self.kafka_ssl_cafile} is not a readable file (a PEM CA bundle)")
        return self

    @model_validator(mode="after")
    def _s3_credentials(self) -> CommonSettings:
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError(S3_KEY_PAIR_ERROR)
        return self

    def resolved_chdb_path(self) -> Path:
        return self.chdb_path or (self.data_dir / "chdb")

    def resolved_key_snapshot_file(self, service: str) -> Path:
        return self.key_snapshot_file or (self.data_dir / "keys" / f"{service}.snapshot.json")

    def resolved_body_dir(self) -> Path:
        return self.body_dir or (self.data_dir / "bodies")


class ServiceSettings(CommonSettings):
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # Request header limits (http_limits.py): more headers or more header bytes (names + values)
    # are answered 431; the HTTP server itself refuses far larger header blocks before parsing them.
    max_header_count: int = Field(default=100, ge=1)
    max_header_bytes: int = Field(default=65536, ge=1024)
