"""The Open Inference Protocol through clients we did not write: tritonclient[http] and KServe's REST client.

Each compatibility trap has its test: binary output by default (tritonclient asks for it when no outputs are
named), error bodies (``{"error": ...}``, which both clients parse), health bodies (``{"live": true}`` and
``{"ready": true}``, which KServe's client reads), and several photos in one request with a bad one among them.
KServe's client cannot share our pins: it runs in .venv-clients (``make clients``) as oip_kserve_client.py, which
prints what it saw as JSON for the tests here to check.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import LiveStack

try:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException
except ImportError as exc:  # a failed install fails every tritonclient test below (never skips it)
    TRITON_MISSING: str | None = (f"tritonclient is not importable ({exc}): install it into .venv with "
                                  "`.venv/bin/pip install -r requirements-dev.txt` (tritonclient[http]==2.73.0)")
else:
    TRITON_MISSING = None

REPO_ROOT = Path(__file__).resolve().parents[2]
KSERVE_SCRIPT = Path(__file__).with_name("oip_kserve_client.py")
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
TOP_LABELS = {"chelsea": CAT_LABELS, "coffee": {"espresso", "cup", "coffee mug"}, "flower": {"daisy"}}


@pytest.fixture(scope="module")
def triton(live_stack: LiveStack) -> Any:
    """A tritonclient pointed at the bridge (host:port, as tritonclient wants it); fails when it is not installed."""
    if TRITON_MISSING:
        pytest.fail(TRITON_MISSING, pytrace=False)
    client = httpclient.InferenceServerClient(live_stack.bridge.removeprefix("http://"), connection_timeout=30,
                                              network_timeout=60)
    yield client
    client.close()


def text(value: bytes | str) -> str:
    """A BYTES element as text (tritonclient gives bytes for binary outputs, str for JSON ones)."""
    return value.decode() if isinstance(value, bytes) else value


def photo_input(*photos: bytes, binary: bool = True) -> Any:
    """The ``image`` input: N photos as a BYTES tensor [N, 1] (JSON: base64 strings)."""
    image = httpclient.InferInput("image", [len(photos), 1], "BYTES")
    if binary:
        image.set_data_from_numpy(np.array([[p] for p in photos], dtype=np.object_), binary_data=True)
    else:
        encoded = [[base64.b64encode(p)] for p in photos]
        image.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return image


def test_health_and_metadata(triton: Any) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("classifier") and triton.is_model_ready("classifier", "1.0")
    assert not triton.is_model_ready("no_such_model")
    assert set(triton.get_server_metadata()["extensions"]) >= {"binary_tensor_data", "classification"}
    metadata = triton.get_model_metadata("classifier")
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    outputs = {o["name"]: o for o in metadata["outputs"]}
    assert outputs["labels"]["shape"] == [-1, 5] and outputs["scores"]["datatype"] == "FP32"
    assert {o["name"] for o in triton.get_model_metadata("price")["outputs"]} >= {"price", "interval", "currency"}


def test_jpeg_as_binary_bytes_input_with_binary_outputs_by_default(triton: Any, photos: dict[str, bytes]) -> None:
    # No outputs named: tritonclient sets binary_data_output, so every output comes back as binary data.
    result = triton.infer("classifier", [photo_input(photos["chelsea"])], headers={"Cache-Control": "no-cache"})
    response = result.get_response()
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    labels = result.as_numpy("labels")
    assert labels.shape == (1, 5) and labels[0, 0].decode() in CAT_LABELS
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and 0 < scores[0, 0] <= 1 and list(scores[0]) == sorted(scores[0], reverse=True)


def test_json_input_and_json_outputs_with_classification(triton: Any, photos: dict[str, bytes]) -> None:
    outputs = [httpclient.InferRequestedOutput("labels", binary_data=False),
               httpclient.InferRequestedOutput("scores", binary_data=False, class_count=3)]
    result = triton.infer("classifier", [photo_input(photos["coffee"], binary=False)], outputs=outputs,
                          parameters={"content_type": "base64"})
    response = result.get_response()
    assert all("data" in o for o in response["outputs"])
    assert text(result.as_numpy("labels")[0, 0]) in TOP_LABELS["coffee"]
    top = [text(c).split(":", 2) for c in result.as_numpy("scores")[0]]
    assert len(top) == 3 and top[0][2] in TOP_LABELS["coffee"] and float(top[0][0]) >= float(top[1][0])
    assert top[0][1].isdigit()


def test_several_photos_are_items_and_a_bad_one_fails_alone(
    triton: Any, photos: dict[str, bytes], live_stack: LiveStack,
) -> None:
    names = ["chelsea", "coffee", "flower"]
    batch = [photos[n] for n in names] + [b"definitely not a jpeg"]
    outputs = [httpclient.InferRequestedOutput(n) for n in ("labels", "status", "error", "request_id")]
    result = triton.infer("classifier", [photo_input(*batch)], outputs=outputs, headers={"Cache-Control": "no-cache"})
    labels = result.as_numpy("labels")
    assert labels.shape == (4, 5)
    for row, name in zip(labels, names):
        assert row[0].decode() in TOP_LABELS[name], (name, row[0])
    assert list(result.as_numpy("status")[:, 0]) == [200, 200, 200, 400]
    errors = [e.decode() for e in result.as_numpy("error")[:, 0]]
    assert errors[:3] == ["", "", ""] and errors[3]
    assert all(v == b"" for v in labels[3])
    request_ids = [r.decode() for r in result.as_numpy("request_id")[:, 0]]
    for request_id, status in zip(request_ids, (200, 200, 200, 400)):
        row = live_stack.row(request_id)
        assert row is not None and row["status"] == status and row["model"] == "classifier"
    assert live_stack.point(request_ids[0]) is not None


def test_price_and_similar_outputs(triton: Any, photos: dict[str, bytes]) -> None:
    price = triton.infer("price", [photo_input(photos["coffee"])])
    low, high = price.as_numpy("interval")[0]
    assert low <= price.as_numpy("price")[0, 0] <= high and price.as_numpy("currency")[0, 0] == b"EUR"
    similar = triton.infer("similar", [photo_input(photos["coffee"])], parameters={"k": 3},
                           outputs=[httpclient.InferRequestedOutput(n) for n in ("ids", "distances", "embedding")])
    assert similar.as_numpy("ids").shape == (1, 3) and similar.as_numpy("ids")[0, 0] == b"coffee-01"
    embedding = similar.as_numpy("embedding")
    assert embedding.shape == (1, 1280) and abs(float(np.linalg.norm(embedding[0])) - 1.0) < 1e-3


def test_errors_reach_tritonclient_as_its_exception(triton: Any, photos: dict[str, bytes]) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("no_such_model", [photo_input(photos["chelsea"])])
    assert unknown.value.status() == "404" and "no_such_model" in unknown.value.message()
    with pytest.raises(InferenceServerException) as bad:
        triton.infer("classifier", [photo_input(b"not a photo")])
    assert bad.value.status() == "400" and bad.value.message()
    with pytest.raises(InferenceServerException) as missing:
        triton.get_model_metadata("no_such_model")
    assert missing.value.status() == "404"


def clients_python() -> Path:
    """The client environment's python (make clients): OIP_CLIENTS_PYTHON, set by make test, or .venv-clients."""
    configured = os.environ.get("OIP_CLIENTS_PYTHON")
    if configured:
        assert Path(configured).is_file(), f"OIP_CLIENTS_PYTHON={configured} does not exist (make clients)"
        return Path(configured)
    default = REPO_ROOT / ".venv-clients" / "bin" / "python"
    if not default.is_file():
        pytest.skip("no client environment: `make clients` creates .venv-clients (make test does it)")
    return default


