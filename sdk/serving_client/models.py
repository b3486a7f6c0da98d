"""What the bridge answers, as small typed objects (the raw JSON is kept where its shape varies by model)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx


class JobStatus(str, enum.Enum):
    """A job's lifecycle: queued → running → succeeded | failed."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """True once the job will not change any more."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


@dataclass(frozen=True)
class Prediction:
    """One model's answer to one photo, with what the bridge reported in its headers."""

    body: dict[str, Any]
    request_id: str | None
    model_version: str | None
    batch_size: int | None

    @classmethod
    def from_response(cls, response: httpx.Response) -> Prediction:
        """From a 200 answer of ``/predictions/...``."""
        batch = response.headers.get("X-Batch-Size")
        return cls(
            body=response.json(),
            request_id=response.headers.get("X-Request-Id"),
            model_version=response.headers.get("X-Model-Version"),
            batch_size=int(batch) if batch and batch.isdigit() else None,
        )

    @property
    def top_label(self) -> str | None:
        """The best label of a top-k answer (``body["predictions"][0]["label"]``); None for other models."""
        return _top_label(self.body)

    @property
    def top_score(self) -> float | None:
        """The score of :attr:`top_label`."""
        score = _top(self.body, "score")
        return float(score) if isinstance(score, (int, float)) else None


@dataclass(frozen=True)
class ModelResult:
    """One model's answer within a job: ``output`` on success, ``error`` otherwise."""

    status: int
    request_id: str
    model_version: str | None = None
    output: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the model answered 200."""
        return self.status == 200

    @property
    def top_label(self) -> str | None:
        """The best label of a top-k output; None for other outputs and failures."""
        return _top_label(self.output)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelResult:
        """From the ``results`` entry of a job."""
        return cls(
            status=int(data["status"]), request_id=str(data["request_id"]), model_version=data.get("model_version"),
            output=data.get("output"), error=data.get("error"),
        )


@dataclass(frozen=True)
class JobState:
    """A snapshot of a job; ``results`` is set once it succeeded or failed."""

    id: str
    status: JobStatus
    models: list[str]
    created_at: datetime
    updated_at: datetime
    attempts: int
    results: dict[str, ModelResult] | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None  # while waiting out an outage: when the job is tried next
    deadline: datetime | None = None  # still unavailable then → the job fails

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobState:
        """From the body of ``POST /v1/jobs`` or ``GET /v1/jobs/{id}``."""
        results = data.get("results")
        return cls(
            id=str(data["id"]), status=JobStatus(data["status"]), models=list(data.get("models") or []),
            created_at=_datetime(data["created_at"]), updated_at=_datetime(data["updated_at"]),
            attempts=int(data.get("attempts", 0)),
            results={m: ModelResult.from_json(r) for m, r in results.items()} if results is not None else None,
            error=data.get("error"),
            next_attempt_at=_datetime(data["next_attempt_at"]) if data.get("next_attempt_at") else None,
            deadline=_datetime(data["deadline"]) if data.get("deadline") else None,
        )


@dataclass(frozen=True)
class Report:
    """Rows of a report (``labels``, ``latency`` or ``errors``), one per time bucket and group."""

    kind: str
    model: str
    since: datetime
    until: datetime
    bucket: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, kind: str, data: dict[str, Any]) -> Report:
        """From the body of ``GET /v1/reports/{kind}``."""
        return cls(
            kind=kind, model=data["model"], since=_datetime(data["since"]), until=_datetime(data["until"]),
            bucket=data["bucket"], rows=list(data.get("rows") or []),
        )


@dataclass(frozen=True)
class Feedback:
    """A truth the bridge stored for a served answer, and that answer's scores (``POST /v1/feedback``)."""

    request_id: str
    model: str
    model_version: str | None
    truth: Any
    received_at: datetime
    score: dict[str, float]
    created: bool  # False: the same truth was stored before (an idempotent repeat)

    @classmethod
    def from_response(cls, response: httpx.Response) -> Feedback:
        """From a 201 (stored) or 200 (stored before) answer."""
        data = response.json()
        return cls(
            request_id=str(data["request_id"]), model=data["model"], model_version=data.get("model_version"),
            truth=data["truth"], received_at=_datetime(data["received_at"]),
            score={name: float(value) for name, value in (data.get("score") or {}).items()},
            created=response.status_code == 201,
        )


@dataclass(frozen=True)
class AccuracyReport:
    """Live accuracy of a model per version per time bucket (``GET /v1/reports/accuracy``).

    Each row: ``{"bucket", "version", "count", "figures": {name: {"value", "low", "high", "n"}}}``; ``figures``
    names the kind's figures (e.g. ``top1_accuracy``, ``top5_accuracy`` for a classifier).
    """

    model: str
    kind: str
    version: str | None
    since: datetime
    until: datetime
    bucket: str
    figures: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccuracyReport:
        """From the body of ``GET /v1/reports/accuracy``."""
        return cls(
            model=data["model"], kind=data["kind"], version=data.get("version"), since=_datetime(data["since"]),
            until=_datetime(data["until"]), bucket=data["bucket"], figures=list(data.get("figures") or []),
            rows=list(data.get("rows") or []),
        )


@dataclass(frozen=True)
class Comparison:
    """A candidate version against the live answers to the same photos (``GET /v1/reports/compare``).

    ``metrics``: the kind's figures, each ``{"value", "low", "high", "n"}`` (e.g. ``top1_agreement``); ``live`` and
    ``candidate``: ``{"server_errors": {...}, "p50_ms", "p99_ms"}``; ``samples``: photos compared.
    """

    model: str
    version: str
    kind: str
    samples: int
    metrics: dict[str, dict[str, Any]]
    live: dict[str, Any]
    candidate: dict[str, Any]
    error_rate_delta: float | None
    p99_ratio: float | None
    since: datetime
    until: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        """From the body of ``GET /v1/reports/compare``."""
        c = data["comparison"]
        return cls(
            model=data["model"], version=data["version"], kind=c["kind"], samples=c["samples"], metrics=c["metrics"],
            live=c["live"], candidate=c["candidate"], error_rate_delta=c.get("error_rate_delta"),
            p99_ratio=c.get("p99_ratio"), since=_datetime(data["since"]), until=_datetime(data["until"]),
        )


def _datetime(value: str) -> datetime:
    # Python < 3.11 does not read a trailing "Z"; the bridge writes one.
    return datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)


def _top_label(body: Any) -> str | None:
    label = _top(body, "label")
    return label if isinstance(label, str) else None


def _top(body: Any, key: str) -> Any:
    try:
        return body["predictions"][0][key]
    except (KeyError, IndexError, TypeError):
        return None
