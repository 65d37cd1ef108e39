"""What a stuck test waits for, written shortly before pytest-timeout ends the run.

pytest-timeout's thread method prints every thread's stack and exits. For an asyncio test that
says little: the main thread sits in the event loop's `select`, and the coroutine that waits (on
a socket, a lock, a future) is not on any thread's stack. So a little before the limit
(`lead(timeout)` earlier) this module:
- prints the stack of every task of the event loop the main thread runs, from inside that loop;
- sends SIGUSR1 to the helper processes registered in HELPERS (the ClickHouse stand-in), which
  write their own threads' stacks and what they are doing to their log file, and copies what
  they wrote (their log stays out of the tests' output otherwise).
All of it goes to stderr, which pytest captures and pytest-timeout prints with its report. Not
while a debugger is attached (pytest-timeout does not fire then either).

A pytest plugin (the root conftest loads it): it hooks pytest-timeout's own timer, so it runs with
the same limit, and pytest-timeout's timer still runs after it.

Under pytest-xdist (`make test` runs several workers) pytest-timeout's report would be lost: it writes to
the terminal, and a worker's terminal is /dev/null (execnet keeps the worker's stdout for its channel).
In a worker this plugin starts pytest-timeout's own timer with the terminal swapped for the worker's
stderr, which is the run's stderr; the worker then exits as before, and `--max-worker-restart=0`
(`pyproject.toml`) ends the run instead of starting another worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest

HELPERS: dict[str, tuple[int, Path]] = {}  # name -> (pid, log file) of a helper that reports itself on SIGUSR1
LOOP_ANSWER_SECONDS = 5.0
HELPER_ANSWER_SECONDS = 3.0


def lead(timeout: float) -> float:
    """How long before the limit the report is written: long enough for helpers to answer, and
    for the report to be in the captured output pytest-timeout prints."""
    return min(30.0, timeout / 10)


def running_loop(thread: threading.Thread) -> asyncio.AbstractEventLoop | None:
    """The event loop `thread` is running, found on its stack (a loop is thread-local state that
    another thread cannot ask for)."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, asyncio.BaseEventLoop) and candidate.is_running():
            return candidate
        frame = frame.f_back
    return None


def awaits(task: asyncio.Task) -> list[str]:
    """Where `task` waits: each coroutine of its await chain, outermost first, then what the last
    one awaits. (Task.print_stack shows only the outermost coroutine: a suspended coroutine's frame
    has no f_back, the chain is in cr_await.)"""
    frames, coro = [], task.get_coro()
    for _ in range(200):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    lines = "".join(traceback.StackSummary.extract(frames).format()).rstrip("\n").split("\n")
    waiter = getattr(task, "_fut_waiter", None)
    lines.append(f"  waiting for {waiter!r}" if waiter is not None else "  (ready to run)")
    return lines


def _print_tasks(loop: asyncio.AbstractEventLoop, done: threading.Event) -> None:
    try:
        tasks = asyncio.all_tasks(loop)
        print(f"--- {len(tasks)} asyncio task(s) of the stuck test's event loop, each where it waits ---", file=sys.stderr)
        for task in tasks:
            print("\n".join([f"{task.get_name()} ({task.get_coro().__qualname__}):", *awaits(task)]), file=sys.stderr)
        sys.stderr.flush()
    finally:
        done.set()


def report(thread: threading.Thread) -> None:
    """Writes the report for a test running on `thread` (the main thread)."""
    try:
        import pytest_timeout

        if pytest_timeout.is_debugging():
            return
    except ImportError:
        pass
    print("\n--- the test is close to its time limit: what it waits for (tests/support/hang_report.py) ---",
          file=sys.stderr)
    _report_tasks(thread)
    for name, (pid, log) in list(HELPERS.items()):
        _report_helper(name, pid, log)
    sys.stderr.flush()


def _report_helper(name: str, pid: int, log: Path) -> None:
    """Signals the helper, then copies what it appended to its log (once that stops growing)."""
    print(f"--- asking {name} (pid {pid}) for its stacks ---", file=sys.stderr, flush=True)
    start = log.stat().st_size if log.exists() else 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        print(f"--- {name} (pid {pid}) is not running ---", file=sys.stderr)
        return
    size, deadline = start, time.monotonic() + HELPER_ANSWER_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = log.stat().st_size
        if now > start and now == size:
            break
        size = now
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    print(text.rstrip() or f"--- {name} wrote nothing within {HELPER_ANSWER_SECONDS:.0f} s ---", file=sys.stderr)


def _report_tasks(thread: threading.Thread) -> None:
    loop = running_loop(thread)
    if loop is None:
        print("--- no event loop is running on the test's thread ---", file=sys.stderr)
        return
    done = threading.Event()
    try:
        loop.call_soon_threadsafe(_print_tasks, loop, done)
    except RuntimeError:  # closed in the meantime
        return
    if not done.wait(LOOP_ANSWER_SECONDS):
        print(f"--- the event loop did not run a callback within {LOOP_ANSWER_SECONDS:.0f} s: it is blocked outside "
              "its select (see the main thread's stack below) ---", file=sys.stderr)


def start(timeout: float) -> threading.Timer:
    timer = threading.Timer(timeout - lead(timeout), report, args=(threading.main_thread(),))
    timer.name = "hang-report"
    timer.daemon = True
    timer.start()
    return timer


class _Stderr:
    """A file that writes to whatever sys.stderr is at each write: pytest-timeout takes its terminal
    while the test's output is still captured, and writes once it has suspended the capture."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False


def _time_out_in_worker(item, settings) -> None:
    import pytest_timeout
    from _pytest._io import TerminalWriter

    item.config.get_terminal_writer = lambda: TerminalWriter(_Stderr())  # the worker exits right after
    pytest_timeout.timeout_timer(item, settings)


TIMER = pytest.StashKey[threading.Timer]()


# optional: the plugin loads with pytest-timeout disabled too (-p no:timeout)
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    if not (settings.timeout and settings.timeout > 0):
        return None
    item.stash[TIMER] = start(settings.timeout)
    if hasattr(item.config, "workerinput") and settings.method == "thread":  # an xdist worker
        timer = threading.Timer(settings.timeout, _time_out_in_worker, (item, settings))
        timer.name = f"pytest_timeout {item.nodeid}"
        timer.daemon = True

        def cancel() -> None:
            timer.cancel()
            timer.join()

        item.cancel_timeout = cancel  # what pytest-timeout's pytest_timeout_cancel_timer calls
        timer.start()
        return True
    return None  # pytest-timeout's own implementation runs next


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item):
    timer = item.stash.get(TIMER, None)
    if timer is not None:
        timer.cancel()
