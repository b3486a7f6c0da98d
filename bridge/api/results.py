"""``/v1/results`` (history, keyset pagination) and ``/v1/reports/...`` (labels, latency, errors)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from bridge.api.predictions import NAME_PATTERN
from bridge.errors import BadRequest, ErrorBody
from bridge.reports import (
    CURSOR_PATTERN,
    Bucket,
    ResultFilter,
    error_rates,
    label_counts,
    latency_percentiles,
    list_results,
)
from stack.database import COLUMNS

router = APIRouter(tags=["history and reports"])

MAX_RANGE = {Bucket.MINUTE: timedelta(days=2), Bucket.HOUR: timedelta(days=93), Bucket.DAY: timedelta(days=1100)}
EARLIEST = datetime.min.replace(tzinfo=UTC)
LATEST = datetime.max.replace(tzinfo=UTC)

Model = Annotated[str, Query(pattern=NAME_PATTERN, description="Model name")]
# An RFC 3339 date-time with its offset (the document's `format: date-time`), the date and time apart by T (or a
# space, as RFC 3339 allows and Python's str(datetime) writes). Not the other forms pydantic reads as a datetime
# (a bare date, no offset, a number of seconds): the document would not say so, and a client could not know.
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and not RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with its UTC offset, e.g. 2026-01-01T00:00:00Z")
    return value


Time = Annotated[datetime, BeforeValidator(_rfc3339)]
Since = Annotated[Time | None, Query(description="Start (inclusive, RFC 3339); default: 24 h before `until`")]
Until = Annotated[Time | None, Query(description="End (exclusive, RFC 3339); default: now")]
BucketQ = Annotated[Bucket, Query(description="Time bucket: it bounds the range (minute 2 days, hour 93 days, "
                                               "day 1,100 days)")]
# What a report answers 400 to beyond its parameters' schemas: rules between parameters no schema can state.
RANGE_ERRORS = ("`since` not before `until`, or a range longer than the bucket allows (minute 2 days, hour 93 days, "
                "day 1,100 days); the message says which")
REPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": f"Malformed parameter, or {RANGE_ERRORS}"},
}


# One recorded inference: its fields are the record's columns (stack.database.COLUMNS), defined once.
ResultItem = create_model(
    "ResultItem",
    __doc__="One recorded inference.",
    **{c.name: (c.python_type, Field(description=c.description)) for c in COLUMNS},  # type: ignore[call-overload]
)


class ResultsPage(BaseModel):
    """A page of results, newest first; pass `next_cursor` as `cursor` for the next page."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "items": [{
            "request_id": "75e583f0-df26-4ec6-bef2-16278b74fe5b", "created_at": "2026-11-25T09:08:06.294Z",
            "model": "classifier", "model_version": "1.0", "source": "sync", "status": 200, "latency_ms": 81.2,
            "batch_size": 1, "input_sha256": "f87db21040548f49ccb05635778bb59f9fb89e505a67b39809e0ca2e57b53882",
            "input_bytes": 35042, "top_label": "Egyptian cat", "top_score": 0.3737,
            "output": {"predictions": [{"label": "Egyptian cat", "index": 285, "score": 0.3737}]}, "error": None,
        }],
        "next_cursor": "1795597686294000_75e583f0df264ec6bef216278b74fe5b",
    }]})

    items: list[ResultItem]  # type: ignore[valid-type]  # a model built from the record's columns
    next_cursor: str | None = Field(pattern=CURSOR_PATTERN, description="null on the last page")


class Report(BaseModel):
    """Rows of a report, one per time bucket and group."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "classifier", "since": "2026-11-24T09:31:17Z", "until": "2026-11-25T09:31:17Z", "bucket": "hour",
        "rows": [{"bucket": "2026-11-25T09:00:00Z", "label": "Egyptian cat", "count": 42}],
    }]})

    model: str
    since: datetime
    until: datetime
    bucket: Bucket
    rows: list[dict[str, Any]]


def _range(since: datetime | None, until: datetime | None, bucket: Bucket = Bucket.DAY) -> tuple[datetime, datetime]:
    return time_range(since, until, MAX_RANGE[bucket], f"{bucket.value} buckets")


def time_range(since: datetime | None, until: datetime | None, longest: timedelta, what: str) -> tuple[datetime, datetime]:
    """[since, until) in UTC (default: the day before ``until``, itself now by default, from the earliest time at
    most), at most ``longest`` long (``what`` names the limit); anything else is a 400 saying why."""
    until = _aware(until) if until else datetime.now(UTC)
    if since:
        since = _aware(since)
    else:
        since = until - timedelta(days=1) if until - EARLIEST > timedelta(days=1) else EARLIEST
    if since >= until:
        raise BadRequest("`since` must be before `until`")
    if until - since > longest:
        raise BadRequest(f"range too long for {what}: at most {longest.days} days")
    return since, until


def _aware(value: datetime) -> datetime:
    """In UTC (a naive time is taken as UTC), so any offset RFC 3339 allows (±23:59) is fine: PostgreSQL, which
    takes ±15:59, only ever sees UTC. A time that is out of a datetime's range once in UTC (0001-01-01 with a
    positive offset, 9999-12-31 with a negative one) is the earliest or the latest time: for a bound the same."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return EARLIEST if value.year == 1 else LATEST


async def _query(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    return await request.app.state.database.transaction(fn, *args)


@router.get("/v1/results", response_model=ResultsPage, summary="Recorded inferences, newest first")
async def results(
    request: Request,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    version: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    status: Annotated[int | None, Query(ge=100, le=599)] = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, description="`next_cursor` of the previous page")] = None,
    shadow_of: Annotated[uuid.UUID | None, Query(
        description="a live request's id: its candidates' answers (shadowing, replay) instead of served answers")] = None,
) -> ResultsPage:
    """Filter by model, version, status and time range; keyset pagination (stable under inserts).

    Served answers only, unless ``shadow_of`` asks for the candidate answers that mirror one live request.
    """
    f = ResultFilter(model, version, status, _aware(since) if since else None, _aware(until) if until else None,
                     str(shadow_of) if shadow_of else None)
    items, next_cursor = await _query(request, list_results, f, limit, cursor)
    return ResultsPage(items=[ResultItem(**item) for item in items], next_cursor=next_cursor)


def _report(fn: Callable[..., list[dict[str, Any]]], summary: str, path: str) -> None:
    @router.get(path, response_model=Report, summary=summary, name=fn.__name__, responses=REPORT_RESPONSES)
    async def report(request: Request, model: Model, since: Since = None, until: Until = None,
                     bucket: BucketQ = Bucket.HOUR) -> Report:
        start, end = _range(since, until, bucket)
        rows = await _query(request, fn, model, start, end, bucket)
        return Report(model=model, since=start, until=end, bucket=bucket, rows=rows)

    report.__doc__ = fn.__doc__


_report(label_counts, "Predictions per top label per time bucket", "/v1/reports/labels")
_report(latency_percentiles, "Latency p50/p95/p99 per version per time bucket", "/v1/reports/latency")
_report(error_rates, "Requests, 4xx, 5xx and error rate per version per time bucket", "/v1/reports/errors")
