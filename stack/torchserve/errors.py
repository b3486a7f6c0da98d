"""What talking to TorchServe can raise. Each error carries the facts (address, status, model) as attributes,
so a caller (the bridge, servingctl) can word its own answer; the default message says what to do next.

    TorchServeError                 base
    ├── TorchServeUnavailable       not answering usefully right now: retry shortly
    │   ├── TorchServeUnreachable   connection refused or broken (TorchServe stopped or crashed)
    │   ├── KeyFileUnreadable       key_file.json missing or unreadable (TorchServe not started, or rewriting it)
    │   └── WorkerFailed            a worker died, ran out of memory or raised mid-batch (500/503/507)
    ├── TorchServeTimeout           no answer within the time limit
    ├── KeyRejected                 400 InvalidKeyException even with the key file re-read
    ├── NotFound                    404 from the management API: no such model or version
    └── ManagementRefused           any other non-2xx answer of the management API
"""

from __future__ import annotations

from pathlib import Path


class TorchServeError(Exception):
    """Base of what talking to TorchServe can raise."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TorchServeUnavailable(TorchServeError):
    """TorchServe is not reachable, not ready, or one of its workers failed: retry shortly."""


class TorchServeUnreachable(TorchServeUnavailable):
    """Nothing answers on TorchServe's address (connection refused or broken)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"TorchServe is not reachable on {address}; is it running? (`make up` starts the local stack)")
        self.address = address


class KeyFileUnreadable(TorchServeUnavailable):
    """TorchServe's key file is missing or unreadable (TorchServe not started, or rewriting it)."""


class WorkerFailed(TorchServeUnavailable):
    """A model's worker failed on this request (not the request's fault): retry shortly."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"the model's worker failed ({detail or status}); retry shortly")
        self.status = status
        self.detail = detail


class TorchServeTimeout(TorchServeError):
    """TorchServe did not answer within the time limit."""

    def __init__(self, address: str, method: str, path: str, timeout_s: float) -> None:
        super().__init__(f"TorchServe on {address} did not answer {method} {path} within {timeout_s:g} s")
        self.address, self.method, self.path, self.timeout_s = address, method, path, timeout_s


class KeyRejected(TorchServeError):
    """TorchServe refused the key (400 InvalidKeyException) even after the key file was re-read."""

    def __init__(self, api: str, key_file: Path) -> None:
        super().__init__(
            f"TorchServe rejected the {api} key from {key_file} (400 InvalidKeyException): the key file may be stale "
            "(TorchServe restarted elsewhere, or the key expired); use the running TorchServe's key_file.json"
        )
        self.api, self.key_file = api, key_file


class NotFound(TorchServeError):
    """The management API answered 404: no such model (or version)."""

    def __init__(self, model: str, version: str | None, kind: str) -> None:
        what = f"model {model!r} has no version {version!r}" if version and kind != "ModelNotFoundException" else (
            f"TorchServe has no model {model!r}")
        super().__init__(f"{what}; GET /models lists the registered ones")
        self.model, self.version, self.kind = model, version, kind


class ManagementRefused(TorchServeError):
    """The management API refused a call (a non-2xx answer other than 404 for a known model)."""

    def __init__(self, status: int, kind: str, detail: str, method: str, path: str) -> None:
        super().__init__(f"TorchServe answered {status} to {method} {path}: {detail or kind}")
        self.status, self.kind, self.detail, self.method, self.path = status, kind, detail, method, path
