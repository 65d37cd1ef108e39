"""Settings of the runner's own machinery (HELICONE_EMBEDDED_BROKER_* environment variables);
each service's settings live with the service."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EmbeddedBrokerSettings(BaseSettings):
    """Supervision of the embedded broker (see supervision.py)."""

    model_config = SettingsConfigDict(env_prefix="HELICONE_EMBEDDED_BROKER_", extra="ignore")

    # Recycle the request-log topic once it holds this many records. Each costs the broker its own
    # bytes (the event, inline bodies included) plus ~1.2 KB when it came alone in its batch, as
    # the gateway's do at low rates. 0 turns recycling off: the broker's memory grows with every event.
    recycle_records: int = Field(default=10_000, ge=0)
    recycle_check_interval: float = Field(default=5.0, gt=0)  # seconds between looks at the topic's size
    # Longest wait, producers held, for ingest to commit the topic's end; then try again later.
    drain_timeout: float = Field(default=10.0, gt=0)
    # Before holding the producers (what they log meanwhile waits in the gateway's journal, counted
    # as spooled), wait up to drain_timeout, unheld, until ingest is at most this many records behind.
    recycle_hold_lag: int = Field(default=2000, ge=0)
    check_interval: float = Field(default=0.5, gt=0)  # seconds between looks at the broker process
    restart_max_backoff: float = Field(default=30.0, gt=0)  # longest pause between restarts of a crashing broker
    # Crashes in a row, each within a minute of the broker's start (a start that fails counts), after which it is
    # not restarted again: `status` and the log say why, with its last output; the services run on without it.
    max_quick_crashes: int = Field(default=5, ge=1)
