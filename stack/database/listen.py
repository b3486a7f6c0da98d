"""PostgreSQL LISTEN on one dedicated connection, read by the event loop (``loop.add_reader``): no polling.

Several processes sharing a queue in PostgreSQL wake each other with ``NOTIFY <channel>`` (sent in the
transaction that makes work available, delivered at its commit). A dropped connection is reopened after a
pause, and the callback is called then too: notifications sent meanwhile were lost, so the listener assumes
there is work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

logger = logging.getLogger(__name__)


class Listener:
    """Calls ``on_notify()`` on the event loop whenever ``channel`` is notified (or the connection was reopened)."""

    def __init__(
        self, dsn: str, channel: str, on_notify: Callable[[], None], connect_timeout_s: int = 3,
        retry_s: float = 2.0, application_name: str = "serving-listener",
    ) -> None:
        if not channel.isidentifier():
            raise ValueError(f"not a channel name: {channel!r}")
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._connect_args: dict[str, Any] = {
            "connect_timeout": connect_timeout_s, "application_name": application_name,
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
        }
        self._retry_s = retry_s
        self._conn: psycopg2.extensions.connection | None = None
        self._fd: int | None = None  # the socket the event loop watches, as registered
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Connect and LISTEN in the background (retried until it works)."""
        self._task = asyncio.create_task(self._keep_listening(), name=f"listen-{self._channel}")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop()

    def _connect(self) -> psycopg2.extensions.connection:
        conn = psycopg2.connect(self._dsn, **self._connect_args)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {self._channel}")
        return conn

    async def _keep_listening(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while True:
            try:
                conn = await asyncio.to_thread(self._connect)
            except psycopg2.Error as exc:
                logger.warning("LISTEN %s: cannot connect (%s); retrying in %.0f s", self._channel,
                               str(exc).strip().splitlines()[0] if str(exc).strip() else exc, self._retry_s)
                await asyncio.sleep(self._retry_s)
                continue
            self._conn = conn
            self._lost.clear()
            self._fd = conn.fileno()
            loop.add_reader(self._fd, self._readable)
            self.connected.set()
            if not first:
                self._on_notify()  # notifications sent while the connection was down are lost: look anyway
            first = False
            try:
                await self._lost.wait()
            finally:
                self.connected.clear()
                self._drop()
            await asyncio.sleep(self._retry_s)

    def _readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.poll()
        except psycopg2.Error as exc:
            # libpq has closed the socket already: stop watching its number *now*, before the loop accepts a
            # connection that reuses it (a stale watcher would swallow that client's request).
            self._unwatch()
            logger.warning("LISTEN %s: connection lost (%s); reconnecting", self._channel, exc)
            self._lost.set()
            return
        if conn.notifies:
            conn.notifies.clear()
            self._on_notify()

    def _unwatch(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)

    def _drop(self) -> None:
        self._unwatch()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
