"""Production entrypoint: python -m helicone_prompts (settings from HELICONE_* environment).
gRPC on HELICONE_GRPC_PORT; the ops HTTP server's lifespan runs the gRPC server."""

import uvicorn
from helicone_core.http_limits import uvicorn_limits
from helicone_core.logging import configure_logging
from helicone_core.metrics import ops_app

from .server import PromptsServer
from .settings import PromptsSettings

settings = PromptsSettings()
configure_logging("prompts", settings.log_level)
server = PromptsServer(settings)
uvicorn.run(ops_app(server.metrics, server.ready, server), host=settings.host, port=settings.port, log_config=None, access_log=False,
            **uvicorn_limits(settings))
