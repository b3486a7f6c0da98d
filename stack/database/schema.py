"""Schema migrations: the SQL files in ``migrations/``, applied in order, once, under an advisory lock."""

from __future__ import annotations

from pathlib import Path

import psycopg2.extensions

from stack.database.pool import Database

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK = 7_201_554  # advisory lock id: several bridges (and servingctl) may start at once


def apply_migrations(conn: psycopg2.extensions.connection) -> list[str]:
    """Apply, in the connection's transaction, the migrations not applied yet; returns those applied.

    The transaction-scoped advisory lock makes a second process wait for the first one's commit, then see
    its versions as done: two processes starting at once never apply a file twice.
    """
    applied: list[str] = []
    with conn.cursor() as cur:
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
    return applied


def migrate(db: Database) -> list[str]:
    """Bring the database's schema up to date (raises DatabaseUnavailable when PostgreSQL is unreachable)."""
    with db.connection() as conn:
        return apply_migrations(conn)
