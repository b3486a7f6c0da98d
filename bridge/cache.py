"""The results cache: the same photo (sha256) for the same model version gets its recorded answer back.

Lookups go to the inference record in PostgreSQL through the database layer, under their own short deadline
and at most ``max_in_flight`` at once: a slow or frozen database turns a lookup into a miss, never into a
slower prediction, and stuck lookups never take more than their share of the layer's threads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from stack.database import Database

logger = logging.getLogger(__name__)

LOOKUP_SQL = (
    "SELECT output FROM inferences WHERE input_sha256 = %s AND model = %s AND model_version = %s"
    " AND status = 200 AND output IS NOT NULL AND shadow_of IS NULL ORDER BY created_at DESC LIMIT 1"
)


class ResultCache:
    """``lookup()`` returns the recorded output or None (miss, disabled, or the database too slow)."""

    def __init__(self, db: Database, timeout_s: float = 0.05, max_in_flight: int = 2) -> None:
        self._db = db
        self._timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self.hits = 0
        self.misses = 0

    def _lookup(self, sha256: str, model: str, version: str) -> Any:
        try:
            with self._db.connection() as conn, conn.cursor() as cur:
                cur.execute(LOOKUP_SQL, (sha256, model, version))
                row = cur.fetchone()
                return row[0] if row else None
        finally:
            self._slots.release()  # only once the query really ended, not at the deadline

    async def lookup(self, sha256: str, model: str, version: str) -> Any:
        """The recorded output of this photo on this model version, if any."""
        if not self._slots.acquire(blocking=False):
            self.misses += 1
            return None  # lookups are stuck (database frozen?): do not queue behind them
        try:
            output = await self._db.call(self._lookup, sha256, model, version, timeout_s=self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - timeouts and database errors are misses
            logger.debug("cache lookup skipped: %r", exc)
            output = None
        if output is None:
            self.misses += 1
        else:
            self.hits += 1
        return output
