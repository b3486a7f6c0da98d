"""A throwaway PostgreSQL database of a test's own: ``recording_test_<random>`` on 127.0.0.1:5432 (user postgres).

Skips the test when no PostgreSQL answers there; the database is dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg2
import pytest

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(ADMIN_DSN, connect_timeout=2)
    conn.autocommit = True
    return conn


@contextmanager
def fresh_database() -> Iterator[str]:
    """The DSN of a new, empty database (migrate it yourself); dropped on exit."""
    try:
        admin = _admin()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    name = f"recording_test_{uuid.uuid4().hex[:12]}"
    with closing(admin) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with closing(_admin()) as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
