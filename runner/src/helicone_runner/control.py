"""`up --detach`, `down` and `status`: a running `helicone-stack up` as seen from another shell.

A running `up` keeps two files in its data dir:
- `runner.pid` (PidFile: pid + argv), written once the data dir is locked, removed on exit: `down`
  signals only a process whose argv is still the one recorded, so a reused pid is never touched;
- `stack.json`, written at READY: each service's URLs and what the broker, Postgres and the fake
  provider are, so `status` and `demo` know where to look.
A detached `up` writes its output to `logs/stack.log` in the data dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from helicone_core.filemodes import open_private, private_dir, write_private

from .embedded import alive, cmdline, port_open

RUNNER_PID_FILE = "runner.pid"
STATE_FILE = "stack.json"
LOG_FILE = "logs/stack.log"
NOT_RUNNING = 3  # like `systemctl status` for an inactive unit


# ---- the running stack --------------------------------------------------------------------
def runner_pid(data_dir: Path) -> int | None:
    """The pid of the `up` running on this data dir (its pid file names a live process with the
    recorded argv), else None."""
    try:
        saved = json.loads((data_dir / RUNNER_PID_FILE).read_text())
        pid, argv = int(saved["pid"]), list(saved["argv"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if alive(pid) and cmdline(pid) == argv else None


def write_state(data_dir: Path, state: dict) -> None:
    write_private(data_dir / STATE_FILE, json.dumps(state, indent=1).encode())


def read_state(data_dir: Path) -> dict | None:
    try:
        return json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def not_running_message(data_dir: Path) -> str:
    return (f"helicone stack is not running (data dir {data_dir}); start it with `make up UPSTREAM=fake DETACH=1` "
            "or `helicone-stack up --detach`")


def summary_lines(state: dict) -> list[str]:
    """What `up` prints at READY (also printed by `up --detach` from the state file)."""
    lines = [f"helicone stack ready in {state['startup_seconds']:.1f}s (data: {state['data_dir']})"]
    for name, urls in state["services"].items():
        lines.append(f"  {name:8s} " + "  ".join(f"{k}={v}" for k, v in urls.items()))
    kafka = state["kafka"]
    lines.append(f"  kafka    {kafka['bootstrap']}{' (embedded, in memory)' if kafka['embedded'] else ''}")
    pg = state["postgres"]
    lines.append(f"  postgres {'embedded, ' + pg['pgdata'] if pg['embedded'] else 'external'}")
    if state.get("upstream"):
        lines.append(f"  upstream {state['upstream']} (fake OpenAI/Anthropic provider)")
    if state.get("key"):
        key = state["key"]
        lines.append(f"  Helicone API key: {key['key']}   (org {key['org_id']}; also in {key['file']})")
    return lines


# ---- up --detach --------------------------------------------------------------------------
def _echo(line: str) -> None:
    """Progress lines as they are; of the JSON log lines only warnings and errors."""
    if not line.startswith("{"):
        print(line, flush=True)
        return
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        level = str(record.get("level", "")).lower()  # helicone_core.logging writes it in lower case
        if level in ("warning", "error", "critical"):
            print(f"  {level}: {record.get('msg') or record.get('message')}", flush=True)


def detach(argv: list[str], data_dir: Path, timeout: float, env: dict[str, str] | None = None) -> int:
    """Starts `helicone-stack up <argv>` in its own session (`env` added to its environment: secrets stay
    off its command line), its output in the data dir's log, echoes its progress and returns once it is
    READY (0) or has failed (its exit code)."""
    data_dir = data_dir.resolve()
    pid = runner_pid(data_dir)
    if pid is not None:
        print(f"error: data dir {data_dir} is used by another `helicone-stack up` (pid {pid}); "
              "`helicone-stack status` shows it, `helicone-stack down` stops it", file=sys.stderr)
        return 1
    private_dir(data_dir)
    log_path = data_dir / LOG_FILE
    private_dir(log_path.parent)
    offset = log_path.stat().st_size if log_path.exists() else 0
    with os.fdopen(open_private(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "helicone_runner", "up", *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**{k: v for k, v in os.environ.items() if k != "HELICONE_DETACH"}, **(env or {}),
                                     "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    with open(log_path, "rb") as log:
        log.seek(offset)
        pending = b""
        while True:
            chunk = log.read()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace")
                if line == "READY":
                    print(f"READY (running in the background, pid {proc.pid}; log {log_path}; "
                          "`helicone-stack status` / `helicone-stack down`)", flush=True)
                    return 0
                _echo(line)
            if not chunk:
                code = proc.poll()
                if code is not None:
                    print(f"helicone-stack up exited with {code} before it was ready; its log: {log_path}", file=sys.stderr)
                    return code or 1
                if time.monotonic() > deadline:
                    print(f"error: not ready after {timeout:.0f}s; stopping it (pid {proc.pid}); its log: {log_path}",
                          file=sys.stderr)
                    proc.terminate()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(30)
                    return 1
                time.sleep(0.05)


# ---- down ---------------------------------------------------------------------------------
def down(data_dir: Path, timeout: float) -> int:
    """SIGTERM to the `up` of this data dir (detached or not), then wait for its graceful stop."""
    data_dir = data_dir.resolve()
    pid = runner_pid(data_dir)
    if pid is None:
        left = stop_leftovers(data_dir)
        print(f"helicone stack is not running (data dir {data_dir}); "
              + (f"stopped what a killed run left: {', '.join(left)}" if left else "nothing to stop"))
        return 0
    state = read_state(data_dir) or {}
    children = {name: info["pid"] for name, info in state.get("processes", {}).items() if info.get("pid")}
    print(f"stopping helicone stack (pid {pid}, data dir {data_dir})...", flush=True)
    t0 = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    while alive(pid) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    if alive(pid):
        print(f"error: still stopping after {timeout:.0f}s (pid {pid}); its log: {data_dir / LOG_FILE}; "
              f"`kill -9 {pid}` ends it (the next `up` cleans up after it)", file=sys.stderr)
        return 1
    left = [f"{name} (pid {p})" for name, p in children.items() if alive(p)]
    stopped = ", ".join([*state.get("services", {}), *children]) or "the runner"
    print(f"stopped {stopped} in {time.monotonic() - t0:.1f}s")
    if left:
        print(f"warning: still running: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


def stop_leftovers(data_dir: Path) -> list[str]:
    """What a killed `up` (kill -9, OOM) left running on the data dir, stopped as the next `up` would: the
    postmaster (re-parented to init, no death signal reaches it) and survivors of the pid files. Only
    while no `up` holds the data dir; a live holder of the postmaster (`keys`) keeps it."""
    from .embedded import BROKER_PID_FILE, DataDirLock, EmbeddedPostgres, PidFile
    from .upstream import PID_FILE as UPSTREAM_PID_FILE

    if not data_dir.is_dir():
        return []
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except (RuntimeError, OSError):
        return []  # an `up` starting or stopping: its own to stop
    try:
        stopped = [f"{what} (pid {pid})" for what, name in (("kafka broker", BROKER_PID_FILE), ("fake provider", UPSTREAM_PID_FILE))
                   if (pid := PidFile(data_dir / name).kill_survivor(what)) is not None]
        if (postmaster := EmbeddedPostgres(data_dir).stop_leftover()) is not None:
            stopped.append(f"postgres (pid {postmaster})")
        return stopped
    finally:
        lock.release()


# ---- status -------------------------------------------------------------------------------
def _readyz(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/readyz", timeout=3) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"unreachable ({exc.__class__.__name__})"
    failing = [name for name, check in body.get("checks", {}).items() if not check.get("ok")]
    if body.get("ready"):
        return True, "ready" + (f" (optional checks failing: {', '.join(failing)})" if failing else "")
    return False, "not ready (failing: " + ", ".join(failing) + ")"


def _any_broker_listening(bootstrap: str) -> bool:
    """One of the bootstrap servers (`host:port[,host:port...]`, as `up --kafka` takes them) accepts connections."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if port.isdigit() and port_open(host.strip("[]"), int(port)):
            return True
    return False


