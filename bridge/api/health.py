"""``/ping``: health of the bridge, TorchServe and the recording path (always open, no API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bridge.errors import BridgeError

router = APIRouter(tags=["health"])


@router.get("/ping", summary="Health of the bridge, TorchServe and the recording path")
async def ping(request: Request) -> JSONResponse:
    """``Healthy`` (200) when TorchServe answers its own ping; recording backlog in detail."""
    try:
        upstream = await request.app.state.torchserve.ping()
        torchserve = "Healthy" if upstream.status == 200 else f"Unhealthy ({upstream.status})"
    except BridgeError as exc:
        torchserve = f"Unreachable ({exc.message})"
    healthy = torchserve == "Healthy"
    return JSONResponse(
        {
            "status": "Healthy" if healthy else "Unhealthy",
            "torchserve": torchserve,
            "recording": request.app.state.recorder.health(),
            "cache": _cache_stats(request),
        },
        status_code=200 if healthy else 503,
    )


def _cache_stats(request: Request) -> dict[str, object]:
    cache = request.app.state.cache
    if cache is None:
        return {"enabled": False}
    return {"enabled": True, "hits": cache.hits, "misses": cache.misses}
