"""A loopback TCP forwarder that tests can cut and restore, to put a real server (Postgres, a
broker) out of reach without stopping it: `cut()` drops every open connection and refuses new
ones until `restore()`; `stall()` makes the open connections go silent (bytes dropped, nothing
closed: a failover or a forgotten NAT entry) while new ones still get through. With `tls`, it also
terminates TLS in front of a plain-text server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from tests.support.net import free_port


class FaultProxy:
    """Listens on 127.0.0.1:<port>; forwards to a loopback TCP address or a Unix socket."""

    def __init__(self, target_host: str = "", target_port: int = 0, *, unix_path: str = "",
                 tls: ssl.SSLContext | None = None) -> None:
        if not unix_path and target_host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("FaultProxy only forwards to loopback or a Unix socket")
        self.target = (target_host, target_port)
        self.unix_path = unix_path
        self.tls = tls  # a server context: clients speak TLS to the proxy, the proxy plain text to the target
        self.port = free_port()
        self.cut_now = False
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._stalled: set[asyncio.StreamWriter] = set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_now = True
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()

    def restore(self) -> None:
        self.cut_now = False

    def stall(self) -> None:
        """The connections open now stay open but carry nothing more, either way; new ones work."""
        self._stalled |= self._conns

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_now:
            writer.transport.abort()
            return
        try:
            if self.unix_path:
                up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._conns.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if dst in self._stalled:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.difference_update((writer, up_writer))


async def postgres_proxy(dsn: str) -> tuple[FaultProxy, str]:
    """A started proxy in front of the Postgres of `dsn` (TCP or Unix socket), and the DSN that
    reaches the same database through it."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.pop("host", [parts.hostname or "127.0.0.1"])[0]
    port = parts.port or int(query.pop("port", ["5432"])[0])
    if host.startswith("/"):
        proxy = FaultProxy(unix_path=f"{host}/.s.PGSQL.{port}")
    else:
        proxy = FaultProxy(host, port)
    await proxy.start()
    user = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else "postgres"
    via = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{proxy.port}", query=urlencode(query, doseq=True)))
    return proxy, via


class ThreadedPostgresProxy:
    """postgres_proxy() on its own event loop thread, for synchronous tests: cut() and restore()
    may be called from any thread."""

    def __init__(self, dsn: str) -> None:
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxy, self.dsn = asyncio.run_coroutine_threadsafe(postgres_proxy(dsn), self._loop).result(10)

    def _call(self, fn) -> None:
        async def run():
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def cut(self) -> None:
        self._call(self.proxy.cut)

    def restore(self) -> None:
        self._call(self.proxy.restore)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
