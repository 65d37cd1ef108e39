"""Production entrypoint: python -m helicone_gateway (settings from HELICONE_* environment)."""

import uvicorn
from helicone_core.http_limits import uvicorn_limits
from helicone_core.logging import configure_logging

from .app import create_app
from .settings import GatewaySettings

settings = GatewaySettings()
configure_logging("gateway", settings.log_level)
uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
            **uvicorn_limits(settings))
