"""One inference, as recorded in PostgreSQL (a row) and InfluxDB (a point)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class InferenceRecord:
    """Everything kept about one inference; ``request_id`` makes replays idempotent."""

    request_id: str
    created_at: datetime
    model: str
    model_version: str | None
    source: str
    status: int
    latency_ms: float
    batch_size: int | None
    input_sha256: str
    input_bytes: int
    top_label: str | None
    top_score: float | None
    output: Any
    error: str | None

    def to_json(self) -> str:
        """One JSON line (for the spool)."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> InferenceRecord:
        """Inverse of :meth:`to_json`."""
        data = json.loads(line)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


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
