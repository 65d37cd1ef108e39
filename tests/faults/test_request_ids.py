"""Caller-chosen request ids under load: two orgs sending the same ids never touch each other's
logs, and an org that reuses its ids gets one log per id, the newest request's, with its bodies."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import _create_key, running_stack


def test_two_orgs_sending_the_same_request_ids(fresh_db_dsn, tmp_path):
    with running_stack(tmp_path, s3=False, postgres_dsn=fresh_db_dsn) as stack:
        other = _create_key(fresh_db_dsn)  # a second org
        time.sleep(0.5)  # the new key reaches the gateway's key directory (NOTIFY)
        ids = [str(uuid.uuid4()) for _ in range(200)]
        run_a, run_b = uuid.uuid4().hex, uuid.uuid4().hex
        with SteadyLoad(stack.gateway, stack.key, run_a, rate=40, request_ids=iter(ids)) as load_a, \
                SteadyLoad(stack.gateway, other["key"], run_b, rate=40, request_ids=iter(ids)) as load_b:
            time.sleep(200 / 40 + 1)
        result_a, result_b = load_a.stop(), load_b.stop()
        assert sorted(result_a.sent) == sorted(result_b.sent) == sorted(ids)
        assert_exactly_once(result_a, wait_logged(stack.api, stack.key, run_a, set(ids)))
        assert_exactly_once(result_b, wait_logged(stack.api, other["key"], run_b, set(ids)))
        with httpx.Client(base_url=stack.api, timeout=10) as api:
            for rid in ids[:20]:  # each org reads its own request under the shared id
                a = api.get(f"/v1/request/{rid}", headers={"Authorization": f"Bearer {stack.key}"}).json()
                b = api.get(f"/v1/request/{rid}", headers={"Authorization": f"Bearer {other['key']}"}).json()
                assert (a["properties"]["fault-run"], b["properties"]["fault-run"]) == (run_a, run_b)


def test_an_org_reusing_its_request_ids_keeps_the_newest_request(tmp_path):
    with running_stack(tmp_path, s3=False) as stack:
        ids = [str(uuid.uuid4()) for _ in range(150)]
        first, second = uuid.uuid4().hex, uuid.uuid4().hex
        with SteadyLoad(stack.gateway, stack.key, first, rate=40, request_ids=iter(ids)) as load:
            time.sleep(150 / 40 + 1)
        result_first = load.stop()
        wait_logged(stack.api, stack.key, first, set(ids))
        # the same ids again, later (in later ingest batches), with different bodies and properties
        with SteadyLoad(stack.gateway, stack.key, second, rate=40, request_ids=iter(ids),
                        extra_headers={"Helicone-User-Id": "second-round"}, prompt="second round of load") as load:
            time.sleep(150 / 40 + 1)
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
