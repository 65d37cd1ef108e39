"""Request header limits shared by the HTTP services (the gateway, the api, the ops endpoints).

Two layers, both driven by `max_header_count` / `max_header_bytes` (ServiceSettings):
- `header_limit_error`: the app's check of an ASGI scope's headers; over a limit is answered 431
  with a message naming the limit and its setting.
- `uvicorn_limits`: options for uvicorn.Config/uvicorn.run so that the HTTP server itself refuses a
  request head far over the limit while it arrives, before buffering all of it. uvicorn's default
  parser (httptools) has no size limit of its own: it hands an 8 MB header block to the app whole
  (measured with uvicorn 0.54 / httptools 0.9); h11 refuses heads over `h11_max_incomplete_event_size`
  (16 KiB by default) but costs about three times the CPU per request.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from .settings import ServiceSettings, env_name

HEADERS_TOO_LARGE_STATUS = 431
HEADERS_TOO_LARGE_TYPE = "request_headers_too_large"
# Room for the request line (method, URL, version) and the ": " + CRLF around each header, on top of
# max_header_bytes, in the limit the HTTP server enforces on a whole request head.
REQUEST_LINE_ALLOWANCE = 65536
PER_HEADER_FRAMING = 4
# After refusing a head, the server reads and drops what the caller still sends for this long before
# closing: closing at once, with its bytes unread, resets the connection and the caller may never
# read the 431 (most clients send the whole request before reading).
REFUSED_LINGER_SECONDS = 2.0


_COUNT_SETTING = f"max_header_count, {env_name('max_header_count')}"
_BYTES_SETTING = f"max_header_bytes, {env_name('max_header_bytes')}"


def header_limit_error(scope: dict[str, Any], max_count: int, max_bytes: int) -> str | None:
    """Why the request's headers are over a limit (a message naming the limit and its setting), or
    None when they are within both. Bytes are names + values as the ASGI server passes them."""
    headers = scope["headers"]
    if len(headers) > max_count:
        return f"request has {len(headers)} headers; at most {max_count} are accepted ({_COUNT_SETTING})"
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
    if size > max_bytes:
        return f"request headers total {size} bytes (names + values); at most {max_bytes} are accepted ({_BYTES_SETTING})"
    return None


def head_too_large_message(max_head_bytes: int) -> str:
    """The 431 message of a request head refused by the HTTP server while it arrives."""
    return f"request line and headers larger than {max_head_bytes} bytes ({_BYTES_SETTING})"


def server_head_limit(settings: ServiceSettings) -> int:
    """Bytes of one request head (request line + headers) the HTTP server accepts: anything within
    the app's limits fits, anything larger is refused before it is buffered."""
    return settings.max_header_bytes + PER_HEADER_FRAMING * settings.max_header_count + REQUEST_LINE_ALLOWANCE


def uvicorn_limits(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments for uvicorn.Config / uvicorn.run bounding the request head."""
    limit = server_head_limit(settings)
    try:
        import httptools  # noqa: F401
    except ImportError:  # uvicorn without [standard]: h11 has the limit built in
        return {"http": "h11", "h11_max_incomplete_event_size": limit}
    return {"http": bounded_httptools_protocol(limit)}


class HeadWithBody:
    """A response's transport as uvicorn's request cycle sees it: the first write (the response head,
    which uvicorn writes on http.response.start) is held until the next write, the first body chunk
    when the app has it at hand, and both go out in one send; otherwise it goes out alone at the end
    of the loop iteration. The bytes and their order are unchanged: one send and one wake-up of the
    caller fewer per response (and its first body byte sooner)."""

    __slots__ = ("_held", "_loop", "transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self.transport, self._loop = transport, loop
        self._held: bytes | None = b""  # b"": nothing written yet; None: the first write went out

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self.transport.write(data)
        elif held:
            self._held = None
            self.transport.write(held + data)
        elif data:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        # an empty first write is nothing to hold

    def flush(self) -> None:
        held, self._held = self._held, None
        if held and not self.transport.is_closing():  # the caller may have left since (nothing to tell it)
            self.transport.write(held)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


@functools.cache
def bounded_httptools_protocol(max_head_bytes: int) -> type:
    """uvicorn's httptools protocol, counting the bytes of each request head as they arrive: once a
    head still incomplete passes `max_head_bytes`, it answers 431, drops whatever follows and closes
    the connection. At most two reads (256 KiB each: the uncounted one in which the head began and the
    one that passes the limit) are buffered beyond the limit. Built on uvicorn's parser callbacks
    (libs/core/tests/test_http_limits.py fails if an upgrade changes them)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    body = json.dumps({"error": {
        "type": HEADERS_TOO_LARGE_TYPE,
        "message": head_too_large_message(max_head_bytes),
    }}).encode()
    head = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n" % len(body))

    class BoundedHeadHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = False
            self._head_bytes = 0
            self._events = 0  # message begins, heads and messages completed: where a read's bytes belong
            self._refused = False

        def on_message_begin(self) -> None:
            self._in_head, self._head_bytes, self._events = True, 0, self._events + 1
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._in_head, self._events = False, self._events + 1
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.transport is self.transport:  # a new cycle (not an upgrade)
                cycle.transport = HeadWithBody(self.transport, self.loop)

        def send_400_response(self, msg: str) -> None:
            self._flush_cycle()
            super().send_400_response(msg)

        def _flush_cycle(self) -> None:
            cycle = self.cycle
            if cycle is not None and isinstance(cycle.transport, HeadWithBody):
                cycle.transport.flush()

        def on_message_complete(self) -> None:
            self._events += 1
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            events = self._events
            super().data_received(data)
            # A read in which a message began or a head or message ended is not counted: part of it
            # belongs to another message (so a big body never counts against the next head).
            if self._in_head and events == self._events:
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes and not self.transport.is_closing():
                    self._refuse()

        def _refuse(self) -> None:
            self._refused = True
            self._flush_cycle()
            defaults = b"".join(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers)
            self.transport.write(head + defaults + b"\r\n" + body)
            if self.transport.can_write_eof():
                self.transport.write_eof()  # the caller reads the answer, then end of stream
                self.loop.call_later(REFUSED_LINGER_SECONDS, self.transport.close)
            else:
                self.transport.close()

    return BoundedHeadHttpToolsProtocol
