"""Auth through the real key directory and a real Postgres put out of reach by a fault proxy:
known keys keep working through an outage and a restart, unknown ones never get through, and a
gateway that has never seen the key set refuses everything."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
from helicone_core import db
from helicone_gateway.app import create_app
from helicone_gateway.settings import GatewaySettings

from services.gateway.tests.test_proxy import CHAT
from tests.support.fake_upstream import create_app as create_fake_upstream
from tests.support.fault_proxy import postgres_proxy
from tests.support.inloop import serve


@contextlib.asynccontextmanager
async def real_gateway(data_dir, dsn: str, upstream_url: str):
    app = create_app(GatewaySettings(data_dir=data_dir, _env_file=None, postgres_dsn=dsn, openai_url=upstream_url,
                                     kafka_bootstrap="127.0.0.1:1"))
    gw = app.state.gateway
    gw.keys.connect_timeout = 1.0
    gw.keys.max_backoff = 0.2
    await gw.start()
    gw.publisher.submit = lambda builder, size=0: None
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            async def status(key: str) -> int:
                r = await client.post("/v1/chat/completions", json=CHAT, headers={"Helicone-Auth": f"Bearer {key}"})
                assert r.headers["helicone-id"]
                return r.status_code

            yield status, gw
    finally:
        await gw.stop()


async def test_auth_never_fails_open_through_a_postgres_outage_and_a_restart(pg_pool, fresh_db_dsn, tmp_path):
    org = await db.create_org(pg_pool, "acme")
    known = await db.create_key(pg_pool, org, "known")
    proxy, dsn = await postgres_proxy(fresh_db_dsn)
    fake = create_fake_upstream()
    try:
        async with serve(fake) as upstream:
            async with real_gateway(tmp_path, dsn, upstream) as (status, gw):
                assert await status(known.key) == 200 and await status("sk-helicone-unknown") == 401
                proxy.cut()
                while gw.keys.live:
                    await asyncio.sleep(0.01)
                assert await status(known.key) == 200
                assert await status("sk-helicone-unknown") == 401 and await status("anything at all") == 401
            # restarted while Postgres is still unreachable: the snapshot answers
            async with real_gateway(tmp_path, dsn, upstream) as (status, gw):
                assert not gw.keys.live
                assert await status(known.key) == 200 and await status("sk-helicone-unknown") == 401
                assert (await gw.ready())["key_store"].ok is True
            # a fresh gateway with no snapshot and no Postgres: closed
            async with real_gateway(tmp_path / "fresh", dsn, upstream) as (status, gw):
                assert await status(known.key) == 503 and await status("sk-helicone-unknown") == 503
                assert (await gw.ready())["key_store"].ok is False
                forwarded_during_outage = len(fake.state.received)
                proxy.restore()
                t0 = time.monotonic()
                while await status(known.key) != 200:
                    assert time.monotonic() - t0 < 5
                    await asyncio.sleep(0.05)
                # revocation reaches the gateway within two seconds
                await db.revoke_key(pg_pool, known.id)
                t0 = time.monotonic()
                while await status(known.key) != 401:
                    assert time.monotonic() - t0 < 2, "revoked key still accepted after 2 s"
                    await asyncio.sleep(0.02)
    finally:
        await proxy.stop()
    assert forwarded_during_outage == 3  # the known key's three 200s above; nothing else reached the provider
