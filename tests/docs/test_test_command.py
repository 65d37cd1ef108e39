"""The README's test command under a stuck test: it ends with every thread's stack, not at CI's own time limit."""

import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


# the Makefile's `make test` runs pytest-xdist workers (TEST_WORKERS); a run without them is what a developer types
WORKERS = [[], ["-n", "2"]]


def run_pytest(tmp_path: Path, test_file: Path, timeout: str, workers: list[str]) -> subprocess.CompletedProcess:
    """The repository's own pytest configuration with the limit lowered from minutes to seconds, loading
    the hang report as the root conftest does. Without the fuzzers' plugins (hypothesis, schemathesis):
    they play no part in a hang, and importing them is seconds of each process's start."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(ROOT), "--basetemp", str(tmp_path / "t"), "-p", "tests.support.hang_report",
         "-p", "no:hypothesispytest", "-p", "no:schemathesis",
         "-o", f"timeout={timeout}", *workers, str(test_file)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("workers", WORKERS, ids=["serial", "xdist"])
def test_a_stuck_test_ends_the_run_with_the_stack_of_every_thread(tmp_path, workers):
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent("""
        import threading
        import time

        import pytest

        def test_stuck():
            gate = threading.Event()
            helper = threading.Thread(target=gate.wait, name="helper-waiting-too", daemon=True)
            helper.start()
            gate.wait()

        # the run goes no further: the next hang would cost as much again (with workers, the other
        # worker finishes what it was given, a few of these, and stops)
        @pytest.mark.parametrize("n", range(40))
        def test_after(n):
            time.sleep(0.2)
            open(f"{__file__}.after{n}", "w").close()
    """))
    started = time.monotonic()
    run = run_pytest(tmp_path, tmp_path / "test_stuck.py", "2", workers)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert time.monotonic() - started < 30, out
    assert "Timeout" in out, out
    assert "helper-waiting-too" in out and "test_stuck" in out, out  # both threads' stacks
    after = len(list(tmp_path.glob("test_stuck.py.after*")))
    assert after == 0 if not workers else after < 40, (after, out)


@pytest.mark.parametrize("workers", WORKERS, ids=["serial", "xdist"])
def test_a_stuck_asyncio_test_reports_where_each_of_its_tasks_waits(tmp_path, workers):
    """The threads' stacks of an asyncio test show only the event loop's select: the coroutine that
    waits is on no thread's stack. The report written before the limit (tests/support/hang_report.py)
    prints each task's stack, and that comes out with the run's end."""
    (tmp_path / "test_stuck_async.py").write_text(textwrap.dedent("""
        import asyncio
        import subprocess
        import sys
        from pathlib import Path

        from tests.support import hang_report

        # reports its stacks on SIGUSR1; ends when its stdin closes (the run ended)
        HELPER = "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1); print('up', flush=True); sys.stdin.read()"

        async def wait_for_a_reply_that_never_comes(reply):
            await reply

        async def keep_polling():
            while True:
                await asyncio.sleep(0.05)

        async def test_stuck():
            log = Path(__file__).with_name("helper.log")
            with log.open("wb") as err:
                helper = subprocess.Popen([sys.executable, "-c", HELPER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            assert helper.stdout.readline() == b"up\\n"
            hang_report.HELPERS["a helper process"] = (helper.pid, log)
            poller = asyncio.create_task(keep_polling())
            await wait_for_a_reply_that_never_comes(asyncio.get_running_loop().create_future())
    """))
    run = run_pytest(tmp_path, tmp_path / "test_stuck_async.py", "8", workers)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "Timeout" in out, out
    assert "2 asyncio task(s)" in out, out
    assert "in wait_for_a_reply_that_never_comes" in out and "in keep_polling" in out, out
    assert "await reply" in out and "waiting for <Future pending" in out, out  # the innermost await
    # a helper process's own stacks, asked for with SIGUSR1
    assert "asking a helper process (pid" in out and 'File "<string>", line 1 in <module>' in out, out
    # the report is written before pytest-timeout's own, which follows it
    assert out.index("in wait_for_a_reply_that_never_comes") < out.index("Stack of MainThread"), out


def test_free_port_hands_out_ports_below_the_ephemeral_range_never_twice():
    """A port the tests pick for a service is bound seconds later; one from the kernel's ephemeral range
    could meanwhile become an outbound connection's local port (a stack start failed with EADDRINUSE)."""
    import socket

    from tests.support.net import ephemeral_ports, free_port

    lo = ephemeral_ports()[0]
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if lo > 12_000:
        assert all(10_000 <= p < lo for p in ports), [p for p in ports if not 10_000 <= p < lo]
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free when handed out


def test_each_xdist_worker_hands_out_ports_of_its_own(monkeypatch):
    """Two workers picking at random from one range could both pick a port in the seconds before it is
    bound, or one could start a service on the port another keeps as one nothing listens on."""
    from tests.support.net import ephemeral_ports, free_port, own_ports

    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)  # this test may itself run in a worker
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert own_ports(10_000, 19_999) == (10_000, 19_999)  # not under xdist
    slices = []
    for index in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        slices.append(own_ports(10_000, 19_999))
    assert slices == [(10_000, 13_332), (13_333, 16_665), (16_666, 19_998)]
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    lo = ephemeral_ports()[0]
    if lo > 12_000:
        first, last = own_ports(10_000, lo - 1)
        assert first > 10_000 and all(first <= free_port() <= last for _ in range(50))


def make_pytest_args(target: str) -> list[str]:
    """The pytest arguments of a Makefile target's recipe (what follows `-m pytest`)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        if "-m pytest" in line:
            return shlex.split(line.split("-m pytest", 1)[1])
    raise AssertionError(f"make {target} runs no pytest")


def test_make_test_unit_and_test_e2e_are_the_two_halves_of_make_test():
    """The README: `make test-unit` and `make test-e2e` run either half of `make test`. A test marked e2e
    outside tests/e2e (the README's blocks, the chart booted as processes) was run by neither."""
    whole = make_pytest_args("test")
    halves = {target: make_pytest_args(target) for target in ("test-unit", "test-e2e")}
    assert "-m" not in whole, whole
    split = {}
    for target, args in halves.items():
        assert "-m" in args, f"make {target} must select by the e2e marker, not by paths: {args}"
        i = args.index("-m")
        split[target] = (args[:i] + args[i + 2:], args[i + 1])
    assert split["test-unit"][0] == split["test-e2e"][0] == whole, f"the halves must run what make test runs: {halves}"
    assert split["test-unit"][1] == f"not {split['test-e2e'][1]}", halves
