"""``POST /v1/feedback`` (ground truth for a served answer) and ``GET /v1/reports/accuracy`` (live accuracy).

The truth's shapes, the scores and the figures per kind of answer: :mod:`stack.accuracy` and docs/accuracy.md.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.api.predictions import NAME_PATTERN
from bridge.api.results import BucketQ, Model, Since, Until, _range
from bridge.errors import BadRequest, Conflict, EmptyBody, ErrorBody, NotFound, Unprocessable, UnsupportedMediaType
from bridge.reports import Bucket
from bridge.uploads import read_limited
from stack import accuracy, models
from stack.comparison import Estimate
from stack.database.feedback import (
    NotAnswered,
    StoredFeedback,
    TooManyRows,
    TruthConflict,
    UnknownPrediction,
    accuracy_rows,
    store_feedback,
)

router = APIRouter(tags=["feedback and accuracy"])

MAX_FEEDBACK_BYTES = 64 * 1024  # a larger body → 413
MEASUREMENT = "feedback"  # one InfluxDB point per stored truth

TRUTH_EXAMPLES = {
    "classifier": {"summary": "classifier: the right label", "value": {
        "request_id": "79a5819d-04ca-4da5-bb5e-0b9bb809fead", "truth": "tabby"}},
    "price": {"summary": "price: the price it sold at", "value": {
        "request_id": "8da98530-6b6c-4822-8ebf-ce454e497cfb", "truth": {"price": 92.5}}},
    "similar": {"summary": "similar: the relevant item ids", "value": {
        "request_id": "4775b212-36ed-4be9-a9c2-342c57bd864d", "truth": ["chelsea-01", "chelsea-02", "chelsea-03"]}},
    "json": {"summary": "a model of your own (generic JSON kind): the whole right answer", "value": {
        "request_id": "0c1d4f5e-2a7b-4c3d-9e8f-1a2b3c4d5e6f", "truth": {"label": "cat", "box": [12, 40, 230, 198]}}},
}


class FeedbackIn(BaseModel):
    """The ground truth for one served answer."""

    model_config = ConfigDict(extra="forbid")

    request_id: uuid.UUID = Field(description="The answer's `X-Request-Id`")
    truth: Any = Field(description=(
        "What the answer should have been, by the model's kind: classifier a label (`\"tabby\"` or "
        "`{\"label\": \"tabby\"}`); price a number ≥ 0 (`12.5` or `{\"price\": 12.5}`); similar the relevant item "
        "ids (`[\"chelsea-01\"]` or `{\"items\": [...]}`, at most 1000); any other model the whole answer (JSON)"
    ))


class FeedbackOut(BaseModel):
    """A stored truth and how the answer it judges scored."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "request_id": "79a5819d-04ca-4da5-bb5e-0b9bb809fead", "model": "classifier", "model_version": "1.0",
        "truth": {"label": "tabby"}, "received_at": "2026-12-06T09:49:02.114Z",
        "score": {"top1_correct": 0.0, "top5_correct": 1.0},
    }]})

    request_id: str
    model: str
    model_version: str | None
    truth: Any = Field(description="The truth as stored (its object form: `{label}`, `{price}`, `{items}`)")
    received_at: datetime = Field(description="When the truth was first stored")
    score: dict[str, float] = Field(description=(
        "The answer's scores: classifier `top1_correct`, `top5_correct`; price `abs_error`, `in_interval`; "
        "similar `precision_at_k`; other models `exact` (1 or 0 for right or wrong)"
    ))

    @classmethod
    def of(cls, stored: StoredFeedback) -> FeedbackOut:
        """From the stored truth."""
        answer = stored.answer
        return cls(request_id=answer.request_id, model=answer.model, model_version=answer.model_version,
                   truth=stored.truth, received_at=stored.received_at,
                   score=accuracy.score(stored.kind, answer.output, stored.truth))


FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": FeedbackIn.model_json_schema(), "examples": TRUTH_EXAMPLES}},
    }
}


