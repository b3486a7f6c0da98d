"""Durable async jobs in PostgreSQL: submit, claim (``FOR UPDATE SKIP LOCKED``), finish, fetch.

A job is committed before its 202 is sent. Workers in any bridge process claim the oldest pending job
under a lease; a job whose lease expired (its bridge died) is claimed again, and because each model's
inference is recorded under a request id derived from the job id, a re-run never records twice.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2.extras import Json

from bridge.db import Database
from bridge.errors import Conflict, Unprocessable


class JobStatus(str, enum.Enum):
    """A job's lifecycle: queued → running → succeeded | failed."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """One job as stored."""

    id: str
    status: JobStatus
    models: list[str]
    created_at: datetime
    updated_at: datetime
    input_sha256: str
    attempts: int
    results: dict[str, Any] | None
    error: str | None


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job."""

    id: str
    models: list[str]
    photo: bytes
    content_type: str
    attempts: int


def model_request_id(job_id: str, model: str) -> str:
    """The request id a job's inference on ``model`` is recorded under (stable across re-runs)."""
    return str(uuid.uuid5(uuid.UUID(job_id), model))


_JOB_COLUMNS = "id, status, models, created_at, updated_at, input_sha256, attempts, results, error"


def _job(row: tuple[Any, ...]) -> Job:
    return Job(str(row[0]), JobStatus(row[1]), list(row[2]), row[3], row[4], row[5], row[6], row[7], row[8])


class JobStore:
    """The jobs table (called from worker threads)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _run(self, sql: str, params: tuple[Any, ...], fetch: str = "one") -> Any:
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            if fetch == "one":
                return cur.fetchone()
            return None

    def submit(
        self, photo: bytes, content_type: str, models: list[str], input_sha256: str, idempotency_key: str | None
    ) -> tuple[Job, bool]:
        """Store a new job (committed on return); returns (job, created).

        With an ``idempotency_key`` already used: the same photo gives the original job back (409 while it
        is still pending), a different photo is a 422.
        """
        job_id = str(uuid.uuid4())
        try:
            row = self._run(
                f"INSERT INTO jobs (id, status, models, input_sha256, input_bytes, content_type, photo, idempotency_key)"
                f" VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s) RETURNING {_JOB_COLUMNS}",
                (job_id, models, input_sha256, len(photo), content_type, psycopg2.Binary(photo), idempotency_key),
            )
            return _job(row), True
        except psycopg2.errors.UniqueViolation:
            pass
        existing = self._run(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = %s", (idempotency_key,)
        )
        job = _job(existing)
        if job.input_sha256 != input_sha256 or sorted(job.models) != sorted(models):
            raise Unprocessable(
                f"Idempotency-Key {idempotency_key!r} was already used for a different photo or model list "
                f"(job {job.id}); use a new key for a new request"
            )
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise Conflict(f"job {job.id} with this Idempotency-Key is still {job.status.value}; poll it instead")
        return job, False

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        row = self._run(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return _job(row) if row else None

    def claim(self, lease_s: float) -> ClaimedJob | None:
        """Take the oldest pending job (or one whose lease expired) under a lease; None when idle."""
        row = self._run(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = now(),"
            " lease_until = now() + make_interval(secs => %s)"
            " WHERE id = (SELECT id FROM jobs"
            "   WHERE status = 'queued' OR (status = 'running' AND lease_until < now())"
            "   ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)"
            " RETURNING id, models, photo, content_type, attempts",
            (lease_s,),
        )
        if row is None:
            return None
        return ClaimedJob(str(row[0]), list(row[1]), bytes(row[2]), row[3], row[4])

    def extend_lease(self, job_id: str, lease_s: float) -> None:
        """Keep a long job claimed."""
        self._run(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => %s) WHERE id = %s AND status = 'running'",
            (lease_s, job_id),
            fetch="none",
        )

    def finish(self, job_id: str, status: JobStatus, results: dict[str, Any], error: str | None = None) -> None:
        """Record the outcome and drop the photo."""
        self._run(
            "UPDATE jobs SET status = %s, results = %s, error = %s, photo = NULL, lease_until = NULL,"
            " updated_at = now() WHERE id = %s",
            (status.value, Json(results), error, job_id),
            fetch="none",
        )

    def release(self, job_id: str, error: str) -> None:
        """Give a job back to the queue (e.g. TorchServe unavailable) to be retried later."""
        self._run(
            "UPDATE jobs SET status = 'queued', lease_until = NULL, error = %s, updated_at = now() WHERE id = %s",
            (error, job_id),
            fetch="none",
        )

    def pending(self) -> int:
        """Jobs queued or running (a metric)."""
        return int(self._run("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')", ())[0])
