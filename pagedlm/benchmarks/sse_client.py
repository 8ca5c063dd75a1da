"""A lean HTTP/1.1 client for streamed (SSE) POSTs over plain http, for ``bench serve``.

A benchmark client must cost much less per streamed chunk than the server it measures: with
1,000 streams at 10,000 tokens/s, httpx spent about 95 µs of CPU per chunk and kept its one
process busy, so the client, not the server, set the pace. Here each connection is an asyncio
Protocol whose ``data_received`` parses the HTTP response (chunked or sized) and the SSE lines
in place and hands each ``data:`` payload to a callback, with no coroutine switch per chunk.
Connections are kept alive and reused per host, as an HTTP client pool does.

Only what ``bench serve`` needs: http:// URLs, POST with a JSON body, a status line, headers,
and a body that is chunked, sized by Content-Length, or ends with the connection.
"""

from __future__ import annotations

import asyncio
from typing import Callable
from urllib.parse import urlsplit


class HTTPError(OSError):
    """The connection failed or the response was not valid HTTP/1.1."""


class _Response:
    """Parses one response from the connection's buffer; ``on_data`` gets each SSE data payload
    (bytes) of a 200 response as it arrives; ``done`` resolves to (status, body bytes of a
    non-200 response, whether the connection can be reused)."""

    def __init__(self, on_data: Callable[[bytes], None], done: asyncio.Future) -> None:
        self.on_data = on_data
        self.done = done
        self.status = 0
        self.head_done = False
        self.chunked = False
        self.remaining: int | None = None  # Content-Length left; None: until close (or chunked)
        self.keep_alive = True
        self.line = bytearray()  # an SSE line not yet complete
        self.body = bytearray()  # a non-200 response's body

    def feed(self, buffer: bytearray) -> None:
        """Consume what it can of ``buffer`` (in place)."""
        if not self.head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head(bytes(buffer[:end]))
            del buffer[:end + 4]
        if self.chunked:
            self._chunks(buffer)
        elif self.remaining is not None:
            take = min(self.remaining, len(buffer))
            self._payload(bytes(buffer[:take]))
            del buffer[:take]
            self.remaining -= take
            if self.remaining == 0:
                self._finish()
        else:
            self._payload(bytes(buffer))
            buffer.clear()

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HTTPError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
        self.status = int(parts[1])
        self.keep_alive = parts[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value:
                self.chunked = True
            elif name == b"content-length":
                self.remaining = int(value)
            elif name == b"connection" and value == b"close":
                self.keep_alive = False
        self.head_done = True
        if not self.chunked and self.remaining is None:
            self.keep_alive = False  # the body ends with the connection
        if self.remaining == 0:
            self._finish()

    def _chunks(self, buffer: bytearray) -> None:
        pos = 0
        while not self.done.done():
            end = buffer.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(buffer[pos:end].split(b";", 1)[0], 16)
            if size == 0:  # the last chunk, then (no trailers here) an empty line
                if len(buffer) < end + 4:
                    break
                pos = end + 4
                self._finish()
                break
            if len(buffer) < end + 2 + size + 2:
                break
            self._payload(bytes(buffer[end + 2:end + 2 + size]))
            pos = end + 2 + size + 2
        del buffer[:pos]

    def _payload(self, data: bytes) -> None:
        if self.status != 200:
            self.body += data
            return
        self.line += data
        if b"\n" not in data:
            return
        *lines, rest = self.line.split(b"\n")
        self.line = bytearray(rest)
        for line in lines:
            if line.startswith(b"data:"):
                self.on_data(line[5:].strip())

    def _finish(self) -> None:
        if self.line.startswith(b"data:"):
            self.on_data(bytes(self.line[5:]).strip())
        if not self.done.done():
            self.done.set_result((self.status, bytes(self.body), self.keep_alive))

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.done.done():
            return
        if self.head_done and not self.chunked and self.remaining is None:
            self._finish()  # a body that ends with the connection
        else:
            self.done.set_exception(HTTPError(f"the connection closed mid-response: {exc or 'EOF'}"))


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.response: _Response | None = None
        self.response_started = False  # a byte of the current response has arrived
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.response is None:
            return
        self.response_started = self.response_started or bool(self.buffer)
        try:
            self.response.feed(self.buffer)
        except (HTTPError, ValueError) as e:
            if not self.response.done.done():
                self.response.done.set_exception(HTTPError(str(e)))
            self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response.connection_lost(exc)


class SSEClient:
    """POSTs a JSON body and streams the response's SSE data payloads to a callback."""

    def __init__(self, headers: dict[str, str] | None = None, connect_timeout: float = 60.0) -> None:
        self.headers = headers or {}
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(self, url: str, body: bytes, on_data: Callable[[bytes], None],
                   headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body of a non-200 response); ``on_data`` got every data payload of a 200 one.
        Raises HTTPError (an OSError) when the connection fails."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"SSEClient speaks plain http only, not {url!r}")
        host, port = parts.hostname or "localhost", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection, reused = await self._connection(host, port)
        try:
            return await self._post(connection, host, port, path, body, on_data, headers)
        except HTTPError:
            if not reused or connection.response_started:
                raise
        # the server closed the kept-alive connection before it saw the request: once more, anew
        connection, _ = await self._connection(host, port, fresh=True)
        return await self._post(connection, host, port, path, body, on_data, headers)

    async def _post(self, connection: _Connection, host: str, port: int, path: str, body: bytes,
                    on_data: Callable[[bytes], None], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        connection.response = _Response(on_data, done)
        connection.response_started = False
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Accept: text/event-stream",
                *(f"{k}: {v}" for k, v in {**self.headers, **(headers or {})}.items())]
        connection.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        if connection.buffer:  # bytes that arrived before the response was attached
            connection.data_received(b"")
        try:
            status, error_body, keep_alive = await done
        finally:
            connection.response = None
        if keep_alive and not connection.closed and not connection.buffer:
            self._idle.setdefault((host, port), []).append(connection)
        else:
            connection.transport.close()
        return status, error_body

    async def _connection(self, host: str, port: int, fresh: bool = False) -> tuple[_Connection, bool]:
        """A kept-alive connection (reused: True) or a new one."""
        idle = self._idle.get((host, port), [])
        while idle and not fresh:
            connection = idle.pop()
            if not connection.closed:
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(_Connection, host, port),
                                                   self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise HTTPError(f"cannot connect to {host}:{port}: {e}") from e
        return connection, False

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.transport.close()
        self._idle.clear()
