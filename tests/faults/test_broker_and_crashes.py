"""The memory-only embedded broker lost under load, and the whole stack killed with SIGKILL: every
answered request is still logged exactly once (the gateway's journal resends what the broker forgot;
ingest dedupes), save, under SIGKILL, a request answered within the window the README states: between the
end of a response and its batch's fsync an event is only in memory."""

from __future__ import annotations

import os
import signal
import time
import uuid

from tests.faults.conftest import assert_exactly_once
from tests.support.load import SteadyLoad, wait_logged
from tests.support.stack import running_stack

# The in-memory window (README, "The one window left"): at light load a journal batch waits up to
# HELICONE_JOURNAL_LINGER_MS (5 ms) for company, then its write and fsync, milliseconds more. A request
# answered this close to a SIGKILL may be lost; every one answered earlier must be logged exactly once.
IN_MEMORY_WINDOW = 0.1


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
            killed_at = time.monotonic()  # the kill lands at or after this
            stack.kill_runner()
            stack.kafka.proc.kill()
            stack.kafka.proc.wait(5)
        result = load.stop()
        stack.kafka.start()
        stack.restart_runner()
        answered = set(result.ok)
        # answered (as the caller saw it) within the window before the kill: the gateway's response ended earlier still
        late = {o.request_id for o in result.outcomes if o.request_id in answered
                and o.sent_at + o.latency > killed_at - IN_MEMORY_WINDOW}
        wait_logged(stack.api, stack.key, run, answered - late)
        logged = wait_logged(stack.api, stack.key, run, answered, timeout=10)  # the late ones, journaled or not
        # requests in flight at the kill got no answer; every answered one must be logged exactly once, save
        # a late one lost in the window
        lost_late = late - set(logged)
        kept = answered - lost_late
        result.outcomes = [o for o in result.outcomes if o.request_id in kept]
        stray = set(logged) - answered
        logged = [rid for rid in logged if rid not in stray]
        assert len(answered) - len(late) >= 100  # ~120 answered in 3 s: the window excuses a few at most
        assert_exactly_once(result, logged)
        print(f"\nstack SIGKILL: answered {len(answered)}, logged {len(set(logged))}, answered within "
              f"{IN_MEMORY_WINDOW * 1000:.0f} ms of the kill {len(late)} (lost {len(lost_late)}), "
              f"stray (unanswered but logged) {len(stray)}")
