import os
import random
import socket
from functools import cache
from pathlib import Path

import httpx

_handed_out: set[int] = set()
_rng = random.SystemRandom()  # whatever a test seeds the random module with


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outbound connections (and of bind to port 0)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def own_ports(lo: int, hi: int) -> tuple[int, int]:
    """This process's share of the ports lo..hi: under pytest-xdist (`make test`) each worker picks from
    its own slice, so a port one worker picked and has not bound yet (or keeps unbound, as a port
    nothing listens on) is never another worker's service."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return lo, hi
    index, count = int(worker[2:]), int(count)
    size = (hi - lo + 1) // count
    return lo + index * size, lo + (index + 1) * size - 1


def free_port() -> int:
    """A loopback port that is free now, for a service started later. It is picked below the ephemeral
    range: a port from bind(0) is one the kernel may hand next to an outbound connection (a client of
    Kafka, Postgres or S3) before the service binds it, and a stack start failed so (EADDRINUSE). Never
    the same port twice in one process, nor one another xdist worker may hand out (own_ports)."""
    lo = ephemeral_ports()[0]
    if lo > 12_000:
        first, last = own_ports(10_000, lo - 1)
        for _ in range(500):
            port = _rng.randint(first, last)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range (or none free): the kernel's pick
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cache
def poll_client() -> httpx.Client:
    """One kept-alive client for a bench that polls a service while it times it (until ingest
    caught up, until a request is visible in the api). A new httpx client per poll (httpx.get,
    httpx.post) loads a TLS context first, about 25 ms of the bench's CPU on a 2-core box: each
    poll answered that much later, and the bench took a core's share from the stack it waited for."""
    return httpx.Client(timeout=30)
