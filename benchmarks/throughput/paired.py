"""The latency the bridge adds, measured paired: one request at a time, alternating bridge and TorchServe direct.

Two separate runs at 1 in flight (one through the bridge, one direct) differ by whatever the shared machine did
in between: with a forward of 15–130 ms, two 5 s runs moved p50 by ±7 ms here, more than the bridge adds. So the
same photo goes through both paths back to back, the order alternating pair by pair, over keep-alive
connections, and the added latency is p50(bridge) − p50(direct) over those pairs; beside it the median of the
per-pair differences with its 95 % interval (order statistics of the differences, no distribution assumed).
"""

from __future__ import annotations

import http.client
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from benchmarks.throughput.report import percentile, signed


@dataclass
class Endpoint:
    """Where one side's requests go, over one kept-alive connection."""

    url: str
    method: str
    headers: dict[str, str]
    _conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def send(self, body: bytes, timeout_s: float = 60.0) -> tuple[int, float]:
        """(status, milliseconds) of one request; status 0 when nothing answered."""
        url = urlsplit(self.url)
        path = url.path + (f"?{url.query}" if url.query else "")
        started = time.perf_counter()
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout_s)
            self._conn.request(self.method, path, body=body,
                               headers={"Content-Type": "application/octet-stream", **self.headers})
            response = self._conn.getresponse()
            response.read()
            status = response.status
            if response.will_close:
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()
            status = 0
        return status, 1000.0 * (time.perf_counter() - started)

    def close(self) -> None:
        """Drop the connection (the next request opens one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def median_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95 % interval of the median of ``values`` (ranks n/2 ∓ z·√n/2 of the sorted values)."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan, math.nan
    half = z * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return ordered[low], ordered[high]


def measure(bridge: Endpoint, direct: Endpoint, photos: Sequence[bytes], pairs: int,
            warmup_pairs: int = 10, think_s: float = 0.0) -> dict[str, Any]:
    """``pairs`` photos each sent through both paths, one request in flight; a JSON-able summary.

    A pair counts only when both answers are 200; the others are counted as errors. ``think_s``: an untimed
    pause before every request, so each one finds the servers idle (as a model's forward leaves the bridge).
    """
    through: list[float] = []
    straight: list[float] = []
    errors = 0
    try:
        for i in range(warmup_pairs + pairs):
            photo = photos[i % len(photos)]
            answers: dict[bool, tuple[int, float]] = {}  # keyed by "through the bridge"
            for side in (bridge, direct) if i % 2 == 0 else (direct, bridge):
                if think_s:
                    time.sleep(think_s)
                answers[side is bridge] = side.send(photo)
            (b_status, b_ms), (d_status, d_ms) = answers[True], answers[False]
            if i < warmup_pairs:
                continue
            if b_status == 200 and d_status == 200:
                through.append(b_ms)
                straight.append(d_ms)
            else:
                errors += 1
    finally:
        bridge.close()
        direct.close()
    differences = [b - d for b, d in zip(through, straight, strict=True)]
    low, high = median_interval(differences)
    b50, d50 = percentile(through, 50), percentile(straight, 50)
    return {
        "pairs": len(differences), "errors": errors, "think_ms": round(1000 * think_s, 1),
        "bridge_p50_ms": _round(b50), "direct_p50_ms": _round(d50), "added_p50_ms": _round(b50 - d50),
        "added_median_of_pairs_ms": _round(statistics.median(differences) if differences else math.nan),
        "added_median_interval_95_ms": [_round(low), _round(high)],
    }


def render(doc: dict[str, Any]) -> str:
    """One line for the terminal."""
    low, high = doc["added_median_interval_95_ms"]
    idle = f", {doc['think_ms']:g} ms idle before each request" if doc.get("think_ms") else ""
    return (f"added at 1 in flight{idle}, {doc['pairs']} pairs ({doc['errors']} errors): p50 {doc['bridge_p50_ms']} ms "
            f"through the bridge vs {doc['direct_p50_ms']} direct = {signed(doc['added_p50_ms'], 'n/a')} ms; median of "
            f"the pairs' differences {signed(doc['added_median_of_pairs_ms'], 'n/a')} ms (95 % interval {low} to {high})")


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)
