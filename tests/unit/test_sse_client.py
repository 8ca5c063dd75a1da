"""The lean SSE client of ``bench serve`` against a scripted HTTP server: chunked and sized
bodies split at every byte, SSE lines across chunks, error statuses, kept-alive connections
(and one the server closed), and a refused connection."""

from __future__ import annotations

import asyncio

import pytest

from pagedlm.benchmarks.sse_client import HTTPError, SSEClient


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
EVENTS = [b'data: {"choices": [{"text": "a"}]}\n\n', b'data: {"choices": [{"text": "b\\u2028"}]}\n\n',
          b"data: [DONE]\n\n"]


async def _serve(responses: list[bytes], split: int | None, close_after: bool = False):
    """A server that answers each request on a connection with the next response, written
    ``split`` bytes at a time (None: at once). Returns (server, list of requests seen)."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            seen.append(head + await reader.readexactly(length))
            response = responses.pop(0)
            step = split or len(response)
            for i in range(0, len(response), step):
                writer.write(response[i:i + step])
                await writer.drain()
                await asyncio.sleep(0)
            if close_after:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


def _url(server) -> str:
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/completions"


@pytest.mark.parametrize("split", [None, 1, 7])
def test_events_arrive_whole_however_the_bytes_are_split(split: int | None) -> None:
    async def run() -> tuple[list[bytes], list[bytes], int]:
        # one event split over two chunks, the others one per chunk
        body = _chunked(EVENTS[0][:10], EVENTS[0][10:], EVENTS[1], EVENTS[2])
        server, seen = await _serve([SSE_HEAD + body], split)
        async with server:
            client = SSEClient({"Authorization": "Bearer k"})
            got: list[bytes] = []
            status, _ = await client.post(_url(server), b'{"x": 1}', got.append)
            client.close()
        return got, seen, status

    got, seen, status = asyncio.run(run())
    assert status == 200
    assert got == [b'{"choices": [{"text": "a"}]}', b'{"choices": [{"text": "b\\u2028"}]}', b"[DONE]"]
    assert seen[0].startswith(b"POST /v1/completions HTTP/1.1\r\n") and b"Authorization: Bearer k" in seen[0]
    assert seen[0].endswith(b'\r\n\r\n{"x": 1}')


def test_an_error_status_returns_its_body() -> None:
    async def run() -> tuple[int, bytes, list[bytes]]:
        body = b'{"error": {"message": "bad", "code": 400}}'
        response = b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        server, _ = await _serve([response], split=5)
        async with server:
            client = SSEClient()
            got: list[bytes] = []
            status, error_body = await client.post(_url(server), b"{}", got.append)
            client.close()
        return status, error_body, got

    status, body, got = asyncio.run(run())
    assert status == 400 and b'"bad"' in body and got == []


def test_a_kept_alive_connection_is_reused_and_a_closed_one_replaced() -> None:
    async def run() -> tuple[list[list[bytes]], int]:
        responses = [SSE_HEAD + _chunked(e) for e in EVENTS]
        server, seen = await _serve(responses, split=None)
        connections = 0
        async with server:
            client = SSEClient()
            results = []
            for _ in range(2):
                got: list[bytes] = []
                await client.post(_url(server), b"{}", got.append)
                results.append(got)
            connections = len(client._idle[("127.0.0.1", server.sockets[0].getsockname()[1])])
            client.close()
        return results, connections

    results, idle = asyncio.run(run())
    assert results == [[EVENTS[0][6:-2]], [EVENTS[1][6:-2]]]
    assert idle == 1  # both requests went over one connection

    async def closed_by_server() -> tuple[list[bytes], int]:
        # the server answers one request per connection, then closes it
        responses = [SSE_HEAD + _chunked(EVENTS[0]), SSE_HEAD + _chunked(EVENTS[1])]
        server, seen = await _serve(responses, split=None, close_after=True)
        async with server:
            client = SSEClient()
            await client.post(_url(server), b"{}", lambda _: None)
            await asyncio.sleep(0.05)  # the kept-alive connection is closed by now
            got: list[bytes] = []
            await client.post(_url(server), b"{}", got.append)
            client.close()
        return got, len(seen)

    assert asyncio.run(closed_by_server()) == ([EVENTS[1][6:-2]], 2)


def test_a_refused_connection_raises() -> None:
    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        url = _url(server)
        server.close()
        await server.wait_closed()
        await SSEClient(connect_timeout=5).post(url, b"{}", lambda _: None)

    with pytest.raises(HTTPError):
        asyncio.run(run())
    with pytest.raises(ValueError, match="plain http"):
        asyncio.run(SSEClient().post("https://example.invalid/x", b"{}", lambda _: None))
