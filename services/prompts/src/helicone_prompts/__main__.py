"""Production entrypoint: python -m helicone_prompts (settings from HELICONE_* environment).
gRPC on HELICONE_GRPC_PORT; the ops HTTP server's lifespan runs the gRPC server."""

from helicone_core.entrypoint import serve
from helicone_core.logging import configure_logging
from helicone_core.metrics import ops_app

from .server import PromptsServer
from .settings import PromptsSettings

settings = PromptsSettings()
configure_logging("prompts", settings.log_level)
server = PromptsServer(settings)
serve(ops_app(server.metrics, server.ready, server), settings)
