"""The bridge's only way to TorchServe: an async HTTP client that owns TorchServe's tokens.

TorchServe (0.12) writes ``key_file.json`` with an inference key, a management key (both expiring after
``token_expiration_min``) and a long-lived API key. Clients of the bridge never see these. The keys are
re-read when the file changes, renewed through ``/token`` shortly before they expire, and a request
refused with ``InvalidKeyException`` is retried once with fresh keys (another process may have renewed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bridge.errors import UpstreamTimeout, UpstreamUnavailable
from stack.torchserve import KeyFileUnreadable, Keys
from stack.torchserve import read_keys as stack_read_keys

logger = logging.getLogger(__name__)

RENEW_BEFORE = timedelta(minutes=2)
MIN_RENEW_BEFORE = timedelta(seconds=5)
KEY_FILE_READ_ATTEMPTS = 5
KEY_ATTEMPTS = 3  # a refused key: re-read the file and retry (another process may just have renewed it)
DEFAULT_VERSION_TTL_S = 5.0
DEFAULT_VERSION_TIMEOUT_S = 0.5
# TorchServe's own failures that say "try again" rather than "your input was wrong".
WORKER_FAILURES = (b"Worker died", b"Out of resources", b"Prediction failed")
INVALID_KEY = "InvalidKeyException"


def read_keys(path: Path) -> Keys:
    """Parse TorchServe's key file; raise UpstreamUnavailable when it is missing or unreadable."""
    try:
        return stack_read_keys(path)
    except KeyFileUnreadable as exc:
        raise UpstreamUnavailable(str(exc)) from exc


class TokenStore:
    """Current TorchServe keys, refreshed from the key file and renewed before they expire."""

    def __init__(self, key_file: Path, management_url: str, http: httpx.AsyncClient) -> None:
        self._key_file = key_file
        self.management_url = management_url.rstrip("/")
        self._http = http
        self._keys: Keys | None = None
        self._mtime: float | None = None
        self._lock = asyncio.Lock()

    def _reload_if_changed(self) -> Keys:
        for attempt in range(KEY_FILE_READ_ATTEMPTS):
            try:
                mtime = self._key_file.stat().st_mtime
            except OSError as exc:
                raise UpstreamUnavailable(
                    f"TorchServe's key file {self._key_file} does not exist; is TorchServe running?"
                ) from exc
            if self._keys is not None and mtime == self._mtime:
                return self._keys
            try:
                self._keys, self._mtime = read_keys(self._key_file), mtime
                return self._keys
            except UpstreamUnavailable:
                if attempt + 1 == KEY_FILE_READ_ATTEMPTS:
                    if self._keys is not None:
                        return self._keys  # keep the last good keys; a refusal makes us read again
                    raise
                time.sleep(0.02)  # read while TorchServe rewrites it: read again in a moment
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _due(self, expires: datetime | None) -> bool:
        """Renew at a quarter of the key's lifetime before expiry (at most 2 min, at least 5 s), so short-lived
        keys are not renewed on every request (each renewal invalidates the key in-flight requests hold)."""
        if expires is None or self._mtime is None:
            return False
        issued = datetime.fromtimestamp(self._mtime, UTC)
        before = min(RENEW_BEFORE, max(MIN_RENEW_BEFORE, (expires - issued) / 4))
        return expires - datetime.now(UTC) < before

    async def inference_key(self, force_reload: bool = False) -> str:
        """A valid inference key, renewing it first when it is about to expire."""
        if force_reload:
            self._mtime = None  # re-read the file (keeping the last keys if it cannot be read)
        keys = self._reload_if_changed()
        if self._due(keys.inference_expires):
            keys = await self._renew("inference")
        return keys.inference

    async def management_key(self) -> str:
        """A valid management key, renewed likewise."""
        keys = self._reload_if_changed()
        if self._due(keys.management_expires):
            keys = await self._renew("management")
        return keys.management

    async def _renew(self, kind: str) -> Keys:
        async with self._lock:
            keys = self._reload_if_changed()
            if not self._due(keys.inference_expires if kind == "inference" else keys.management_expires):
                return keys  # renewed by someone else meanwhile
            try:
                response = await self._http.get(
                    f"{self.management_url}/token",
                    params={"type": kind},
                    headers={"Authorization": f"Bearer {keys.api}"},
                )
                response.raise_for_status()
            except httpx.HTTPError as exc:
                logger.warning("renewing TorchServe's %s key failed: %s", kind, exc)
                return keys
            logger.info("renewed TorchServe's %s key", kind)
            self._mtime = None
            return self._reload_if_changed()


