"""The results cache: the same photo (sha256) for the same model version gets its recorded answer back.

Lookups go to the inference record in PostgreSQL, bounded in time and in concurrency (their own two
threads): a slow or frozen database turns a lookup into a miss, never into a slower prediction.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bridge.db import Database

logger = logging.getLogger(__name__)

LOOKUP_SQL = (
    "SELECT output FROM inferences WHERE input_sha256 = %s AND model = %s AND model_version = %s"
    " AND status = 200 AND output IS NOT NULL ORDER BY created_at DESC LIMIT 1"
)


class ResultCache:
    """``lookup()`` returns the recorded output or None (miss, disabled, or the database too slow)."""

    def __init__(self, db: Database, timeout_s: float = 0.05, max_in_flight: int = 2) -> None:
        self._db = db
        self._timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._executor = ThreadPoolExecutor(max_in_flight, thread_name_prefix="result-cache")
        self.hits = 0
        self.misses = 0

    def _query(self, sha256: str, model: str, version: str) -> Any:
        try:
            with self._db.connection() as conn, conn.cursor() as cur:
                cur.execute(LOOKUP_SQL, (sha256, model, version))
                row = cur.fetchone()
                return row[0] if row else None
        finally:
            self._slots.release()

    async def lookup(self, sha256: str, model: str, version: str) -> Any:
        """The recorded output of this photo on this model version, if any."""
        if not self._slots.acquire(blocking=False):
            self.misses += 1
            return None  # lookups are stuck (database frozen?): do not queue behind them
        future = asyncio.wrap_future(self._executor.submit(self._query, sha256, model, version))
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # read late failures: no log noise
        try:
            output = await asyncio.wait_for(asyncio.shield(future), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - timeouts and database errors are misses
            logger.debug("cache lookup skipped: %r", exc)
            output = None
        if output is None:
            self.misses += 1
        else:
            self.hits += 1
        return output

    def close(self) -> None:
        """Stop the lookup threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
