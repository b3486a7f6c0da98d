"""History and reports over the inference record, computed in PostgreSQL.

Every query is bounded by a time range and (where it aggregates) served by the covering index
``inferences_served_cover`` — see ``benchmarks/reports_at_scale.py`` for timings at millions of rows. They count
served answers only (``shadow_of IS NULL``): a candidate's shadow or replay answers are not what clients got.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2.extensions

from bridge.errors import BadRequest
from stack.database import COLUMN_NAMES


class Bucket(str, enum.Enum):
    """Time bucket of a report."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True)
class ResultFilter:
    """Filters of the results history."""

    model: str | None = None
    version: str | None = None
    status: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    shadow_of: str | None = None  # the candidates' answers to this live request instead of served answers


CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{32}$"  # every string it matches is a position: the schema states it
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, request_id: str) -> str:
    """A keyset cursor: the last row's ``created_at`` (microseconds since 1970, PostgreSQL's precision) and
    ``request_id`` (hex), ``<microseconds>_<hex>``; a client passes it back unchanged."""
    return f"{(created_at - _EPOCH) // _MICROSECOND}_{uuid.UUID(request_id).hex}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; anything else is a 400 (the route's pattern already refuses it)."""
    if not _CURSOR.fullmatch(cursor):
        raise BadRequest("invalid cursor: pass next_cursor from the previous page unchanged")
    micros, request_id = cursor.split("_")
    return _EPOCH + int(micros) * _MICROSECOND, str(uuid.UUID(request_id))


def _where(f: ResultFilter) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if f.shadow_of is None:
        clauses.append("shadow_of IS NULL")
    else:
        clauses.append("shadow_of = %s")
        params.append(f.shadow_of)
    for column, value in (("model", f.model), ("model_version", f.version), ("status", f.status)):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if f.since is not None:
        clauses.append("created_at >= %s")
        params.append(f.since)
    if f.until is not None:
        clauses.append("created_at < %s")
        params.append(f.until)
    return clauses, params


def list_results(
    conn: psycopg2.extensions.connection, f: ResultFilter, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of results, newest first, and the cursor of the next page (None at the end)."""
    clauses, params = _where(f)
    if cursor:
        created_at, request_id = decode_cursor(cursor)
        clauses.append("(created_at, request_id) < (%s, %s)")
        params += [created_at, request_id]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (
        f"SELECT {', '.join(COLUMN_NAMES)} FROM inferences {where}"
        " ORDER BY created_at DESC, request_id DESC LIMIT %s"
    )
    with conn.cursor() as cur:
        cur.execute(sql, [*params, limit + 1])
        rows = [dict(zip(COLUMN_NAMES, row)) for row in cur.fetchall()]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["created_at"], str(rows[-1]["request_id"]))
    for row in rows:
        row["request_id"] = str(row["request_id"])
    return rows, next_cursor


def label_counts(
    conn: psycopg2.extensions.connection, model: str, since: datetime, until: datetime, bucket: Bucket
) -> list[dict[str, Any]]:
    """Successful predictions per top label per time bucket for one model."""
    sql = (
        "SELECT date_trunc(%s, created_at, 'UTC') AS bucket, top_label, count(*) FROM inferences"
        " WHERE model = %s AND created_at >= %s AND created_at < %s AND status = 200 AND top_label IS NOT NULL"
        " AND shadow_of IS NULL"
        " GROUP BY 1, 2 ORDER BY 1, 3 DESC"
    )
    with conn.cursor() as cur:
        cur.execute(sql, (bucket.value, model, since, until))
        return [{"bucket": b, "label": label, "count": n} for b, label, n in cur.fetchall()]


def latency_percentiles(
    conn: psycopg2.extensions.connection, model: str, since: datetime, until: datetime, bucket: Bucket
) -> list[dict[str, Any]]:
    """Latency p50/p95/p99 (ms) of successful predictions per version per time bucket."""
    sql = (
        "SELECT date_trunc(%s, created_at, 'UTC') AS bucket, model_version, count(*),"
        " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms)"
        " FROM inferences WHERE model = %s AND created_at >= %s AND created_at < %s AND status = 200"
        " AND shadow_of IS NULL"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    )
    with conn.cursor() as cur:
        cur.execute(sql, (bucket.value, model, since, until))
        return [
            {"bucket": b, "version": v, "count": n, "p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2]}
            for b, v, n, p in cur.fetchall()
        ]


def error_rates(
    conn: psycopg2.extensions.connection, model: str, since: datetime, until: datetime, bucket: Bucket
) -> list[dict[str, Any]]:
    """Requests, client errors (4xx), server errors (5xx) and the error rate per version per bucket."""
    sql = (
        "SELECT date_trunc(%s, created_at, 'UTC') AS bucket, model_version, count(*),"
        " count(*) FILTER (WHERE status BETWEEN 400 AND 499), count(*) FILTER (WHERE status >= 500)"
        " FROM inferences WHERE model = %s AND created_at >= %s AND created_at < %s AND shadow_of IS NULL"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    )
    with conn.cursor() as cur:
        cur.execute(sql, (bucket.value, model, since, until))
        return [
            {"bucket": b, "version": v, "requests": n, "client_errors": c4, "server_errors": c5,
             "error_rate": round((c4 + c5) / n, 6) if n else 0.0}
            for b, v, n, c4, c5 in cur.fetchall()
        ]
