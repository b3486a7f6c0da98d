"""Durable async jobs in PostgreSQL: submit, claim (``FOR UPDATE SKIP LOCKED``), retry later, finish, fetch.

A job is committed before its 202 is sent, and its INSERT sends ``NOTIFY bridge_jobs`` (delivered at commit)
so that idle workers in every bridge wake at once instead of polling. Workers claim the oldest due job under
a lease; a job whose lease expired (its bridge died) is claimed again, and because each model's final answer
is recorded under a request id derived from the job id, a re-run never records twice.

A model that is unavailable (an outage: 5xx) is retried later: the job goes back to the queue with a
``next_attempt_at`` (exponential backoff, full jitter, never past the job's ``deadline_at``); the answers
already final are kept in ``answers`` so only the waiting models run again. Each claim increments
``attempts``, which also fences a runner whose lease was lost: its updates match no row.
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
from bridge.errors import StillStoring, Unprocessable

CHANNEL = "bridge_jobs"  # NOTIFY channel: a job is due now (submitted, given back, or its model is back)
STORING_WAIT_MS = 250  # how long a same-key POST waits for the first one's INSERT to commit before its 409


class JobStatus(str, enum.Enum):
    """A job's lifecycle: queued → running → succeeded | failed (running → queued while waiting out an outage)."""

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
    next_attempt_at: datetime | None = None
    deadline_at: datetime | None = None


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job (``attempts`` includes this claim and fences its updates)."""

    id: str
    models: list[str]
    photo: bytes
    content_type: str
    attempts: int
    answers: dict[str, Any]
    outages: dict[str, Any]
    deadline_in_s: float  # seconds from the claim to the job's deadline (PostgreSQL's clock), may be negative


def model_request_id(job_id: str, model: str) -> str:
    """The request id a job's final inference on ``model`` is recorded under (stable across re-runs)."""
    return str(uuid.uuid5(uuid.UUID(job_id), model))


def outage_request_id(job_id: str, model: str, attempt: int) -> str:
    """The request id an outage answer of attempt ``attempt`` is recorded under (one row per attempt)."""
    return str(uuid.uuid5(uuid.UUID(job_id), f"{model}#attempt-{attempt}"))


_JOB_COLUMNS = (
    "id, status, models, created_at, updated_at, input_sha256, attempts, results, error, next_attempt_at, deadline_at"
)


def _job(row: tuple[Any, ...]) -> Job:
    status = JobStatus(row[1])
    next_attempt_at = row[9] if status is JobStatus.QUEUED else None
    return Job(str(row[0]), status, list(row[2]), row[3], row[4], row[5], row[6], row[7], row[8], next_attempt_at,
               row[10])


