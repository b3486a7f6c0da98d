"""The inference record: its one definition, and its fast write path into PostgreSQL.

The COPY column list, the CSV rows, the bridge's results API model and the reports' columns all derive
from :class:`InferenceRecord`. The DDL stays in ``migrations/`` (0001, 0004 and 0006); a test migrates a fresh
database and checks that the table's columns, types and nullability equal :data:`COLUMNS`.
"""

from __future__ import annotations

import io
import json
import math
import operator
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import psycopg2.extensions

TABLE = "inferences"


def _sql(sql_type: str, description: str | None = None) -> dict[str, str | None]:
    """A column's metadata: its type as ``information_schema.columns.data_type`` names it, and its API text."""
    return {"sql_type": sql_type, "description": description}


@dataclass(frozen=True)
class InferenceRecord:
    """Everything kept about one inference; ``request_id`` makes replays idempotent."""

    request_id: str = field(metadata=_sql("uuid"))
    created_at: datetime = field(metadata=_sql("timestamp with time zone"))
    model: str = field(metadata=_sql("text"))
    model_version: str | None = field(metadata=_sql("text"))
    source: str = field(metadata=_sql("text", "`sync` (a prediction) or `job`"))
    status: int = field(metadata=_sql("smallint"))
    latency_ms: float = field(metadata=_sql("double precision"))
    batch_size: int | None = field(metadata=_sql("integer"))
    input_sha256: str = field(metadata=_sql("character"))
    input_bytes: int = field(metadata=_sql("integer"))
    top_label: str | None = field(metadata=_sql("text"))
    top_score: float | None = field(metadata=_sql("double precision"))
    output: Any = field(metadata=_sql("jsonb"))
    error: str | None = field(metadata=_sql("text"))
    shadow_of: str | None = field(default=None, metadata=_sql(
        "uuid", "for a candidate's answer (shadowing, replay): the live request it mirrors; null for a served answer"))

    def to_json(self) -> str:
        """One JSON line (for the spool)."""
        # A shallow dict: dataclasses.asdict deep-copies ``output`` first, 5x the cost of the whole line.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["created_at"] = self.created_at.isoformat()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> InferenceRecord:
        """Inverse of :meth:`to_json`."""
        data = json.loads(line)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


@dataclass(frozen=True)
class Column:
    """One column of the inference record."""

    name: str
    python_type: Any
    sql_type: str
    nullable: bool
    description: str | None


def _nullable(hint: Any) -> bool:
    return hint is Any or (isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint))


def _columns() -> tuple[Column, ...]:
    hints = typing.get_type_hints(InferenceRecord)
    return tuple(
        Column(f.name, hints[f.name], f.metadata["sql_type"], _nullable(hints[f.name]), f.metadata["description"])
        for f in fields(InferenceRecord)
    )


COLUMNS: tuple[Column, ...] = _columns()
COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)


# What PostgreSQL cannot hold, and what is stored instead (docs/recording.md, "Strings PostgreSQL cannot hold").
# text and jsonb cannot hold U+0000 (removed); UTF-8 cannot encode a lone surrogate (U+FFFD; a surrogate *pair*
# becomes the character it encodes); JSON has no NaN/Infinity (null). Columns in a btree index hold at most
# ~2.7 kB per row: their values are cut at a character boundary and end with "…".
INDEXED_TEXT_BYTES = {"model": 256, "model_version": 256, "top_label": 1024}
_INT_RANGES = {"smallint": (-(2**15), 2**15 - 1), "integer": (-(2**31), 2**31 - 1)}
_UNHOLDABLE = re.compile("[\x00\ud800-\udfff]")
_ELLIPSIS = "…"
_VALUES = operator.attrgetter(*COLUMN_NAMES)
_FAST_TEXT_CHARS = min(INDEXED_TEXT_BYTES.values()) // 4  # 4 bytes per character at most in UTF-8


