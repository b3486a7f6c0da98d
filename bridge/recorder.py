"""Records every inference off the model's path: a local journal first, then a list of sinks.

    submit(record) ──▶ journal thread: batch → appended to the open spool segment, fdatasync
                            │                                         ──▶ future resolved (the answer may leave)
                            └──▶ per DURABLE sink, a thread: queued batches → one write (idempotent by request id)
                                 → a sealed segment is deleted once every durable sink has all of it
    submit(record) ──▶ per BEST_EFFORT sink, a bounded buffer and a thread (drops counted, never blocks)

A prediction is answered once its record is fsync'd to the local spool — never later, and never waiting
for a sink. While a durable sink is down or slow, segments simply stay on disk and are replayed (oldest
first, idempotently by request id) when it answers again, also after a restart or a crash.

Several bridges may share one spool directory (a volume): each writes its own segments, and each adopts the
segments older than ``adopt_after_s`` that nobody stored — those of an instance that was removed (``docker rm
-f``, eviction, a crash) before its sink had them. So an acknowledged record outlives its instance as long as
one bridge on that volume runs (docs/deployment.md, "Records when a bridge is removed").

A sink is one :class:`Sink` subclass (a name, a policy, ``write``) plus one line in ``bridge/sinks.py``;
its thread, health entry and counters come from here. Sinks raise :class:`SinkError` only.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import enum
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, fields
from pathlib import Path

from bridge.records import InferenceRecord
from bridge.spool import Batch, Spool

logger = logging.getLogger(__name__)


class Policy(enum.Enum):
    """How a sink is fed.

    DURABLE: fed from the journal; ``write`` must be idempotent by request id (replays happen); retried until
    it succeeds; records it rejects are quarantined in the spool. BEST_EFFORT: a bounded buffer; on overflow
    the oldest records are dropped and counted; rejected records are dropped and counted, never retried.
    """

    DURABLE = "durable"
    BEST_EFFORT = "best effort"


class SinkError(Exception):
    """Base of what a sink's ``write`` raises."""


class SinkUnavailable(SinkError):
    """The sink is down or too slow: the same records may succeed later."""


class RecordsRejected(SinkError):
    """The sink refused the records themselves: retrying cannot help."""


@dataclass(frozen=True)
class SinkKeys:
    """Names of a sink's entries in ``/ping``'s ``recording`` and in the bridge's metrics."""

    health: str
    written: str
    failures: str
    rejected: str
    replayed: str  # durable sinks
    dropped: str  # best-effort sinks
    buffered: str  # best-effort sinks

    @classmethod
    def named(cls, name: str, **overrides: str) -> SinkKeys:
        """``<name>`` for the health entry, ``<name>_<counter>`` for the counters, unless overridden."""
        counters = {f.name: f"{name}_{f.name}" for f in fields(cls) if f.name != "health"}
        return cls(**{"health": name, **counters, **overrides})


class Sink(abc.ABC):
    """Where records go after the journal; subclasses set ``name`` and ``policy`` and implement ``write``."""

    name: str
    policy: Policy
    keys: SinkKeys | None = None  # default: SinkKeys.named(name)
    buffer_limit: int = 100_000  # best effort: records held while the sink is down
    batch_limit: int = 5000  # best effort: records per write
    coalesce_records: int = 500  # durable: journal batches queued meanwhile are combined into one write up to this
    coalesce_s: float = 0.05  # how long a write waits for more records (durable: the journal already has them)

    def start(self) -> None:
        """Prepare before the first write (e.g. migrate a schema); raise SinkUnavailable if unreachable now."""

    def counts(self) -> dict[str, int]:
        """The sink's own counters, shown with the recorder's (none by default)."""
        return {}

    @abc.abstractmethod
    def write(self, records: list[InferenceRecord]) -> None:
        """Write ``records``; raise SinkUnavailable (an outage) or RecordsRejected (bad records), nothing else."""

    def close(self) -> None:
        """Release connections."""


class RecordingFailed(RuntimeError):
    """A record could be written neither to the local journal nor to the durable sinks."""


@dataclass
class _Pending:
    record: InferenceRecord
    durable: Future[None]


