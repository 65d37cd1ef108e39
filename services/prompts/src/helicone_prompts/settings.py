from __future__ import annotations

from helicone_core.settings import ServiceSettings


class PromptsSettings(ServiceSettings):
    port: int = 8789  # ops HTTP: /metrics, /healthz, /readyz
    grpc_port: int = 50051
    max_template_bytes: int = 256 * 1024
