"""The committed OpenAPI document is the app's, and documents the error envelope everywhere."""

from __future__ import annotations

import base64
import copy
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge import oip, reports
from bridge.app import create_app
from bridge.errors import BadRequest
from bridge.openapi import SPEC_PATH, generate
from bridge.settings import Settings
from bridge.uploads import MAX_PARAM_LENGTH, MAX_PARAMS, model_params
from tests.unit.test_bridge_app import FakeTorchServe, bridge_under_test


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


# --- the document states what the server validates (issue 24, part 4; schemathesis --checks all holds it live) ---


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_no_parameter_is_nullable_and_no_validation_error_is_a_422() -> None:
    spec = json.loads(generate())
    for method, path, operation in _operations(spec):
        for parameter in operation.get("parameters", []):
            assert {"type": "null"} not in parameter["schema"].get("anyOf", []), (method, path, parameter["name"])
        assert "HTTPValidationError" not in json.dumps(operation["responses"]), (method, path)
    assert not {"HTTPValidationError", "ValidationError"} & spec["components"]["schemas"].keys()


def test_a_validation_error_is_the_documented_400(tmp_path: Path) -> None:
    with bridge_under_test(tmp_path, FakeTorchServe) as (client, _, _):
        for url in ("/v1/results?limit=0", "/v1/results?cursor=x", "/v1/jobs/not-a-uuid", "/v1/results?since=0.5"):
            response = client.get(url)
            assert response.status_code == 400 and response.json()["type"] == "BadRequest", (url, response.text)


def test_a_limit_that_is_a_setting_is_the_apps_maximum() -> None:
    def deadline(settings: Settings) -> dict[str, Any]:
        operation = create_app(settings).openapi()["paths"]["/v1/jobs"]["post"]
        return next(p["schema"] for p in operation["parameters"] if p["name"] == "deadline")

    assert deadline(Settings())["maximum"] == Settings().job_deadline_max_s == 3600
    assert deadline(Settings(job_deadline_max_s=7200))["maximum"] == 7200
    assert "x-maximum-setting" not in generate()


def test_the_cursor_pattern_is_every_cursor_and_only_those() -> None:
    created_at = datetime(2026, 11, 25, 9, 8, 6, 294227, tzinfo=UTC)
    request_id = str(uuid.uuid4())
    cursor = reports.encode_cursor(created_at, request_id)
    assert re.fullmatch(reports.CURSOR_PATTERN, cursor) and reports.decode_cursor(cursor) == (created_at, request_id)
    assert reports.decode_cursor("9" * 16 + "_" + "f" * 32)[0].year == 2286  # the largest one is a datetime
    for bad in ("", "1_2", "MjAyNi0xMS0yNVQwOTowODowNi4yOTQyMjcrMDA6MDB8NzVlNTgzZjA", cursor.upper()):
        with pytest.raises(BadRequest):
            reports.decode_cursor(bad)


@pytest.mark.parametrize(("raw", "models"), [
    (None, ["d"]), ("", ["d"]), ("  ", ["d"]), ("a", ["a"]), (" a , b ", ["a", "b"]), ("a,a", ["a"]),
    (",".join(["m"] * 16), ["m"]), (",".join(["m"] * 17), None), ("a,", None), (",a", None), ("a b", None),
    ("KÃÇ", None), ("a\t", None),
])
def test_the_models_pattern_is_what_a_job_submission_accepts(raw: str | None, models: list[str] | None) -> None:
    from bridge.api.jobs import MODELS_PATTERN, parse_models

    parameter = next(p for p in json.loads(generate())["paths"]["/v1/jobs"]["post"]["parameters"]
                     if p["name"] == "models")
    assert parameter["schema"]["pattern"] == MODELS_PATTERN
    if models is None:
        with pytest.raises(BadRequest):
            parse_models(raw, ("d",))
    else:
        assert parse_models(raw, ("d",)) == models


def test_the_photo_form_states_the_model_parameters_the_server_takes() -> None:
    spec = json.loads(generate())
    form = spec["paths"]["/predictions/{model}"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    validator = jsonschema.Draft202012Validator(form)
    good = {"file": "x", "k": "3", "embedding": "true", "_a1": "v" * MAX_PARAM_LENGTH}
    assert validator.is_valid(good) and model_params([(k, v) for k, v in good.items() if k != "file"])
    for bad in ({"k": "3"}, {"file": ""}, {"file": "x", "1k": "3"}, {"file": "x", "k": "v" * (MAX_PARAM_LENGTH + 1)},
                {"file": "x", **{f"p{i}": "v" for i in range(MAX_PARAMS + 1)}}):
        params = [(k, v) for k, v in bad.items() if k != "file"]
        refused = not bad.get("file") or not _accepted(params)
        assert not validator.is_valid(bad) and refused, bad
    # The pattern's $ is the end, as in ECMA regular expressions (Python's re.match also takes it before a \n).
    assert not _accepted([("k\n", "3")])


def _accepted(params: list[tuple[str, str]]) -> bool:
    try:
        model_params(params)
    except BadRequest:
        return False
    return True


def test_the_infer_request_schema_refuses_what_the_parser_refuses() -> None:
    spec = json.loads(generate())
    body = spec["paths"]["/v2/models/{model}/infer"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator(body)
    photo = base64.b64encode(b"\xff\xd8 a photo").decode()
    good = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "parameters": {"content_type": "base64"},
                        "data": [photo, photo]}],
            "outputs": [{"name": "scores", "parameters": {"classification": 2.0, "binary_data": True}}],
            "parameters": {"k": 3, "binary_data_output": True, "triton_x": "y"}}
    binary = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4.0}}]}
    assert validator.is_valid(good) and validator.is_valid(binary)
    oip.parse_infer_request(json.dumps(good).encode(), None)
    oip.parse_infer_request(json.dumps(binary).encode() + b"\0\0\0\0", str(len(json.dumps(binary))))
    changes = [
        lambda d: d["inputs"][0].update(name="pixels"),
        lambda d: d["inputs"][0].update(datatype="FP32"),
        lambda d: d["inputs"][0].update(shape=[1, 3]),
        lambda d: d["inputs"][0].update(shape=[0, 1]),
        lambda d: d["inputs"][0].update(shape=[oip.MAX_ITEMS + 1, 1]),
        lambda d: d["inputs"][0].update(shape=[2, 1, 1]),
        lambda d: d["inputs"][0].pop("data"),
        lambda d: d["inputs"][0].update(data=None),
        lambda d: d["inputs"][0]["parameters"].update(binary_data_size=0),
        lambda d: d["inputs"].append(d["inputs"][0]),
        lambda d: d.update(inputs=[]),
        lambda d: d.update(parameters={"bad name": 1}),
        lambda d: d.update(parameters={"k": "v" * (MAX_PARAM_LENGTH + 1)}),
        lambda d: d.update(outputs=[{"name": "scores", "parameters": {"binary_data": "yes"}}]),
        lambda d: d.update(outputs=[{"name": "scores", "parameters": {"classification": -1}}]),
    ]
    for change in changes:
        document = copy.deepcopy(good)
        change(document)
        assert not validator.is_valid(document), document
        with pytest.raises(BadRequest):
            oip.parse_infer_request(json.dumps(document).encode(), None)
