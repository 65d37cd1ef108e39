"""A minimal HTTP/1.1 keep-alive load client on raw asyncio streams, for the benches.

On two shared cores the load client's CPU comes out of the system under test's share, and it grows
with the rate the system sustains: aiohttp's client costs 130-170 µs per request there, about as
much as the mock provider and most of what our gateway costs. This client writes prepared request
bytes and parses only the status line, Content-Length, Transfer-Encoding and Connection, so the
benches measure the servers rather than the client.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


def request_bytes(port: int, body: bytes, headers: dict[str, str], path: str = "/v1/chat/completions") -> bytes:
    """A POST of `body` to 127.0.0.1:`port``path`, ready to write again and again."""
    head = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", "content-type: application/json",
            f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Response:
    status: int
    first_byte: float  # perf_counter when the first body byte arrived (0.0: no body)
    keep_alive: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Reads one response to its end (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, keep_alive = -1, False, True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            keep_alive = False
    first = 0.0
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if not first:
                first = time.perf_counter()
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the end
                    pass
                break
            await reader.readexactly(size + 2)
    elif length > 0:
        await reader.readexactly(1)
        first = time.perf_counter()
        await reader.readexactly(length - 1)
    elif length < 0:  # no length: the body runs to the connection's end
        first = time.perf_counter()
        await reader.read()
        keep_alive = False
    return Response(status, first, keep_alive)


@dataclass
class Outcome:
    """A load's per-request results: latencies and times to the first body byte of the 200s
    (seconds), and how many requests failed (another status, a broken connection, the timeout)."""
    latencies: list[float]
    first_bytes: list[float]
    errors: int
    seconds: float


async def drive(url: str, headers: dict[str, str], body: bytes, total: int, concurrency: int,
                timeout: float = 600.0) -> Outcome:
    """`total` POSTs of `body` to `url` (http://127.0.0.1:PORT/path) from `concurrency` kept-alive
    connections, each response read to its end. A connection the server closes is opened again."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or not parts.port:
        raise ValueError(f"the raw client only sends to http://127.0.0.1:PORT, not {url!r}")
    return await drive_raw(parts.port, request_bytes(parts.port, body, headers, parts.path or "/"), total, concurrency, timeout)


async def drive_raw(port: int, raw: bytes, total: int, concurrency: int, timeout: float = 600.0) -> Outcome:
    """drive() with the request already in bytes (request_bytes), to 127.0.0.1:`port`."""
    left = [total]
    out = Outcome([], [], 0, 0.0)

    async def worker() -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while left[0] > 0:
                left[0] -= 1
                t0 = time.perf_counter()
                try:
                    if conn is None:
                        conn = await asyncio.open_connection("127.0.0.1", port)
                    conn[1].write(raw)
                    r = await read_response(conn[0])
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    out.errors += 1
                    if conn is not None:
                        conn[1].close()
                    conn = None
                    continue
                if r.status == 200:
                    out.latencies.append(time.perf_counter() - t0)
                    out.first_bytes.append(r.first_byte - t0 if r.first_byte else out.latencies[-1])
                else:
                    out.errors += 1
                if not r.keep_alive:
                    conn[1].close()
                    conn = None
        finally:
            if conn is not None:
                conn[1].close()

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), timeout)
    except TimeoutError:
        out.errors = total - len(out.latencies)  # every request not answered 200 in time
    out.seconds = time.perf_counter() - started
    return out
