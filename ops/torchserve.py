"""A small synchronous client for TorchServe's management API (and the predictions a deploy checks).

Keys come from TorchServe's ``key_file.json`` through the bridge's own parser (``bridge.torchserve.read_keys``);
a key about to expire is renewed with the API key (``GET /token``, which rewrites the file), and a request
refused with ``InvalidKeyException`` is retried once after re-reading the file — another process (the
bridge) may have renewed it. Transport failures and TorchServe's error answers become :mod:`ops.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests

from bridge.errors import UpstreamUnavailable
from bridge.torchserve import INVALID_KEY, Keys, read_keys
from ops.errors import KeyRejected, NotFound, OpsError, TorchServeDown
from ops.settings import Settings

RENEW_BEFORE = timedelta(minutes=2)
LIST_LIMIT = 1000  # GET /models pages (default 100); we want every model in one answer


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


def _error_fields(response: requests.Response) -> tuple[str, str]:
    """TorchServe's error ``type`` and ``message`` (its error bodies are JSON), or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:300]
    if isinstance(body, dict):
        return str(body.get("type", "")), str(body.get("message", ""))
    return "", response.text[:300]


class TorchServe:
    """TorchServe's management API (and inference API for golden checks), authenticated from its key file."""

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self._settings = settings
        self._http = session or requests.Session()
        self._keys: Keys | None = None

    def close(self) -> None:
        """Release pooled connections."""
        self._http.close()

    # --- keys -----------------------------------------------------------------------------------------

    def _address(self, url: str) -> str:
        parts = urlsplit(url)
        return parts.netloc or url

    def _down(self, url: str) -> TorchServeDown:
        return TorchServeDown(f"TorchServe is not running on {self._address(url)}; start it with `make up`")

    def _read_keys(self) -> Keys:
        try:
            return read_keys(self._settings.key_file)
        except UpstreamUnavailable as exc:
            # TorchServe deletes its key file on stop: tell "down" apart from "wrong --key-file".
            try:
                self._http.get(self._settings.management_url + "/models", timeout=self._settings.timeout)
            except requests.ConnectionError:
                raise self._down(self._settings.management_url) from exc
            except requests.RequestException:
                pass
            raise KeyRejected(
                f"TorchServe's key file {self._settings.key_file} is missing or unreadable, yet something answers on "
                f"{self._address(self._settings.management_url)}: pass the running TorchServe's key file with "
                "--key-file (or SERVINGCTL_KEY_FILE)"
            ) from exc

    def _key(self, kind: str, reload: bool = False) -> str:
        if self._keys is None or reload:
            self._keys = self._read_keys()
        keys = self._keys
        expires = keys.management_expires if kind == "management" else keys.inference_expires
        if expires is not None and expires - datetime.now(UTC) < RENEW_BEFORE:
            keys = self._renew(kind, keys)
        return keys.management if kind == "management" else keys.inference

    def _renew(self, kind: str, keys: Keys) -> Keys:
        """Ask TorchServe for a fresh key (it rewrites its key file); keep the old one if that fails."""
        try:
            response = self._http.get(
                self._settings.management_url + "/token", params={"type": kind},
                headers={"Authorization": f"Bearer {keys.api}"}, timeout=self._settings.timeout,
            )
        except requests.RequestException:
            return keys
        if response.status_code != 200:
            return keys
        self._keys = self._read_keys()
        return self._keys

    # --- requests -------------------------------------------------------------------------------------

    def _send(self, api: str, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> requests.Response:
        """One authenticated request; refused connections, timeouts and rejected keys raised as OpsError."""
        base = self._settings.management_url if api == "management" else self._settings.inference_url
        timeout = timeout or self._settings.timeout
        extra_headers = kwargs.pop("headers", {})
        for attempt in (1, 2):
            headers = {**extra_headers, "Authorization": f"Bearer {self._key(api, reload=attempt == 2)}"}
            try:
                response = self._http.request(method, base + path, headers=headers, timeout=timeout, **kwargs)
            except requests.Timeout as exc:
                raise TorchServeDown(
                    f"TorchServe on {self._address(base)} did not answer {method} {path} within {timeout:g} s"
                ) from exc
            except requests.ConnectionError as exc:
                raise self._down(base) from exc
            if response.status_code == 400 and INVALID_KEY in response.text[:500]:
                if attempt == 1:
                    continue  # the bridge or TorchServe may have renewed the key: re-read the file once
                raise KeyRejected(
                    f"TorchServe rejected the {api} key from {self._settings.key_file} (400 InvalidKeyException): "
                    "the key file may be stale (TorchServe restarted elsewhere, or the key expired); "
                    "check --key-file / SERVINGCTL_KEY_FILE points at the running TorchServe's key_file.json"
                )
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _management(self, method: str, path: str, *, model: str | None = None, version: str | None = None,
                    **kwargs: Any) -> Any:
        """A management call whose non-2xx answers become errors (404 naming the known models/versions)."""
        response = self._send("management", method, path, **kwargs)
        if response.status_code < 300:
            return response.json() if response.content else {}
        kind, message = _error_fields(response)
        if response.status_code == 404 and model is not None:
            raise self._not_found(model, version, kind)
        raise OpsError(f"TorchServe answered {response.status_code} to {method} {path}: {message or kind}")

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
        """Names of the registered models."""
        body = self._management("GET", "/models", params={"limit": LIST_LIMIT})
        return [m["modelName"] for m in body.get("models", [])]

    def describe(self, model: str) -> ModelInfo:
        """Every version of ``model``, its workers and batch settings, and the default version."""
        every = self._management("GET", f"/models/{model}/all", model=model)
        default = self._management("GET", f"/models/{model}", model=model)
        versions = tuple(sorted((VersionInfo.from_json(v) for v in every), key=lambda v: _version_key(v.version)))
        return ModelInfo(name=model, default=str(default[0]["modelVersion"]), versions=versions)

    def register(self, archive: str, initial_workers: int, overrides: dict[str, int] | None = None) -> str:
        """Register an archive of the model store (synchronously: returns once its workers are up).

        ``overrides`` (batch_size, max_batch_delay, response_timeout) take precedence over the archive's
        model-config.yaml for this version; its minWorkers/maxWorkers take precedence over initial_workers.
        """
        response = self._send(
            "management", "POST", "/models",
            params={"url": archive, "initial_workers": initial_workers, "synchronous": "true", **(overrides or {})},
            timeout=self._settings.sync_timeout,
        )
        if response.status_code >= 300:
            kind, message = _error_fields(response)
            raise OpsError(f"TorchServe refused to register {archive} ({response.status_code} {kind}): {message}")
        return str(response.json().get("status", ""))

    def unregister(self, model: str, version: str) -> None:
        """Unregister one version (its workers stop)."""
        self._management("DELETE", f"/models/{model}/{version}", model=model, version=version,
                         timeout=self._settings.sync_timeout)

    def set_default(self, model: str, version: str) -> None:
        """Make ``version`` the one ``/predictions/{model}`` serves."""
        self._management("PUT", f"/models/{model}/{version}/set-default", model=model, version=version)

    def scale(self, model: str, version: str | None, min_workers: int, max_workers: int) -> None:
        """Set a version's worker range and wait until TorchServe has scaled it."""
        path = f"/models/{model}" + (f"/{version}" if version else "")
        self._management(
            "PUT", path, model=model, version=version,
            params={"min_worker": min_workers, "max_worker": max_workers, "synchronous": "true"},
            timeout=self._settings.sync_timeout,
        )

    # --- the inference API ----------------------------------------------------------------------------

    def predict(self, model: str, version: str, body: bytes, params: dict[str, str] | None = None) -> Prediction:
        """Send one photo to ``/predictions/{model}/{version}`` (parameters in the query string)."""
        response = self._send(
            "inference", "POST", f"/predictions/{model}/{version}", params=params or None, data=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        try:
            parsed: Any = response.json()
        except ValueError:
            parsed = None
        return Prediction(status=response.status_code, body=parsed, text=response.text[:500])


def _version_key(version: str) -> tuple[Any, ...]:
    """Sort 1.0 < 2.0 < 10.0 (numeric parts numerically, anything else after, as text)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in version.split("."))
