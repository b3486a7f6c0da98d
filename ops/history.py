"""The change history: PostgreSQL ``model_changes`` (the record ``rollback`` reads) and InfluxDB points.

PostgreSQL is required for every command that changes something: it is reached (and migrated, with the
stack's migrations, through the stack's database layer) before TorchServe is touched, so a change is never made that cannot be recorded.
InfluxDB is best effort: a failed write is a warning, never a failed command.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

import psycopg2
import psycopg2.extensions
from psycopg2.extras import Json

from ops.errors import HistoryUnavailable, Refused
from stack.database import Database, DatabaseUnavailable, migrate

T = TypeVar("T")

# The actions that change which version /predictions/{model} serves.
DEFAULT_CHANGES = ("set-default", "rollback")


@dataclass(frozen=True)
class Change:
    """One recorded change (``id`` and ``changed_at`` are set by the store)."""

    model: str
    version: str | None
    action: str
    from_value: str | None
    to_value: str | None
    actor: str
    detail: dict[str, Any] = field(default_factory=dict)
    reverts: int | None = None
    id: int | None = None
    changed_at: datetime | None = None


class History(Protocol):
    """Where changes are recorded and read back (newest first)."""

    def record(self, change: Change) -> Change: ...

    def changes(self, model: str, limit: int | None = None) -> list[Change]: ...

    def transaction(self, fn: Callable[..., T], *args: Any) -> T: ...

    def close(self) -> None: ...


class ChangeSink(Protocol):
    """A best-effort copy of each change (InfluxDB); returns a warning instead of raising."""

    def write(self, change: Change) -> str | None: ...


class MemoryHistory:
    """An in-process history (tests, dry runs)."""

    def __init__(self, changes: list[Change] | None = None) -> None:
        self._changes: list[Change] = list(changes or [])

    def record(self, change: Change) -> Change:
        """Append with the next id and the current time."""
        stored = replace(change, id=len(self._changes) + 1, changed_at=change.changed_at or datetime.now().astimezone())
        self._changes.append(stored)
        return stored

    def changes(self, model: str, limit: int | None = None) -> list[Change]:
        """Newest first."""
        found = [c for c in reversed(self._changes) if c.model == model]
        return found[:limit] if limit else found

    def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """Rollouts and comparisons live in PostgreSQL only."""
        raise HistoryUnavailable("this command needs PostgreSQL (rollouts and comparisons are kept there)")

    def close(self) -> None:
        """Nothing to release."""


class PostgresHistory:
    """``model_changes`` in PostgreSQL (schema: stack/database/migrations), each call under a deadline."""

    COLUMNS = "id, changed_at, actor, model, version, action, from_value, to_value, reverts, detail"

    def __init__(self, dsn: str, connect_timeout_s: int = 3) -> None:
        self._db = Database(dsn, connect_timeout_s, max_connections=1, application_name="servingctl", keep_idle=1)
        try:
            self._db.run(migrate, self._db)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            self._db.close()
            raise HistoryUnavailable(
                f"cannot reach the change history in PostgreSQL ({_safe_dsn(dsn)}): {_reason(exc)}; nothing was "
                "changed. Start it with `make up`, or point --pg-dsn / SERVINGCTL_PG_DSN at it"
            ) from exc

    def _insert(self, conn: psycopg2.extensions.connection, change: Change) -> tuple[Any, ...] | None:
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO model_changes (actor, model, version, action, from_value, to_value, reverts, detail)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id, changed_at",
                (change.actor, change.model, change.version, change.action, change.from_value, change.to_value,
                 change.reverts, Json(change.detail)),
            )
            return cur.fetchone()

    def _select(self, conn: psycopg2.extensions.connection, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def record(self, change: Change) -> Change:
        """Insert one change; returns it with its id and time."""
        try:
            row = self._db.run_transaction(self._insert, change)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            raise HistoryUnavailable(
                f"TorchServe was changed ({change.action} {change.model} {change.version or ''}) but recording it "
                f"in PostgreSQL failed: {_reason(exc)}"
            ) from exc
        assert row is not None
        return replace(change, id=row[0], changed_at=row[1])

    def changes(self, model: str, limit: int | None = None) -> list[Change]:
        """Newest first."""
        sql = f"SELECT {self.COLUMNS} FROM model_changes WHERE model = %s ORDER BY id DESC"
        args: tuple[Any, ...] = (model,)
        if limit:
            sql += " LIMIT %s"
            args += (limit,)
        try:
            rows = self._db.run_transaction(self._select, sql, args)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            raise HistoryUnavailable(f"reading the change history failed: {_reason(exc)}") from exc
        return [
            Change(id=r[0], changed_at=r[1], actor=r[2], model=r[3], version=r[4], action=r[5], from_value=r[6],
                   to_value=r[7], reverts=r[8], detail=r[9] if isinstance(r[9], dict) else json.loads(r[9] or "{}"))
            for r in rows
        ]

    def transaction(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one transaction of the history's database (rollouts, comparisons)."""
        try:
            return self._db.run_transaction(fn, *args)
        except (DatabaseUnavailable, psycopg2.Error) as exc:
            raise HistoryUnavailable(f"PostgreSQL failed: {_reason(exc)}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _reason(exc: Exception) -> str:
    """The first line of what PostgreSQL (or the connection) said."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.reason
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _safe_dsn(dsn: str) -> str:
    """The DSN without a password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


class InfluxChanges:
    """Each change as a point of measurement ``model_changes`` (tags model/version/action), best effort."""

    MEASUREMENT = "model_changes"

    def __init__(self, host: str, port: int, database: str, timeout_s: float) -> None:
        self._where = f"{host}:{port}/{database}"
        self._args = {"host": host, "port": port, "database": database, "timeout": timeout_s, "retries": 1}

    def write(self, change: Change) -> str | None:
        """Write one point timestamped at the change's own time; a warning text when that failed."""
        from influxdb import InfluxDBClient

        point = {
            "measurement": self.MEASUREMENT,
            "tags": {"model": change.model, "version": change.version or "-", "action": change.action},
            "time": (change.changed_at or datetime.now().astimezone()).isoformat(),
            "fields": {
                "from": change.from_value or "",
                "to": change.to_value or "",
                "actor": change.actor,
                "change_id": int(change.id or 0),
            },
        }
        try:
            client = InfluxDBClient(**self._args)
            try:
                client.write_points([point])
            finally:
                client.close()
        except Exception as exc:  # noqa: BLE001 - best effort: any failure is a warning
            return f"recording the change in InfluxDB ({self._where}) failed: {str(exc)[:200] or type(exc).__name__}"
        return None


def rollback_target(model: str, changes: list[Change], current_default: str) -> Change:
    """The default change a rollback undoes: the newest set-default not undone yet (``changes`` newest first).

    Rollbacks stack: after undoing 2.0→3.0, the next rollback undoes 1.0→2.0. The change must have led to
    the version served now; otherwise the default was changed outside servingctl and the history cannot say
    what came before.
    """
    undone = {c.reverts for c in changes if c.action == "rollback" and c.reverts is not None}
    for change in changes:
        if change.action != "set-default" or change.id in undone:
            continue
        if change.to_value != current_default:
            raise Refused(
                f"the history says {model}'s default became {change.to_value} (change {change.id}), but "
                f"TorchServe serves {current_default} now: it was changed outside servingctl; choose the version "
                "yourself with `servingctl set-default`"
            )
        if not change.from_value:
            break
        return change
    raise Refused(
        f"no earlier default of {model} is recorded to roll back to (current default {current_default}); "
        "see `servingctl history`, or use `servingctl set-default`"
    )
