"""The Open Inference Protocol: the codec (bridge.oip) and the /v2 routes through the ASGI app, TorchServe faked."""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bridge import oip
from bridge.errors import BadRequest
from stack import models
from tests.unit.fakes import FlakyStore
from tests.unit.test_bridge_app import FakeTorchServe, bridge_under_test

CAT = b"\xff\xd8\xff\xe0cat"
BAD = b"not a photo"


def answer_for(photo: bytes) -> httpx.Response:
    """A classifier's answer, or a per-item 400 for BAD (as our batch handler answers)."""
    if photo == BAD:
        return httpx.Response(400, json={"code": 400, "type": "ImageError", "message": "cannot identify image"})
    predictions = [{"label": "tabby", "index": 281, "score": 0.75}, {"label": "tiger cat", "index": 282, "score": 0.2}]
    return httpx.Response(200, json={"predictions": predictions, "model": {"name": "classifier", "version": "1.0"},
                                     "batch_size": 1}, headers={"X-Batch-Size": "1"})


class FakeOipTorchServe(FakeTorchServe):
    """Also answers the management API (model descriptions) and each photo on its own."""

    workers = "READY"

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.url.port == 8081 and path != "/token":
            self.requests.append(request)
            if path == "/models":
                return httpx.Response(200, json={"models": [{"modelName": "classifier"}]})
            if path in ("/models/classifier", "/models/classifier/all"):
                entry = {"modelName": "classifier", "modelVersion": "1.0", "workers": [{"status": self.workers}]}
                return httpx.Response(200, json=[entry])
            return httpx.Response(404, json={"code": 404, "type": "ModelNotFoundException", "message": "nope"})
        return super().__call__(request)

    def predict_ok(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/predictions/nope"):
            return httpx.Response(404, json={"code": 404, "type": "ModelNotFoundException",
                                             "message": "Model not found: nope"})
        return answer_for(request.content)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, FakeOipTorchServe, FlakyStore]]:
    with bridge_under_test(
        tmp_path, FakeOipTorchServe, headers={"X-API-Key": "k1"}, max_body_bytes=10_000, api_keys=("k1",)
    ) as env:
        yield env


def binary_request(photos: list[bytes], **extra: Any) -> tuple[bytes, dict[str, str]]:
    """An infer request the way tritonclient sends it: JSON header, then the BYTES tensor."""
    raw = oip.encode_bytes_elements(photos)
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(photos), 1],
                            "parameters": {"binary_data_size": len(raw)}}], **extra}
    header = json.dumps(document).encode()
    return header + raw, {oip.HEADER_LENGTH: str(len(header))}


def json_request(photos: list[bytes], **extra: Any) -> dict[str, Any]:
    data = [base64.b64encode(p).decode() for p in photos]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(photos), 1],
                        "parameters": {"content_type": "base64"}, "data": data}], **extra}


