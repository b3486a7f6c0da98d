"""``/ping``: health of the bridge, TorchServe and the recording path (always open, no API key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/ping", summary="Health of the bridge, TorchServe and the recording path")
async def ping(request: Request) -> JSONResponse:
    """``Healthy`` (200) when TorchServe answers its own ping; recording backlog in detail."""
    # "TorchServe": every required box of the routes (bridge.routing); the spec keeps its wording. A replica
    # down while another box serves its models does not make the bridge unhealthy.
    boxes = await request.app.state.torchserve.health()
    failing = request.app.state.torchserve.failing(boxes)
    healthy = not failing
    if healthy:
        torchserve = "Healthy"
    elif len(boxes) == 1:
        torchserve = failing[0].status
    else:
        torchserve = "; ".join(f"{b.box.name}: {b.status}" for b in failing)
    return JSONResponse(
        {
            "status": "Healthy" if healthy else "Unhealthy",
            "torchserve": torchserve,
            "boxes": {b.box.name: {"models": request.app.state.torchserve.routes.models(b.box) or ["*"],
                                   "status": b.status} for b in boxes},
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
