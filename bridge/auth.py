"""The bridge's own API keys (not TorchServe's): required on every API route when keys are configured."""

from __future__ import annotations

import hmac

from fastapi import Request

from bridge.errors import Unauthorized

API_KEY_HEADER = "X-API-Key"
CLIENT_ID_HEADER = "X-Client-Id"


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


async def require_api_key(request: Request) -> None:
    """Accept ``X-API-Key: <key>`` or ``Authorization: Bearer <key>`` when BRIDGE_API_KEYS is set."""
    keys: tuple[str, ...] = request.app.state.settings.api_keys
    if not keys:
        return
    offered = offered_key(request)
    if offered is None:
        raise Unauthorized(f"missing API key: send it in the {API_KEY_HEADER} header")
    if not any(hmac.compare_digest(offered.encode(), key.encode()) for key in keys):
        raise Unauthorized("invalid API key")
