"""Predictions: forward to TorchServe, time it, hand the record to the recorder, answer."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from bridge.errors import BridgeError
from bridge.recorder import Recorder
from bridge.records import InferenceRecord, summarise_output
from bridge.torchserve import TorchServeClient, UpstreamResponse


@dataclass(frozen=True)
class Prediction:
    """TorchServe's answer plus what the bridge adds to it."""

    request_id: str
    model_version: str | None
    upstream: UpstreamResponse


class PredictionService:
    """The one path every inference takes, so every inference is recorded exactly once."""

    def __init__(self, client: TorchServeClient, recorder: Recorder) -> None:
        self._client = client
        self._recorder = recorder

    async def predict(
        self, model: str, version: str | None, body: bytes, content_type: str, request_id: str | None = None, source: str = "sync"
    ) -> Prediction:
        """Run one input through ``model`` (default version unless ``version``) and record it."""
        request_id = request_id or str(uuid.uuid4())
        started = time.perf_counter()
        common = {
            "request_id": request_id,
            "created_at": datetime.now(timezone.utc),
            "model": model,
            "source": source,
            "input_sha256": hashlib.sha256(body).hexdigest(),
            "input_bytes": len(body),
        }

        def record(**fields: object) -> None:
            latency_ms = (time.perf_counter() - started) * 1000.0
            self._recorder.submit(InferenceRecord(latency_ms=latency_ms, **common, **fields))  # type: ignore[arg-type]

        try:
            upstream = await self._client.predict(model, version, body, content_type)
        except BridgeError as exc:
            record(model_version=version, status=exc.status, batch_size=None, top_label=None, top_score=None,
                   output=None, error=exc.message)
            raise
        output, top_label, top_score, error = summarise_output(upstream.status, upstream.body, upstream.content_type)
        served_version = version
        if isinstance(output, dict) and isinstance(output.get("model"), dict):
            served_version = output["model"].get("version") or version
        record(model_version=served_version, status=upstream.status, batch_size=upstream.batch_size,
               top_label=top_label, top_score=top_score, output=output, error=error)
        return Prediction(request_id, served_version, upstream)
