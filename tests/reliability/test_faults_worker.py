"""Fault: every TorchServe worker of resnet18 killed with ``kill -9`` under load (RELIABILITY.md).

Four clients send predictions and one submits a job every 0.3 s for 12 s through a private bridge; 3 s in,
both workers of resnet18 (pids from the management API's describe) get SIGKILL. The batches they held
fail; everything queued meanwhile waits for TorchServe to restart the workers and is then served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from stack.services import wait_for
from stack.services.faults import kill9
from tests.reliability.load import (
    JobLedger,
    Ledger,
    Load,
    Outcome,
    assert_nothing_lost,
    first_success_after,
    job_ledger,
    ledger,
    tally,
    unique_photo,
    wait_jobs,
)
from tests.reliability.services import FaultStack, predict_once

pytestmark = pytest.mark.reliability

CHECK = "worker kill -9 under load"
FAIL_FAST_S = 2.0


@dataclass
class Run:
    outcomes: list[Outcome]
    killed: list[int]
    kill_at: float  # load time the kills began
    kill_end: float  # load time every killed worker was gone
    workers_back_s: float
    next_status: int
    book: Ledger
    jobs: JobLedger
    job_results: dict[str, dict[str, Any]]

    def in_flight(self) -> list[Outcome]:
        """Predictions sent before the kill and answered after it."""
        return [o for o in self.outcomes
                if o.kind == "predict" and o.started_s <= self.kill_end and o.started_s + o.latency_s >= self.kill_at]

    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "predict" and not o.acknowledged]


@pytest.fixture(scope="module")
def run(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    fault_stack.ensure_healthy()
    ts = fault_stack.torchserve
    bridge = fault_stack.bridge("worker-kill", job_lease_s=10)
    bridge.start()
    try:
        load = Load(bridge.url, base_photo, threads=4, duration_s=12, jobs_every_s=0.3, tag="worker-kill")
        with load:
            time.sleep(3)
            killed = ts.worker_pids("resnet18")
            kill_at = load.elapsed()
            for pid in killed:
                kill9(pid)
            kill_end = load.elapsed()
            began = time.monotonic()
            time.sleep(0.5)  # TorchServe notices the deaths first
            wait_for(lambda: ts.workers_ready("resnet18"), 90, "resnet18's workers to restart", ts.log_file)
            workers_back_s = time.monotonic() - began
        next_status = predict_once(bridge.url, "resnet18", unique_photo(base_photo, 0, "after-restart")).status_code
        results = wait_jobs(bridge.url, load.outcomes, timeout_s=120)
        bridge.wait_recorded()
        book = ledger(fault_stack.postgres.query, load.outcomes)
        jobs = job_ledger(fault_stack.postgres.query, load.outcomes, results, ["resnet18"])
    finally:
        bridge.stop()
    result = Run(load.outcomes, killed, kill_at, kill_end, workers_back_s, next_status, book, jobs, results)
    reliability_report.record(
        __name__, CHECK,
        **tally(load.outcomes), **book.figures(),
        recovery_s=first_success_after(load.outcomes, kill_at),
        workers_killed=len(killed), workers_ready_after_s=round(workers_back_s, 2),
        in_flight_failed=len([o for o in result.in_flight() if not o.acknowledged]),
        retry_after_on_failures=sum(o.retry_after is not None for o in result.failed()),
        **jobs.figures(),
    )
    return result


def test_in_flight_requests_fail_fast(run: Run) -> None:
    """Only the batches the killed workers held fail, and they fail at once (no wait for the restart)."""
    failed = run.failed()
    assert failed, "no batch was in flight when the workers were killed (nothing to observe)"
    in_flight = run.in_flight()
    assert all(o in in_flight for o in failed), [o for o in failed if o not in in_flight]
    assert all(o.status is not None and o.status >= 500 for o in failed), [o.label for o in failed]
    assert max(o.latency_s for o in failed) < FAIL_FAST_S


def test_in_flight_failures_are_503_with_retry_after(run: Run) -> None:
    failed = run.failed()
    assert failed
    assert [(o.status, o.retry_after) for o in failed] == [(503, "1")] * len(failed), [
        (o.status, o.retry_after, o.body[:80]) for o in failed
    ]


def test_requests_queued_during_the_restart_are_served_and_the_next_one_succeeds(run: Run) -> None:
    after_kill = [o for o in run.outcomes if o.kind == "predict" and o.started_s > run.kill_end]
    assert after_kill and all(o.acknowledged for o in after_kill), [o.label for o in after_kill if not o.acknowledged]
    assert run.next_status == 200


def test_jobs_submitted_during_the_kill_all_succeed_once(run: Run) -> None:
    assert run.jobs.accepted > 0
    assert run.jobs.states == {"succeeded": run.jobs.accepted}, run.jobs
    assert run.jobs.lost == 0 and run.jobs.duplicated == 0, run.jobs
    results = [job["results"]["resnet18"]["status"] for job in run.job_results.values()]
    assert results == [200] * len(results), "a job's final answer is the retried inference, not the outage"


def test_no_acknowledged_prediction_lost_or_duplicated(run: Run) -> None:
    assert_nothing_lost(run.book)
    failed_with_id = [o for o in run.failed() if o.request_id]
    assert run.book.recorded_unacknowledged == len(failed_with_id), "every failed inference is recorded too"
