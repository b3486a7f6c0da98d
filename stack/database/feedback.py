"""Ground truth in PostgreSQL (table ``feedback``, migration 0006): stored once per served answer, and the
accuracy report's join of feedback with the answers it judges.

Every function runs inside the caller's transaction (``Database.transaction``). Feedback applies to served
answers only (``shadow_of IS NULL``) that were answered (status 200); a candidate's shadow or replay answer was
never given to a client, so nobody can say whether it was right.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg2.extensions
from psycopg2.extras import Json

from stack import accuracy, models

MAX_REPORT_ROWS = 100_000  # answers with a truth one report may score
# A truth arrives after its answer: its received_at (PostgreSQL's clock) is at least the answer's created_at (the
# bridge's clock) less any skew between the two clocks. This bound lets the report start from feedback's index.
CLOCK_SKEW = timedelta(hours=1)


class UnknownPrediction(LookupError):
    """No served answer has this request id (never made, not recorded yet, or a candidate's shadow answer)."""


class NotAnswered(ValueError):
    """The request id names a served request that failed (not 200): there is no answer to judge."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class TruthConflict(ValueError):
    """A different truth is already stored for this request id."""

    def __init__(self, stored: Any) -> None:
        super().__init__(stored)
        self.stored = stored


class TooManyRows(ValueError):
    """The report's range holds more answers with a truth than one report scores."""


@dataclass(frozen=True)
class ServedAnswer:
    """The served inference a truth judges."""

    request_id: str
    created_at: datetime
    model: str
    model_version: str | None
    status: int
    output: Any


@dataclass(frozen=True)
class StoredFeedback:
    """A truth as stored, with the answer it judges; ``created`` is False for an identical repeat."""

    answer: ServedAnswer
    kind: str
    truth: Any
    received_at: datetime
    created: bool


def served_answer(conn: psycopg2.extensions.connection, request_id: str) -> ServedAnswer | None:
    """The served (not shadow) inference recorded under ``request_id``; None when there is none."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT request_id, created_at, model, model_version, status, output FROM inferences"
            " WHERE request_id = %s AND shadow_of IS NULL",
            (request_id,),
        )
        row = cur.fetchone()
    return None if row is None else ServedAnswer(str(row[0]), row[1], row[2], row[3], row[4], row[5])


def store_feedback(conn: psycopg2.extensions.connection, request_id: str, truth: Any) -> StoredFeedback:
    """Validate ``truth`` for the answer's kind and store it once: the same truth again is the stored one.

    Raises UnknownPrediction, accuracy.TruthError, NotAnswered or TruthConflict, in that order of checking.
    """
    answer = served_answer(conn, request_id)
    if answer is None:
        raise UnknownPrediction(request_id)
    kind = models.describe(answer.model).kind
    normalised = accuracy.validate_truth(answer.model, kind, truth)
    if answer.status != 200:
        raise NotAnswered(answer.status)
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO feedback (request_id, model, model_version, truth) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (request_id) DO NOTHING RETURNING received_at",
            (answer.request_id, answer.model, answer.model_version, Json(normalised)),
        )
        inserted = cur.fetchone()
        if inserted is not None:
            return StoredFeedback(answer, kind, normalised, inserted[0], created=True)
        cur.execute("SELECT truth, received_at FROM feedback WHERE request_id = %s", (answer.request_id,))
        existing = cur.fetchone()
    if existing is None:  # cannot be: ON CONFLICT found it, and stored truths are never deleted
        raise RuntimeError(f"feedback for {answer.request_id} conflicted yet is not there")
    stored, received_at = existing
    if stored != normalised:
        raise TruthConflict(stored)
    return StoredFeedback(answer, kind, stored, received_at, created=False)


def accuracy_rows(
    conn: psycopg2.extensions.connection, model: str, since: datetime, until: datetime, bucket: str,
    version: str | None = None, limit: int = MAX_REPORT_ROWS,
) -> list[accuracy.AccuracyRow]:
    """``model``'s answers served in [since, until) that have a truth, scored and aggregated per ``bucket``
    (minute, hour or day of the answer's ``created_at``, UTC) and version; TooManyRows beyond ``limit``."""
    sql = (
        "SELECT date_trunc(%s, i.created_at, 'UTC'), i.model_version, i.output, f.truth"
        " FROM feedback f JOIN inferences i ON i.request_id = f.request_id"
        " WHERE f.model = %s AND f.received_at >= %s"
        " AND i.model = %s AND i.created_at >= %s AND i.created_at < %s AND i.shadow_of IS NULL AND i.status = 200"
    )
    params: list[Any] = [bucket, model, _earlier(since, CLOCK_SKEW), model, since, until]
    if version is not None:
        sql += " AND i.model_version = %s"
        params.append(version)
    sql += " LIMIT %s"
    params.append(limit + 1)
    with conn.cursor() as cur:
        cur.execute(sql, params)
        found = cur.fetchall()
    if len(found) > limit:
        raise TooManyRows(f"more than {limit} answers with feedback in the range")
    judged = (accuracy.Judged(b, v, output, truth) for b, v, output, truth in found)
    return accuracy.aggregate(models.describe(model).kind, judged)


def _earlier(moment: datetime, by: timedelta) -> datetime:
    try:
        return moment - by
    except OverflowError:  # within ``by`` of datetime.min
        return moment.replace(year=1, month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
