"""The methods a path answers, as the OpenAPI document declares them: the ``Allow`` header of a 405.

Starlette answers a method a path does not take with the methods of the *first* route matching the path — ``PUT``
alone for ``/predictions/{model}``, whose POST and PUT are two routes — and the OIP catch-all answered any other
``/v2`` request with a 404 even where the path exists with another method. Both ask here instead, so ``Allow``
says what the document (and so every generated client) says; HEAD comes with GET, as Starlette serves it.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request

_PARAMETER = re.compile(r"\\\{[^/]+?\\\}")  # an escaped {name} of a path template
_METHODS = ("delete", "get", "head", "options", "patch", "post", "put", "trace")


def _declared(document: dict[str, Any]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    paths = []
    for template, operations in document.get("paths", {}).items():
        pattern = re.compile(_PARAMETER.sub("[^/]+", re.escape(template)))
        methods = {method.upper() for method in operations if method in _METHODS}
        if "GET" in methods:
            methods.add("HEAD")
        paths.append((pattern, frozenset(methods)))
    return paths


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document declares for this request's path, sorted (empty: no such path)."""
    app = request.app
    declared = getattr(app.state, "declared_methods", None)
    if declared is None:
        declared = app.state.declared_methods = _declared(app.openapi())
    path = request.url.path
    return sorted({method for pattern, methods in declared if pattern.fullmatch(path) for method in methods})
