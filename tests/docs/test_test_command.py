"""The README's test command under a stuck test: it ends with every thread's stack, not at CI's own time limit."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_stuck_test_ends_the_run_with_the_stack_of_every_thread(tmp_path):
    # the repository's own pytest configuration, with the limit lowered from minutes to a second
    (tmp_path / "test_stuck.py").write_text(textwrap.dedent("""
        import threading

        def test_stuck():
            gate = threading.Event()
            helper = threading.Thread(target=gate.wait, name="helper-waiting-too", daemon=True)
            helper.start()
            gate.wait()

        def test_after():
            open(__file__ + ".after", "w").close()  # the run goes no further: the next hang would cost as much again
    """))
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-o", "timeout=1", str(tmp_path / "test_stuck.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert time.monotonic() - started < 30, out
    assert "Timeout" in out, out
    assert "helper-waiting-too" in out and "test_stuck" in out, out  # both threads' stacks
    assert not (tmp_path / "test_stuck.py.after").exists(), out


def test_a_stuck_asyncio_test_reports_where_each_of_its_tasks_waits(tmp_path):
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
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(ROOT), "--basetemp", str(tmp_path / "t"), "-p", "tests.support.hang_report", "-o", "timeout=8",
         str(tmp_path / "test_stuck_async.py")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
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
