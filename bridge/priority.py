"""Interactive requests ahead of batch work when a model is saturated (docs/api-keys.md, "Priority").

TorchServe serves its queue in arrival order, so the order has to be made before a request reaches it. Per model
and per bridge, a request in flight counts against ``saturation``; interactive requests (predictions, /v2 infer)
always go, while a batch request (a job's model) waits as long as the model is saturated — except that one batch
request per model may always run, so jobs slow down under interactive load but never stop. Waiters go in arrival
order.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """``async with gate.slot(model, batch=...)`` around every call to a model."""

    def __init__(self, saturation: int) -> None:
        self._saturation = saturation  # 0: no priority
        self._inflight: collections.Counter[str] = collections.Counter()
        self._batch_inflight: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[asyncio.Future[None]]] = collections.defaultdict(collections.deque)
        self.batch_waits = 0
        self.batch_wait_s = 0.0

    def _must_wait(self, model: str) -> bool:
        return (self._saturation > 0 and self._inflight[model] >= self._saturation
                and self._batch_inflight[model] > 0)

    @asynccontextmanager
    async def slot(self, model: str, batch: bool) -> AsyncIterator[None]:
        """Hold one of ``model``'s slots for the body; a batch request first waits while the model is saturated."""
        if batch and (self._must_wait(model) or self._waiting[model]):
            await self._wait(model)
        self._inflight[model] += 1
        if batch:
            self._batch_inflight[model] += 1
        try:
            yield
        finally:
            self._inflight[model] -= 1
            if batch:
                self._batch_inflight[model] -= 1
            self._wake(model)

    async def _wait(self, model: str) -> None:
        started = time.perf_counter()
        self.batch_waits += 1
        queue = self._waiting[model]
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            while True:
                await waiter
                if not self._must_wait(model):
                    return
                waiter = asyncio.get_running_loop().create_future()
                queue.appendleft(waiter)  # still saturated: first in line again
        finally:
            if waiter in queue:
                queue.remove(waiter)  # cancelled while waiting
            self.batch_wait_s += time.perf_counter() - started
            self._wake(model)

    def _wake(self, model: str) -> None:
        queue = self._waiting.get(model)
        if not queue or self._must_wait(model):
            return
        waiter = queue.popleft()
        if not waiter.done():
            waiter.set_result(None)

    def stats(self) -> dict[str, float]:
        """How often and how long batch work waited, for the bridge's metrics."""
        return {"batch_waits": self.batch_waits, "batch_wait_s": round(self.batch_wait_s, 3)}
