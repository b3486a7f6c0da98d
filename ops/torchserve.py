"""servingctl's view of TorchServe: :class:`stack.torchserve.Client` with its answers parsed for the CLI.

Keys, renewal, retries and request shapes are ``stack.torchserve``'s (prediction parameters travel as form
fields, so a golden case's parameters reach the handler). Here: descriptions parsed into :class:`ModelInfo`,
and TorchServe's failures worded for a person at a terminal as :mod:`ops.errors`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from ops.errors import KeyRejected, NotFound, OpsError, TorchServeDown
from ops.settings import Settings
from stack import torchserve
from stack.routing import Box, Unrouted

KEY_ATTEMPTS = 2  # one retry with the key file re-read, then say the key file may be stale


@dataclass(frozen=True)
class Worker:
    """One worker process of a model version."""

    id: str
    status: str
    memory_bytes: int
    pid: int | None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as ``GET /models/{m}/all`` describes it."""

    version: str
    url: str
    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: int
    response_timeout_s: int
    workers: tuple[Worker, ...]

    @property
    def ready(self) -> int:
        """Workers able to answer."""
        return sum(1 for w in self.workers if w.status == "READY")

    def workers_text(self) -> str:
        """``min=2 max=2 workers=2`` (what scale changes, as recorded in the history)."""
        return f"min={self.min_workers} max={self.max_workers} workers={len(self.workers)}"

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VersionInfo:
        """Parse one element of TorchServe's describe answer."""
        return cls(
            version=str(raw.get("modelVersion", "")),
            url=str(raw.get("modelUrl", "")),
            min_workers=int(raw.get("minWorkers", 0)),
            max_workers=int(raw.get("maxWorkers", 0)),
            batch_size=int(raw.get("batchSize", 1)),
            max_batch_delay_ms=int(raw.get("maxBatchDelay", 0)),
            response_timeout_s=int(raw.get("responseTimeout", 0)),
            workers=tuple(
                Worker(
                    id=str(w.get("id", "")),
                    status=str(w.get("status", "")),
                    memory_bytes=int(w.get("memoryUsage") or 0),
                    pid=int(w["pid"]) if isinstance(w.get("pid"), int) and w["pid"] >= 0 else None,
                )
                for w in raw.get("workers", [])
            ),
        )


@dataclass(frozen=True)
class ModelInfo:
    """Every registered version of a model and which one is the default."""

    name: str
    default: str
    versions: tuple[VersionInfo, ...] = field(default_factory=tuple)

    def version(self, version: str) -> VersionInfo | None:
        """The registered ``version``, or None."""
        return next((v for v in self.versions if v.version == version), None)

    @property
    def default_info(self) -> VersionInfo:
        """The default version's description."""
        found = self.version(self.default)
        assert found is not None, "TorchServe's default version is among its versions"
        return found


@dataclass(frozen=True)
class Prediction:
    """TorchServe's answer to one prediction."""

    status: int
    body: Any
    text: str


@dataclass(frozen=True)
class CandidateFailure:
    """A prediction TorchServe did not answer usefully: the status and error the bridge records for it."""

    status: int
    error: str


