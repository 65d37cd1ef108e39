"""Hostile and odd requests sent while steady load runs through the official SDK: each gets the
documented answer, the api's memory does not grow with what it refused, and every user request
is answered and logged exactly once. Loopback only: the refused targets are this stack's own
services, and they are refused before any connection is made."""

from __future__ import annotations

import json
import time
import uuid

import httpx

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import running_stack

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hostile"}]}


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hostile(stack) -> tuple[dict[str, object], str, str, float]:
    auth = {"Helicone-Auth": f"Bearer {stack.key}"}
    out: dict[str, object] = {}
    with httpx.Client(timeout=30) as c:
        for name, target in [("target_loopback_api", stack.api), ("target_localhost_ingest", stack.ingest_ops.replace("127.0.0.1", "localhost")),
                             ("target_unspecified", stack.api.replace("127.0.0.1", "0.0.0.0")),
                             ("target_decimal_ip", "http://2130706433:80")]:
            r = c.post(f"{stack.gateway}/openai/v1/chat/completions", json=CHAT, headers={**auth, "Helicone-Target-URL": target})
            out[name] = r.status_code
        out["headers_8mb"] = c.post(f"{stack.gateway}/v1/chat/completions", json=CHAT,
                                    headers={**auth, "X-Big": "a" * (8 * 1024 * 1024)}).status_code
        out["headers_150"] = c.post(f"{stack.gateway}/v1/chat/completions", json=CHAT,
                                    headers={**auth, **{f"X-H{i}": "v" for i in range(150)}}).status_code
        city_id = str(uuid.uuid4())
        out["non_ascii_header"] = c.post(f"{stack.gateway}/v1/chat/completions", json=CHAT, headers={
            **auth, "Helicone-Request-Id": city_id, "Helicone-Property-City": "Zürich".encode()}).status_code
        before = rss_mb(stack.runner_pid())
        chunk = b"x" * (1024 * 1024)
        out["api_200mb_no_key"] = c.post(f"{stack.api}/v1/request/query", content=(chunk for _ in range(200)),
                                         headers={"Content-Type": "application/json"}).status_code
        out["api_100mb_with_key"] = c.post(f"{stack.api}/v1/request/query", content=(chunk for _ in range(100)),
                                           headers={"Content-Type": "application/json", "Authorization": f"Bearer {stack.key}"}).status_code
        grew = rss_mb(stack.runner_pid()) - before
        api = {"Authorization": f"Bearer {stack.key}"}
        for name, flt in [("filter_backslash", {"user_id": "dom\\alice"}), ("filter_lone_surrogate", {"user_id": "\ud800"}),
                          ("filter_year_1", {"start": "0001-01-01T00:00:00Z"})]:
            body = json.dumps({"filter": flt}).encode()  # ensure_ascii: a lone surrogate travels as \ud800
            out[name] = c.post(f"{stack.api}/v1/request/query", content=body, headers={**api, "Content-Type": "application/json"}).status_code
        hang_id = str(uuid.uuid4())
        try:
            c.post(f"{stack.gateway}/v1/chat/completions", json={**CHAT, "model": "hang"},
                   headers={**auth, "Helicone-Request-Id": hang_id}, timeout=2)
            out["hung_upstream_client_left"] = "answered"
        except httpx.TimeoutException:
            out["hung_upstream_client_left"] = "timeout"
    return out, city_id, hang_id, grew


def test_hostile_requests_under_load_leave_users_unharmed(tmp_path):
    with running_stack(tmp_path, s3=False) as stack:
        run = uuid.uuid4().hex
        with SteadyLoad(stack.gateway, stack.key, run, rate=40) as load:
            time.sleep(1)
            outcomes, city_id, hang_id, grew = hostile(stack)
            time.sleep(1)
        result = load.stop()
        assert outcomes == {
            "target_loopback_api": 403, "target_localhost_ingest": 403, "target_unspecified": 403, "target_decimal_ip": 400,
            "headers_8mb": 431, "headers_150": 431, "non_ascii_header": 200,
            "api_200mb_no_key": 401, "api_100mb_with_key": 413,
            "filter_backslash": 200, "filter_lone_surrogate": 422, "filter_year_1": 422,
            "hung_upstream_client_left": "timeout",
        }
        assert grew < 50, f"the api's process grew {grew:.0f} MB on refused uploads"
        logged = wait_logged(stack.api, stack.key, run, set(result.sent))
        assert_exactly_once(result, logged)
        with stack.api_client() as api:
            city = api.get(f"/v1/request/{city_id}")
            assert city.status_code == 200 and city.json()["properties"]["city"] == "Zürich"  # stored as sent
            deadline = time.monotonic() + 30
            while (hung := api.get(f"/v1/request/{hang_id}")).status_code == 404 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert hung.json()["status"] == 499  # the provider call was cancelled when the caller left
        print(f"\nhostile requests under load: sent {len(result.sent)}, p99 {result.p99(0, float('inf')) * 1000:.0f} ms, "
              f"api RSS +{grew:.1f} MB after 300 MB of refused uploads")
