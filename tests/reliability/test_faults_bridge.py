"""Fault: the bridge killed with ``kill -9`` mid-load, then restarted (RELIABILITY.md).

* Under load: three clients predict and one submits a job every 0.25 s; 4 s in the bridge gets SIGKILL
  and is started again on the same port and spool. Every job that got a 202 must reach a terminal state
  (jobs the dead bridge held are claimed again when their 5 s lease runs out), each job's answer recorded
  exactly once, and every prediction that got a 200 must be in PostgreSQL. So that a job is surely held
  by the bridge when it dies, one job asks for model ``slow`` (6 s) just before the kill.
* With a backlog: PostgreSQL is stopped first, so acknowledged predictions exist only in the spool
  (fsync'd) when the bridge is killed; after PostgreSQL and the bridge are back, the new bridge replays
  exactly what the dead one journaled.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from bridge.jobs import model_request_id
from bridge.spool import Spool
from stack.services import wait_for
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
    wait_until,
)
from tests.reliability.services import FaultStack, PrivateBridge

pytestmark = pytest.mark.reliability

CHECK = "bridge kill -9 mid-load, then restart"
LEASE_S = 5


def spooled(bridge: PrivateBridge) -> tuple[int, int]:
    """(segments, records) in the bridge's spool right now."""
    spool = Spool(bridge.spool_dir)
    segments = spool.segments()
    return len(segments), sum(len(spool.read(s)) for s in segments if s.exists())


@dataclass
class Run:
    outcomes: list[Outcome]
    kill_at: float
    back_at: float
    spool_at_kill: tuple[int, int]
    replayed: int
    book: Ledger
    jobs: JobLedger | None = None
    job_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: dict[str, Any] = field(default_factory=dict)  # the slow job running when the bridge died
    held_rows: int = 0


