"""The results cache never makes a prediction slower: a slow database is a miss."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from bridge.app import create_app
from bridge.cache import ResultCache
from bridge.recorder import Recorder
from bridge.settings import Settings
from bridge.spool import Spool
from stack.database import Database
from tests.unit.fakes import STOCK_ANSWER, FlakyStore, as_jsonb
from tests.unit.test_bridge_app import PHOTO, PREDICTION, FakeTorchServe, write_keys


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
        # What it protects: a lookup costs its 0.05 s deadline, never the frozen database's 5 s hang.
        assert time.perf_counter() - started < 0.5, "a frozen database made a prediction wait for it"
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


class RememberingCache:
    """A cache that has every photo: any lookup made is a hit (so a bypass is visible as no lookup at all)."""

    def __init__(self) -> None:
        self.lookups = 0

    async def lookup(self, sha256: str, model: str, version: str) -> Any:
        self.lookups += 1
        return {"predictions": [{"label": "remembered", "score": 1.0}], "model": {"name": model, "version": version}}


def test_requests_with_parameters_bypass_the_cache_and_really_run(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    torchserve = FakeTorchServe(key_file)
    recorder = Recorder([FlakyStore()], Spool(tmp_path / "spool"))
    settings = Settings(torchserve_key_file=key_file, spool_dir=tmp_path / "spool", cache=True, telemetry_interval_s=0)
    app = create_app(settings, recorder=recorder, torchserve_transport=httpx.MockTransport(torchserve), run_jobs=False)
    cache = RememberingCache()

    def predictions_run() -> int:
        return sum(r.url.path.startswith("/predictions/") for r in torchserve.requests)

    with TestClient(app) as client:
        app.state.predictions._cache = cache  # the real one would ask PostgreSQL
        plain = client.put("/predictions/similar/1.0", content=PHOTO)
        assert plain.headers["x-cache"] == "HIT" and predictions_run() == 0 and cache.lookups == 1

        for attempt in range(2):
            with_k = client.put("/predictions/similar/1.0?k=3", content=PHOTO)
            assert with_k.status_code == 200 and "x-cache" not in with_k.headers, attempt
            assert with_k.json() == PREDICTION and with_k.headers["x-batch-size"] == "3", "the model's own answer"
        form = client.post("/predictions/similar/1.0", files={"file": ("a.jpg", PHOTO, "image/jpeg"), "k": (None, "2")})
        assert form.status_code == 200 and "x-cache" not in form.headers
        assert predictions_run() == 3, "each request with parameters ran the model"
        assert cache.lookups == 1, "and none of them even looked in the cache"
    assert recorder.wait_idle(5)


class JsonbCache:
    """The cache as it reads PostgreSQL: the newest 200 of the photo on the model version, as jsonb gives it back."""

    def __init__(self, store: FlakyStore) -> None:
        self.store = store
        self.lookups: list[tuple[str, str]] = []

    async def lookup(self, sha256: str, model: str, version: str) -> Any:
        self.lookups.append((model, version))
        rows = [r for r in self.store.rows.values()
                if (r.input_sha256, r.model, r.model_version, r.status) == (sha256, model, version, 200)]
        return as_jsonb(max(rows, key=lambda r: r.created_at).output) if rows else None


def test_an_answer_that_names_no_version_is_a_hit_on_the_default_as_the_model_ordered_it(tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    torchserve = FakeTorchServe(key_file)
    torchserve.default_version = "3.0"
    torchserve.handler = lambda request: httpx.Response(200, json=STOCK_ANSWER)
    store = FlakyStore()
    recorder = Recorder([store], Spool(tmp_path / "spool"))
    settings = Settings(torchserve_key_file=key_file, spool_dir=tmp_path / "spool", cache=True, telemetry_interval_s=0)
    app = create_app(settings, recorder=recorder, torchserve_transport=httpx.MockTransport(torchserve), run_jobs=False)

    with TestClient(app) as client:
        app.state.predictions._cache = cache = JsonbCache(store)
        first = client.put("/predictions/theirs", content=PHOTO)
        assert "x-cache" not in first.headers and first.headers["x-model-version"] == "3.0"
        assert recorder.wait_idle(5)
        again = client.put("/predictions/theirs", content=PHOTO)
        assert again.headers["x-cache"] == "HIT" and again.headers["x-model-version"] == "3.0"
        assert list(again.json().items()) == list(STOCK_ANSWER.items()), "highest first, and no 'cached' label"
        assert cache.lookups == [("theirs", "3.0")] * 2

        torchserve.handler = torchserve.predict_ok  # ours: the answer names 2.0 and is marked when served again
        assert "x-cache" not in client.put("/predictions/m/2.0", content=PHOTO).headers
        assert recorder.wait_idle(5)
        ours = client.put("/predictions/m/2.0", content=PHOTO)
        assert ours.headers["x-cache"] == "HIT" and ours.json() == {**PREDICTION, "cached": True}
    assert recorder.wait_idle(5)
    hit = [r for r in store.rows.values() if r.source == "cache" and r.model == "theirs"]
    assert [(r.model_version, r.top_label, r.output) for r in hit] == [("3.0", "warm", STOCK_ANSWER)]
