"""Production entrypoint: python -m helicone_api (settings from HELICONE_* environment)."""

from helicone_core.entrypoint import serve
from helicone_core.logging import configure_logging

from .app import create_app
from .settings import ApiSettings

settings = ApiSettings()
configure_logging("api", settings.log_level)
serve(create_app(settings), settings)
