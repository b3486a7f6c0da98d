"""Live accuracy: a served answer scored against the ground truth a client sent later (``POST /v1/feedback``).

Per kind of answer (the catalogue's, stack/models.json), a truth has one shape and each answer gets its scores:

=============  ===========================================  ====================================================
kind           truth                                        scores of one answer → report figures
=============  ===========================================  ====================================================
classifier     ``"tabby"`` or ``{"label": "tabby"}``          ``top1_correct``, ``top5_correct`` (0/1)
                                                            → ``top1_accuracy``, ``top5_accuracy``
price          ``12.5`` or ``{"price": 12.5}`` (≥ 0)          ``abs_error``, ``in_interval`` (0/1)
                                                            → ``mean_abs_error``, ``interval_coverage``
similar        ``["id", ...]`` or ``{"items": [...]}``        ``precision_at_k``: answer ids among the truth's / k
                                                            → ``precision_at_k``
anything else  any JSON value                               ``exact`` (0/1): the answer equals it, its ``model``,
                                                            ``batch_size`` and ``cached`` aside → ``exact_match``
=============  ===========================================  ====================================================

Rates carry Wilson's interval, means the normal one (:mod:`stack.comparison`), each with its count. Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stack.answers import essence, finite, item_ids, top_labels
from stack.comparison import Estimate, mean, rate

MAX_ITEMS = 1000  # ids in a similar truth
MAX_TEXT = 1024  # characters of a label or an item id
MAX_DEPTH = 32  # nesting of a generic JSON truth

# Each kind's scores of one answer, in report order; the generic JSON kind's for every other kind.
KIND_SCORES: dict[str, tuple[str, ...]] = {
    "classifier": ("top1_correct", "top5_correct"),
    "price": ("abs_error", "in_interval"),
    "similar": ("precision_at_k",),
}
GENERIC_SCORES = ("exact",)
RATES = frozenset({"top1_correct", "top5_correct", "in_interval", "exact"})  # each answer 0 or 1
# What a report calls the aggregate of each score.
FIGURES = {
    "top1_correct": "top1_accuracy", "top5_correct": "top5_accuracy", "abs_error": "mean_abs_error",
    "in_interval": "interval_coverage", "precision_at_k": "precision_at_k", "exact": "exact_match",
}
EXPECTED = {
    "classifier": 'a label: a non-empty string such as "tabby", or {"label": "tabby"}',
    "price": "a price: a finite number ≥ 0 such as 12.5, or {\"price\": 12.5}",
    "similar": f'the relevant item ids: a list of 1–{MAX_ITEMS} strings such as ["chelsea-01"], or {{"items": [...]}}',
}


class TruthError(ValueError):
    """A truth of the wrong shape for the model's kind; ``message`` says which shape was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def score_names(kind: str) -> tuple[str, ...]:
    """The scores of one answer of ``kind``."""
    return KIND_SCORES.get(kind, GENERIC_SCORES)


def figure_names(kind: str) -> tuple[str, ...]:
    """The figures a report of ``kind`` gives."""
    return tuple(FIGURES[name] for name in score_names(kind))


# --- validation ------------------------------------------------------------------------------------------


def validate_truth(model: str, kind: str, truth: Any) -> Any:
    """``truth`` in its stored form for ``kind`` (``{"label"}``, ``{"price"}``, ``{"items"}``, or the JSON value).

    Raises :class:`TruthError` naming the model, its kind and the expected shape.
    """
    try:
        if kind == "classifier":
            return {"label": _text(_unwrap(truth, "label"), "the label")}
        if kind == "price":
            return {"price": _price(_unwrap(truth, "price"))}
        if kind == "similar":
            return {"items": _ids(_unwrap(truth, "items"))}
        _holdable(truth, 0)
        return essence(truth)
    except _Shape as exc:
        expected = EXPECTED.get(kind, "any JSON value (compared with the whole answer)")
        raise TruthError(f"truth for model {model!r} (kind {kind}) must be {expected}; {exc}") from None


class _Shape(ValueError):
    """What is wrong with a truth, without the expected shape (added by :func:`validate_truth`)."""


