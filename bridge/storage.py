"""The durable recording sink: inference records into PostgreSQL, exactly once per request id."""

from __future__ import annotations

import logging

import psycopg2

from bridge.recorder import Policy, RecordsRejected, Sink, SinkKeys, SinkUnavailable
from stack.database import Database, DatabaseUnavailable, InferenceRecord, migrate, write_inferences

logger = logging.getLogger(__name__)


class PostgresSink(Sink):
    """``inferences`` via COPY into a staging table + INSERT ... ON CONFLICT DO NOTHING (replays are no-ops)."""

    name = "postgres"
    policy = Policy.DURABLE
    # The names /ping and the dashboards have always used.
    keys = SinkKeys.named("postgres", written="stored", replayed="replayed", rejected="quarantined",
                          failures="store_failures")

    def __init__(self, db: Database) -> None:
        self._db = db
        self._migrated = False

    @classmethod
    def connect(cls, dsn: str, connect_timeout_s: int = 3) -> PostgresSink:
        """A sink on its own connections: one kept open between batches (the staging table lives in it)."""
        return cls(Database(dsn, connect_timeout_s, max_connections=2, keep_idle=1))

    def start(self) -> None:
        """Bring the schema up to date (the bridge's jobs need it too, before any record is written)."""
        try:
            applied = migrate(self._db)
        except DatabaseUnavailable as exc:
            raise SinkUnavailable(f"PostgreSQL: {exc.reason}") from exc
        except psycopg2.Error as exc:
            raise SinkUnavailable(f"PostgreSQL: {exc}") from exc
        if applied:
            logger.info("applied migrations %s", applied)
        self._migrated = True

    def insert(self, records: list[InferenceRecord]) -> int:
        """Write the records in one transaction; returns the rows inserted (duplicates are skipped)."""
        if not self._migrated:
            self.start()  # the bridge may have started while PostgreSQL was down
        try:
            with self._db.connection() as conn:
                return write_inferences(conn, records)
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            raise RecordsRejected(f"PostgreSQL: {exc}") from exc  # refused on its merits: quarantine, not retry
        except DatabaseUnavailable as exc:
            raise SinkUnavailable(f"PostgreSQL: {exc.reason}") from exc
        except psycopg2.Error as exc:
            raise SinkUnavailable(f"PostgreSQL: {exc}") from exc

    def write(self, records: list[InferenceRecord]) -> None:
        """See :meth:`insert`."""
        self.insert(records)

    def close(self) -> None:
        """Close the connections."""
        self._db.close()