class _Lane:
    """One sink's thread, health and counters."""

    unavailable = "unavailable"

    def __init__(self, sink: Sink, retry_interval_s: float) -> None:
        self.sink = sink
        self.keys = sink.keys or SinkKeys.named(sink.name)
        self.healthy = True
        self.busy = False
        self.counts = dict.fromkeys(self._counters(), 0)
        self._retry_interval_s = retry_interval_s
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, name=f"recorder-{sink.name}", daemon=True)

    def _counters(self) -> tuple[str, ...]:
        return self.keys.written, self.keys.rejected, self.keys.failures

    def health(self) -> dict[str, object]:
        """The sink's health entry (its counters are in ``counts``)."""
        return {self.keys.health: "ok" if self.healthy else self.unavailable}

    def loop(self) -> None:
        """The sink's thread."""
        raise NotImplementedError

    def stop(self) -> None:
        """Ask the thread to finish (it sleeps until there is work, so it must be woken)."""
        self.stopping.set()

    def idle(self) -> bool:
        """Nothing in flight."""
        return not self.busy


class _DurableLane(_Lane):
    """Segments from the journal → the sink; on failure the segments stay on disk and are replayed."""

    unavailable = "unavailable (journaling to the spool)"

    def __init__(self, recorder: Recorder, sink: Sink, retry_interval_s: float, adopt_after_s: float | None = None) -> None:
        super().__init__(sink, retry_interval_s)
        self._adopt_after_s = adopt_after_s
        self._recorder = recorder
        self._spool = recorder.spool
        # None wakes the thread to stop: it blocks on this queue, with no timer while the sink is healthy.
        self.segments: queue.SimpleQueue[tuple[Batch, list[InferenceRecord]] | None] = queue.SimpleQueue()

    def stop(self) -> None:
        """Wake the thread to finish."""
        super().stop()
        self.segments.put(None)

    def _counters(self) -> tuple[str, ...]:
        return *super()._counters(), self.keys.replayed

    def idle(self) -> bool:
        """Nothing queued or in flight."""
        return self.segments.empty() and not self.busy

    def loop(self) -> None:
        """Replay what a previous run (or crash) left, then write the new batches; retry while down."""
        self.replay()
        last_retry = last_adoption = time.monotonic()
        while not self.stopping.is_set():
            # Sleeps until a batch arrives; wakes on its own only to retry a sink that is down, or to adopt.
            items = self._take(self._wake_after_s())
            # A batch already stored was replayed from disk meanwhile (or its segment by another bridge).
            todo = [(batch, records) for batch, records in items if not self._recorder.stored_by(batch, self)]
            if todo and self.healthy:
                try:
                    self.write([record for _, records in todo for record in records])
                    for batch, _ in todo:
                        self._recorder.segment_stored(batch.segment, self, batch.end)
                except Exception as exc:  # noqa: BLE001 - the batches stay on disk for the replay
                    self.failed(exc)
            self.busy = False
            if not self.healthy and time.monotonic() - last_retry >= self._retry_interval_s:
                last_retry = time.monotonic()
                self.busy = True
                self.replay()
                self.busy = False
            elif (self.healthy and self._adopt_after_s is not None
                  and time.monotonic() - last_adoption >= min(self._retry_interval_s, self._adopt_after_s)):
                last_adoption = time.monotonic()
                self.busy = True
                self.replay(older_than_s=self._adopt_after_s)
                self.busy = False

    def _take(self, timeout_s: float | None) -> list[tuple[Batch, list[InferenceRecord]]]:
        """The next batch, and those queued within ``coalesce_s`` after it, up to ``coalesce_records`` records."""
        try:
            first = self.segments.get(timeout=timeout_s)
        except queue.Empty:
            return []
        if first is None:
            return []
        self.busy = True
        items, count = [first], len(first[1])
        if not self.healthy:  # the replay reads them from disk
            return items
        deadline = time.monotonic() + self.sink.coalesce_s
        while count < self.sink.coalesce_records:
            remaining = deadline - time.monotonic()
            try:
                item = self.segments.get(timeout=remaining) if remaining > 0 else self.segments.get_nowait()
            except queue.Empty:
                break
            if item is None:  # stop: write what was taken
                break
            items.append(item)
            count += len(item[1])
        return items

    def forget_queued(self) -> None:
        """Drop queued segments and the stop wake-up (each segment is also on disk, where replay finds it)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.segments.get_nowait()

    def _wake_after_s(self) -> float | None:
        """None (sleep until a segment arrives) unless the sink is down or other instances' segments are adopted."""
        if not self.healthy:
            return self._retry_interval_s
        if self._adopt_after_s is not None:
            return min(self._retry_interval_s, self._adopt_after_s)
        return None

    def write(self, records: list[InferenceRecord]) -> None:
        """Write a batch; records the sink rejects on their merits are quarantined, the others written."""
        rejected = 0
        try:
            self.sink.write(records)
        except RecordsRejected:
            # One by one, so that one bad record costs its batch-mates nothing.
            for record in records:
                try:
                    self.sink.write([record])
                except RecordsRejected:
                    logger.exception("record %s refused by %s; quarantined in %s", record.request_id,
                                     self.sink.name, self._spool.directory / "rejected")
                    self._spool.quarantine([record])
                    self.counts[self.keys.rejected] += 1
                    rejected += 1
        self.counts[self.keys.written] += len(records) - rejected

    def failed(self, exc: Exception) -> None:
        """Count an outage; log it once per outage (with the traceback if the sink broke its contract)."""
        self.counts[self.keys.failures] += 1
        if self.healthy:
            logger.warning("%s unavailable; records stay in the spool %s: %s", self.sink.name, self._spool.directory,
                           exc, exc_info=not isinstance(exc, SinkError))
        self.healthy = False

    def replay(self, older_than_s: float | None = None) -> None:
        """Write every segment on disk this sink has not stored, oldest first; healthy again once all went in.

        ``older_than_s``: only segments at least that old — adopting those a removed bridge left on a shared spool.
        """
        adopted = 0
        for segment in self._spool.replayable(older_than_s):
            offset = self._recorder.stored_to(segment, self)
            if offset >= self._spool.length(segment):
                continue
            try:
                records, end = self._spool.load(segment, offset)
            except FileNotFoundError:
                continue  # written by the normal path, or by another bridge process sharing the spool
            try:
                self.write(records)
            except Exception as exc:  # noqa: BLE001
                self.failed(exc)
                return
            # Counted before the segment is marked stored (which may delete it): whoever sees it gone sees the count.
            self.counts[self.keys.replayed] += len(records)
            adopted += len(records)
            self._recorder.segment_stored(segment, self, end)
        if older_than_s is not None and adopted:
            logger.info("%s: adopted %d records a stopped bridge left in %s", self.sink.name, adopted,
                        self._spool.directory)
        if not self.healthy:
            logger.info("%s is back; spool replayed", self.sink.name)
        self.healthy = True


