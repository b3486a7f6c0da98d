"""Runs queued jobs: every waiting model of a job concurrently, each model's final answer recorded exactly once.

A model's final answer (2xx or 4xx) is recorded under ``model_request_id(job, model)``, so a job re-run
after a crash writes the same id and PostgreSQL keeps one row. An outage answer (5xx: TorchServe refused
the connection, timed out, was overloaded or lost its worker) is recorded under an attempt-specific id (one
row per attempt, so an outage shows in the history) and the job goes back to the queue with exponential
backoff and full jitter, until its deadline; then it fails with the last outage per model.

Idle workers cost nothing: they sleep until the earliest queued job is due, until a ``NOTIFY`` (a
submission in any bridge) wakes them, or at most ``idle_check_s`` (the safety net for expired leases of a
bridge that died and for a wake-up lost while the LISTEN connection was down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import UTC, datetime
from typing import Any

from bridge.db import Database
from bridge.errors import BridgeError
from bridge.jobs import CHANNEL, ClaimedJob, JobStatus, JobStore, model_request_id, outage_request_id
from bridge.service import Prediction, PredictionService
from bridge.tasks import cancel_and_wait
from stack.database.listen import Listener

logger = logging.getLogger(__name__)

MIN_WAIT_S = 0.05  # a due job locked by a claim in flight elsewhere: look again shortly, never spin
QUEUE_DOWN_CAP_S = 10.0  # longest a worker waits between claims while the queue's database is down


def model_result(prediction: Prediction, request_id: str) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` shows for one model."""
    record = prediction.record
    result: dict[str, Any] = {"status": record.status, "request_id": request_id, "model_version": record.model_version}
    if record.status < 400 and prediction.upstream is not None:
        try:
            result["output"] = json.loads(prediction.upstream.body)
        except ValueError:
            result["output"] = prediction.upstream.body.decode("utf-8", "replace")
    else:
        result["error"] = record.error
    return result


