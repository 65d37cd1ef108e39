"""Serve an ASGI app with uvicorn inside the current event loop (for in-process tests)."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from tests.support.net import free_port


async def request_body(receive) -> bytes:
    """An ASGI app's whole request body, read from `receive` (a disconnect ends it)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


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


async def asgi_exchange(app, scope: dict, parts: list[bytes]) -> list[dict]:
    """One request straight through an ASGI app (no server: any bytes can go in): the body in
    `parts`, then a disconnect once the response is complete. Returns the messages the app sent."""
    parts = list(parts)
    done = asyncio.Event()

    async def receive():
        if parts:
            return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}
        await done.wait()
        return {"type": "http.disconnect"}

    sent = []

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return sent


async def asgi_request(app, scope: dict, parts: list[bytes]) -> tuple[int, dict, bytes]:
    """asgi_exchange's answer as status, headers, body."""
    sent = await asgi_exchange(app, scope, parts)
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])
