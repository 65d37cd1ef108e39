from __future__ import annotations

from pathlib import Path

from helicone_core.settings import ServiceSettings
from pydantic import Field


class GatewaySettings(ServiceSettings):
    port: int = 8787
    openai_url: str = "https://api.openai.com"
    anthropic_url: str = "https://api.anthropic.com"
    # Hosts Helicone-Target-URL may point at; empty means any host.
    target_url_allowlist: list[str] = []
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 600.0  # longest silence allowed between response bytes
    max_upstream_connections: int = 1000
    max_request_bytes: int = 32 * 1024 * 1024
    # Bodies above this many bytes are truncated in the log event (never in the proxied traffic).
    max_logged_body_bytes: int = 450 * 1024
    publish_queue_size: int = 10_000
    publish_timeout: float = 5.0
    # Event journal (journal.py): every log event stays on disk until ingest has committed past it.
    journal_dir: Path | None = None  # defaults to <data_dir>/journal
    journal_max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024)
    journal_segment_bytes: int = Field(default=16 * 1024 * 1024, ge=64 * 1024)
    journal_segment_seconds: float = Field(default=10.0, gt=0)  # a quiet segment is sealed (and can be trimmed) after this
    journal_check_interval: float = Field(default=1.0, gt=0)  # ingest commit / broker data-loss checks
    kafka_create_topics: bool = True
    kafka_replication_factor: int = 1
    # Idempotent producer (no duplicates from producer retries); the embedded broker (Tansu) lacks
    # InitProducerId, so `helicone-stack up` turns it off there.
    kafka_idempotent_producer: bool = True
    cost_registry_file: Path | None = None

    def resolved_journal_dir(self) -> Path:
        return self.journal_dir or (self.data_dir / "journal")
