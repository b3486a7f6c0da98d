"""Runs queued jobs: every model of a job concurrently, each model's final answer recorded exactly once.

A model's final answer (2xx or 4xx) is recorded under ``model_request_id(job, model)``, so a job re-run
after a crash writes the same id and PostgreSQL keeps one row. An outage answer (5xx: TorchServe down,
timed out, overloaded) is recorded under an attempt-specific id and the job goes back to the queue, up to
``max_attempts``; after that it fails with the last outage per model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from bridge.db import Database
from bridge.errors import BridgeError
from bridge.jobs import ClaimedJob, JobStatus, JobStore, model_request_id
from bridge.service import Prediction, PredictionService

logger = logging.getLogger(__name__)


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


class JobRunner:
    """``concurrency`` workers per bridge process, all sharing the PostgreSQL queue."""

    def __init__(
        self,
        db: Database,
        store: JobStore,
        predictions: PredictionService,
        concurrency: int = 4,
        lease_s: float = 30.0,
        max_attempts: int = 5,
        idle_poll_s: float = 0.2,
    ) -> None:
        self._db = db
        self._store = store
        self._predictions = predictions
        self._concurrency = concurrency
        self._lease_s = lease_s
        self._max_attempts = max_attempts
        self._idle_poll_s = idle_poll_s
        self._tasks: list[asyncio.Task[None]] = []
        self._wakeup = asyncio.Event()

    def start(self) -> None:
        """Start the workers (jobs left running by a dead bridge are claimed once their lease expires)."""
        self._tasks = [asyncio.create_task(self._work(), name=f"job-worker-{i}") for i in range(self._concurrency)]

    async def stop(self) -> None:
        """Cancel the workers; a job cut short stays claimed until its lease expires, then runs again."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def notify(self) -> None:
        """A job was just submitted: wake an idle worker now instead of at its next poll."""
        self._wakeup.set()

    async def _work(self) -> None:
        while True:
            try:
                job = await self._db.call(self._store.claim, self._lease_s)
            except BridgeError as exc:
                logger.warning("job queue unavailable: %s", exc.message)
                await asyncio.sleep(1.0)
                continue
            if job is None:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._idle_poll_s)
                except TimeoutError:
                    pass
                continue
            try:
                await self.run(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("job %s failed unexpectedly; it will be retried when its lease expires", job.id)

    async def run(self, job: ClaimedJob) -> None:
        """Run every model not answered yet, keep the lease alive meanwhile, then finish or requeue."""
        keeper = asyncio.create_task(self._keep_lease(job.id))
        try:
            outcomes = await asyncio.gather(*(self._run_model(job, model) for model in job.models))
        finally:
            keeper.cancel()
        results = {model: result for model, (result, _) in zip(job.models, outcomes)}
        outages = [model for model, (_, final) in zip(job.models, outcomes) if not final]
        if not outages:
            await self._db.call(self._store.finish, job.id, JobStatus.SUCCEEDED, results)
        elif job.attempts >= self._max_attempts:
            error = f"gave up after {job.attempts} attempts; unavailable: {', '.join(outages)}"
            await self._db.call(self._store.finish, job.id, JobStatus.FAILED, results, error)
        else:
            await self._db.call(self._store.release, job.id, f"retrying: unavailable: {', '.join(outages)}")

    async def _run_model(self, job: ClaimedJob, model: str) -> tuple[dict[str, Any], bool]:
        prediction = await self._predictions.run(model, None, job.photo, job.content_type, source="job")
        if prediction.final:
            request_id = model_request_id(job.id, model)
        else:
            request_id = str(uuid.uuid5(uuid.UUID(job.id), f"{model}#attempt-{job.attempts}"))
        await self._predictions.record(prediction, request_id)
        return model_result(prediction, request_id), prediction.final

    async def _keep_lease(self, job_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._db.call(self._store.extend_lease, job_id, self._lease_s)
            except BridgeError as exc:
                logger.warning("could not extend the lease of job %s: %s", job_id, exc.message)
