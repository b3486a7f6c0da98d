"""``/v1/jobs``: POST a photo → 202 + job id (durable before the answer); GET the job, optionally waiting."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from bridge.api.predictions import NAME, PHOTO_BODY
from bridge.errors import BadRequest, ErrorBody, NotFound
from bridge.jobs import Job, JobStatus
from bridge.spec import MAXIMUM_SETTING
from bridge.uploads import read_photo

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 30.0
MAX_MODELS = 16
JOB_PARAMETERS = frozenset({"models", "deadline"})  # the route's own query parameters, not the models'
# A submission's models: 1–16 model names, comma-separated (spaces around them allowed); empty: the default list.
# The route validates with this pattern, so the document states exactly what is accepted.
MODELS_PATTERN = rf"^ *(?:{NAME} *(?:, *{NAME} *){{0,{MAX_MODELS - 1}}})?$"


class ModelResult(BaseModel):
    """One model's answer within a job."""

    status: int = Field(description="HTTP status the model's inference got (200, or the per-item 4xx/5xx)")
    request_id: str = Field(description="The inference's id in the results history")
    model_version: str | None = None
    output: Any = Field(None, description="The model's answer (present on success)")
    error: str | None = Field(None, description="What went wrong (present on failure)")


class JobOut(BaseModel):
    """A job and, once it succeeded or failed, one result per model."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "794c0663-aa31-4a9b-bb39-82a5aa7772ab", "status": "succeeded", "models": ["classifier", "price"],
        "created_at": "2026-11-25T09:24:11.441Z", "updated_at": "2026-11-25T09:24:11.602Z", "attempts": 1,
        "next_attempt_at": None, "deadline": "2026-11-25T09:34:11.441Z",
        "results": {
            "classifier": {"status": 200, "request_id": "a83e7051-9b19-515d-a7fd-0a96108844f9", "model_version": "1.0",
                           "output": {"predictions": [{"label": "Egyptian cat", "index": 285, "score": 0.37}]}},
            "price": {"status": 400, "request_id": "69c3b648-5f15-53dd-bf84-c316d6f5eddf", "model_version": "1.0",
                      "error": "image is truncated or corrupt"},
        },
        "error": None,
    }]})

    id: str
    status: JobStatus
    models: list[str]
    created_at: datetime
    updated_at: datetime
    attempts: int = Field(description="Times a worker took the job (an outage puts it back for another attempt)")
    next_attempt_at: datetime | None = Field(
        None, description="While the job waits out an outage (status queued): when it is tried next; else null"
    )
    deadline: datetime | None = Field(
        None, description="If a model is still unavailable then, the job fails with the reason per model"
    )
    results: dict[str, ModelResult] | None = None
    error: str | None = Field(
        None, description="Why the job failed; while it waits out an outage, which models are unavailable and why"
    )

    @classmethod
    def of(cls, job: Job) -> JobOut:
        """From the stored job."""
        return cls(
            id=job.id, status=job.status, models=job.models, created_at=job.created_at, updated_at=job.updated_at,
            attempts=job.attempts, next_attempt_at=job.next_attempt_at, deadline=job.deadline_at,
            results=job.results, error=job.error,
        )


def parse_models(raw: str | None, default: tuple[str, ...]) -> list[str]:
    """The comma-separated model list of a submission (``MODELS_PATTERN``), without duplicates."""
    if raw is None:
        return list(default)
    if not re.fullmatch(MODELS_PATTERN, raw):
        raise BadRequest(f"models must be 1–{MAX_MODELS} comma-separated model names; got {raw[:200]!r}")
    return list(dict.fromkeys(m.strip() for m in raw.split(",") if m.strip())) or list(default)


def _location(job: Job) -> dict[str, str]:
    return {"Location": f"/v1/jobs/{job.id}"}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a photo to several models; poll the job for the results",
    openapi_extra=PHOTO_BODY,
    responses={
        200: {
            "model": JobOut,
            "description": "Idempotency-Key seen before with the same photo and models: the original job, whatever "
            "its state (queued, running, succeeded, failed); Location points at it",
            "headers": {"Location": {"description": "/v1/jobs/{id} of the original job", "schema": {"type": "string"}}},
        },
        202: {
            "model": JobOut,
            "description": "Accepted: stored durably, Location points at the job",
            "headers": {"Location": {"description": "/v1/jobs/{id} of the new job", "schema": {"type": "string"}}},
        },
        409: {
            "model": ErrorBody,
            "description": "Idempotency-Key in use by a POST whose job is still being stored; retry shortly "
            "(Retry-After) to get the job back",
        },
        422: {"model": ErrorBody, "description": "Idempotency-Key seen before with a different photo or model list"},
        503: {"model": ErrorBody, "description": "The job queue (PostgreSQL) is unavailable; nothing was stored"},
    },
)
async def submit_job(
    request: Request,
    models: Annotated[str | None, Query(
        pattern=MODELS_PATTERN,
        description=f"1–{MAX_MODELS} comma-separated model names; default (absent or empty): all of the product's",
    )] = None,
    deadline: Annotated[float | None, Query(
        gt=0, description="Seconds the job may wait out outages before it fails (default: setting "
        "`job_deadline_s`, 600; at most `job_deadline_max_s`, 3600)",
        json_schema_extra={MAXIMUM_SETTING: "job_deadline_max_s"},
    )] = None,
    idempotency_key: Annotated[str | None, Header(
        max_length=200, description="Makes a retried POST safe: the same key, photo and models give the original "
        "job back (200)",
    )] = None,
) -> JSONResponse:
    """Store the photo and the job (committed before the 202), wake a worker."""
    state = request.app.state
    settings = state.settings
    model_list = parse_models(models, settings.job_models)
    if deadline is not None and deadline > settings.job_deadline_max_s:
        raise BadRequest(f"deadline must be at most {settings.job_deadline_max_s:g} s")
    upload = await read_photo(request, settings.max_body_bytes, settings.request_body_timeout_s, own=JOB_PARAMETERS)
    digest = hashlib.sha256(upload.photo).hexdigest()
    job, created = await state.database.call(
        state.job_store.submit, upload.photo, upload.content_type, model_list, digest, idempotency_key,
        deadline or settings.job_deadline_s,
    )
    if created:
        state.job_runner.notify()
    body = JobOut.of(job).model_dump(mode="json")
    return JSONResponse(body, status_code=202 if created else 200, headers=_location(job))


@router.get(
    "/{job_id}",
    response_model=JobOut,
    summary="A job's status and, when finished, its results per model",
    responses={404: {"model": ErrorBody, "description": "No such job"}},
)
async def get_job(
    request: Request,
    job_id: Annotated[uuid.UUID, Path(description="The id from the submission")],
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the job to finish")] = 0,
) -> JSONResponse:
    """Return the job now, or as soon as it finishes within ``wait`` seconds (long polling)."""
    store = request.app.state.job_store
    deadline = time.monotonic() + wait
    while True:
        job = await request.app.state.database.call(store.get, str(job_id))
        if job is None:
            raise NotFound(f"no job {job_id}")
        finished = job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
        if finished or time.monotonic() >= deadline:
            return JSONResponse(JobOut.of(job).model_dump(mode="json"), headers=_location(job))
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
