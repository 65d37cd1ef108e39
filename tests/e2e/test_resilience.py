"""Runs after the request-path tests (file order): stops the broker under live traffic."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.e2e


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_broker_down_users_get_answers_and_events_arrive_later(stack):
    headers = {"Helicone-Auth": f"Bearer {stack.key}", "Authorization": "Bearer sk-whatever",
               "Helicone-Property-Phase": "outage"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "is anyone there"}]}
    stack.kafka.stop()
    try:
        ids = []
        for _ in range(5):
            r = httpx.post(f"{stack.gateway}/v1/chat/completions", json=body, headers=headers, timeout=10)
            assert r.status_code == 200
            assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream model"
            ids.append(r.headers["helicone-id"])
        # the events wait in the journal while the broker is away
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            unacked = _metric(httpx.get(f"{stack.gateway}/metrics").text, "helicone_gateway_journal_unacked_events")
            if unacked >= 5:
                break
            time.sleep(0.2)
        assert unacked >= 5
        # readiness says so: the gateway keeps serving (Kafka optional), ingest cannot work without it
        gateway_ready = httpx.get(f"{stack.gateway}/readyz", timeout=10)
        assert gateway_ready.status_code == 200 and gateway_ready.json()["checks"]["kafka"] == {"ok": False, "required": False}
        ingest_ready = httpx.get(f"{stack.ingest_ops}/readyz", timeout=10)
        assert ingest_ready.status_code == 503 and ingest_ready.json()["checks"]["kafka"] == {"ok": False, "required": True}
    finally:
        stack.kafka.start()  # same port; a fresh, empty in-memory broker
    # the journal hands them to the broker once it is back
    deadline = time.monotonic() + 60
    while (unacked := _metric(httpx.get(f"{stack.gateway}/metrics").text, "helicone_gateway_journal_unacked_events")) and (
            time.monotonic() < deadline):
        time.sleep(0.5)
    assert unacked == 0
    metrics = httpx.get(f"{stack.gateway}/metrics").text
    # delivered either by the producer's own retries once the broker answered, or sent again from the journal
    published = sum(_metric(metrics, f'helicone_gateway_events_published_total{{path="{p}"}}') for p in ("direct", "resend"))
    assert published >= 5
    # This broker was restarted behind the stack's back (not by `helicone-stack up`'s supervisor,
    # which rewinds ingest itself; see tests/faults): a running ingest may not notice the new log
    # (README, limits). A restart of the stack always reads it, and the journal still holds them.
    stack.restart_runner()
    for rid in ids:
        logged = stack.wait_for_request(rid, timeout=90)
        assert logged["properties"] == {"phase": "outage"} and logged["usage"]["completion_tokens"] == 6


def test_data_survives_a_restart_of_the_stack(stack):
    headers = {"Helicone-Auth": f"Bearer {stack.key}", "Helicone-Property-Phase": "before-restart"}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "remember me"}]}
    r = httpx.post(f"{stack.gateway}/v1/chat/completions", json=body, headers=headers, timeout=10)
    rid = r.headers["helicone-id"]
    before = stack.wait_for_request(rid)

    stack.restart_runner()  # Postgres (keys), chDB (rows) and bodies all come back from the data dir

    after = stack.wait_for_request(rid, timeout=10)
    assert after == before
    assert after["request_body"] == body
    # the same key still works, and new traffic is logged after the restart
    r = httpx.post(f"{stack.gateway}/v1/chat/completions", json=body, headers={**headers, "Helicone-Property-Phase": "after-restart"}, timeout=10)
    assert r.status_code == 200
    stack.wait_for_request(r.headers["helicone-id"])
