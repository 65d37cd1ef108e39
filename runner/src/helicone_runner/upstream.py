"""The fake OpenAI/Anthropic provider (`up --upstream fake`), run as a child of the runner.

It lives in the source checkout (tests/support/fake_upstream.py, also what the tests use), so
this works from a clone (`make up UPSTREAM=fake`), not from an installed wheel. Like the broker,
it dies with the runner (PR_SET_PDEATHSIG) and a survivor of an earlier run is found by its pid
file (see embedded.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from helicone_core.addresses import host_port
from helicone_core.filemodes import open_private, private_dir

from .embedded import PidFile, _parent_death_signal, port_open, terminate

CHECKOUT = Path(__file__).resolve().parents[3]
MODULE = "tests.support.fake_upstream"
PID_FILE = "upstream.pid"


class FakeUpstream:
    def __init__(self, host: str, port: int, data_dir: Path) -> None:
        self.host, self.port = host, port
        self.log_path = data_dir / "logs" / "fake-upstream.log"
        self.pid_file = PidFile(data_dir / PID_FILE)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{host_port(self.host, self.port)}"

    def kill_survivor(self) -> None:
        self.pid_file.kill_survivor("fake provider")

    def spawn(self) -> None:
        """Starts the process (from the main thread: see embedded._parent_death_signal)."""
        if not (CHECKOUT / "tests" / "support" / "fake_upstream.py").is_file():
            raise RuntimeError(f"--upstream fake needs a source checkout (tests/support/fake_upstream.py under {CHECKOUT}); "
                               "run it from a clone of the repository")
        argv = [sys.executable, "-m", MODULE, "--host", self.host, "--port", str(self.port)]
        private_dir(self.log_path.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))}
        with os.fdopen(open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=CHECKOUT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_parent_death_signal())
        self.pid_file.write(self.proc.pid, argv)

    async def start(self, timeout: float = 30.0) -> str:
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the fake provider exited with {self.proc.returncode}; see {self.log_path}")
            if await asyncio.to_thread(port_open, self.host, self.port):
                return self.url
            await asyncio.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the fake provider did not listen on {self.url} within {timeout:.0f}s; see {self.log_path}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc, grace=5)
        self.pid_file.remove()
