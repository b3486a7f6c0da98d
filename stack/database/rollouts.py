"""Rollouts in PostgreSQL (migration 0006): the active shadow or canary per model, and the rows that judge it.

servingctl starts and ends rollouts; every bridge reads the active ones about once a second, and a bridge that
sees a canary fail its limits ends it (the conditional UPDATE lets exactly one bridge do so and audit it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg2.extensions
from psycopg2.extras import Json

from stack import models
from stack.comparison import Comparison, Pair, compare

MODES = ("shadow", "canary")
ENDINGS = ("stopped", "aborted", "promoted")

_COLUMNS = "id, model, version, live_version, mode, fraction, thresholds, state, started_at, started_by, ended_at, ended_reason"


@dataclass(frozen=True)
class Rollout:
    """One rollout: ``version`` of ``model`` shadowed (``fraction`` of requests) or canaried (of clients)."""

    id: int
    model: str
    version: str
    live_version: str | None
    mode: str
    fraction: float
    thresholds: dict[str, Any] = field(default_factory=dict)
    state: str = "active"
    started_at: datetime | None = None
    started_by: str = ""
    ended_at: datetime | None = None
    ended_reason: str | None = None


def _rollout(row: tuple[Any, ...]) -> Rollout:
    return Rollout(*row)


def active_rollouts(conn: psycopg2.extensions.connection) -> list[Rollout]:
    """Every active rollout (at most one per model)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE state = 'active' ORDER BY model")
        return [_rollout(row) for row in cur.fetchall()]


def active_rollout(conn: psycopg2.extensions.connection, model: str) -> Rollout | None:
    """``model``'s active rollout, if any."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE state = 'active' AND model = %s", (model,))
        row = cur.fetchone()
    return _rollout(row) if row else None


def latest_rollout(conn: psycopg2.extensions.connection, model: str, version: str) -> Rollout | None:
    """The newest rollout of ``version`` of ``model``, active or ended."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM rollouts WHERE model = %s AND version = %s ORDER BY id DESC LIMIT 1",
                    (model, version))
        row = cur.fetchone()
    return _rollout(row) if row else None


def start_rollout(
    conn: psycopg2.extensions.connection, model: str, version: str, live_version: str | None, mode: str,
    fraction: float, thresholds: dict[str, Any], actor: str,
) -> tuple[Rollout, Rollout | None]:
    """Start a rollout (in the connection's transaction); the model's active one, if any, is stopped first.

    Returns the new rollout and the one it replaced.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    replaced = end_rollout(conn, model, "stopped", f"replaced by a {mode} of {version}")
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO rollouts (model, version, live_version, mode, fraction, thresholds, state, started_by)"
            f" VALUES (%s, %s, %s, %s, %s, %s, 'active', %s) RETURNING {_COLUMNS}",
            (model, version, live_version, mode, fraction, Json(thresholds), actor),
        )
        row = cur.fetchone()
    assert row is not None
    return _rollout(row), replaced


def end_rollout(
    conn: psycopg2.extensions.connection, model: str, state: str, reason: str, rollout_id: int | None = None,
) -> Rollout | None:
    """End ``model``'s active rollout (only rollout ``rollout_id``, when given); None when none was active.

    Conditional: of several bridges ending the same canary at once, exactly one gets it back (and audits it).
    """
    if state not in ENDINGS:
        raise ValueError(f"state must be one of {ENDINGS}")
    sql = (f"UPDATE rollouts SET state = %s, ended_at = now(), ended_reason = %s"
           f" WHERE model = %s AND state = 'active'{' AND id = %s' if rollout_id is not None else ''}"
           f" RETURNING {_COLUMNS}")
    args: tuple[Any, ...] = (state, reason, model) + ((rollout_id,) if rollout_id is not None else ())
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
    return _rollout(row) if row else None


def audit(conn: psycopg2.extensions.connection, actor: str, model: str, version: str | None, action: str,
          from_value: str | None, to_value: str | None, detail: dict[str, Any]) -> int:
    """One row of the change history (``servingctl history``) written by a bridge; returns its id."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO model_changes (actor, model, version, action, from_value, to_value, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (actor, model, version, action, from_value, to_value, Json(detail)),
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


