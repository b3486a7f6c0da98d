"""Fault: every TorchServe worker of resnet18 killed with ``kill -9`` under load (RELIABILITY.md).

Four clients send predictions and one submits a job every 0.3 s through a private bridge; once the load is
being served, every worker of resnet18 (pids from the management API's describe) gets SIGKILL. The batches
they held fail; everything queued meanwhile waits for TorchServe to restart the workers and is then served.

Only here, and only for the requests in flight at the kill, is the "no worker" / worker-failed 503 excused
(``NO_WORKER``); any other failure of any request — a reset, a timeout, another 5xx — fails the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from stack.services.faults import kill9
from tests.reliability.load import (
    NO_WORKER,
    Excuse,
    JobLedger,
    Ledger,
    Load,
    Outcome,
    assert_no_failures,
    assert_nothing_lost,
    first_success_after,
    job_ledger,
    ledger,
    tally,
    unique_photo,
    verdicts,
    wait_jobs,
    wait_until,
)
from tests.reliability.services import FaultStack, predict_once

pytestmark = pytest.mark.reliability

CHECK = "worker kill -9 under load"
# A request whose worker was killed is answered within this long after the kill: it fails at once instead of
# waiting for the restart (which takes several seconds: workers_ready_after_s on the report).
FAIL_FAST_S = 2.0
FLOWING = 4  # predictions served before the kill: the load is really running, so batches are in flight


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

    def excuses(self) -> list[Excuse]:
        """The kill's own failures: the "no worker" 503 for requests sent before every killed worker was gone."""
        return [NO_WORKER.during(0.0, self.kill_end + 1e-6)]


@pytest.fixture(scope="module")
def run(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    fault_stack.ensure_healthy()
    ts = fault_stack.torchserve
    bridge = fault_stack.bridge("worker-kill", job_lease_s=10)
    bridge.start()
    try:
        # duration_s is only a cap: the load stops once the workers are back
        load = Load(bridge.url, base_photo, threads=4, duration_s=150, jobs_every_s=0.3, tag="worker-kill")
        with load:
            wait_until(lambda: load.served() >= FLOWING and load.served("job") >= 1, 60,
                       "the load to be served before the kill", "something is in flight when the workers die")
            killed = ts.worker_pids("resnet18")
            kill_at = load.elapsed()
            for pid in killed:
                kill9(pid)
            kill_end = load.elapsed()
            # Back = READY workers none of which is a killed one (right after the kill describe may still
            # list the dead workers as READY).
            workers_back_s = wait_until(
                lambda: ts.workers_ready("resnet18") and not set(killed) & set(ts.worker_pids("resnet18")), 90,
                "resnet18's workers restarted by TorchServe", "a restart, not a hang, after a worker dies")
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
        failed_latency_max_s=round(max((o.latency_s for o in result.failed()), default=0), 2),
        failed_after_kill_max_s=round(max((o.started_s + o.latency_s - kill_end for o in result.failed()),
                                          default=0), 2),
        outcomes=verdicts(load.outcomes, result.excuses()),
        **jobs.figures(),
    )
    return result


def test_every_request_is_served_or_failed_by_the_kill_itself(run: Run) -> None:
    """No reset, timeout, garbled answer or other 5xx anywhere; the "no worker" 503 only for the kill's batches."""
    assert_no_failures(run.outcomes, run.excuses())


def test_in_flight_requests_fail_fast(run: Run) -> None:
    """Only the batches the killed workers held fail, and they fail at once (no wait for the restart)."""
    failed = run.failed()
    assert failed, "no batch was in flight when the workers were killed (nothing to observe)"
    in_flight = run.in_flight()
    assert all(o in in_flight for o in failed), [o for o in failed if o not in in_flight]
    assert all(o.status is not None and o.status >= 500 for o in failed), [o.label for o in failed]
    after_kill = [round(o.started_s + o.latency_s - run.kill_end, 2) for o in failed]
    assert max(after_kill) < FAIL_FAST_S, (
        f"failures answered {sorted(after_kill)[-3:]} s after the kill: they waited (for the restart?) instead "
        f"of failing fast; the workers were back after {run.workers_back_s:.1f} s")


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