@dataclass(frozen=True)
class UpstreamResponse:
    """What TorchServe answered, passed through to the client."""

    status: int
    body: bytes
    content_type: str | None
    batch_size: int | None


class TorchServeClient:
    """Sends predictions to TorchServe with its token; maps transport failures to 503/504."""

    def __init__(
        self,
        inference_url: str,
        management_url: str,
        key_file: Path,
        timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0), limits=limits, transport=transport
        )
        self._inference_url = inference_url.rstrip("/")
        self.tokens = TokenStore(key_file, management_url, self._http)
        self._default_versions: dict[str, tuple[str | None, float]] = {}

    async def close(self) -> None:
        """Release connections."""
        await self._http.aclose()

    async def predict(
        self, model: str, version: str | None, body: bytes, content_type: str, params: dict[str, str] | None = None
    ) -> UpstreamResponse:
        """POST one input to ``/predictions/{model}[/{version}]``.

        TorchServe drops the query string of /predictions, so parameters travel as multipart form fields
        beside the photo (field ``data``), which reach the handler as request items.
        """
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        if params:
            request = httpx.Request("POST", "http://x", files={"data": ("photo", body, content_type)}, data=params)
            body, content_type = request.read(), request.headers["content-type"]
        return await self._send("POST", path, body, content_type)

    async def default_version(self, model: str) -> str | None:
        """The model's default version from the management API (cached a few seconds); None if unknown."""
        cached = self._default_versions.get(model)
        if cached is not None and time.monotonic() - cached[1] < DEFAULT_VERSION_TTL_S:
            return cached[0]
        try:
            key = await self.tokens.management_key()
            response = await self._http.get(
                f"{self.tokens.management_url}/models/{model}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=DEFAULT_VERSION_TIMEOUT_S,  # a hung TorchServe must not cost a second full timeout
            )
            version = response.json()[0]["modelVersion"] if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, IndexError, UpstreamUnavailable):
            version = None  # unknown for this TTL: no cache lookups, no repeated slow calls
        self._default_versions[model] = (version, time.monotonic())
        return version

    async def _management_get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        key = await self.tokens.management_key()
        response = await self._http.get(
            f"{self.tokens.management_url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}
        )
        response.raise_for_status()
        return response.json()

    async def describe_all_models(self) -> list[dict[str, Any]]:
        """Every registered version of every model (management API), each marked ``isDefault``."""
        listing = await self._management_get("/models", {"limit": 1000})
        descriptions = []
        for entry in listing.get("models", []):
            name = entry["modelName"]
            default = (await self._management_get(f"/models/{name}"))[0]["modelVersion"]
            for version in await self._management_get(f"/models/{name}/all"):
                descriptions.append({**version, "isDefault": version.get("modelVersion") == default})
        return descriptions

    async def ping(self) -> UpstreamResponse:
        """TorchServe's health (needs the inference key too)."""
        return await self._send("GET", "/ping", b"", None)

    async def _send(self, method: str, path: str, body: bytes, content_type: str | None) -> UpstreamResponse:
        for attempt in range(1, KEY_ATTEMPTS + 1):
            key = await self.tokens.inference_key(force_reload=attempt > 1)
            headers = {"Authorization": f"Bearer {key}"}
            if content_type:
                headers["Content-Type"] = content_type
            try:
                response = await self._http.request(method, self._inference_url + path, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(f"TorchServe did not answer within the time limit ({path})") from exc
            except httpx.TransportError as exc:
                raise UpstreamUnavailable("TorchServe is not reachable; retry shortly") from exc
            if response.status_code == 400 and INVALID_KEY.encode() in response.content[:300]:
                if attempt < KEY_ATTEMPTS:
                    await asyncio.sleep(0.05 * attempt)  # keys renewed elsewhere: re-read the file, retry
                    continue
                raise UpstreamUnavailable("TorchServe refused the bridge's token; check its key file")
            if response.status_code in (500, 503, 507) and any(m in response.content[:500] for m in WORKER_FAILURES):
                # A worker crashed, ran out of memory or raised mid-batch: a retryable outage (503 + Retry-After).
                message = json.loads(response.content).get("message", "") if response.content[:1] == b"{" else ""
                raise UpstreamUnavailable(f"the model's worker failed ({message or response.status_code}); retry shortly")
            batch = response.headers.get("x-batch-size")
            return UpstreamResponse(
                status=response.status_code,
                body=response.content,
                content_type=response.headers.get("content-type"),
                batch_size=int(batch) if batch and batch.isdigit() else None,
            )
        raise AssertionError("unreachable: the last attempt returns or raises")
