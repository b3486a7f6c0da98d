"""The database layer: bounded PostgreSQL connections, calls on their own threads under a deadline.

A frozen PostgreSQL still accepts TCP, so no socket timeout fires; :meth:`Database.call` (async) and
:meth:`Database.run` (sync) give up after a deadline instead, and every outage — refused, dropped, timed
out — is one exception, :class:`DatabaseUnavailable`, that each component maps to its own error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import select
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """PostgreSQL is unreachable, dropped the connection, or did not answer before the deadline."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out

    @property
    def reason(self) -> str:
        """What PostgreSQL or the connection said (first line), for logs; ``message`` is what a client sees."""
        text = "" if self.timed_out or self.__cause__ is None else str(self.__cause__).strip()
        return text.splitlines()[0] if text else self.message


class Database:
    """At most ``max_connections`` connections (and as many threads); outages as DatabaseUnavailable.

    ``keep_idle`` connections are kept open between uses (0: connect for each use). A kept connection is
    checked before it is reused — :meth:`_alive` reads what the server sent meanwhile, without a round trip —
    and replaced by a new one if PostgreSQL closed it (a restart, an idle timeout), so a restart long
    since over costs no failed call.
    """

    def __init__(
        self,
        dsn: str,
        connect_timeout_s: int = 3,
        max_connections: int = 8,
        statement_timeout_ms: int = 10000,
        call_timeout_s: float = 10.0,
        application_name: str = "serving-bridge",
        keep_idle: int = 0,
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
        self._keep_idle = keep_idle
        self._executor = ThreadPoolExecutor(max_connections, thread_name_prefix="database")
        self._idle: list[psycopg2.extensions.connection] = []
        self._in_use = 0
        self._closed = False
        self._lock = threading.Lock()

    def _acquire(self) -> psycopg2.extensions.connection:
        with self._lock:
            if self._closed or self._in_use >= self._max_connections:
                raise DatabaseUnavailable("the database (PostgreSQL) is unavailable; retry shortly")
            self._in_use += 1
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if self._alive(conn):
                return conn
            conn.close()  # PostgreSQL closed it (restarted): the next kept one, or a new one
        try:
            return psycopg2.connect(self.dsn, **self._connect_args)
        except psycopg2.Error as exc:
            with self._lock:
                self._in_use -= 1
            raise DatabaseUnavailable("the database (PostgreSQL) is unavailable; retry shortly") from exc

    @staticmethod
    def _alive(conn: psycopg2.extensions.connection) -> bool:
        """Whether a kept connection looks usable, without a round trip: nothing arrived on it while it was idle.

        A server that ends a session (restart, ``pg_terminate_backend``, idle timeout) sends a FATAL message
        and closes the socket, so it becomes readable; an idle session of ours otherwise receives nothing.
        """
        if conn.closed:
            return False
        readable = select.poll()
        readable.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return not readable.poll(0)

    def _release(self, conn: psycopg2.extensions.connection, broken: bool) -> None:
        with self._lock:
            self._in_use -= 1
            idle = conn.closed == 0 and conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
            if not broken and idle and not self._closed and len(self._idle) < self._keep_idle:
                self._idle.append(conn)
                return
        conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A connection inside a transaction (committed on success, rolled back on error).

        Outages raise DatabaseUnavailable; any other psycopg2 error (a constraint, bad data) passes through.
        """
        conn = self._acquire()
        broken = False
        try:
            with conn:
                yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            broken = True
            raise DatabaseUnavailable("the database (PostgreSQL) is unavailable; retry shortly") from exc
        finally:
            self._release(conn, broken)

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
        """Stop the threads and close the idle connections (those in use close when released)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _timed_out() -> DatabaseUnavailable:
    return DatabaseUnavailable("the database (PostgreSQL) did not answer in time", timed_out=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A call abandoned at its deadline may fail later: read its outcome so asyncio does not log it.
    if not future.cancelled():
        future.exception()
