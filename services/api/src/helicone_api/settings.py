from __future__ import annotations

from helicone_core.settings import ServiceSettings
from pydantic import Field


class ApiSettings(ServiceSettings):
    port: int = 8585
    max_query_limit: int = 1000
    # Largest request body (bytes) the api reads; larger ones are answered 413 (guard.py).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
