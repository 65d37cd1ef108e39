"""The memory-only embedded broker lost under load, and the whole stack killed with SIGKILL: every
answered request is still logged exactly once (the gateway's journal resends what the broker forgot;
ingest dedupes)."""

from __future__ import annotations

import os
import signal
import time
import uuid

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import running_stack


def test_broker_killed_under_load_then_back(tmp_path):
    """The runner's own broker SIGKILLed under load; its supervisor restarts it empty."""
    with running_stack(tmp_path, s3=False, embedded_broker=True) as stack:
        run = uuid.uuid4().hex
        with SteadyLoad(stack.gateway, stack.key, run, rate=40) as load:
            time.sleep(3)
            os.kill(stack.broker_pid(), signal.SIGKILL)  # everything it held in memory is gone
            killed_at = time.monotonic()
            time.sleep(5)
            back_at = time.monotonic()
            time.sleep(3)
        result = load.stop()
        logged = wait_logged(stack.api, stack.key, run, set(result.sent))
        assert_exactly_once(result, logged)
        print(f"\nbroker killed: sent {len(result.sent)}, p99 during fault {result.p99(killed_at, back_at) * 1000:.0f} ms")


def test_whole_stack_sigkilled_under_load_then_up_again(tmp_path):
    with running_stack(tmp_path, s3=False) as stack:
        run = uuid.uuid4().hex
        load = SteadyLoad(stack.gateway, stack.key, run, rate=40, timeout=5)
        with load:
            time.sleep(3)
            stack.kill_runner()
            stack.kafka.proc.kill()
            stack.kafka.proc.wait(5)
        result = load.stop()
        stack.kafka.start()
        stack.restart_runner()
        answered = set(result.ok)
        logged = wait_logged(stack.api, stack.key, run, answered)
        # requests in flight at the kill got no answer; every answered one must be logged exactly once
        result.outcomes = [o for o in result.outcomes if o.request_id in answered]
        stray = set(logged) - answered
        logged = [rid for rid in logged if rid not in stray]
        assert_exactly_once(result, logged)
        print(f"\nstack SIGKILL: answered {len(answered)}, logged {len(set(logged))}, stray (unanswered but logged) {len(stray)}")
