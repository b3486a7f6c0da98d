"""The SDK's exception tree: one class per status the bridge answers with, built from its error envelope.

    ServingError                 base: ``status``, ``message``, ``type``, ``request_id``, ``body``
    ├── BadRequest               (400) empty body, not an image, malformed request
    ├── Unauthorized             (401) missing, invalid or revoked API key
    ├── Forbidden                (403) the key's scopes do not include this (a publishable key reading results)
    ├── NotFound                 (404) no such model, version, job, or served answer to send feedback on
    ├── Conflict                 (409) Idempotency-Key reused while its job is still pending; a different truth
    │                                  for a request id that has one
    ├── PayloadTooLarge          (413) photo over the bridge's or the model's byte limit
    ├── UnsupportedMediaType     (415) the body was sent as text or JSON
    ├── Unprocessable            (422) image dimensions too large; Idempotency-Key reused with another photo;
    │                                  a truth of the wrong shape for the model
    ├── TooManyRequests          (429) the key is over its rate limit: retry after ``retry_after`` s
    ├── ServiceUnavailable       (503) TorchServe or the job queue is down: retry after ``retry_after`` s
    │   └── ConnectionError      (—)   the bridge itself could not be reached (also a builtin ConnectionError)
    ├── GatewayTimeout           (504) TorchServe did not answer in time
    ├── JobFailed                (—)   a job finished as ``failed``; ``job`` holds its state
    └── JobTimeout               (—)   a job did not finish in time (also a builtin TimeoutError)

Any other non-2xx status raises ``ServingError`` itself. Every error body of the bridge is
``{"code", "type", "message", "request_id"}``; TorchServe's errors passed through lack ``request_id``,
which then comes from the ``X-Request-Id`` header. A body that is not JSON still gives a readable message.
"""

from __future__ import annotations

import builtins
import json
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from serving_client.models import JobState

REQUEST_ID_HEADER = "X-Request-Id"


class ServingError(Exception):
    """Base of every error the SDK raises; ``status`` is the HTTP status (None when there was no answer)."""

    status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.type = type
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.insert(0, f"{self.status} {self.type or type(self).__name__}:")
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return " ".join(parts)


class BadRequest(ServingError):
    status = 400


class Unauthorized(ServingError):
    status = 401


class Forbidden(ServingError):
    status = 403


class NotFound(ServingError):
    status = 404


class Conflict(ServingError):
    status = 409


class PayloadTooLarge(ServingError):
    status = 413


class UnsupportedMediaType(ServingError):
    status = 415


class Unprocessable(ServingError):
    status = 422


class Retryable(ServingError):
    """An answer that says to come back: after ``retry_after`` seconds (None when it did not say)."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class TooManyRequests(Retryable):
    """429: the API key is over its rate limit."""

    status: int | None = 429


class ServiceUnavailable(Retryable):
    """503: TorchServe or the job queue is down."""

    status: int | None = 503


class ConnectionError(ServiceUnavailable, builtins.ConnectionError):
    """The bridge could not be reached, or the connection broke before an answer."""

    status = None


class GatewayTimeout(ServingError):
    status = 504


class JobFailed(ServingError):
    """A job finished as ``failed``; ``job`` is its final state (results of the models that answered)."""

    def __init__(self, job: JobState) -> None:
        super().__init__(f"job {job.id} failed: {job.error or 'no reason given'}")
        self.job = job


class JobTimeout(ServingError, builtins.TimeoutError):
    """A job was not finished when the caller's timeout ran out; ``job`` is its last known state."""

    def __init__(self, job: JobState, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status.value} after {timeout:g} s")
        self.job = job


BY_STATUS: dict[int, type[ServingError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    415: UnsupportedMediaType, 422: Unprocessable, 429: TooManyRequests, 503: ServiceUnavailable,
    504: GatewayTimeout,
}


def error_from_response(response: httpx.Response) -> ServingError:
    """The typed exception for a non-2xx answer, with the envelope's message and request id."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    envelope = body if isinstance(body, dict) else {}
    message = envelope.get("message")
    if not isinstance(message, str) or not message:
        text = response.text.strip() if body is None else json.dumps(body, separators=(",", ":"))
        message = text[:500] or response.reason_phrase or "no message"
    kind = envelope.get("type") if isinstance(envelope.get("type"), str) else None
    request_id = envelope.get("request_id") or response.headers.get(REQUEST_ID_HEADER)
    status = response.status_code
    cls = BY_STATUS.get(status, ServingError)
    kwargs: dict[str, Any] = {"status": status, "type": kind, "request_id": request_id, "body": body}
    if issubclass(cls, Retryable):
        kwargs["retry_after"] = _retry_after(response.headers.get("Retry-After"))
    return cls(message, **kwargs)


def _retry_after(value: str | None) -> float | None:
    # Only the delay-seconds form: the bridge never sends an HTTP date.
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
