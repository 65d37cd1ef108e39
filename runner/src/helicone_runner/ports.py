"""Which ports `helicone-stack up` needs are free, and who holds the ones that are not.

The holder is looked up the way `ss -ltnp` does it, best effort and without a dependency: the
listening socket's inode from /proc/net/tcp{,6}, then the /proc/<pid>/fd link that points at it.
Processes of other users cannot be read without privileges; the message then says so.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from helicone_core.logging import redact

from .embedded import cmdline

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


@dataclass(frozen=True)
class PortNeed:
    port: int
    option: str  # the option (and variable) that moves it, for the error message
    what: str


def listening_inodes(port: int, proc: Path = Path("/proc")) -> set[int]:
    """Inodes of the sockets listening on `port` (any address, IPv4 or IPv6)."""
    inodes: set[int] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (proc / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != _LISTEN:
                continue
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(cols[9]))
    inodes.discard(0)
    return inodes


def port_holders(port: int, proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(pid, command line) of each process we can see holding a listening socket on `port`."""
    targets = {f"socket:[{inode}]" for inode in listening_inodes(port, proc)}
    if not targets:
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # gone, or another user's
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link in targets:
                pid = int(entry.name)
                found.append((pid, redact(" ".join(cmdline(pid) or ["?"]))))  # a DSN's password, a --api-key
                break
    return sorted(found)


def describe_holder(port: int) -> str:
    holders = port_holders(port)
    if holders:
        return "held by " + ", ".join(f"pid {pid} ({cmd[:120]})" for pid, cmd in holders)
    if listening_inodes(port):
        return f"held by a process this user cannot inspect (try `sudo ss -ltnp 'sport = :{port}'`)"
    return "held by something this user cannot see (another network namespace, or a socket not listening yet)"


def _bind_error(host: str, port: int) -> int | None:
    """None if `port` can be bound on `host`, else the errno."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and grpc do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.errno
    return None


class PortInUse(RuntimeError):
    pass


def check_ports(host: str, needs: list[PortNeed]) -> None:
    """Raises PortInUse naming every taken port, its holder and the option that moves it."""
    problems = []
    first: dict[int, PortNeed] = {}
    for need in needs:
        other = first.setdefault(need.port, need)
        if other is not need:  # each would bind it in turn: the second fails once everything before it started
            problems.append(f"port {need.port} is given to both the {other.what} ({other.option}) and the {need.what} "
                            f"({need.option}); choose another port with one of them")
            continue
        error = _bind_error(host, need.port)
        if error == errno.EACCES:
            problems.append(f"port {need.port} ({need.what}) on {host} needs privileges; choose a port above 1023 with {need.option}")
        elif error is not None and error != errno.EADDRINUSE:
            problems.append(f"cannot listen on {host}:{need.port} ({need.what}): {os.strerror(error)}; check --host")
        elif error is not None:
            problems.append(f"port {need.port} ({need.what}) on {host} is in use, {describe_holder(need.port)}; "
                            f"stop that process or choose another port with {need.option}")
    if problems:
        raise PortInUse("\n  ".join(problems))
