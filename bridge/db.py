"""The bridge's face of the stack's database layer: a database outage is the bridge's 503."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from bridge.errors import UpstreamUnavailable
from stack.database import Database as StackDatabase
from stack.database import DatabaseUnavailable

T = TypeVar("T")


class Database(StackDatabase):
    """:class:`stack.database.Database` whose calls raise UpstreamUnavailable (503) instead of DatabaseUnavailable."""

    async def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """See :meth:`stack.database.Database.call`."""
        try:
            return await super().call(fn, *args, timeout_s=timeout_s)
        except DatabaseUnavailable as exc:
            message = f"{exc.message}; retry (with the same Idempotency-Key for jobs)" if exc.timed_out else exc.message
            raise UpstreamUnavailable(message) from exc
