"""`serve` (the services' `python -m` entrypoint): a graceful stop on SIGTERM/SIGINT exits 0, a
failed startup does not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from tests.support.net import free_port

APP = textwrap.dedent("""
    import contextlib, gc, sys
    from fastapi import FastAPI
    from helicone_core.entrypoint import serve
    from helicone_core.settings import ServiceSettings

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if sys.argv[2] == "fail":
            raise RuntimeError("startup failed")
        yield
        print("drained", flush=True)

    app = FastAPI(lifespan=lifespan)
    app.get("/healthz")(lambda: {})
    app.get("/gc")(lambda: {"young": gc.get_threshold()[0], "frozen": gc.get_freeze_count()})
    serve(app, ServiceSettings(port=int(sys.argv[1]), _env_file=None))
""")


def _start(mode: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", APP, str(port), mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    return proc, port


def _wait_ready(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no answer"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_graceful_stop_exits_0_after_the_shutdown(sig):
    proc, port = _start("ok")
    try:
        _wait_ready(proc, port)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out  # uvicorn alone: killed by the re-raised signal (-15 / -2)
    assert "drained" in out  # the lifespan's shutdown ran before the exit


def test_a_failed_startup_still_exits_non_zero():
    proc, _ = _start("fail")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0, out
    assert "startup failed" in out


@pytest.mark.parametrize("threshold", ["12345", "0"])
def test_a_served_process_has_its_collector_tuned(threshold):
    """serve() freezes what the process holds at start and sets HELICONE_GC_YOUNG_THRESHOLD (0: Python's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELICONE_")}
    env["HELICONE_GC_YOUNG_THRESHOLD"] = threshold
    proc, port = _start("ok", env)
    try:
        _wait_ready(proc, port)
        got = httpx.get(f"http://127.0.0.1:{port}/gc", timeout=5).json()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    pythons = int(subprocess.check_output([sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"], text=True))
    assert got["young"] == (int(threshold) or pythons) and got["frozen"] > 1000, got
