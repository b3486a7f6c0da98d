"""``/v1/rollouts`` (the active shadow or canary per model) and ``/v1/reports/compare`` (a candidate against live)."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict

from bridge.api.predictions import NAME_PATTERN
from bridge.api.results import Model, Since, Until, time_range
from bridge.errors import ErrorBody, NotFound
from stack.comparison import Comparison
from stack.database.rollouts import active_rollout, candidate_comparison

router = APIRouter(tags=["rollouts"])

MAX_COMPARE_RANGE = timedelta(days=93)


class PairSource(str, Enum):
    """Which candidate answers a comparison takes."""

    ALL = "all"
    SHADOW = "shadow"
    REPLAY = "replay"


class RolloutItem(BaseModel):
    """A model's active rollout."""

    id: int
    model: str
    version: str
    live_version: str | None
    mode: str
    percent: float
    thresholds: dict[str, Any]
    started_at: datetime | None
    started_by: str


class Rollouts(BaseModel):
    """Every active rollout, as this bridge last read them (at most ``BRIDGE_ROLLOUT_REFRESH_S`` old)."""

    items: list[RolloutItem]


class CompareReport(BaseModel):
    """A candidate version's answers beside the live answers to the same photos (docs/rollouts.md)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "classifier", "version": "1.1", "source": "all",
        "since": "2026-12-05T10:00:00Z", "until": "2026-12-06T10:00:00Z",
        "comparison": {
            "kind": "classifier", "samples": 412, "compared": 410,
            "metrics": {"top1_agreement": {"value": 0.985, "low": 0.968, "high": 0.993, "n": 410},
                        "top5_overlap": {"value": 0.962, "low": 0.957, "high": 0.967, "n": 410}},
            "live": {"server_errors": {"value": 0.0, "low": 0.0, "high": 0.009, "n": 412}, "p50_ms": 41.2, "p99_ms": 95.0},
            "candidate": {"server_errors": {"value": 0.0, "low": 0.0, "high": 0.009, "n": 412}, "p50_ms": 44.8,
                          "p99_ms": 120.3},
            "error_rate_delta": 0.0, "p50_ratio": 1.087, "p99_ratio": 1.266, "extra": {},
        },
    }]})

    model: str
    version: str
    source: PairSource
    since: datetime
    until: datetime
    comparison: Comparison


@router.get("/v1/rollouts", response_model=Rollouts, summary="The active shadow or canary of each model")
async def rollouts(request: Request) -> Rollouts:
    """Started by ``servingctl shadow|canary``, ended by ``servingctl stop-rollout|promote`` or a canary's own abort."""
    active = request.app.state.rollouts.active().values()
    return Rollouts(items=[
        RolloutItem(id=r.id, model=r.model, version=r.version, live_version=r.live_version, mode=r.mode,
                    percent=100 * r.fraction, thresholds=r.thresholds, started_at=r.started_at,
                    started_by=r.started_by)
        for r in active
    ])


@router.get(
    "/v1/reports/compare",
    response_model=CompareReport,
    summary="A candidate version against the live one",
    responses={
        400: {"model": ErrorBody, "description": "Malformed parameter, or `since` not before `until`, or a range "
                                                 "longer than 93 days; the message says which"},
        404: {"model": ErrorBody, "description": "No `version` given and the model has no active rollout to take "
                                                 "the candidate from"},
    },
)
async def compare_report(
    request: Request,
    model: Model,
    version: Annotated[str | None, Query(
        pattern=NAME_PATTERN, description="the candidate; default: the model's active rollout's")] = None,
    since: Since = None,
    until: Until = None,
    source: Annotated[PairSource, Query(description="shadow answers, replayed answers, or both")] = PairSource.ALL,
) -> CompareReport:
    """Every photo the candidate answered beside a live request (shadowing or replay; a photo answered by both
    counts once, the newest), compared per kind of answer: agreement, server errors and latency, with 95 %
    confidence intervals. The same figures ``servingctl compare`` prints and ``servingctl promote`` is gated on."""
    database = request.app.state.database
    if version is None:
        rollout = await database.transaction(active_rollout, model)
        if rollout is None:
            raise NotFound(f"model {model} has no active rollout: name the candidate with ?version=")
        version = rollout.version
    start, end = time_range(since, until, MAX_COMPARE_RANGE, "a comparison")
    comparison = await database.transaction(candidate_comparison, model, version, start, end, source.value)
    return CompareReport(model=model, version=version, source=source, since=start, until=end, comparison=comparison)
