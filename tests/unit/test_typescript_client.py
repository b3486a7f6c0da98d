"""The TypeScript client (sdk/typescript): its types are what openapi-typescript makes of the committed OpenAPI
document today, and the client and its examples compile against them (strict)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TS = REPO_ROOT / "sdk" / "typescript"
STAMP = TS / "node_modules" / ".installed"


@pytest.fixture(scope="module")
def tools() -> Path:
    """The client's node_modules (``npm ci`` through the Makefile, as ``make test`` does), installed when missing."""
    if not STAMP.exists():
        subprocess.run(["make", "-s", str(STAMP.relative_to(REPO_ROOT))], cwd=REPO_ROOT, check=True, timeout=300)
    return TS / "node_modules" / ".bin"


def test_the_committed_types_are_generated_from_the_committed_document(tools: Path) -> None:
    fresh = subprocess.run([str(tools / "openapi-typescript"), "../../bridge/openapi.json"], cwd=TS,
                           capture_output=True, text=True, check=True, timeout=120).stdout
    committed = (TS / "src" / "schema.d.ts").read_text()
    assert fresh == committed, "sdk/typescript/src/schema.d.ts drifted from bridge/openapi.json: run `make sdk-ts`"
    assert '"/v1/reports/compare"' in committed and '"/predictions/{model}"' in committed


def test_the_client_and_its_examples_compile_against_the_types(tools: Path) -> None:
    result = subprocess.run([str(tools / "tsc"), "-p", "tsconfig.json", "--noEmit"], cwd=TS, capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_route_the_document_does_not_have_does_not_compile(tools: Path) -> None:
    """The types are not decoration: a wrong path or parameter is a compile error."""
    probe = TS / "src" / "_probe_wrong_route.ts"
    probe.write_text(
        'import { createServingClient } from "./index.js";\n'
        "const client = createServingClient();\n"
        'await client.GET("/v1/no-such-route", {});\n'
        'await client.GET("/v1/results", { params: { query: { limit: "many" } } });\n'
    )
    try:
        result = subprocess.run([str(tools / "tsc"), "-p", "tsconfig.json", "--noEmit"], cwd=TS, capture_output=True,
                                text=True, check=False, timeout=300)
    finally:
        probe.unlink()
    assert result.returncode != 0
    assert "_probe_wrong_route.ts(3," in result.stdout and "_probe_wrong_route.ts(4," in result.stdout, result.stdout
