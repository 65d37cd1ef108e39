"""A byte relay: the floor of what any proxy adds on this machine.

Each caller connection gets its own connection to the upstream; bytes go both ways unchanged, with no
HTTP parsing, no auth, no logging (uvloop, asyncio Protocols, TCP_NODELAY as uvloop sets it). What
it adds over a direct call is one more process hop: two more loopback writes and the wake-ups of a
process that shares the cores with the client, the provider and everything else. bench/rivals.py
measures it next to the gateways, so their overhead can be read against what no proxy avoids.

    .venv/bin/python bench/relay.py --port 8100 --upstream-port 8000

Traffic only ever goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

HIGH_WATER = 1024 * 1024  # buffered bytes towards a slow side above which the other side stops being read


class _Side(asyncio.Protocol):
    """One of the two connections of a pair: what it receives is written to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # caller bytes that came before the upstream connection was up

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def pause_writing(self) -> None:  # the peer sends faster than this side's reader takes it
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Caller(_Side):
    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        transport.set_write_buffer_limits(HIGH_WATER)
        self.connecting = asyncio.get_running_loop().create_task(self._connect())  # referenced: never collected mid-way

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await loop.create_connection(_Side, "127.0.0.1", self.upstream_port)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is None:  # the caller left meanwhile
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.peer, self.peer = self, upstream
        for side in (self, upstream):  # what each side sent before the pair was made (a server may speak first)
            if side.peer.transport is not None:
                for data in side.early:
                    side.peer.transport.write(data)
            side.early.clear()
        if upstream.transport is None:  # the server already closed: so does the caller, after its bytes
            self.transport.close()
        else:
            upstream.transport.set_write_buffer_limits(HIGH_WATER)


async def serve(port: int, upstream_port: int, ready: asyncio.Future | None = None) -> None:
    """Relays 127.0.0.1:`port` to 127.0.0.1:`upstream_port` until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Caller(upstream_port), "127.0.0.1", port, backlog=1024)
    if ready is not None:
        ready.set_result(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream-port", type=int, required=True)
    args = p.parse_args()
    uvloop.run(serve(args.port, args.upstream_port))


if __name__ == "__main__":
    main()
