"""A moto S3 server on loopback, in a process of its own, for the tests of the S3 body store."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.net import free_port


@contextlib.contextmanager
def moto_server(log_dir: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """The endpoint of a moto server on 127.0.0.1, once it answers; `env` adds to its environment
    (e.g. INITIAL_NO_AUTH_ACTION_COUNT, to make it check credentials)."""
    port = free_port()
    log = open(log_dir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env={"PATH": "/usr/bin:/bin", **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint + "/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
