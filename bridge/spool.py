"""The recorder's durable journal: batches of records fsync'd to disk until every durable sink has them.

Group commit: each batch is appended to the writer's one open segment with a single ``fdatasync``; a segment
is sealed (closed) once it reaches ``segment_bytes`` or ``segment_age_s``, or when the journal goes idle, and
deleted once every durable sink has it. A new segment is created under a hidden name, locked, renamed into
place and its directory fsync'd before anything in it is acknowledged. A crash can tear only the last line
of a segment, which :meth:`Spool.read` skips; a failed write or sync seals the segment, so nothing is ever
appended after a torn line.

The directory may be shared by several bridges (a volume): segment names are unique per writer, and the
writer holds an exclusive ``flock`` on its open segment, so another bridge never adopts (and deletes) a
segment that is still being appended to; the lock goes with the process that held it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from stack.database import InferenceRecord

SEGMENT_BYTES = 4 * 1024 * 1024
SEGMENT_AGE_S = 1.0


class Batch(NamedTuple):
    """Where one appended batch lies: its segment and the offset just past its last byte."""

    segment: Path
    end: int


@dataclass
class _Open:
    path: Path
    fd: int
    size: int
    opened_at: float


class Spool:
    """Append-only segment files (one JSON record per line); a segment is deleted once every durable sink has it."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES, segment_age_s: float = SEGMENT_AGE_S) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self._lock = threading.Lock()
        self._sequence = 0
        # Bridges in containers are all pid 1 or so: a random writer id keeps names unique on a shared volume.
        self._writer = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._open: _Open | None = None
        self._written: dict[Path, int] = {}  # this writer's segments still on disk → bytes durably appended

    def append(self, records: list[InferenceRecord]) -> Batch:
        """Append ``records`` to the open segment (a new one if due) and fdatasync them before returning."""
        data = "".join(r.to_json() + "\n" for r in records).encode("utf-8")
        with self._lock:
            current = self._open
            if current is not None and (current.size >= self.segment_bytes
                                        or time.monotonic() - current.opened_at >= self.segment_age_s):
                self._seal_locked()
            current = self._open or self._create_locked()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(current.fd, view):]
                os.fdatasync(current.fd)
            except OSError:
                # Nothing of an unacknowledged batch may be replayed, and nothing appended after a torn line.
                with contextlib.suppress(OSError):
                    os.ftruncate(current.fd, current.size)
                self._seal_locked()
                raise
            current.size += len(data)
            self._written[current.path] = current.size
            return Batch(current.path, current.size)

    def _create_locked(self) -> _Open:
        self._sequence += 1
        name = f"{time.time_ns():020d}-{self._writer}-{self._sequence:06d}.jsonl"
        hidden, path = self.directory / f".{name}.partial", self.directory / name
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            # Locked before it gets a name another bridge lists, so no one adopts a segment still being written.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(hidden, path)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            os.close(fd)
            hidden.unlink(missing_ok=True)
            raise
        self._open = _Open(path, fd, 0, time.monotonic())
        self._written[path] = 0
        return self._open

    def _seal_locked(self) -> Path | None:
        current, self._open = self._open, None
        if current is None:
            return None
        os.close(current.fd)  # releases the lock: from now on the segment is adoptable once old enough
        return current.path

    def seal(self) -> Path | None:
        """Close the open segment (nothing more is appended to it); its path, or None if none was open."""
        with self._lock:
            return self._seal_locked()

    def close(self) -> None:
        """Seal the open segment (at shutdown)."""
        self.seal()

    def is_open(self) -> bool:
        """Whether a segment is open for appending."""
        return self._open is not None

    def written(self, segment: Path) -> int | None:
        """Bytes durably appended to one of this writer's segments (None: not this writer's)."""
        with self._lock:
            return self._written.get(segment)

    def own(self) -> list[Path]:
        """This writer's segments still on disk as far as it knows."""
        with self._lock:
            return list(self._written)

    def sealed(self, segment: Path) -> bool:
        """Whether nothing more will be appended to ``segment`` by this writer."""
        with self._lock:
            return self._open is None or self._open.path != segment

    def delete(self, segment: Path) -> None:
        """Remove a segment every durable sink has (never this writer's open one)."""
        with self._lock:
            if self._open is not None and self._open.path == segment:
                return
            self._written.pop(segment, None)
        segment.unlink(missing_ok=True)

    def quarantine(self, records: list[InferenceRecord]) -> None:
        """Keep records a durable sink refused on their merits in ``rejected/`` for a human to look at."""
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        with open(rejected / "records.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(r.to_json() + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def segments(self, older_than_s: float | None = None) -> list[Path]:
        """Segments on disk, oldest first (``older_than_s``: only those last written at least that long ago)."""
        found = sorted(p for p in self.directory.glob("*.jsonl"))
        if older_than_s is None:
            return found
        cutoff = time.time() - older_than_s
        old = []
        for path in found:
            try:
                if path.stat().st_mtime <= cutoff:
                    old.append(path)
            except FileNotFoundError:
                continue  # stored meanwhile, by its writer or another bridge
        return old

    def replayable(self, older_than_s: float | None = None) -> list[Path]:
        """Segments to replay: this writer's and those no live writer holds open (see :meth:`segments`)."""
        with self._lock:
            own = set(self._written)
        return [p for p in self.segments(older_than_s) if p in own or not _held_by_a_writer(p)]

    def read(self, segment: Path) -> list[InferenceRecord]:
        """The records of one segment (a torn last line, from a crash mid-write, is skipped)."""
        return self.load(segment)[0]

    def load(self, segment: Path, offset: int = 0) -> tuple[list[InferenceRecord], int]:
        """The records of a segment from byte ``offset`` on, and the offset just past what was read.

        Of this writer's segments only the acknowledged bytes are read: never part of a batch being written.
        """
        limit = self.written(segment)
        with open(segment, "rb") as f:
            f.seek(offset)
            data = f.read() if limit is None else f.read(max(0, limit - offset))
        records = []
        for line in data.split(b"\n"):
            try:
                records.append(InferenceRecord.from_json(line.decode("utf-8")))
            except (ValueError, TypeError):  # a torn line (UnicodeDecodeError is a ValueError), or the end
                continue
        return records, offset + len(data)

    def length(self, segment: Path) -> int:
        """Bytes a sink must have stored to have all of ``segment``: acknowledged ones if this writer's."""
        written = self.written(segment)
        if written is not None:
            return written
        try:
            return segment.stat().st_size
        except FileNotFoundError:
            return 0

    def backlog(self) -> tuple[int, int]:
        """(segments, bytes) on disk."""
        return self.measure(self.segments())

    @staticmethod
    def measure(segments: list[Path]) -> tuple[int, int]:
        """(segments, bytes) of ``segments`` still on disk."""
        count = size = 0
        for path in segments:
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                continue
            count += 1
        return count, size


def _held_by_a_writer(segment: Path) -> bool:
    """Whether a live bridge holds ``segment`` open for appending (its lock)."""
    try:
        fd = os.open(segment, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
