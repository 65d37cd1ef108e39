"""Postgres out of reach under load: known keys keep working (the key directory), forged keys are
refused, and every answered request is logged once Postgres is back (ingest does not lose events)."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.faults.conftest import assert_exactly_once
from tests.support.fault_proxy import ThreadedPostgresProxy
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import running_stack


def test_postgres_outage_keeps_auth_closed_and_loses_nothing(fresh_db_dsn, tmp_path):
    proxy = ThreadedPostgresProxy(fresh_db_dsn)
    try:
        with running_stack(tmp_path, s3=False, postgres_dsn=proxy.dsn) as stack:
            run = uuid.uuid4().hex
            with SteadyLoad(stack.gateway, stack.key, run, rate=40) as load:
                time.sleep(2)
                proxy.cut()
                cut_at = time.monotonic()
                time.sleep(1)
                forged = httpx.post(f"{stack.gateway}/v1/chat/completions", timeout=10, json={"model": "m", "messages": []},
                                    headers={"Helicone-Auth": "Bearer sk-helicone-forged-during-outage"})
                ready = httpx.get(f"{stack.gateway}/readyz", timeout=5)
                time.sleep(4)
                proxy.restore()
                restored_at = time.monotonic()
                time.sleep(2)
            result = load.stop()
            assert forged.status_code == 401 and forged.headers["helicone-id"]
            assert ready.json()["checks"]["key_store"] == {"ok": True, "required": True}  # answering from its key set
            assert ready.status_code == 200 and ready.json()["checks"]["postgres"]["ok"] is False  # optional, reported
            logged = wait_logged(stack.api, stack.key, run, set(result.sent))
            assert_exactly_once(result, logged)
            assert len(result.sent) > 200
            print(f"\npostgres outage: sent {len(result.sent)}, p99 during fault "
                  f"{result.p99(cut_at, restored_at) * 1000:.0f} ms")
    finally:
        proxy.close()


def test_postgres_down_then_a_graceful_restart_loses_nothing(fresh_db_dsn, tmp_path):
    """The row that lost 764 of 940: Postgres out of reach under load, then `helicone-stack up` is
    stopped gracefully and started again, its memory-only broker going away with it. Ingest kept
    writing through the outage, the stop drains the broker, the journal holds the rest."""
    proxy = ThreadedPostgresProxy(fresh_db_dsn)
    try:
        with running_stack(tmp_path, s3=False, postgres_dsn=proxy.dsn, embedded_broker=True) as stack:
            run = uuid.uuid4().hex
            with SteadyLoad(stack.gateway, stack.key, run, rate=40) as load:
                time.sleep(2)
                proxy.cut()
                time.sleep(4)
            result = load.stop()
            proxy.restore()
            stack.restart_runner()  # SIGTERM: drain, broker and its memory gone, then up again
            logged = wait_logged(stack.api, stack.key, run, set(result.sent))
            assert_exactly_once(result, logged)
            print(f"\npostgres down then graceful restart: sent {len(result.sent)}, logged {len(set(logged))}")
    finally:
        proxy.close()
