"""Rollouts without the stack: the comparison per kind, the promote gate, the canary's choice and its limits, and
shadowing through the prediction service (TorchServe faked with an httpx transport)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.records import InferenceRecord
from bridge.reports import Bucket, ResultFilter, error_rates, list_results
from bridge.rollouts import Rollouts, client_share, pair_fields
from bridge.routing import Router
from bridge.service import PredictionService
from bridge.settings import Settings
from stack.comparison import Gate, Pair, compare, pair_metrics, percentile, rate
from stack.database import Database, write_inferences
from stack.database.rollouts import (
    CanaryLimits,
    Rollout,
    WindowStats,
    active_rollouts,
    candidate_pairs,
    start_rollout,
)
from tests.databases import fresh_database
from tests.unit.test_bridge_app import write_keys


def classified(*labels: str, version: str = "1.0") -> dict[str, Any]:
    return {"predictions": [{"label": label, "index": i, "score": 0.1} for i, label in enumerate(labels)],
            "model": {"name": "classifier", "version": version}, "batch_size": 1}


# --- the comparison ---------------------------------------------------------------------------------------


def test_classifier_pairs_agree_on_top1_and_overlap_in_the_top5() -> None:
    live = classified("tabby", "tiger cat", "lynx", "fox", "dog")
    assert pair_metrics("classifier", live, classified("tabby", "lynx", "car", "bus", "tram")) == {
        "top1_agreement": 1.0, "top5_overlap": 0.4}
    assert pair_metrics("classifier", live, classified("lynx", "tabby", "tiger cat", "fox", "dog")) == {
        "top1_agreement": 0.0, "top5_overlap": 1.0}
    assert pair_metrics("classifier", {"tabby": 0.7, "lynx": 0.2}, {"lynx": 0.6, "tabby": 0.3}) == {
        "top1_agreement": 0.0, "top5_overlap": 1.0}  # TorchServe's stock {label: score} answers


def test_price_pairs_give_the_relative_difference_and_whether_the_live_price_is_inside_the_interval() -> None:
    live = {"price": 100.0, "interval": {"low": 80.0, "high": 120.0}}
    inside = pair_metrics("price", live, {"price": 110.0, "interval": {"low": 90.0, "high": 130.0}})
    assert inside == {"relative_difference": pytest.approx(0.1), "live_in_candidate_interval": 1.0}
    outside = pair_metrics("price", live, {"price": 150.0, "interval": {"low": 120.5, "high": 190.0}})
    assert outside == {"relative_difference": pytest.approx(0.5), "live_in_candidate_interval": 0.0}


def test_similar_pairs_give_the_jaccard_of_the_nearest_ids_and_other_kinds_compare_whole_answers() -> None:
    live = {"items": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}
    assert pair_metrics("similar", live, {"items": [{"id": "b"}, {"id": "c"}, {"id": "d"}]}) == {"jaccard_at_k": 0.5}
    # The generic kind ignores how an answer was made (model, batch size) but nothing else.
    assert pair_metrics("detector", {"boxes": [1, 2], "model": {"version": "1"}, "batch_size": 3},
                        {"boxes": [1, 2], "model": {"version": "2"}, "batch_size": 1}) == {"answer_agreement": 1.0}
    assert pair_metrics("json", {"boxes": [1, 2]}, {"boxes": [2, 1]}) == {"answer_agreement": 0.0}


def test_wilson_interval_and_percentile_match_known_values() -> None:
    estimate = rate(8, 10)  # Wilson's 95 % interval for 8/10: [0.4902, 0.9433]
    assert (estimate.value, round(estimate.low or 0, 4), round(estimate.high or 0, 4)) == (0.8, 0.4902, 0.9433)
    assert rate(0, 12).low == 0.0 and rate(12, 12).high == 1.0
    assert rate(0, 0).value is None
    # PostgreSQL's percentile_cont: linear interpolation between the closest ranks.
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 20.0], 0.99) == pytest.approx(19.9)
    assert percentile([], 0.5) is None


def test_compare_aggregates_pairs_errors_and_latency() -> None:
    a, b = classified("tabby", "lynx"), classified("lynx", "tabby")
    pairs = [
        Pair(200, a, 10.0, 200, a, 20.0),
        Pair(200, a, 30.0, 200, b, 40.0),
        Pair(200, a, 50.0, 503, None, 5.0),
        Pair(400, None, 1.0, 400, None, 1.0),
    ]
    result = compare("classifier", pairs)
    assert (result.samples, result.compared) == (4, 2)
    assert result.metrics["top1_agreement"].value == 0.5 and result.metrics["top1_agreement"].n == 2
    assert result.metrics["top5_overlap"].value == 1.0
    assert (result.live.server_errors.value, result.candidate.server_errors.value) == (0.0, 0.25)
    assert result.error_rate_delta == 0.25
    assert (result.live.p50_ms, result.candidate.p50_ms) == (30.0, 30.0)  # each side's 200 answers only
    assert result.p99_ratio == pytest.approx(percentile([20.0, 40.0], 0.99) / percentile([10.0, 30.0, 50.0], 0.99))
    json.dumps(result.as_dict())  # JSON-ready


def test_the_gate_needs_enough_samples_then_each_bound() -> None:
    same = classified("tabby", "lynx")
    good = [Pair(200, same, 10.0, 200, same, 11.0)] * 50
    gate = Gate(min_samples=50)
    assert gate.failures(compare("classifier", good[:49])) == [
        "49 samples compared, at least 50 needed (shadow longer, or replay captured photos)"]
    assert gate.failures(compare("classifier", good)) == []
    wrong = [Pair(200, same, 10.0, 200, classified("car", "bus"), 11.0)] * 50
    assert [f.split(" ")[0] for f in gate.failures(compare("classifier", wrong))] == ["top1_agreement", "top5_overlap"]
    broken = [Pair(200, same, 10.0, 503, None, 1.0)] * 50
    failures = gate.failures(compare("classifier", broken))
    assert failures[0].startswith("server errors 100.00 % against 0.00 % live")
    assert "top1_agreement: no pair of answers to compare (both must answer 200)" in failures
    slow = [Pair(200, same, 10.0, 200, same, 30.0)] * 50
    assert gate.failures(compare("classifier", slow)) == ["p99 latency 3.00× the live version's (at most 2.0×)"]
    price = [Pair(200, {"price": 10.0}, 1.0, 200, {"price": 13.0, "interval": {"low": 9, "high": 15}}, 1.0)] * 50
    assert gate.failures(compare("price", price)) == ["relative_difference 0.3000 above 0.15"]


# --- the canary -------------------------------------------------------------------------------------------


def test_canary_limits_judge_errors_then_latency_once_enough_requests() -> None:
    limits = CanaryLimits(max_error_rate_delta=0.05, max_p99_ratio=2.0, window_s=60, min_requests=20)
    live = WindowStats(requests=100, server_errors=1, p99_ms=50.0)
    assert limits.breach(live, WindowStats(19, 19, None)) is None  # too few requests to judge
    assert limits.breach(live, WindowStats(20, 1, 60.0)) is None  # 5 % against 1 %: within the margin
    assert "server errors 10.0 % of 20 requests against 1.0 % live" in str(limits.breach(live, WindowStats(20, 2, 60.0)))
    assert "p99 latency 101 ms against 50 ms live" in str(limits.breach(live, WindowStats(20, 0, 101.0)))
    assert limits.breach(None, WindowStats(20, 2, 500.0)) is not None  # no live traffic: errors still count
    assert limits.breach(None, WindowStats(20, 0, 500.0)) is None  # ... latency needs both sides
    assert CanaryLimits.from_json({"window_s": 30, "unknown": 1}) == CanaryLimits(window_s=30)


def rollout(mode: str, fraction: float, version: str = "1.1") -> Rollout:
    return Rollout(id=7, model="classifier", version=version, live_version="1.0", mode=mode, fraction=fraction)


def view(*active: Rollout, seed: int = 0) -> Rollouts:
    rollouts = Rollouts(database=None, rng=random.Random(seed))  # type: ignore[arg-type]  # never refreshed here
    rollouts._active = {r.model: r for r in active}
    return rollouts


def test_a_canary_answers_the_same_clients_throughout_and_keeps_them_as_it_grows() -> None:
    clients = [f"id:client-{i}" for i in range(2000)]
    at_10 = {c for c in clients if view(rollout("canary", 0.10)).canary_version("classifier", c) == "1.1"}
    at_30 = {c for c in clients if view(rollout("canary", 0.30)).canary_version("classifier", c) == "1.1"}
    assert 150 < len(at_10) < 250 and 500 < len(at_30) < 700
    assert at_10 < at_30  # growing the percentage keeps the canary's clients
    again = view(rollout("canary", 0.10))
    assert all((again.canary_version("classifier", c) == "1.1") == (c in at_10) for c in clients)  # sticky
    assert view(rollout("canary", 0.10)).canary_version("price", clients[0]) is None  # other models untouched
    assert view(rollout("shadow", 1.0)).canary_version("classifier", clients[0]) is None
    assert client_share("classifier", "x") == client_share("classifier", "x") != client_share("price", "x")


def test_shadow_sampling_follows_the_fraction() -> None:
    shadowing = view(rollout("shadow", 0.25), seed=3)
    sampled = sum(shadowing.shadow_version("classifier") == "1.1" for _ in range(4000))
    assert 850 < sampled < 1150
    assert view(rollout("canary", 1.0)).shadow_version("classifier") is None


# --- shadowing through the prediction service -------------------------------------------------------------


class Journal:
    """The recorder's submit(): every record, durable at once."""

    def __init__(self) -> None:
        self.records: list[InferenceRecord] = []

    def submit(self, record: InferenceRecord) -> Future[None]:
        self.records.append(record)
        done: Future[None] = Future()
        done.set_result(None)
        return done


