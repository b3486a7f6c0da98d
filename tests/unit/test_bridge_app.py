"""The bridge through its ASGI app, TorchServe faked with an httpx transport, sinks faked."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient

from bridge.app import create_app
from bridge.recorder import Recorder
from bridge.records import InferenceRecord
from bridge.settings import Settings
from bridge.spool import Spool
from stack.torchserve import protocol
from tests.unit.fakes import STOCK_ANSWER, FakeInflux, FlakyStore

PHOTO = b"\xff\xd8\xff\xe0fake-jpeg-bytes"
PREDICTION = {"predictions": [{"label": "tabby", "index": 281, "score": 0.8}], "model": {"name": "m", "version": "2.0"}}


def write_keys(path: Path, inference: str = "inf-1", expires_in: timedelta = timedelta(minutes=60)) -> None:
    expires = (datetime.now(UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    path.write_text(json.dumps({
        "management": {"key": "mgmt-1", "expiration time": expires},
        "inference": {"key": inference, "expiration time": expires},
        "API": {"key": "api-1"},
    }))


class FakeTorchServe:
    """Answers like TorchServe; ``handler`` can be swapped per test; with ``default_version`` set, the management
    API's ``GET /models/{model}`` too (TorchServe's description of the default version)."""

    default_version: str | None = None

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self.requests: list[httpx.Request] = []
        self.handler: Callable[[httpx.Request], httpx.Response] = self.predict_ok

    def valid_key(self, request: httpx.Request) -> bool:
        keys = json.loads(self.key_file.read_text())
        return request.headers.get("authorization") == f"Bearer {keys['inference']['key']}"

    def predict_ok(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=PREDICTION, headers={"X-Batch-Size": "3"})

    def describe(self, request: httpx.Request) -> httpx.Response:
        """``GET /models/{model}`` with the management key: the default version's description."""
        keys = json.loads(self.key_file.read_text())
        if request.headers.get("authorization") != f"Bearer {keys['management']['key']}":
            return httpx.Response(400, json={"code": 400, "type": "InvalidKeyException", "message": "bad token"})
        model = request.url.path.removeprefix("/models/")
        return httpx.Response(200, json=[{"modelName": model, "modelVersion": self.default_version, "workers": []}])

    def management_calls(self) -> int:
        """How many requests reached the management API."""
        return sum(r.url.port == 8081 for r in self.requests)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/token":
            write_keys(self.key_file, inference="inf-renewed")
            return httpx.Response(200, json={"ok": True})
        if request.url.port == 8081 and self.default_version is not None:
            return self.describe(request)
        if not self.valid_key(request):
            return httpx.Response(400, json={"code": 400, "type": "InvalidKeyException", "message": "bad token"})
        if request.url.path == "/ping":
            return httpx.Response(200, json={"status": "Healthy"})
        return self.handler(request)


F = TypeVar("F", bound=FakeTorchServe)


@contextmanager
def bridge_under_test(
    tmp_path: Path, fake_class: type[F], headers: dict[str, str] | None = None, **settings: Any
) -> Iterator[tuple[TestClient, F, FlakyStore]]:
    """The bridge's app on a fake TorchServe (``fake_class``), a fake store and InfluxDB; no jobs, no cache."""
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    fake = fake_class(key_file)
    store = FlakyStore()
    recorder = Recorder([store, FakeInflux()], Spool(tmp_path / "spool"))
    config = Settings(
        torchserve_key_file=key_file, spool_dir=tmp_path / "spool", cache=False, telemetry_interval_s=0, **settings
    )
    app = create_app(config, recorder=recorder, torchserve_transport=httpx.MockTransport(fake), run_jobs=False)
    with TestClient(app, headers=headers) as client:
        yield client, fake, store
    assert recorder.wait_idle(5)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, FakeTorchServe, FlakyStore]]:
    with bridge_under_test(tmp_path, FakeTorchServe, max_body_bytes=1000) as env:
        yield env


def recorded(client: TestClient, store: FlakyStore, request_id: str) -> InferenceRecord:
    assert client.app.state.recorder.wait_idle(5)
    return store.rows[request_id]


