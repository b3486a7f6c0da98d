"""Every call to a model server goes through here: one :class:`TorchServeClient` per box, chosen by model.

The routes are :mod:`stack.routing`'s (``BRIDGE_ROUTES``, shared with servingctl). With none set, one box — the
``BRIDGE_TORCHSERVE_*`` settings — serves every model (``make up``), through this same path.

A model scaled out to several boxes (replicas) gets its predictions spread round robin over them. A replica
that is down (refused, reset, a failed worker), or that does not serve the model yet (404, 503 while a new box
loads it) is skipped: the same request goes to the next replica at once, and the failed one is tried last
until it is ready again: every :data:`COOL_OFF_S` a background probe asks its management API, and only a box
whose default version of the model has a READY worker rejoins the rotation (a restarted TorchServe accepts
requests before its workers have loaded, and would hold them in its queue). That is what lets a box be
replaced, restarted or rolled out with no failed request. A timeout is not retried elsewhere: the time is
spent, and the client's deadline with it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.errors import BridgeError, NotFound, UpstreamUnavailable
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


COOL_OFF_S = 2.0
"""How often a replica that failed is probed for readiness (until then it is tried last, after the others)."""

FAIL_OVER_STATUSES = frozenset({404, 503})
"""Answers of a replica that does not serve the model right now (not loaded yet, no worker): try the next one."""


@dataclass
class Replicas:
    """One model's boxes, in the order to try them: round robin over those not cooling off, then the rest."""

    boxes: tuple[Box, ...]
    failed_at: dict[Box, float] = field(default_factory=dict)
    _next: int = 0

    def order(self) -> list[Box]:
        """The boxes to try for the next request: those in the rotation, then those that failed."""
        start, self._next = self._next, (self._next + 1) % len(self.boxes)
        rotated = self.boxes[start:] + self.boxes[:start]
        if not self.failed_at:
            return list(rotated)
        return [b for b in rotated if b not in self.failed_at] + [b for b in rotated if b in self.failed_at]

    def preferred(self) -> Box:
        """The first box in the rotation (one that has not failed, if any), the round robin left where it is."""
        return next((box for box in self.boxes if box not in self.failed_at), self.boxes[0])

    def due_for_probe(self) -> list[Box]:
        """The failed boxes not probed for :data:`COOL_OFF_S` (each is then marked as probed now)."""
        now = time.monotonic()
        due = [box for box, at in self.failed_at.items() if now - at >= COOL_OFF_S]
        for box in due:
            self.failed_at[box] = now
        return due

    def failed(self, box: Box) -> None:
        """``box`` just failed: try it last until a probe finds it ready."""
        self.failed_at[box] = time.monotonic()

    def answered(self, box: Box) -> None:
        """``box`` answered: it is in the rotation again."""
        self.failed_at.pop(box, None)


class Router:
    """The bridge's model servers: predictions, versions, descriptions and health, each sent to the model's box."""

    def __init__(self, routes: Routes, timeout_s: float, max_connections: int,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.routes = routes
        self.clients = {
            box: TorchServeClient(box.url, box.management_url, box.key_file, timeout_s, max_connections, transport)
            for box in routes.boxes()
        }
        self._replicas: dict[str, Replicas] = {}
        self._probes: set[asyncio.Task[None]] = set()

    def replicas(self, model: str) -> Replicas:
        """``model``'s boxes; 404 when no box serves it."""
        replicas = self._replicas.get(model)
        if replicas is None:
            try:
                boxes = self.routes.replicas(model)
            except Unrouted as exc:
                raise NotFound(str(exc)) from exc
            replicas = self._replicas[model] = Replicas(boxes)
        return replicas

    def client(self, model: str) -> TorchServeClient:
        """The client of a box to ask about ``model`` (versions, descriptions): one in the rotation, without moving
        the predictions' round robin; 404 when no box serves it."""
        return self.clients[self.replicas(model).preferred()]

    async def close(self) -> None:
        """Stop the probes; release every box's connections."""
        for probe in self._probes:
            probe.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
        await asyncio.gather(*(client.close() for client in self.clients.values()))

    async def predict(self, model: str, version: str | None, body: bytes, content_type: str,
                      params: dict[str, str] | None = None) -> Answer:
        """POST one input to one of ``model``'s boxes, failing over to the next as the module says."""
        replicas = self.replicas(model)
        if len(replicas.boxes) == 1:
            return await self.clients[replicas.boxes[0]].predict(model, version, body, content_type, params)
        for box in replicas.due_for_probe():
            probe = asyncio.create_task(self._probe(model, replicas, box))
            self._probes.add(probe)
            probe.add_done_callback(self._probes.discard)
        boxes = replicas.order()
        for box in boxes[:-1]:
            try:
                answer = await self.clients[box].predict(model, version, body, content_type, params)
            except UpstreamUnavailable:
                replicas.failed(box)
                continue
            if answer.status in FAIL_OVER_STATUSES:
                replicas.failed(box)
                continue
            replicas.answered(box)
            return answer
        try:
            answer = await self.clients[boxes[-1]].predict(model, version, body, content_type, params)
        except UpstreamUnavailable:
            replicas.failed(boxes[-1])
            raise
        replicas.answered(boxes[-1])
        return answer

    async def _probe(self, model: str, replicas: Replicas, box: Box) -> None:
        """Put a failed ``box`` back in ``model``'s rotation once its default version has a READY worker."""
        try:
            versions = await self.clients[box].describe_all_models()
        except BridgeError:
            return  # still down: probed again after the cool-off
        if any(d.get("modelName") == model and d.get("isDefault")
               and any(w.get("status") == "READY" for w in d.get("workers", [])) for d in versions):
            replicas.answered(box)

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
        """Every registered version of ``model``, each marked ``isDefault``, as one of its boxes says; 404 when
        unrouted."""
        client = self.client(model)
        return [d for d in await client.describe_all_models() if d.get("modelName") == model]

    async def describe_all_models(self) -> list[dict[str, Any]]:
        """Every version of every routed model, over all boxes (each box asked once)."""
        described = await asyncio.gather(*(self.describe_box(box) for box in self.clients))
        return [d for box_descriptions in described for d in box_descriptions]

    async def health(self) -> list[BoxHealth]:
        """Each box's authenticated ping, asked concurrently."""
        return list(await asyncio.gather(*(self._ping(box, client) for box, client in self.clients.items())))

    def failing(self, health: list[BoxHealth]) -> list[BoxHealth]:
        """The unhealthy required boxes that leave a model with no healthy box (a replica down alone is not)."""
        healthy = {h.box for h in health if h.healthy}
        served = [*self.routes.routes.values(), self.routes.fallback]
        unserved = {box for boxes in served if not any(box in healthy for box in boxes) for box in boxes}
        return [h for h in health if h.box.required and h.box in unserved]

    async def ready(self) -> bool:
        """Ready when every model with a required box has at least one box answering its ping."""
        return not self.failing(await self.health())

    @staticmethod
    async def _ping(box: Box, client: TorchServeClient) -> BoxHealth:
        try:
            upstream = await client.ping()
        except BridgeError as exc:
            return BoxHealth(box, f"Unreachable ({exc.message})")
        return BoxHealth(box, "Healthy" if upstream.status == 200 else f"Unhealthy ({upstream.status})")
