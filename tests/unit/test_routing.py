"""Routing (stack/routing.py, bridge/routing.py): every call goes to the model's box, with that box's key."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from bridge.app import create_app
from bridge.recorder import Recorder
from bridge.settings import Settings
from bridge.spool import Spool
from stack.routing import Box, Routes, Unrouted, parse_routes
from tests.unit.fakes import FakeInflux, FlakyStore
from tests.unit.test_bridge_app import PHOTO, FakeTorchServe, write_keys

PORTS = {"classifier": 18080, "price": 18180, "resnet18": 18280}


def box(port: int, key_file: Path, **extra: object) -> dict[str, object]:
    return {"url": f"http://127.0.0.1:{port}", "management_url": f"http://127.0.0.1:{port + 1}",
            "metrics_url": f"http://127.0.0.1:{port + 2}/metrics", "key_file": str(key_file), **extra}


class Boxes:
    """One fake TorchServe per port pair, each with its own key file; ``down`` ports refuse connections."""

    def __init__(self, tmp_path: Path) -> None:
        self.fakes: dict[int, FakeTorchServe] = {}
        self.down: set[int] = set()
        for model, port in PORTS.items():
            key_file = tmp_path / f"{model}-key.json"
            write_keys(key_file, inference=f"inf-{model}")
            self.fakes[port] = self.fakes[port + 1] = FakeTorchServe(key_file)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port
        assert port is not None
        if port in self.down or port - 1 in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.startswith("/models"):
            return management_answer(request, next(m for m, p in PORTS.items() if p in (port, port - 1)))
        return self.fakes[port](request)


def management_answer(request: httpx.Request, model: str) -> httpx.Response:
    """A box's management API serving one model, version 1.0 with a READY worker: its listing or description."""
    return httpx.Response(200, json={"models": [{"modelName": model}]} if request.url.path == "/models" else
                          [{"modelName": model, "modelVersion": "1.0", "isDefault": True,
                            "workers": [{"status": "READY"}]}])


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[tuple[TestClient, Boxes]]:
    boxes = Boxes(tmp_path)
    routes = {model: box(port, tmp_path / f"{model}-key.json") for model, port in PORTS.items()}
    routes["resnet18"]["required"] = False
    with routed_bridge(tmp_path, routes, boxes) as client:
        yield client, boxes


@contextmanager
def routed_bridge(tmp_path: Path, routes: dict[str, Any],
                  boxes: Callable[[httpx.Request], httpx.Response]) -> Iterator[TestClient]:
    """The bridge's app with ``routes`` (as BRIDGE_ROUTES), its boxes faked by ``boxes``; no cache, jobs or telemetry."""
    config = Settings(routes=json.dumps(routes), spool_dir=tmp_path / "spool", cache=False, telemetry_interval_s=0,
                      torchserve_key_file=tmp_path / "absent.json")
    recorder = Recorder([FlakyStore(), FakeInflux()], Spool(tmp_path / "spool"))
    app = create_app(config, recorder=recorder, torchserve_transport=httpx.MockTransport(boxes), run_jobs=False)
    with TestClient(app) as client:
        yield client


def test_each_model_goes_to_its_box_with_that_boxs_key(routed: tuple[TestClient, Boxes]) -> None:
    client, boxes = routed
    for model, port in PORTS.items():
        assert client.put(f"/predictions/{model}", content=PHOTO).status_code == 200
        sent = boxes.fakes[port].requests[-1]
        assert (sent.url.port, sent.url.path) == (port, f"/predictions/{model}")
        assert sent.headers["authorization"] == f"Bearer inf-{model}"


def test_a_model_routed_nowhere_is_404(routed: tuple[TestClient, Boxes]) -> None:
    client, _ = routed
    response = client.put("/predictions/similar", content=PHOTO)
    assert response.status_code == 404 and "not routed" in response.json()["message"]


def test_a_box_down_is_503_for_its_model_only(routed: tuple[TestClient, Boxes]) -> None:
    client, boxes = routed
    boxes.down.add(PORTS["price"])
    down = client.put("/predictions/price", content=PHOTO)
    assert down.status_code == 503 and down.headers["Retry-After"]
    assert client.put("/predictions/classifier", content=PHOTO).status_code == 200


def test_ready_when_every_required_box_answers(routed: tuple[TestClient, Boxes]) -> None:
    client, boxes = routed
    boxes.down.add(PORTS["resnet18"])  # not required: a benchmark box
    ping = client.get("/ping")
    assert ping.status_code == 200, ping.json()
    assert ping.json()["boxes"]["127.0.0.1:18280"]["status"].startswith("Unreachable")
    assert client.get("/v2/health/ready").status_code == 200
    boxes.down.add(PORTS["price"])
    ping = client.get("/ping")
    assert ping.status_code == 503 and ping.json()["torchserve"].startswith("127.0.0.1:18180: Unreachable")
    assert client.get("/v2/health/ready").status_code == 503


def test_oip_metadata_asks_the_models_box_only(routed: tuple[TestClient, Boxes]) -> None:
    client, boxes = routed
    boxes.down.add(PORTS["price"])
    assert client.get("/v2/models/classifier/ready").status_code == 200
    assert client.get("/v2/models/price/ready").status_code == 503


def test_no_routes_means_one_box_for_every_model(tmp_path: Path) -> None:
    single = Box(url="http://127.0.0.1:8080", management_url="http://127.0.0.1:8081", key_file=tmp_path / "k")
    routes = Routes({}, single)
    assert routes.box("anything") == single and routes.boxes() == [single]


def test_star_is_every_other_model_and_the_single_box_is_unused_once_routes_exist(tmp_path: Path) -> None:
    single = Box(url="http://127.0.0.1:8080", management_url="http://127.0.0.1:8081", key_file=tmp_path / "k")
    parsed = parse_routes(json.dumps({"price": box(18180, tmp_path / "p"), "*": box(18080, tmp_path / "c")}))
    routes = Routes(parsed, single)
    assert routes.box("classifier").url == "http://127.0.0.1:18080" and single not in routes.boxes()
    assert routes.models(routes.box("price")) == ["price"]
    with pytest.raises(Unrouted):
        Routes({"price": parsed["price"]}, single).box("classifier")


def test_a_route_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="extra"):
        parse_routes({"price": {**box(1, tmp_path / "k"), "management": "typo"}})