class JobStore:
    """The jobs table (called from worker threads)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _run(self, sql: str, params: tuple[Any, ...], fetch: str = "one") -> Any:
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            if fetch == "one":
                return cur.fetchone()
            if fetch == "count":
                return cur.rowcount
            return None

    def submit(
        self, photo: bytes, content_type: str, models: list[str], input_sha256: str, idempotency_key: str | None,
        deadline_s: float,
    ) -> tuple[Job, bool]:
        """Store a new job due now, waking the workers (committed on return); returns (job, created).

        With an ``idempotency_key`` already used, the same photo and models give the original job back,
        whatever its state; a different payload is a 422. While the first POST with that key is still being
        stored (its INSERT not committed yet), a 409 rather than a wait.
        """
        job_id = str(uuid.uuid4())
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{STORING_WAIT_MS}ms'")
            try:
                cur.execute(
                    "INSERT INTO jobs (id, status, models, input_sha256, input_bytes, content_type, photo,"
                    " idempotency_key, deadline_at) VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s,"
                    " now() + make_interval(secs => %s))"
                    f" ON CONFLICT (idempotency_key) DO NOTHING RETURNING {_JOB_COLUMNS}",
                    (job_id, models, input_sha256, len(photo), content_type, psycopg2.Binary(photo), idempotency_key,
                     deadline_s),
                )
            except psycopg2.errors.LockNotAvailable:
                # Raised here, not as an outage: the same key's first INSERT is in a transaction not committed yet.
                raise StillStoring(
                    f"a job with Idempotency-Key {idempotency_key!r} is being stored right now; retry shortly"
                ) from None
            row = cur.fetchone()
            if row is not None:
                cur.execute(f"NOTIFY {CHANNEL}")
                return _job(row), True
            cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE idempotency_key = %s", (idempotency_key,))
            existing = cur.fetchone()
        if existing is None:  # the key's job was deleted in between (retention): store it anew
            return self.submit(photo, content_type, models, input_sha256, idempotency_key, deadline_s)
        job = _job(existing)
        if job.input_sha256 != input_sha256 or sorted(job.models) != sorted(models):
            raise Unprocessable(
                f"Idempotency-Key {idempotency_key!r} was already used for a different photo or model list "
                f"(job {job.id}); use a new key for a new request"
            )
        return job, False

    def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        row = self._run(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return _job(row) if row else None

    def claim(self, lease_s: float) -> tuple[ClaimedJob | None, float | None]:
        """Take the oldest due job (or one whose lease expired) under a lease.

        Returns (job, None), or (None, seconds until the earliest queued job is due; None when there is none).
        """
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, updated_at = now(),"
                " lease_until = now() + make_interval(secs => %s)"
                " WHERE id = (SELECT id FROM jobs"
                "   WHERE (status = 'queued' AND next_attempt_at <= now())"
                "      OR (status = 'running' AND lease_until < now())"
                "   ORDER BY next_attempt_at FOR UPDATE SKIP LOCKED LIMIT 1)"
                " RETURNING id, models, photo, content_type, attempts, answers, outages,"
                " extract(epoch FROM deadline_at - now())",
                (lease_s,),
            )
            row = cur.fetchone()
            if row is not None:
                return ClaimedJob(str(row[0]), list(row[1]), bytes(row[2]), row[3], row[4], dict(row[5]),
                                  dict(row[6]), float("inf") if row[7] is None else float(row[7])), None
            cur.execute("SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM jobs WHERE status = 'queued'")
            due = cur.fetchone()
            return None, None if due is None or due[0] is None else float(due[0])

    def extend_lease(self, job_id: str, attempt: int, lease_s: float) -> bool:
        """Keep a long job claimed; False when this claim lost it (another runner took the job over)."""
        return bool(self._run(
            "UPDATE jobs SET lease_until = now() + make_interval(secs => %s)"
            " WHERE id = %s AND attempts = %s AND status = 'running'",
            (lease_s, job_id, attempt),
            fetch="count",
        ))

    def finish(
        self, job_id: str, attempt: int, status: JobStatus, results: dict[str, Any], error: str | None = None
    ) -> bool:
        """Record the outcome and drop the photo; False when this claim had lost the job."""
        return bool(self._run(
            "UPDATE jobs SET status = %s, results = %s, error = %s, photo = NULL, lease_until = NULL,"
            " updated_at = now() WHERE id = %s AND attempts = %s AND status = 'running'",
            (status.value, Json(results), error, job_id, attempt),
            fetch="count",
        ))

    def retry_later(
        self, job_id: str, attempt: int, answers: dict[str, Any], outages: dict[str, Any], delay_s: float, error: str
    ) -> bool:
        """Put the job back to wait out an outage: due in ``delay_s`` (but not after its deadline)."""
        return bool(self._run(
            "UPDATE jobs SET status = 'queued', lease_until = NULL, answers = %s, outages = %s, error = %s,"
            " next_attempt_at = least(now() + make_interval(secs => %s), coalesce(deadline_at, 'infinity')),"
            " updated_at = now() WHERE id = %s AND attempts = %s AND status = 'running'",
            (Json(answers), Json(outages), error, delay_s, job_id, attempt),
            fetch="count",
        ))

    def release(self, job_id: str, attempt: int) -> bool:
        """Give a job this bridge cannot finish (it is stopping) back to the queue, due now, and wake the others."""
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE jobs SET status = 'queued', lease_until = NULL, next_attempt_at = now(), updated_at = now()"
                " WHERE id = %s AND attempts = %s AND status = 'running'",
                (job_id, attempt),
            )
            released = cur.rowcount > 0
            if released:
                cur.execute(f"NOTIFY {CHANNEL}")
            return released

    def wake_waiting(self, models: list[str]) -> int:
        """``models`` answer again: jobs waiting out their outage are due now (instead of at their backoff)."""
        with self._db.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE jobs SET next_attempt_at = now() WHERE status = 'queued' AND next_attempt_at > now()"
                " AND outages ?| %s",
                (models,),
            )
            woken = cur.rowcount
            if woken:
                cur.execute(f"NOTIFY {CHANNEL}")
            return int(woken)

    def pending(self) -> int:
        """Jobs queued or running (a metric)."""
        return int(self._run("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')", ())[0])
