"""A key revoked under load: every request answered before the revocation is logged exactly once,
and within two seconds of it the key is refused (nothing more is proxied or logged)."""

from __future__ import annotations

import time
import uuid

import httpx

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import running_stack


def test_key_revoked_under_load_is_refused_within_two_seconds(tmp_path):
    with running_stack(tmp_path, s3=False) as stack, stack.api_client() as api:
        created = api.post("/v1/keys", json={"name": "revoked-under-load"}).json()
        deadline = time.monotonic() + 5
        while httpx.post(f"{stack.gateway}/v1/chat/completions", json={"model": "m", "messages": []}, timeout=10,
                         headers={"Helicone-Auth": f"Bearer {created['key']}"}).status_code == 401:
            assert time.monotonic() < deadline, "new key never reached the gateway"
            time.sleep(0.05)
        run = uuid.uuid4().hex
        with SteadyLoad(stack.gateway, created["key"], run, rate=40) as load:
            time.sleep(3)
            assert api.delete(f"/v1/keys/{created['id']}").status_code == 200
            revoked_at = time.monotonic()
            time.sleep(3)
        result = load.stop()
        late = [o for o in result.outcomes if o.sent_at > revoked_at + 2]
        assert late and all(o.status == 401 for o in late), "revoked key still accepted 2 s after the revocation"
        answered = [o for o in result.outcomes if o.status == 200]
        assert answered and all(o.status in (200, 401) for o in result.outcomes)
        result.outcomes = answered
        logged = wait_logged(stack.api, stack.key, run, set(result.sent))
        assert_exactly_once(result, logged)
        assert api.post("/v1/request/query", json={}, headers={"Authorization": f"Bearer {created['key']}"}).status_code == 401