def backoff_s(failures: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base · 2^(failures − 1))]."""
    ceiling = min(cap_s, base_s * 2 ** max(0, min(failures - 1, 62)))
    return (rng or random).uniform(0.0, ceiling)


class JobRunner:
    """``concurrency`` workers per bridge process, all sharing the PostgreSQL queue."""

    def __init__(
        self,
        db: Database,
        store: JobStore,
        predictions: PredictionService,
        concurrency: int = 4,
        lease_s: float = 30.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 30.0,
        idle_check_s: float = 5.0,
        drain_s: float = 15.0,
        listen_dsn: str | None = None,
    ) -> None:
        self._db = db
        self._store = store
        self._predictions = predictions
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._idle_check_s = idle_check_s
        self._drain_s = drain_s
        self._listener = Listener(listen_dsn, CHANNEL, self.notify) if listen_dsn else None
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()
        self._queue_down = False  # logged once per outage, not once per claim
        self._stopping = False
        self._running: dict[str, ClaimedJob] = {}
        self.claims = 0  # claim queries made (a test reads it: idle workers must not poll)

    def start(self) -> None:
        """Listen for submissions and start the workers (jobs of a dead bridge are taken once their lease expires)."""
        if self._listener is not None:
            self._listener.start()
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self._concurrency)]

    async def stop(self) -> None:
        """Drain: claim nothing more, let running jobs finish for ``drain_s``, give the rest back to the queue.

        A job given back is due at once for another bridge (NOTIFY); one whose bridge dies instead is taken
        over when its lease expires. Either way it is never lost, and its final answers are recorded once.
        """
        self._stopping = True
        self.notify()
        if self._listener is not None:
            await self._listener.stop()
        if self._tasks:
            _, unfinished = await asyncio.wait(self._tasks, timeout=self._drain_s)
            await cancel_and_wait(unfinished)
        for job in list(self._running.values()):
            try:
                await self._db.call(self._store.release, job.id, job.attempts)
                logger.info("job %s given back to the queue (bridge stopping)", job.id)
            except BridgeError as exc:
                logger.warning("job %s not given back (%s); it is taken over when its lease expires", job.id,
                               exc.message)
        self._running.clear()

    def notify(self) -> None:
        """Work may be due (a submission, here or in another bridge): wake every idle worker now."""
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    async def _work(self) -> None:
        failures = 0  # consecutive: the queue's database is down, wait longer each time (and say so once)
        while not self._stopping:
            wakeup = self._wakeup  # taken before the claim: a NOTIFY during the claim is not missed
            try:
                self.claims += 1
                job, due_s = await self._db.call(self._store.claim, self._lease_s)
            except BridgeError as exc:
                failures += 1
                if not self._queue_down:
                    self._queue_down = True
                    logger.warning("job queue unavailable (retrying with backoff): %s", exc.message)
                # Woken early when the LISTEN connection comes back (the database is up again).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), max(MIN_WAIT_S, backoff_s(failures, 1.0, QUEUE_DOWN_CAP_S)))
                continue
            failures = 0
            if self._queue_down:
                self._queue_down = False
                logger.info("job queue available again")
            if job is None:
                # Spread the safety-net wake-ups of the workers instead of waking them all together.
                wait_s = self._idle_check_s * random.uniform(0.5, 1.0)
                if due_s is not None:
                    wait_s = min(wait_s, max(due_s, MIN_WAIT_S))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), wait_s)
                continue
            self._running[job.id] = job
            try:
                await self.run(job)
                del self._running[job.id]
            except asyncio.CancelledError:
                raise  # stop() gives the job back
            except Exception:
                del self._running[job.id]
                logger.exception("job %s failed unexpectedly; it will be retried when its lease expires", job.id)

    async def run(self, job: ClaimedJob) -> None:
        """Run every model without a final answer, keep the lease meanwhile; finish, or retry later with backoff."""
        claimed = time.monotonic()
        keeper = asyncio.create_task(self._keep_lease(job))
        waiting = [model for model in job.models if model not in job.answers]
        try:
            outcomes = await asyncio.gather(*(self._run_model(job, model) for model in waiting))
        finally:
            keeper.cancel()
        answers = dict(job.answers)
        outages = dict(job.outages)
        outage_results: dict[str, dict[str, Any]] = {}
        now = datetime.now(UTC).isoformat()
        for model, (result, final) in zip(waiting, outcomes):
            if final:
                answers[model] = result
                outages.pop(model, None)
            else:
                before = outages.get(model) or {"since": now, "attempts": 0}
                outages[model] = {**before, "attempts": before["attempts"] + 1, "status": result["status"],
                                  "error": result.get("error"), "last": now}
                outage_results[model] = result
        recovered = [m for m in waiting if m in job.outages and m in answers]
        if recovered:  # their outage is over: the jobs waiting on them need not sleep out their backoff
            await self._db.call(self._store.wake_waiting, recovered)

        if not outage_results:
            await self._finish_answered(job, answers)
            return
        reasons = "; ".join(f"{m} ({o['status']}: {o['error']})" for m, o in outages.items())
        if job.deadline_in_s - (time.monotonic() - claimed) <= 0:
            error = f"deadline passed after {job.attempts} attempts; still unavailable: {reasons}"
            await self._db.call(self._store.finish, job.id, job.attempts, JobStatus.FAILED,
                                {**answers, **outage_results}, error)
            return
        failures = max(o["attempts"] for o in outages.values())
        delay_s = backoff_s(failures, self._backoff_base_s, self._backoff_cap_s)
        await self._db.call(self._store.retry_later, job.id, job.attempts, answers, outages, delay_s,
                            f"waiting out an outage: {reasons}")

    async def _finish_answered(self, job: ClaimedJob, answers: dict[str, Any]) -> None:
        # A job fails only if no model could use the photo (every one refused it: 4xx); else it succeeded and
        # each model's refusal is in its own result.
        refused = {m: r for m, r in answers.items() if r["status"] >= 400}
        if refused and len(refused) == len(answers):
            error = "every model refused the photo: " + "; ".join(
                f"{m} ({r['status']}: {r.get('error')})" for m, r in refused.items())
            await self._db.call(self._store.finish, job.id, job.attempts, JobStatus.FAILED, answers, error)
        else:
            await self._db.call(self._store.finish, job.id, job.attempts, JobStatus.SUCCEEDED, answers)

    async def _run_model(self, job: ClaimedJob, model: str) -> tuple[dict[str, Any], bool]:
        # A job is a client of its own for a canary (its retries meet the same version).
        prediction = await self._predictions.run_routed(model, None, job.photo, job.content_type, source="job",
                                                        client=f"job:{job.id}")
        if prediction.final:
            request_id = model_request_id(job.id, model)
        else:
            request_id = outage_request_id(job.id, model, job.attempts)
        record = await self._predictions.record(prediction, request_id)
        if prediction.final:
            self._predictions.offer_shadow(model, job.photo, job.content_type, None, record)
        return model_result(prediction, request_id), prediction.final

    async def _keep_lease(self, job: ClaimedJob) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                if not await self._db.call(self._store.extend_lease, job.id, job.attempts, self._lease_s):
                    logger.warning("job %s: lease lost (taken over after it expired); this run's outcome is dropped",
                                   job.id)
                    return
            except BridgeError as exc:
                logger.warning("could not extend the lease of job %s: %s", job.id, exc.message)
