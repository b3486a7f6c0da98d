"""Fault: a handler slower than the response timeout (RELIABILITY.md) — the bridge answers 504, not a hang.

The slow handler is ``slow_handler.py``: it sleeps ``delay_s`` (6 s) per batch, then answers 200, so the
only thing that can cut a request short is a timeout — no CPU load, no luck. Two timeouts exist:

* the bridge's ``BRIDGE_TORCHSERVE_TIMEOUT_S`` (2 s here) with TorchServe patient (model ``slow``,
  responseTimeout 60 s): the bridge must answer 504 after 2 s while its other models keep serving;
* TorchServe's own ``responseTimeout`` (2 s, model ``slowts``) with the bridge patient (30 s): TorchServe
  kills the worker; the client must still get a prompt, retryable timeout answer.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from archive_scripts.specs import SPECS
from bridge.settings import Settings
from tests.reliability.load import Load, Outcome, tally, unique_photo
from tests.reliability.services import FaultStack, predict_once

pytestmark = pytest.mark.reliability

CHECK = "handler slower than the response timeout"
BRIDGE_TIMEOUT_S = 2.0
SLACK_S = 1.5  # scheduling on a shared 2-core machine
# The handler sleeps 6 s: an answer later than this waited for the handler (or TorchServe's restart of the
# worker it killed at responseTimeout) instead of timing out.
NOT_A_HANG_S = 10


@dataclass
class Answer:
    status: int
    seconds: float
    request_id: str | None
    retry_after: str | None
    body: str


def timed(url: str, model: str, photo: bytes) -> Answer:
    began = time.monotonic()
    response = predict_once(url, model, photo, timeout_s=60)
    return Answer(response.status_code, time.monotonic() - began, response.headers.get("X-Request-Id"),
                  response.headers.get("Retry-After"), response.text[:200])


@dataclass
class Run:
    slow: list[Answer]
    others: list[Outcome]
    rows: dict[str, int]  # request id → recorded status
    slowts: Answer


@pytest.fixture(scope="module")
def run(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    fault_stack.ensure_healthy()
    impatient = fault_stack.bridge("slow-bridge-timeout", torchserve_timeout_s=BRIDGE_TIMEOUT_S)
    patient = fault_stack.bridge("slow-torchserve-timeout", torchserve_timeout_s=30)
    impatient.start()
    patient.start()
    try:
        # Three requests stuck in the slow model while two clients use resnet18 through the same bridge.
        load = Load(impatient.url, base_photo, threads=2, duration_s=4, tag="beside-slow")
        with load, concurrent.futures.ThreadPoolExecutor(3) as pool:
            slow = list(pool.map(lambda i: timed(impatient.url, "slow", unique_photo(base_photo, i, "slow")), range(3)))
        slowts = timed(patient.url, "slowts", unique_photo(base_photo, 0, "slowts"))
        impatient.wait_recorded()
        patient.wait_recorded()
        ids = [a.request_id for a in [*slow, slowts] if a.request_id]
        rows = dict(fault_stack.postgres.query(
            "SELECT request_id::text, status FROM inferences WHERE request_id = ANY(%s::uuid[])", (ids,)))
    finally:
        impatient.stop()
        patient.stop()
    reliability_report.record(
        __name__, CHECK, scenario="bridge timeout 2 s, handler 6 s",
        sent=len(slow), failed={str(a.status): sum(b.status == a.status for b in slow) for a in slow},
        answer_max_s=round(max(a.seconds for a in slow), 2), recorded=sum(a.request_id in rows for a in slow),
        **{f"beside_{k}": v for k, v in tally(load.outcomes).items() if k in ("sent", "acknowledged", "failed", "ack_max_s")},
    )
    reliability_report.record(
        __name__, CHECK, scenario="TorchServe responseTimeout 2 s, handler 6 s, bridge timeout 30 s",
        sent=1, failed={str(slowts.status): 1}, answer_s=round(slowts.seconds, 2),
        retry_after=slowts.retry_after, body=slowts.body.replace("\n", " ")[:90],
    )
    return Run(slow, load.outcomes, rows, slowts)


def test_bridge_answers_504_at_its_timeout(run: Run) -> None:
    assert [a.status for a in run.slow] == [504] * len(run.slow), [(a.status, a.body) for a in run.slow]
    for answer in run.slow:
        # at the bridge's timeout: not before it, and not after the handler's 6 s (SLACK_S: scheduling)
        assert BRIDGE_TIMEOUT_S - 0.1 <= answer.seconds <= BRIDGE_TIMEOUT_S + SLACK_S, (
            f"504 after {answer.seconds:.2f} s, not at the {BRIDGE_TIMEOUT_S} s timeout: {answer}")
        assert answer.request_id and '"GatewayTimeout"' in answer.body


def test_504s_are_recorded(run: Run) -> None:
    assert {run.rows.get(a.request_id) for a in run.slow} == {504}  # type: ignore[arg-type]


def test_other_models_keep_serving_while_one_hangs(run: Run) -> None:
    assert run.others and all(o.acknowledged for o in run.others), [o.label for o in run.others if not o.acknowledged]
    # under the bridge's timeout: a resnet18 request queued behind the hung model would wait for it (504 at 2 s)
    slowest = sorted(round(o.latency_s, 2) for o in run.others)[-3:]
    assert max(slowest) < BRIDGE_TIMEOUT_S, f"resnet18 beside the hung model took up to {slowest} s"


def test_torchserve_response_timeout_is_not_a_hang(run: Run) -> None:
    assert run.slowts.seconds < NOT_A_HANG_S, f"answered after {run.slowts.seconds:.1f} s: {run.slowts}"


def test_torchserve_response_timeout_gives_a_retryable_timeout_answer(run: Run) -> None:
    assert run.slowts.status == 504 or (run.slowts.status == 503 and run.slowts.retry_after), run.slowts


def test_bridge_timeout_default_is_below_every_response_timeout() -> None:
    bridge_timeout = Settings.model_fields["torchserve_timeout_s"].default
    response_timeouts = {spec.name: spec.model_config.get("responseTimeout", 120) for spec in SPECS}
    assert all(bridge_timeout < t for t in response_timeouts.values()), (bridge_timeout, response_timeouts)


def test_the_sleeping_handler_answers_when_given_time(fault_stack: FaultStack, base_photo: bytes) -> None:
    """Control: slow_handler.py answers 200 when nothing times out (here with its 0.25 s delay, model burst)."""
    fault_stack.ensure_healthy()
    key = fault_stack.torchserve.keys().inference
    began = time.monotonic()
    response = requests.put(f"{fault_stack.torchserve.inference_url}/predictions/burst", data=base_photo,
                            headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200 and response.json()["slept_s"] == 0.25
    assert time.monotonic() - began < NOT_A_HANG_S, "the control answer was slow: the model itself is stuck"
