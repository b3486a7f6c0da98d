"""Records every inference off the request path: batched into PostgreSQL and InfluxDB by two threads.

``submit()`` never blocks and never fails. PostgreSQL outages divert batches to the durable spool,
which is replayed (idempotently) once PostgreSQL answers again. InfluxDB outages are absorbed by a
bounded buffer; points beyond the bound, or that InfluxDB rejects, are dropped and counted.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import psycopg2

from bridge.metrics_sink import PointsRejected
from bridge.records import InferenceRecord
from bridge.spool import Spool

logger = logging.getLogger(__name__)


class RecordStore(Protocol):
    """Where records are kept for good (PostgreSQL)."""

    def write(self, records: list[InferenceRecord]) -> int: ...

    def close(self) -> None: ...


class MetricsSink(Protocol):
    """Where per-inference points go (InfluxDB)."""

    def write(self, records: list[InferenceRecord]) -> None: ...

    def close(self) -> None: ...


@dataclass
class RecorderStats:
    """Counters shown in ``/ping`` and exported as metrics."""

    submitted: int = 0
    stored: int = 0
    spooled: int = 0
    replayed: int = 0
    quarantined: int = 0
    store_failures: int = 0
    points_written: int = 0
    points_dropped: int = 0
    points_rejected: int = 0
    metrics_failures: int = 0


class Recorder:
    """Fan-out of inference records to PostgreSQL (durable) and InfluxDB (best effort, bounded)."""

    def __init__(
        self,
        store: RecordStore,
        metrics: MetricsSink,
        spool: Spool,
        batch_size: int = 500,
        flush_interval_s: float = 0.05,
        retry_interval_s: float = 2.0,
        metrics_buffer: int = 100_000,
    ) -> None:
        self._store, self._metrics, self._spool = store, metrics, spool
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._metrics_buffer_max = metrics_buffer
        self._queue: queue.SimpleQueue[InferenceRecord] = queue.SimpleQueue()
        self._points: collections.deque[InferenceRecord] = collections.deque()
        self._points_lock = threading.Lock()
        self._stopping = threading.Event()
        self._store_healthy = True
        self._metrics_healthy = True
        self._threads: list[threading.Thread] = []
        self._records_in_flight = 0
        self._points_in_flight = 0
        self.stats = RecorderStats()

    def start(self) -> None:
        """Start the two writer threads."""
        self._threads = [
            threading.Thread(target=self._store_loop, name="recorder-postgres", daemon=True),
            threading.Thread(target=self._metrics_loop, name="recorder-influxdb", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, record: InferenceRecord) -> None:
        """Queue one record for both sinks; never blocks."""
        self.stats.submitted += 1
        self._queue.put(record)
        with self._points_lock:
            if len(self._points) >= self._metrics_buffer_max:
                self._points.popleft()
                self.stats.points_dropped += 1
            self._points.append(record)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Flush what can be flushed; whatever PostgreSQL cannot take now goes to the spool."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
        leftover = self._drain(10**9, block=False)
        if leftover:
            self._spool.append(leftover)
            self.stats.spooled += len(leftover)
        with self._points_lock:
            points = list(self._points)
            self._points.clear()
        if points:
            self._write_points(points)
            if self._points:
                logger.warning("InfluxDB unavailable at shutdown: %d points dropped", len(self._points))
                self.stats.points_dropped += len(self._points)
        self._store.close()
        self._metrics.close()

    def health(self) -> dict[str, object]:
        """What ``/ping`` shows about recording."""
        segments, spool_bytes = self._spool.backlog()
        return {
            "postgres": "ok" if self._store_healthy else "unavailable (spooling)",
            "influxdb": "ok" if self._metrics_healthy else "unavailable (buffering)",
            "queued": self._queue.qsize(),
            "spool_segments": segments,
            "spool_bytes": spool_bytes,
            "points_buffered": len(self._points),
            **vars(self.stats),
        }

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until everything submitted reached PostgreSQL and InfluxDB (for tests and shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            busy = self._records_in_flight or self._points_in_flight or self._points
            if self._queue.empty() and not busy and not self._spool.segments():
                return True
            time.sleep(0.02)
        return False

    # --- PostgreSQL ----------------------------------------------------------------------------

    def _drain(self, limit: int, block: bool = True) -> list[InferenceRecord]:
        batch: list[InferenceRecord] = []
        try:
            if block:
                batch.append(self._queue.get(timeout=self._flush_interval_s))
            while len(batch) < limit:
                batch.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _store_loop(self) -> None:
        last_replay = 0.0
        while not self._stopping.is_set():
            batch = self._drain(self._batch_size)
            if batch:
                self._records_in_flight = len(batch)
                self._store_or_spool(batch)
                self._records_in_flight = 0
            if time.monotonic() - last_replay >= (self._retry_interval_s if not self._store_healthy else 0.5):
                last_replay = time.monotonic()
                self._replay_spool()

    def _store_or_spool(self, batch: list[InferenceRecord]) -> None:
        if self._store_healthy:
            try:
                self._write_store(batch)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means: keep the records on disk
                self._store_failed(exc)
        self._spool.append(batch)
        self.stats.spooled += len(batch)

    def _write_store(self, batch: list[InferenceRecord]) -> None:
        try:
            self._store.write(batch)
        except (psycopg2.DataError, psycopg2.IntegrityError):
            # A record PostgreSQL refuses on its merits: write the others, keep the bad one aside.
            for record in batch:
                try:
                    self._store.write([record])
                except (psycopg2.DataError, psycopg2.IntegrityError):
                    logger.exception("record %s refused by PostgreSQL; quarantined", record.request_id)
                    self._spool.quarantine([record])
                    self.stats.quarantined += 1
        self.stats.stored += len(batch)

    def _store_failed(self, exc: Exception) -> None:
        self.stats.store_failures += 1
        if self._store_healthy:
            logger.warning("PostgreSQL unavailable, spooling records to %s: %s", self._spool.directory, exc)
        self._store_healthy = False

    def _replay_spool(self) -> None:
        for segment in self._spool.segments():
            try:
                records = self._spool.read(segment)
            except FileNotFoundError:
                continue  # replayed by another bridge process sharing the spool
            try:
                self._write_store(records)
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
                return
            segment.unlink(missing_ok=True)
            self.stats.replayed += len(records)
        if not self._store_healthy:
            logger.info("PostgreSQL is back; spool replayed")
        self._store_healthy = True

    # --- InfluxDB ------------------------------------------------------------------------------

    def _metrics_loop(self) -> None:
        while not self._stopping.is_set():
            with self._points_lock:
                batch = [self._points.popleft() for _ in range(min(len(self._points), 5000))]
                self._points_in_flight = len(batch)
            if not batch:
                time.sleep(self._flush_interval_s)
                continue
            self._write_points(batch)
            self._points_in_flight = 0
            if not self._metrics_healthy:
                self._stopping.wait(self._retry_interval_s)

    def _write_points(self, batch: list[InferenceRecord]) -> None:
        try:
            self._metrics.write(batch)
            self.stats.points_written += len(batch)
            if not self._metrics_healthy:
                logger.info("InfluxDB is back")
            self._metrics_healthy = True
        except PointsRejected as exc:
            self.stats.points_rejected += len(batch)
            logger.warning("InfluxDB rejected %d points (dropped): %s", len(batch), exc)
        except Exception as exc:  # noqa: BLE001 - an outage: put the points back and wait
            self.stats.metrics_failures += 1
            if self._metrics_healthy:
                logger.warning("InfluxDB unavailable, buffering points: %s", exc)
            self._metrics_healthy = False
            with self._points_lock:
                room = self._metrics_buffer_max - len(self._points)
                kept = batch[-room:] if room > 0 else []
                self.stats.points_dropped += len(batch) - len(kept)
                self._points.extendleft(reversed(kept))
