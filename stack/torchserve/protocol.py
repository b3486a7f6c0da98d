"""Every rule of talking to TorchServe, once, without I/O: each call is a generator ("flow") that yields the
HTTP requests to send (or a pause) and receives the responses; ``client.py`` drives flows with httpx, sync
or async. So the key handling, the request shapes and the reading of answers exist in one copy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from stack.torchserve.errors import (
    KeyRejected,
    ManagementRefused,
    NotFound,
    TorchServeError,
    TorchServeTimeout,
    TorchServeUnreachable,
    WorkerFailed,
)
from stack.torchserve.keys import KeyRing, Keys

logger = logging.getLogger(__name__)

T = TypeVar("T")

KEY_ATTEMPTS = 3  # a refused key: re-read the file and retry (another process may just have renewed it)
CONNECT_TIMEOUT_S = 2.0
DEFAULT_VERSION_TTL_S = 5.0
MAX_DEFAULT_VERSIONS = 1024  # default versions remembered (per client) before the memory is cleared
DEFAULT_VERSION_TIMEOUT_S = 0.5  # on the prediction path: a hung TorchServe must not cost a second full timeout
LIST_LIMIT = 1000  # GET /models pages (default 100): every model in one answer
INVALID_KEY = b"InvalidKeyException"
# TorchServe's own failures that say "try again" rather than "your input was wrong".
WORKER_FAILURES = (b"Worker died", b"Out of resources", b"Prediction failed")
WORKER_FAILURE_STATUSES = (500, 503, 507)
SCALE_SETTLE_CHECKS = 10  # half a second apart: how long a refused scale may take to show its workers


@dataclass(frozen=True)
class Pause:
    """A flow asks its driver to wait before the next request."""

    seconds: float


Step = httpx.Request | Pause
Flow = Generator[Step, Any, T]  # sent: the httpx.Response to the last request (None after a Pause)


@dataclass(frozen=True)
class Answer:
    """TorchServe's answer to a prediction or ping, as it came (status, body, type, batch size)."""

    status: int
    body: bytes
    content_type: str | None
    batch_size: int | None

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def address(url: str) -> str:
    """``host:port`` of a URL (for messages)."""
    return urlsplit(url).netloc or url


def as_form(body: bytes, content_type: str, params: dict[str, str]) -> tuple[bytes, str]:
    """A multipart body: the photo as field ``data`` beside ``params`` as form fields.

    TorchServe 0.12 drops the query string of /predictions; form fields reach the handler as request items.
    """
    request = httpx.Request("POST", "http://form", files={"data": ("photo", body, content_type)}, data=params)
    return request.read(), request.headers["content-type"]


def is_invalid_key(response: httpx.Response) -> bool:
    """TorchServe's answer to a missing, wrong or expired key: 400 InvalidKeyException."""
    return response.status_code == 400 and INVALID_KEY in response.content[:500]


