"""Starts the chosen services in one asyncio loop, each on its own port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from helicone_core.addresses import host_port
from helicone_core.http_limits import uvicorn_limits

log = logging.getLogger("helicone.runner")

SERVICES = ("prompts", "ingest", "api", "gateway")  # start order; stop in reverse


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to the runner (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn
        return None


@dataclass
class Running:
    name: str
    urls: dict[str, str]
    stop: Any
    service: Any = None  # the service object (Gateway, IngestService, ...) for the runner's supervision
    # a second stop signal: cuts the answers in progress, so that the graceful stop (stop) ends at once
    force: Callable[[], None] = field(default=lambda: None)


async def _serve(app, settings, server: Any = None) -> Any:
    """Serves `app` with uvicorn, or with `server` (an object with uvicorn's serve(), started and
    should_exit: the gateway's own HttpServer); returns once it accepts connections."""
    host, port = settings.host, settings.port
    if server is None:
        server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                                        **uvicorn_limits(settings)))
    task = asyncio.create_task(server.serve())
    server._task = task  # type: ignore[attr-defined]
    while not server.started:
        if task.done():
            exc = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"server on {host_port(host, port)} failed to start: {exc!r}")
        await asyncio.sleep(0.02)
    return server


def _force_stop(*servers: Any) -> None:
    """Cuts every connection of `servers` and cancels the answers in progress: the graceful stop that
    waits for them (a stream of a slow or hung provider: up to its read timeout) then ends at once."""
    for server in servers:
        if isinstance(server, _Server):
            for conn in list(server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            for task in list(server.server_state.tasks):
                task.cancel()
        else:
            server.force_stop()  # the gateway's HttpServer


async def _shutdown(server: Any) -> None:
    server.should_exit = True
    with contextlib.suppress(Exception):
        await server._task  # type: ignore[attr-defined]


async def start_services(targets: list[str], settings: dict[str, Any],
                         on_started: Callable[[Running, float], None] | None = None) -> list[Running]:
    """settings: per-service settings objects keyed by service name; on_started(running, seconds)
    after each service answers (the runner's progress lines)."""
    running: list[Running] = []
    try:
        for name in SERVICES:
            if name not in targets:
                continue
            t0 = time.monotonic()
            s = settings[name]
            if name == "prompts":
                from helicone_core.metrics import ops_app
                from helicone_prompts.server import PromptsServer

                srv = PromptsServer(s)
                await srv.start()
                ops = await _serve(ops_app(srv.metrics, srv.ready), s)

                async def stop_prompts(srv=srv, ops=ops):
                    await _shutdown(ops)
                    await srv.stop()

                running.append(Running(name, {"grpc": host_port(s.host, srv.bound_port), "ops": f"http://{host_port(s.host, s.port)}"},
                                       stop_prompts, force=lambda ops=ops: _force_stop(ops)))
            elif name == "ingest":
                from helicone_core.metrics import ops_app
                from helicone_ingest.app import IngestService

                svc = IngestService(s)
                await svc.start()
                ops = await _serve(ops_app(svc.metrics, svc.ready), s)

                async def stop_ingest(svc=svc, ops=ops):
                    await _shutdown(ops)
                    await svc.stop()

                running.append(Running(name, {"ops": f"http://{host_port(s.host, s.port)}"}, stop_ingest, svc,
                                       lambda ops=ops: _force_stop(ops)))
            elif name == "api":
                from helicone_api.app import create_app as create_api

                # With chDB, one process owns the data dir: every ChdbStore on the same path in
                # this process shares one engine session, so api and ingest see the same data.
                api = create_api(s)
                server = await _serve(api, s)
                running.append(Running(name, {"http": f"http://{host_port(s.host, s.port)}"}, lambda server=server: _shutdown(server),
                                       api.state.api, lambda server=server: _force_stop(server)))
            elif name == "gateway":
                from helicone_gateway.app import create_app as create_gateway
                from helicone_gateway.http_server import HttpServer

                app = create_gateway(s)
                server = await _serve(app, s, HttpServer.for_settings(app, s))
                running.append(Running(name, {"http": f"http://{host_port(s.host, s.port)}"}, lambda server=server: _shutdown(server),
                                       app.gateway, lambda server=server: _force_stop(server)))
            if on_started:
                on_started(running[-1], time.monotonic() - t0)
    except BaseException:
        await stop_services(running)
        raise
    return running


async def stop_services(running: list[Running]) -> None:
    for r in reversed(running):
        try:
            await r.stop()
        except Exception:  # noqa: BLE001 - keep stopping the others
            log.exception("error stopping %s", r.name)
