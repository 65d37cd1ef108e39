from __future__ import annotations

from helicone_core.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    port: int = 8788  # ops HTTP: /metrics, /healthz, /readyz
    consumer_group: str = "helicone-ingest"
    batch_size: int = 500
    batch_within: float = 1.0  # seconds to wait for a batch to fill
    kafka_replication_factor: int = 1
    # Faust consumer-group timings; the embedded runner shortens them for a single local broker.
    broker_session_timeout: float = 60.0
    broker_heartbeat_interval: float = 3.0
    broker_rebalance_timeout: float = 60.0
    retry_max_backoff: float = 30.0
    offset_guard_interval: float = 5.0  # seconds between checks for positions past the log end
