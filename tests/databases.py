"""A throwaway PostgreSQL database of a test's own, ``<prefix>_<random>`` on the machine's cluster.

The cluster is SERVING_PG_ADMIN_DSN's (default 127.0.0.1:5432, user postgres). The test is skipped when no
PostgreSQL answers there; the database is dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg2
import pytest

from stack.database import Database, migrate
from stack.settings import StackSettings


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(StackSettings().pg_admin_dsn, connect_timeout=3)
    conn.autocommit = True
    return conn


@contextmanager
def fresh_database(prefix: str = "test", migrated: bool = False) -> Iterator[str]:
    """The DSN of a new database (with the schema's migrations applied when ``migrated``); dropped on exit."""
    try:
        admin = _admin()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at SERVING_PG_ADMIN_DSN ({exc})")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with closing(admin) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    dsn = StackSettings().dsn(name)
    try:
        if migrated:
            db = Database(dsn)
            try:
                migrate(db)
            finally:
                db.close()
        yield dsn
    finally:
        with closing(_admin()) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
