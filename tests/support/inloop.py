"""Serve an ASGI app with uvicorn inside the current event loop (for in-process tests)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from tests.support.net import free_port


@contextlib.asynccontextmanager
async def serve(app, lifespan: str = "off", **options):
    """options: more uvicorn.Config arguments (e.g. helicone_core.http_limits.uvicorn_limits)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan, **options))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