class _BestEffortLane(_Lane):
    """A bounded buffer → the sink; the oldest records are dropped (and counted) when it is full."""

    unavailable = "unavailable (buffering)"

    def __init__(self, sink: Sink, retry_interval_s: float) -> None:
        super().__init__(sink, retry_interval_s)
        self._buffer: collections.deque[InferenceRecord] = collections.deque()
        self._lock = threading.Lock()
        self._filled = threading.Event()  # set when the buffer gains records (or to stop): no polling timer

    def stop(self) -> None:
        """Wake the thread to finish."""
        super().stop()
        self._filled.set()

    def _counters(self) -> tuple[str, ...]:
        return *super()._counters(), self.keys.dropped

    def health(self) -> dict[str, object]:
        """The sink's health entry and its buffer's fill."""
        return {**super().health(), self.keys.buffered: len(self._buffer)}

    def idle(self) -> bool:
        """Nothing buffered or in flight."""
        with self._lock:
            return not self._buffer and not self.busy

    def offer(self, record: InferenceRecord) -> None:
        """Buffer one record, dropping the oldest beyond the bound."""
        with self._lock:
            if len(self._buffer) >= self.sink.buffer_limit:
                self._buffer.popleft()
                self.counts[self.keys.dropped] += 1
            self._buffer.append(record)
        if not self._filled.is_set():  # set() takes the event's lock; most offers find it set already
            self._filled.set()

    def loop(self) -> None:
        """Write the buffer in batches; after a failure wait the retry interval."""
        while not self.stopping.is_set():
            with self._lock:
                if not self._buffer:
                    self._filled.clear()
            if not self._filled.is_set():
                self._filled.wait()
                continue
            # At most one write per coalesce_s: the records that follow the first share its write.
            self.stopping.wait(self.sink.coalesce_s)
            with self._lock:
                batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), self.sink.batch_limit))]
                self.busy = bool(batch)
            if not batch:
                continue
            self.write(batch)
            self.busy = False
            if not self.healthy:
                self.stopping.wait(self._retry_interval_s)

    def write(self, batch: list[InferenceRecord]) -> None:
        """One try; on an outage the batch goes back to the buffer's front, within the bound."""
        try:
            self.sink.write(batch)
            self.counts[self.keys.written] += len(batch)
            if not self.healthy:
                logger.info("%s is back", self.sink.name)
            self.healthy = True
        except RecordsRejected as exc:
            self.counts[self.keys.rejected] += len(batch)
            logger.warning("%s rejected %d records (dropped): %s", self.sink.name, len(batch), exc)
        except Exception as exc:  # an outage (or a broken sink): put the records back and wait
            self.counts[self.keys.failures] += 1
            if self.healthy:
                logger.warning("%s unavailable, buffering: %s", self.sink.name, exc, exc_info=not isinstance(exc, SinkError))
            self.healthy = False
            with self._lock:
                room = self.sink.buffer_limit - len(self._buffer)
                kept = batch[-room:] if room > 0 else []
                self.counts[self.keys.dropped] += len(batch) - len(kept)
                self._buffer.extendleft(reversed(kept))

    def flush(self) -> None:
        """At shutdown: one last write; what remains is dropped and counted."""
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
        if batch:
            self.write(batch)
        if self._buffer:
            logger.warning("%s unavailable at shutdown: %d records dropped", self.sink.name, len(self._buffer))
            self.counts[self.keys.dropped] += len(self._buffer)
            self._buffer.clear()