def _unwrap(truth: Any, key: str) -> Any:
    if isinstance(truth, dict):
        if set(truth) != {key}:
            raise _Shape(f"got an object with keys {sorted(truth)[:8]}, expected only {key!r}")
        return truth[key]
    return truth


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Shape(f"{what} is {_kind_of(value)}")
    if not value.strip():
        raise _Shape(f"{what} is blank")
    if len(value) > MAX_TEXT:
        raise _Shape(f"{what} is {len(value)} characters long, at most {MAX_TEXT}")
    _holdable(value, 0)
    return value


def _price(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Shape(f"the price is {_kind_of(value)}")
    try:
        price = float(value)
    except OverflowError:
        raise _Shape("the price is too large") from None
    if not math.isfinite(price) or price < 0:
        raise _Shape(f"the price is {value}")
    return price


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _Shape(f"the item ids are {_kind_of(value)}")
    if not value:
        raise _Shape("the list of item ids is empty")
    if len(value) > MAX_ITEMS:
        raise _Shape(f"{len(value)} item ids, at most {MAX_ITEMS}")
    return list(dict.fromkeys(_text(item, f"item id {i}") for i, item in enumerate(value)))


def _holdable(value: Any, depth: int) -> None:
    """Refuse what JSON or PostgreSQL's jsonb cannot hold: NaN/Infinity, U+0000, lone surrogates, deep nesting."""
    if depth > MAX_DEPTH:
        raise _Shape(f"it is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            raise _Shape("it contains U+0000 or a lone surrogate, which cannot be stored")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Shape("it contains NaN or Infinity, which JSON cannot hold")
    elif isinstance(value, dict):
        for key, item in value.items():
            _holdable(key, depth + 1)
            _holdable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _holdable(item, depth + 1)
    elif value is not None and not isinstance(value, (bool, int)):
        raise _Shape(f"it contains {type(value).__name__}, which is not JSON")


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --- scoring ---------------------------------------------------------------------------------------------


def score(kind: str, answer: Any, truth: Any) -> dict[str, float]:
    """The scores of one 200 answer against its validated truth; a score the answer cannot give is left out."""
    if kind == "classifier":
        labels = top_labels(answer)
        if not labels:
            return {}
        return {"top1_correct": float(labels[0] == truth["label"]), "top5_correct": float(truth["label"] in labels)}
    if kind == "price":
        scores: dict[str, float] = {}
        price = finite(answer.get("price")) if isinstance(answer, dict) else None
        if price is not None:
            scores["abs_error"] = abs(price - truth["price"])
        interval = answer.get("interval") if isinstance(answer, dict) else None
        low = finite(interval.get("low")) if isinstance(interval, dict) else None
        high = finite(interval.get("high")) if isinstance(interval, dict) else None
        if low is not None and high is not None:
            scores["in_interval"] = float(low <= truth["price"] <= high)
        return scores
    if kind == "similar":
        ids = item_ids(answer)
        if not ids:
            return {}
        relevant = set(truth["items"])
        return {"precision_at_k": sum(item in relevant for item in ids) / len(ids)}
    return {"exact": float(essence(answer) == truth)}


# --- aggregation -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Judged:
    """One served answer with its truth, in a report's bucket."""

    bucket: datetime
    version: str | None
    answer: Any
    truth: Any


@dataclass(frozen=True)
class AccuracyRow:
    """A version's figures over one time bucket: ``count`` answers with a truth, each figure with its own n."""

    bucket: datetime
    version: str | None
    count: int
    figures: dict[str, Estimate]


def aggregate(kind: str, judged: Iterable[Judged]) -> list[AccuracyRow]:
    """Score every answer and aggregate per (bucket, version), ordered by bucket then version (None last)."""
    groups: dict[tuple[datetime, str | None], list[dict[str, float]]] = {}
    for item in judged:
        groups.setdefault((item.bucket, item.version), []).append(score(kind, item.answer, item.truth))
    rows = []
    for (bucket, version), scores in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1] is None, g[0][1] or "")):
        figures: dict[str, Estimate] = {}
        for name in score_names(kind):
            values = [s[name] for s in scores if name in s]
            if values:
                figures[FIGURES[name]] = rate(int(sum(values)), len(values)) if name in RATES else mean(values)
        rows.append(AccuracyRow(bucket, version, len(scores), figures))
    return rows
