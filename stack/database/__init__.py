"""PostgreSQL for every component: the schema (migrations), the inference record, and the database layer.

    pool.py        Database: pooled connections, calls on their own threads under a deadline;
                   DatabaseUnavailable for every outage (the bridge maps it to a 503, servingctl to an OpsError)
    schema.py      migrate(): the SQL files in migrations/, once each, under an advisory lock
    inferences.py  InferenceRecord: the one definition of a recorded inference, its COLUMNS (from which the
                   COPY column list, the CSV rows, the results API and the reports derive) and the COPY write
"""

from stack.database.inferences import COLUMN_NAMES, COLUMNS, Column, InferenceRecord, write_inferences
from stack.database.pool import Database, DatabaseUnavailable
from stack.database.schema import MIGRATIONS_DIR, migrate

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "MIGRATIONS_DIR",
    "Column",
    "Database",
    "DatabaseUnavailable",
    "InferenceRecord",
    "migrate",
    "write_inferences",
]
