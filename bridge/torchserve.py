"""The bridge's face of TorchServe: :class:`stack.torchserve.AsyncClient` with its errors as the bridge's own.

Keys, renewal, retries, request shapes and the reading of answers are ``stack.torchserve``'s. Here only the
wording a client of the bridge sees: 503 (retry, with Retry-After) for an unavailable TorchServe, 504 for a
slow one; TorchServe's addresses and key file paths are not shown to clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bridge.errors import BridgeError, UpstreamTimeout, UpstreamUnavailable
from stack.torchserve import (
    Answer,
    AsyncClient,
    KeyRejected,
    TorchServeError,
    TorchServeTimeout,
    TorchServeUnreachable,
)


def as_bridge_error(exc: TorchServeError) -> BridgeError:
    """The bridge's answer to a failure of TorchServe."""
    if isinstance(exc, TorchServeTimeout):
        return UpstreamTimeout(f"TorchServe did not answer within the time limit ({exc.path})")
    if isinstance(exc, TorchServeUnreachable):
        return UpstreamUnavailable("TorchServe is not reachable; retry shortly")
    if isinstance(exc, KeyRejected):
        return UpstreamUnavailable("TorchServe refused the bridge's token; check its key file")
    return UpstreamUnavailable(exc.message)


@contextmanager
def _bridge_errors() -> Iterator[None]:
    try:
        yield
    except TorchServeError as exc:
        raise as_bridge_error(exc) from exc


class TorchServeClient:
    """Predictions, ping and model descriptions from TorchServe; failures raised as UpstreamUnavailable/Timeout."""

    def __init__(self, inference_url: str, management_url: str, key_file: Path, timeout_s: float,
                 max_connections: int, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.torchserve = AsyncClient(inference_url, management_url, key_file, timeout_s=timeout_s,
                                      max_connections=max_connections, transport=transport)

    async def close(self) -> None:
        """Release connections."""
        await self.torchserve.close()

    async def predict(self, model: str, version: str | None, body: bytes, content_type: str,
                      params: dict[str, str] | None = None) -> Answer:
        """POST one input to ``/predictions/{model}[/{version}]`` (``params`` as form fields)."""
        with _bridge_errors():
            return await self.torchserve.predict(model, version, body, content_type, params)

    async def ping(self) -> Answer:
        """TorchServe's health."""
        with _bridge_errors():
            return await self.torchserve.ping()

    async def default_version(self, model: str) -> str | None:
        """The model's default version (cached a few seconds); None if unknown."""
        return await self.torchserve.default_version(model)

    async def describe_all_models(self) -> list[dict[str, Any]]:
        """Every registered version of every model, each marked ``isDefault``."""
        with _bridge_errors():
            return await self.torchserve.describe_all()
