"""The gateway process loads neither FastAPI nor gRPC (they cost it resident memory, issue 9): its ops
routes and lifespan are bare ASGI (helicone_core.metrics.OpsRoutes, GatewayApp.lifespan) answering as
the FastAPI ops app of the other services does, and gRPC loads only with a prompts service configured."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
from helicone_core.metrics import Check, OpsRoutes, ServiceMetrics, ops_app

HEAVY = ("fastapi", "starlette", "grpc")


def _modules_after(code: str, tmp_path) -> set[str]:
    script = (
        "import sys\n"
        "from helicone_gateway.app import create_app\n"
        "from helicone_gateway.settings import GatewaySettings\n"
        f"{code}\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "HELICONE_DATA_DIR": str(tmp_path)}, check=True)
    return set(out.stdout.split())


def test_a_gateway_without_a_prompts_service_never_imports_fastapi_or_grpc(tmp_path):
    assert _modules_after("create_app(GatewaySettings(_env_file=None))", tmp_path) == set()
    # with a prompts service, gRPC loads when the gateway starts (and FastAPI still does not)
    started = _modules_after(
        "import asyncio\n"
        "app = create_app(GatewaySettings(_env_file=None, prompts_target='127.0.0.1:1', kafka_bootstrap='127.0.0.1:1'))\n"
        "asyncio.run(app.state.gateway.prompts.start())", tmp_path)
    assert started == {"grpc"}


@pytest.mark.parametrize("ready", [True, False])
async def test_the_ops_routes_answer_as_the_fastapi_ops_app_does(ready):
    metrics = ServiceMetrics("gateway", "test")
    metrics.counter("helicone_test_total", "a counter").inc()

    async def checks():
        return {"broker": Check(ready)}

    answers = []
    for app in (OpsRoutes(metrics, checks), ops_app(metrics, checks)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops") as client:
            got = []
            for method, path in (("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"), ("HEAD", "/healthz"),
                                 ("POST", "/readyz"), ("DELETE", "/metrics")):
                r = await client.request(method, path)
                got.append((method, path, r.status_code, r.headers.get("content-type"), r.headers.get("allow"),
                            r.content))
            answers.append(got)
    ours, fastapi = answers
    assert ours == fastapi
    assert [a[2] for a in ours] == [200, 200, 200 if ready else 503, 405, 405, 405]  # HEAD too, as FastAPI


async def test_the_lifespan_starts_and_stops_the_gateway_and_reports_a_failed_start(tmp_path):
    from helicone_gateway.app import create_app
    from helicone_gateway.settings import GatewaySettings

    async def drive(app, messages):
        queue, sent = list(messages), []

        async def receive():
            return {"type": queue.pop(0)}

        async def send(message):
            sent.append(message["type"])

        try:
            await app({"type": "lifespan"}, receive, send)
        except RuntimeError:
            sent.append("raised")
        return sent

    app = create_app(GatewaySettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", _env_file=None))
    calls = []

    async def start():
        calls.append("start")

    async def stop():
        calls.append("stop")

    app.gateway.start, app.gateway.stop = start, stop
    assert await drive(app, ["lifespan.startup", "lifespan.shutdown"]) == ["lifespan.startup.complete",
                                                                           "lifespan.shutdown.complete"]
    assert calls == ["start", "stop"]

    async def broken():
        raise RuntimeError("no journal directory")

    app.gateway.start = broken
    calls.clear()
    assert await drive(app, ["lifespan.startup"]) == ["lifespan.startup.failed", "raised"]
    assert calls == []  # not started: nothing to stop
