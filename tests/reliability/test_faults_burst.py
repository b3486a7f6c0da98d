"""Fault: a burst beyond the queue (RELIABILITY.md) — the overflow gets a quick 503, everyone else is served.

Model ``burst`` (slow_handler.py, 0.25 s per request, batch 1, one worker) has ``jobQueueSize: 4`` in its
model-config.yaml, so TorchServe holds at most 4 waiting requests for it. 40 clients released together
through the bridge: about 1 + 4 (+1 for each slot freed while the burst arrives) are served, the rest must
be refused at once with 503 + Retry-After — not queued behind the others, not timed out.

Only here is TorchServe's full-queue 503 (it says "has no worker") excused (``QUEUE_FULL``); a reset, a
timeout, a garbled answer or any other status is a failure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.reliability.load import (
    QUEUE_FULL,
    Ledger,
    Outcome,
    assert_no_failures,
    assert_nothing_lost,
    ledger,
    observe,
    tally,
    unique_photo,
    verdicts,
    wait_until,
)
from tests.reliability.services import FaultStack, predict_once

pytestmark = pytest.mark.reliability

CHECK = "burst beyond the queue"
CLIENTS = 40
QUEUE = 4
# A refusal is answered at once: past this bound it waited its turn behind the served requests (0.25 s each,
# 5 or more of them) or for a timeout (35 s) before being refused.
QUICK_S = 1.5


@dataclass
class Run:
    outcomes: list[Outcome]
    book: Ledger
    after_status: int


@pytest.fixture(scope="module")
def run(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    fault_stack.ensure_healthy()
    bridge = fault_stack.bridge("burst")
    bridge.start()
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    gate = threading.Barrier(CLIENTS)
    t0 = time.monotonic()

    def client(i: int) -> None:
        photo = unique_photo(base_photo, i, "burst")
        gate.wait()
        outcome = observe("predict", "PUT", f"{bridge.url}/predictions/burst", photo, 35,
                          lambda: time.monotonic() - t0)
        with lock:
            outcomes.append(outcome)

    def drained() -> bool:
        status = fault_stack.torchserve.describe("burst")[0].get("jobQueueStatus", {})
        return status.get("pendingRequests") == 0 and fault_stack.torchserve.workers_ready("burst")

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_until(lambda: not any(t.is_alive() for t in threads), 60, "every client of the burst answered",
                   "no request of the burst hangs (the served ones take 0.25 s each)")
        wait_until(drained, 30, "TorchServe's queue of burst empty and its worker READY",
                   "the next request meets an idle model, so its answer says whether the burst left damage")
        after_status = predict_once(bridge.url, "burst", unique_photo(base_photo, 999, "burst-after")).status_code
        bridge.wait_recorded()
        book = ledger(fault_stack.postgres.query, outcomes)
    finally:
        bridge.stop()
    refused = [o for o in outcomes if o.status in (429, 503)]
    reliability_report.record(
        __name__, CHECK, inputs=f"{CLIENTS} at once, queue {QUEUE}, 0.25 s each", **tally(outcomes),
        **book.figures(), refused_max_s=round(max((o.latency_s for o in refused), default=0), 2),
        retry_after_on_refused=sum(o.retry_after is not None for o in refused),
        outcomes=verdicts(outcomes, [QUEUE_FULL]),
    )
    return Run(outcomes, book, after_status)


def test_every_client_gets_an_answer_served_or_refused(run: Run) -> None:
    assert len(run.outcomes) == CLIENTS
    assert {o.status for o in run.outcomes} <= {200, 429, 503}, [(o.status, o.body[:80]) for o in run.outcomes]
    assert_no_failures(run.outcomes, [QUEUE_FULL])  # a refusal is the full queue's 503 with Retry-After, nothing else


def test_the_queue_is_served(run: Run) -> None:
    served = [o for o in run.outcomes if o.acknowledged]
    assert QUEUE + 1 <= len(served) < CLIENTS, len(served)


def test_the_overflow_is_refused_quickly_with_retry_after(run: Run) -> None:
    refused = [o for o in run.outcomes if o.status in (429, 503)]
    assert refused, "the burst never exceeded the queue"
    slowest = sorted(round(o.latency_s, 2) for o in refused)[-3:]
    assert max(slowest) < QUICK_S, f"refusals took up to {slowest} s: queued or timed out instead of refused at once"
    assert all(o.retry_after for o in refused)


def test_the_next_request_after_the_burst_is_served(run: Run) -> None:
    assert run.after_status == 200


def test_nothing_acknowledged_lost_and_refusals_recorded(run: Run) -> None:
    assert_nothing_lost(run.book)
    assert run.book.recorded_unacknowledged == sum(not o.acknowledged for o in run.outcomes)