# The newest candidate answer per live request (a photo shadowed, then replayed, counts once).
PAIRS_SQL = """
SELECT l.status, l.output, l.latency_ms, c.status, c.output, c.latency_ms FROM (
    SELECT DISTINCT ON (shadow_of) shadow_of, status, output, latency_ms FROM inferences
    WHERE model = %(model)s AND model_version = %(version)s AND shadow_of IS NOT NULL
      AND created_at >= %(since)s AND created_at < %(until)s AND source = ANY(%(sources)s)
    ORDER BY shadow_of, created_at DESC
) c JOIN inferences l ON l.request_id = c.shadow_of
ORDER BY l.created_at DESC LIMIT %(limit)s
"""


PAIR_SOURCES: dict[str, tuple[str, ...]] = {"all": ("shadow", "replay"), "shadow": ("shadow",), "replay": ("replay",)}
"""Which candidate answers a comparison takes: shadow copies, replayed photos, or both."""


def candidate_comparison(
    conn: psycopg2.extensions.connection, model: str, version: str, since: datetime, until: datetime,
    source: str = "all",
) -> Comparison:
    """``version``'s pairs recorded in [since, until) from ``source`` (PAIR_SOURCES), compared by the model's kind:
    the one comparison the report, ``servingctl compare|promote|replay`` give."""
    pairs = candidate_pairs(conn, model, version, since, until, PAIR_SOURCES[source])
    return compare(models.describe(model).kind, pairs)


def candidate_pairs(
    conn: psycopg2.extensions.connection, model: str, version: str, since: datetime, until: datetime,
    sources: tuple[str, ...] = ("shadow", "replay"), limit: int = 100_000,
) -> list[Pair]:
    """The live/candidate pairs of ``version`` recorded in [since, until), newest live requests first."""
    with conn.cursor() as cur:
        cur.execute(PAIRS_SQL, {"model": model, "version": version, "since": since, "until": until,
                                "sources": list(sources), "limit": limit})
        return [Pair(*row) for row in cur.fetchall()]


@dataclass(frozen=True)
class WindowStats:
    """One version's served, uncached answers over a canary's window."""

    requests: int
    server_errors: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        """Share of 5xx answers."""
        return self.server_errors / self.requests if self.requests else 0.0


def window_stats(conn: psycopg2.extensions.connection, model: str, window_s: float,
                 started_at: datetime | None = None) -> dict[str | None, WindowStats]:
    """Per version of ``model``: served requests, 5xx and the p99 latency of its 200s over the last ``window_s``
    (and not before ``started_at``: a canary started again is not judged by its predecessor's traffic)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT model_version, count(*), count(*) FILTER (WHERE status >= 500),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE status = 200)"
            " FROM inferences WHERE model = %s AND created_at >= now() - make_interval(secs => %s)"
            " AND created_at >= coalesce(%s, '-infinity'::timestamptz)"
            " AND shadow_of IS NULL AND source <> 'cache' GROUP BY 1",
            (model, window_s, started_at),
        )
        return {version: WindowStats(int(n), int(errors), p99) for version, n, errors, p99 in cur.fetchall()}


@dataclass(frozen=True)
class CanaryLimits:
    """When a canary ends itself: over the last ``window_s``, once the candidate has ``min_requests``, its 5xx rate
    above the live version's by more than ``max_error_rate_delta``, or (both with ``min_requests``) its p99 latency
    above ``max_p99_ratio`` × the live version's."""

    max_error_rate_delta: float = 0.05
    max_p99_ratio: float = 2.0
    window_s: float = 60.0
    min_requests: int = 20

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CanaryLimits:
        """From a rollout's ``thresholds`` (missing keys: the defaults)."""
        known = {k: data[k] for k in ("max_error_rate_delta", "max_p99_ratio", "window_s", "min_requests") if k in data}
        return cls(**known)

    def breach(self, live: WindowStats | None, candidate: WindowStats | None) -> str | None:
        """Why the canary must end now, or None."""
        if candidate is None or candidate.requests < self.min_requests:
            return None
        live_rate = live.error_rate if live is not None and live.requests else 0.0
        if candidate.error_rate - live_rate > self.max_error_rate_delta:
            return (f"server errors {100 * candidate.error_rate:.1f} % of {candidate.requests} requests against "
                    f"{100 * live_rate:.1f} % live over {self.window_s:g} s (margin {100 * self.max_error_rate_delta:g} %)")
        if (live is not None and live.requests >= self.min_requests and live.p99_ms and candidate.p99_ms
                and candidate.p99_ms > self.max_p99_ratio * live.p99_ms):
            return (f"p99 latency {candidate.p99_ms:.0f} ms against {live.p99_ms:.0f} ms live over {self.window_s:g} s "
                    f"(at most {self.max_p99_ratio:g}×)")
        return None
