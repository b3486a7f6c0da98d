"""Ground truth against the live stack: real answers, truths posted to the bridge, the accuracy report equal to a
reference computed here from the answers, the refusals, and the ``feedback`` points in InfluxDB."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest
import requests

from tests.integration.conftest import INFLUX, PG_DSN, LiveStack, json_body

NO_CACHE = {"Cache-Control": "no-cache"}
Z95 = 1.959963984540054


@dataclass
class Answer:
    """One served answer, its truth for this test, and the scores that truth must give it."""

    model: str
    request_id: str
    version: str
    created_at: datetime
    body: dict[str, Any]
    truth: Any = None
    scores: dict[str, float] | None = None


def _truths(answers: list[Answer]) -> None:
    """Some right, some wrong, per kind; the scores worked out here from each answer."""
    for i, a in enumerate(answers):
        if a.model == "classifier":
            labels = [p["label"] for p in a.body["predictions"]]
            a.truth = [labels[0], {"label": labels[2]}, "not a label of the model"][i % 3]
            label = a.truth["label"] if isinstance(a.truth, dict) else a.truth
            a.scores = {"top1_correct": float(label == labels[0]), "top5_correct": float(label in labels)}
        elif a.model == "price":
            price, high = a.body["price"], a.body["interval"]["high"]
            a.truth = [price, {"price": high + 25.0}, price * 1.1][i % 3]
            value = a.truth["price"] if isinstance(a.truth, dict) else a.truth
            interval = a.body["interval"]
            a.scores = {"abs_error": abs(price - value), "in_interval": float(interval["low"] <= value <= interval["high"])}
        else:
            ids = [item["id"] for item in a.body["items"]]
            a.truth = [ids[:2] + ["no-such-item"], {"items": ["no-such-item"]}, ids][i % 3]
            relevant = set(a.truth["items"] if isinstance(a.truth, dict) else a.truth)
            a.scores = {"precision_at_k": sum(item in relevant for item in ids) / len(ids)}


@pytest.fixture(scope="module")
def answered(live_stack: LiveStack, photos: dict[str, bytes]) -> dict[str, Any]:
    """Every photo through classifier, price and similar, recorded, each with a truth posted (201)."""
    started = datetime.now(UTC)
    answers: list[Answer] = []
    for model in ("classifier", "price", "similar"):
        for photo in photos.values():
            response = requests.put(f"{live_stack.bridge}/predictions/{model}", data=photo, headers=NO_CACHE,
                                    timeout=60)
            assert response.status_code == 200, response.text
            answers.append(Answer(model, response.headers["x-request-id"], response.headers["x-model-version"],
                                  started, json_body(response)))
    for a in answers:
        row = live_stack.row(a.request_id)
        assert row is not None, f"no record of {a.request_id}"
        a.created_at = datetime.fromisoformat(row["created_at"])
    _truths([a for a in answers if a.model == "classifier"])
    _truths([a for a in answers if a.model == "price"])
    _truths([a for a in answers if a.model == "similar"])
    stored = {}
    for a in answers:
        response = post(live_stack, {"request_id": a.request_id, "truth": a.truth})
        assert response.status_code == 201, response.text
        stored[a.request_id] = json_body(response)
    return {"started": started, "answers": answers, "stored": stored}


def post(live_stack: LiveStack, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{live_stack.bridge}/v1/feedback", json=body, timeout=30, **kwargs)


def wilson(successes: int, n: int) -> tuple[float, float]:
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    return centre - half, centre + half


def reference(answers: list[Answer], model: str) -> list[dict[str, Any]]:
    """The report's rows as they must be: per minute of the answers' times and version, each figure by hand."""
    names = {"top1_correct": "top1_accuracy", "top5_correct": "top5_accuracy", "abs_error": "mean_abs_error",
             "in_interval": "interval_coverage", "precision_at_k": "precision_at_k"}
    groups: dict[tuple[datetime, str], list[Answer]] = defaultdict(list)
    for a in answers:
        if a.model == model:
            groups[(a.created_at.replace(second=0, microsecond=0), a.version)].append(a)
    rows = []
    for (bucket, version), group in sorted(groups.items()):
        figures = {}
        for score, name in names.items():
            values = [a.scores[score] for a in group if a.scores and score in a.scores]
            if not values:
                continue
            n = len(values)
            if score in ("abs_error", "precision_at_k"):
                average = sum(values) / n
                half = Z95 * math.sqrt(sum((v - average) ** 2 for v in values) / (n - 1)) / math.sqrt(n)
                figures[name] = {"value": average, "low": average - half, "high": average + half, "n": n}
            else:
                low, high = wilson(int(sum(values)), n)
                figures[name] = {"value": sum(values) / n, "low": low, "high": high, "n": n}
        rows.append({"bucket": bucket, "version": version, "count": len(group), "figures": figures})
    return rows


def test_each_post_echoes_the_truth_and_the_answers_scores(answered: dict[str, Any]) -> None:
    for a in answered["answers"]:
        out = answered["stored"][a.request_id]
        assert (out["request_id"], out["model"], out["model_version"]) == (a.request_id, a.model, a.version)
        key = {"classifier": "label", "price": "price", "similar": "items"}[a.model]
        expected = a.truth if isinstance(a.truth, dict) else {key: a.truth}
        if a.model == "similar":
            expected = {"items": list(dict.fromkeys(expected["items"]))}
        assert out["truth"] == pytest.approx(expected)
        assert out["score"] == pytest.approx(a.scores)


@pytest.mark.parametrize("model", ["classifier", "price", "similar"])
def test_the_accuracy_report_equals_the_reference(live_stack: LiveStack, answered: dict[str, Any], model: str) -> None:
    since = answered["started"] - timedelta(seconds=1)
    response = requests.get(f"{live_stack.bridge}/v1/reports/accuracy", timeout=30, params={
        "model": model, "since": since.isoformat(), "until": (datetime.now(UTC) + timedelta(minutes=1)).isoformat(),
        "bucket": "minute"})
    assert response.status_code == 200, response.text
    report = json_body(response)
    expected = reference(answered["answers"], model)
    assert report["kind"] == model
    assert report["figures"] == {"classifier": ["top1_accuracy", "top5_accuracy"],
                                 "price": ["mean_abs_error", "interval_coverage"],
                                 "similar": ["precision_at_k"]}[model]
    got = [{**row, "bucket": datetime.fromisoformat(row["bucket"])} for row in report["rows"]]
    assert [(r["bucket"], r["version"], r["count"]) for r in got] == [
        (r["bucket"], r["version"], r["count"]) for r in expected]
    for row, want in zip(got, expected):
        assert row["figures"].keys() == want["figures"].keys()
        for name, figure in want["figures"].items():
            assert row["figures"][name] == pytest.approx(figure, abs=1e-9), (model, name)
    assert sum(r["count"] for r in got) == 5


def test_the_same_truth_again_is_200_and_a_different_one_409(live_stack: LiveStack, answered: dict[str, Any]) -> None:
    first = next(a for a in answered["answers"] if a.model == "classifier")
    label = first.truth["label"] if isinstance(first.truth, dict) else first.truth
    again = post(live_stack, {"request_id": first.request_id, "truth": {"label": label}})
    assert again.status_code == 200, again.text
    assert json_body(again) == answered["stored"][first.request_id]
    other = post(live_stack, {"request_id": first.request_id, "truth": label + " (not)"})
    assert other.status_code == 409
    assert json_body(other)["type"] == "Conflict" and "a different truth is already stored" in other.text


def test_concurrent_first_posts_store_one_truth(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    response = requests.put(f"{live_stack.bridge}/predictions/resnet18", data=photos["coffee"], headers=NO_CACHE,
                            timeout=60)
    request_id = response.headers["x-request-id"]
    assert live_stack.row(request_id) is not None
    barrier = threading.Barrier(8)

    def send(_: int) -> int:
        barrier.wait()
        return post(live_stack, {"request_id": request_id, "truth": "espresso"}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = sorted(pool.map(send, range(8)))
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 503}, statuses
    with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:
        cur.execute("SELECT truth FROM feedback WHERE request_id = %s", (request_id,))
        assert cur.fetchall() == [({"label": "espresso"},)]


def test_unknown_shadow_and_failed_requests_take_no_truth(live_stack: LiveStack, answered: dict[str, Any]) -> None:
    unknown = str(uuid.uuid4())
    response = post(live_stack, {"request_id": unknown, "truth": "tabby"})
    assert response.status_code == 404 and f"no served prediction with request id {unknown}" in response.text

    live = next(a for a in answered["answers"] if a.model == "classifier")
    shadow = str(uuid.uuid4())
    with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:  # a candidate's answer mirroring a live request
        cur.execute("INSERT INTO inferences (request_id, created_at, model, model_version, source, status, latency_ms,"
                    " input_sha256, input_bytes, output, shadow_of) SELECT %s, created_at, model, '9.9', 'shadow',"
                    " 200, latency_ms, input_sha256, input_bytes, output, request_id FROM inferences"
                    " WHERE request_id = %s", (shadow, live.request_id))
    response = post(live_stack, {"request_id": shadow, "truth": "tabby"})
    assert response.status_code == 404 and "no served prediction" in response.text

    bad = requests.put(f"{live_stack.bridge}/predictions/classifier", data=b"not an image", headers=NO_CACHE,
                       timeout=30)
    assert bad.status_code == 400
    assert live_stack.row(bad.headers["x-request-id"]) is not None
    response = post(live_stack, {"request_id": bad.headers["x-request-id"], "truth": "tabby"})
    assert response.status_code == 422 and "failed with status 400" in response.text


@pytest.mark.parametrize(("model", "truth", "says"), [
    ("classifier", ["tabby"], "must be a label"),
    ("classifier", 3, "must be a label"),
    ("price", "12.50", "must be a price"),
    ("price", -5, "must be a price"),
    ("similar", "chelsea-01", "must be the relevant item ids"),
    ("similar", [], "must be the relevant item ids"),
])
def test_a_truth_of_the_wrong_type_is_422_naming_the_kind(
    live_stack: LiveStack, answered: dict[str, Any], model: str, truth: Any, says: str
) -> None:
    target = next(a for a in answered["answers"] if a.model == model)
    response = post(live_stack, {"request_id": target.request_id, "truth": truth})
    assert response.status_code == 422, response.text
    body = json_body(response)
    assert body["type"] == "Unprocessable"
    assert f"truth for model '{model}' (kind {model}) {says}" in body["message"]


def test_malformed_and_oversized_bodies(live_stack: LiveStack, answered: dict[str, Any]) -> None:
    request_id = answered["answers"][0].request_id
    url = f"{live_stack.bridge}/v1/feedback"
    cases = [
        (post(live_stack, {"request_id": "not-a-uuid", "truth": "tabby"}), 400, "request_id"),
        (post(live_stack, {"request_id": request_id}), 400, "truth: Field required"),
        (post(live_stack, {"request_id": request_id, "truth": "x", "extra": 1}), 400, "extra"),
        (requests.post(url, data=b'{"request_id": ', headers={"Content-Type": "application/json"}, timeout=30),
         400, "not valid JSON"),
        (requests.post(url, data=b"request_id=x", headers={"Content-Type": "text/plain"}, timeout=30), 415, "JSON"),
        (post(live_stack, {"request_id": request_id, "truth": "x" * 70_000}), 413, "limit is 65536 bytes"),
    ]
    for response, status, says in cases:
        assert response.status_code == status, response.text
        assert says in json_body(response)["message"]


def test_each_stored_truth_is_a_feedback_point_in_influxdb(answered: dict[str, Any]) -> None:
    since = answered["started"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for a in answered["answers"]:
        expected[a.model]["count"] += 1
        for name, value in (a.scores or {}).items():
            expected[a.model][name] += value
    query = ("SELECT sum(\"count\"), sum(top1_correct), sum(top5_correct), sum(abs_error), sum(in_interval),"
             f" sum(precision_at_k) FROM feedback WHERE time >= '{since}' AND version = '1.0' GROUP BY model")
    names = ["count", "top1_correct", "top5_correct", "abs_error", "in_interval", "precision_at_k"]
    deadline = time.monotonic() + 30  # the telemetry loop writes queued points every 10 s
    while True:
        result = requests.get(f"{INFLUX}/query", params={"db": "serving", "q": query}, timeout=10).json()
        found = {s["tags"]["model"]: dict(zip(names, s["values"][0][1:])) for s in result["results"][0].get("series", [])}
        if all(found.get(m, {}).get("count", 0) >= expected[m]["count"] for m in expected) or time.monotonic() > deadline:
            break
        time.sleep(1)
    for model in ("classifier", "price", "similar"):
        assert found[model] == pytest.approx({name: expected[model].get(name) for name in names}), model