def status(data_dir: Path) -> int:
    """0: every service ready; 1: running, something is not; 3: not running."""
    data_dir = data_dir.resolve()
    pid = runner_pid(data_dir)
    if pid is None:
        print(not_running_message(data_dir))
        return NOT_RUNNING
    state = read_state(data_dir)
    if state is None:
        print(f"helicone stack (pid {pid}, data dir {data_dir}) is starting; not ready yet")
        return 1
    healthy = True
    print(f"helicone stack running (pid {pid}, up {time.time() - state['started_at']:.0f}s, data dir {data_dir})")
    for name, urls in state["services"].items():
        ok, text = _readyz(urls.get("ops") or urls["http"])
        healthy &= ok
        shown = "  ".join(f"{k}={v}" for k, v in urls.items())
        print(f"  {name:8s} {text:40s} {shown}")
    processes = state.get("processes", {})
    kafka = state["kafka"]
    listening = _any_broker_listening(kafka["bootstrap"])
    if kafka["embedded"]:
        bpid = processes.get("broker", {}).get("pid")
        # the broker's pid changes when the supervisor restarts it: its pid file is current
        with contextlib.suppress(OSError, ValueError, KeyError):
            bpid = json.loads((data_dir / "broker.pid").read_text())["pid"]
        text = f"embedded, pid {bpid}, " + ("listening" if listening else "NOT listening")
        if kafka.get("failed"):
            text, listening = "embedded, FAILED: not restarted", False
    else:
        text = "external, " + ("reachable" if listening else "NOT reachable")
    healthy &= listening
    print(f"  {'kafka':8s} {text:40s} {kafka['bootstrap']}")
    if kafka.get("failed"):
        print(f"  {'':8s} {kafka['failed']}")
    pg = state["postgres"]
    if pg["embedded"]:
        from .embedded import EmbeddedPostgres

        ppid = EmbeddedPostgres(data_dir).postmaster_pid()
        text = f"embedded, pid {ppid}, running" if ppid else "embedded, NOT running"
        healthy &= ppid is not None
        print(f"  {'postgres':8s} {text:40s} {pg['pgdata']}")
    else:
        print(f"  {'postgres':8s} {'external (see the services postgres checks)':40s}")
    if state.get("upstream"):
        upid = processes.get("upstream", {}).get("pid")
        up_ok = upid is not None and alive(upid)
        healthy &= up_ok
        print(f"  {'upstream':8s} {'fake provider, pid ' + str(upid) + (', running' if up_ok else ', NOT running'):40s} "
              f"{state['upstream']}")
    return 0 if healthy else 1

