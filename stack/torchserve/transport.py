"""A lean HTTP/1.1 keep-alive pool for the async face: asyncio protocols parsed by httptools (llhttp, in C).

httpx's own async stack (httpcore over anyio over asyncio, h11 in pure Python) cost the bridge about a
millisecond of CPU per prediction — a failed ``import sniffio`` per lock among it. TorchServe needs none of
what it offers beyond HTTP/1.1 with keep-alive: this pool is an :class:`httpx.AsyncBaseTransport`, so the
flows still yield ``httpx.Request`` and receive ``httpx.Response``, and tests can swap in a MockTransport.

Failures are httpx's: ``ConnectError``/``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``.
A request that finds its reused connection closed before any byte of an answer came is sent once more on a
fresh one (the server closed an idle connection as we wrote).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import httptools
import httpx

DEFAULT_TIMEOUT_S = 25.0


class _Stale(Exception):
    """The reused connection was closed before any byte of the answer: send again on a new one."""


class _Connection(asyncio.Protocol):
    """One TCP connection; one request at a time; its answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes, bool]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._received = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from TorchServe: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self.reused and not self._received:
                self._waiter.set_exception(_Stale())
            else:
                self._waiter.set_exception(httpx.RemoteProtocolError("TorchServe closed the connection mid-answer"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._headers, b"".join(self._body),
                               self._parser.should_keep_alive()))

    # the pool's side

    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes, bool]]:
        """Write one request; the future resolves with (status, headers, body, keep-alive)."""
        assert self.transport is not None
        self._headers, self._body, self._received = [], [], False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        """Close now (an answer cut short, a timeout, a cancelled request)."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class KeepAlivePool(httpx.AsyncBaseTransport):
    """HTTP/1.1 connections kept open per host, at most ``max_connections`` in use at once."""

    def __init__(self, max_connections: int = 100) -> None:
        self._idle: dict[tuple[str, int], collections.deque[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._all: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on an idle connection (or a new one) and read the whole answer."""
        timeout: dict[str, Any] = request.extensions.get("timeout", {})
        url = request.url
        origin = (url.host, url.port or 80)
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in request.headers.raw]
        data = b"".join(head) + b"\r\n" + request.content
        if self._slots.locked():  # every connection busy: wait for one no longer than the pool timeout
            try:
                await asyncio.wait_for(self._slots.acquire(), timeout.get("pool"))
            except TimeoutError as exc:
                raise httpx.PoolTimeout("no connection to TorchServe freed in time", request=request) from exc
        else:
            await self._slots.acquire()
        try:
            return await self._exchange(request, origin, data, timeout)
        finally:
            self._slots.release()

    async def _exchange(self, request: httpx.Request, origin: tuple[str, int], data: bytes,
                        timeout: dict[str, Any]) -> httpx.Response:
        """Send on a reused or new connection; once more on a new one if the reused one was stale."""
        for _ in range(2):
            conn = await self._connection(origin, timeout.get("connect"))
            try:
                status, headers, body, keep_alive = await asyncio.wait_for(
                    conn.send(data), timeout.get("read") or DEFAULT_TIMEOUT_S)
            except _Stale:
                self._all.discard(conn)
                continue
            except TimeoutError as exc:
                self._discard(conn)
                raise httpx.ReadTimeout("TorchServe did not answer in time", request=request) from exc
            except BaseException:
                self._discard(conn)  # cancelled or broken mid-answer: its state is unknown
                raise
            if keep_alive and not conn.closed:
                conn.reused = True
                self._idle.setdefault(origin, collections.deque()).append(conn)
            else:
                self._discard(conn)
            return httpx.Response(status, headers=headers, content=body, request=request)
        raise httpx.RemoteProtocolError("TorchServe closed the connection twice before answering", request=request)

    async def _connection(self, origin: tuple[str, int], connect_s: float | None) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed meanwhile
            if not conn.closed:
                return conn
            self._all.discard(conn)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, *origin), connect_s)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {origin[0]}:{origin[1]} timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {origin[0]}:{origin[1]}: {exc}") from exc
        self._all.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._all.discard(conn)

    async def aclose(self) -> None:
        """Close every connection."""
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
