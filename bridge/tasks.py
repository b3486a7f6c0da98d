"""Stopping the bridge's background tasks for sure.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as the awaited call completes
(gh-86296, fixed in 3.12): a loop cancelled at that moment goes on, and ``await task`` after ``task.cancel()``
never returns — a shutdown that hangs. Cancelling again until the tasks are done ends them whatever they awaited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], every_s: float = 0.5) -> None:
    """Cancel ``tasks``, and again every ``every_s`` until each is done; their outcomes are not raised."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every_s)
