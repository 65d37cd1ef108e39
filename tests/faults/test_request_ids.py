"""Caller-chosen request ids under load: two orgs sending the same ids never touch each other's
logs, and an org that reuses its ids gets one log per id, the newest request's, with its bodies.
Both tests run on one stack: each sends ids of its own (new UUIDs) under runs of its own."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx
import pytest

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import _create_key, running_stack


@pytest.fixture(scope="module")
def stack_dsn(pg_dsn, tmp_path_factory):
    """The stack, on a database of its own on the session's Postgres (a second org's key is made there)."""
    name = "t_" + uuid.uuid4().hex[:12]

    async def create() -> None:
        admin = await asyncpg.connect(pg_dsn)
        await admin.execute(f"CREATE DATABASE {name}")
        await admin.close()

    asyncio.run(create())
    dsn = pg_dsn.replace("/postgres?", f"/{name}?")
    with running_stack(tmp_path_factory.mktemp("request-ids"), s3=False, postgres_dsn=dsn) as s:
        yield s, dsn


def all_answered(*loads: SteadyLoad, n: int) -> None:
    """Waits until each load has sent its n ids and had every answer (it sends no more then)."""
    deadline = time.monotonic() + n / 40 + 60
    while any(len(load.result.outcomes) < n for load in loads):
        assert time.monotonic() < deadline, [len(load.result.outcomes) for load in loads]
        time.sleep(0.1)


def test_two_orgs_sending_the_same_request_ids(stack_dsn):
    stack, dsn = stack_dsn
    other = _create_key(dsn)  # a second org
    time.sleep(0.5)  # the new key reaches the gateway's key directory (NOTIFY)
    ids = [str(uuid.uuid4()) for _ in range(200)]
    run_a, run_b = uuid.uuid4().hex, uuid.uuid4().hex
    with SteadyLoad(stack.gateway, stack.key, run_a, rate=40, request_ids=iter(ids)) as load_a, \
            SteadyLoad(stack.gateway, other["key"], run_b, rate=40, request_ids=iter(ids)) as load_b:
        all_answered(load_a, load_b, n=len(ids))
    result_a, result_b = load_a.stop(), load_b.stop()
    assert sorted(result_a.sent) == sorted(result_b.sent) == sorted(ids)
    assert_exactly_once(result_a, wait_logged(stack.api, stack.key, run_a, set(ids)))
    assert_exactly_once(result_b, wait_logged(stack.api, other["key"], run_b, set(ids)))
    with httpx.Client(base_url=stack.api, timeout=10) as api:
        for rid in ids[:20]:  # each org reads its own request under the shared id
            a = api.get(f"/v1/request/{rid}", headers={"Authorization": f"Bearer {stack.key}"}).json()
            b = api.get(f"/v1/request/{rid}", headers={"Authorization": f"Bearer {other['key']}"}).json()
            assert (a["properties"]["fault-run"], b["properties"]["fault-run"]) == (run_a, run_b)


def test_an_org_reusing_its_request_ids_keeps_the_newest_request(stack_dsn):
    stack, _dsn = stack_dsn
    ids = [str(uuid.uuid4()) for _ in range(150)]
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    with SteadyLoad(stack.gateway, stack.key, first, rate=40, request_ids=iter(ids)) as load:
        all_answered(load, n=len(ids))
    result_first = load.stop()
    wait_logged(stack.api, stack.key, first, set(ids))
    # the same ids again, later (in later ingest batches), with different bodies and properties
    with SteadyLoad(stack.gateway, stack.key, second, rate=40, request_ids=iter(ids),
                    extra_headers={"Helicone-User-Id": "second-round"}, prompt="second round of load") as load:
        all_answered(load, n=len(ids))
    result_second = load.stop()
    assert not result_first.failures() and not result_second.failures()
    assert_exactly_once(result_second, wait_logged(stack.api, stack.key, second, set(ids)))
    deadline = time.monotonic() + 30
    while wait_logged(stack.api, stack.key, first, set(), timeout=0):  # the first round is replaced entirely
        assert time.monotonic() < deadline, "first-round logs still listed"
        time.sleep(0.5)
    with stack.api_client() as api:
        for rid in ids[:20]:
            got = api.get(f"/v1/request/{rid}").json()
            assert got["user_id"] == "second-round" and got["properties"]["fault-run"] == second
            # both bodies are the second request's: its prompt, and the provider's answer to it (4 prompt tokens)
            assert got["request_body"]["messages"][0]["content"] == "second round of load"
            assert got["response_body"]["usage"]["prompt_tokens"] == 4 and got["usage"]["prompt_tokens"] == 4
