from __future__ import annotations

from helicone_core.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    port: int = 8585
    max_query_limit: int = 1000
