"""Production entrypoint: python -m helicone_gateway [--workers N] (settings from HELICONE_*
environment; --workers overrides HELICONE_GATEWAY_WORKERS)."""

import argparse
import sys

from helicone_core.logging import configure_logging

from .app import create_app
from .http_server import run
from .settings import GatewaySettings
from .workers import WorkerParent, adopt_orphan_journals, reuseport_socket, worker_journal_dir

parser = argparse.ArgumentParser(prog="python -m helicone_gateway")
parser.add_argument("--workers", type=int, default=None,
                    help="gateway processes sharing the port (default: HELICONE_GATEWAY_WORKERS, 1)")
parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)  # set by the parent
args = parser.parse_args()
settings = GatewaySettings()
configure_logging("gateway", settings.log_level)
workers = settings.gateway_workers if args.workers is None else args.workers
if workers < 1:
    parser.error(f"--workers {workers}: expected a whole number >= 1")
if args.worker_index is None and workers > 1:
    adopt_orphan_journals(settings.resolved_journal_dir(), workers)
    sys.exit(WorkerParent(workers, settings.host, settings.port, shared_store=bool(settings.redis_url)).run())
if args.worker_index is None:
    adopt_orphan_journals(settings.resolved_journal_dir(), 1)
    run(create_app(settings), settings)
else:
    worker = settings.model_copy(update={"journal_dir": worker_journal_dir(settings.resolved_journal_dir(), args.worker_index)})
    run(create_app(worker), worker, sock=reuseport_socket(settings.host, settings.port))