class Recorder:
    """The journal, then each sink by its policy."""

    def __init__(
        self,
        sinks: list[Sink],
        spool: Spool,
        batch_size: int = 500,
        retry_interval_s: float = 2.0,
        adopt_after_s: float | None = None,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique: {names}")
        self.spool = spool
        self._batch_size = batch_size
        self._durable = [
            _DurableLane(self, s, retry_interval_s, adopt_after_s) for s in sinks if s.policy is Policy.DURABLE
        ]
        self._best_effort = [_BestEffortLane(s, retry_interval_s) for s in sinks if s.policy is Policy.BEST_EFFORT]
        self._lanes: list[_Lane] = [*self._durable, *self._best_effort]
        # The journal thread blocks on this queue (None wakes it to stop); what arrives while it fsyncs is the
        # next batch, so many answers share one fsync without any timer.
        self._incoming: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        # segment → durable sink → bytes of it the sink has (this process); every batch before that offset
        self._stored: dict[Path, dict[str, int]] = {}
        self._last_segment: Path | None = None  # the segment the journal appended to last
        self._stored_lock = threading.Lock()
        self._stopping = threading.Event()
        self._settled = 0  # records whose future is resolved (journaled, stored directly, or failed)
        self._journal_thread = threading.Thread(target=self._journal_loop, name="recorder-journal", daemon=True)
        self.counts = {"submitted": 0, "journaled": 0, "journal_failures": 0}

    # --- public ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare each sink, start the journal and one thread per sink (durable ones first replay the spool)."""
        for lane in self._lanes:
            try:
                lane.sink.start()
            except SinkError as exc:  # serving must start even while a sink is down
                logger.warning("%s not reachable at start (%s); records will be %s until it is", lane.sink.name, exc,
                               "spooled" if lane.sink.policy is Policy.DURABLE else "buffered")
        self._journal_thread.start()
        for lane in self._lanes:
            lane.thread.start()

    def submit(self, record: InferenceRecord) -> Future[None]:
        """Queue one record; the future resolves once it is durable (fsync'd), or fails (RecordingFailed)."""
        self.counts["submitted"] += 1
        pending = _Pending(record, Future())
        self._incoming.put(pending)
        for lane in self._best_effort:
            lane.offer(record)
        return pending.durable

    def stop(self, timeout_s: float = 10.0) -> None:
        """Journal what is queued, try the durable sinks once more, flush the others; the rest stays on disk."""
        self._stopping.set()
        self._incoming.put(None)
        for lane in self._lanes:
            lane.stop()
        for thread in (self._journal_thread, *(lane.thread for lane in self._lanes)):
            if thread.is_alive():
                thread.join(timeout_s)
        self._journal_batch(self._drain_incoming(10**9, block=False))
        self._seal()
        for durable in self._durable:
            durable.forget_queued()  # its thread is gone; what it had queued is on disk, for the replay below
            if durable.healthy:
                durable.replay()
        for best_effort in self._best_effort:
            best_effort.flush()
        for lane in self._lanes:
            lane.sink.close()

    def stats(self) -> dict[str, int]:
        """Every counter: the journal's and each sink's."""
        counts = dict(self.counts)
        for lane in self._lanes:
            counts.update(lane.counts)
            counts.update(lane.sink.counts())
        return counts

    def health(self) -> dict[str, object]:
        """What ``/ping`` shows about recording (and the bridge exports as metrics)."""
        segments, spool_bytes = self.spool.measure(self._backlog())
        health: dict[str, object] = {}
        for lane in self._lanes:
            health.update(lane.health())
        return {**health, "queued": self._incoming.qsize(), "spool_segments": segments, "spool_bytes": spool_bytes,
                **self.stats()}

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until everything submitted reached every sink (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            settled = self._settled == self.counts["submitted"]
            if settled and all(lane.idle() for lane in self._lanes) and not self._backlog():
                return True
            time.sleep(0.02)
        return False

    # --- segments shared by the durable sinks ---------------------------------------------------

    def stored_by(self, batch: Batch, lane: _Lane) -> bool:
        """Whether this batch's segment is gone or the batch already in ``lane``'s sink."""
        return self.stored_to(batch.segment, lane) >= batch.end or not batch.segment.exists()

    def stored_to(self, segment: Path, lane: _Lane) -> int:
        """The offset up to which ``lane``'s sink has the segment's records (0: none)."""
        with self._stored_lock:
            return self._stored.get(segment, {}).get(lane.sink.name, 0)

    def segment_stored(self, segment: Path, lane: _Lane, end: int) -> None:
        """``lane``'s sink has the segment up to ``end``; a sealed segment goes once every durable sink has it all."""
        with self._stored_lock:
            have = self._stored.setdefault(segment, {})
            have[lane.sink.name] = max(have.get(lane.sink.name, 0), end)
            self._delete_if_stored(segment)

    def _stored_everywhere(self, segment: Path) -> bool:
        length = self.spool.length(segment)
        have = self._stored.get(segment, {})
        return all(have.get(lane.sink.name, 0) >= length for lane in self._durable)

    def _delete_if_stored(self, segment: Path) -> None:
        # Called with _stored_lock held; the open segment stays until it is sealed (rotation, idle, stop).
        if self.spool.sealed(segment) and self._stored_everywhere(segment):
            self._stored.pop(segment, None)
            self.spool.delete(segment)

    def _after_seal(self, *segments: Path) -> None:
        with self._stored_lock:
            for segment in segments:
                self._delete_if_stored(segment)

    def _seal(self) -> None:
        """Close the open segment (the journal is idle, or stopping); delete it if every durable sink has it."""
        sealed = self.spool.seal()
        if sealed is not None:
            self._after_seal(sealed)

    def _backlog(self) -> list[Path]:
        """Segments on disk some durable sink does not have all of yet (another bridge's included)."""
        with self._stored_lock:
            return [segment for segment in self.spool.segments() if not self._stored_everywhere(segment)]

    # --- journal --------------------------------------------------------------------------------

    def _drain_incoming(self, limit: int, block: bool = True, timeout_s: float | None = None) -> list[_Pending]:
        batch: list[_Pending] = []
        try:
            item = self._incoming.get(timeout=timeout_s) if block else self._incoming.get_nowait()
            while True:
                if item is not None:  # None: the wake-up from stop()
                    batch.append(item)
                if len(batch) >= limit:
                    break
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass
        return batch

    def _journal_loop(self) -> None:
        while not self._stopping.is_set():
            # With a segment open, one wake-up once the journal has been idle for a segment's age: seal it.
            batch = self._drain_incoming(self._batch_size, timeout_s=self.spool.segment_age_s if self.spool.is_open()
                                         else None)
            if batch:
                self._journal_batch(batch)
            else:
                self._seal()

    def _journal_batch(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        records = [p.record for p in batch]
        try:
            appended = self.spool.append(records)
        except OSError as exc:
            self.counts["journal_failures"] += 1
            logger.error("journaling %d records to %s failed: %s", len(records), self.spool.directory, exc)
            self._after_seal(*self.spool.own())  # the spool sealed the segment that failed
            self._store_directly(batch, exc)
        else:
            self.counts["journaled"] += len(records)
            if appended.segment != self._last_segment:
                if self._last_segment is not None:
                    self._after_seal(self._last_segment)  # rotated: the previous segment is sealed
                self._last_segment = appended.segment
            for lane in self._durable:
                lane.segments.put((appended, records))
            for pending in batch:
                pending.durable.set_result(None)
        self._settled += len(batch)

    def _store_directly(self, batch: list[_Pending], journal_error: OSError) -> None:
        """The disk failed: the records are durable only if every durable sink takes them now."""
        records = [p.record for p in batch]
        if not self._durable:  # nowhere else to keep them
            for pending in batch:
                pending.durable.set_exception(RecordingFailed(f"could not record: journal failed ({journal_error})"))
            return
        for lane in self._durable:
            try:
                lane.write(records)
            except Exception as exc:  # noqa: BLE001
                failure = RecordingFailed(
                    f"could not record: journal failed ({journal_error}), {lane.sink.name} failed ({exc})"
                )
                for pending in batch:
                    pending.durable.set_exception(failure)
                return
        for pending in batch:
            pending.durable.set_result(None)
