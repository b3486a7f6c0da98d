"""PostgreSQL: schema migrations and batched, idempotent writes of inference records."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import psycopg2
import psycopg2.extensions

from bridge.records import InferenceRecord

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 7_201_554  # advisory lock id: several bridges may start at once

COLUMNS = (
    "request_id", "created_at", "model", "model_version", "source", "status", "latency_ms", "batch_size",
    "input_sha256", "input_bytes", "top_label", "top_score", "output", "error",
)


class PostgresStore:
    """One connection per store, used from one writer thread; reconnects after any failure."""

    def __init__(self, dsn: str, connect_timeout_s: int = 3) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg2.extensions.connection | None = None
        self._migrated = False

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(
                self._dsn,
                connect_timeout=self._connect_timeout_s,
                application_name="serving-bridge",
                options="-c statement_timeout=10000",
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=2,
            )
        return self._conn

    def close(self) -> None:
        """Close the connection, if any."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def migrate(self) -> list[str]:
        """Apply the SQL files in ``migrations/`` not applied yet, in order; returns those applied."""
        conn = self._connection()
        applied: list[str] = []
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in cur.fetchall()}
                for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
                    if path.stem in done:
                        continue
                    cur.execute(path.read_text())
                    cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
                    applied.append(path.stem)
        except psycopg2.Error:
            self.close()
            raise
        self._migrated = True
        return applied

    def write(self, records: list[InferenceRecord]) -> int:
        """Insert ``records`` in one transaction; duplicates (replays) are ignored. Returns rows inserted.

        The batch is COPY'd into a per-session staging table, then moved with one INSERT ... SELECT ...
        ON CONFLICT DO NOTHING: ~2x the rows/s of a multi-row INSERT (measured, benchmarks/throughput).
        """
        if not self._migrated:
            self.migrate()  # the bridge may have started while PostgreSQL was down
        conn = self._connection()
        columns = ", ".join(COLUMNS)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS inferences_staging"
                    " (LIKE inferences INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                cur.copy_expert(
                    f"COPY inferences_staging ({columns}) FROM STDIN WITH (FORMAT csv)", _csv(records)
                )
                cur.execute(
                    f"INSERT INTO inferences ({columns}) SELECT {columns} FROM inferences_staging"
                    " ON CONFLICT (request_id) DO NOTHING"
                )
                return cur.rowcount
        except psycopg2.Error:
            self.close()
            raise


def _csv(records: list[InferenceRecord]) -> io.StringIO:
    """The records as CSV for COPY: NULL is an unquoted empty field, every text value is quoted."""
    lines = []
    for r in records:
        values = (
            r.request_id, r.created_at.isoformat(), r.model, r.model_version, r.source, r.status, r.latency_ms,
            r.batch_size, r.input_sha256, r.input_bytes, r.top_label, r.top_score,
            _dumps(r.output) if r.output is not None else None, r.error,
        )
        lines.append(",".join(_csv_field(v) for v in values))
    return io.StringIO("\n".join(lines) + "\n")


def _csv_field(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return '"' + str(value).replace("\x00", "").replace('"', '""') + '"'


def _dumps(value: object) -> str:
    # PostgreSQL's jsonb rejects \u0000; a model output must never make a record unwritable.
    return json.dumps(value).replace("\\u0000", "")
