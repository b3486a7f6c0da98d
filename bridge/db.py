"""A small thread-safe PostgreSQL connection pool for request-time queries (jobs, history, reports)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from bridge.errors import UpstreamUnavailable


class Database:
    """Connections on demand (none held while idle beyond the pool), errors mapped to a 503."""

    def __init__(self, dsn: str, connect_timeout_s: int = 3, max_connections: int = 8, statement_timeout_ms: int = 10000) -> None:
        self._dsn = dsn
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

    def close(self) -> None:
        """Close every pooled connection."""
        if self._pool is not None:
            self._pool.closeall()
            self._pool = None
