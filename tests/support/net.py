import socket
from functools import cache

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@cache
def poll_client() -> httpx.Client:
    """One kept-alive client for a bench that polls a service while it times it (until ingest
    caught up, until a request is visible in the api). A new httpx client per poll (httpx.get,
    httpx.post) loads a TLS context first, about 25 ms of the bench's CPU on a 2-core box: each
    poll answered that much later, and the bench took a core's share from the stack it waited for."""
    return httpx.Client(timeout=30)
