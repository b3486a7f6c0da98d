"""CORS for publishable keys: a web page on another origin may call the bridge with a key that lists that origin.

A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) carries no key, so it is allowed for any origin that
some active publishable key lists; the actual request is then checked against its own key (bridge.auth), which
sets ``request.state.cors_origin``, and :func:`with_cors` adds the headers that let the page read the answer —
errors included, so a page can show a 429's Retry-After.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import Message, Scope, Send

from bridge.keys import KeyRing

ALLOWED_METHODS = "GET, POST, PUT"
ALLOWED_HEADERS = "X-API-Key, Authorization, Content-Type, Idempotency-Key, X-Client-Id, Cache-Control"
EXPOSED_HEADERS = "Location, Retry-After, X-Request-Id, X-Model-Version, X-Batch-Size, X-Cache"
MAX_AGE_S = "600"


def is_preflight(scope: Scope) -> bool:
    """An ``OPTIONS`` request a browser sends before a cross-origin call."""
    if scope["type"] != "http" or scope["method"] != "OPTIONS":
        return False
    headers = Headers(scope=scope)
    return "origin" in headers and "access-control-request-method" in headers


def preflight_headers(scope: Scope, keys: KeyRing) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The preflight's answer: 204 with the CORS headers when a publishable key allows its origin, else 403."""
    origin = Headers(scope=scope)["origin"].rstrip("/")
    if origin not in keys.browser_origins():
        return 403, [(b"vary", b"Origin")]
    return 204, [
        (b"access-control-allow-origin", origin.encode()),
        (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
        (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
        (b"access-control-max-age", MAX_AGE_S.encode()),
        (b"vary", b"Origin"),
    ]


def with_cors(scope: Scope, send: Send) -> Send:
    """``send`` with the CORS headers added to the response when the request's key allowed its origin."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            origin = scope.get("state", {}).get("cors_origin")
            if origin:
                message = {**message, "headers": [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin.encode()),
                    (b"access-control-expose-headers", EXPOSED_HEADERS.encode()),
                    (b"vary", b"Origin"),
                ]}
        await send(message)

    return sending
