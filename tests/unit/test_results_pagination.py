"""``/v1/results`` keyset pagination and ``/v1/reports/*`` against rows of known values in a real PostgreSQL.

Thousands of rows share each timestamp, so only the request id orders them: every page boundary falls inside
a tie. Rows are written through the real PostgresSink (COPY); the API is called through the app.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bridge.app import create_app
from bridge.recorder import Recorder
from bridge.settings import Settings
from bridge.spool import Spool
from bridge.storage import PostgresSink
from stack.database import Database, InferenceRecord, migrate
from tests.databases import fresh_database
from tests.unit.fakes import FlakyStore, make_record
from tests.unit.test_bridge_app import FakeTorchServe, write_keys

T0 = datetime(2026, 1, 5, 10, 0, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(minutes=20)  # same hour as T0
T2 = T0 + timedelta(minutes=70)  # the next hour
COUNTS = {T0: 2000, T1: 1000, T2: 500}
STATUSES = [200] * 7 + [400, 404, 503, 504]
LABELS = ["tabby", "tiger cat", "espresso"]
PAGE = 97  # not a divisor of any group: pages end inside ties


def _rows() -> list[InferenceRecord]:
    rng = random.Random(12)
    rows = []
    for created_at, n in COUNTS.items():
        for _ in range(n):
            status = rng.choice(STATUSES)
            rows.append(replace(
                make_record(), request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), created_at=created_at,
                model=rng.choice(["m1", "m2"]), model_version=rng.choice(["1.0", "2.0"]), status=status,
                latency_ms=round(rng.lognormvariate(3, 0.6), 3),
                top_label=rng.choice(LABELS) if status == 200 else None, error=None if status == 200 else "failed",
            ))
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp_path: Path = tmp_path_factory.mktemp("pagination")
    with fresh_database("recording_test") as dsn:
        database = Database(dsn)
        migrate(database)
        with database.connection() as conn, conn.cursor() as cur:
            # A server whose time zone is not UTC (and not a whole hour off): buckets must still be UTC's.
            cur.execute("SELECT current_database()")
            (name,) = cur.fetchone() or ("",)
            cur.execute(f"ALTER DATABASE {name} SET TimeZone TO 'Asia/Kolkata'")
        database.close()
        sink = PostgresSink.connect(dsn)
        assert sink.insert(ROWS) == len(ROWS)
        sink.close()
        key_file = tmp_path / "key_file.json"
        write_keys(key_file)
        recorder = Recorder([FlakyStore()], Spool(tmp_path / "spool"))
        settings = Settings(torchserve_key_file=key_file, spool_dir=tmp_path / "spool", pg_dsn=dsn, cache=False,
                            telemetry_interval_s=0)
        app = create_app(settings, recorder=recorder,
                         torchserve_transport=httpx.MockTransport(FakeTorchServe(key_file)), run_jobs=False)
        with TestClient(app) as test_client:
            yield test_client


def _key(r: InferenceRecord) -> tuple[datetime, uuid.UUID]:
    return r.created_at, uuid.UUID(r.request_id)


FILTERS: list[dict[str, Any]] = [
    {},
    {"model": "m1"},
    {"version": "2.0"},
    {"status": 400},
    {"since": T1},
    {"until": T1},
    {"since": T1, "until": T2},
    {"model": "m2", "version": "1.0", "status": 200, "since": T0, "until": T2},
]


def _matches(r: InferenceRecord, f: dict[str, Any]) -> bool:
    return (
        f.get("model", r.model) == r.model and f.get("version", r.model_version) == r.model_version
        and f.get("status", r.status) == r.status and r.created_at >= f.get("since", r.created_at)
        and ("until" not in f or r.created_at < f["until"])
    )


@pytest.mark.parametrize("query", FILTERS, ids=lambda f: ",".join(f) or "no filter")
def test_keyset_pages_return_every_row_exactly_once_in_order(client: TestClient, query: dict[str, Any]) -> None:
    expected = [r.request_id for r in sorted((r for r in ROWS if _matches(r, query)), key=_key, reverse=True)]
    assert len(expected) > PAGE, "the filter must span several pages"
    params = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in query.items()}
    seen: list[str] = []
    cursor = None
    for _ in range(len(ROWS) // PAGE + 2):  # bound: a cursor that never ends is a failure, not a hang
        page = client.get("/v1/results", params={**params, "limit": PAGE, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [item["request_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a row came back twice"
    assert seen == expected, "every matching row, newest first, request id breaking ties"


def _percentile(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


def _hour(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


RANGE = {"model": "m1", "since": (T0 - timedelta(hours=1)).isoformat(), "until": (T0 + timedelta(hours=3)).isoformat(),
         "bucket": "hour"}


def _report(client: TestClient, name: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/reports/{name}", params=RANGE)
    assert response.status_code == 200, response.text
    return [{**row, "bucket": datetime.fromisoformat(row["bucket"])} for row in response.json()["rows"]]


def test_latency_percentiles_equal_a_reference_from_the_same_rows(client: TestClient) -> None:
    groups: dict[tuple[datetime, str | None], list[float]] = defaultdict(list)
    for r in ROWS:
        if r.model == "m1" and r.status == 200:
            groups[(_hour(r.created_at), r.model_version)].append(r.latency_ms)
    rows = _report(client, "latency")
    assert [(row["bucket"], row["version"]) for row in rows] == sorted(groups)
    for row in rows:
        latencies = groups[(row["bucket"], row["version"])]
        assert row["count"] == len(latencies)
        for q, name in ((0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")):
            assert row[name] == pytest.approx(_percentile(latencies, q), rel=1e-12), (row, name)


def test_error_rates_equal_a_reference_from_the_same_rows(client: TestClient) -> None:
    groups: dict[tuple[datetime, str | None], list[int]] = defaultdict(list)
    for r in ROWS:
        if r.model == "m1":
            groups[(_hour(r.created_at), r.model_version)].append(r.status)
    rows = _report(client, "errors")
    assert [(row["bucket"], row["version"]) for row in rows] == sorted(groups)
    for row in rows:
        statuses = groups[(row["bucket"], row["version"])]
        client_errors = sum(400 <= s < 500 for s in statuses)
        server_errors = sum(s >= 500 for s in statuses)
        assert (row["requests"], row["client_errors"], row["server_errors"]) == (
            len(statuses), client_errors, server_errors)
        assert row["error_rate"] == round((client_errors + server_errors) / len(statuses), 6)


def test_label_counts_equal_a_reference_from_the_same_rows(client: TestClient) -> None:
    expected = Counter((_hour(r.created_at), r.top_label) for r in ROWS if r.model == "m1" and r.status == 200)
    rows = _report(client, "labels")
    assert {(row["bucket"], row["label"]): row["count"] for row in rows} == expected
    assert sum(row["count"] for row in rows) == sum(expected.values())