def _holdable_text(value: str, found: set[str]) -> str:
    """``value`` without NUL, its surrogate pairs joined and its lone surrogates replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "")
        found.add("NUL removed")
    if _UNHOLDABLE.search(value):
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        found.add("surrogates joined or replaced by U+FFFD")
    return value


def _holdable_json(value: Any, found: set[str]) -> Any:
    """``value`` with every string (keys too) made holdable and every non-finite float made null."""
    if isinstance(value, str):
        return _holdable_text(value, found)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found.add("NaN/Infinity made null")
        return None
    if isinstance(value, dict):
        return {_holdable_text(k, found) if isinstance(k, str) else k: _holdable_json(v, found)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_holdable_json(v, found) for v in value]
    return value


def _json_text(value: Any, column: str, changes: list[str]) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError):  # NaN/Infinity, or not JSON at all
        text = None
    # json.dumps escapes U+0000 as \u0000 (which jsonb refuses) and leaves lone surrogates raw.
    if text is not None and "\\u0000" not in text and not _UNHOLDABLE.search(text):
        return text
    found: set[str] = set()
    text = json.dumps(_holdable_json(value, found), ensure_ascii=False, allow_nan=False, default=str)
    if found:
        changes.append(f"{column}: {', '.join(sorted(found))}")
    return text


def _text(value: object, column: str, changes: list[str]) -> str:
    found: set[str] = set()
    text = _holdable_text(value if isinstance(value, str) else str(value), found)
    if found:
        changes.append(f"{column}: {', '.join(sorted(found))}")
    limit = INDEXED_TEXT_BYTES.get(column)
    if limit is not None and len(text) * 4 > limit:
        encoded = text.encode()
        if len(encoded) > limit:
            cut = limit - len(_ELLIPSIS.encode())
            text = encoded[:cut].decode("utf-8", "ignore") + _ELLIPSIS
            changes.append(f"{column}: cut from {len(encoded)} to {limit} bytes (an indexed column)")
    return text


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def holdable_row(record: InferenceRecord) -> tuple[str, list[str]]:
    """One record as a CSV line for COPY, and what had to change for PostgreSQL to hold it (usually nothing).

    NULL is an unquoted empty field, every text value is quoted (so quotes, commas, tabs, newlines,
    backslashes and a lone ``\\.`` are data).
    """
    changes: list[str] = []
    fields_: list[str] = []
    for column, value in zip(COLUMNS, _VALUES(record)):
        sql_type = column.sql_type
        if value is None:
            fields_.append("")
        elif sql_type == "jsonb":
            fields_.append(_quoted(_json_text(value, column.name, changes)))
        elif sql_type == "timestamp with time zone":
            fields_.append(_quoted(value.isoformat()))
        elif sql_type == "double precision":
            number = float(value)
            if math.isfinite(number):
                fields_.append(repr(number))
            else:  # PostgreSQL could hold it, but JSON (the results API) cannot
                fields_.append("")
                changes.append(f"{column.name}: {number} stored as NULL")
        elif sql_type in _INT_RANGES:
            low, high = _INT_RANGES[sql_type]
            if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
                fields_.append(str(value))
            elif column.nullable:
                fields_.append("")
                changes.append(f"{column.name}: {value!r} out of the {sql_type} range, stored as NULL")
            else:
                fields_.append(str(value))  # PostgreSQL refuses it: the record is quarantined
        elif type(value) is str and len(value) <= _FAST_TEXT_CHARS and not _UNHOLDABLE.search(value):
            fields_.append(_quoted(value))  # the usual case: short, clean text
        else:
            fields_.append(_quoted(_text(value, column.name, changes)))
    return ",".join(fields_), changes


def csv_row(record: InferenceRecord) -> str:
    """One record as a CSV line for COPY (see :func:`holdable_row`)."""
    return holdable_row(record)[0]


def write_inferences(
    conn: psycopg2.extensions.connection,
    records: list[InferenceRecord],
    altered: Callable[[InferenceRecord, list[str]], None] | None = None,
) -> int:
    """Insert ``records`` in the connection's transaction; duplicates (replays) are ignored. Returns rows inserted.

    The batch is COPY'd into a per-session staging table, then moved with one INSERT ... SELECT ...
    ON CONFLICT DO NOTHING: ~2x the rows/s of a multi-row INSERT (measured, benchmarks/throughput).
    ``altered(record, changes)`` is told about each record PostgreSQL could not hold as it was.
    """
    columns = ", ".join(COLUMN_NAMES)
    lines = []
    for record in records:
        line, changes = holdable_row(record)
        if changes and altered is not None:
            altered(record, changes)
        lines.append(line + "\n")
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {TABLE}_staging (LIKE {TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        data = io.StringIO("".join(lines))
        cur.copy_expert(f"COPY {TABLE}_staging ({columns}) FROM STDIN WITH (FORMAT csv)", data)
        cur.execute(
            f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {TABLE}_staging ON CONFLICT (request_id) DO NOTHING"
        )
        return int(cur.rowcount)
