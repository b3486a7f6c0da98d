"""The database layer: pooled PostgreSQL connections, calls on their own threads under a deadline.

A frozen PostgreSQL still accepts TCP, so no socket timeout fires; :meth:`Database.call` (async) and
:meth:`Database.run` (sync) give up after a deadline instead, and every outage — refused, dropped, timed
out — is one exception, :class:`DatabaseUnavailable`, that each component maps to its own error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.pool

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """PostgreSQL is unreachable, dropped the connection, or did not answer before the deadline."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out


class Database:
    """Connections on demand (at most ``max_connections``, as many threads), outages as DatabaseUnavailable."""

    def __init__(
        self,
        dsn: str,
        connect_timeout_s: int = 3,
        max_connections: int = 8,
        statement_timeout_ms: int = 10000,
        call_timeout_s: float = 10.0,
        application_name: str = "serving-bridge",
    ) -> None:
        self.dsn = dsn
        self._call_timeout_s = call_timeout_s
        self._connect_args: dict[str, Any] = {
            "connect_timeout": connect_timeout_s,
            "application_name": application_name,
            "options": f"-c statement_timeout={statement_timeout_ms}",
            # A peer that vanished (host down, SIGSTOP) is noticed in ~10 s instead of the kernel's hours.
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
        }
        self._max_connections = max_connections
        self._executor = ThreadPoolExecutor(max_connections, thread_name_prefix="database")
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._pool_lock = threading.Lock()

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = psycopg2.pool.ThreadedConnectionPool(0, self._max_connections, self.dsn, **self._connect_args)
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A pooled connection inside a transaction (committed on success, rolled back on error).

        Outages raise DatabaseUnavailable; any other psycopg2 error (a constraint, bad data) passes through.
        """
        try:
            pool = self._get_pool()
            conn = pool.getconn()
        except psycopg2.Error as exc:
            raise DatabaseUnavailable("the database (PostgreSQL) is unavailable; retry shortly") from exc
        broken = False
        try:
            with conn:
                yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DatabaseUnavailable("the database (PostgreSQL) is unavailable; retry shortly") from exc
        finally:
            if not pool.closed:
                pool.putconn(conn, close=broken or conn.closed != 0)

    async def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """Run a blocking database function on the layer's threads, giving up after the deadline.

        A call that timed out may still complete later (e.g. a job stored once PostgreSQL wakes up):
        DatabaseUnavailable(timed_out=True) means "unknown", which is what idempotent retries are for.
        """
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        future.add_done_callback(_retrieve)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s or self._call_timeout_s)
        except TimeoutError as exc:
            raise _timed_out() from exc

    async def transaction(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """``fn(conn, *args)`` in one transaction on the layer's threads, under the deadline of :meth:`call`."""
        return await self.call(self._in_transaction, fn, *args, timeout_s=timeout_s)

    def run(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """The synchronous face of :meth:`call` (command-line tools)."""
        future = self._executor.submit(fn, *args)
        try:
            return future.result(timeout_s or self._call_timeout_s)
        except concurrent.futures.TimeoutError as exc:
            raise _timed_out() from exc

    def run_transaction(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """The synchronous face of :meth:`transaction`."""
        return self.run(self._in_transaction, fn, *args, timeout_s=timeout_s)

    def _in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        with self.connection() as conn:
            return fn(conn, *args)

    def close(self) -> None:
        """Stop the threads and close every pooled connection."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._pool_lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None


def _timed_out() -> DatabaseUnavailable:
    return DatabaseUnavailable("the database (PostgreSQL) did not answer in time", timed_out=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A call abandoned at its deadline may fail later: read its outcome so asyncio does not log it.
    if not future.cancelled():
        future.exception()
