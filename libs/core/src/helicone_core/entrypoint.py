"""How `python -m helicone_<service>` serves its ASGI app: uvicorn with the house options (no
access log, our logging, the request-head limits of http_limits), so every service starts and
stops the same way.

A graceful stop exits 0. uvicorn re-raises SIGTERM/SIGINT once it has shut down; with Python's
default handlers that kills the process by the signal after a clean drain, which the kubelet
reports as exit 143 (a pod that looks failed). Handlers installed here receive that re-raised
signal instead, so `serve` returns and the process exits 0; a failed startup still exits non-zero.
"""

from __future__ import annotations

import signal
import socket
import sys
from typing import Any

import uvicorn

from .gc_tuning import tune_gc
from .http_limits import uvicorn_limits
from .settings import ServiceSettings

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stopped(signum: int, frame: Any) -> None:
    """The stop signal uvicorn re-raises after its shutdown: nothing left to do."""


def serve(app: Any, settings: ServiceSettings, *, sock: socket.socket | None = None, **options: Any) -> None:
    """Serves on settings.host:port, or on `sock` (already listening: one of several workers
    sharing a port); `options` go to uvicorn.Config."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stopped)  # uvicorn puts its own handlers over these while it serves
    config = dict(log_config=None, access_log=False, **uvicorn_limits(settings), **options)
    tune_gc(settings.gc_young_threshold)
    if sock is None:
        uvicorn.run(app, host=settings.host, port=settings.port, **config)
        return
    server = uvicorn.Server(uvicorn.Config(app, **config))
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # what uvicorn.run exits with when startup failed
