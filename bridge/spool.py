"""The recorder's durable journal: batches of records fsync'd to disk until every durable sink has them.

The directory may be shared by several bridges (a volume): segment names are unique per writer.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

from stack.database import InferenceRecord


class Spool:
    """Append-only segment files (one JSON record per line); a segment is deleted once replayed."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sequence = 0
        # Bridges in containers are all pid 1 or so: a random writer id keeps names unique on a shared volume.
        self._writer = f"{os.getpid()}-{secrets.token_hex(4)}"

    def append(self, records: list[InferenceRecord]) -> Path:
        """Write ``records`` as a new segment and fsync it (and the directory) before returning its path."""
        with self._lock:
            self._sequence += 1
            name = f"{time.time_ns():020d}-{self._writer}-{self._sequence:06d}.jsonl"
        tmp = self.directory / f".{name}.partial"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(r.to_json() for r in records) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / name)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.directory / name

    def quarantine(self, records: list[InferenceRecord]) -> None:
        """Keep records a durable sink refused on their merits in ``rejected/`` for a human to look at."""
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        with open(rejected / "records.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(r.to_json() + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def segments(self, older_than_s: float | None = None) -> list[Path]:
        """Complete segments, oldest first (``older_than_s``: only those written at least that long ago)."""
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

    @staticmethod
    def read(segment: Path) -> list[InferenceRecord]:
        """The records of one segment (a torn last line, from a crash mid-write, is skipped)."""
        records = []
        for line in segment.read_text(encoding="utf-8").splitlines():
            try:
                records.append(InferenceRecord.from_json(line))
            except (ValueError, TypeError):
                continue
        return records

    def backlog(self) -> tuple[int, int]:
        """(segments, bytes) waiting to be replayed."""
        segments = self.segments()
        return len(segments), sum(p.stat().st_size for p in segments if p.exists())
