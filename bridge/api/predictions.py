"""``/predictions/{model}[/{version}]``: TorchServe's inference API, mirrored."""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from fastapi import APIRouter, Path, Request, Response

from bridge.auth import client_identity
from bridge.errors import ErrorBody, request_id_of
from bridge.uploads import MAX_PARAM_LENGTH, MAX_PARAMS, PARAM_NAME, read_photo

router = APIRouter(tags=["predictions"])

NAME = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"  # a model or version name (bridge.fastpath matches paths with it)
NAME_PATTERN = f"^{NAME}$"
ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="Model name, as registered in TorchServe")]
ModelVersion = Annotated[str, Path(pattern=NAME_PATTERN, description="Model version, e.g. 1.0")]

PREDICTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The model's answer (JSON): top-5 labels, a price, or the nearest items",
        "content": {"application/json": {"examples": {
            "classifier": {"value": {"predictions": [{"label": "Egyptian cat", "index": 285, "score": 0.3737}],
                                     "model": {"name": "classifier", "version": "1.0"}, "batch_size": 1}},
            "price": {"value": {"price": 86.01, "currency": "EUR",
                                "interval": {"low": 47.63, "high": 155.33, "coverage": 0.8},
                                "model": {"name": "price", "version": "1.0"}, "batch_size": 1}},
            "similar": {"value": {"items": [{"id": "chelsea-01", "distance": 0.0}], "k": 1,
                                  "model": {"name": "similar", "version": "1.0"}, "batch_size": 1}},
        }}},
    },
    **{
        status: {"model": ErrorBody, "description": description}
        for status, description in (
            (400, "The body is empty, not an image, or malformed"),
            (404, "No such model or version"),
            (413, "The body is larger than the limit"),
            (415, "The content type made the body text or JSON instead of image bytes"),
            (422, "The image's dimensions are too large"),
            (503, "TorchServe is unavailable or overloaded; retry"),
            (504, "TorchServe did not answer in time"),
        )
    },
}
PHOTO = {"type": "string", "format": "binary", "minLength": 1}  # an empty body is a 400
PHOTO_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "image/jpeg": {"schema": PHOTO},
            "application/octet-stream": {"schema": PHOTO},
            # The photo as the one file of the form; its other fields are model parameters (uploads.model_params).
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {**PHOTO, "description": "The photo"}},
                    "required": ["file"],
                    "propertyNames": {"pattern": PARAM_NAME.pattern},
                    "additionalProperties": {"type": "string", "maxLength": MAX_PARAM_LENGTH,
                                             "description": "A model parameter, e.g. k=3 for similar (jobs "
                                                            "pass none to their models)"},
                    "maxProperties": 1 + MAX_PARAMS,
                }
            },
        },
    }
}


async def answer(request: Request, model: str, version: str | None) -> Response:
    """One prediction, read, run, recorded and answered: the routes below and :mod:`bridge.fastpath` call this."""
    settings = request.app.state.settings
    upload = await read_photo(request, settings.max_body_bytes, settings.request_body_timeout_s)
    no_cache = "no-cache" in request.headers.get("cache-control", "").lower()
    prediction = await request.app.state.predictions.predict(
        model, version, upload.photo, upload.content_type, request_id=request_id_of(request),
        params=upload.params, use_cache=not no_cache and not upload.params, client=client_identity(request),
    )
    upstream = prediction.upstream
    headers = {"X-Request-Id": request_id_of(request)}
    if prediction.record.model_version:
        headers["X-Model-Version"] = prediction.record.model_version
    if upstream.batch_size is not None:
        headers["X-Batch-Size"] = str(upstream.batch_size)
    if upstream.status == 503:
        headers["Retry-After"] = "1"
    if prediction.cached:
        headers["X-Cache"] = "HIT"
    return Response(
        content=upstream.body,
        status_code=upstream.status,
        media_type=upstream.content_type or "application/json",
        headers=headers,
    )


class _RouteDoc(TypedDict):
    responses: dict[int | str, dict[str, Any]]
    openapi_extra: dict[str, Any]
    summary: str


DEFAULT_VERSION = _RouteDoc(responses=PREDICTION_RESPONSES, openapi_extra=PHOTO_BODY,
                            summary="Predict with the model's default version")
GIVEN_VERSION = _RouteDoc(responses=PREDICTION_RESPONSES, openapi_extra=PHOTO_BODY,
                          summary="Predict with a specific model version")


@router.post("/predictions/{model}", operation_id="predict", **DEFAULT_VERSION)
@router.put("/predictions/{model}", operation_id="predict_put", **DEFAULT_VERSION)
async def predict(request: Request, model: ModelName) -> Response:
    """Send one photo (raw body or a one-file multipart form) to ``model``."""
    return await answer(request, model, None)


@router.post("/predictions/{model}/{version}", operation_id="predict_version", **GIVEN_VERSION)
@router.put("/predictions/{model}/{version}", operation_id="predict_version_put", **GIVEN_VERSION)
async def predict_version(request: Request, model: ModelName, version: ModelVersion) -> Response:
    """Send one photo to a specific ``version`` of ``model``."""
    return await answer(request, model, version)
