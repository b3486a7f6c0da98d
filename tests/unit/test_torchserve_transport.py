"""stack.torchserve.transport.KeepAlivePool against a small real HTTP/1.1 server on a loopback port."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from stack.torchserve.transport import KeepAlivePool

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def answer(body: bytes, status: int = 200, extra: str = "") -> bytes:
    """A complete HTTP/1.1 answer with Content-Length."""
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nX-Batch-Size: 3\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and its Content-Length body (b"" at EOF)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    return head + await reader.readexactly(length)


class Server:
    """Serves each connection with ``handler(request, reader, writer)`` until it returns False; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while True:
                    request = await read_request(reader)
                    if not request:
                        break
                    self.requests.append(request)
                    if not await self.handler(request, reader, writer):
                        break
            except (asyncio.CancelledError, ConnectionError):
                pass  # the test ended or the client went away
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def request(url: str, body: bytes = b"", read_s: float = 5.0) -> httpx.Request:
    timeout = httpx.Timeout(read_s, connect=2.0).as_dict()
    return httpx.Request("POST", url, content=body, headers={"Authorization": "Bearer k"},
                         extensions={"timeout": timeout})


def test_answers_arrive_whole_and_the_connection_is_kept() -> None:
    async def ok(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b'{"ok": true}'))
        return True

    async def main() -> None:
        server = Server(ok)
        async with server as url:
            pool = KeepAlivePool()
            for _ in range(3):
                response = await pool.handle_async_request(request(f"{url}/predictions/m", b"photo"))
                assert response.status_code == 200
                assert response.content == b'{"ok": true}'
                assert response.headers["x-batch-size"] == "3"
            await pool.aclose()
        assert server.connections == 1
        assert server.requests[0].startswith(b"POST /predictions/m HTTP/1.1\r\n")
        assert b"\r\nAuthorization: Bearer k\r\n" in server.requests[0]
        assert server.requests[0].endswith(b"\r\n\r\nphoto")

    asyncio.run(main())


def test_chunked_answers_and_concurrent_requests_use_several_connections() -> None:
    async def chunked(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        return True

    async def main() -> None:
        server = Server(chunked)
        async with server as url:
            pool = KeepAlivePool(max_connections=4)
            responses = await asyncio.gather(*(pool.handle_async_request(request(url)) for _ in range(8)))
            assert {r.content for r in responses} == {b"abcde"}
            await pool.aclose()
        assert server.connections == 4  # bounded by max_connections, then reused

    asyncio.run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def once(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"{}"))
        return False  # close after each answer, without saying so

    async def main() -> None:
        server = Server(once)
        async with server as url:
            pool = KeepAlivePool()
            for _ in range(3):
                assert (await pool.handle_async_request(request(url))).status_code == 200
            await pool.aclose()
        assert server.connections == 3

    asyncio.run(main())


def test_connection_close_is_honoured() -> None:
    async def closing(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(b"{}", extra="Connection: close\r\n"))
        return False

    async def main() -> None:
        server = Server(closing)
        async with server as url:
            pool = KeepAlivePool()
            assert (await pool.handle_async_request(request(url))).status_code == 200
            assert (await pool.handle_async_request(request(url))).status_code == 200
            await pool.aclose()
        assert server.connections == 2

    asyncio.run(main())


def test_failures_are_httpx_errors() -> None:
    async def silent(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        return False

    async def cut(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    async def main() -> None:
        pool = KeepAlivePool()
        async with Server(silent) as url:
            with pytest.raises(httpx.ReadTimeout):
                await pool.handle_async_request(request(url, read_s=0.1))
        async with Server(cut) as url:
            with pytest.raises(httpx.RemoteProtocolError):
                await pool.handle_async_request(request(url))
        with socket.socket() as sock:  # a port nothing listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with pytest.raises(httpx.ConnectError):
            await pool.handle_async_request(request(f"http://127.0.0.1:{port}"))
        await pool.aclose()

    asyncio.run(main())


def test_a_cancelled_request_drops_its_connection() -> None:
    async def slow(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        writer.write(answer(b"late"))
        return True

    async def main() -> None:
        server = Server(slow)
        async with server as url:
            pool = KeepAlivePool()
            task = asyncio.create_task(pool.handle_async_request(request(url)))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            response = await pool.handle_async_request(request(url))
            assert response.content == b"late"  # not the cancelled request's answer: a new connection
            await pool.aclose()
        assert server.connections == 2

    asyncio.run(main())


def test_waiting_for_a_busy_pool_is_bounded_by_the_pool_timeout() -> None:
    async def slow(req: bytes, _r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.5)
        writer.write(answer(b"{}"))
        return True

    async def main() -> None:
        async with Server(slow) as url:
            pool = KeepAlivePool(max_connections=1)
            first = asyncio.create_task(pool.handle_async_request(request(url)))
            await asyncio.sleep(0.05)
            waiting = request(url)
            waiting.extensions["timeout"] = {**waiting.extensions["timeout"], "pool": 0.1}
            with pytest.raises(httpx.PoolTimeout):
                await pool.handle_async_request(waiting)
            assert (await first).status_code == 200
            await pool.aclose()

    asyncio.run(main())
