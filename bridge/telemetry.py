"""Operational metrics into InfluxDB, on an interval: TorchServe's (scraped) and the bridge's own.

Per-inference points (latency, status, batch size per model and version) are written by the recorder.
This adds, every ``interval_s``, from each model server box (bridge.routing; the scraped points are tagged
``box`` with its inference address):

- every sample of TorchServe's Prometheus endpoint (:8082/metrics), one measurement per metric name,
  labels as tags (``model_name``/``ModelName`` → ``model``, ``model_version``/``ModelVersion`` → ``version``);
- ``torchserve_model``: per model and version, derived between two scrapes — requests/s, inference and
  queue milliseconds per request, handler batches/s and mean batch size;
- ``torchserve_workers``: workers per model, version and status, and each version's batch settings and
  whether it is the default (from the management API);
- ``bridge``: the recorder's backlog and counters, cache hits and misses, pending jobs, scrape failures;
- whatever the request path queued in the :class:`~bridge.outbox.PointOutbox` meanwhile (shadow pairs, feedback).

Scraping failures are logged and counted, never fatal. Points carry the scrape's time (event time).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bridge.outbox import PointOutbox
from bridge.routing import Router
from bridge.tasks import cancel_and_wait
from stack.routing import Box

logger = logging.getLogger(__name__)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
TAG_NAMES = {"model_name": "model", "ModelName": "model", "model_version": "version", "ModelVersion": "version"}


@dataclass(frozen=True)
class Sample:
    """One Prometheus sample."""

    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Parse Prometheus' text exposition format (comments skipped, unparsable lines ignored)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append(Sample(name, {k: v for k, v in LABEL.findall(labels or "")}, number))
    return samples


def tags_of(labels: dict[str, str]) -> dict[str, str]:
    """Prometheus labels as InfluxDB tags, with one spelling for model and version."""
    return {TAG_NAMES.get(k, k.lower()): v for k, v in labels.items() if v != ""}


@dataclass
class ModelCounters:
    """Cumulative TorchServe counters of one model version at one scrape."""

    at: float
    values: dict[str, float] = field(default_factory=dict)


DERIVED = {
    "requests": "ts_inference_requests_total",
    "inference_us": "ts_inference_latency_microseconds",
    "queue_us": "ts_queue_latency_microseconds",
    "batches": "HandlerBatches",
    "items": "HandlerBatchItems",
}


def deltas(previous: ModelCounters | None, current: ModelCounters) -> dict[str, float] | None:
    """Counter increases between two scrapes (None on the first, or after a restart reset them)."""
    if previous is None or current.at <= previous.at:
        return None
    delta = {k: current.values.get(k, 0.0) - previous.values.get(k, 0.0) for k in DERIVED}
    return None if any(v < 0 for v in delta.values()) else delta


def derived_fields(delta: dict[str, float], seconds: float) -> dict[str, float]:
    """Rates and per-request means from counter increases over ``seconds``."""
    fields = {"requests_per_s": delta["requests"] / seconds, "batches_per_s": delta["batches"] / seconds}
    if delta["requests"] > 0:
        fields["inference_ms_per_request"] = delta["inference_us"] / delta["requests"] / 1000.0
        fields["queue_ms_per_request"] = delta["queue_us"] / delta["requests"] / 1000.0
    if delta["batches"] > 0:
        fields["mean_batch_size"] = delta["items"] / delta["batches"]
    return fields


class Telemetry:
    """The periodic scrape-and-write loop (one asyncio task in the bridge)."""

    def __init__(
        self,
        router: Router,
        write_points: Callable[[list[dict[str, Any]]], None],
        bridge_stats: Callable[[], Awaitable[dict[str, Any]]],
        interval_s: float = 10.0,
        outbox: PointOutbox | None = None,
    ) -> None:
        self._router = router
        self._outbox = outbox
        self._write_points = write_points
        self._bridge_stats = bridge_stats
        self._interval_s = interval_s
        self._previous: dict[tuple[str, str], ModelCounters] = {}
        self._last_scrape_at: dict[Box, float] = {}
        self._http = httpx.AsyncClient(timeout=5.0)
        self._task: asyncio.Task[None] | None = None
        self._host = socket.gethostname()
        self.scrapes = 0
        self.scrape_failures = 0
        self.write_failures = 0

    def start(self) -> None:
        """Start the loop."""
        self._task = asyncio.create_task(self._loop(), name="telemetry")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            await cancel_and_wait([self._task])
        await self._http.aclose()

    async def _loop(self) -> None:
        while True:
            await self.collect_once()
            await asyncio.sleep(self._interval_s)

    async def collect_once(self) -> int:
        """One round: scrape every box, derive, write. Returns the number of points written (0 on failure)."""
        now = time.time()
        points: list[dict[str, Any]] = []
        for box in self._router.routes.boxes():
            try:
                descriptions = await self._router.describe_box(box)
                points += self._worker_points(descriptions, now, box)
                defaults = {d["modelName"]: d["modelVersion"] for d in descriptions if d.get("isDefault")}
                if box.metrics_url:
                    points += await self._torchserve_points(now, defaults, box)
                self.scrapes += 1
            except Exception as exc:  # noqa: BLE001 - a failed scrape is counted and logged, never fatal
                self.scrape_failures += 1
                logger.warning("scraping box %s failed (%d so far): %s", box.name, self.scrape_failures, exc)
        points.append(self._point("bridge", {"host": self._host}, await self._bridge_fields(), now))
        if self._outbox is not None:
            points += self._outbox.drain()
        try:
            await asyncio.to_thread(self._write_points, points)
        except Exception as exc:  # noqa: BLE001
            self.write_failures += 1
            logger.warning("writing %d telemetry points to InfluxDB failed: %s", len(points), exc)
            return 0
        return len(points)

    async def _bridge_fields(self) -> dict[str, Any]:
        fields = {k: v for k, v in (await self._bridge_stats()).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        fields.update(scrapes=self.scrapes, scrape_failures=self.scrape_failures, write_failures=self.write_failures)
        return {k: float(v) for k, v in fields.items()}

    @staticmethod
    def _point(measurement: str, tags: dict[str, str], fields: dict[str, Any], at: float) -> dict[str, Any]:
        return {"measurement": measurement, "tags": tags, "fields": fields, "time": int(at * 1e9)}

    async def _torchserve_points(self, now: float, defaults: dict[str, str], box: Box) -> list[dict[str, Any]]:
        assert box.metrics_url is not None
        response = await self._http.get(box.metrics_url)
        response.raise_for_status()
        # A box's samples of models it is not routed for are another box's business (or nobody's).
        samples = [s for s in parse_prometheus(response.text)
                   if "model" not in tags_of(s.labels) or self._router.routes.serves(box, tags_of(s.labels)["model"])]
        points = [self._point(s.name, {**tags_of(s.labels), "box": box.name}, {"value": s.value}, now) for s in samples]
        counters: dict[tuple[str, str], ModelCounters] = {}
        wanted = {metric: key for key, metric in DERIVED.items()}
        for s in samples:
            tags = tags_of(s.labels)
            if s.name in wanted and "model" in tags:
                key = (tags["model"], tags.get("version", "default"))
                counters.setdefault(key, ModelCounters(now)).values[wanted[s.name]] = s.value
        # TorchServe labels requests sent without a version "default"; the handler knows its real version.
        # Counters are diffed per label set, then merged under the version that actually served them.
        merged: dict[tuple[str, str], dict[str, float]] = {}
        last = self._last_scrape_at.get(box)
        seconds = now - last if last else self._interval_s
        self._last_scrape_at[box] = now
        for (model, version), current in counters.items():
            delta = deltas(self._previous.get((model, version)), current)
            self._previous[(model, version)] = current
            if delta is None:
                continue
            resolved = (model, defaults.get(model, version) if version == "default" else version)
            total = merged.setdefault(resolved, dict.fromkeys(DERIVED, 0.0))
            for k, v in delta.items():
                total[k] += v
        for (model, version), delta in merged.items():
            fields = derived_fields(delta, seconds)
            points.append(self._point("torchserve_model", {"model": model, "version": version, "box": box.name},
                                      fields, now))
        return points

    def _worker_points(self, descriptions: list[dict[str, Any]], now: float, box: Box) -> list[dict[str, Any]]:
        points = []
        for description in descriptions:
            workers: dict[str, int] = {}
            for worker in description.get("workers", []):
                status = worker.get("status", "UNKNOWN")
                workers[status] = workers.get(status, 0) + 1
            tags = {"model": description["modelName"], "version": description["modelVersion"], "box": box.name}
            fields = {
                "workers": float(sum(workers.values())),
                **{f"workers_{status.lower()}": float(n) for status, n in workers.items()},
                "min_workers": float(description.get("minWorkers", 0)),
                "max_workers": float(description.get("maxWorkers", 0)),
                "batch_size": float(description.get("batchSize", 0)),
                "max_batch_delay_ms": float(description.get("maxBatchDelay", 0)),
                "is_default": 1.0 if description.get("isDefault") else 0.0,
            }
            points.append(self._point("torchserve_workers", tags, fields, now))
        return points
