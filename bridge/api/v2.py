"""``/v2``: the Open Inference Protocol (KServe v2 / Triton HTTP), so tritonclient and KServe's clients work as is.

Routes parse (``bridge.oip``), call the prediction service once per photo (recorded, cached, keyed and measured
exactly like ``/predictions``), and serialize. Errors on these routes are the protocol's ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any, TypedDict

import httpx
from fastapi import APIRouter, Depends, Path, Request, Response, params
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from bridge import oip
from bridge.auth import client_identity, require_api_key
from bridge.errors import BridgeError, EmptyBody, NotFound, PayloadTooLarge, UpstreamUnavailable, request_id_of
from bridge.methods import allowed_methods
from bridge.uploads import read_limited

logger = logging.getLogger(__name__)

SERVER_NAME = "photo-serving-bridge"
EXTENSIONS = ["binary_tensor_data", "classification"]
MODELS_TTL_S = 2.0  # management API answers reused this long (metadata and readiness are polled)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="Model name, as registered in TorchServe")]
ModelVersion = Annotated[str, Path(pattern=NAME_PATTERN, description="Model version, e.g. 1.0")]


def oip_error(request: Request, status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The protocol's error body, with the bridge's request id header."""
    return JSONResponse({"error": message}, status_code=status,
                        headers={"X-Request-Id": request_id_of(request), **(headers or {})})


class OipRoute(APIRoute):
    """A route whose every error (including the API key check and validation) answers ``{"error": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so the app-wide error envelope does not apply to ``/v2``."""
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except BridgeError as exc:
                if exc.status >= 500:
                    logger.warning("%s %s → %d: %s", request.method, request.url.path, exc.status, exc.message,
                                   exc_info=exc.__cause__)
                return oip_error(request, exc.status, exc.message, exc.headers)
            except RequestValidationError as exc:
                problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
                return oip_error(request, 400, f"invalid request: {problems}")
            except StarletteHTTPException as exc:
                return oip_error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))
            except Exception:
                logger.exception("unhandled error on %s %s", request.method, request.url.path)
                return oip_error(request, 500, "internal error; see the bridge log")

        return route


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    described = {
        400: "Malformed request, or an input or output the model does not have",
        401: "Missing or invalid API key (when BRIDGE_API_KEYS is set)",
        404: "No such model or version",
        413: "Body larger than the limit (BRIDGE_MAX_BODY_BYTES, all photos together)",
        503: "TorchServe or the recording path is unavailable; retry after Retry-After seconds",
        504: "TorchServe did not answer in time",
    }
    return {s: {"model": oip.OipError, "description": described[s]} for s in statuses}


router = APIRouter(prefix="/v2", tags=["open inference protocol"], route_class=OipRoute)
KEYED = [Depends(require_api_key)]


class _RouteOptions(TypedDict, total=False):
    """The keyword arguments the routes below share (typed, so mypy checks them against FastAPI's)."""

    responses: dict[int | str, dict[str, Any]]
    dependencies: list[params.Depends]
    response_description: str
    openapi_extra: dict[str, Any]


@router.get("/health/live", summary="Liveness (OIP)", responses=_errors(503),
            response_description='`{"live": true}` while the bridge process serves')
async def live() -> dict[str, bool]:
    """200 while the bridge answers at all (no API key)."""
    return {"live": True}


@router.get("/health/ready", summary="Readiness (OIP)", responses=_errors(503),
            response_description='`{"ready": true}` when TorchServe answers its ping; else 503 `{"ready": false}`')
async def ready(request: Request) -> JSONResponse:
    """Ready when TorchServe is healthy (no API key); 503 with ``{"ready": false}`` otherwise."""
    healthy = await request.app.state.torchserve.ready()
    return JSONResponse({"ready": healthy}, status_code=200 if healthy else 503)


@router.get("", summary="Server metadata (OIP)", dependencies=KEYED, responses=_errors(400, 401, 503))
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


async def _registered(request: Request, model: str) -> list[dict[str, Any]]:
    """Its box's descriptions of every registered version of ``model`` (cached briefly, per model)."""
    state = request.app.state
    if getattr(state, "oip_models", None) is None:
        state.oip_models = {}
    cached = state.oip_models.get(model)
    if cached is None or time.monotonic() - cached[1] > MODELS_TTL_S:
        try:
            descriptions = await state.torchserve.describe_models(model)
        except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
            raise UpstreamUnavailable("TorchServe's management API did not answer; retry shortly") from exc
        cached = state.oip_models[model] = (descriptions, time.monotonic())
    return list(cached[0])