def test_put_photo_is_forwarded_with_token_and_recorded(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, store = env
    response = client.put("/predictions/m", content=PHOTO)

    assert response.status_code == 200
    assert response.json() == PREDICTION
    assert response.headers["x-batch-size"] == "3" and response.headers["x-model-version"] == "2.0"
    sent = fake.requests[-1]
    assert sent.url.path == "/predictions/m" and sent.content == PHOTO
    assert sent.headers["authorization"] == "Bearer inf-1"
    assert sent.headers["content-type"] == "application/octet-stream"
    row = recorded(client, store, response.headers["x-request-id"])
    assert (row.model, row.model_version, row.status, row.top_label, row.batch_size) == ("m", "2.0", 200, "tabby", 3)


def test_version_in_path_is_forwarded(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    assert client.post("/predictions/m/2.0", content=PHOTO).status_code == 200
    assert fake.requests[-1].url.path == "/predictions/m/2.0"


def test_per_item_error_passes_through_and_is_recorded(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, store = env
    fake.handler = lambda r: httpx.Response(400, json={"code": 400, "type": "InvalidImage", "message": "truncated"})
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 400 and response.json()["message"] == "truncated"
    row = recorded(client, store, response.headers["x-request-id"])
    assert row.status == 400 and row.error == "truncated"


def test_empty_body_is_a_400_with_the_error_envelope(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    response = client.post("/predictions/m", content=b"")
    body = response.json()
    assert response.status_code == 400
    assert body["type"] == "EmptyBody" and "curl -T" in body["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert fake.requests == []


def test_body_over_the_limit_is_413_by_length_and_when_chunked(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    assert client.post("/predictions/m", content=b"x" * 1000).status_code == 200  # exactly the limit
    assert client.post("/predictions/m", content=b"x" * 1001).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(11):
            yield b"y" * 100

    chunked = client.post("/predictions/m", content=chunks())
    assert chunked.status_code == 413 and chunked.json()["type"] == "PayloadTooLarge"


def test_multipart_needs_exactly_one_file(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    one = client.post("/predictions/m", files={"file": ("a.jpg", PHOTO, "image/jpeg")})
    assert one.status_code == 200
    assert fake.requests[-1].content == PHOTO and fake.requests[-1].headers["content-type"] == "image/jpeg"

    two = client.post("/predictions/m", files=[("a", ("a.jpg", PHOTO, "image/jpeg")), ("b", ("b.jpg", PHOTO, "image/jpeg"))])
    assert two.status_code == 400 and "exactly one file" in two.json()["message"]
    none = client.post("/predictions/m", files={"note": (None, "just text")})
    assert none.status_code == 400 and "carried 0" in none.json()["message"]

def test_curl_data_binary_default_content_type_is_taken_as_raw_bytes(
    env: tuple[TestClient, FakeTorchServe, FlakyStore]
) -> None:
    client, fake, _ = env
    headers = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl --data-binary sends
    assert client.post("/predictions/m", content=PHOTO, headers=headers).status_code == 200
    assert fake.requests[-1].content == PHOTO
    assert fake.requests[-1].headers["content-type"] == "application/octet-stream"


def test_invalid_model_name_is_a_400(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    response = client.post("/predictions/..%2Fetc", content=PHOTO)
    assert response.status_code in (400, 404)
    assert response.json()["code"] == response.status_code


def test_torchserve_down_is_503_with_retry_after_and_recorded(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, store = env

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    fake.handler = refuse
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["type"] == "ServiceUnavailable"
    assert recorded(client, store, response.headers["x-request-id"]).status == 503


def test_torchserve_timeout_is_504(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env

    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    fake.handler = hang
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 504 and response.json()["type"] == "GatewayTimeout"


def test_renewed_key_elsewhere_is_picked_up_with_one_retry(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    assert client.put("/predictions/m", content=PHOTO).status_code == 200
    write_keys(fake.key_file, inference="inf-2")  # another process renewed the key
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 200
    assert fake.requests[-1].headers["authorization"] == "Bearer inf-2"


def test_key_about_to_expire_is_renewed_first(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    write_keys(fake.key_file, expires_in=timedelta(seconds=3))
    assert client.put("/predictions/m", content=PHOTO).status_code == 200
    token_calls = [r for r in fake.requests if r.url.path == "/token"]
    assert token_calls and token_calls[0].headers["authorization"] == "Bearer api-1"
    assert fake.requests[-1].headers["authorization"] == "Bearer inf-renewed"


def test_ping(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    body = client.get("/ping").json()
    assert body["status"] == "Healthy" and body["recording"]["postgres"] == "ok"
    fake.key_file.unlink()
    down = client.get("/ping")
    assert down.status_code == 503 and down.json()["status"] == "Unhealthy"


def test_openapi_documents_the_prediction_routes(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    assert {"put", "post"} <= set(spec["paths"]["/predictions/{model}"])
    assert "/predictions/{model}/{version}" in spec["paths"]


def test_model_parameters_travel_as_form_fields_and_skip_the_cache(
    env: tuple[TestClient, FakeTorchServe, FlakyStore]
) -> None:
    client, fake, _ = env
    assert client.put("/predictions/similar?k=3&embedding=true", content=PHOTO).status_code == 200
    sent = fake.requests[-1]
    assert sent.headers["content-type"].startswith("multipart/form-data")
    body = sent.content
    assert b'name="k"\r\n\r\n3' in body and b'name="embedding"\r\n\r\ntrue' in body
    assert b'name="data"; filename="photo"' in body and PHOTO in body

    form = client.post("/predictions/similar", files={"file": ("a.jpg", PHOTO, "image/jpeg"), "k": (None, "2")})
    assert form.status_code == 200 and b'name="k"\r\n\r\n2' in fake.requests[-1].content

    bad = client.put("/predictions/similar?bad-name=1", content=PHOTO)
    assert bad.status_code == 400 and "invalid parameter" in bad.json()["message"]


@pytest.mark.parametrize("status", [500, 507])
def test_a_dead_worker_is_a_retryable_503(env: tuple[TestClient, FakeTorchServe, FlakyStore], status: int) -> None:
    client, fake, store = env
    fake.handler = lambda r: httpx.Response(status, json={"code": status, "type": "InternalServerException", "message": "Worker died."})
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "Worker died." in response.json()["message"]
    assert recorded(client, store, response.headers["x-request-id"]).status == 503


def test_long_lived_keys_are_not_renewed_on_every_request(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    write_keys(fake.key_file, expires_in=timedelta(seconds=60))  # renewal due only in the last 15 s
    for _ in range(3):
        assert client.put("/predictions/m", content=PHOTO).status_code == 200
    assert not [r for r in fake.requests if r.url.path == "/token"]


def test_a_key_file_caught_mid_rewrite_keeps_the_last_good_keys(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, fake, _ = env
    assert client.put("/predictions/m", content=PHOTO).status_code == 200
    fake.key_file.write_text('{"management": {"key"')  # TorchServe is rewriting it
    fake.valid_key = lambda request: request.headers.get("authorization") == "Bearer inf-1"  # type: ignore[method-assign]
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 200
    assert fake.requests[-1].headers["authorization"] == "Bearer inf-1"


def test_non_ascii_content_type_is_a_400(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    response = client.put("/predictions/m", content=PHOTO, headers={"Content-Type": b"image/jp\xe9g"})
    assert response.status_code == 400 and "ASCII" in response.json()["message"]


# --- the version that served an answer that does not name it (TorchServe's stock handlers) --------------------


def stock_answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=STOCK_ANSWER)


def test_an_answer_without_its_version_is_recorded_under_the_models_default_version(
    env: tuple[TestClient, FakeTorchServe, FlakyStore]
) -> None:
    client, fake, store = env
    fake.default_version, fake.handler = "3.0", stock_answer
    response = client.put("/predictions/m", content=PHOTO)

    assert response.status_code == 200 and list(response.json().items()) == list(STOCK_ANSWER.items())
    assert response.headers["x-model-version"] == "3.0"
    row = recorded(client, store, response.headers["x-request-id"])
    assert (row.model_version, row.top_label, row.top_score) == ("3.0", "warm", 0.875)
    assert [r.url.path for r in fake.requests if r.url.port == 8081] == ["/models/m"]


def test_the_version_the_answer_names_wins_then_the_one_requested_with_no_lookup(
    env: tuple[TestClient, FakeTorchServe, FlakyStore]
) -> None:
    client, fake, store = env
    fake.default_version = "3.0"
    named = client.put("/predictions/m", content=PHOTO)  # our handler's answer names 2.0
    assert named.headers["x-model-version"] == "2.0"
    assert recorded(client, store, named.headers["x-request-id"]).model_version == "2.0"
    fake.handler = stock_answer
    requested = client.put("/predictions/m/1.5", content=PHOTO)
    assert requested.headers["x-model-version"] == "1.5"
    assert recorded(client, store, requested.headers["x-request-id"]).model_version == "1.5"
    assert fake.management_calls() == 0


def test_with_no_default_version_known_the_version_stays_unknown_and_the_answer_leaves(
    env: tuple[TestClient, FakeTorchServe, FlakyStore]
) -> None:
    client, fake, store = env
    fake.handler = stock_answer  # and the management API refuses the bridge (no default_version)
    response = client.put("/predictions/m", content=PHOTO)
    assert response.status_code == 200 and "x-model-version" not in response.headers
    row = recorded(client, store, response.headers["x-request-id"])
    assert (row.model_version, row.top_label) == (None, "warm")


def test_a_set_default_is_seen_once_the_looked_up_default_expires(
    env: tuple[TestClient, FakeTorchServe, FlakyStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The residual race, pinned: for DEFAULT_VERSION_TTL_S after a set-default, the previous default is named."""
    client, fake, _ = env
    fake.default_version, fake.handler = "1.0", stock_answer
    assert client.put("/predictions/m", content=PHOTO).headers["x-model-version"] == "1.0"
    fake.default_version = "2.0"  # servingctl set-default, elsewhere
    assert client.put("/predictions/m", content=PHOTO).headers["x-model-version"] == "1.0"
    assert fake.management_calls() == 1, "one lookup per model per TTL"
    monkeypatch.setattr(protocol, "DEFAULT_VERSION_TTL_S", 0.0)
    assert client.put("/predictions/m", content=PHOTO).headers["x-model-version"] == "2.0"


def infer_request(photo: bytes) -> dict[str, Any]:
    """One photo for ``/v2/models/{model}/infer`` (base64 in JSON)."""
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1],
                        "parameters": {"content_type": "base64"}, "data": [base64.b64encode(photo).decode()]}]}


def test_v2_infer_names_the_default_version_of_an_answer_that_does_not(
    env: tuple[TestClient, FakeTorchServe, FlakyStore]
) -> None:
    client, fake, store = env
    fake.default_version, fake.handler = "3.0", stock_answer
    response = client.post("/v2/models/m/infer", json=infer_request(PHOTO))
    assert response.status_code == 200, response.text
    assert response.json()["model_version"] == "3.0" and response.headers["x-model-version"] == "3.0"
    assert recorded(client, store, response.headers["x-request-id"]).model_version == "3.0"


class FakeVersions(FakeTorchServe):
    """Model ``m`` on the management API: 1.0 with a ready worker, 2.0 with none yet; 1.0 the default at first."""

    default_version = "1.0"

    def describe(self, request: httpx.Request) -> httpx.Response:
        versions = [{"modelName": "m", "modelVersion": v, "workers": [{"status": "READY"}] if v == "1.0" else []}
                    for v in ("1.0", "2.0")]
        if request.url.path == "/models":
            return httpx.Response(200, json={"models": [{"modelName": "m"}]})
        if request.url.path == "/models/m/all":
            return httpx.Response(200, json=versions)
        return httpx.Response(200, json=[v for v in versions if v["modelVersion"] == self.default_version])


def test_v2_readiness_of_the_default_is_of_the_version_predictions_are_recorded_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with bridge_under_test(tmp_path, FakeVersions) as (client, fake, _):
        fake.handler = stock_answer
        assert client.put("/predictions/m", content=PHOTO).headers["x-model-version"] == "1.0"
        fake.default_version = "2.0"  # while the bridge still names 1.0 (the residual window)
        assert client.get("/v2/models/m/ready").status_code == 200, "1.0's readiness, as the records say 1.0"
        monkeypatch.setattr(protocol, "DEFAULT_VERSION_TTL_S", 0.0)
        assert client.get("/v2/models/m/ready").status_code == 503, "2.0 has no worker"
        assert client.put("/predictions/m", content=PHOTO).headers["x-model-version"] == "2.0"


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("OPTIONS", "/predictions/m", "POST, PUT"),  # two routes: Starlette named only the first one's method
    ("DELETE", "/predictions/m/1.0", "POST, PUT"),
    ("DELETE", "/v1/results", "GET, HEAD"),
    ("PUT", "/v2/health/live", "GET, HEAD"),  # the OIP catch-all answered 404 for a path that exists
    ("DELETE", "/v2/models/m/infer", "POST"),
    ("POST", "/openapi.json", "GET, HEAD"),  # not in the document: Starlette's own Allow (sorted: it is a set)
])
def test_a_method_a_path_does_not_take_is_a_405_naming_every_method_it_takes(
    env: tuple[TestClient, FakeTorchServe, FlakyStore], method: str, path: str, allow: str,
) -> None:
    client, fake, _ = env
    response = client.request(method, path, content=PHOTO)
    assert (response.status_code, response.headers["allow"]) == (405, allow), response.text
    assert allow in response.text and not fake.requests  # said in the body too; TorchServe never asked


def test_a_path_no_route_has_is_still_a_404(env: tuple[TestClient, FakeTorchServe, FlakyStore]) -> None:
    client, _, _ = env
    assert client.put("/v2/no/such/endpoint").status_code == 404
    assert client.get("/v1/nothing").status_code == 404
