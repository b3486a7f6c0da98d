"""The bridge's own API keys (not TorchServe's): on every API route once the bridge has keys (bridge.keys).

A request is checked in this order: its key (401), the key's scope for the route and, from a browser, its origin
(403), then the key's rate (429). The route's scope comes from its path (:data:`ROUTE_SCOPES`); a keyed path
missing there needs ``admin``, so a new route is closed to publishable keys until it is given a scope.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request

from bridge.errors import Forbidden
from bridge.keys import Caller, KeyRing

API_KEY_HEADER = "X-API-Key"
CLIENT_ID_HEADER = "X-Client-Id"

# Path prefix → the scope it needs (stack.database.api_keys.SCOPES); the first match wins.
ROUTE_SCOPES: tuple[tuple[str, str], ...] = (
    ("/predictions/", "predict"),
    ("/v2", "predict"),
    ("/v1/jobs", "jobs"),
    ("/v1/results", "results"),
    ("/v1/reports/", "reports"),
    ("/v1/feedback", "feedback"),
    ("/v1/rollouts", "admin"),
)
UNLISTED_SCOPE = "admin"


def offered_key(request: Request) -> str | None:
    """The key the request offers: ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``."""
    offered = request.headers.get(API_KEY_HEADER)
    if offered is None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        offered = token.strip() if scheme.lower() == "bearer" else None
    return offered


def client_identity(request: Request) -> str:
    """Who asks, for a canary to answer the same clients throughout: ``X-Client-Id`` (an app's install or user id),
    else the API key, else the client's address. Only hashed (bridge.rollouts.client_share), never stored."""
    given = request.headers.get(CLIENT_ID_HEADER) or offered_key(request)
    if given:
        return "id:" + given[:256]
    return "addr:" + (request.client.host if request.client else "")


def scope_of(path: str) -> str:
    """The scope a keyed route needs."""
    for prefix, scope in ROUTE_SCOPES:
        if path.startswith(prefix):
            return scope
    return UNLISTED_SCOPE


def same_origin(request: Request, origin: str) -> bool:
    """Whether ``origin`` is the bridge itself (its web page at /), as the request's Host names it."""
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == request.headers.get("host", "").lower()


def _check_origin(request: Request, caller: Caller, keys: KeyRing) -> None:
    """A browser's request (it says its Origin) from elsewhere needs a publishable key that lists that origin;
    CORS headers then let the page read the answer (bridge.cors)."""
    origin = request.headers.get("origin")
    if origin is None or caller.kind == "open" or same_origin(request, origin):
        return
    if caller.kind == "publishable" and origin.rstrip("/") in caller.origins:
        request.state.cors_origin = origin.rstrip("/")
        return
    keys.count(caller.id, caller.kind, "forbidden")
    if caller.kind == "publishable":
        raise Forbidden(f"this API key may not be used from {origin}: its origins are "
                        f"{', '.join(caller.origins) or 'none'} (servingctl keys create --publishable --origin ...)")
    raise Forbidden(f"a secret API key may not be used from a browser ({origin}): create a publishable key "
                    "for web pages (servingctl keys create --publishable --origin ...)")


async def require_api_key(request: Request) -> None:
    """Admit the request under its key: 401 without a valid one, 403 outside its scopes or origins, 429 over its
    rate. Nothing is asked while the bridge has no keys at all (the loopback default)."""
    keys: KeyRing = request.app.state.keys
    caller = keys.authenticate(offered_key(request))
    keys.authorise(caller, scope_of(request.url.path))
    _check_origin(request, caller, keys)
    keys.admit(caller)
    request.state.caller = caller