async def _version_entry(request: Request, model: str, version: str | None) -> tuple[list[str], dict[str, Any]]:
    """All versions of ``model`` and the description of ``version`` (default: the default version)."""
    entries = await _registered(request, model)
    if not entries:
        raise NotFound(f"model {model!r} is not registered")
    chosen = ([e for e in entries if e.get("modelVersion") == version] if version
              else await _default_entry(request, model, entries))
    if not chosen:
        raise NotFound(f"model {model!r} has no version {version!r}")
    return [str(e.get("modelVersion")) for e in entries], chosen[0]


async def _default_entry(request: Request, model: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default version's description: the default as predictions, their records and the cache know it (one
    owner, the router's lookup), else (that lookup failed, or it names a version gone since) the descriptions' mark."""
    default = await request.app.state.torchserve.default_version(model)
    return [e for e in entries if e.get("modelVersion") == default] or [e for e in entries if e.get("isDefault")]


async def _metadata(request: Request, model: str, version: str | None) -> dict[str, Any]:
    versions, _ = await _version_entry(request, model, version)
    return oip.model_metadata(model, [version] if version else versions)


async def _ready(request: Request, model: str, version: str | None) -> JSONResponse:
    _, entry = await _version_entry(request, model, version)
    ready = any(w.get("status") == "READY" for w in entry.get("workers", []))
    return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)


METADATA = _RouteOptions(responses=_errors(400, 401, 404, 503), dependencies=KEYED,
                         response_description="Inputs and outputs: names, datatypes and shapes (-1: any size)")
READY = _RouteOptions(responses=_errors(400, 401, 404, 503), dependencies=KEYED,
                      response_description='`{"name", "ready": true}` when a worker of the version is ready; else 503')


@router.get("/models/{model}", summary="Model metadata (OIP)", **METADATA)
async def model_metadata(request: Request, model: ModelName) -> dict[str, Any]:
    """Versions, inputs and outputs of ``model``."""
    return await _metadata(request, model, None)


@router.get("/models/{model}/versions/{version}", summary="Model version metadata (OIP)", **METADATA)
async def model_version_metadata(request: Request, model: ModelName, version: ModelVersion) -> dict[str, Any]:
    """Inputs and outputs of one version of ``model``."""
    return await _metadata(request, model, version)


@router.get("/models/{model}/ready", summary="Model readiness (OIP)", **READY)
async def model_ready(request: Request, model: ModelName) -> JSONResponse:
    """200 when the default version has a ready worker, 503 when not, 404 when unknown."""
    return await _ready(request, model, None)


@router.get("/models/{model}/versions/{version}/ready", summary="Model version readiness (OIP)", **READY)
async def model_version_ready(request: Request, model: ModelName, version: ModelVersion) -> JSONResponse:
    """200 when ``version`` has a ready worker."""
    return await _ready(request, model, version)


async def _outcome(request: Request, model: str, version: str | None, item: oip.Item, request_id: str,
                   params: dict[str, str], use_cache: bool) -> tuple[oip.Outcome, str | None, bool]:
    """One photo through the same path as ``/predictions``: its outcome, served version and whether cached."""
    if item.problem is not None:
        return oip.Outcome(400, request_id, error=item.problem), None, False
    try:
        prediction = await request.app.state.predictions.predict(
            model, version, item.photo, "application/octet-stream", request_id=request_id, params=params or None,
            use_cache=use_cache, client=client_identity(request),
        )
    except BridgeError as exc:
        return oip.Outcome(exc.status, request_id, error=exc.message), None, False
    upstream = prediction.upstream
    try:
        answer = json.loads(upstream.body)
    except ValueError:  # a handler of someone else's may answer plain text: the json kind carries it as a string
        answer = upstream.body.decode(errors="replace") if upstream.status == 200 else None
    if upstream.status == 200:
        return oip.Outcome(200, request_id, answer=answer), prediction.record.model_version, prediction.cached
    message = answer.get("message") if isinstance(answer, dict) else None
    return oip.Outcome(upstream.status, request_id, error=str(message or upstream.body[:200].decode(errors="replace"))), None, False


async def _infer(request: Request, model: str, version: str | None) -> Response:
    settings = request.app.state.settings
    raw = await read_limited(request, settings.max_body_bytes, settings.request_body_timeout_s)
    body = oip.decompress(raw, request.headers.get("content-encoding"), settings.max_body_bytes)
    if not body:
        raise EmptyBody("empty body: send an inference request (JSON, or JSON + binary tensor data)")
    parsed = oip.parse_infer_request(body, request.headers.get(oip.HEADER_LENGTH))
    params = {**parsed.params, **oip.check_outputs(model, parsed)}
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    rid = request_id_of(request)
    # Each photo is one TorchServe request (so TorchServe batches them) and one record; the first uses the
    # request's id, so a one-photo request is found under X-Request-Id like /predictions.
    ids = [rid] + [str(uuid.uuid4()) for _ in parsed.items[1:]]
    results = await asyncio.gather(*(
        _outcome(request, model, version, item, item_id, params, use_cache=not no_cache and not params)
        for item, item_id in zip(parsed.items, ids)
    ))
    outcomes = [r[0] for r in results]
    headers = {"X-Request-Id": rid}
    served = next((r[1] for r in results if r[1]), version)
    if served:
        headers["X-Model-Version"] = served
    if all(o.status != 200 for o in outcomes):
        first = outcomes[0]
        prefix = f"item 0 of {len(outcomes)}: " if len(outcomes) > 1 else ""
        if first.status == 413:
            raise PayloadTooLarge(prefix + (first.error or ""))
        extra = {"Retry-After": "1"} if first.status == 503 else {}
        return oip_error(request, first.status, prefix + (first.error or "failed"), {**headers, **extra})
    if all(r[2] for r in results):
        headers["X-Cache"] = "HIT"
    tensors = oip.build_outputs(model, outcomes, parsed)
    content, protocol_headers = oip.encode_response(model, served, parsed, tensors)
    media_type = protocol_headers.pop("Content-Type")
    return Response(content=content, media_type=media_type, headers={**headers, **protocol_headers})


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": oip.inline_schema(oip.InferenceRequest),
                "examples": {"base64 photo": {"value": {
                    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                                "parameters": {"content_type": "base64"}, "data": ["/9j/4AAQSkZJRg..."]}],
                    "outputs": [{"name": "labels"}, {"name": "scores", "parameters": {"classification": 3}}],
                }}},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary", "minLength": 1},
                "description": "Binary tensor data extension: the JSON request (its length in the "
                               "Inference-Header-Content-Length header), then each binary input's bytes",
            },
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": oip.InferenceResponse,
        "description": (
            "Output tensors, one row per photo. Binary outputs (binary_data / binary_data_output) follow the JSON, "
            "whose length is in Inference-Header-Content-Length. When some photos failed, their rows are zero/empty "
            "and the outputs `status` (HTTP status per photo) and `error` say which and why; when all failed, "
            "the request fails with the first photo's status and error."
        ),
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **_errors(400, 401, 404, 413, 503, 504),
    400: {"model": oip.OipError, "description": (
        "Malformed request; an output the model does not have; a shape whose N is not the number of photos, or a "
        "binary_data_size that is not the bytes after the JSON; or every photo refused (the first one's error, e.g. "
        "not an image)"
    )},
}
INFER = _RouteOptions(responses=INFER_RESPONSES, dependencies=KEYED, openapi_extra=INFER_BODY)


@router.post("/models/{model}/infer", summary="Infer (OIP)", **INFER)
async def infer(request: Request, model: ModelName) -> Response:
    """Run every photo of the ``image`` input (BYTES, [N, 1]) through the model's default version."""
    return await _infer(request, model, None)


@router.post("/models/{model}/versions/{version}/infer", summary="Infer with a version (OIP)", **INFER)
async def infer_version(request: Request, model: ModelName, version: ModelVersion) -> Response:
    """Run every photo through ``version`` of the model."""
    return await _infer(request, model, version)


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"], include_in_schema=False)
async def unknown(request: Request, path: str) -> JSONResponse:
    """Any other ``/v2`` request: the protocol's error body rather than the bridge's envelope; a 405 (with
    ``Allow``) where the path exists with other methods."""
    allowed = allowed_methods(request)
    if allowed:
        methods = ", ".join(allowed)
        return oip_error(request, 405, f"{request.method} is not allowed on /v2/{path}: {methods}", {"Allow": methods})
    return oip_error(request, 404, f"no such endpoint: {request.method} /v2/{path}")
