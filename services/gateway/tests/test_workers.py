"""`python -m helicone_gateway --workers N`: N processes on one port, each with its own journal,
stopped together by one SIGTERM; journals of workers that no longer run are handed over."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from helicone_core.db import hash_key
from helicone_core.key_directory import SNAPSHOT_FORMAT
from helicone_gateway.journal import Journal
from helicone_gateway.workers import adopt_orphan_journals, worker_journal_dir

from tests.support.net import free_port
from tests.support.users import unprivileged

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-helicone-workers-test"


def _journal_with(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    j = Journal(path, max_bytes=1 << 20, segment_bytes=4096).open()
    j.append(records, inflight=False)
    j.close()


def _records(path: Path) -> list[tuple[bytes, bytes]]:
    j = Journal(path, max_bytes=1 << 24).open()
    try:
        return list(j.iter_all())
    finally:
        j.close()


def test_journals_of_workers_that_no_longer_run_are_handed_over(tmp_path):
    root = tmp_path / "journal"
    mine, orphan2, orphan3 = [(b"w0", b"a")], [(b"w2", b"b"), (b"w2", b"c")], [(b"w3", b"d")]
    _journal_with(worker_journal_dir(root, 0), mine)
    _journal_with(worker_journal_dir(root, 1), [(b"w1", b"e")])
    _journal_with(worker_journal_dir(root, 2), orphan2)
    _journal_with(worker_journal_dir(root, 3), orphan3)
    assert adopt_orphan_journals(root, 2) == 2  # one segment each
    assert _records(worker_journal_dir(root, 0)) == mine + orphan2  # worker-2 -> worker 0
    assert _records(worker_journal_dir(root, 1)) == [(b"w1", b"e")] + orphan3  # worker-3 -> worker 1
    assert not (root / "worker-2").exists() and not (root / "worker-3").exists()
    # down to one worker: everything ends in the plain journal directory
    adopt_orphan_journals(root, 1)
    assert sorted(_records(root)) == sorted(mine + orphan2 + [(b"w1", b"e")] + orphan3)


def test_a_journal_still_in_use_is_left_alone(tmp_path):
    root = tmp_path / "journal"
    _journal_with(worker_journal_dir(root, 2), [(b"k", b"v")])
    running = Journal(worker_journal_dir(root, 2), max_bytes=1 << 20).open()  # a gateway still holds it
    try:
        assert adopt_orphan_journals(root, 1) == 0
    finally:
        running.close()
    assert _records(worker_journal_dir(root, 2)) == [(b"k", b"v")]


def test_journals_are_handed_over_whatever_the_umask():
    """Under an odd umask (0277) a lock file an earlier run left is 0400, and a lock or journal directory made
    for an heir that had none would be 0400/0500: opening the lock for writing, or moving segments into that
    directory, failed every start of the workers. Locks are taken read-only and made 0600 (as the journal's are)."""
    import stat
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # (under /tmp: a user other than root can reach it)
        root = Path(tmp) / "journal"
        old = os.umask(0o277)
        try:
            with unprivileged(tmp):
                _journal_with(worker_journal_dir(root, 0), [(b"w0", b"a")])
                _journal_with(worker_journal_dir(root, 2), [(b"w2", b"b")])
                _journal_with(worker_journal_dir(root, 3), [(b"w3", b"c")])  # its heir, worker 1, has no journal yet
                (worker_journal_dir(root, 2) / ".lock").chmod(0o400)  # as an older version left it
                assert adopt_orphan_journals(root, 2) == 2
                assert _records(worker_journal_dir(root, 0)) == [(b"w0", b"a"), (b"w2", b"b")]
                assert _records(worker_journal_dir(root, 1)) == [(b"w3", b"c")]
        finally:
            os.umask(old)
        heir = worker_journal_dir(root, 1)
        assert stat.S_IMODE(heir.stat().st_mode) == 0o700 and stat.S_IMODE((heir / ".lock").stat().st_mode) == 0o600


def _gateway_env(tmp_path: Path, port: int, upstream_port: int) -> dict:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    snap = keys / "gateway.snapshot.json"
    snap.write_text(json.dumps({"format": SNAPSHOT_FORMAT, "saved_at": time.time(), "keys": {hash_key(KEY): "org-w"}}))
    snap.chmod(0o600)
    return dict(os.environ, HELICONE_PORT=str(port), HELICONE_DATA_DIR=str(tmp_path),
                HELICONE_KAFKA_BOOTSTRAP="127.0.0.1:1", HELICONE_POSTGRES_DSN="postgresql://t@127.0.0.1:1/t",
                HELICONE_OPENAI_URL=f"http://127.0.0.1:{upstream_port}", HELICONE_LOG_LEVEL="WARNING")


def _scrape(port: int) -> str:
    """/metrics on a new connection (so the kernel may hand it to any worker); no series twice."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}, timeout=10).text
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert len(series) == len(set(series)), sorted(s for s in series if series.count(s) > 1)
    return text


def _sum(scraped: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in scraped.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _two_workers_ready(tmp_path: Path, **extra_env: str) -> tuple[int, subprocess.Popen]:
    """`helicone_gateway --workers 2` on a free port (nothing listens upstream: a request is a logged 502), once
    it answers /readyz; (port, the parent). Its log: tmp_path / "gateway.log"."""
    port = free_port()
    env = dict(_gateway_env(tmp_path, port, free_port()), **extra_env)
    proc = subprocess.Popen([sys.executable, "-m", "helicone_gateway", "--workers", "2"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gateway.log", "wb"))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "gateway workers did not get ready"
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return port, proc



@contextlib.contextmanager
def _stopped_after(proc: subprocess.Popen):
    """The block, then a SIGTERM that must stop every worker cleanly (exit 0 within 40 s); killed if the block failed."""
    try:
        yield
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

def test_two_workers_share_the_port_each_with_a_journal_and_stop_on_one_sigterm(tmp_path):
    port, proc = _two_workers_ready(tmp_path)
    with _stopped_after(proc):
        time.sleep(1.0)  # the second worker too
        sent = 40
        for _ in range(sent):  # a new connection each: the kernel spreads them over the workers
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m"},
                           headers={"Helicone-Auth": f"Bearer {KEY}", "Connection": "close"}, timeout=10)
            assert r.status_code == 502
        # whichever worker a scrape lands on, it reads the totals of both (and one series per name and labels)
        for _ in range(8):
            scraped = _scrape(port)
            assert _sum(scraped, "helicone_gateway_requests_total") == sent
            assert _sum(scraped, "helicone_gateway_upstream_errors_total") == sent
            assert _sum(scraped, "helicone_service_up") == 1 and _sum(scraped, "helicone_gateway_kafka_connected") == 0
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) == 2
    for child in children:
        assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    journal = tmp_path / "journal"
    per_worker = [len(_records(worker_journal_dir(journal, i))) for i in range(2)]
    assert sum(per_worker) == sent  # every event kept (Kafka was never reachable)
    assert all(per_worker), per_worker  # and both workers served some of them


def _warnings_of_two_workers(tmp_path: Path, **env) -> str:
    """The parent's and workers' log lines until both workers serve (then stopped)."""
    tmp_path.mkdir(exist_ok=True)
    _, proc = _two_workers_ready(tmp_path, **env)
    with _stopped_after(proc):
        pass
    return (tmp_path / "gateway.log").read_text()


def test_workers_without_redis_warn_once_that_rate_limits_and_cache_are_per_worker(tmp_path):
    warned = [json.loads(line) for line in _warnings_of_two_workers(tmp_path).splitlines() if "HELICONE_REDIS_URL" in line]
    assert len(warned) == 1, warned  # once, by the parent, not by every worker
    assert warned[0]["level"] == "warning"
    assert all(words in warned[0]["msg"] for words in ("2 workers", "rate limit", "2 x N", "cache")), warned[0]
    # with a shared store (down here: the cache and rate limits just skip it) there is nothing to warn about
    shared = _warnings_of_two_workers(tmp_path / "redis", HELICONE_REDIS_URL="redis://127.0.0.1:1/0")
    assert "HELICONE_REDIS_URL" not in shared


def _age(pid: int) -> float:
    """Seconds since the process started (/proc: its start time in clock ticks after boot)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return float(Path("/proc/uptime").read_text().split()[0]) - ticks / os.sysconf("SC_CLK_TCK")


def _served(proc: subprocess.Popen, started_after: float) -> None:
    """Waits until each worker has lived past `started_after` (the parent counts it as one that served), by the
    workers' own start times: the parent may start them well after the test started it, on a busy machine."""
    while (children := _children(proc.pid)) and min(_age(c) for c in children) < started_after + 1.5:
        assert proc.poll() is None
        time.sleep(0.2)


def test_a_restarted_worker_keeps_the_totals_and_takes_no_connection_before_it_serves(tmp_path):
    """A worker that dies is started again: its counters stay in every scrape's totals (no reset for rate()), and
    while the new one starts (here >= 2 s: it waits for Postgres, which is down) the kernel hands it no connection,
    so none waits on it: its socket listens only once it serves, as a single gateway's does."""
    from helicone_gateway.workers import STARTED_AFTER

    port, proc = _two_workers_ready(tmp_path)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Helicone-Auth": f"Bearer {KEY}", "Connection": "close"}
    with _stopped_after(proc):
        sent = 20
        for _ in range(sent):
            assert httpx.post(url, json={"model": "m"}, headers=headers, timeout=10).status_code == 502
        assert _sum(_scrape(port), "helicone_gateway_requests_total") == sent
        _served(proc, STARTED_AFTER)  # the parent starts it again
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()]
        assert len(children) == 2
        os.kill(children[1], signal.SIGKILL)
        while True:  # until the parent has started the new worker
            now = {int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()}
            if len(now - set(children)) == 1:
                break
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            time.sleep(0.05)
        # the new worker starts (python, then a 2 s wait for Postgres); every request on a new connection is answered
        # by the one serving, none waits for the new one's start
        stalled = 0
        until = time.monotonic() + 4.0
        while time.monotonic() < until:
            try:
                assert httpx.post(url, json={"model": "m"}, headers=headers, timeout=1.0).status_code == 502
                sent += 1
            except httpx.TimeoutException:
                stalled += 1
        assert stalled == 0, f"{stalled} requests waited on the worker that was starting"
        for _ in range(6):  # the dead worker's requests are still counted, whichever worker answers the scrape
            assert _sum(_scrape(port), "helicone_gateway_requests_total") == sent


