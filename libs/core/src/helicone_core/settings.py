"""Settings base shared by every service.

Every field can be set from the environment with the ``HELICONE_`` prefix
(e.g. ``HELICONE_KAFKA_BOOTSTRAP=kafka:9092``). Service settings subclass
``CommonSettings`` and add their own fields.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REQUEST_LOGGED_TOPIC = "helicone.request-logged.v1"

# A region name goes into a response header, a metric label and every log row: short and plain.
_REGION = re.compile(r"[a-z0-9-]{1,32}")


def _region(value: str) -> str:
    if value and not _REGION.fullmatch(value):
        raise ValueError(f"HELICONE_REGION {value[:40]!r} must be empty or 1-32 lower-case letters, digits and '-' "
                         "(e.g. eu-west-1)")
    return value


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HELICONE_", extra="ignore")

    log_level: str = "INFO"
    data_dir: Path = Path("./.helicone-data")
    readiness_timeout: float = Field(default=1.0, gt=0)  # seconds for each /readyz check (they run concurrently)
    # Where this deployment runs (e.g. eu-west-1): the gateway's Helicone-Region header, each log
    # row's `region` and the `region` label of helicone_service_info. Empty: not multi-region.
    region: Annotated[str, AfterValidator(_region)] = ""
    # Model prices (cost.py): the gateway prices requests with them, ingest names models by them in
    # its metrics. Default: the registry shipped with helicone_core.
    cost_registry_file: Path | None = None

    # Kafka
    kafka_bootstrap: str = "localhost:9092"
    kafka_topic: str = REQUEST_LOGGED_TOPIC
    kafka_dlq_topic: str = REQUEST_LOGGED_TOPIC + ".dlq"
    # Partitions of the request-log topic: created with this many, and the gateway writes only to
    # 0..N-1 (a broker may auto-create the topic with more before anyone creates it properly).
    kafka_topic_partitions: int = 1
    # Ingest's consumer group; the gateway reads its committed offsets to trim its journal.
    consumer_group: str = "helicone-ingest"

    # Postgres (metadata, keys, prompts)
    postgres_dsn: SecretStr = SecretStr("postgresql://postgres@localhost:5432/postgres")
    # Local copy of the API key hashes (see key_directory.py): survives Postgres outages and restarts.
    key_snapshot_file: Path | None = None  # defaults to <data_dir>/keys/<service>.snapshot.json
    key_resync_interval: float = Field(default=60.0, gt=0)  # full reload besides the live change feed

    # Analytics store: same SQL on both backends
    analytics_backend: Literal["chdb", "clickhouse"] = "clickhouse"
    chdb_path: Path | None = None  # defaults to <data_dir>/chdb
    clickhouse_url: str = "http://localhost:8123"
    clickhouse_user: str = "default"
    clickhouse_password: SecretStr = SecretStr("")
    clickhouse_database: str = "helicone"

    # Object store for request/response bodies
    body_store: Literal["local", "s3"] = "s3"
    body_dir: Path | None = None  # defaults to <data_dir>/bodies
    s3_endpoint: str | None = None
    s3_bucket: str = "helicone-bodies"
    s3_region: str = "us-east-1"
    s3_create_bucket: bool = False

    @field_validator("kafka_topic_partitions")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

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