def service(tmp_path: Path, candidate_delay_s: float, candidate_status: int = 200, **shadow: Any,
            ) -> tuple[PredictionService, Journal, list[str]]:
    write_keys(tmp_path / "keys.json")
    seen: list[str] = []

    async def torchserve(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path.endswith("/1.1"):
            await asyncio.sleep(candidate_delay_s)
            return httpx.Response(candidate_status, json=classified("lynx", "tabby", version="1.1") if candidate_status == 200 else
                                  {"code": candidate_status, "message": "broken"})
        if request.url.path.endswith("/1.2"):
            return httpx.Response(404, json={"code": 404, "message": "no such version"})
        return httpx.Response(200, json=classified("tabby", "lynx"))

    settings = Settings(torchserve_key_file=tmp_path / "keys.json", cache=False)
    router = Router(settings.routing(), 5.0, 8, transport=httpx.MockTransport(torchserve))
    journal = Journal()
    predictions = PredictionService(router, journal, rollouts=view(rollout("shadow", 1.0)), **shadow)  # type: ignore[arg-type]
    return predictions, journal, seen


def test_a_shadowed_request_is_answered_without_waiting_and_its_copy_recorded_beside_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[float, list[InferenceRecord]]:
        predictions, journal, _ = service(tmp_path, candidate_delay_s=0.3)
        predictions.shadow.start()
        started = time.perf_counter()
        live = await predictions.predict("classifier", None, b"photo", "image/jpeg", "11111111-1111-4111-8111-111111111111")
        answered_in = time.perf_counter() - started
        assert live.record.model_version == "1.0"
        while predictions.shadow.done < 1:
            await asyncio.sleep(0.01)
        await predictions.shadow.stop()
        return answered_in, journal.records

    answered_in, records = asyncio.run(scenario())
    assert answered_in < 0.25  # the candidate takes 0.3 s: the client never waited for it
    live, copy = records
    assert (live.shadow_of, live.source) == (None, "sync")
    assert (copy.shadow_of, copy.source, copy.model_version, copy.status) == (live.request_id, "shadow", "1.1", 200)
    assert copy.request_id != live.request_id and copy.top_label == "lynx"
    assert pair_fields("classifier", live, copy)["top1_agreement"] == 0.0


def test_a_slow_candidate_is_given_up_and_a_full_queue_drops_copies_without_waiting(tmp_path: Path) -> None:
    async def scenario() -> tuple[dict[str, int], list[InferenceRecord], float]:
        predictions, journal, _ = service(tmp_path, candidate_delay_s=5.0, shadow_queue=2, shadow_concurrency=1,
                                          shadow_timeout_s=0.2)
        predictions.shadow.start()
        started = time.perf_counter()
        for i in range(6):
            await predictions.predict("classifier", None, b"photo", "image/jpeg", f"00000000-0000-4000-8000-00000000000{i}")
        answered_in = time.perf_counter() - started
        while predictions.shadow.done < 3:  # one in flight + two queued, each given up after 0.2 s
            await asyncio.sleep(0.02)
        stats = predictions.shadow.stats()
        await predictions.shadow.stop()
        return stats, journal.records, answered_in

    stats, records, answered_in = asyncio.run(scenario())
    assert answered_in < 1.0
    assert stats["shadow_offered"] == 6 and stats["shadow_dropped"] == 3 and stats["shadow_done"] == 3
    copies = [r for r in records if r.shadow_of is not None]
    assert len(copies) == 3 and {c.status for c in copies} == {504}
    assert all("shadow timeout (0.2 s)" in str(c.error) for c in copies)
    assert all(math.isclose(c.latency_ms, 200, rel_tol=0.5) for c in copies)


def test_a_canary_client_gets_the_candidate_and_a_retired_candidate_falls_back_to_live(tmp_path: Path) -> None:
    async def scenario(candidate: str) -> tuple[str | None, list[str]]:
        predictions, _, seen = service(tmp_path, candidate_delay_s=0.0)
        predictions._rollouts = view(rollout("canary", 1.0, version=candidate))
        answer = await predictions.predict("classifier", None, b"photo", "image/jpeg",
                                           "22222222-2222-4222-8222-222222222222", client="id:someone")
        return answer.record.model_version, seen

    version, seen = asyncio.run(scenario("1.1"))
    assert (version, seen) == ("1.1", ["/predictions/classifier/1.1"])
    version, seen = asyncio.run(scenario("1.2"))  # 404: the candidate was retired under the canary
    assert seen == ["/predictions/classifier/1.2", "/predictions/classifier"] and version == "1.0"


# --- in PostgreSQL ----------------------------------------------------------------------------------------


@pytest.fixture
def database() -> Iterator[Database]:
    with fresh_database("rollouts", migrated=True) as dsn:
        db = Database(dsn)
        try:
            yield db
        finally:
            db.close()


def served(request_id: str, output: Any, status: int = 200, latency_ms: float = 10.0, version: str = "1.0",
           shadow_of: str | None = None, source: str = "sync", at: datetime | None = None) -> InferenceRecord:
    return InferenceRecord(
        request_id=request_id, created_at=at or datetime.now(UTC), model="classifier", model_version=version,
        source=source, status=status, latency_ms=latency_ms, batch_size=1, input_sha256="0" * 64, input_bytes=5,
        top_label=None, top_score=None, output=output, error=None, shadow_of=shadow_of,
    )


def test_pairs_count_the_newest_candidate_answer_per_live_request_and_reports_ignore_them(database: Database) -> None:
    live_a, live_b = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime.now(UTC)
    records = [
        served(live_a, classified("tabby")), served(live_b, classified("lynx")),
        served(str(uuid.uuid4()), classified("car"), version="1.1", shadow_of=live_a, source="shadow",
               at=now - timedelta(seconds=5)),
        served(str(uuid.uuid4()), classified("tabby"), version="1.1", shadow_of=live_a, source="replay"),  # newest
        served(str(uuid.uuid4()), None, status=503, version="1.1", shadow_of=live_b, source="shadow"),
    ]
    database.run_transaction(write_inferences, records)
    window = (now - timedelta(minutes=1), now + timedelta(minutes=1))
    pairs = database.run_transaction(candidate_pairs, "classifier", "1.1", *window)
    result = compare("classifier", pairs)
    assert (result.samples, result.metrics["top1_agreement"].value, result.candidate.server_errors.value) == (2, 1.0, 0.5)
    only_shadow = compare("classifier", database.run_transaction(candidate_pairs, "classifier", "1.1", *window,
                                                                  ("shadow",)))
    assert only_shadow.metrics["top1_agreement"].value == 0.0
    # What clients were served: the two live rows only, in results and reports alike.
    rows, _ = database.run_transaction(list_results, ResultFilter(model="classifier"), 10, None)
    assert sorted(r["request_id"] for r in rows) == sorted([live_a, live_b])
    assert [r["requests"] for r in database.run_transaction(error_rates, "classifier", *window, Bucket.HOUR)] == [2]


def test_a_rollout_replaces_the_active_one_and_exactly_one_bridge_aborts_a_failing_canary(database: Database) -> None:
    first, replaced = database.run_transaction(start_rollout, "classifier", "1.1", "1.0", "shadow", 1.0, {}, "alice")
    assert replaced is None
    canary, replaced = database.run_transaction(start_rollout, "classifier", "1.2", "1.0", "canary", 0.5,
                                                {"min_requests": 3, "window_s": 60}, "alice")
    assert replaced is not None and replaced.id == first.id and replaced.state == "stopped"
    assert [r.version for r in database.run_transaction(active_rollouts)] == ["1.2"]
    database.run_transaction(write_inferences, [
        *[served(str(uuid.uuid4()), classified("tabby")) for _ in range(5)],
        *[served(str(uuid.uuid4()), None, status=503, version="1.2") for _ in range(3)],
    ])

    async def two_bridges() -> list[list[Rollout]]:
        bridges = [Rollouts(database), Rollouts(database)]  # type: ignore[arg-type]
        for bridge in bridges:
            await bridge.refresh()
        return list(await asyncio.gather(*(bridge.check_canaries() for bridge in bridges)))

    ended = asyncio.run(two_bridges())
    assert sorted(len(e) for e in ended) == [0, 1]  # one bridge ended it
    (aborted,) = [r for e in ended for r in e]
    assert aborted.state == "aborted" and "server errors 100.0 % of 3 requests" in str(aborted.ended_reason)
    audits = database.run_transaction(lambda conn: _select(conn, "SELECT action, version, detail FROM model_changes"))
    assert [(a, v) for a, v, _ in audits] == [("canary-abort", "1.2")] and audits[0][2]["rollout"] == canary.id
    assert database.run_transaction(active_rollouts) == []

    # Started again, the canary is judged on its own traffic, not on the failures that ended its predecessor.
    database.run_transaction(start_rollout, "classifier", "1.2", "1.0", "canary", 0.5, {"min_requests": 3}, "alice")

    async def one_bridge() -> list[Rollout]:
        bridge = Rollouts(database)  # type: ignore[arg-type]
        await bridge.refresh()
        return await bridge.check_canaries()

    assert asyncio.run(one_bridge()) == []
    assert [r.version for r in database.run_transaction(active_rollouts)] == ["1.2"]


def _select(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()