@pytest.fixture(scope="module")
def kserve_seen(live_stack: LiveStack, photos: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """What KServe's REST client saw, run in its own environment (kserve cannot share our pins)."""
    photo = tmp_path_factory.mktemp("kserve") / "flower.jpg"
    photo.write_bytes(photos["flower"])
    run = subprocess.run([str(clients_python()), str(KSERVE_SCRIPT), live_stack.bridge, str(photo)],
                         capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, f"the kserve client failed:\n{run.stderr[-3000:]}"
    return json.loads(run.stdout)


def test_kserve_health_bodies(kserve_seen: dict[str, Any]) -> None:
    assert kserve_seen["kserve"] == "0.21.0"
    # is_server_live/is_server_ready return the body's "live"/"ready" value: True only when the body says so.
    assert kserve_seen["server_live"] is True and kserve_seen["server_ready"] is True
    assert kserve_seen["model_ready"] is True and kserve_seen["unknown_model_ready"] is False


@pytest.mark.parametrize("request_kind", ["binary", "json"])
def test_kserve_infers_a_jpeg(kserve_seen: dict[str, Any], live_stack: LiveStack, request_kind: str) -> None:
    # binary: raw JPEG after the JSON, default (JSON) outputs; json: base64 in the JSON, binary outputs asked for.
    response = kserve_seen[request_kind]
    assert response["id"] == f"kserve-{request_kind}" and response["model_name"] == "classifier"
    outputs = response["outputs"]
    expected = {"labels", "scores", "class_ids"} if request_kind == "binary" else {"labels", "scores"}
    assert set(outputs) == expected
    assert outputs["labels"]["shape"] == [1, 5] and outputs["labels"]["data"][0] in TOP_LABELS["flower"]
    scores = outputs["scores"]["data"]
    assert outputs["scores"]["datatype"] == "FP32" and 0 < scores[0] <= 1 and scores == sorted(scores, reverse=True)
    row = live_stack.row(response["x_request_id"])
    assert row is not None and row["status"] == 200 and row["model"] == "classifier"


@pytest.mark.parametrize(("case", "status"), [("unknown_model", 404), ("bad_photo", 400)])
def test_kserve_reads_the_error_body(kserve_seen: dict[str, Any], case: str, status: int) -> None:
    error = kserve_seen[case]
    assert error["status"] == status and error["content_type"] == "application/json"
    # kserve puts the body's "error" into its exception only when the content type is exactly application/json.
    assert error["body"]["error"] and error["message"].startswith(f"{error['body']['error']}, '{status} ")
    if case == "unknown_model":
        assert "no_such_model" in error["body"]["error"]
