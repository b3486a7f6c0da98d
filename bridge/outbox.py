"""InfluxDB points made on the request path (shadow pairs, feedback), written by the next telemetry round.

Bounded: when InfluxDB or the telemetry loop falls behind, the oldest points give way and are counted.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any


class PointOutbox:
    """``add()`` from anywhere in the event loop; :class:`bridge.telemetry.Telemetry` ``drain()``s it each round."""

    def __init__(self, limit: int = 50_000) -> None:
        self._points: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
        self.dropped = 0

    def add(self, measurement: str, tags: dict[str, str], fields: Mapping[str, float | str],
            at: float | None = None) -> None:
        """Queue one point (``at``: seconds since the epoch, default now)."""
        if len(self._points) == self._points.maxlen:
            self.dropped += 1
        self._points.append({"measurement": measurement, "tags": tags, "fields": dict(fields),
                             "time": int((time.time() if at is None else at) * 1e9)})

    def drain(self) -> list[dict[str, Any]]:
        """Every queued point, oldest first; the outbox is empty afterwards."""
        points = list(self._points)
        self._points.clear()
        return points

    def __len__(self) -> int:
        return len(self._points)
