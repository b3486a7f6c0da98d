"""A throwaway PostgreSQL database of a test's own, ``<prefix>_<random>`` on the machine's cluster.

The cluster is SERVING_PG_ADMIN_DSN's (default 127.0.0.1:5432, user postgres). When no PostgreSQL answers there
it is started through the stack's own harness (stack.services.PostgreSQL, as ``make up`` does); when it cannot
be started the test fails saying why: it is never skipped. The database is dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg2
import pytest

from stack.database import Database, migrate
from stack.services import PostgreSQL, StackError
from stack.settings import StackSettings

_start_failed: str | None = None  # why the first attempt to start PostgreSQL failed: not retried by every test


def ensure_postgres() -> None:
    """Start the machine's PostgreSQL with the stack's harness unless it answers; fail the test if it cannot."""
    global _start_failed
    settings = StackSettings()
    server = PostgreSQL(settings)
    if server.is_up():
        return
    if _start_failed is None:
        try:
            server.start()  # pg_ctlcluster (installs postgresql when missing); waits until it accepts connections
        except (StackError, OSError) as exc:
            _start_failed = f"{type(exc).__name__}: {exc}"
        else:
            return
    pytest.fail(f"no PostgreSQL answers at SERVING_PG_ADMIN_DSN ({settings.pg_admin_dsn}) and the stack's harness "
                f"could not start it ({_start_failed}); start it (`make up`) or point SERVING_PG_ADMIN_DSN at one",
                pytrace=False)


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(StackSettings().pg_admin_dsn, connect_timeout=3)
    conn.autocommit = True
    return conn


@contextmanager
def fresh_database(prefix: str = "test", migrated: bool = False) -> Iterator[str]:
    """The DSN of a new database (with the schema's migrations applied when ``migrated``); dropped on exit."""
    ensure_postgres()
    admin = _admin()
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