def _children(pid: int) -> set[int]:
    return {int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()}


def _listens(pid: int, port: int) -> bool:
    """The process holds a socket listening on the port (a worker listens once it serves)."""
    listening = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].rsplit(":", 1)[1], 16) == port}
    with contextlib.suppress(OSError):
        return any(os.readlink(fd).removeprefix("socket:[").removesuffix("]") in listening
                   for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def test_a_worker_that_keeps_dying_soon_after_its_restarts_is_started_again_and_the_others_keep_serving(tmp_path):
    """A worker that served and is then killed again and again, each time soon after it was started again (OOM kills
    under load), counted as one that "failed to start": the parent stopped every worker and the whole gateway went
    down. Only a first start that fails (a broken configuration) stops them all; a worker that served is started
    again, after a back-off while it keeps dying, and the other goes on serving meanwhile."""
    from helicone_gateway.workers import STARTED_AFTER

    port, proc = _two_workers_ready(tmp_path)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Helicone-Auth": f"Bearer {KEY}", "Connection": "close"}
    with _stopped_after(proc):
        _served(proc, STARTED_AFTER)
        first = sorted(_children(proc.pid))
        assert len(first) == 2
        seen, victim = set(first), first[1]
        for _ in range(3):  # killed, then killed again at once each time it is started again
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while not (_children(proc.pid) - seen):
                assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
                assert time.monotonic() < deadline, "the killed worker was not started again"
                assert httpx.post(url, json={"model": "m"}, headers=headers, timeout=10).status_code == 502  # the other serves
                time.sleep(0.05)
            [victim] = _children(proc.pid) - seen
            seen.add(victim)
        # the last one is left alone: it starts and serves, and the gateway runs two workers again
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200 and \
                        _children(proc.pid) == {first[0], victim} and _listens(victim, port):
                    break
            assert time.monotonic() < deadline, "the restarted worker did not come back"
            time.sleep(0.2)
        assert "stopping every worker" not in (tmp_path / "gateway.log").read_text()


def _stopped_parent(monkeypatch, worker_code: str, *, stop_after: int, ready: bool = False) -> tuple[int, list[int | None]]:
    """A 2-worker parent whose workers run `worker_code` (each says "ready" first when `ready`), sent SIGTERM as it
    has started `stop_after` of them: (its exit code, the workers' exit codes)."""
    import types

    from helicone_gateway import workers

    real = subprocess.Popen
    started: list[subprocess.Popen] = []

    def popen(argv, **kw):
        child = real([sys.executable, "-c", worker_code], stdout=subprocess.PIPE, **kw)
        started.append(child)
        if ready:
            assert child.stdout.readline() == b"ready\n"
        if len(started) == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return child

    monkeypatch.setattr(workers, "subprocess", types.SimpleNamespace(Popen=popen))
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        code = workers.WorkerParent(2, "127.0.0.1", free_port(), shared_store=True).run()
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        for child in started:
            if child.poll() is None:
                child.kill()
                child.wait()
        for child in started:
            child.stdout.close()
    return code, [child.returncode for child in started]


def test_a_sigterm_while_a_worker_is_being_started_stops_that_worker_too(monkeypatch):
    """A SIGTERM that reached the parent while it was starting a worker (at start-up, or restarting one) signalled
    the workers it knew of: the one being started ran on until the stop's grace ended (30 s), then was killed, and
    the workers after it were still started. Now the new one is signalled as soon as it is known, and no more start."""
    from helicone_gateway import workers

    monkeypatch.setattr(workers, "STOP_GRACE", 3.0)  # (killed after it, not stopped: the failure this test looks for)
    # stopped by the SIGTERM, and no other started
    assert _stopped_parent(monkeypatch, "import time; time.sleep(60)", stop_after=1)[1] == [-signal.SIGTERM]


def test_a_stop_that_reaches_workers_before_their_signal_handler_is_still_a_clean_exit(monkeypatch):
    """A worker the stop's SIGTERM reaches while it is still starting (before it has set its handler) dies of the
    signal: the parent exited with that (-15, so 241) for a stop it was asked for and carried out. A clean stop exits 0;
    a worker that had to be killed, or that exited with an error of its own, still makes it fail."""
    from helicone_gateway import workers

    assert _stopped_parent(monkeypatch, "import time; time.sleep(60)", stop_after=2) == (0, [-signal.SIGTERM, -signal.SIGTERM])
    # one that exits with an error of its own as it stops
    failing = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(4)); print('ready', flush=True); time.sleep(60)"
    assert _stopped_parent(monkeypatch, failing, stop_after=2, ready=True) == (4, [4, 4])
    monkeypatch.setattr(workers, "STOP_GRACE", 1.0)
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    assert _stopped_parent(monkeypatch, ignoring, stop_after=2, ready=True) == (-signal.SIGKILL, [-signal.SIGKILL, -signal.SIGKILL])
