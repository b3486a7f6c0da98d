"""A model scaled out to several boxes: the bridge spreads its requests and fails over; routes parse lists."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from stack.routing import Routes, parse_routes
from tests.unit.test_bridge_app import PHOTO, FakeTorchServe, write_keys
from tests.unit.test_routing import box, management_answer, routed_bridge

REPLICA_PORTS = (18080, 18180)  # two boxes serving classifier
PRICE_PORT = 18280


class Replicated:
    """Fake boxes by inference port: classifier on two, price on one; ``down`` ports refuse connections."""

    def __init__(self, tmp_path: Path) -> None:
        self.fakes: dict[int, FakeTorchServe] = {}
        self.down: set[int] = set()
        self.loading: set[int] = set()  # up, but its workers are not READY yet (a restarted TorchServe)
        for port in (*REPLICA_PORTS, PRICE_PORT):
            key_file = tmp_path / f"{port}-key.json"
            write_keys(key_file, inference=f"inf-{port}")
            self.fakes[port] = FakeTorchServe(key_file)

    def answered_by(self) -> Counter[int]:
        """How many predictions each box was sent."""
        return Counter({port: sum(r.url.path.startswith("/predictions") for r in fake.requests)
                        for port, fake in self.fakes.items()})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port
        assert port is not None
        inference = port if port in self.fakes else port - 1
        if inference in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.startswith("/models"):
            answer = management_answer(request, "price" if inference == PRICE_PORT else "classifier")
            if inference in self.loading and request.url.path != "/models":
                return httpx.Response(200, json=[{**version, "workers": [{"status": "UNLOADING"}]}
                                                 for version in answer.json()])
            return answer
        return self.fakes[inference](request)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[TestClient, Replicated]]:
    boxes = Replicated(tmp_path)
    routes = {
        "classifier": [box(port, tmp_path / f"{port}-key.json") for port in REPLICA_PORTS],
        "price": box(PRICE_PORT, tmp_path / f"{PRICE_PORT}-key.json"),
    }
    with routed_bridge(tmp_path, routes, boxes) as client:
        yield client, boxes


def test_a_models_requests_are_spread_over_its_boxes_each_with_its_key(
        replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    for _ in range(10):
        assert client.put("/predictions/classifier", content=PHOTO).status_code == 200
    sent = boxes.answered_by()
    assert sent[REPLICA_PORTS[0]] == 5 and sent[REPLICA_PORTS[1]] == 5 and sent[PRICE_PORT] == 0
    for port in REPLICA_PORTS:
        assert {r.headers["authorization"] for r in boxes.fakes[port].requests} == {f"Bearer inf-{port}"}


def test_questions_about_a_model_do_not_move_its_round_robin(replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    for _ in range(10):  # each prediction between two metadata reads (which ask a box for the default version)
        assert client.get("/v2/models/classifier").status_code == 200
        assert client.put("/predictions/classifier", content=PHOTO).status_code == 200
    sent = boxes.answered_by()
    assert sent[REPLICA_PORTS[0]] == 5 and sent[REPLICA_PORTS[1]] == 5


def test_a_box_down_is_skipped_with_no_failed_request(replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    boxes.down.add(REPLICA_PORTS[0])
    statuses = Counter(client.put("/predictions/classifier", content=PHOTO).status_code for _ in range(10))
    assert statuses == Counter({200: 10})
    # The failed box was tried once, then kept last while it cools off: every answer came from the other.
    assert boxes.answered_by()[REPLICA_PORTS[1]] == 10


def test_a_box_that_does_not_serve_the_model_yet_is_skipped(replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    boxes.fakes[REPLICA_PORTS[1]].handler = lambda _: httpx.Response(
        404, json={"code": 404, "type": "ModelNotFoundException", "message": "Model not found: classifier"})
    statuses = Counter(client.put("/predictions/classifier", content=PHOTO).status_code for _ in range(6))
    assert statuses == Counter({200: 6})


def test_a_restarted_box_rejoins_only_once_its_workers_are_ready(
        replicated: tuple[TestClient, Replicated], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bridge.routing.COOL_OFF_S", 0.05)
    client, boxes = replicated
    restarted, other = REPLICA_PORTS
    boxes.down.add(restarted)
    assert client.put("/predictions/classifier", content=PHOTO).status_code == 200  # it fails once, over to the other
    # TorchServe is back and accepts requests, but its workers are still loading: nothing is sent to it.
    boxes.down.discard(restarted)
    boxes.loading.add(restarted)
    for _ in range(10):
        time.sleep(0.06)  # past the cool-off: each request lets a probe ask the box
        assert client.put("/predictions/classifier", content=PHOTO).status_code == 200
    assert boxes.answered_by()[restarted] == 0
    # Its workers are READY: the next probe puts it back in the rotation.
    boxes.loading.clear()
    deadline = time.monotonic() + 5
    while boxes.answered_by()[restarted] == 0 and time.monotonic() < deadline:
        time.sleep(0.06)
        assert client.put("/predictions/classifier", content=PHOTO).status_code == 200
    before = boxes.answered_by()
    for _ in range(10):
        assert client.put("/predictions/classifier", content=PHOTO).status_code == 200
    after = boxes.answered_by()
    assert after[restarted] - before[restarted] == 5 and after[other] - before[other] == 5


def test_every_box_down_is_503_with_retry_after(replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    boxes.down.update(REPLICA_PORTS)
    answer = client.put("/predictions/classifier", content=PHOTO)
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert client.put("/predictions/price", content=PHOTO).status_code == 200


def test_a_bad_photo_is_not_retried_on_another_box(replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    for fake in boxes.fakes.values():
        fake.handler = lambda _: httpx.Response(400, json={"code": 400, "message": "not an image"})
    assert client.put("/predictions/classifier", content=b"junk").status_code == 400
    assert sum(boxes.answered_by().values()) == 1


def test_a_model_is_ready_while_one_of_its_boxes_answers(replicated: tuple[TestClient, Replicated]) -> None:
    client, boxes = replicated
    boxes.down.add(REPLICA_PORTS[0])
    assert client.get("/ping").status_code == 200
    boxes.down.add(REPLICA_PORTS[1])
    assert client.get("/ping").status_code == 503


def test_routes_take_a_list_of_boxes_per_model(tmp_path: Path) -> None:
    parsed = parse_routes({"classifier": [box(1, tmp_path / "a"), box(4, tmp_path / "b")], "price": box(7, tmp_path / "c")})
    routes = Routes(parsed, None)
    first, second = routes.replicas("classifier")
    assert routes.box("classifier") == first and routes.serves(second, "classifier")
    assert routes.models(second) == ["classifier"] and len(routes.boxes()) == 3
    with pytest.raises(ValueError, match="twice"):
        parse_routes({"classifier": [box(1, tmp_path / "a"), box(1, tmp_path / "a")]})
    for bad in ([], "http://127.0.0.1:8080", 3):
        with pytest.raises(ValueError, match="non-empty list"):
            parse_routes({"classifier": bad})
