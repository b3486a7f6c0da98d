"""stack.database.feedback against a real PostgreSQL: stored once per served answer, and the report's join."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stack.accuracy import TruthError
from stack.database import Database, InferenceRecord, write_inferences
from stack.database.feedback import (
    NotAnswered,
    TooManyRows,
    TruthConflict,
    UnknownPrediction,
    accuracy_rows,
    store_feedback,
)
from tests.databases import fresh_database
from tests.unit.fakes import make_record

T0 = datetime(2026, 3, 1, 9, 15, tzinfo=UTC)
ANSWER = {"predictions": [{"label": "tabby", "score": 0.6}, {"label": "lynx", "score": 0.3}],
          "model": {"name": "classifier", "version": "1.0"}}


@pytest.fixture
def database() -> Iterator[Database]:
    with fresh_database("feedback_test", migrated=True) as dsn:
        db = Database(dsn)
        yield db
        db.close()


def served(created_at: datetime = T0, version: str | None = "1.0", status: int = 200, model: str = "classifier",
           output: Any = ANSWER, shadow_of: str | None = None) -> InferenceRecord:
    return replace(make_record(model, status), created_at=created_at, model_version=version, output=output,
                   shadow_of=shadow_of)


def write(database: Database, *records: InferenceRecord) -> None:
    with database.connection() as conn:
        assert write_inferences(conn, list(records)) == len(records)


def store(database: Database, request_id: str, truth: Any) -> Any:
    return database.run_transaction(store_feedback, request_id, truth)


def test_a_truth_is_stored_once_and_an_identical_one_is_the_stored_one(database: Database) -> None:
    record = served()
    write(database, record)
    first = store(database, record.request_id, "tabby")
    assert (first.created, first.kind, first.truth) == (True, "classifier", {"label": "tabby"})
    assert (first.answer.model, first.answer.model_version, first.answer.output) == ("classifier", "1.0", ANSWER)
    again = store(database, record.request_id, {"label": "tabby"})  # the same truth in its other form
    assert (again.created, again.truth, again.received_at) == (False, {"label": "tabby"}, first.received_at)
    with pytest.raises(TruthConflict) as conflict:
        store(database, record.request_id, "lynx")
    assert conflict.value.stored == {"label": "tabby"}
    with database.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT model, model_version, truth FROM feedback")
        assert cur.fetchall() == [("classifier", "1.0", {"label": "tabby"})]


def test_only_a_served_answer_takes_a_truth(database: Database) -> None:
    live, failed = served(), served(status=503, output={"code": 503})
    shadow = served(version="2.0", shadow_of=live.request_id)
    write(database, live, failed, shadow)
    for request_id in (str(uuid.uuid4()), shadow.request_id):
        with pytest.raises(UnknownPrediction):
            store(database, request_id, "tabby")
    with pytest.raises(NotAnswered) as not_answered:
        store(database, failed.request_id, "tabby")
    assert not_answered.value.status == 503
    with pytest.raises(TruthError, match=r"kind classifier\) must be a label"):
        store(database, failed.request_id, ["tabby"])  # the shape is checked before the status
    with database.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM feedback")
        assert cur.fetchone() == (0,)


def test_the_report_scores_served_answers_with_a_truth_per_bucket_and_version(database: Database) -> None:
    hour = timedelta(hours=1)
    right = [served(T0), served(T0 + timedelta(minutes=30))]
    wrong = served(T0 + timedelta(minutes=40))
    v2 = served(T0, version="2.0")
    later = served(T0 + hour)
    old = served(T0 - 2 * hour)  # before the range
    at_until = served(T0 + 2 * hour)  # the range's end is exclusive
    no_truth = served(T0)
    other_model = served(T0, model="resnet18")
    write(database, *right, wrong, v2, later, old, at_until, no_truth, other_model)
    for record in (*right, v2, later, old, at_until, other_model):
        store(database, record.request_id, "tabby")
    store(database, wrong.request_id, "espresso")
    shadow = served(T0, shadow_of=right[0].request_id)  # given a truth behind the API's back: still not counted
    write(database, shadow)
    with database.connection() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO feedback (request_id, model, model_version, truth) VALUES (%s, 'classifier', '1.0',"
                    " '{\"label\": \"tabby\"}')", (shadow.request_id,))

    since, until = T0 - hour, T0 + 2 * hour
    rows = database.run_transaction(accuracy_rows, "classifier", since, until, "hour")
    t9, t10 = T0.replace(minute=0), T0.replace(minute=0) + hour
    assert [(r.bucket, r.version, r.count) for r in rows] == [(t9, "1.0", 3), (t9, "2.0", 1), (t10, "1.0", 1)]
    top1 = rows[0].figures["top1_accuracy"]
    assert (top1.value, top1.n) == (pytest.approx(2 / 3), 3)
    assert rows[0].figures["top5_accuracy"].value == pytest.approx(2 / 3)
    assert rows[1].figures["top1_accuracy"].value == 1.0

    only_v2 = database.run_transaction(accuracy_rows, "classifier", since, until, "day", "2.0")
    assert [(r.bucket, r.version, r.count) for r in only_v2] == [(T0.replace(hour=0, minute=0), "2.0", 1)]
    with pytest.raises(TooManyRows, match="more than 4 answers"):
        database.run_transaction(accuracy_rows, "classifier", since, until, "hour", None, 4)
    assert len(database.run_transaction(accuracy_rows, "classifier", since, until, "hour", None, 5)) == 3


def test_a_truth_sent_long_after_its_answer_counts_in_the_answers_bucket(database: Database) -> None:
    old = served(datetime.now(UTC) - timedelta(days=3))
    write(database, old)
    store(database, old.request_id, "lynx")  # received now, three days after the answer
    since = old.created_at - timedelta(minutes=1)
    rows = database.run_transaction(accuracy_rows, "classifier", since, since + timedelta(hours=1), "minute")
    assert [(r.count, r.figures["top1_accuracy"].value, r.figures["top5_accuracy"].value) for r in rows] == [
        (1, 0.0, 1.0)]
