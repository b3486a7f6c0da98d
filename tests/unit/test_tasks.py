"""Background tasks stop even when a cancellation is swallowed (Python 3.11's wait_for, gh-86296)."""

from __future__ import annotations

import asyncio
import time

from bridge.tasks import cancel_and_wait


def test_a_task_that_swallows_its_first_cancellation_is_stopped_by_the_next() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # what wait_for does when the cancellation meets the awaited call's completion
        await asyncio.sleep(30)  # the loop goes on: a single cancel() + await would wait here for good

    async def scenario() -> float:
        tasks = [asyncio.create_task(stubborn()), asyncio.create_task(asyncio.sleep(30))]
        await asyncio.sleep(0)
        started = time.perf_counter()
        await cancel_and_wait(tasks, every_s=0.1)
        assert all(task.done() for task in tasks)
        return time.perf_counter() - started

    assert asyncio.run(scenario()) < 2.0
