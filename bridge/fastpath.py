"""The prediction routes' hot path: ``POST|PUT /predictions/{model}[/{version}]`` straight from the ASGI server.

FastAPI reaches a route through five middleware layers, a walk of the route table and its dependency
injection; for the one request the bridge serves thousands of times a second that was a sixth of its CPU.
:class:`BridgeApp` answers those paths itself with the routes' own code — the API key check
(:func:`bridge.auth.require_api_key`), :func:`bridge.api.predictions.answer` and the app's exception
handlers — and hands every other request, and any prediction path with a name the routes would refuse, to
FastAPI unchanged. Responses, error bodies and the OpenAPI document are therefore the routes'. When
FastAPI's OpenTelemetry instrumentation is on (a tracer or meter provider configured; the bridge sets none),
every request goes through FastAPI, so no prediction is missing from its spans and metrics.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from bridge.api.predictions import NAME, answer
from bridge.auth import require_api_key
from bridge.cors import is_preflight, preflight_headers, with_cors
from bridge.errors import envelope, request_id_of
from bridge.spec import finish

PREDICTION_PATH = re.compile(rf"/predictions/({NAME})(?:/({NAME}))?")
METHODS = frozenset(("POST", "PUT"))


class BridgeApp(FastAPI):
    """The bridge's FastAPI app, with the prediction routes answered before FastAPI's routing."""

    _instrumented: bool | None = None  # FastAPI's OpenTelemetry instrumentation is on: no fast path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._instrumented = None  # decided again at the first request, once OpenTelemetry is set up (or not)
        elif is_preflight(scope):
            await self._preflight(scope, receive, send)
            return
        if scope["type"] == "http" and any(name == b"origin" for name, _ in scope["headers"]):
            send = with_cors(scope, send)  # a browser's request: bridge.auth decides whether it may read the answer
        if scope["type"] == "http" and scope["method"] in METHODS and not scope.get("root_path"):
            if self._instrumented is None:  # ~10 µs a call: asked once, providers are set once at start-up
                self._instrumented = self._native_telemetry.enabled()
            match = None if self._instrumented else PREDICTION_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self  # what Starlette sets: the routes read settings and services from app.state
                await self._predict(scope, receive, send, match[1], match[2])
                return
        await super().__call__(scope, receive, send)

    async def _predict(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        request = Request(scope, receive, send)
        try:
            await require_api_key(request)
            response = await answer(request, model, version)
        except Exception as exc:
            handled = self._handler(type(exc))
            if handled is None:
                # As Starlette's ServerErrorMiddleware does: the app's 500 answer, then the error to the server's log.
                await (await self._handle(Exception, request, exc))(scope, receive, send)
                raise
            response = await self._handle(handled, request, exc)
        await response(scope, receive, send)

    async def _preflight(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A browser's CORS preflight (bridge.cors): allowed for the origins publishable keys list."""
        request = Request(scope, receive, send)
        status, headers = preflight_headers(scope, self.state.keys)
        response: Response = Response(status_code=status)
        if status != 204:
            message = (f"no publishable API key allows the origin {request.headers['origin']}: "
                       "servingctl keys create --publishable --origin ORIGIN")
            response = JSONResponse(envelope(status, "Forbidden", message, request_id_of(request)), status_code=status)
        response.raw_headers.extend(headers)
        await response(scope, receive, send)

    def _handler(self, kind: type[BaseException]) -> type[BaseException] | None:
        """The class whose handler the app's ExceptionMiddleware would use for ``kind`` (None: the 500 one)."""
        for cls in kind.__mro__:
            if cls is Exception:
                return None
            if cls in self.exception_handlers:
                return cls
        return None

    async def _handle(self, cls: type[BaseException], request: Request, exc: Exception) -> Response:
        response = self.exception_handlers[cls](request, exc)
        return await response if inspect.isawaitable(response) else response

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, finished once by :func:`bridge.spec.finish` to state what the server does."""
        if self.openapi_schema is None:
            finish(super().openapi(), getattr(self.state, "settings", None))
        return self.openapi_schema or {}
