"""Stand-ins for PostgreSQL and InfluxDB behind the recorder's interfaces (unit tests only)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

from bridge.metrics_sink import PointsRejected
from bridge.records import InferenceRecord


def make_record(model: str = "resnet18", status: int = 200) -> InferenceRecord:
    return InferenceRecord(
        request_id=str(uuid.uuid4()), created_at=datetime.now(timezone.utc), model=model, model_version="1.0",
        source="sync", status=status, latency_ms=12.5, batch_size=4, input_sha256="ab" * 32, input_bytes=1000,
        top_label="tabby", top_score=0.9, output={"predictions": [{"label": "tabby", "score": 0.9}]}, error=None,
    )


class FlakyStore:
    """A PostgreSQL stand-in that is down while ``down`` is set; keeps rows by request id."""

    def __init__(self) -> None:
        self.rows: dict[str, InferenceRecord] = {}
        self.inserts = 0
        self.down = threading.Event()

    def write(self, records: list[InferenceRecord]) -> int:
        if self.down.is_set():
            raise ConnectionError("PostgreSQL is down")
        new = [r for r in records if r.request_id not in self.rows]
        for r in new:
            self.rows[r.request_id] = r
        self.inserts += len(records)
        return len(new)

    def close(self) -> None:
        pass


class FakeInflux:
    def __init__(self) -> None:
        self.points: list[InferenceRecord] = []
        self.down = threading.Event()
        self.reject = False

    def write(self, records: list[InferenceRecord]) -> None:
        if self.reject:
            raise PointsRejected("field type conflict")
        if self.down.is_set():
            raise ConnectionError("InfluxDB is down")
        self.points.extend(records)

    def close(self) -> None:
        pass
