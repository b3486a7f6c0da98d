"""The one way to TorchServe for every component (bridge, servingctl, the stack, tests, benchmarks).

- ``keys``: TorchServe's key file (``read_keys``), change detection and the renewal rule (``KeyRing``).
- ``protocol``: every rule of talking to TorchServe, without I/O — keys on each request (renewed a quarter of
  their life before expiry, a refused key retried with the file re-read), parameters as form fields beside the
  photo, worker failures read as outages, the management calls.
- ``client``: ``Client`` (sync, httpx.Client) and ``AsyncClient`` (async, on ``transport.KeepAlivePool``, an
  asyncio HTTP/1.1 keep-alive pool parsed by httptools) driving the protocol.
- ``errors``: what it raises (``TorchServeUnavailable``, ``TorchServeTimeout``, ``KeyRejected``, ``NotFound``, ...).

    with Client("http://127.0.0.1:8080", "http://127.0.0.1:8081", key_file) as ts:
        ts.predict("similar", "1.0", photo, "image/jpeg", {"k": "3"})
"""

from stack.torchserve.client import AsyncClient, Client
from stack.torchserve.errors import (
    KeyFileUnreadable,
    KeyRejected,
    ManagementRefused,
    NotFound,
    TorchServeError,
    TorchServeTimeout,
    TorchServeUnavailable,
    TorchServeUnreachable,
    WorkerFailed,
)
from stack.torchserve.keys import KeyRing, Keys, read_keys, renewal_due
from stack.torchserve.protocol import Answer, Protocol

__all__ = [
    "Answer",
    "AsyncClient",
    "Client",
    "KeyFileUnreadable",
    "KeyRejected",
    "KeyRing",
    "Keys",
    "ManagementRefused",
    "NotFound",
    "Protocol",
    "TorchServeError",
    "TorchServeTimeout",
    "TorchServeUnavailable",
    "TorchServeUnreachable",
    "WorkerFailed",
    "read_keys",
    "renewal_due",
]
