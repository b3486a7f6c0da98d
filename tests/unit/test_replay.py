"""servingctl replay: captured photos sent to a candidate (TorchServe faked with httpx.MockTransport), its answers
recorded beside the live ones in a scratch PostgreSQL database, and the comparison printed."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest

from ops.cli import Dependencies, main
from stack.captures import capture_path
from stack.comparison import compare
from stack.database import Database, InferenceRecord, write_inferences
from stack.database.rollouts import candidate_pairs
from tests.databases import fresh_database
from tests.unit.test_ops_cli import RecordingSink, version_json, write_keys

MODEL = "classifier"
PHOTOS = {name: f"jpeg bytes of {name}".encode() for name in ("cat", "dog", "owl", "old", "elsewhere")}
# The live answers: what the default version 1.0 said of each photo.
LIVE_LABELS = {"cat": "tabby", "dog": "beagle", "owl": "owl", "old": "tabby", "elsewhere": "tabby"}


def sha(name: str) -> str:
    return hashlib.sha256(PHOTOS[name]).hexdigest()


def answer(label: str, version: str) -> dict[str, Any]:
    """A classifier handler's answer: top-5, its label first."""
    others = [f"other-{i}" for i in range(4)]
    return {"predictions": [{"label": label, "index": 1, "score": 0.8}] + [
        {"label": name, "index": 2 + i, "score": 0.01} for i, name in enumerate(others)],
        "model": {"name": MODEL, "version": version}, "batch_size": 1}


@dataclass
class FakeTorchServe:
    """The management API's descriptions and the inference API of the candidate, counting photos per version."""

    key_file: Path
    versions: tuple[str, ...] = ("1.0", "2.0")
    labels: dict[str, str] = field(default_factory=lambda: {"cat": "tabby", "dog": "lynx", "owl": "owl"})
    failing: dict[str, Callable[[], httpx.Response]] = field(default_factory=dict)  # photo → its answer instead
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (version, photo) → times

    def __call__(self, request: httpx.Request) -> httpx.Response:
        parts = [p for p in request.url.path.split("/") if p]
        if parts[0] == "predictions":
            assert request.headers["authorization"] == "Bearer inf-1"
            name = next(n for n, body in PHOTOS.items() if body == request.content)
            self.sent[(parts[2], name)] += 1
            if name in self.failing:
                return self.failing[name]()
            return httpx.Response(200, json=answer(self.labels[name], parts[2]), headers={"X-Batch-Size": "1"})
        assert request.headers["authorization"] == "Bearer mgmt-1"
        if parts[1] != MODEL:
            return httpx.Response(404, json={"code": 404, "type": "ModelNotFoundException", "message": "no model"})
        if parts[2:] == ["all"]:
            return httpx.Response(200, json=[version_json(MODEL, v) for v in self.versions])
        return httpx.Response(200, json=[version_json(MODEL, self.versions[0])])


