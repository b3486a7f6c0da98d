"""stack.accuracy: a truth's shape per kind, one answer's scores, and the per-(bucket, version) figures."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from stack.accuracy import (
    MAX_ITEMS,
    Judged,
    TruthError,
    aggregate,
    figure_names,
    score,
    validate_truth,
)

CLASSIFIER_ANSWER = {
    "predictions": [{"label": label, "index": i, "score": s} for i, (label, s) in enumerate(
        [("Egyptian cat", 0.37), ("tiger cat", 0.36), ("tabby", 0.17), ("lynx", 0.02), ("window screen", 0.001)])],
    "model": {"name": "classifier", "version": "1.0"}, "batch_size": 1,
}
PRICE_ANSWER = {"price": 86.01, "currency": "EUR", "interval": {"low": 47.63, "high": 155.33, "coverage": 0.8},
                "model": {"name": "price", "version": "1.0"}, "batch_size": 1}
SIMILAR_ANSWER = {"items": [{"id": f"chelsea-0{i}", "distance": i / 10} for i in range(1, 5)]
                  + [{"id": "rocket-03", "distance": 1.3}], "k": 5, "batch_size": 2}
H9 = datetime(2026, 12, 6, 9, tzinfo=UTC)
H10 = datetime(2026, 12, 6, 10, tzinfo=UTC)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "truth", "stored"), [
    ("classifier", "tabby", {"label": "tabby"}),
    ("classifier", {"label": "tiger cat"}, {"label": "tiger cat"}),
    ("price", 12, {"price": 12.0}),
    ("price", {"price": 0}, {"price": 0.0}),
    ("price", 99.95, {"price": 99.95}),
    ("similar", ["a", "b", "a"], {"items": ["a", "b"]}),  # duplicates once, order kept
    ("similar", {"items": ["x"]}, {"items": ["x"]}),
    ("json", {"label": "cat", "model": {"name": "mine"}, "batch_size": 3}, {"label": "cat"}),
    ("json", [1, "two", None], [1, "two", None]),
    ("json", None, None),
])
def test_valid_truths_are_stored_in_one_form(kind: str, truth: Any, stored: Any) -> None:
    assert validate_truth("m", kind, truth) == stored


@pytest.mark.parametrize(("kind", "truth", "says"), [
    ("classifier", ["tabby"], "the label is a list"),
    ("classifier", 281, "the label is a number"),
    ("classifier", None, "the label is null"),
    ("classifier", "   ", "the label is blank"),
    ("classifier", "x" * 1025, "1025 characters long, at most 1024"),
    ("classifier", {"label": "tabby", "score": 1}, "keys ['label', 'score'], expected only 'label'"),
    ("classifier", "tab\x00by", "U+0000"),
    ("price", "12.5", "the price is a string"),
    ("price", True, "the price is a boolean"),
    ("price", -1, "the price is -1"),
    ("price", math.inf, "the price is inf"),
    ("price", 10**400, "the price is too large"),
    ("price", {"value": 3}, "expected only 'price'"),
    ("similar", "chelsea-01", "the item ids are a string"),
    ("similar", [], "the list of item ids is empty"),
    ("similar", ["a", 7], "item id 1 is a number"),
    ("similar", [str(i) for i in range(MAX_ITEMS + 1)], f"{MAX_ITEMS + 1} item ids, at most {MAX_ITEMS}"),
    ("json", {"a": math.nan}, "NaN or Infinity"),
    ("json", {"a\x00": 1}, "U+0000"),
    ("json", ["\ud800"], "lone surrogate"),
    ("json", _nested(34), "nested more than 32 levels"),
    ("json", {"when": datetime(2026, 1, 1)}, "not JSON"),
])
def test_a_wrong_truth_says_the_kind_the_expected_shape_and_what_was_wrong(kind: str, truth: Any, says: str) -> None:
    with pytest.raises(TruthError) as raised:
        validate_truth("mine", kind, truth)
    message = raised.value.message
    assert message.startswith(f"truth for model 'mine' (kind {kind}) must be ")
    assert says in message
    expected = {"classifier": "a label", "price": "a price", "similar": "the relevant item ids",
                "json": "any JSON value"}[kind]
    assert expected in message


# --- scoring ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "top1", "top5"), [
    ("Egyptian cat", 1.0, 1.0), ("tabby", 0.0, 1.0), ("window screen", 0.0, 1.0), ("espresso", 0.0, 0.0),
])
def test_classifier_top1_and_top5(label: str, top1: float, top5: float) -> None:
    assert score("classifier", CLASSIFIER_ANSWER, {"label": label}) == {"top1_correct": top1, "top5_correct": top5}


def test_a_stock_label_score_map_is_ranked_by_score_without_the_bookkeeping() -> None:
    answer = {"tabby": 0.1, "tiger cat": 0.7, "lynx": 0.2, "batch_size": 8, "cached": True}
    assert score("classifier", answer, {"label": "tiger cat"}) == {"top1_correct": 1.0, "top5_correct": 1.0}
    assert score("classifier", answer, {"label": "batch_size"}) == {"top1_correct": 0.0, "top5_correct": 0.0}


def test_a_classifier_answer_without_labels_gives_no_score() -> None:
    assert score("classifier", {"raw": "oops"}, {"label": "tabby"}) == {}


@pytest.mark.parametrize(("price", "error", "inside"), [
    (86.01, 0.0, 1.0), (100.0, 13.99, 1.0), (47.63, 38.38, 1.0), (155.33, 69.32, 1.0), (30.0, 56.01, 0.0),
    (200.0, 113.99, 0.0),
])
def test_price_absolute_error_and_interval(price: float, error: float, inside: float) -> None:
    scores = score("price", PRICE_ANSWER, {"price": price})
    assert scores["abs_error"] == pytest.approx(error)
    assert scores["in_interval"] == inside


def test_a_price_answer_without_an_interval_has_only_its_error() -> None:
    assert score("price", {"price": 10}, {"price": 12.5}) == {"abs_error": 2.5}
    assert score("price", {"currency": "EUR"}, {"price": 12.5}) == {}


def test_similar_precision_at_k_is_the_share_of_answered_ids_that_are_relevant() -> None:
    assert score("similar", SIMILAR_ANSWER, {"items": ["chelsea-01", "chelsea-03", "flower-01"]}) == {
        "precision_at_k": 2 / 5}
    assert score("similar", SIMILAR_ANSWER, {"items": ["nothing"]}) == {"precision_at_k": 0.0}
    assert score("similar", {"items": [], "k": 0}, {"items": ["a"]}) == {}


def test_a_generic_answer_matches_its_truth_exactly_apart_from_the_bookkeeping() -> None:
    truth = validate_truth("mine", "json", {"label": "cat", "box": [1, 2, 3, 4]})
    assert score("json", {"label": "cat", "box": [1, 2, 3, 4], "model": {"v": 1}, "cached": True}, truth) == {
        "exact": 1.0}
    assert score("json", {"label": "cat", "box": [1, 2, 3, 5]}, truth) == {"exact": 0.0}
    assert score("json", [1, 2], [1, 2]) == {"exact": 1.0}


# --- aggregation -----------------------------------------------------------------------------------------


def test_classifier_figures_per_bucket_and_version_equal_hand_computed_ones() -> None:
    right, top5, wrong = {"label": "Egyptian cat"}, {"label": "tabby"}, {"label": "espresso"}
    judged = [
        Judged(H9, "1.0", CLASSIFIER_ANSWER, right), Judged(H9, "1.0", CLASSIFIER_ANSWER, right),
        Judged(H9, "1.0", CLASSIFIER_ANSWER, right), Judged(H9, "1.0", CLASSIFIER_ANSWER, top5),
        Judged(H9, "2.0", CLASSIFIER_ANSWER, wrong),
        Judged(H10, None, CLASSIFIER_ANSWER, right),
        Judged(H9, None, {"raw": "no labels"}, right),  # counted, scored by no figure
    ]
    rows = aggregate("classifier", judged)
    assert [(r.bucket, r.version, r.count) for r in rows] == [(H9, "1.0", 4), (H9, "2.0", 1), (H9, None, 1),
                                                              (H10, None, 1)]
    first = rows[0].figures
    # 3 of 4 top-1, 4 of 4 top-5; Wilson's 95 % interval by hand: (p + z²/2n ± z·√(p(1−p)/n + z²/4n²)) / (1 + z²/n)
    assert (first["top1_accuracy"].value, first["top1_accuracy"].n) == (0.75, 4)
    assert first["top1_accuracy"].low == pytest.approx(0.300641, abs=1e-6)
    assert first["top1_accuracy"].high == pytest.approx(0.954412, abs=1e-6)
    assert (first["top5_accuracy"].value, first["top5_accuracy"].high) == (1.0, 1.0)
    assert first["top5_accuracy"].low == pytest.approx(0.510109, abs=1e-6)
    second = rows[1].figures
    assert (second["top1_accuracy"].value, second["top5_accuracy"].value) == (0.0, 0.0)
    assert second["top1_accuracy"].low == pytest.approx(0.0, abs=1e-12)
    assert second["top1_accuracy"].high == pytest.approx(0.793451, abs=1e-6)
    assert rows[2].figures == {}


def test_price_figures_are_the_mean_absolute_error_and_the_coverage() -> None:
    truths = [86.01, 100.0, 30.0, 200.0]  # errors 0, 13.99, 56.01, 113.99; inside, inside, out, out
    rows = aggregate("price", [Judged(H9, "1.0", PRICE_ANSWER, {"price": p}) for p in truths])
    [row] = rows
    mae = row.figures["mean_abs_error"]
    assert (mae.value, mae.n) == (pytest.approx(45.9975), 4)
    spread = math.sqrt(sum((e - 45.9975) ** 2 for e in (0.0, 13.99, 56.01, 113.99)) / 3)
    assert mae.low == pytest.approx(45.9975 - 1.959964 * spread / 2, abs=1e-4)
    assert mae.high == pytest.approx(45.9975 + 1.959964 * spread / 2, abs=1e-4)
    coverage = row.figures["interval_coverage"]
    assert (coverage.value, coverage.n) == (0.5, 4)
    assert (coverage.low, coverage.high) == (pytest.approx(0.150039, abs=1e-6), pytest.approx(0.849961, abs=1e-6))


def test_one_price_has_a_mean_without_an_interval() -> None:
    [row] = aggregate("price", [Judged(H9, "1.0", {"price": 10.0}, {"price": 12.0})])
    mae = row.figures["mean_abs_error"]
    assert (mae.value, mae.low, mae.high, mae.n) == (2.0, None, None, 1)
    assert "interval_coverage" not in row.figures


def test_similar_and_generic_figures() -> None:
    [similar] = aggregate("similar", [
        Judged(H9, "1.0", SIMILAR_ANSWER, {"items": ["chelsea-01", "chelsea-02"]}),
        Judged(H9, "1.0", SIMILAR_ANSWER, {"items": ["chelsea-01", "chelsea-02", "chelsea-03", "chelsea-04"]}),
    ])
    assert (similar.figures["precision_at_k"].value, similar.figures["precision_at_k"].n) == (
        pytest.approx(0.6), 2)
    [generic] = aggregate("json", [Judged(H9, "1", {"a": 1}, {"a": 1}), Judged(H9, "1", {"a": 2}, {"a": 1})])
    assert (generic.count, generic.figures["exact_match"].value) == (2, 0.5)


def test_each_kind_names_its_figures() -> None:
    assert figure_names("classifier") == ("top1_accuracy", "top5_accuracy")
    assert figure_names("price") == ("mean_abs_error", "interval_coverage")
    assert figure_names("similar") == ("precision_at_k",)
    assert figure_names("json") == figure_names("anything-else") == ("exact_match",)
