"""Stand-ins for PostgreSQL and InfluxDB behind the recorder's sink interface (unit tests only)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from bridge.metrics_sink import InfluxSink
from bridge.recorder import RecordsRejected, Sink, SinkUnavailable
from bridge.records import InferenceRecord
from bridge.storage import PostgresSink

# TorchServe's stock image_classifier answers one photo with its top labels → probabilities, highest first, and
# no version (our handlers add {"model": {"name", "version"}}).
STOCK_ANSWER = {"warm": 0.875, "bright": 0.0625, "magenta": 0.03125, "dark": 0.015625, "cool": 0.0078125}


def as_jsonb(value: Any) -> Any:
    """``value`` as PostgreSQL's jsonb gives it back: each object's keys shorter first, then bytewise."""
    if isinstance(value, dict):
        ordered = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
        return {key: as_jsonb(value[key]) for key in ordered}
    if isinstance(value, list):
        return [as_jsonb(item) for item in value]
    return value


def make_record(model: str = "resnet18", status: int = 200) -> InferenceRecord:
    return InferenceRecord(
        request_id=str(uuid.uuid4()), created_at=datetime.now(UTC), model=model, model_version="1.0",
        source="sync", status=status, latency_ms=12.5, batch_size=4, input_sha256="ab" * 32, input_bytes=1000,
        top_label="tabby", top_score=0.9, output={"predictions": [{"label": "tabby", "score": 0.9}]}, error=None,
    )


class FlakyStore(Sink):
    """A PostgreSQL stand-in that is down while ``down`` is set; keeps rows by request id."""

    name, policy, keys = PostgresSink.name, PostgresSink.policy, PostgresSink.keys

    def __init__(self) -> None:
        self.rows: dict[str, InferenceRecord] = {}
        self.inserts = 0
        self.down = threading.Event()

    def write(self, records: list[InferenceRecord]) -> None:
        if self.down.is_set():
            raise SinkUnavailable("PostgreSQL is down")
        for r in records:
            self.rows.setdefault(r.request_id, r)
        self.inserts += len(records)


class FakeInflux(Sink):
    name, policy, keys = InfluxSink.name, InfluxSink.policy, InfluxSink.keys

    def __init__(self, buffer_limit: int = 100_000) -> None:
        self.buffer_limit = buffer_limit
        self.points: list[InferenceRecord] = []
        self.down = threading.Event()
        self.reject = False

    def write(self, records: list[InferenceRecord]) -> None:
        if self.reject:
            raise RecordsRejected("field type conflict")
        if self.down.is_set():
            raise SinkUnavailable("InfluxDB is down")
        self.points.extend(records)
