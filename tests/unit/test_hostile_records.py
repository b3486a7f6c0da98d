"""Hostile strings through the COPY path: stored as PostgreSQL can hold them, never costing a batch-mate.

Against a real PostgreSQL (a database of this module's own, see tests/databases.py: started when none answers).
What the database cannot hold, and what is stored instead, is documented in docs/recording.md
("Strings PostgreSQL cannot hold"); the reference below re-states those rules independently.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
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
from stack.database import Database, InferenceRecord, inferences, migrate
from tests.databases import fresh_database
from tests.unit.fakes import make_record
from tests.unit.test_bridge_app import FakeTorchServe, write_keys

CASES = {
    "quotes": 'a "double" and \'single\' quote, "" doubled',
    "tabs and newlines": "tab\there\nnewline\r\ncrlf\rcr\n",
    # Literal backslashes, including the six characters \u0000 (which an escaped NUL looks like in JSON text).
    "backslashes": r"C:\temp\new \\ \N \t \u0000 \x00 \\u0000 \"",
    "copy end-of-data marker": "first\n\\.\nsecond",
    "csv delimiters": ',,;"\n,',
    "nul": "before\x00after\x00",
    "lone surrogates": "high \ud800 low \udfff end \udc80",
    "outside the BMP": "cat \U0001f408 clef \U0001d11e han \U0002070e",
    "empty": "",
}
MEGABYTE = 1 << 20


def held(text: str) -> str:
    """The documented rule for text PostgreSQL cannot hold: NUL removed, a lone surrogate becomes U+FFFD."""
    return re.sub("[\ud800-\udfff]", "\ufffd", text.replace("\x00", ""))


def random_text(n: int, seed: int) -> str:
    """``n`` characters that do not compress (an index entry cannot hide them by compression)."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789éß\u4e2d\U0001f408"
    return "".join(rng.choices(alphabet, k=n))


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database("recording_test") as dsn:
        database = Database(dsn)
        migrate(database)
        database.close()
        yield dsn


@pytest.fixture
def sink(dsn: str) -> Iterator[PostgresSink]:
    sink = PostgresSink.connect(dsn)
    yield sink
    sink.close()


