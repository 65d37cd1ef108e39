from __future__ import annotations

from helicone_core.settings import ServiceSettings
from pydantic import Field


class IngestSettings(ServiceSettings):
    port: int = 8788  # ops HTTP: /metrics, /healthz, /readyz
    # events per ClickHouse insert: each insert makes a part and its projections, a cost per insert more than per row
    # (bench/ingest_throughput.py: 500 -> 2000 halved ingest's CPU per event; 2000 -> 5000 took a worker from 14,300-15,000
    # to 18,800-19,400 events/s on chDB, its peak RSS from 614 to 719 MB). A batch closes once it holds batch_size
    # events (its last fetch may take it past); memory holds up to three: one written, one prepared, one gathering.
    batch_size: int = 5000
    # a batch also closes once its events hold this many bytes (encoded, bodies included; it may pass them by one fetch):
    # a run of large bodies must not make a batch of batch_size events that the worker's memory cannot hold
    batch_max_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024)
    batch_within: float = 1.0  # seconds to wait for a batch to fill
    # once a batch holds everything up to the log end, it is written if the previous one went this long ago: a flow of
    # batch_light_events per batch_gap_light or more is visible within batch_gap, with at most 1 / batch_gap inserts a
    # second per worker (0: at once; a lighter flow goes by batch_gap_light below). Such a fast flow's batch also goes
    # as soon as the flow pauses (a fetch of its partitions answered with nothing new, about fetch_wait after their
    # last records): the tail of a burst is visible a fetch wait after it ends, not up to batch_gap later. Each insert
    # costs about 30 ms of CPU on chDB whatever its rows (the projections, the properties view): 0.5 s instead of 0.25
    # took the stack's CPU per request 119-137 -> 98-102 us, for the last request of a burst visible 26-64 ms later
    # (bench/stack_variants.py, bench/results/stack-variants-2026-12-05-batchgap*.txt)
    batch_gap: float = Field(default=0.5, ge=0)
    # light load: a caught-up batch of fewer than batch_light_events events waits until batch_gap_light after the one
    # before (ClickHouse's advice: inserts of at least 1,000 rows, about one a second; each small insert makes a part per
    # projection, merged later) unless the flow is fast: the previous batch brought batch_light_events or more per
    # batch_gap_light (the tail of a burst), or this one fills at that rate (a burst after an idle time). Those go by
    # batch_gap. batch_light_events 0, or batch_gap_light not above batch_gap, turns the light gap off; batch_within
    # still bounds every batch's wait
    batch_light_events: int = Field(default=1000, ge=0)
    batch_gap_light: float = Field(default=1.0, ge=0)
    # while records keep coming, a fetch waits this long at most for more (Kafka answers as soon as records arrive;
    # a record waits up to about half the wait in the embedded broker, see batches.py); a second without records and
    # it waits Faust's 1.5 s again. A fast flow's tail goes once a fetch is answered empty, about this long after its
    # last records: with batch_gap 0.5, 0.05 instead of 0.1 showed the last request of a burst 34-62 ms sooner
    # (bench/results/stack-variants-2026-12-05-fetchwait-*.txt, -gap-fetchwait.txt)
    fetch_wait: float = Field(default=0.05, gt=0, le=1.5)
    kafka_replication_factor: int = 1
    # Faust consumer-group timings; the embedded runner shortens them for a single local broker.
    broker_session_timeout: float = 60.0
    broker_heartbeat_interval: float = 3.0
    broker_rebalance_timeout: float = 60.0
    retry_max_backoff: float = 30.0
    offset_guard_interval: float = 5.0  # seconds between checks for positions past the log end
    # Postgres metadata (users, sessions, property keys) is written in the background, see metadata.py
    postgres_timeout: float = Field(default=2.0, gt=0)  # connect, readiness ping and pool close
    metadata_max_pending_keys: int = Field(default=100_000, ge=1)  # distinct keys kept while Postgres is away
    metadata_retry_max_backoff: float = Field(default=5.0, gt=0)
    metadata_stop_timeout: float = Field(default=5.0, ge=0)  # last flush on a graceful stop
    # per-request webhooks (request_webhooks.py): delivered off the write path, dropped (and counted) past the queue
    webhook_queue_size: int = Field(default=10_000, ge=1)  # deliveries waiting at most
    webhook_concurrency: int = Field(default=16, ge=1)  # deliveries in progress at most
    webhook_config_ttl: float = Field(default=10.0, gt=0)  # seconds an org's webhooks are cached
    webhook_timeout: float = Field(default=10.0, gt=0)  # seconds for one delivery attempt
    webhook_attempts: int = Field(default=3, ge=1, le=10)  # tries per delivery (backoff between them)
    # loopback destinations too (tests, a single box); private and link-local ones never
    webhook_allow_loopback: bool = False
