"""An in-process gateway for tests: the real app in front of whatever upstream the settings name,
with a given key store and a publisher that records the events it builds instead of sending them."""

from __future__ import annotations

import contextlib

import httpx
from helicone_gateway.app import create_app
from helicone_gateway.settings import GatewaySettings


@contextlib.asynccontextmanager
async def in_process_gateway(tmp_path, keys, **settings):
    """Yields (client, gateway, built events); no Kafka is reached (the bootstrap is a closed loopback port)."""
    settings.setdefault("kafka_bootstrap", "127.0.0.1:1")
    app = create_app(GatewaySettings(data_dir=tmp_path, _env_file=None, **settings))
    gw = app.state.gateway
    gw.keys = keys
    await gw.start()
    built = []
    gw.publisher.submit = lambda builder, size=0: built.append(builder())
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            yield client, gw, built
    finally:
        await gw.stop()
