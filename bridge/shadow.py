"""Shadowing: a sampled fraction of live requests also sent to a candidate version, off the request path.

The live answer has left (or is leaving) when a copy is offered here: the copy waits in a bounded queue for one
of ``concurrency`` workers. A full queue drops the copy (counted), a candidate slower than ``timeout_s`` is given up
(recorded as a 504 of the candidate, counted): nothing here can hold a client's answer or its latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.records import InferenceRecord
from bridge.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowCopy:
    """A live request as the candidate gets it."""

    model: str
    version: str  # the candidate
    body: bytes
    content_type: str
    params: dict[str, str] | None
    live: InferenceRecord  # the live answer's record (request id, output, latency)


class ShadowQueue:
    """Bounded, fire-and-forget: ``offer()`` never waits; ``run(copy)`` answers it in a worker."""

    def __init__(self, run: Callable[[ShadowCopy, float], Awaitable[None]], size: int, concurrency: int,
                 timeout_s: float) -> None:
        self._run = run
        self._queue: asyncio.Queue[ShadowCopy] = asyncio.Queue(maxsize=size)
        self._concurrency = concurrency
        self._timeout_s = timeout_s
        self._workers: list[asyncio.Task[None]] = []
        self.offered = self.dropped = self.done = self.failed = 0

    def start(self) -> None:
        """Start the workers (in the running event loop)."""
        self._workers = [asyncio.create_task(self._work(), name=f"shadow-{i}") for i in range(self._concurrency)]

    async def stop(self) -> None:
        """Cancel the workers; copies still queued are dropped (they were never promised to anyone)."""
        await cancel_and_wait(self._workers)

    def offer(self, copy: ShadowCopy) -> bool:
        """Queue ``copy``; False (and counted as dropped) when the queue is full."""
        self.offered += 1
        try:
            self._queue.put_nowait(copy)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    async def _work(self) -> None:
        while True:
            copy = await self._queue.get()
            try:
                await self._run(copy, self._timeout_s)
                self.done += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # a shadow failure is the candidate's business, never the bridge's
                self.failed += 1
                logger.warning("shadowing %s %s failed", copy.model, copy.version, exc_info=True)

    def stats(self) -> dict[str, int]:
        """Counters for /ping and the bridge's metrics."""
        return {"shadow_offered": self.offered, "shadow_dropped": self.dropped, "shadow_done": self.done,
                "shadow_failed": self.failed, "shadow_queued": self._queue.qsize()}

