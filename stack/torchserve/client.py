"""The two faces of :class:`~stack.torchserve.protocol.Protocol`: ``Client`` (httpx.Client, for servingctl,
tests and scripts) and ``AsyncClient`` (for the bridge: the flows' requests handed straight to an httpx
transport, by default :class:`~stack.torchserve.transport.KeepAlivePool`). They only send what a flow
yields; every rule lives in the protocol.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

from stack.torchserve.keys import Keys
from stack.torchserve.protocol import KEY_ATTEMPTS, Answer, Flow, Pause, Protocol
from stack.torchserve.transport import KeepAlivePool

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 25.0
SYNC_TIMEOUT_S = 180.0  # register, unregister and scale wait for workers to start or stop


class _Face:
    """What both faces share: construction and the protocol."""

    def __init__(self, inference_url: str, management_url: str, key_file: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 sync_timeout_s: float = SYNC_TIMEOUT_S, key_attempts: int = KEY_ATTEMPTS) -> None:
        self.protocol = Protocol(inference_url, management_url, key_file, timeout_s, sync_timeout_s, key_attempts)

    @property
    def key_file(self) -> Path:
        """The key file the keys come from."""
        return self.protocol.keys.path


class Client(_Face):
    """TorchServe, synchronously (httpx.Client); the methods are :class:`Protocol`'s flows, run to their result."""

    def __init__(self, *args: Any, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.Client(transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections."""
        self._http.close()

    def run(self, flow: Flow[T]) -> T:
        """Drive ``flow``: send each request it yields, give it the response (or the transport error)."""
        reply: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                reply, error = None, None
                try:
                    if isinstance(step, Pause):
                        time.sleep(step.seconds)
                    else:
                        reply = self._http.send(step)
                except httpx.RequestError as exc:
                    error = exc
        finally:
            flow.close()  # abandoned (cancelled, interrupted): the flow's cleanup runs now

    def predict(self, model: str, version: str | None, body: bytes, content_type: str = "application/octet-stream",
                params: dict[str, str] | None = None) -> Answer:
        """POST one input to ``/predictions/{model}[/{version}]`` (``params`` as form fields)."""
        return self.run(self.protocol.predict(model, version, body, content_type, params))

    def ping(self) -> Answer:
        """TorchServe's health."""
        return self.run(self.protocol.ping())

    def models(self) -> list[str]:
        """Names of the registered models."""
        return self.run(self.protocol.models())

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """TorchServe's description of ``model`` (its default version, ``version``, or ``"all"``)."""
        return self.run(self.protocol.describe(model, version))

    def describe_all(self) -> list[dict[str, Any]]:
        """Every registered version of every model, each marked ``isDefault``."""
        return self.run(self.protocol.describe_all())

    def default_version(self, model: str) -> str | None:
        """The model's default version (cached a few seconds); None when unknown."""
        return self.run(self.protocol.default_version(model))

    def register(self, url: str, initial_workers: int, settings: dict[str, int] | None = None) -> str:
        """Register an archive of the model store and wait for its workers."""
        return self.run(self.protocol.register(url, initial_workers, settings))

    def unregister(self, model: str, version: str) -> None:
        """Unregister one version."""
        self.run(self.protocol.unregister(model, version))

    def set_default(self, model: str, version: str) -> None:
        """Make ``version`` the default."""
        self.run(self.protocol.set_default(model, version))

    def scale(self, model: str, version: str | None, min_workers: int, max_workers: int) -> None:
        """Set a version's worker range and wait for it."""
        self.run(self.protocol.scale(model, version, min_workers, max_workers))

    def renew(self, api: str) -> Keys:
        """Renew the ``inference`` or ``management`` key now."""
        return self.run(self.protocol.renew(api))

    def reachable(self) -> bool:
        """Whether anything answers on the management address."""
        return self.run(self.protocol.reachable())


class AsyncClient(_Face):
    """TorchServe, asynchronously; the same methods as :class:`Client`, awaited.

    Requests go to the transport directly, not through httpx.AsyncClient: the flows build complete requests
    (keys, timeouts) and follow no redirects or cookies, so the client's layers would only cost CPU.
    """

    def __init__(self, *args: Any, max_connections: int = 100, transport: httpx.AsyncBaseTransport | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._transport = transport or KeepAlivePool(max_connections)

    async def close(self) -> None:
        """Release pooled connections."""
        await self._transport.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        response.request = request
        await response.aread()
        return response

    async def run(self, flow: Flow[T]) -> T:
        """Drive ``flow`` as :meth:`Client.run` does, awaiting each request."""
        reply: Any = None
        error: Exception | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration as done:
                    return done.value  # type: ignore[no-any-return]
                reply, error = None, None
                try:
                    if isinstance(step, Pause):
                        await asyncio.sleep(step.seconds)
                    else:
                        reply = await self._send(step)
                except httpx.RequestError as exc:
                    error = exc
        finally:
            flow.close()  # abandoned (cancelled, interrupted): the flow's cleanup runs now

    async def predict(self, model: str, version: str | None, body: bytes,
                      content_type: str = "application/octet-stream", params: dict[str, str] | None = None) -> Answer:
        """POST one input to ``/predictions/{model}[/{version}]`` (``params`` as form fields)."""
        return await self.run(self.protocol.predict(model, version, body, content_type, params))

    async def ping(self) -> Answer:
        """TorchServe's health."""
        return await self.run(self.protocol.ping())

    async def models(self) -> list[str]:
        """Names of the registered models."""
        return await self.run(self.protocol.models())

    async def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        """TorchServe's description of ``model`` (its default version, ``version``, or ``"all"``)."""
        return await self.run(self.protocol.describe(model, version))

    async def describe_all(self) -> list[dict[str, Any]]:
        """Every registered version of every model, each marked ``isDefault``."""
        return await self.run(self.protocol.describe_all())

    async def default_version(self, model: str) -> str | None:
        """The model's default version (cached a few seconds); None when unknown."""
        return await self.run(self.protocol.default_version(model))

    async def register(self, url: str, initial_workers: int, settings: dict[str, int] | None = None) -> str:
        """Register an archive of the model store and wait for its workers."""
        return await self.run(self.protocol.register(url, initial_workers, settings))

    async def unregister(self, model: str, version: str) -> None:
        """Unregister one version."""
        await self.run(self.protocol.unregister(model, version))

    async def set_default(self, model: str, version: str) -> None:
        """Make ``version`` the default."""
        await self.run(self.protocol.set_default(model, version))

    async def scale(self, model: str, version: str | None, min_workers: int, max_workers: int) -> None:
        """Set a version's worker range and wait for it."""
        await self.run(self.protocol.scale(model, version, min_workers, max_workers))

    async def renew(self, api: str) -> Keys:
        """Renew the ``inference`` or ``management`` key now."""
        return await self.run(self.protocol.renew(api))

    async def reachable(self) -> bool:
        """Whether anything answers on the management address."""
        return await self.run(self.protocol.reachable())