def read_response(response: httpx.Response) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON document and each output's values (binary ones decoded), by name."""
    length = int(response.headers.get(oip.HEADER_LENGTH, len(response.content)))
    document = json.loads(response.content[:length])
    values, offset = {}, length
    for output in document["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            values[output["name"]] = output["data"]
            continue
        chunk = response.content[offset:offset + size]
        offset += size
        if output["datatype"] == "BYTES":
            values[output["name"]] = [e.decode() for e in oip.decode_bytes_elements(chunk)]
        else:
            fmt = oip.BINARY_FORMATS[output["datatype"]]
            values[output["name"]] = list(struct.unpack(f"<{len(chunk) // struct.calcsize(fmt)}{fmt}", chunk))
    assert offset == len(response.content)
    return document, values


# --- codec ------------------------------------------------------------------------------------------------


def test_bytes_elements_round_trip() -> None:
    elements = [b"", b"abc", bytes(range(256))]
    assert oip.decode_bytes_elements(oip.encode_bytes_elements(elements)) == elements
    with pytest.raises(oip.ProtocolError):
        oip.decode_bytes_elements(struct.pack("<I", 10) + b"short")


def test_binary_request_parses_into_items_outputs_and_params() -> None:
    body, headers = binary_request(
        [CAT, b""], outputs=[{"name": "scores", "parameters": {"classification": 2, "binary_data": True}}],
        parameters={"k": 3, "binary_data_output": True, "sequence_id": 0},
    )
    parsed = oip.parse_infer_request(body, headers[oip.HEADER_LENGTH])
    assert [i.photo for i in parsed.items] == [CAT, b""] and parsed.items[1].problem == "empty photo"
    assert parsed.outputs == (oip.OutputRequest("scores", True, 2),) and parsed.binary_output
    assert parsed.params == {"k": "3"}


def test_json_request_base64_and_bad_elements_fail_only_their_item() -> None:
    document = json_request([CAT])
    document["inputs"][0]["shape"] = [3, 1]
    document["inputs"][0]["data"] += ["***", 5]
    parsed = oip.parse_infer_request(json.dumps(document).encode(), None)
    assert parsed.items[0] == oip.Item(CAT)
    assert "base64" in (parsed.items[1].problem or "") and "string" in (parsed.items[2].problem or "")


@pytest.mark.parametrize("change, message", [
    (lambda d: d["inputs"][0].update(name="pixels"), "one input 'image'"),
    (lambda d: d["inputs"][0].update(datatype="FP32"), "must be BYTES"),
    (lambda d: d["inputs"][0].update(shape=[2, 1]), "but 1 elements"),
    (lambda d: d["inputs"][0].update(shape=[1, 3]), "shape [N, 1]"),
    (lambda d: d["inputs"][0].update(shape=[oip.MAX_ITEMS + 1, 1]), "at most"),
    (lambda d: d["inputs"][0].pop("data"), "neither data nor binary_data_size"),
    (lambda d: d.pop("inputs"), "inputs: Field required"),
    (lambda d: d.update(parameters={"bad name": 1}), "invalid parameter"),
    (lambda d: d.update(outputs=[{"name": "scores", "parameters": {"binary_data": "yes"}}]), "binary_data"),
])
def test_malformed_requests_are_refused_whole(change: Any, message: str) -> None:
    document = json_request([CAT])
    change(document)
    with pytest.raises(BadRequest, match=re.escape(message)):
        oip.parse_infer_request(json.dumps(document).encode(), None)


def test_binary_size_must_match_the_bytes_after_the_header() -> None:
    body, headers = binary_request([CAT])
    with pytest.raises(oip.ProtocolError, match="binary_data_size"):
        oip.parse_infer_request(body + b"x", headers[oip.HEADER_LENGTH])
    with pytest.raises(oip.ProtocolError, match=oip.HEADER_LENGTH):
        oip.parse_infer_request(body, str(len(body) + 1))


def test_decompress_gzip_and_limits() -> None:
    assert oip.decompress(gzip.compress(b"x" * 100), "gzip", 100) == b"x" * 100
    with pytest.raises(oip.PayloadTooLarge):
        oip.decompress(gzip.compress(b"x" * 101), "gzip", 100)
    with pytest.raises(oip.UnsupportedMediaType):
        oip.decompress(b"", "br", 100)


def test_outputs_of_each_kind_and_classification() -> None:
    request = oip.InferRequest(None, (oip.Item(CAT),), None, False)
    price = {"price": 86.01, "currency": "EUR", "interval": {"low": 47.6, "high": 155.3, "coverage": 0.8}}
    tensors = {t.name: t for t in oip.build_outputs("price", [oip.Outcome(200, "r", answer=price)], request)}
    assert set(tensors) == {"price", "interval", "currency"}
    assert tensors["interval"].shape == [1, 2] and tensors["interval"].data == [47.6, 155.3]
    similar = {"items": [{"id": "a", "distance": 0.0}, {"id": "b", "distance": 0.5}], "k": 2}
    tensors = {t.name: t for t in oip.build_outputs("similar", [oip.Outcome(200, "r", answer=similar)], request)}
    assert set(tensors) == {"ids", "distances"} and tensors["ids"].shape == [1, 2]
    wanted = oip.InferRequest(None, (oip.Item(CAT),), (oip.OutputRequest("scores", False, 1),), False)
    answer = json.loads(answer_for(CAT).content)
    (scores,) = oip.build_outputs("classifier", [oip.Outcome(200, "r", answer=answer)], wanted)
    assert (scores.datatype, scores.shape, scores.data) == ("BYTES", [1, 1], ["0.750000:281:tabby"])


def test_unknown_models_answer_their_json_as_one_string() -> None:
    request = oip.InferRequest(None, (oip.Item(CAT),), None, False)
    (tensor,) = oip.build_outputs("newmodel", [oip.Outcome(200, "r", answer={"x": 1})], request)
    assert (tensor.name, tensor.datatype, tensor.data) == ("answer", "BYTES", ['{"x":1}'])


def test_check_outputs_refuses_what_the_model_lacks() -> None:
    def request(name: str, count: int = 0) -> oip.InferRequest:
        return oip.InferRequest(None, (), (oip.OutputRequest(name, False, count),), False)

    with pytest.raises(oip.ProtocolError, match="no output 'price'"):
        oip.check_outputs("classifier", request("price"))
    with pytest.raises(oip.ProtocolError, match="at most 5"):
        oip.check_outputs("classifier", request("scores", 6))
    with pytest.raises(oip.ProtocolError, match="classifiers only"):
        oip.check_outputs("similar", request("distances", 1))
    assert oip.check_outputs("similar", request("embedding")) == {"embedding": "true"}


def test_each_catalogue_model_is_described_by_its_handlers_declared_kind() -> None:
    # The bridge may not import the specs or the handlers (they import torch); this test may.
    from archive_scripts.model_catalogue import handler_class
    from archive_scripts.specs import SPECS

    assert [m.name for m in models.catalogue()] == [spec.name for spec in SPECS]
    for spec in SPECS:
        handler = handler_class(spec)
        outputs = [t.name for t in oip.signature(spec.name)[1]]
        assert outputs == [o.name for o in handler.oip_outputs] + ["status", "error", "request_id"], spec.name
        assert models.describe(spec.name).kind == handler.kind


def test_a_model_the_catalogue_does_not_know_is_the_json_kind() -> None:
    _, outputs = oip.signature("their-model")
    assert [(t.name, t.datatype, t.shape) for t in outputs[:1]] == [("answer", "BYTES", (-1, 1))]
    request = oip.InferRequest(None, (oip.Item(b"x"),) * 3, None, False)
    answers = [{"tabby": 0.4, "tiger cat": 0.3}, [{"box": [1, 2, 3, 4]}], "plain text"]
    outcomes = [oip.Outcome(200, f"r{i}", answer=a) for i, a in enumerate(answers)]
    (tensor,) = oip.build_outputs("their-model", outcomes, request)
    assert tensor.shape == [3, 1] and [json.loads(v) for v in tensor.data] == answers


def test_output_paths_read_nested_lists_and_several_keys() -> None:
    answer = {"detections": [{"box": [0, 1, 2, 3], "label": "cat"}, {"box": [4, 5, 6, 7], "label": "cup"}],
              "interval": {"low": 1.0, "high": 2.0}}
    assert oip.extract(answer, "detections[].box") == [0, 1, 2, 3, 4, 5, 6, 7]
    assert oip.extract(answer, "detections[].label") == ["cat", "cup"]
    assert oip.extract(answer, "interval.low,interval.high") == [1.0, 2.0]
    assert oip.extract(answer, "missing") is None and oip.extract(answer, "detections[].missing") is None
    assert oip.extract({"detections": []}, "detections[].box") == []


def test_the_bridge_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, bridge.app, bridge.api.v2; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


# --- routes -----------------------------------------------------------------------------------------------


def test_health_and_server_metadata(env: tuple[TestClient, FakeOipTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    assert client.get("/v2/health/live", headers={"X-API-Key": ""}).json() == {"live": True}
    assert client.get("/v2/health/ready", headers={"X-API-Key": ""}).json() == {"ready": True}
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]


def test_errors_are_the_protocols_body(env: tuple[TestClient, FakeOipTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    for response, status in (
        (client.get("/v2", headers={"X-API-Key": "wrong"}), 401),
        (client.get("/v2/models/nope"), 404),
        (client.get("/v2/models/classifier/versions/9.9"), 404),
        (client.get("/v2/models/bad name!"), 400),
        (client.get("/v2/no/such/thing"), 404),
        (client.post("/v2/models/classifier/infer", content=b"{"), 400),
        (client.post("/v2/models/classifier/infer", content=b""), 400),
        (client.post("/v2/models/classifier/infer", content=b"x" * 10_001), 413),
        # a superscript two is a digit to str.isdigit() but not to int(): a 400, never a 500
        (client.post("/v2/models/classifier/infer", content=b"{}",
                     headers={oip.HEADER_LENGTH: "\u00b2".encode("latin-1")}), 400),
    ):
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error"} and response.json()["error"], response.text
    assert client.post("/predictions/m", content=b"").json()["type"] == "EmptyBody"  # other routes: unchanged


def test_model_metadata_and_readiness(env: tuple[TestClient, FakeOipTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    metadata = client.get("/v2/models/classifier").json()
    assert metadata["versions"] == ["1.0"] and metadata["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1, 1]}
    ]
    assert {"name": "labels", "datatype": "BYTES", "shape": [-1, 5]} in metadata["outputs"]
    assert client.get("/v2/models/classifier/versions/1.0/ready").status_code == 200
    fake.workers = "UNLOADING"
    client.app.state.oip_models = None
    assert client.get("/v2/models/classifier/ready").status_code == 503


def test_binary_infer_runs_each_photo_as_its_own_recorded_item(
    env: tuple[TestClient, FakeOipTorchServe, FlakyStore],
) -> None:
    client, fake, store = env
    body, headers = binary_request([CAT, CAT], id="req-1", parameters={"binary_data_output": True})
    response = client.post("/v2/models/classifier/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    document, values = read_response(response)
    assert (document["id"], document["model_name"], document["model_version"]) == ("req-1", "classifier", "1.0")
    assert values["labels"] == ["tabby", "tiger cat"] * 2 and values["class_ids"] == [281, 282] * 2
    assert [o["shape"] for o in document["outputs"]] == [[2, 2]] * 3 and "status" not in values
    assert [r.content for r in fake.requests if r.url.path == "/predictions/classifier"] == [CAT, CAT]
    assert client.app.state.recorder.wait_idle(5)
    assert response.headers["x-request-id"] in store.rows and len(store.rows) == 2


def test_a_bad_photo_fails_only_its_own_item(env: tuple[TestClient, FakeOipTorchServe, FlakyStore]) -> None:
    client, _, store = env
    response = client.post("/v2/models/classifier/infer", json=json_request([CAT, BAD, b""]))
    assert response.status_code == 200, response.text
    _, values = read_response(response)
    assert values["status"] == [200, 400, 400]
    assert values["error"] == ["", "cannot identify image", "empty photo"]
    assert values["labels"] == ["tabby", "tiger cat", "", "", "", ""] and values["scores"][2:] == [0, 0, 0, 0]
    assert client.app.state.recorder.wait_idle(5)
    assert sorted(r.status for r in store.rows.values()) == [200, 400]  # the empty one never reached a model


def test_all_photos_failing_fail_the_request(env: tuple[TestClient, FakeOipTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    response = client.post("/v2/models/classifier/infer", json=json_request([BAD]))
    assert response.status_code == 400 and response.json() == {"error": "cannot identify image"}
    response = client.post("/v2/models/nope/infer", json=json_request([CAT, CAT]))
    assert response.status_code == 404 and response.json()["error"].startswith("item 0 of 2: Model not found")


def test_requested_outputs_json_and_binary_with_classification(
    env: tuple[TestClient, FakeOipTorchServe, FlakyStore],
) -> None:
    client, _, _ = env
    outputs = [{"name": "labels", "parameters": {"binary_data": False}},
               {"name": "scores", "parameters": {"classification": 1, "binary_data": True}}]
    body, headers = binary_request([CAT], outputs=outputs)
    response = client.post("/v2/models/classifier/infer", content=body, headers=headers)
    document, values = read_response(response)
    assert [o["name"] for o in document["outputs"]] == ["labels", "scores"]
    assert document["outputs"][0]["data"] == ["tabby", "tiger cat"] and values["scores"] == ["0.750000:281:tabby"]
    response = client.post("/v2/models/classifier/infer", json=json_request([CAT], outputs=[{"name": "price"}]))
    assert response.status_code == 400 and "no output 'price'" in response.json()["error"]
