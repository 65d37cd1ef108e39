"""bench/raw_http.py, the benches' lean load client, against a loopback server that answers in every
shape the systems under test use: Content-Length, chunked (with a trailer), Connection: close, an
error status, and a connection dropped mid-answer."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench import raw_http

ANSWER = json.dumps({"ok": True}).encode()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[dict]) -> None:
    """Answers by the request's `shape` header; records every request's headers and body."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers["content-length"]))
            seen.append({"line": lines[0], **headers, "body": body})
            shape = headers.get("shape")
            if shape == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
            elif shape == "close":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(ANSWER), ANSWER))
                await writer.drain()
                writer.close()
                return
            elif shape == "error":
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops")
            elif shape == "drop" and len(seen) % 2 == 0:  # every other request: half an answer, then gone
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def load(shape: str, total: int = 40, concurrency: int = 4) -> tuple[raw_http.Outcome, list[dict], list[int]]:
    seen: list[dict] = []
    connections: list[int] = []

    async def handler(reader, writer):
        connections.append(1)
        await serve(reader, writer, seen)

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        out = await raw_http.drive(f"http://127.0.0.1:{port}/v1/chat/completions", {"shape": shape, "Authorization": "Bearer k"},
                                   b'{"model": "m"}', total, concurrency)
    return out, seen, connections


@pytest.mark.parametrize("shape", ["length", "chunked"])
async def test_every_request_is_sent_whole_and_answered_on_kept_alive_connections(shape):
    out, seen, connections = await load(shape)
    assert out.errors == 0 and len(out.latencies) == len(out.first_bytes) == len(seen) == 40
    assert len(connections) == 4  # one per worker, kept alive
    first = seen[0]
    assert first["line"] == "POST /v1/chat/completions HTTP/1.1" and first["body"] == b'{"model": "m"}'
    assert first["authorization"] == "Bearer k" and first["content-type"] == "application/json"
    assert all(0 < fb <= lat for fb, lat in zip(out.first_bytes, out.latencies, strict=True))
    assert out.seconds > 0


async def test_a_connection_the_server_closes_is_opened_again():
    out, seen, connections = await load("close", total=12, concurrency=3)
    assert out.errors == 0 and len(out.latencies) == len(seen) == 12
    assert len(connections) == 12


async def test_error_statuses_and_broken_answers_count_as_errors():
    out, _, _ = await load("error", total=10, concurrency=2)
    assert out.errors == 10 and out.latencies == []
    out, seen, _ = await load("drop", total=20, concurrency=1)
    assert out.errors == 10 and len(out.latencies) == 10 and len(seen) == 20  # the rest went on a new connection


async def test_only_loopback_is_a_target():
    for url in ("http://10.0.0.1:80/x", "https://127.0.0.1:443/x", "http://localhost:8080/x", "http://127.0.0.1/x"):
        with pytest.raises(ValueError, match="only sends to http://127.0.0.1:PORT"):
            await raw_http.drive(url, {}, b"", 1, 1)
