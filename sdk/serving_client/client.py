"""The synchronous client of the bridge: predictions, jobs, results history, reports, feedback, health."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote

import httpx

from serving_client import errors
from serving_client._version import __version__
from serving_client.jobs import Job
from serving_client.models import AccuracyReport, Comparison, Feedback, JobState, Prediction, Report

__all__ = ["REPORT_KINDS", "Client", "Photo"]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
USER_AGENT = f"serving-client/{__version__}"
REPORT_KINDS = ("labels", "latency", "errors")

Photo = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]
"""A photo: its bytes, a path to it, or a file object opened in binary mode."""

TimeValue = datetime | str | None


class Client:
    """A client of the bridge's HTTP API (one connection pool; use it as a context manager or ``close()`` it).

    ``api_key`` is sent as ``X-API-Key`` when given; ``timeout`` (seconds, None for none) bounds each request
    (a long poll gets its wait on top); ``transport`` replaces the network, e.g. ``httpx.MockTransport``.
    ``submit_attempts`` and ``retry_backoff_s``: how often and how patiently a job submission is retried when
    the bridge is unreachable, overloaded (503) or still storing the same submission (409) — safe, because
    every submission carries an Idempotency-Key.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        transport: httpx.BaseTransport | None = None,
        submit_attempts: int = 5,
        retry_backoff_s: float = 0.5,
    ) -> None:
        headers = {"User-Agent": USER_AGENT}
        if api_key:
            headers["X-API-Key"] = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.submit_attempts = max(1, submit_attempts)
        self.retry_backoff_s = retry_backoff_s
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # --- predictions -------------------------------------------------------------------------------------

    def predict(self, model: str, photo: Photo, version: str | None = None) -> Prediction:
        """Send one photo to ``model`` (its default version, or ``version``) and return its answer."""
        path = f"/predictions/{_segment(model)}" + (f"/{_segment(version)}" if version else "")
        response = self._request(
            "PUT", path, content=read_photo(photo), headers={"Content-Type": "application/octet-stream"}
        )
        return Prediction.from_response(response)

    # --- jobs --------------------------------------------------------------------------------------------

    def submit(
        self, photo: Photo, models: Sequence[str] | str | None = None, idempotency_key: str | None = None
    ) -> Job:
        """Submit a photo to several models (default: the bridge's job models); returns a handle to poll.

        Every submission carries an Idempotency-Key (``idempotency_key``, or one made here), so a submission
        whose answer was lost is retried safely: the bridge gives back the job it already stored. Retried on
        no answer, 503, 429 (the key's rate limit) and 409 (the same submission still being stored), after the
        answer's Retry-After or with exponential backoff and jitter.
        """
        params = {}
        if models:
            params["models"] = models if isinstance(models, str) else ",".join(models)
        headers = {"Content-Type": "application/octet-stream", "Idempotency-Key": idempotency_key or f"sdk-{uuid.uuid4()}"}
        body = read_photo(photo)
        for attempt in range(1, self.submit_attempts + 1):
            try:
                response = self._request("POST", "/v1/jobs", params=params, content=body, headers=headers)
            except (errors.ServiceUnavailable, errors.TooManyRequests, errors.Conflict) as exc:
                if attempt == self.submit_attempts:
                    raise
                time.sleep(_backoff(self.retry_backoff_s, attempt, exc))
                continue
            return Job(self, JobState.from_json(response.json()), created=response.status_code == 202)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def job(self, job_id: str) -> Job:
        """A handle to an existing job (fetched now, so an unknown id raises ``NotFound``)."""
        return Job(self, self.fetch_job(job_id), created=False)

    def fetch_job(self, job_id: str, wait: float = 0.0) -> JobState:
        """A job's state now, or as soon as it finishes within ``wait`` seconds (at most 30: long polling)."""
        params: dict[str, Any] = {}
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if wait > 0:
            params["wait"] = f"{wait:.3f}".rstrip("0").rstrip(".")
            timeout = None if self.timeout is None else self.timeout + wait
        response = self._request("GET", f"/v1/jobs/{_segment(job_id)}", params=params, timeout=timeout)
        return JobState.from_json(response.json())

    # --- history and reports -----------------------------------------------------------------------------

    def results(
        self,
        model: str | None = None,
        version: str | None = None,
        status: int | None = None,
        since: TimeValue = None,
        until: TimeValue = None,
        limit: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every recorded inference matching the filters, newest first, fetching ``limit`` per page lazily."""
        params: dict[str, Any] = _drop_none(
            model=model, version=version, status=status, since=_iso(since), until=_iso(until), limit=limit
        )
        while True:
            page = self._request("GET", "/v1/results", params=params).json()
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return
            params["cursor"] = cursor

    def report(
        self, kind: str, model: str, since: TimeValue = None, until: TimeValue = None, bucket: str = "hour"
    ) -> Report:
        """A report of ``model`` per time bucket: ``labels``, ``latency`` or ``errors`` (default: last 24 h)."""
        if kind not in REPORT_KINDS:
            raise ValueError(f"unknown report kind {kind!r}; one of {', '.join(REPORT_KINDS)}")
        params = _drop_none(model=model, since=_iso(since), until=_iso(until), bucket=bucket)
        return Report.from_json(kind, self._request("GET", f"/v1/reports/{kind}", params=params).json())

    # --- ground truth and live accuracy -------------------------------------------------------------------

    def feedback(self, request_id: str | uuid.UUID, truth: Any) -> Feedback:
        """Send the ground truth for the served answer ``request_id`` (its ``Prediction.request_id``).

        ``truth`` by the model's kind: a label (classifier), a price (price), the relevant item ids (similar), or
        the whole right answer (other models). Stored once: the same truth again is no change (``created`` False),
        a different one raises ``Conflict``; so it is retried, like ``submit``, on no answer and 503.
        """
        body = {"request_id": str(request_id), "truth": truth}
        for attempt in range(1, self.submit_attempts + 1):
            try:
                return Feedback.from_response(self._request("POST", "/v1/feedback", json=body))
            except errors.ServiceUnavailable as exc:
                if attempt == self.submit_attempts:
                    raise
                time.sleep(_backoff(self.retry_backoff_s, attempt, exc))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def accuracy(
        self, model: str, version: str | None = None, since: TimeValue = None, until: TimeValue = None,
        bucket: str = "hour",
    ) -> AccuracyReport:
        """Live accuracy of ``model`` per version (or of ``version`` only) per time bucket (default: last 24 h)."""
        params = _drop_none(model=model, version=version, since=_iso(since), until=_iso(until), bucket=bucket)
        return AccuracyReport.from_json(self._request("GET", "/v1/reports/accuracy", params=params).json())

    def rollouts(self) -> list[dict[str, Any]]:
        """The active shadow or canary of each model (``GET /v1/rollouts``)."""
        return list(self._request("GET", "/v1/rollouts").json()["items"])

    def compare(
        self, model: str, version: str | None = None, since: TimeValue = None, until: TimeValue = None,
        source: str = "all",
    ) -> Comparison:
        """A candidate ``version`` (default: the model's active rollout's) against the live answers to the same
        photos, from shadowing and/or replay (``source``: ``all``, ``shadow``, ``replay``; default: last 24 h)."""
        params = _drop_none(model=model, version=version, since=_iso(since), until=_iso(until), source=source)
        return Comparison.from_json(self._request("GET", "/v1/reports/compare", params=params).json())

    # --- health ------------------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """The bridge's health (TorchServe and the recording backlog); raises ``ServiceUnavailable`` if unhealthy."""
        response = self._send("GET", "/ping")
        body = _json_or_none(response)
        if response.status_code == 503 and isinstance(body, dict) and "torchserve" in body:
            raise errors.ServiceUnavailable(
                f"bridge unhealthy: TorchServe {body['torchserve']}", status=503, type="Unhealthy", body=body
            )
        if response.is_error:
            raise errors.error_from_response(response)
        return dict(response.json())

    # --- plumbing ----------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(method, path, **kwargs)
        if response.is_error:
            raise errors.error_from_response(response)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise errors.ConnectionError(
                f"bridge not reachable at {self.base_url} ({exc}); is `make up` running?"
            ) from exc
        except httpx.TimeoutException as exc:
            raise errors.ConnectionError(
                f"no answer from the bridge at {self.base_url} within the timeout ({exc or type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise errors.ConnectionError(f"connection to the bridge at {self.base_url} failed: {exc}") from exc


def read_photo(photo: Photo) -> bytes:
    """The bytes of a photo given as bytes, a path, or a binary file object."""
    if isinstance(photo, (bytes, bytearray, memoryview)):
        return bytes(photo)
    if isinstance(photo, (str, os.PathLike)):
        return Path(photo).read_bytes()
    read = getattr(photo, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, str):
            raise TypeError("the photo's file object is in text mode: open it with 'rb'")
        return bytes(data)
    raise TypeError(f"a photo is bytes, a path or a binary file object, not {type(photo).__name__}")


def _backoff(base_s: float, attempt: int, error: errors.ServingError) -> float:
    """Seconds before retry ``attempt + 1``: the server's Retry-After when it gave one (capped), otherwise
    exponential from ``base_s`` with full jitter (so many clients do not retry in step)."""
    retry_after = getattr(error, "retry_after", None)
    ceiling = base_s * 2 ** (attempt - 1)
    if retry_after is not None and retry_after > 0:
        return min(retry_after, 30.0)
    return random.uniform(ceiling / 2, ceiling)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _iso(value: TimeValue) -> str | None:
    """RFC 3339 with an offset, as the bridge requires: a naive datetime is taken as UTC."""
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()
    return value


def _drop_none(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