class TorchServe:
    """The model server boxes' management APIs (and inference APIs for golden checks), each authenticated from its
    own key file; every call goes to the box the routes (stack.routing, ``--routes``) give its model."""

    def __init__(self, settings: Settings, transport: httpx.BaseTransport | None = None) -> None:
        self._settings = settings
        self._routes = settings.routing()
        self._clients = {
            box: torchserve.Client(
                box.url, box.management_url, box.key_file, timeout_s=settings.timeout,
                sync_timeout_s=settings.sync_timeout, key_attempts=KEY_ATTEMPTS, transport=transport,
            )
            for box in self._routes.boxes()
        }
        self._only: Box | None = None

    def boxes(self) -> list[Box]:
        """Every routed box (this view's one box when pinned)."""
        return [self._only] if self._only is not None else self._routes.boxes()

    def replicas(self, model: str) -> tuple[Box, ...]:
        """The boxes serving ``model`` (a model scaled out has several); NotFound when it is routed nowhere."""
        try:
            return self._routes.replicas(model)
        except Unrouted as exc:
            raise NotFound(f"{exc}; routed models: {', '.join(sorted(self._routes.routes)) or 'none'}") from exc

    def on(self, box: Box) -> TorchServe:
        """A view of this client whose every call goes to ``box`` (connections shared): changes box by box."""
        view = copy.copy(self)
        view._only = box
        return view

    def close(self) -> None:
        """Release pooled connections."""
        for client in self._clients.values():
            client.close()

    def _box(self, model: str) -> Box:
        return self._only if self._only is not None else self.replicas(model)[0]

    def _client(self, model: str) -> torchserve.Client:
        return self._clients[self._box(model)]

    @contextmanager
    def _errors(self, box: Box) -> Iterator[None]:
        """TorchServe's failures as servingctl's errors, worded with what to do next."""
        address = urlsplit(box.management_url).netloc or box.management_url
        try:
            yield
        except torchserve.TorchServeUnreachable as exc:
            raise TorchServeDown(f"TorchServe is not running on {exc.address}; start it with `make up`") from exc
        except torchserve.TorchServeTimeout as exc:
            raise TorchServeDown(exc.message) from exc
        except torchserve.KeyFileUnreadable as exc:
            # TorchServe deletes its key file on stop: tell "down" apart from "wrong --key-file".
            if not self._clients[box].reachable():
                raise TorchServeDown(f"TorchServe is not running on {address}; start it with `make up`") from exc
            raise KeyRejected(
                f"TorchServe's key file {box.key_file} is missing or unreadable, yet something answers on "
                f"{address}: pass the running TorchServe's key file with --key-file (or SERVINGCTL_KEY_FILE)"
            ) from exc
        except torchserve.KeyRejected as exc:
            raise KeyRejected(
                f"TorchServe rejected the {exc.api} key from {exc.key_file} (400 InvalidKeyException): "
                "the key file may be stale (TorchServe restarted elsewhere, or the key expired); "
                "check --key-file / SERVINGCTL_KEY_FILE points at the running TorchServe's key_file.json"
            ) from exc
        except torchserve.NotFound as exc:
            raise self._not_found(exc.model, exc.version, exc.kind) from exc
        except torchserve.TorchServeError as exc:
            raise OpsError(exc.message) from exc

    def _not_found(self, model: str, version: str | None, kind: str) -> NotFound:
        if version is not None and kind == "ModelVersionNotFoundException":
            try:
                known = ", ".join(v.version for v in self.describe(model).versions)
            except OpsError:
                known = "?"
            return NotFound(f"model {model!r} has no version {version!r}; registered versions: {known}")
        try:
            names = ", ".join(sorted(self.list_models())) or "none"
        except OpsError:
            names = "?"
        return NotFound(f"TorchServe has no model {model!r}; registered models: {names}")

    # --- the management API ---------------------------------------------------------------------------

    def list_models(self) -> list[str]:
        """Names of the registered models, each from the box it is routed to."""
        names: list[str] = []
        for box in self.boxes():
            with self._errors(box):
                names += [name for name in self._clients[box].models()
                          if self._routes.serves(box, name) and name not in names]
        return names

    def describe(self, model: str) -> ModelInfo:
        """Every version of ``model``, its workers and batch settings, and the default version."""
        with self._errors(self._box(model)):
            every = self._client(model).describe(model, "all")
            default = self._client(model).describe(model)
        versions = tuple(sorted((VersionInfo.from_json(v) for v in every), key=lambda v: _version_key(v.version)))
        return ModelInfo(name=model, default=str(default[0]["modelVersion"]), versions=versions)

    def register(self, model: str, archive: str, initial_workers: int, overrides: dict[str, int] | None = None) -> str:
        """Register an archive of the model store on ``model``'s box (synchronously: once its workers are up).

        ``overrides`` (batch_size, max_batch_delay, response_timeout) take precedence over the archive's
        model-config.yaml for this version; its minWorkers/maxWorkers take precedence over initial_workers.
        """
        with self._errors(self._box(model)):
            try:
                return self._client(model).register(archive, initial_workers, overrides)
            except torchserve.ManagementRefused as exc:
                raise OpsError(f"TorchServe refused to register {archive} ({exc.status} {exc.kind}): {exc.detail}") from exc

    def unregister(self, model: str, version: str) -> None:
        """Unregister one version (its workers stop)."""
        with self._errors(self._box(model)):
            self._client(model).unregister(model, version)

    def set_default(self, model: str, version: str) -> None:
        """Make ``version`` the one ``/predictions/{model}`` serves."""
        with self._errors(self._box(model)):
            self._client(model).set_default(model, version)

    def scale(self, model: str, version: str | None, min_workers: int, max_workers: int) -> None:
        """Set a version's worker range and wait until TorchServe has scaled it."""
        with self._errors(self._box(model)):
            self._client(model).scale(model, version, min_workers, max_workers)

    # --- the inference API ----------------------------------------------------------------------------

    def predict(self, model: str, version: str, body: bytes, params: dict[str, str] | None = None) -> Prediction:
        """Send one photo to ``/predictions/{model}/{version}`` (parameters as form fields beside it).

        A worker failing on it is an answer too (a failed golden check), not an outage.
        """
        with self._errors(self._box(model)):
            try:
                answer = self._client(model).predict(model, version, body, params=params)
            except torchserve.WorkerFailed as exc:
                return Prediction(status=exc.status, body=None, text=exc.message)
        text = answer.body[:500].decode("utf-8", errors="replace")
        return Prediction(status=answer.status, body=answer.json(), text=text)

    def infer(self, model: str, version: str, body: bytes) -> torchserve.Answer | CandidateFailure:
        """Send one photo to ``/predictions/{model}/{version}`` and return TorchServe's answer as it came (replay).

        A failing worker or no answer in time is the candidate's failure, returned as the bridge records it (503,
        504) rather than raised, as is any status TorchServe answers; TorchServe unreachable or a rejected key raise.
        """
        with self._errors(self._box(model)):
            try:
                return self._client(model).predict(model, version, body)
            except torchserve.WorkerFailed as exc:
                return CandidateFailure(503, exc.message)
            except torchserve.TorchServeTimeout as exc:
                return CandidateFailure(504, f"TorchServe did not answer within the time limit ({exc.timeout_s:g} s)")


def _version_key(version: str) -> tuple[Any, ...]:
    """Sort 1.0 < 2.0 < 10.0 (numeric parts numerically, anything else after, as text)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))
