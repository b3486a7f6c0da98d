"""uvicorn's HTTP protocol with a deadline on each request's head (slow and idle connections are closed).

uvicorn times out idle keep-alive connections only *after* a response: a connection that sends nothing, or
half a request line or header block, would otherwise be held forever (slowloris). The body has its own
deadline in ``bridge.uploads``.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def head_deadline_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to give ``uvicorn.run(http=...)``, closing heads not complete in ``timeout_s``."""

    class HeadDeadlineProtocol(HttpToolsProtocol):
        _head_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._cancel()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._cancel()
            self._head_deadline = self.loop.call_later(timeout_s, self._timed_out)

        def _cancel(self) -> None:
            if self._head_deadline is not None:
                self._head_deadline.cancel()
                self._head_deadline = None

        def _timed_out(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol
