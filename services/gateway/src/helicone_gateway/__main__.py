"""Production entrypoint: python -m helicone_gateway (settings from HELICONE_* environment)."""

from helicone_core.entrypoint import serve
from helicone_core.logging import configure_logging

from .app import create_app
from .settings import GatewaySettings

settings = GatewaySettings()
configure_logging("gateway", settings.log_level)
serve(create_app(settings), settings)
