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
        if path == "/ping":
            continue
        for method, operation in operations.items():
            for status in ("400", "401", "503"):
                content = operation["responses"][status]["content"]["application/json"]["schema"]
                assert content["$ref"].endswith("/ErrorBody"), (method, path, status)
