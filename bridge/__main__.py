"""``python -m bridge``: serve the bridge with uvicorn (uvloop, httptools) on BRIDGE_HOST:BRIDGE_PORT."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

from bridge.app import create_app
from bridge.http_protocol import head_deadline_protocol
from bridge.settings import Settings


class Server(uvicorn.Server):
    """uvicorn's server, waking once a second instead of ten times when idle, and at once on a signal.

    uvicorn's main loop sleeps 0.1 s between checks of ``should_exit`` and refreshes the Date header every
    tenth check; the header's resolution is a second anyway, so one tick a second does the same work.
    """

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # every tick is "a tenth": the Date header is refreshed each time
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                pass

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


def config(settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the bridge: uvloop and httptools named, not left to auto-detection."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=head_deadline_protocol(settings.request_head_timeout_s),
        access_log=False,
        proxy_headers=False,  # nothing reads the client address; one ASGI layer less per request
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    """Run the bridge until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per TorchServe call is noise
    Server(config(Settings())).run()


if __name__ == "__main__":
    main()
