"""The results cache never makes a prediction slower: a slow database is a miss."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bridge.cache import ResultCache
from stack.database import Database


class FrozenDatabase(Database):
    """The database layer over a PostgreSQL whose queries hang until released (like a SIGSTOPped one)."""

    def __init__(self) -> None:
        super().__init__("postgresql://unused")
        self.release = threading.Event()
        self.queries = 0

    @contextmanager
    def connection(self) -> Iterator[Any]:
        self.queries += 1
        self.release.wait(5)
        raise ConnectionError("frozen")
        yield  # pragma: no cover


class AnsweringDatabase(Database):
    def __init__(self) -> None:
        super().__init__("postgresql://unused")

    @contextmanager
    def connection(self) -> Iterator[Any]:
        class Cursor:
            def __enter__(self) -> Cursor:  # noqa: PYI034 - a local stand-in, not a base class
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def execute(self, sql: str, params: tuple[Any, ...]) -> None:
                self.params = params

            def fetchone(self) -> tuple[Any, ...]:
                return ({"predictions": [{"label": "tabby", "score": 0.9}]},)

        class Conn:
            def cursor(self) -> Cursor:
                return Cursor()

        yield Conn()


def test_a_frozen_database_is_a_fast_miss_and_stuck_lookups_are_not_queued_behind() -> None:
    db = FrozenDatabase()
    cache = ResultCache(db, timeout_s=0.05, max_in_flight=2)

    async def run() -> list[Any]:
        started = time.perf_counter()
        results = await asyncio.gather(*(cache.lookup("ab" * 32, "m", "1.0") for _ in range(5)))
        assert time.perf_counter() - started < 0.5
        return results

    try:
        assert asyncio.run(run()) == [None] * 5
        assert db.queries == 2, "only max_in_flight lookups may be stuck on the database at once"
        assert cache.misses == 5 and cache.hits == 0
    finally:
        db.release.set()
        db.close()


def test_a_recorded_answer_is_a_hit() -> None:
    db = AnsweringDatabase()
    cache = ResultCache(db, timeout_s=1.0)
    try:
        output = asyncio.run(cache.lookup("ab" * 32, "m", "1.0"))
        assert output["predictions"][0]["label"] == "tabby" and cache.hits == 1
    finally:
        db.close()
