"""The bridge's exception tree and its one error envelope.

    BridgeError                  (500) base: a 5xx says little, its cause is logged
    ├── BadRequest               (400) the request itself is malformed
    │   └── EmptyBody            (400)
    ├── Unauthorized             (401) the bridge's API key is missing or wrong
    ├── Forbidden                (403) the key may not do this (its scopes), or not from this browser origin
    ├── NotFound                 (404)
    ├── RequestTimeout           (408) the body did not arrive in time
    ├── Conflict                 (409)
    │   └── StillStoring         (409) the same Idempotency-Key's first POST is being stored: retry in a second
    ├── Unprocessable            (422)
    ├── PayloadTooLarge          (413)
    ├── UnsupportedMediaType     (415)
    ├── TooManyRequests          (429) the key is over its rate: retry after Retry-After seconds
    ├── UpstreamUnavailable      (503) TorchServe (or the job queue) refused the connection or is not ready
    ├── RecordingUnavailable     (503) the result could not be recorded durably, so it is not given out
    └── UpstreamTimeout          (504) TorchServe did not answer in time

Every error body is ``{"code": int, "type": str, "message": str, "request_id": str}`` — the same
shape TorchServe uses (plus the request id), so clients parse one format whichever side answered.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, Field
from starlette.requests import Request


class BridgeError(Exception):
    """Base of every error the bridge answers itself."""

    status = 500
    kind = "InternalServerError"
    headers: Mapping[str, str] = MappingProxyType({})

    def __init__(self, message: str = "internal error; see the bridge log") -> None:
        super().__init__(message)
        self.message = message


class BadRequest(BridgeError):
    status = 400
    kind = "BadRequest"


class EmptyBody(BadRequest):
    kind = "EmptyBody"


class Unauthorized(BridgeError):
    status = 401
    kind = "Unauthorized"
    headers: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": 'ApiKey header="X-API-Key"'})


class Forbidden(BridgeError):
    status = 403
    kind = "Forbidden"


class NotFound(BridgeError):
    status = 404
    kind = "NotFound"


class RequestTimeout(BridgeError):
    status = 408
    kind = "RequestTimeout"


class Conflict(BridgeError):
    status = 409
    kind = "Conflict"


class StillStoring(Conflict):
    kind = "Conflict"
    headers: Mapping[str, str] = MappingProxyType({"Retry-After": "1"})


class Unprocessable(BridgeError):
    status = 422
    kind = "Unprocessable"


class PayloadTooLarge(BridgeError):
    status = 413
    kind = "PayloadTooLarge"


class UnsupportedMediaType(BridgeError):
    status = 415
    kind = "UnsupportedMediaType"


class TooManyRequests(BridgeError):
    status = 429
    kind = "TooManyRequests"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, retry_after_s))}


class UpstreamUnavailable(BridgeError):
    status = 503
    kind = "ServiceUnavailable"
    headers: Mapping[str, str] = MappingProxyType({"Retry-After": "1"})


class RecordingUnavailable(BridgeError):
    status = 503
    kind = "RecordingUnavailable"
    headers: Mapping[str, str] = MappingProxyType({"Retry-After": "1"})


class UpstreamTimeout(BridgeError):
    status = 504
    kind = "GatewayTimeout"


class ErrorBody(BaseModel):
    """The one error envelope (TorchServe's errors passed through have the same first three fields)."""

    code: int = Field(description="HTTP status", examples=[400])
    type: str = Field(description="Error kind", examples=["EmptyBody"])
    message: str = Field(description="What was wrong and what to do", examples=["empty body: send the photo bytes"])
    request_id: str | None = Field(None, description="Quote it when reporting a problem")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Malformed request (the message says what)"),
        (401, "Missing, invalid or revoked API key (when the bridge has keys)"),
        (403, "The key's scopes do not include this route, or it may not be used from this browser origin"),
        (413, "Body larger than the limit"),
        (429, "The key is over its rate limit; retry after Retry-After seconds"),
        (503, "A dependency is unavailable; retry after Retry-After seconds"),
    )
}


def envelope(status: int, kind: str, message: str, request_id: str) -> dict[str, Any]:
    """The error body every non-2xx answer of the bridge carries."""
    return {"code": status, "type": kind, "message": message, "request_id": request_id}


def request_id_of(request: Request) -> str:
    """The one id a request is answered and recorded under (made on first use)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = str(uuid.uuid4())
    return rid
