"""A ClickHouse HTTP-interface endpoint backed by chDB, for testing the clickhouse-connect backend
without a ClickHouse server binary. The SQL runs in the real ClickHouse engine (chDB); this module
only speaks the HTTP protocol: `query` / `param_*` URL parameters, the request body as query or
insert data or as multipart/form-data fields (clickhouse-connect sends `query` and `param_*` that
way once they are too long for a URL), `X-ClickHouse-*` response headers, errors as HTTP 500 with
ClickHouse's message.

On SIGUSR1 it prints to stderr every thread's stack and each request in flight: its SQL, how long
it has run, and whether it waits for the session's lock or runs in chDB (the report a stuck test's
tests/support/hang_report.py asks for).

Run: python -m tests.support.chdb_http --port 8123 --path /tmp/chdb-server, or start() from a test or
bench (a process of its own on a free loopback port, once it answers).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import re
import signal
import subprocess
import sys
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[2]
FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+(\w+)\s*$", re.IGNORECASE)
lock = threading.Lock()
SESSION = None
IN_FLIGHT: dict[int, list] = {}  # thread id -> [started (monotonic), stage, SQL]
SQL_SHOWN = 2000


def report_in_flight(*_) -> None:
    now = time.monotonic()
    lines = [f"--- chdb_http: {len(IN_FLIGHT)} request(s) in flight ---"]
    for ident, (started, stage, sql) in list(IN_FLIGHT.items()):
        lines.append(f"thread {ident:#x}: {stage} for {now - started:.1f} s: {sql[:SQL_SHOWN]!r}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def watch_for_reports() -> None:
    """SIGUSR1: the requests in flight (Python handler, run by the main thread), and every
    thread's stack (faulthandler, in C: it answers even if a thread holds the GIL in chDB)."""
    signal.signal(signal.SIGUSR1, report_in_flight)
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    form = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
            for part in form.iter_parts()}


def response_format(query: str, has_data: bool) -> str | None:
    """The statement's FORMAT clause, if any. Insert data is never searched, as a server never
    parses it as SQL: with data in the body (`has_data`) or an INSERT sent whole in the body
    (clickhouse-connect's raw_insert: the statement's first line, then the rows, megabytes of them)
    only the statement's first line is read."""
    text = query.lstrip()
    if has_data or text[:6].upper() == "INSERT":
        end = text.find("\n")
        text = text if end < 0 else text[:end]
    m = FORMAT_CLAUSE.search(text.rstrip())
    return m.group(1) if m else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        return

    def _run(self) -> None:
        me = threading.get_ident()
        IN_FLIGHT[me] = entry = [time.monotonic(), "reading the request", self.requestline]
        try:
            self._serve(entry)
        finally:
            IN_FLIGHT.pop(me, None)

    def _serve(self, entry: list) -> None:
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type") or ""
        if ctype.startswith("multipart/form-data"):
            params.update(_form_fields(ctype, raw))
            raw = b""
        body = raw.decode()
        if url.path == "/ping":
            return self._reply(200, b"Ok.\n", {})
        query = params.get("query")
        if query is None:
            query, body = body, ""
        sql = query + ("\n" + body if body else "")
        bind = {k[len("param_"):]: v for k, v in params.items() if k.startswith("param_")}
        fmt = response_format(query, bool(body)) or params.get("default_format", "TabSeparated")
        entry[:] = [time.monotonic(), "waiting for the session lock", sql]
        try:
            with lock:
                entry[0], entry[1] = time.monotonic(), "running in chDB"
                res = SESSION.query(sql, fmt, params=bind) if bind else SESSION.query(sql, fmt)
            data = res.bytes() if hasattr(res, "bytes") else str(res).encode()
        except Exception as exc:  # noqa: BLE001 - ClickHouse reports errors as HTTP 500 + message
            return self._reply(500, (str(exc) + "\n").encode(), {"X-ClickHouse-Exception-Code": "1"})
        entry[:2] = [time.monotonic(), "sending the reply"]
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": "0", "written_bytes": "0",
                   "total_rows_to_read": "0", "result_rows": "0", "result_bytes": "0", "elapsed_ns": "0"}
        self._reply(200, data, {"X-ClickHouse-Format": fmt, "X-ClickHouse-Summary": json.dumps(summary),
                                "X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Query-Id": params.get("query_id", "q"),
                                "X-ClickHouse-Server-Display-Name": "chdb-http"})

    def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _run


def start(path: Path, *, stderr: IO | int = subprocess.DEVNULL, timeout: float = 30) -> tuple[subprocess.Popen, str]:
    """Runs the stand-in on `path` in a process of its own, on a free loopback port: (the process,
    its URL) once it answers /ping; RuntimeError if it exits or does not answer within `timeout` s."""
    import httpx

    from tests.support.net import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.chdb_http", "--port", str(port), "--path", str(path)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/ping", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("chdb_http did not start")
        time.sleep(0.1)


def main() -> None:
    from chdb import session as chs  # here: start() is imported by processes that only launch the stand-in

    global SESSION
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8123)
    p.add_argument("--path", required=True)
    a = p.parse_args()
    SESSION = chs.Session(a.path)
    watch_for_reports()
    ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
