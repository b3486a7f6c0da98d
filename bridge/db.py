"""A small thread-safe PostgreSQL connection pool for request-time queries (jobs, history, reports).

Calls go through :meth:`Database.call`: their own threads and a deadline, so a frozen PostgreSQL (which
still accepts TCP, so no socket timeout fires) turns into a 503 instead of a hung event loop or request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from bridge.errors import UpstreamUnavailable

T = TypeVar("T")


class Database:
    """Connections on demand (none held while idle beyond the pool), errors mapped to a 503."""

    def __init__(
        self,
        dsn: str,
        connect_timeout_s: int = 3,
        max_connections: int = 8,
        statement_timeout_ms: int = 10000,
        call_timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._call_timeout_s = call_timeout_s
        self._executor = ThreadPoolExecutor(max_connections, thread_name_prefix="database")
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._statement_timeout_ms = statement_timeout_ms
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A pooled connection inside a transaction (committed on success, rolled back on error)."""
        try:
            if self._pool is None:
                self._pool = psycopg2.pool.ThreadedConnectionPool(
                    0, self._max_connections, self._dsn, connect_timeout=self._connect_timeout_s,
                    application_name="serving-bridge", options=f"-c statement_timeout={self._statement_timeout_ms}",
                )
            conn = self._pool.getconn()
        except psycopg2.Error as exc:
            raise UpstreamUnavailable("the database (PostgreSQL) is unavailable; retry shortly") from exc
        broken = False
        try:
            with conn:
                yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise UpstreamUnavailable("the database (PostgreSQL) is unavailable; retry shortly") from exc
        finally:
            self._pool.putconn(conn, close=broken or conn.closed != 0)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking database function in the pool's threads, giving up after the call timeout.

        A call that timed out may still complete later (e.g. a job stored once PostgreSQL wakes up):
        the 503 says "unknown", which is what Idempotency-Key retries are for.
        """
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._call_timeout_s)
        except TimeoutError as exc:
            raise UpstreamUnavailable(
                "the database (PostgreSQL) did not answer in time; retry (with the same Idempotency-Key for jobs)"
            ) from exc

    def close(self) -> None:
        """Close every pooled connection."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            self._pool.closeall()
            self._pool = None
