"""Predictions: forward to the model's box (bridge.routing), time it, record it durably, answer.

``run()`` performs one inference and describes it; ``record()`` journals that description under a request
id and returns once it is durable. The sync route does both for every request; the job runner chooses
the request id after seeing the outcome (a job's final answer per model is recorded exactly once).

A model's active rollout (bridge.rollouts) acts here, on requests that name no version: a canary client is
answered by the candidate version; a request sampled for shadowing is answered as usual, then copied to the
candidate off the request path (bridge.shadow) and the candidate's answer recorded beside the live one.
A sampled photo is also kept for ``servingctl replay`` (bridge.captures), written off the request path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from bridge.cache import ResultCache
from bridge.captures import CaptureStore
from bridge.errors import BridgeError, RecordingUnavailable
from bridge.outbox import PointOutbox
from bridge.priority import PriorityGate
from bridge.recorder import Recorder, RecordingFailed
from bridge.records import InferenceRecord, answered_version, score_map, summarise_output
from bridge.rollouts import PAIR_MEASUREMENT, Rollouts, pair_fields
from bridge.routing import Router
from bridge.shadow import ShadowCopy, ShadowQueue
from stack import models
from stack.torchserve import Answer

JSON = "application/json"
BATCH_SOURCES = frozenset(("job",))  # wait behind interactive requests when a model is saturated (bridge.priority)


@dataclass(frozen=True)
class Prediction:
    """One inference: TorchServe's answer (or the bridge's error) and its record-to-be."""

    record: InferenceRecord
    upstream: Answer | None
    error: BridgeError | None
    cached: bool = False

    @property
    def final(self) -> bool:
        """A definitive answer (2xx/4xx) rather than an outage worth retrying (5xx)."""
        return self.record.status < 500


def as_cached(output: dict[str, Any]) -> dict[str, Any]:
    """A recorded answer as the cache returns it: ours marked ``"cached": true``; a ``{label: score}`` map
    (TorchServe's stock classifiers) unmarked, where the key would read as a label, and highest score first as
    the model answered it (PostgreSQL's jsonb keeps keys in an order of its own). ``X-Cache: HIT`` says both."""
    scores = score_map(output)
    return scores if scores is not None else {**output, "cached": True}


class PredictionService:
    """The one path every inference takes, so every inference is recorded."""

    def __init__(
        self, client: Router, recorder: Recorder, cache: ResultCache | None = None, rollouts: Rollouts | None = None,
        outbox: PointOutbox | None = None, shadow_queue: int = 64, shadow_concurrency: int = 1,
        shadow_timeout_s: float = 10.0, captures: CaptureStore | None = None, gate: PriorityGate | None = None,
    ) -> None:
        self._client = client
        self.gate = gate or PriorityGate(0)
        self._captures = captures
        self._recorder = recorder
        self._cache = cache
        self._rollouts = rollouts
        self._outbox = outbox
        self.shadow = ShadowQueue(self._answer_shadow, shadow_queue, shadow_concurrency, shadow_timeout_s)

    async def cached(self, model: str, version: str | None, body: bytes, digest: str | None = None) -> Prediction | None:
        """The recorded answer for this photo on this model version (default version unless given).

        ``digest``: the body's sha256 (hex) if the caller has it already.
        """
        if self._cache is None:
            return None
        started = time.perf_counter()
        version = version or await self._client.default_version(model)
        if version is None:
            return None
        digest = digest or hashlib.sha256(body).hexdigest()
        output = await self._cache.lookup(digest, model, version)
        if not isinstance(output, dict):
            return None
        output = as_cached(output)
        payload = json.dumps(output).encode()
        summary = summarise_output(200, payload, JSON)
        record = InferenceRecord(
            request_id="", created_at=datetime.now(UTC), model=model, model_version=version,
            source="cache", status=200, latency_ms=(time.perf_counter() - started) * 1000.0, batch_size=None,
            input_sha256=digest, input_bytes=len(body), top_label=summary[1], top_score=summary[2],
            output=output, error=None,
        )
        return Prediction(record, Answer(200, payload, JSON, None), None, cached=True)

    async def run(
        self, model: str, version: str | None, body: bytes, content_type: str, source: str,
        params: dict[str, str] | None = None, digest: str | None = None,
    ) -> Prediction:
        """Run ``body`` through ``model`` (default version unless ``version``); never raises for upstream errors.

        ``digest``: the body's sha256 (hex) if the caller has it already.
        """
        created_at = datetime.now(UTC)
        started = time.perf_counter()
        common = {
            "request_id": "",
            "created_at": created_at,
            "model": model,
            "source": source,
            "input_sha256": digest or hashlib.sha256(body).hexdigest(),
            "input_bytes": len(body),
        }
        try:
            async with self.gate.slot(model, batch=source in BATCH_SOURCES):
                upstream = await self._client.predict(model, version, body, content_type, params)
        except BridgeError as exc:
            latency_ms = (time.perf_counter() - started) * 1000.0
            record = InferenceRecord(
                **common, model_version=version, status=exc.status, latency_ms=latency_ms, batch_size=None,  # type: ignore[arg-type]
                top_label=None, top_score=None, output=None, error=exc.message,
            )
            return Prediction(record, None, exc)
        latency_ms = (time.perf_counter() - started) * 1000.0
        output, top_label, top_score, error = summarise_output(upstream.status, upstream.body, upstream.content_type)
        record = InferenceRecord(
            **common, model_version=await self._served_version(model, version, output), status=upstream.status,  # type: ignore[arg-type]
            latency_ms=latency_ms, batch_size=upstream.batch_size, top_label=top_label, top_score=top_score,
            output=output, error=error,
        )
        return Prediction(record, upstream, None)

    async def _served_version(self, model: str, requested: str | None, output: Any) -> str | None:
        """The version that answered: the one the answer names, else the one requested, else the default version.

        Our handlers name theirs; another handler (TorchServe's stock ones) does not, and TorchServe's answer
        carries no version, so the bridge takes the model's default from the router: TorchServe's management
        API, cached per model for ``DEFAULT_VERSION_TTL_S`` (5 s; the same lookup the results cache keys by).
        The residual race: for that long after a set-default (plus the request's own time) such an answer may
        be recorded under the version that was the default before.
        """
        return answered_version(output) or requested or await self._client.default_version(model)

    async def record(self, prediction: Prediction, request_id: str) -> InferenceRecord:
        """Journal the prediction under ``request_id``; returns once it is durable."""
        record = replace(prediction.record, request_id=request_id)
        try:
            await asyncio.wrap_future(self._recorder.submit(record))
        except RecordingFailed as exc:
            raise RecordingUnavailable("the result could not be recorded; it was not kept — retry") from exc
        return record

    async def predict(
        self,
        model: str,
        version: str | None,
        body: bytes,
        content_type: str,
        request_id: str,
        source: str = "sync",
        params: dict[str, str] | None = None,
        use_cache: bool = True,
        client: str = "",
    ) -> Prediction:
        """Answer from the cache, or run; record durably; then answer (or raise the bridge's own error).

        ``client``: who asks (bridge.rollouts), so that a canary answers the same clients throughout.
        """
        digest = hashlib.sha256(body).hexdigest()  # once: the cache's key and the record's
        prediction = None
        if use_cache:
            prediction = await self.cached(model, version or self.canary_version(model, client), body, digest)
        if prediction is None:
            prediction = await self.run_routed(model, version, body, content_type, source, params, digest, client)
        record = await self.record(prediction, request_id)
        if version is None and not prediction.cached:
            self.offer_shadow(model, body, content_type, params, record)
        if self._captures is not None and not prediction.cached and not params:  # replay resends the photo alone
            self._captures.offer(digest, body)  # queued for its writer thread: no disk I/O here
        if prediction.error is not None:
            raise prediction.error
        return prediction

    def canary_version(self, model: str, client: str) -> str | None:
        """The candidate when ``client`` is one of ``model``'s canary clients, else None (the default version)."""
        return self._rollouts.canary_version(model, client) if self._rollouts is not None else None

    async def run_routed(
        self, model: str, version: str | None, body: bytes, content_type: str, source: str,
        params: dict[str, str] | None = None, digest: str | None = None, client: str = "",
    ) -> Prediction:
        """:meth:`run`, a request that names no version answered by the canary's candidate when ``client`` is one
        of its clients, and by the default version again if the candidate is gone (404: retired under the canary)."""
        chosen = version or self.canary_version(model, client)
        prediction = await self.run(model, chosen, body, content_type, source, params, digest)
        if chosen != version and prediction.record.status == 404:
            prediction = await self.run(model, version, body, content_type, source, params, digest)
        return prediction

    def offer_shadow(self, model: str, body: bytes, content_type: str, params: dict[str, str] | None,
                     live: InferenceRecord) -> bool:
        """Copy a live request to ``model``'s shadowed candidate when it is sampled; never waits."""
        candidate = self._rollouts.shadow_version(model) if self._rollouts is not None else None
        if candidate is None or candidate == live.model_version:
            return False
        return self.shadow.offer(ShadowCopy(model, candidate, body, content_type, params, live))

    async def _answer_shadow(self, copy: ShadowCopy, timeout_s: float) -> None:
        """Run ``copy`` on its candidate (at most ``timeout_s``), record it beside the live answer, compare them."""
        started = time.perf_counter()
        try:
            prediction = await asyncio.wait_for(
                self.run(copy.model, copy.version, copy.body, copy.content_type, "shadow", copy.params,
                         copy.live.input_sha256), timeout_s)
            record = prediction.record
        except TimeoutError:
            record = replace(copy.live, created_at=datetime.now(UTC), source="shadow", status=504,
                             latency_ms=(time.perf_counter() - started) * 1000.0, batch_size=None, top_label=None,
                             top_score=None, output=None,
                             error=f"the candidate did not answer within the shadow timeout ({timeout_s:g} s)")
        record = replace(record, request_id=str(uuid.uuid4()), shadow_of=copy.live.request_id,
                         model_version=record.model_version or copy.version)
        self._recorder.submit(record)  # journaled like any record; nobody waits for it
        if self._outbox is not None:
            tags = {"model": copy.model, "version": copy.version, "live_version": copy.live.model_version or "unknown",
                    "source": "shadow"}
            self._outbox.add(PAIR_MEASUREMENT, tags, pair_fields(models.describe(copy.model).kind, copy.live, record))
