"""Records every inference durably, off the model's path: a local journal first, then PostgreSQL.

    submit(record) ──▶ journal thread: batch → spool segment, fsync ──▶ future resolved (durable: ack)
                                            └──▶ store thread: batch → PostgreSQL (ON CONFLICT DO NOTHING)
                                                               → segment deleted once committed
    submit(record) ──▶ metrics thread: bounded buffer → InfluxDB (drops counted, never blocks)

A prediction is answered once its record is fsync'd to the local spool — never later, and never waiting
for PostgreSQL. While PostgreSQL is down or slow, segments simply stay on disk and are replayed (oldest
first, idempotently by request id) when it answers again, also after a restart or a crash.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
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


class RecordingFailed(RuntimeError):
    """A record could be written neither to the local journal nor anywhere else."""


@dataclass
class RecorderStats:
    """Counters shown in ``/ping`` and exported as metrics."""

    submitted: int = 0
    journaled: int = 0
    stored: int = 0
    replayed: int = 0
    quarantined: int = 0
    journal_failures: int = 0
    store_failures: int = 0
    points_written: int = 0
    points_dropped: int = 0
    points_rejected: int = 0
    metrics_failures: int = 0


@dataclass
class _Pending:
    record: InferenceRecord
    durable: Future[None]


class Recorder:
    """Journal → PostgreSQL (durable, exactly once per request id) and → InfluxDB (bounded, best effort)."""

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
        self._incoming: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._journaled: queue.SimpleQueue[tuple[Path, list[InferenceRecord]]] = queue.SimpleQueue()
        self._points: collections.deque[InferenceRecord] = collections.deque()
        self._points_lock = threading.Lock()
        self._stopping = threading.Event()
        self._store_healthy = True
        self._metrics_healthy = True
        self._busy = {"journal": 0, "store": 0, "points": 0}
        self._threads: list[threading.Thread] = []
        self.stats = RecorderStats()

    # --- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer threads (the store thread first replays what a previous run left)."""
        self._threads = [
            threading.Thread(target=self._journal_loop, name="recorder-journal", daemon=True),
            threading.Thread(target=self._store_loop, name="recorder-postgres", daemon=True),
            threading.Thread(target=self._metrics_loop, name="recorder-influxdb", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, record: InferenceRecord) -> Future[None]:
        """Queue one record; the future resolves once it is durable (fsync'd), or fails (RecordingFailed)."""
        self.stats.submitted += 1
        pending = _Pending(record, Future())
        self._incoming.put(pending)
        with self._points_lock:
            if len(self._points) >= self._metrics_buffer_max:
                self._points.popleft()
                self.stats.points_dropped += 1
            self._points.append(record)
        return pending.durable

    def stop(self, timeout_s: float = 10.0) -> None:
        """Journal what is queued, try PostgreSQL once more, flush points; what remains stays on disk."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout_s)
        self._journal_batch(self._drain_incoming(10**9, block=False))
        if self._store_healthy:
            self._replay_spool()
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
            "postgres": "ok" if self._store_healthy else "unavailable (journaling to the spool)",
            "influxdb": "ok" if self._metrics_healthy else "unavailable (buffering)",
            "queued": self._incoming.qsize(),
            "spool_segments": segments,
            "spool_bytes": spool_bytes,
            "points_buffered": len(self._points),
            **vars(self.stats),
        }

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until everything submitted reached PostgreSQL and InfluxDB (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            idle = self._incoming.empty() and self._journaled.empty() and not self._points
            if idle and not any(self._busy.values()) and not self._spool.segments():
                return True
            time.sleep(0.02)
        return False

    # --- journal --------------------------------------------------------------------------------

    def _drain_incoming(self, limit: int, block: bool = True) -> list[_Pending]:
        batch: list[_Pending] = []
        try:
            if block:
                batch.append(self._incoming.get(timeout=self._flush_interval_s))
            while len(batch) < limit:
                batch.append(self._incoming.get_nowait())
        except queue.Empty:
            pass
        return batch

    def _journal_loop(self) -> None:
        while not self._stopping.is_set():
            batch = self._drain_incoming(self._batch_size)
            if batch:
                self._busy["journal"] = 1
                self._journal_batch(batch)
                self._busy["journal"] = 0

    def _journal_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        records = [p.record for p in batch]
        try:
            segment = self._spool.append(records)
        except OSError as exc:
            self.stats.journal_failures += 1
            logger.error("journaling %d records to %s failed: %s", len(records), self._spool.directory, exc)
            self._store_directly(batch, exc)
            return
        self.stats.journaled += len(records)
        for pending in batch:
            pending.durable.set_result(None)
        self._journaled.put((segment, records))

    def _store_directly(self, batch: list[_Pending], journal_error: OSError) -> None:
        """The disk failed: the records are durable only if PostgreSQL takes them now."""
        records = [p.record for p in batch]
        try:
            self._write_store(records)
        except Exception as exc:  # noqa: BLE001
            failure = RecordingFailed(f"could not record: journal failed ({journal_error}), PostgreSQL failed ({exc})")
            for pending in batch:
                pending.durable.set_exception(failure)
            return
        for pending in batch:
            pending.durable.set_result(None)

    # --- PostgreSQL -----------------------------------------------------------------------------

    def _store_loop(self) -> None:
        self._replay_spool()  # what a previous run (or crash) left behind
        last_retry = time.monotonic()
        while not self._stopping.is_set():
            try:
                segment, records = self._journaled.get(timeout=self._flush_interval_s)
            except queue.Empty:
                segment = None
            # A segment already gone was replayed from disk meanwhile.
            if segment is not None and self._store_healthy and segment.exists():
                self._busy["store"] = 1
                try:
                    self._write_store(records)
                    segment.unlink(missing_ok=True)
                except Exception as exc:  # noqa: BLE001 - the segment stays on disk for the replay
                    self._store_failed(exc)
                self._busy["store"] = 0
            if not self._store_healthy and time.monotonic() - last_retry >= self._retry_interval_s:
                last_retry = time.monotonic()
                self._busy["store"] = 1
                self._replay_spool()
                self._busy["store"] = 0

    def _write_store(self, records: list[InferenceRecord]) -> None:
        try:
            self._store.write(records)
        except (psycopg2.DataError, psycopg2.IntegrityError):
            # A record PostgreSQL refuses on its merits: write the others, keep the bad one aside.
            for record in records:
                try:
                    self._store.write([record])
                except (psycopg2.DataError, psycopg2.IntegrityError):
                    logger.exception("record %s refused by PostgreSQL; quarantined", record.request_id)
                    self._spool.quarantine([record])
                    self.stats.quarantined += 1
        self.stats.stored += len(records)

    def _store_failed(self, exc: Exception) -> None:
        self.stats.store_failures += 1
        if self._store_healthy:
            logger.warning("PostgreSQL unavailable; records stay in the spool %s: %s", self._spool.directory, exc)
        self._store_healthy = False

    def _replay_spool(self) -> None:
        """Write every segment on disk to PostgreSQL, oldest first; healthy again once all went in."""
        for segment in self._spool.segments():
            try:
                records = self._spool.read(segment)
            except FileNotFoundError:
                continue  # written by the normal path, or by another bridge process sharing the spool
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

    # --- InfluxDB -------------------------------------------------------------------------------

    def _metrics_loop(self) -> None:
        while not self._stopping.is_set():
            with self._points_lock:
                batch = [self._points.popleft() for _ in range(min(len(self._points), 5000))]
                self._busy["points"] = len(batch)
            if not batch:
                time.sleep(self._flush_interval_s)
                continue
            self._write_points(batch)
            self._busy["points"] = 0
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
