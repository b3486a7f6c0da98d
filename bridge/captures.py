"""Capture: a sampled fraction of the photos sent, kept on disk for ``servingctl replay`` (docs/replay.md).

Off by default (``capture_fraction`` 0). What is kept is the photo's bytes and nothing else — no header, no
key, no parameter, no client — under their sha256 (stack.captures), for ``capture_retention_s`` after the photo
was last sent, in at most ``capture_budget_bytes``.

Nothing here can hold a request: :meth:`CaptureStore.offer` samples and queues in memory; one background thread
writes (to a temporary file, then renamed) and sweeps about every minute. A full queue, or a directory at its
budget, skips the photo (counted). Usage is tracked per write and measured again by each sweep, which also
counts what other bridges sharing the directory wrote.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stack.captures import TEMP_PREFIX, capture_path, is_digest

logger = logging.getLogger(__name__)

QUEUE_PHOTOS = 64  # photos waiting for the writer
QUEUE_BYTES = 64 * 2**20  # and at most this many of their bytes held in memory
SWEEP_INTERVAL_S = 60.0
TEMP_MAX_AGE_S = 600.0  # a temporary file older than this was left by a writer that died: deleted


@dataclass(frozen=True)
class _Photo:
    digest: str
    body: bytes


_STOP = _Photo("", b"")


class CaptureStore:
    """Sampled photos on disk by content hash; ``offer()`` never waits, the writer thread does the I/O."""

    def __init__(self, directory: Path, fraction: float, budget_bytes: int, retention_s: float,
                 queue_photos: int = QUEUE_PHOTOS, queue_bytes: int = QUEUE_BYTES,
                 sweep_interval_s: float = SWEEP_INTERVAL_S, sample: random.Random | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the capture fraction must be in [0, 1], got {fraction}")
        self.directory = directory
        self.fraction = fraction
        self.budget_bytes = budget_bytes
        self.retention_s = retention_s
        self._queue: queue.Queue[_Photo] = queue.Queue(maxsize=queue_photos)
        self._queue_bytes = queue_bytes
        self._queued_bytes = 0
        self._sweep_interval_s = sweep_interval_s
        self._random = sample or random.Random()
        self._lock = threading.Lock()  # the counters: the event loop offers, the writer writes
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.used_bytes = 0
        self.captured = self.skipped_budget = self.skipped_busy = self.errors = 0

    @property
    def enabled(self) -> bool:
        """Whether any photo is captured at all."""
        return self.fraction > 0.0

    def start(self) -> None:
        """Start the writer (which first measures the directory); nothing happens when capture is off."""
        if not self.enabled or self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="captures", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``), then stop the writer."""
        if self._thread is None:
            return
        self._stopping.set()
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass  # the writer stops once the queue is empty
        self._thread.join(timeout_s)
        self._thread = None

    def offer(self, digest: str, body: bytes) -> bool:
        """Capture ``body`` (whose sha256 is ``digest``) if sampled and there is room; never blocks, never raises."""
        if not self.enabled or self._random.random() >= self.fraction or not body or not is_digest(digest):
            return False
        with self._lock:
            if self.used_bytes + len(body) > self.budget_bytes:
                self.skipped_budget += 1
                return False
            if self._queued_bytes + len(body) > self._queue_bytes:
                self.skipped_busy += 1
                return False
            try:
                self._queue.put_nowait(_Photo(digest, body))
            except queue.Full:
                self.skipped_busy += 1
                return False
            self._queued_bytes += len(body)
        return True

    def stats(self) -> dict[str, int]:
        """Counters for the bridge's metrics."""
        with self._lock:
            return {"capture_captured": self.captured, "capture_skipped_budget": self.skipped_budget,
                    "capture_skipped_busy": self.skipped_busy, "capture_errors": self.errors,
                    "capture_bytes": self.used_bytes, "capture_queued": self._queue.qsize()}

    # --- the writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_sweep = 0.0  # at once: the directory may hold photos already
        while True:
            if time.monotonic() >= next_sweep:
                self._sweep_safely()
                next_sweep = time.monotonic() + self._sweep_interval_s
            if self._stopping.is_set() and self._queue.empty():
                return
            try:
                photo = self._queue.get(timeout=max(0.0, next_sweep - time.monotonic()))
            except queue.Empty:
                continue
            if photo is _STOP:
                return
            with self._lock:
                self._queued_bytes -= len(photo.body)
            self.write(photo.digest, photo.body)

    def write(self, digest: str, body: bytes) -> bool:
        """Keep ``body`` under its hash (the writer thread's work; tests call it directly). True when it is kept.

        A photo already there is not written again; its time is refreshed, so that retention counts from the
        last time it was sent.
        """
        path = capture_path(self.directory, digest)
        temp = path.with_name(f"{TEMP_PREFIX}{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            if path.exists():
                os.utime(path)
                with self._lock:
                    self.captured += 1
                return True
            with self._lock:
                if self.used_bytes + len(body) > self.budget_bytes:
                    self.skipped_budget += 1
                    return False
            path.parent.mkdir(parents=True, exist_ok=True)
            with temp.open("wb") as out:
                out.write(body)
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            with self._lock:
                self.errors += 1
            logger.warning("capturing a photo in %s failed: %s", self.directory, exc)
            return False
        with self._lock:
            self.used_bytes += len(body)
            self.captured += 1
        return True

    def _sweep_safely(self) -> None:
        try:
            self.sweep()
        except OSError as exc:
            with self._lock:
                self.errors += 1
            logger.warning("sweeping the capture directory %s failed: %s", self.directory, exc)

    def sweep(self, now: float | None = None) -> int:
        """Delete photos older than the retention period (and abandoned temporary files), measure what stays.

        Returns how many files were deleted.
        """
        now = time.time() if now is None else now
        deleted = kept_bytes = 0
        if not self.directory.is_dir():
            with self._lock:
                self.used_bytes = 0
            return 0
        with os.scandir(self.directory) as shards:
            for shard in [s.path for s in shards if s.is_dir(follow_symlinks=False)]:
                with os.scandir(shard) as entries:
                    for entry in entries:
                        try:
                            info = entry.stat(follow_symlinks=False)
                            limit = TEMP_MAX_AGE_S if entry.name.startswith(TEMP_PREFIX) else self.retention_s
                            if now - info.st_mtime > limit:
                                os.unlink(entry.path)
                                deleted += 1
                            else:
                                kept_bytes += info.st_size
                        except FileNotFoundError:
                            continue  # another bridge's sweep was first
        with self._lock:
            self.used_bytes = kept_bytes
        return deleted
