"""``python -m bridge``: serve the bridge with uvicorn on BRIDGE_HOST:BRIDGE_PORT."""

from __future__ import annotations

import logging

import uvicorn

from bridge.app import create_app
from bridge.http_protocol import head_deadline_protocol
from bridge.settings import Settings


def main() -> None:
    """Run the bridge until interrupted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per TorchServe call is noise
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,
        http=head_deadline_protocol(settings.request_head_timeout_s),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
