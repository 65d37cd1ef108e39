"""Several gateway processes on one port (`python -m helicone_gateway --workers N`,
HELICONE_GATEWAY_WORKERS): a parent starts N workers, each binding the port with SO_REUSEPORT so
the kernel spreads connections over them, and each with its own event journal.

Worker 0 keeps the journal directory itself (one worker is the plain layout); worker i > 0 uses
`<journal dir>/worker-<i>`. Before the workers start, the parent hands the segments of journals
no worker will own (a restart with fewer workers) to the worker that takes their place, so nothing
journaled waits forever. SIGTERM/SIGINT to the parent stops every worker gracefully; a worker that
dies after it has served is started again (at once, or with a growing back-off while it keeps dying soon after
each restart, as repeated OOM kills under load do); only a first start that fails (a broken configuration)
stops them all.

The workers record their metrics in one directory the parent makes for the run (helicone_core.metrics,
MULTIPROCESS_DIR), so /metrics answers the totals of all, a dead worker's counters included, whichever
worker the scrape lands on.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from helicone_core.metrics import MULTIPROCESS_DIR
from prometheus_client import multiprocess

from .journal import SUFFIX, take_lock

log = logging.getLogger(__name__)

WORKER_PREFIX = "worker-"
STARTED_AFTER = 10.0  # seconds: a worker that exits sooner failed to start (no restart loop)
RESTART_BACKOFF, MAX_RESTART_BACKOFF = 0.5, 30.0  # seconds before a served worker that died quickly is started again
STOP_GRACE = 30.0  # seconds a worker gets to drain after SIGTERM before it is killed


def worker_journal_dir(journal_dir: Path, index: int) -> Path:
    return journal_dir if index == 0 else journal_dir / f"{WORKER_PREFIX}{index}"


def _seqs(directory: Path) -> list[int]:
    return sorted(int(p.stem) for p in directory.glob("*" + SUFFIX) if p.stem.isdigit())


def adopt_orphan_journals(journal_dir: Path, workers: int) -> int:
    """Moves the segments of `worker-<j>` journals with j >= workers into the journal of worker
    j % workers (numbered after its own), then removes the emptied directories; returns how many
    segments moved. A journal some process still holds is left alone."""
    moved = 0
    if not journal_dir.is_dir():
        return 0
    for orphan in sorted(journal_dir.glob(WORKER_PREFIX + "*")):
        index = orphan.name.removeprefix(WORKER_PREFIX)
        if not orphan.is_dir() or not index.isdigit() or int(index) < workers:
            continue
        heir = worker_journal_dir(journal_dir, int(index) % workers)
        fds = [take_lock(orphan), take_lock(heir)]
        try:
            if None in fds:
                log.warning("journal %s or %s is in use by a running gateway; its events stay where they are", orphan, heir)
                continue
            next_seq = max(_seqs(heir), default=0) + 1
            for seq in _seqs(orphan):
                os.rename(orphan / f"{seq:012d}{SUFFIX}", heir / f"{next_seq:012d}{SUFFIX}")
                next_seq += 1
                moved += 1
            if not _seqs(orphan):
                for leftover in orphan.iterdir():
                    if leftover.name == ".lock" or leftover.name.startswith(".tmp-"):
                        leftover.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    orphan.rmdir()
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
    if moved:
        log.info("%d journal segments of workers that no longer run were handed to running ones", moved)
    return moved


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port that other workers can bind too (SO_REUSEPORT); not listening yet:
    the server listens once the app has started, so the kernel hands a starting worker no connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"gateway: cannot listen on {host}:{port} (HELICONE_HOST/HELICONE_PORT): {exc.strerror}") from None
    sock.set_inheritable(False)
    return sock


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (even by SIGKILL), so no worker
    outlives it holding the port and its journal."""
    PR_SET_PDEATHSIG = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerParent:
    def __init__(self, workers: int, host: str, port: int, shared_store: bool) -> None:
        self.workers = workers
        self.host, self.port = host, port
        self.shared_store = shared_store  # HELICONE_REDIS_URL set: rate limits and cache are shared by the workers
        self.procs: dict[int, subprocess.Popen] = {}
        self.started_at: dict[int, float] = {}
        self.served: set[int] = set()  # worker indexes one of whose processes lived past STARTED_AFTER
        self.stopping = False
        self.metrics_dir = ""

    def _spawn(self, index: int) -> None:
        argv = [sys.executable, "-m", "helicone_gateway", "--worker-index", str(index), "--workers", str(self.workers)]
        env = dict(os.environ, **{MULTIPROCESS_DIR: self.metrics_dir})
        # own process group: a terminal's Ctrl-C reaches the parent only, which stops each worker once
        self.procs[index] = proc = subprocess.Popen(argv, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at[index] = time.monotonic()
        if self.stopping:  # a SIGTERM while it was being started signalled the others only
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _stop(self, signum: int, frame) -> None:
        self.stopping = True
        self._signal_all(signal.SIGTERM)

    def run(self) -> int:
        reuseport_socket(self.host, self.port).close()  # a clear error now if the port is taken
        self.metrics_dir = tempfile.mkdtemp(prefix="helicone-gateway-metrics-")  # this run's, empty: counters start at 0
        try:
            return self._run()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for i in range(self.workers):
            if self.stopping:
                break
            self._spawn(i)
        log.info("gateway: %d workers on %s:%d", self.workers, self.host, self.port)
        if not self.shared_store:
            log.warning("gateway: %d workers without HELICONE_REDIS_URL: each keeps its own rate limit buckets and "
                        "response cache in memory, so a rate limit of N lets up to %d x N requests through and an "
                        "answer cached by one worker is a MISS in the others; set HELICONE_REDIS_URL to share them",
                        self.workers, self.workers)
        failed = 0
        restart_at: dict[int, float] = {}  # dead workers waiting for their back-off to end
        backoff: dict[int, float] = {}  # the next back-off of a worker that died soon after a restart
        while True:
            alive = [i for i, p in self.procs.items() if p.poll() is None]
            if self.stopping or failed:
                break
            for i, proc in self.procs.items():
                now = time.monotonic()
                if i in restart_at:
                    if now >= restart_at[i]:
                        del restart_at[i]
                        self._spawn(i)
                    continue
                code = proc.poll()
                lived = now - self.started_at[i]
                if lived >= STARTED_AFTER:
                    self.served.add(i)
                if code is None:
                    if lived >= STARTED_AFTER:
                        backoff.pop(i, None)  # it serves again: a later death restarts it at once
                    continue
                if i not in self.served:
                    log.error("gateway worker %d exited with %s while starting; stopping every worker", i, code)
                    failed = code or 1
                    self._signal_all(signal.SIGTERM)
                    break
                multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # its gauges go; its counters stay in the totals
                if lived >= STARTED_AFTER:
                    log.error("gateway worker %d exited with %s; starting it again", i, code)
                    self._spawn(i)
                    continue
                # it served before and died soon after its restart (killed for memory under load, say): the
                # others go on serving; it is started again after a back-off that grows while this goes on
                delay = backoff.get(i, RESTART_BACKOFF)
                backoff[i] = min(delay * 2, MAX_RESTART_BACKOFF)
                log.error("gateway worker %d exited with %s %.1fs after it was started again; starting it again in %.1fs",
                          i, code, lived, delay)
                restart_at[i] = now + delay
            time.sleep(0.2)
        deadline = time.monotonic() + STOP_GRACE
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [i for i, p in self.procs.items() if p.poll() is None]
        for i in alive:
            log.error("gateway worker %d did not stop within %.0fs; killing it", i, STOP_GRACE)
            self.procs[i].kill()
            self.procs[i].wait()
        codes = [p.returncode for i, p in self.procs.items() if i not in restart_at]  # (a death already dealt with)
        if self.stopping:  # the stop asked for: a worker it reached before it had set its handler (starting) died of it
            codes = [0 if c == -signal.SIGTERM else c for c in codes]
        return failed or next((c for c in codes if c), 0)
