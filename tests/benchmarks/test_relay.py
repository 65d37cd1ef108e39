"""bench/relay.py, the byte relay that bench/rivals.py measures as the floor of any proxy: bytes go
both ways unchanged, and a side closing closes the other."""

from __future__ import annotations

import asyncio
import contextlib

from bench import relay
from tests.support.net import free_port


@contextlib.asynccontextmanager
async def relaying(upstream_port: int):
    ready = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(relay.serve(0, upstream_port, ready))
    try:
        yield await asyncio.wait_for(ready, 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_bytes_go_both_ways_unchanged_and_a_closing_side_closes_the_other():
    got: list[bytes] = []
    upstream_closed = asyncio.Event()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            got.append(line)
            writer.write(line.upper())  # every line answered at once, in order
        upstream_closed.set()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0, limit=4 * 2**20)
    async with server, relaying(server.sockets[0].getsockname()[1]) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"sent before the relay's upstream connection was up\n")  # kept until it is
        assert await asyncio.wait_for(reader.readline(), 5) == b"SENT BEFORE THE RELAY'S UPSTREAM CONNECTION WAS UP\n"
        big = bytes(range(256)).replace(b"\n", b"") * 8192 + b"\n"  # 2 MiB: past the write buffers
        writer.write(big)
        assert await asyncio.wait_for(reader.readexactly(len(big)), 10) == big.upper()
        assert got[1] == big
        writer.close()
        await asyncio.wait_for(upstream_closed.wait(), 5)  # the caller leaving closed the upstream side


async def test_the_upstream_closing_or_refusing_closes_the_caller():
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"bye\n")
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    async with server, relaying(server.sockets[0].getsockname()[1]) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        assert await asyncio.wait_for(reader.read(), 5) == b"bye\n"  # then the end of the stream
        writer.close()

    async with relaying(free_port()) as port:  # nothing listens there
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()



class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def set_write_buffer_limits(self, high: int) -> None:
        pass


async def test_what_a_server_sends_before_the_pair_is_made_reaches_the_caller_and_its_close_too(monkeypatch):
    # the order a live socket only sometimes gives: the server's banner and its close arrive while the
    # relay still waits for its connection to be handed over
    async def create_connection(factory, host, port):
        side = factory()
        side.connection_made(FakeTransport())
        side.data_received(b"220 banner before anything was asked\n")
        side.connection_lost(None)
        return None, side

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", create_connection)
    caller = relay._Caller(upstream_port=9)
    transport = FakeTransport()
    caller.connection_made(transport)
    caller.data_received(b"hello\n")  # the caller's own early bytes go nowhere: the server is gone
    await caller.connecting
    assert transport.written == [b"220 banner before anything was asked\n"] and transport.closed
