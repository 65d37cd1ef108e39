from __future__ import annotations

from helicone_core.settings import ServiceSettings
from pydantic import Field


class PromptsSettings(ServiceSettings):
    port: int = 8789  # ops HTTP: /metrics, /healthz, /readyz
    grpc_port: int = 50051
    max_template_bytes: int = 256 * 1024
    # Longest a call waits for Postgres when the caller sets no shorter deadline.
    query_timeout: float = Field(default=5.0, gt=0)
    # How often gRPC health re-checks Postgres (NOT_SERVING while it is unreachable).
    health_check_interval: float = Field(default=2.0, gt=0)