@dataclass
class Setup:
    dsn: str
    capture_dir: Path
    torchserve: FakeTorchServe
    sink: RecordingSink
    live: dict[str, list[str]]  # photo → its live request ids, newest first

    def servingctl(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        deps = Dependencies(transport=httpx.MockTransport(self.torchserve), sink=lambda settings: self.sink)
        env = {"SERVINGCTL_PG_DSN": self.dsn, "SERVINGCTL_CAPTURE_DIR": str(self.capture_dir),
               "SERVINGCTL_KEY_FILE": str(self.torchserve.key_file), "SERVINGCTL_MANAGEMENT_URL": "http://ts:8081",
               "SERVINGCTL_INFERENCE_URL": "http://ts:8080", "SERVINGCTL_ACTOR": "tester", "SERVINGCTL_TIMEOUT_S": "5"}
        code = main(list(argv), deps, out, err, env)
        return code, out.getvalue(), err.getvalue()

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def candidates(self, version: str = "2.0") -> dict[str, tuple[Any, ...]]:
        """The replay rows of ``version`` by the live request they mirror."""
        rows = self.query("SELECT shadow_of::text, status, top_label, input_sha256, error, output IS NULL FROM inferences"
                          " WHERE source = 'replay' AND model_version = %s", version)
        return {row[0]: row[1:] for row in rows}


def live_record(name: str, minutes_ago: float, **changes: Any) -> InferenceRecord:
    record = InferenceRecord(
        request_id=str(uuid.uuid4()), created_at=datetime.now(UTC) - timedelta(minutes=minutes_ago), model=MODEL,
        model_version="1.0", source="sync", status=200, latency_ms=20.0, batch_size=1, input_sha256=sha(name),
        input_bytes=len(PHOTOS[name]), top_label=LIVE_LABELS[name], top_score=0.8,
        output=answer(LIVE_LABELS[name], "1.0"), error=None,
    )
    return replace(record, **changes)


def capture(directory: Path, name: str) -> None:
    path = capture_path(directory, sha(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PHOTOS[name])


@pytest.fixture()
def setup(tmp_path: Path) -> Iterator[Setup]:
    """Live requests: cat twice and dog once (captured, in the window), owl once (not captured), old (captured, two
    hours ago), elsewhere (captured, another model's); and rows that are not served requests of the model."""
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    capture_dir = tmp_path / "captures"
    for name in ("cat", "dog", "old", "elsewhere"):
        capture(capture_dir, name)
    records = [live_record("cat", 5), live_record("cat", 3), live_record("dog", 4), live_record("owl", 2),
               live_record("old", 120), live_record("elsewhere", 1, model="price")]
    shadow = live_record("dog", 1, source="shadow", model_version="2.0", shadow_of=records[2].request_id)
    cached = live_record("dog", 1, source="cache")
    with fresh_database("replay", migrated=True) as dsn:
        db = Database(dsn)
        try:
            db.run_transaction(write_inferences, [*records, shadow, cached])
        finally:
            db.close()
        live = {"cat": [records[1].request_id, records[0].request_id], "dog": [records[2].request_id]}
        yield Setup(dsn, capture_dir, FakeTorchServe(key_file), RecordingSink(), live)


def test_replay_sends_each_captured_photo_once_and_records_a_candidate_row_per_live_request(setup: Setup) -> None:
    code, out, err = setup.servingctl("replay", MODEL, "2.0", "--since", "1h")

    assert code == 0, err
    assert setup.torchserve.sent == Counter({("2.0", "cat"): 1, ("2.0", "dog"): 1})  # owl: not captured; old: too old
    rows = setup.candidates()
    assert set(rows) == {*setup.live["cat"], *setup.live["dog"]}
    for request_id in setup.live["cat"]:
        assert rows[request_id] == (200, "tabby", sha("cat"), None, False)
    assert rows[setup.live["dog"][0]] == (200, "lynx", sha("dog"), None, False)
    # cat agrees (twice), dog does not: top-1 agreement 2/3 over 3 pairs
    assert "replaying 2 captured photo(s) of 3 request(s)" in out
    assert "kind classifier: 3 pairs, 3 with both answers 200" in out
    assert "top1_agreement" in out and "0.6667" in out
    assert "promote gate: refuses" in out and "3 samples compared" in out
    (change,) = setup.sink.changes
    assert (change.action, change.model, change.version, change.actor) == ("replay", MODEL, "2.0", "tester")
    assert change.detail["photos"] == 2 and change.detail["pairs"] == 3 and change.detail["statuses"] == {"200": 2}  # per photo
    stored = setup.query("SELECT action, detail FROM model_changes WHERE model = %s", MODEL)
    assert stored == [("replay", change.detail)]


def test_limit_takes_the_newest_requests_and_json_prints_the_comparison(setup: Setup) -> None:
    code, out, err = setup.servingctl("replay", MODEL, "2.0", "--since", "30m", "--limit", "2", "--json")

    assert code == 0, err
    result = json.loads(out)
    # the newest two: cat (3 min ago), dog (4 min ago)
    assert set(setup.candidates()) == {setup.live["cat"][0], setup.live["dog"][0]}
    assert (result["model"], result["version"], result["photos"], result["samples"]) == (MODEL, "2.0", 2, 2)
    assert result["metrics"]["top1_agreement"]["value"] == 0.5
    assert result["candidate"]["server_errors"]["value"] == 0.0


def test_failed_answers_count_as_the_candidates_errors(setup: Setup) -> None:
    def timeout() -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    setup.torchserve.failing = {"dog": lambda: httpx.Response(503, json={"code": 503, "type": "ServiceUnavailableException",
                                                                         "message": "Worker died."}),
                                "cat": timeout}
    code, out, err = setup.servingctl("replay", MODEL, "2.0", "--json")

    assert code == 0, err
    rows = setup.candidates()
    assert rows[setup.live["dog"][0]][0] == 503 and "Worker died" in rows[setup.live["dog"][0]][3]
    assert {rows[r][0] for r in setup.live["cat"]} == {504}
    result = json.loads(out)
    assert result["candidate"]["server_errors"]["value"] == 1.0 and result["compared"] == 0
    assert setup.sink.changes[0].detail["statuses"] == {"503": 1, "504": 1}


def test_replayed_pairs_compare_as_the_same_answers_shadowed_would(setup: Setup) -> None:
    code, _, err = setup.servingctl("replay", MODEL, "2.0", "--json")
    assert code == 0, err
    # The same candidate answers, as shadowing records them (bridge.service._answer_shadow: source "shadow").
    shadowed = [live_record(name, 0, request_id=str(uuid.uuid4()), source="shadow", model_version="2.0",
                            shadow_of=request_id, top_label=label, output=answer(label, "2.0"), latency_ms=25.0)
                for name, label in (("cat", "tabby"), ("dog", "lynx")) for request_id in setup.live[name]]
    db = Database(setup.dsn)
    try:
        db.run_transaction(write_inferences, shadowed)
        since, until = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(seconds=1)
        replayed = compare("classifier", db.run_transaction(candidate_pairs, MODEL, "2.0", since, until, ("replay",)))
        shadow = compare("classifier", db.run_transaction(candidate_pairs, MODEL, "2.0", since, until, ("shadow",)))
    finally:
        db.close()
    assert replayed.samples == shadow.samples == 3
    assert replayed.metrics == shadow.metrics
    assert replayed.candidate.server_errors == shadow.candidate.server_errors


def test_an_unregistered_version_is_refused_before_anything_is_sent(setup: Setup) -> None:
    code, _, err = setup.servingctl("replay", MODEL, "9.9")

    assert code == 4
    assert "no version '9.9'" in err and "1.0, 2.0" in err
    assert not setup.torchserve.sent and setup.candidates("9.9") == {} and not setup.sink.changes


def test_nothing_captured_in_the_window_is_refused_saying_how_to_enable_capture(setup: Setup, tmp_path: Path) -> None:
    setup.capture_dir = tmp_path / "empty"
    code, _, err = setup.servingctl("replay", MODEL, "2.0", "--since", "1h")

    assert code == 7
    assert "none of the 4 requests" in err and "BRIDGE_CAPTURE_FRACTION=0.1" in err
    assert not setup.torchserve.sent and setup.candidates() == {} and not setup.sink.changes


def test_no_request_in_the_window_is_refused(setup: Setup) -> None:
    code, _, err = setup.servingctl("replay", MODEL, "2.0", "--since", "30s")

    assert code == 7 and "served no request since" in err


def test_a_damaged_capture_is_skipped(setup: Setup) -> None:
    capture_path(setup.capture_dir, sha("dog")).write_bytes(b"not the photo its name says")
    code, _, err = setup.servingctl("replay", MODEL, "2.0")

    assert code == 0
    assert f"captured photo {sha('dog')} is gone or damaged" in err
    assert set(setup.candidates()) == set(setup.live["cat"])


@pytest.mark.parametrize("argv", [("--since", "yesterday"), ("--limit", "0")])
def test_bad_arguments_exit_2(setup: Setup, argv: tuple[str, ...]) -> None:
    code, _, err = setup.servingctl("replay", MODEL, "2.0", *argv)

    assert code == 2 and ("--since" in err or "--limit" in err)
