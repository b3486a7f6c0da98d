"""The schema owner against a real PostgreSQL: migrations equal the record definition, the layer's deadlines.

Each test module run creates its own database ``test_schema_<random>`` on 127.0.0.1:5432 (user postgres,
trust auth) and drops it afterwards; PostgreSQL is started when none answers there, and the tests fail when it
cannot be (tests/databases.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from bridge.api.results import ResultItem
from bridge.db import Database as BridgeDatabase
from bridge.errors import UpstreamUnavailable
from bridge.recorder import RecordsRejected, SinkUnavailable
from bridge.reports import ResultFilter, list_results
from bridge.storage import PostgresSink
from ops.errors import HistoryUnavailable
from ops.history import Change, PostgresHistory
from stack.database import COLUMN_NAMES, COLUMNS, MIGRATIONS_DIR, Database, DatabaseUnavailable, migrate
from tests.databases import fresh_database
from tests.unit.fakes import make_record

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/none"


def _admin() -> psycopg2.extensions.connection:
    conn = psycopg2.connect(ADMIN_DSN, connect_timeout=2)
    conn.autocommit = True
    return conn


@pytest.fixture
def dsn() -> Iterator[str]:
    """A fresh, empty database of this test's own."""
    with fresh_database("test_schema") as dsn:
        yield dsn


@pytest.fixture
def db(dsn: str) -> Iterator[Database]:
    database = Database(dsn)
    migrate(database)
    yield database
    database.close()


def test_the_migrations_create_the_inference_record_as_defined(db: Database) -> None:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns"
            " WHERE table_name = 'inferences' ORDER BY ordinal_position"
        )
        table = cur.fetchall()
    assert table == [(c.name, c.sql_type, c.nullable) for c in COLUMNS]


def test_results_api_fields_are_the_records_columns() -> None:
    assert tuple(ResultItem.model_fields) == COLUMN_NAMES


def test_two_processes_migrating_at_once_apply_each_file_once(dsn: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        database = Database(dsn)
        try:
            barrier.wait()
            results.append(migrate(database))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            database.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    every = sorted(p.stem for p in MIGRATIONS_DIR.glob("*.sql"))
    assert sorted(results, key=len) == [[], every], "one process applies everything, the other nothing"


def test_copy_write_is_exactly_once_and_reads_back_through_the_results_api(db: Database) -> None:
    sink = PostgresSink(db)
    base = datetime.now(UTC)
    records = [replace(make_record(), created_at=base - timedelta(seconds=i)) for i in range(5)]
    records[0] = replace(records[0], output={"text": 'quote " comma , nul \x00 done'}, top_label=None, batch_size=None)
    assert sink.insert(records) == 5
    assert sink.insert(records[:3]) == 0, "a replay inserts nothing"

    with db.connection() as conn:
        rows, cursor = list_results(conn, ResultFilter(model="resnet18"), 10, None)
    assert cursor is None and [r["request_id"] for r in rows] == [r.request_id for r in records]
    first = ResultItem(**rows[0])
    assert first.output == {"text": 'quote " comma , nul  done'} and first.top_label is None
    assert first.created_at == records[0].created_at


def test_the_postgres_sink_speaks_only_the_recorders_exceptions(db: Database) -> None:
    sink = PostgresSink(db)
    with pytest.raises(RecordsRejected):
        sink.write([replace(make_record(), input_sha256="x" * 65)])  # char(64): refused on its merits
    down = PostgresSink(Database(UNREACHABLE_DSN, connect_timeout_s=1))
    with pytest.raises(SinkUnavailable):
        down.write([make_record()])
    down.close()


def test_a_slow_query_is_unavailable_at_the_deadline_in_both_faces(dsn: str) -> None:
    database = BridgeDatabase(dsn, call_timeout_s=0.2)

    def sleep(conn: psycopg2.extensions.connection) -> None:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(1)")

    try:
        with pytest.raises(DatabaseUnavailable) as sync_error:
            database.run_transaction(sleep)
        assert sync_error.value.timed_out
        with pytest.raises(UpstreamUnavailable, match="did not answer in time"):
            asyncio.run(database.transaction(sleep))
        with pytest.raises(UpstreamUnavailable, match="unavailable"):
            asyncio.run(BridgeDatabase(UNREACHABLE_DSN, connect_timeout_s=1).transaction(sleep))
    finally:
        database.close()


def test_servingctl_history_uses_the_stacks_schema(dsn: str) -> None:
    history = PostgresHistory(dsn)
    try:
        stored = history.record(Change("m", "2.0", "set-default", "1.0", "2.0", "alice"))
        assert stored.id is not None and history.changes("m") == [stored]
    finally:
        history.close()
    with pytest.raises(HistoryUnavailable, match="cannot reach the change history"):
        PostgresHistory(UNREACHABLE_DSN, connect_timeout_s=1)


def backend(database: Database) -> int:
    """The PostgreSQL backend pid of the connection ``database`` hands out next (same pid: the same connection)."""
    with database.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
        assert row is not None
        return int(row[0])


def test_connections_are_kept_only_when_asked_and_bounded(dsn: str) -> None:
    keeping, fresh = Database(dsn, max_connections=1, keep_idle=1), Database(dsn, max_connections=1)
    try:
        assert backend(keeping) == backend(keeping), "the recording sink's connection (and staging table) is reused"
        assert backend(fresh) != backend(fresh)
        with keeping.connection(), pytest.raises(DatabaseUnavailable):
            backend(keeping)
    finally:
        keeping.close()
        fresh.close()


def test_a_kept_connection_the_server_ended_is_replaced_without_a_failed_call(dsn: str) -> None:
    keeping = Database(dsn, max_connections=2, keep_idle=2)
    try:
        first = backend(keeping)
        # What a PostgreSQL restart (or an idle-session timeout) does to a kept session: FATAL, then closed.
        with closing(_admin()) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (first,))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # bound on a busy machine: the backend exits at once
            with closing(_admin()) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,))
                if cur.fetchone() == (0,):
                    break
            time.sleep(0.02)
        second = backend(keeping)  # must not raise
        assert second != first and backend(keeping) == second, "a new connection, kept in turn"
    finally:
        keeping.close()
