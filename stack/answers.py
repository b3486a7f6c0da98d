"""A model's answer as it is recorded: its JSON, top label and score, error text, and the version it names; and
the readings of an answer that comparisons and accuracy share (its top labels, item ids, numbers, essence).

Torch-free and FastAPI-free: the bridge records every prediction with it, and ``servingctl replay`` records a
candidate's answers with it, so a replayed answer is summarised exactly as a served one.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = [
    "ANSWER_BOOKKEEPING", "answered_version", "essence", "finite", "item_ids", "score_map", "summarise_output",
    "top_labels",
]

ANSWER_BOOKKEEPING = ("model", "batch_size", "cached")  # parts of an answer that say how it was made, not what


def summarise_output(status: int, body: bytes, content_type: str | None) -> tuple[Any, str | None, float | None, str | None]:
    """(output JSON, top label, top score, error message) from a prediction's response body.

    Whatever the body holds (any bytes, JSON nested beyond Python's limit, huge numbers), this never raises.
    """
    output: Any = None
    if body and ((content_type or "").startswith("application/json") or body[:1] in (b"{", b"[")):
        try:
            output = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep to parse
            output = None
    if output is None and body:
        output = {"raw": body[:2000].decode("utf-8", "replace")}
    if status >= 400:
        message = output.get("message") if isinstance(output, dict) else None
        return output, None, None, str(message or body[:500].decode("utf-8", "replace"))
    top_label, top_score = _top(output)
    return output, top_label, top_score, None


def _top(output: Any) -> tuple[str | None, float | None]:
    """The top label and score: our handlers' first prediction, or the highest of a ``{label: score}`` map."""
    predictions = output.get("predictions") if isinstance(output, dict) else None
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        label = predictions[0].get("label")
        return (label if isinstance(label, str) else _number_text(label)), finite(predictions[0].get("score"))
    scores = score_map(output)
    return next(iter(scores.items())) if scores else (None, None)


def score_map(output: Any) -> dict[str, float] | None:
    """``output`` as ``{label: score}`` highest first, if it is one (TorchServe's stock classifiers answer so).

    None for anything else: an empty dict, a value that is not a finite number (a bool is not), our handlers'
    answers. The values are kept as they came; ties keep their order.
    """
    if not isinstance(output, dict) or not output:
        return None
    if any(isinstance(value, bool) or finite(value) is None for value in output.values()):
        return None
    return dict(sorted(output.items(), key=lambda item: -float(item[1])))


def answered_version(output: Any) -> str | None:
    """The version the answer says served it (our handlers' ``{"model": {"version"}}``), if it is a plausible name.

    It becomes a response header (X-Model-Version) and an indexed column: a model answering something else
    there (a number, a dict, a newline, a megabyte) must not break the answer.
    """
    model = output.get("model") if isinstance(output, dict) else None
    version = model.get("version") if isinstance(model, dict) else None
    return version if isinstance(version, str) and _VERSION.fullmatch(version) else None


# The pattern of a version in the bridge's paths and filters (bridge.api.predictions.NAME_PATTERN).
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def _number_text(value: Any) -> str | None:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def finite(value: Any) -> float | None:
    """``value`` as a finite float; None for anything else (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double
        return None
    return number if math.isfinite(number) else None


def essence(output: Any) -> Any:
    """An answer without the keys that say how it was made (:data:`ANSWER_BOOKKEEPING`), not what."""
    if isinstance(output, dict):
        return {key: value for key, value in output.items() if key not in ANSWER_BOOKKEEPING}
    return output


def top_labels(output: Any, k: int = 5) -> list[str]:
    """The top-``k`` labels: our classifiers' ``{"predictions": [{"label"}, ...]}``, or a stock ``{label: score}``."""
    predictions = output.get("predictions") if isinstance(output, dict) else None
    if isinstance(predictions, list):
        return [str(p.get("label")) for p in predictions[:k] if isinstance(p, dict)]
    if isinstance(output, dict):
        numbers = [(key, number) for key, value in essence(output).items() if (number := finite(value)) is not None]
        return [key for key, _ in sorted(numbers, key=lambda item: -item[1])[:k]]
    return []


def item_ids(output: Any) -> list[str]:
    """The ids of a similar-items answer (``{"items": [{"id"}, ...]}``), nearest first."""
    items = output.get("items") if isinstance(output, dict) else None
    return [str(item.get("id")) for item in items if isinstance(item, dict)] if isinstance(items, list) else []