def error_fields(response: httpx.Response) -> tuple[str, str]:
    """TorchServe's error ``type`` and ``message`` (its error bodies are JSON), or the raw text."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:300]
    if isinstance(body, dict):
        return str(body.get("type", "")), str(body.get("message", ""))
    return "", response.text[:300]


def inference_answer(response: httpx.Response) -> Answer:
    """Read a prediction's answer: a worker's failure is an outage (retry), anything else is passed on."""
    if response.status_code in WORKER_FAILURE_STATUSES and any(m in response.content[:500] for m in WORKER_FAILURES):
        _, message = error_fields(response)
        raise WorkerFailed(response.status_code, message if response.content[:1] == b"{" else "")
    batch = response.headers.get("x-batch-size")
    return Answer(
        status=response.status_code,
        body=response.content,
        content_type=response.headers.get("content-type"),
        batch_size=int(batch) if batch and batch.isascii() and batch.isdigit() else None,
    )


class Protocol:
    """TorchServe's inference and management APIs as flows, with the keys of one key file."""

    def __init__(self, inference_url: str, management_url: str, key_file: Path, timeout_s: float,
                 sync_timeout_s: float, key_attempts: int = KEY_ATTEMPTS) -> None:
        self.urls = {"inference": inference_url.rstrip("/"), "management": management_url.rstrip("/")}
        self.keys = KeyRing(key_file)
        self.timeout_s = timeout_s
        self.sync_timeout_s = sync_timeout_s
        self.key_attempts = key_attempts
        self._default_versions: dict[str, tuple[str | None, float]] = {}

    # --- requests and keys ----------------------------------------------------------------------------

    def _request(self, api: str, method: str, path: str, key: str | None, timeout_s: float,
                 **build: Any) -> httpx.Request:
        headers = dict(build.pop("headers", None) or {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        return httpx.Request(method, self.urls[api] + path, headers=headers, extensions={"timeout": timeout.as_dict()},
                             **build)

    def _exchange(self, request: httpx.Request) -> Flow[httpx.Response]:
        """Send one request; transport failures become TorchServeUnreachable / TorchServeTimeout."""
        try:
            response: httpx.Response = yield request
        except httpx.TimeoutException as exc:
            timeout = request.extensions["timeout"]["read"]
            raise TorchServeTimeout(address(str(request.url)), request.method, request.url.path, timeout) from exc
        except httpx.RequestError as exc:
            raise TorchServeUnreachable(address(str(request.url))) from exc
        return response

    def _key(self, api: str, reload: bool) -> Flow[str]:
        keys = self.keys.current(reload)
        while api in self.keys.renewing:  # another request renews it now: the old key dies with that, so wait
            yield Pause(0.01)
            keys = self.keys.current()
        if self.keys.due(api, keys):
            keys = yield from self._renew(api, keys, quiet=True)
        return keys.of(api)

    def _renew(self, api: str, keys: Keys, quiet: bool) -> Flow[Keys]:
        """``GET /token?type=api`` with the API key; TorchServe rewrites the key file, which is read again."""
        self.keys.renewing.add(api)
        try:
            request = self._request("management", "GET", "/token", keys.api, self.timeout_s, params={"type": api})
            response = yield from self._exchange(request)
            if response.status_code != 200:
                kind, message = error_fields(response)
                raise ManagementRefused(response.status_code, kind, message, "GET", "/token")
        except TorchServeError as exc:
            if not quiet:
                raise
            logger.warning("renewing TorchServe's %s key failed: %s", api, exc)
            return keys  # still valid for a while: the next request tries again
        finally:
            self.keys.renewing.discard(api)
        logger.info("renewed TorchServe's %s key", api)
        return self.keys.current(reload=True)

    def send(self, api: str, method: str, path: str, timeout_s: float | None = None, attempts: int | None = None,
             **build: Any) -> Flow[httpx.Response]:
        """One request with ``api``'s key; a refused key is retried with the key file re-read."""
        attempts = attempts or self.key_attempts
        for attempt in range(1, attempts + 1):
            key = yield from self._key(api, reload=attempt > 1)
            request = self._request(api, method, path, key, timeout_s or self.timeout_s, **build)
            response = yield from self._exchange(request)
            if not is_invalid_key(response):
                return response
            if attempt < attempts:
                yield Pause(0.05 * attempt)  # keys renewed elsewhere: re-read the file, retry
        raise KeyRejected(api, self.keys.path)

    def renew(self, api: str) -> Flow[Keys]:
        """Renew the ``inference`` or ``management`` key now; the new keys."""
        return self._renew(api, self.keys.current(), quiet=False)

    def reachable(self) -> Flow[bool]:
        """Whether anything answers on the management address (no key needed to tell)."""
        try:
            yield from self._exchange(self._request("management", "GET", "/models", None, self.timeout_s))
        except TorchServeUnreachable:
            return False
        except TorchServeTimeout:
            return True  # something took the connection, it just did not answer in time
        return True

    # --- the inference API ------------------------------------------------------------------------------

    def predict(self, model: str, version: str | None, body: bytes, content_type: str,
                params: dict[str, str] | None = None) -> Flow[Answer]:
        """POST one input to ``/predictions/{model}[/{version}]`` (``params`` as form fields)."""
        if params:
            body, content_type = as_form(body, content_type, params)
        path = f"/predictions/{model}" + (f"/{version}" if version else "")
        response = yield from self.send("inference", "POST", path, content=body,
                                        headers={"Content-Type": content_type})
        return inference_answer(response)

    def ping(self) -> Flow[Answer]:
        """TorchServe's health (it needs the inference key too)."""
        response = yield from self.send("inference", "GET", "/ping")
        return inference_answer(response)

    # --- the management API -----------------------------------------------------------------------------

    def management(self, method: str, path: str, model: str | None = None, version: str | None = None,
                   timeout_s: float | None = None, params: dict[str, Any] | None = None) -> Flow[Any]:
        """A management call's JSON answer; a 404 about ``model`` is NotFound, other refusals ManagementRefused."""
        response = yield from self.send("management", method, path, timeout_s, params=params)
        if response.status_code < 300:
            return response.json() if response.content else {}
        kind, message = error_fields(response)
        if response.status_code == 404 and model is not None:
            raise NotFound(model, version, kind)
        raise ManagementRefused(response.status_code, kind, message, method, path)

    def models(self) -> Flow[list[str]]:
        """Names of the registered models."""
        listing = yield from self.management("GET", "/models", params={"limit": LIST_LIMIT})
        return [m["modelName"] for m in listing.get("models", [])]

    def describe(self, model: str, version: str | None = None) -> Flow[list[dict[str, Any]]]:
        """TorchServe's description of ``model``: its default version, ``version``, or every one (``"all"``)."""
        path = f"/models/{model}" + (f"/{version}" if version else "")
        described = yield from self.management("GET", path, model, None if version == "all" else version)
        return list(described)

    def describe_all(self) -> Flow[list[dict[str, Any]]]:
        """Every registered version of every model, each marked ``isDefault``."""
        descriptions = []
        for name in (yield from self.models()):
            default = (yield from self.describe(name))[0]["modelVersion"]
            for version in (yield from self.describe(name, "all")):
                descriptions.append({**version, "isDefault": version.get("modelVersion") == default})
        return descriptions

    def default_version(self, model: str) -> Flow[str | None]:
        """The model's default version (cached a few seconds); None when unknown (errors included)."""
        cached = self._default_versions.get(model)
        if cached is not None and time.monotonic() - cached[1] < DEFAULT_VERSION_TTL_S:
            return cached[0]
        try:
            response = yield from self.send("management", "GET", f"/models/{model}", DEFAULT_VERSION_TIMEOUT_S,
                                            attempts=1)
            version = str(response.json()[0]["modelVersion"]) if response.status_code == 200 else None
        except (TorchServeError, ValueError, KeyError, IndexError, TypeError):
            version = None  # unknown for this TTL: no cache lookups, no repeated slow calls
        if len(self._default_versions) >= MAX_DEFAULT_VERSIONS:  # clients may name any model: stay bounded
            self._default_versions.clear()
        self._default_versions[model] = (version, time.monotonic())
        return version

    def register(self, url: str, initial_workers: int, settings: dict[str, int] | None = None) -> Flow[str]:
        """Register an archive of the model store and wait for its workers; TorchServe's status line.

        ``settings`` (batch_size, max_batch_delay, response_timeout, ...) override the archive's model-config.yaml.
        """
        params = {"url": url, "initial_workers": initial_workers, "synchronous": "true", **(settings or {})}
        answer = yield from self.management("POST", "/models", timeout_s=self.sync_timeout_s, params=params)
        return str(answer.get("status", ""))

    def unregister(self, model: str, version: str) -> Flow[None]:
        """Unregister one version (its workers stop)."""
        yield from self.management("DELETE", f"/models/{model}/{version}", model, version, self.sync_timeout_s)

    def set_default(self, model: str, version: str) -> Flow[None]:
        """Make ``version`` the one ``/predictions/{model}`` serves."""
        yield from self.management("PUT", f"/models/{model}/{version}/set-default", model, version)

    def scale(self, model: str, version: str | None, min_workers: int, max_workers: int) -> Flow[None]:
        """Set a version's (default: the default version's) worker range and wait until TorchServe has scaled it."""
        path = f"/models/{model}" + (f"/{version}" if version else "")
        params = {"min_worker": min_workers, "max_worker": max_workers, "synchronous": "true"}
        try:
            yield from self.management("PUT", path, model, version, self.sync_timeout_s, params)
        except ManagementRefused as exc:
            # TorchServe 0.12 may answer a synchronous scale-down 500 "Failed to start workers": the worker it
            # stops ends its start future with an error, yet the scale-down happened. Believe the workers, not
            # the status: success once the worker count is in range (the stopped one can linger a moment).
            if exc.status != 500:
                raise
            for _ in range(SCALE_SETTLE_CHECKS):
                (described,) = yield from self.describe(model, version)
                if min_workers <= len(described.get("workers", [])) <= max_workers:
                    return
                yield Pause(0.5)
            raise