def stored(dsn: str, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``request_ids`` as PostgreSQL gives them back."""
    database = Database(dsn)
    try:
        with database.connection() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT request_id::text, output, error, top_label, top_score, batch_size, model_version"
                " FROM inferences WHERE request_id = ANY(%s::uuid[])", (request_ids,))
            names = [d[0] for d in cur.description or ()]
            return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}
    finally:
        database.close()


def hostile(text: str) -> InferenceRecord:
    """A record carrying ``text`` everywhere a model's answer reaches: output (values and keys), error, label."""
    output = {"text": text, "key " + text: [text, 1], "predictions": [{"label": text, "score": 0.5}]}
    return replace(make_record(), output=output, error=text, top_label=text)


def test_hostile_strings_are_stored_as_held_and_batch_mates_are_stored(dsn: str, sink: PostgresSink) -> None:
    normal = [make_record() for _ in range(20)]
    bad = {name: hostile(text) for name, text in CASES.items()}
    batch = normal[:10] + list(bad.values()) + normal[10:]

    assert sink.insert(batch) == len(batch), "one COPY, every record in it"

    rows = stored(dsn, [r.request_id for r in batch])
    for name, record in bad.items():
        row, text = rows[record.request_id], held(CASES[name])
        assert row["output"] == {"text": text, "key " + text: [text, 1], "predictions": [{"label": text, "score": 0.5}]}, name
        assert (row["error"], row["top_label"]) == (text, text), name
    for record in normal:
        assert rows[record.request_id]["output"] == record.output
    changed = {"nul", "lone surrogates"}
    assert sink.altered == len(changed), "only what PostgreSQL cannot hold is altered, and counted"
    for name in CASES.keys() - changed:
        assert held(CASES[name]) == CASES[name], f"{name} is stored faithfully"


def test_nan_and_infinity_become_null_counted_and_logged(
    dsn: str, sink: PostgresSink, caplog: pytest.LogCaptureFixture
) -> None:
    nan, inf = float("nan"), float("inf")
    record = replace(make_record(), output={"score": nan, "hi": inf, "lo": -inf, "list": [nan, 1.5], "ok": 0.25},
                     top_score=nan, latency_ms=12.0)
    mate = make_record()
    with caplog.at_level(logging.WARNING, logger="bridge.storage"):
        assert sink.insert([record, mate]) == 2
    rows = stored(dsn, [record.request_id, mate.request_id])
    assert rows[record.request_id]["output"] == {"score": None, "hi": None, "lo": None, "list": [None, 1.5], "ok": 0.25}
    assert rows[record.request_id]["top_score"] is None
    assert rows[mate.request_id]["top_score"] == mate.top_score
    assert sink.altered == 1 and sink.counts() == {"altered": 1}
    assert any(record.request_id in m and "NaN/Infinity made null" in m for m in caplog.messages), caplog.messages


def test_megabyte_strings_are_stored_whole_except_where_an_index_bounds_them(dsn: str, sink: PostgresSink) -> None:
    big = random_text(MEGABYTE, seed=1)
    record = replace(make_record(), output={"text": big, "predictions": [{"label": big, "score": 0.1}]},
                     error=big, top_label=big, model_version=random_text(5000, seed=2))
    mate = make_record()
    assert sink.insert([record, mate]) == 2

    row = stored(dsn, [record.request_id])[record.request_id]
    assert row["output"] == record.output and row["error"] == big, "megabytes are stored whole where not indexed"
    for column, limit in (("top_label", 1024), ("model_version", 256)):
        value = row[column]
        assert len(value.encode()) <= limit and value.endswith("…"), column
        assert getattr(record, column).startswith(value[:-1]), f"{column} is a prefix of what was sent"
    assert stored(dsn, [mate.request_id])


def test_integers_out_of_range_are_null_not_a_lost_record(dsn: str, sink: PostgresSink) -> None:
    record = replace(make_record(), batch_size=99_999_999_999)  # e.g. a hostile X-Batch-Size header
    assert sink.insert([record]) == 1
    assert stored(dsn, [record.request_id])[record.request_id]["batch_size"] is None


def test_a_record_postgres_refuses_is_quarantined_counted_logged_and_blocks_nothing(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Two refusals of different kinds: a data error (22001), and a program limit (54000: an index row too
    # large, reached here by lifting the bound on the indexed label), which psycopg2 reports like an outage.
    monkeypatch.setitem(inferences.INDEXED_TEXT_BYTES, "top_label", 10**9)
    too_long = replace(make_record(), input_sha256="x" * 65)
    too_big = replace(make_record(), top_label=random_text(MEGABYTE, seed=3))
    good = [make_record() for _ in range(30)]
    spool = Spool(tmp_path / "spool")
    recorder = Recorder([PostgresSink.connect(dsn)], spool, retry_interval_s=0.05)
    first = [*good[:15], too_long, too_big, *good[15:]]
    futures = [recorder.submit(r) for r in first]  # before start(): one journal batch, one COPY
    with caplog.at_level(logging.WARNING):
        recorder.start()
        try:
            for future in futures:
                future.result(timeout=10)
            # Bound: generous for a busy 2-core machine; a record blocking the lane never gets idle at all.
            assert recorder.wait_idle(30), recorder.health()
            later = [make_record() for _ in range(5)]
            for r in later:
                recorder.submit(r).result(timeout=10)
            assert recorder.wait_idle(30), "the lane must go on after a refused record"
        finally:
            recorder.stop()

    rows = stored(dsn, [r.request_id for r in [*first, *later]])
    assert set(rows) == {r.request_id for r in [*good, *later]}, "every batch-mate stored"
    stats = recorder.stats()
    assert stats["quarantined"] == 2 and stats["stored"] == len(good) + len(later) and stats["store_failures"] == 0
    kept = (spool.directory / "rejected" / "records.jsonl").read_text().splitlines()
    assert sorted(InferenceRecord.from_json(line).request_id for line in kept) == sorted(
        [too_long.request_id, too_big.request_id])
    assert sum("quarantined" in m for m in caplog.messages) == 2, caplog.messages


# --- end to end: a hostile TorchServe answer → the bridge → the recorder → PostgreSQL → /v1/results ------------

def _json_answer(text: str, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=text.encode(), headers={"Content-Type": "application/json", **(headers or {})})


ESCAPES = r'nul \u0000 lone \ud800 pair \ud83d\ude00 quote \" tab \t nl \n bs \\ end'
UPSTREAM: dict[str, httpx.Response] = {
    # JSON escapes for every hostile character, NaN/Infinity tokens (Python's json reads them), a version
    # that would break a response header.
    "escapes": _json_answer(
        '{"predictions": [{"label": "ESC", "score": NaN}], "text": "ESC", "big": 1e999, "neg": -Infinity,'
        ' "model": {"name": "m", "version": "1.0\\r\\nX-Evil: 1"}}'.replace("ESC", ESCAPES)),
    "error": _json_answer('{"code": 400, "type": "InvalidImage", "message": "ESC"}'.replace("ESC", ESCAPES), 400),
    "not utf-8": httpx.Response(200, content=b"\xff\xfe\x00raw\x00 bytes \xed\xa0\x80",
                                headers={"Content-Type": "text/plain"}),
    "deep": _json_answer("[" * 100_000 + "]" * 100_000),
    "huge score": _json_answer('{"predictions": [{"label": "x", "score": 1' + "0" * 400 + "}]}"),
    "odd label": _json_answer('{"predictions": [{"label": {"a": [1]}, "score": 0.5}], "model": {"version": 2}}'),
    "megabyte": _json_answer(json.dumps({"predictions": [{"label": random_text(MEGABYTE, 4), "score": 0.5}],
                                         "model": {"name": "m", "version": random_text(MEGABYTE, 5)}})),
    "batch header": _json_answer('{"predictions": [{"label": "x", "score": 0.5}]}',
                                 headers={"X-Batch-Size": "99999999999"}),
}


@pytest.fixture
def hostile_app(dsn: str, tmp_path: Path) -> Iterator[tuple[TestClient, Recorder]]:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    fake = FakeTorchServe(key_file)
    fake.handler = lambda request: UPSTREAM[request.content.decode().removeprefix("photo:")]
    recorder = Recorder([PostgresSink.connect(dsn)], Spool(tmp_path / "spool"),
                        retry_interval_s=0.05)
    settings = Settings(torchserve_key_file=key_file, spool_dir=tmp_path / "spool", pg_dsn=dsn, cache=False,
                        telemetry_interval_s=0)
    app = create_app(settings, recorder=recorder, torchserve_transport=httpx.MockTransport(fake), run_jobs=False)
    with TestClient(app) as client:
        yield client, recorder


def test_hostile_torchserve_answers_are_answered_recorded_and_read_back(
    hostile_app: tuple[TestClient, Recorder]
) -> None:
    client, recorder = hostile_app
    barrier = threading.Barrier(len(UPSTREAM))

    def send(name: str) -> httpx.Response:
        barrier.wait()  # together, so that the journal and the COPY take several of them in one batch
        return client.put("/predictions/m", content=f"photo:{name}".encode())

    with ThreadPoolExecutor(len(UPSTREAM)) as pool:
        responses = dict(zip(UPSTREAM, pool.map(send, UPSTREAM)))

    for name, response in responses.items():
        assert response.status_code == UPSTREAM[name].status_code, (name, response.text[:300])
        assert response.content == UPSTREAM[name].content, f"{name}: the answer passes through untouched"
    assert "x-model-version" not in responses["escapes"].headers, "a version that is no version is not echoed"
    assert recorder.wait_idle(30), recorder.health()
    assert recorder.stats()["quarantined"] == 0

    items: dict[str, dict[str, Any]] = {}
    page = client.get("/v1/results", params={"limit": 3})
    while True:
        assert page.status_code == 200, page.text[:300]
        items.update((item["request_id"], item) for item in page.json()["items"])
        if not page.json()["next_cursor"]:
            break
        page = client.get("/v1/results", params={"limit": 3, "cursor": page.json()["next_cursor"]})
    by_name = {name: items[r.headers["x-request-id"]] for name, r in responses.items()}
    assert len(items) == len(UPSTREAM), "every answer recorded, once"

    text = held(json.loads(f'"{ESCAPES}"'))
    escapes = by_name["escapes"]
    assert escapes["output"] == {"predictions": [{"label": text, "score": None}], "text": text, "big": None,
                                 "neg": None, "model": {"name": "m", "version": "1.0\r\nX-Evil: 1"}}
    assert (escapes["top_label"], escapes["top_score"], escapes["model_version"]) == (text, None, None)
    assert by_name["error"]["status"] == 400 and by_name["error"]["error"] == text
    assert by_name["not utf-8"]["output"] == {"raw": "\ufffd\ufffdraw bytes \ufffd\ufffd\ufffd"}
    assert by_name["deep"]["output"] == {"raw": "[" * 2000}
    assert by_name["huge score"]["top_score"] is None and by_name["huge score"]["output"]["predictions"][0]["score"]
    assert by_name["odd label"]["top_label"] is None and by_name["odd label"]["model_version"] is None
    megabyte = json.loads(UPSTREAM["megabyte"].content)
    assert by_name["megabyte"]["output"] == megabyte, "a megabyte answer is stored whole"
    assert len(by_name["megabyte"]["top_label"].encode()) <= 1024 and by_name["megabyte"]["model_version"] is None
    assert by_name["batch header"]["batch_size"] is None
    assert all(math.isfinite(item["latency_ms"]) for item in items.values())
