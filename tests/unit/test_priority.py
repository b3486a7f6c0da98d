"""bridge.priority: interactive requests ahead of batch ones on a saturated model; batch work never stops."""

from __future__ import annotations

import asyncio

import pytest

from bridge.priority import PriorityGate


class Model:
    """A model serving one request at a time in arrival order, as TorchServe's queue does; records the order."""

    def __init__(self, gate: PriorityGate) -> None:
        self.gate = gate
        self.lock = asyncio.Lock()
        self.served: list[str] = []

    async def call(self, name: str, batch: bool) -> None:
        async with self.gate.slot("m", batch), self.lock:
            await asyncio.sleep(0.01)
            self.served.append(name)


async def _jobs_then_interactive(saturation: int) -> list[str]:
    model = Model(PriorityGate(saturation))
    jobs = [asyncio.create_task(model.call(f"job{i}", batch=True)) for i in range(6)]
    await asyncio.sleep(0)  # the jobs arrive first
    clicks = [asyncio.create_task(model.call(f"click{i}", batch=False)) for i in range(3)]
    await asyncio.gather(*jobs, *clicks)
    return model.served


def test_without_priority_interactive_requests_queue_behind_the_jobs() -> None:
    served = asyncio.run(_jobs_then_interactive(saturation=0))
    assert served[:6] == [f"job{i}" for i in range(6)]


def test_on_a_saturated_model_interactive_requests_overtake_waiting_jobs() -> None:
    served = asyncio.run(_jobs_then_interactive(saturation=2))
    # Two jobs were in flight before any click arrived; the clicks go next, then the remaining jobs in order.
    assert served[:2] == ["job0", "job1"]
    assert sorted(served[2:5]) == ["click0", "click1", "click2"]
    assert served[5:] == ["job2", "job3", "job4", "job5"]


def test_one_batch_request_per_model_always_runs_so_jobs_never_starve() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(1)
        model = Model(gate)
        stop = asyncio.Event()

        async def clicks() -> None:  # interactive load that alone keeps the model saturated
            while not stop.is_set():
                await asyncio.gather(*(model.call("click", batch=False) for _ in range(3)))

        load = asyncio.create_task(clicks())
        await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*(model.call(f"job{i}", batch=True) for i in range(3))), 5)
        stop.set()
        await load
        assert gate.batch_waits >= 2 and gate.stats()["batch_wait_s"] > 0
        return model.served

    served = asyncio.run(scenario())
    assert [s for s in served if s.startswith("job")] == ["job0", "job1", "job2"]


def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_runs() -> None:
    async def scenario() -> None:
        gate = PriorityGate(1)
        release = asyncio.Event()

        async def hold(batch: bool) -> None:
            async with gate.slot("m", batch):
                await release.wait()

        holders = [asyncio.create_task(hold(False)), asyncio.create_task(hold(True))]
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(hold(True))
        waiting = asyncio.create_task(hold(True))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        release.set()
        await asyncio.wait_for(asyncio.gather(*holders, waiting), 2)

    asyncio.run(scenario())
