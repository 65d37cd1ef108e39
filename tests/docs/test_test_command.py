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
