"""The committed OpenAPI document is the app's, and documents the error envelope everywhere."""

from __future__ import annotations

import json

from bridge.openapi import SPEC_PATH, generate


def test_committed_spec_matches_the_app() -> None:
    assert SPEC_PATH.read_text() == generate(), "run `.venv/bin/python -m bridge.openapi` and commit the result"


def test_every_api_operation_documents_the_error_envelope() -> None:
    spec = json.loads(generate())
    assert "ErrorBody" in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        if path in ("/ping", "/v2/health/live", "/v2/health/ready"):
            continue
        # The Open Inference Protocol's routes answer its own error body, {"error": "..."}.
        body = "/OipError" if path.startswith("/v2") else "/ErrorBody"
        for method, operation in operations.items():
            for status in ("400", "401", "503"):
                content = operation["responses"][status]["content"]["application/json"]["schema"]
                assert content["$ref"].endswith(body), (method, path, status)


def test_oip_health_routes_document_their_error_body() -> None:
    spec = json.loads(generate())
    for path in ("/v2/health/live", "/v2/health/ready"):
        content = spec["paths"][path]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
        assert content["$ref"].endswith("/OipError"), path
