"""Production entrypoint: python -m helicone_ingest (settings from HELICONE_* environment).
The ops HTTP server's lifespan runs the Faust consumer."""

from helicone_core.entrypoint import serve
from helicone_core.logging import configure_logging
from helicone_core.metrics import ops_app

from .app import IngestService
from .settings import IngestSettings

settings = IngestSettings()
configure_logging("ingest", settings.log_level)
service = IngestService(settings)
serve(ops_app(service.metrics, service.ready, service), settings)