@router.post(
    "/v1/feedback",
    status_code=201,
    response_model=FeedbackOut,
    summary="Send the ground truth for a served answer",
    openapi_extra=FEEDBACK_BODY,
    responses={
        200: {"model": FeedbackOut, "description": "The same truth was stored before: nothing changed"},
        201: {"model": FeedbackOut, "description": "Stored"},
        404: {"model": ErrorBody, "description": "No served answer has this request id (or it is not recorded yet: "
                                                 "a few seconds after the answer)"},
        408: {"model": ErrorBody, "description": "The body did not arrive in time"},
        409: {"model": ErrorBody, "description": "A different truth is already stored for this request id"},
        413: {"model": ErrorBody, "description": f"Body larger than {MAX_FEEDBACK_BYTES} bytes"},
        415: {"model": ErrorBody, "description": "The body is not JSON (send Content-Type: application/json)"},
        422: {"model": ErrorBody, "description": "The truth has the wrong shape for the model's kind (the message "
                                                 "says which), or the request failed and has no answer to judge"},
    },
)
async def feedback(request: Request) -> JSONResponse:
    """Store the truth for one served answer, once: the same truth again answers 200, a different one 409.

    Each stored truth also goes to InfluxDB as a `feedback` point (tags `model`, `version`; the answer's scores
    as fields) for the dashboards.
    """
    state = request.app.state
    body = await _read_json(request)
    try:
        submitted = FeedbackIn.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    request_id = str(submitted.request_id)
    try:
        stored = await state.database.transaction(store_feedback, request_id, submitted.truth)
    except UnknownPrediction:
        raise NotFound(f"no served prediction with request id {request_id} (an answer is recorded within seconds; "
                       "a candidate's shadow answer takes no feedback)") from None
    except accuracy.TruthError as exc:
        raise Unprocessable(exc.message) from None
    except NotAnswered as exc:
        message = f"request {request_id} failed with status {exc.status}: there is no answer to judge"
        raise Unprocessable(message) from None
    except TruthConflict as exc:
        raise Conflict(f"a different truth is already stored for request {request_id}: "
                       f"{json.dumps(exc.stored)[:300]}; a truth is stored once per request") from None
    out = FeedbackOut.of(stored)
    if stored.created:
        fields = {"count": 1.0, **out.score}
        state.outbox.add(MEASUREMENT, {"model": out.model, "version": out.model_version or "unknown"}, fields)
    return JSONResponse(out.model_dump(mode="json"), status_code=201 if stored.created else 200)


async def _read_json(request: Request) -> Any:
    """The body as JSON, at most MAX_FEEDBACK_BYTES; what is wrong with it is a 4xx saying so."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"the body is {content_type}: send JSON with Content-Type: application/json")
    raw = await read_limited(request, MAX_FEEDBACK_BYTES, request.app.state.settings.request_body_timeout_s)
    if not raw.strip():
        raise EmptyBody('empty body: send {"request_id": "<X-Request-Id of the answer>", "truth": ...}')
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# --- the report ------------------------------------------------------------------------------------------


class AccuracyRow(BaseModel):
    """One version's figures over one time bucket."""

    bucket: datetime = Field(description="Start of the bucket (of the answers' times, UTC)")
    version: str | None
    count: int = Field(description="Served answers with a truth")
    figures: dict[str, Estimate] = Field(description="By name (the report's `figures`); a figure no answer could "
                                                   "give is left out")


class AccuracyReport(BaseModel):
    """Live accuracy of a model per version per time bucket, from the truths sent to /v1/feedback."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "classifier", "kind": "classifier", "version": None, "since": "2026-12-05T10:00:00Z",
        "until": "2026-12-06T10:00:00Z", "bucket": "hour", "figures": ["top1_accuracy", "top5_accuracy"],
        "rows": [{"bucket": "2026-12-06T09:00:00Z", "version": "1.0", "count": 40, "figures": {
            "top1_accuracy": {"value": 0.775, "low": 0.625, "high": 0.877, "n": 40},
            "top5_accuracy": {"value": 0.95, "low": 0.835, "high": 0.986, "n": 40},
        }}],
    }]})

    model: str
    kind: str = Field(description="The model's kind of answer (stack/models.json): classifier, price, similar, json")
    version: str | None = Field(description="The version asked for; null: every version, one row each")
    since: datetime
    until: datetime
    bucket: Bucket
    figures: list[str] = Field(description=(
        "The kind's figures: classifier `top1_accuracy`, `top5_accuracy`; price `mean_abs_error`, "
        "`interval_coverage`; similar `precision_at_k`; other models `exact_match`"
    ))
    rows: list[AccuracyRow]


@router.get("/v1/reports/accuracy", response_model=AccuracyReport,
            summary="Live accuracy per version per time bucket, from the feedback")
async def accuracy_report(
    request: Request,
    model: Model,
    version: Annotated[str | None, Query(pattern=NAME_PATTERN, description="Only this version")] = None,
    since: Since = None,
    until: Until = None,
    bucket: BucketQ = Bucket.HOUR,
) -> AccuracyReport:
    """Served answers of the range (by the time they were answered) that have a truth, scored as in
    `POST /v1/feedback` and aggregated per bucket and version, each figure with its count and 95 % interval.
    At most 100,000 answers per report: narrow the range or name a version beyond that."""
    start, end = _range(since, until, bucket)
    try:
        rows = await request.app.state.database.transaction(accuracy_rows, model, start, end, bucket.value, version)
    except TooManyRows as exc:
        raise BadRequest(f"{exc}: narrow since/until or name a version") from None
    kind = models.describe(model).kind
    return AccuracyReport(
        model=model, kind=kind, version=version, since=start, until=end, bucket=bucket,
        figures=list(accuracy.figure_names(kind)),
        rows=[_row(r) for r in rows],
    )


def _row(row: accuracy.AccuracyRow) -> AccuracyRow:
    return AccuracyRow(bucket=row.bucket, version=row.version, count=row.count, figures=row.figures)