@pytest.fixture(scope="module")
def under_load(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    fault_stack.ensure_healthy()
    bridge = fault_stack.bridge("bridge-kill", job_lease_s=LEASE_S)
    bridge.start()
    try:
        load = Load(bridge.url, base_photo, threads=3, duration_s=14, jobs_every_s=0.25, tag="bridge-kill")
        with load:
            wait_until(lambda: load.served() >= 6 and load.served("job") >= 2, 60, "the load served before the kill",
                       "predictions and jobs are flowing when the bridge dies")
            held = requests.post(f"{bridge.url}/v1/jobs", params={"models": "slow"},
                                 data=unique_photo(base_photo, 0, "held-job"), timeout=30).json()
            wait_for(lambda: requests.get(f"{bridge.url}/v1/jobs/{held['id']}", timeout=10).json()["status"]
                     == "running", 10, "the slow job to be claimed")
            kill_at = load.elapsed()
            bridge.kill9()
            at_kill = spooled(bridge)
            bridge.start()
            back_at = load.elapsed()
            time.sleep(max(0.0, load.duration_s - load.elapsed()))  # the rest of the load, against the new bridge
        results = wait_jobs(bridge.url, load.outcomes, timeout_s=120)
        held = wait_jobs(bridge.url, [Outcome("job", 0, 0, 202, None, None, None, "", held["id"])], 120)[held["id"]]
        bridge.wait_recorded()
        replayed = bridge.recording()["replayed"]
        book = ledger(fault_stack.postgres.query, load.outcomes)
        jobs = job_ledger(fault_stack.postgres.query, load.outcomes, results, ["resnet18"])
        held_rows = fault_stack.postgres.query("SELECT count(*) FROM inferences WHERE request_id = %s::uuid",
                                               (model_request_id(held["id"], "slow"),))[0][0]
    finally:
        bridge.stop()
    run = Run(load.outcomes, kill_at, back_at, at_kill, replayed, book, jobs, results, held, held_rows)
    failed = [o for o in load.outcomes if not o.acknowledged]
    reliability_report.record(
        __name__, CHECK, scenario="under load (sync + jobs), restarted at once",
        **tally(load.outcomes), **book.figures(), **jobs.figures(),
        jobs_failed_to_submit=dict(Counter(o.label for o in load.outcomes if o.kind == "job" and not o.acknowledged)),
        failed_outside_restart=sum(not kill_at <= o.started_s + o.latency_s <= back_at + 1 for o in failed),
        restart_s=round(back_at - kill_at, 2), recovery_s=first_success_after(load.outcomes, kill_at),
        spool_at_kill=f"{at_kill[0]} segments / {at_kill[1]} records", replayed=replayed,
        held_job=f"{held.get('status')} after {held.get('attempts')} attempts, {held_rows} row",
    )
    return run


@pytest.fixture(scope="module")
def with_backlog(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    fault_stack.ensure_healthy()
    pg = fault_stack.postgres
    bridge = fault_stack.bridge("bridge-kill-backlog")
    pg.stop("immediate")
    try:
        bridge.start()  # serving starts while PostgreSQL is down
        load = Load(bridge.url, base_photo, threads=3, duration_s=4, tag="bridge-kill-backlog")
        load.start()
        load.join()  # its 4 s; every record stays in the spool
        kill_at = load.elapsed()
        bridge.kill9()
        at_kill = spooled(bridge)
        pg.start()
        began = time.monotonic()
        bridge.start()
        bridge.wait_recorded()
        back_at = kill_at + time.monotonic() - began
        replayed = bridge.recording()["replayed"]
        book = ledger(pg.query, load.outcomes)
    finally:
        bridge.stop()
        fault_stack.ensure_healthy()
    reliability_report.record(
        __name__, CHECK, scenario="with a spool backlog (PostgreSQL down), killed, restarted",
        **tally(load.outcomes), **book.figures(), spool_at_kill=f"{at_kill[0]} segments / {at_kill[1]} records",
        replayed=replayed, recovery_s=round(back_at - kill_at, 2),
    )
    return Run(load.outcomes, kill_at, back_at, at_kill, replayed, book)


def test_every_accepted_job_reaches_a_terminal_state(under_load: Run) -> None:
    jobs = under_load.jobs
    assert jobs is not None and jobs.accepted > 0
    assert jobs.states == {"succeeded": jobs.accepted}, jobs.states


def test_the_job_held_by_the_killed_bridge_is_run_again_and_recorded_once(under_load: Run) -> None:
    held = under_load.held
    assert held["status"] == "succeeded" and held["attempts"] >= 2, held
    assert held["results"]["slow"]["status"] == 200
    assert under_load.held_rows == 1


def test_each_job_result_is_recorded_exactly_once(under_load: Run) -> None:
    jobs = under_load.jobs
    assert jobs is not None
    assert jobs.lost == 0 and jobs.duplicated == 0, jobs
    assert all(job["results"]["resnet18"]["status"] == 200 for job in under_load.job_results.values())


def test_every_acknowledged_prediction_is_in_postgres_once(under_load: Run) -> None:
    assert_nothing_lost(under_load.book)


def test_only_requests_around_the_kill_failed(under_load: Run) -> None:
    failed = [o for o in under_load.outcomes if not o.acknowledged]
    late = [o for o in failed if not under_load.kill_at <= o.started_s + o.latency_s <= under_load.back_at + 1]
    assert late == [], Counter(o.label for o in late)
    after = [o for o in under_load.outcomes if o.started_s > under_load.back_at + 1]
    assert after and all(o.acknowledged for o in after)


def test_the_spool_backlog_is_replayed_exactly(with_backlog: Run) -> None:
    segments, records = with_backlog.spool_at_kill
    acknowledged = with_backlog.book.acknowledged
    assert acknowledged > 0 and segments > 0
    assert records >= acknowledged, "every acknowledged prediction was in the spool when the bridge died"
    assert with_backlog.replayed == records
    assert_nothing_lost(with_backlog.book)
