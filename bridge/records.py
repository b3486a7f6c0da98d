"""What the bridge records of one inference: the record (defined once, in stack.database) and its summary."""

from __future__ import annotations

import json
from typing import Any

from stack.database import InferenceRecord

__all__ = ["InferenceRecord", "summarise_output"]


def summarise_output(status: int, body: bytes, content_type: str | None) -> tuple[Any, str | None, float | None, str | None]:
    """(output JSON, top label, top score, error message) from a prediction's response body."""
    output: Any = None
    if body and ((content_type or "").startswith("application/json") or body[:1] in (b"{", b"[")):
        try:
            output = json.loads(body)
        except ValueError:
            output = None
    if output is None and body:
        output = {"raw": body[:2000].decode("utf-8", "replace")}
    if status >= 400:
        message = output.get("message") if isinstance(output, dict) else None
        return output, None, None, str(message or body[:500].decode("utf-8", "replace"))
    top_label = top_score = None
    predictions = output.get("predictions") if isinstance(output, dict) else None
    if isinstance(predictions, list) and predictions and isinstance(predictions[0], dict):
        top_label = predictions[0].get("label")
        score = predictions[0].get("score")
        top_score = float(score) if isinstance(score, (int, float)) else None
    return output, top_label, top_score, None
