"""Production entrypoint: python -m helicone_ingest (settings from HELICONE_* environment).
The ops HTTP server's lifespan runs the Faust consumer."""

import uvicorn
from helicone_core.http_limits import uvicorn_limits
from helicone_core.logging import configure_logging
from helicone_core.metrics import ops_app

from .app import IngestService
from .settings import IngestSettings

settings = IngestSettings()
configure_logging("ingest", settings.log_level)
service = IngestService(settings)
uvicorn.run(ops_app(service.metrics, service.ready, service), host=settings.host, port=settings.port, log_config=None, access_log=False,
            **uvicorn_limits(settings))
