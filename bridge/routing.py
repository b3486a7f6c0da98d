"""Every call to a model server goes through here: one :class:`TorchServeClient` per box, chosen by model.

The routes are :mod:`stack.routing`'s (``BRIDGE_ROUTES``, shared with servingctl). With none set, one box — the
``BRIDGE_TORCHSERVE_*`` settings — serves every model (``make up``), through this same path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import BridgeError, NotFound
from bridge.torchserve import TorchServeClient
from stack.routing import Box, Routes, Unrouted
from stack.torchserve import Answer


@dataclass(frozen=True)
class BoxHealth:
    """One box's answer to its ping."""

    box: Box
    status: str  # "Healthy", "Unhealthy (503)", "Unreachable (...)"

    @property
    def healthy(self) -> bool:
        """Whether it answered its authenticated ping with 200."""
        return self.status == "Healthy"


class Router:
    """The bridge's model servers: predictions, versions, descriptions and health, each sent to the model's box."""

    def __init__(self, routes: Routes, timeout_s: float, max_connections: int,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.routes = routes
        self.clients = {
            box: TorchServeClient(box.url, box.management_url, box.key_file, timeout_s, max_connections, transport)
            for box in routes.boxes()
        }

    def client(self, model: str) -> TorchServeClient:
        """The client of ``model``'s box; 404 when no box serves it."""
        try:
            return self.clients[self.routes.box(model)]
        except Unrouted as exc:
            raise NotFound(str(exc)) from exc

    async def close(self) -> None:
        """Release every box's connections."""
        await asyncio.gather(*(client.close() for client in self.clients.values()))

    async def predict(self, model: str, version: str | None, body: bytes, content_type: str,
                      params: dict[str, str] | None = None) -> Answer:
        """POST one input to ``model``'s box."""
        return await self.client(model).predict(model, version, body, content_type, params)

    async def default_version(self, model: str) -> str | None:
        """The model's default version on its box (cached a few seconds); None if unknown or unrouted."""
        try:
            client = self.client(model)
        except NotFound:
            return None
        return await client.default_version(model)

    async def describe_box(self, box: Box) -> list[dict[str, Any]]:
        """The versions of the models routed to ``box``, as that box describes them."""
        every = await self.clients[box].describe_all_models()
        return [d for d in every if self.routes.serves(box, str(d.get("modelName")))]

    async def describe_models(self, model: str) -> list[dict[str, Any]]:
        """Every registered version of ``model``, each marked ``isDefault``; 404 when unrouted."""
        client = self.client(model)
        return [d for d in await client.describe_all_models() if d.get("modelName") == model]

    async def describe_all_models(self) -> list[dict[str, Any]]:
        """Every version of every routed model, over all boxes (each box asked once)."""
        described = await asyncio.gather(*(self.describe_box(box) for box in self.clients))
        return [d for box_descriptions in described for d in box_descriptions]

    async def health(self) -> list[BoxHealth]:
        """Each box's authenticated ping, asked concurrently."""
        return list(await asyncio.gather(*(self._ping(box, client) for box, client in self.clients.items())))

    async def ready(self) -> bool:
        """Ready when every required box answers its ping."""
        return all(h.healthy for h in await self.health() if h.box.required)

    @staticmethod
    async def _ping(box: Box, client: TorchServeClient) -> BoxHealth:
        try:
            upstream = await client.ping()
        except BridgeError as exc:
            return BoxHealth(box, f"Unreachable ({exc.message})")
        return BoxHealth(box, "Healthy" if upstream.status == 200 else f"Unhealthy ({upstream.status})")
