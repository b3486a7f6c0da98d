"""The finishing touches of the OpenAPI document: what FastAPI generates, made to state what the server does.

- A query, path or header parameter is never null on the wire: an optional one is left out, and ``?version=null``
  would be the version named "null". FastAPI writes ``Optional[str]`` as ``anyOf: [string, null]``, which generated
  clients type as ``string | null`` (and send as the text "null"); here it is the string schema alone.
- A request that fails validation is answered 400 with the error envelope (``ErrorBody``, or ``OipError`` on /v2),
  never FastAPI's 422 ``HTTPValidationError``, so that response (and its schemas) is not in the document.
- The API key is declared (``securitySchemes``: ``X-API-Key`` or ``Authorization: Bearer``) on every operation that
  answers 401, so generated clients know where it goes (docs/api-keys.md). The bridge asks for it once it has a
  key at all; a bridge with none (loopback only) is open, which a document cannot say per deployment.
- A limit that is a setting (``x-maximum-setting: <setting>`` on a parameter's schema) becomes the ``maximum`` this
  app enforces, e.g. ``POST /v1/jobs?deadline`` up to ``BRIDGE_JOB_DEADLINE_MAX_S``.
"""

from __future__ import annotations

from typing import Any

MAXIMUM_SETTING = "x-maximum-setting"
_FASTAPI_VALIDATION = "#/components/schemas/HTTPValidationError"  # FastAPI's 422, never answered here
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "A publishable (pk_…) or secret (sk_…) key from `servingctl keys create`, or a key of "
                              "BRIDGE_API_KEYS; its scopes decide which routes it may use (docs/api-keys.md)"},
    "Bearer": {"type": "http", "scheme": "bearer", "description": "The same key as `Authorization: Bearer <key>`"},
}
KEYED: list[dict[str, list[str]]] = [{"ApiKey": []}, {"Bearer": []}]  # either one


def finish(document: dict[str, Any], settings: object | None) -> dict[str, Any]:
    """``document`` (FastAPI's, changed in place and returned) as the server answers."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _parameter_schema(parameter.get("schema", {}), settings)
            responses = operation.get("responses", {})
            if _schema_ref(responses.get("422")) == _FASTAPI_VALIDATION:
                del responses["422"]
            if "401" in responses:
                operation["security"] = KEYED
    document.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):  # the second is only the first's items
        others = [v for k, v in schemas.items() if k != name]
        if not _refers([document.get("paths", {}), others], f"#/components/schemas/{name}"):
            schemas.pop(name, None)
    return document


def _parameter_schema(schema: dict[str, Any], settings: object | None) -> dict[str, Any]:
    variants = schema.get("anyOf")
    if isinstance(variants, list) and {"type": "null"} in variants:
        rest = [v for v in variants if v != {"type": "null"}]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**rest[0], **outer} if len(rest) == 1 else {**outer, "anyOf": rest}
    setting = schema.pop(MAXIMUM_SETTING, None)
    if setting is not None and settings is not None:
        schema["maximum"] = getattr(settings, setting)
    return schema


def _schema_ref(response: Any) -> str | None:
    if not isinstance(response, dict):
        return None
    return response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")


def _refers(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_refers(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_refers(v, ref) for v in node)
    return False
