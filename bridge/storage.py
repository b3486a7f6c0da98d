"""The durable recording sink: inference records into PostgreSQL, exactly once per request id."""

from __future__ import annotations

import logging

import psycopg2

from bridge.recorder import Policy, RecordsRejected, Sink, SinkKeys, SinkUnavailable
from stack.database import Database, DatabaseUnavailable, InferenceRecord, migrate, write_inferences

logger = logging.getLogger(__name__)


def _refused_on_its_merits(error: BaseException | None) -> bool:
    """An error PostgreSQL answered about the data (class 54: e.g. an index row too large), not an outage.

    psycopg2 maps these to OperationalError, which the database layer reports as an outage; retrying the
    same records would block the journal behind them forever.
    """
    code = getattr(error, "pgcode", None)
    return isinstance(code, str) and code.startswith("54")


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
        self.altered = 0  # records stored with what PostgreSQL cannot hold replaced (docs/recording.md)

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
        altered: list[tuple[InferenceRecord, list[str]]] = []
        try:
            with self._db.connection() as conn:
                inserted = write_inferences(conn, records, lambda record, changes: altered.append((record, changes)))
        except (psycopg2.DataError, psycopg2.IntegrityError) as exc:
            raise RecordsRejected(f"PostgreSQL: {exc}") from exc  # refused on its merits: quarantine, not retry
        except DatabaseUnavailable as exc:
            if _refused_on_its_merits(exc.__cause__):
                raise RecordsRejected(f"PostgreSQL: {exc.reason}") from exc
            raise SinkUnavailable(f"PostgreSQL: {exc.reason}") from exc
        except psycopg2.Error as exc:
            raise SinkUnavailable(f"PostgreSQL: {exc}") from exc
        except (ValueError, TypeError, RecursionError) as exc:  # a record that cannot even be written out
            raise RecordsRejected(f"record not writable: {exc!r}") from exc
        # Logged only once committed: a batch that failed is retried (or split), and reported then.
        for record, changes in altered:
            logger.warning("record %s stored altered (PostgreSQL cannot hold it as it was): %s",
                           record.request_id, "; ".join(changes))
        self.altered += len(altered)
        return inserted

    def counts(self) -> dict[str, int]:
        """Records stored altered (``altered`` in /ping's ``recording``)."""
        return {"altered": self.altered}

    def write(self, records: list[InferenceRecord]) -> None:
        """See :meth:`insert`."""
        self.insert(records)

    def close(self) -> None:
        """Close the connections."""
        self._db.close()
