from __future__ import annotations

from pathlib import Path

from helicone_core.settings import ServiceSettings


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
    spool_dir: Path | None = None  # defaults to <data_dir>/spool
    spool_max_bytes: int = 256 * 1024 * 1024
    spool_replay_interval: float = 2.0
    kafka_create_topics: bool = True
    kafka_replication_factor: int = 1
    cost_registry_file: Path | None = None

    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or (self.data_dir / "spool")
