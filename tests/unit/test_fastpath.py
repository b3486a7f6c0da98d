"""bridge.fastpath: the prediction paths answered before FastAPI's routing, byte for byte as the routes answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from bridge.fastpath import BridgeApp
from bridge.service import PredictionService
from tests.unit.fakes import FlakyStore
from tests.unit.test_bridge_app import PHOTO, FakeTorchServe, bridge_under_test

KEY = "secret-key"
Env = tuple[TestClient, TestClient, FakeTorchServe, list[str]]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """(client through the fast path, client through FastAPI's routing only, fake TorchServe, paths taken fast)."""
    fast: list[str] = []
    predict = BridgeApp._predict

    async def spy(self: BridgeApp, scope: Scope, receive: Receive, send: Send, *names: str | None) -> None:
        fast.append(scope["path"])
        await predict(self, scope, receive, send, *names)  # type: ignore[arg-type]

    monkeypatch.setattr(BridgeApp, "_predict", spy)
    with bridge_under_test(tmp_path, FakeTorchServe, max_body_bytes=1000, api_keys=(KEY,)) as (client, fake, _):
        app = client.app
        assert isinstance(app, BridgeApp)

        async def routed_only(scope: Scope, receive: Receive, send: Send) -> None:
            await FastAPI.__call__(app, scope, receive, send)

        # The same app (its lifespan run by ``client``), entered below the fast path.
        routed = TestClient(routed_only, raise_server_exceptions=False)
        yield client, routed, fake, fast


def comparable(response: httpx.Response) -> tuple[int, list[tuple[str, str]], Any]:
    """Status, headers and body, with the per-request id replaced."""
    rid = response.headers.get("x-request-id", "")
    headers = [(k, "<id>" if k == "x-request-id" else v) for k, v in response.headers.multi_items() if k != "date"]
    try:
        body: Any = response.json()
    except json.JSONDecodeError:
        body = response.content
    if isinstance(body, dict) and body.get("request_id") == rid:
        body = {**body, "request_id": "<id>"}
    return response.status_code, headers, body


def both(env: Env, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, httpx.Response]:
    client, routed, _, _ = env
    kwargs.setdefault("headers", {"X-API-Key": KEY})
    return client.request(method, path, **kwargs), routed.request(method, path, **kwargs)


def assert_same(env: Env, method: str, path: str, **kwargs: Any) -> httpx.Response:
    fast, routed = both(env, method, path, **kwargs)
    assert comparable(fast) == comparable(routed)
    return fast


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize("path", ["/predictions/m", "/predictions/m/2.0", "/predictions/resnet-18_v.2/1.0-rc_1"])
def test_predictions_take_the_fast_path_and_answer_as_the_routes(env: Env, method: str, path: str) -> None:
    _, _, fake, fast = env
    response = assert_same(env, method, path, content=PHOTO)
    assert response.status_code == 200 and response.headers["x-batch-size"] == "3"
    assert fast == [path]
    assert [r.url.path for r in fake.requests[-2:]] == [path, path]  # the fast one and the routed one


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + KEY}])
def test_missing_or_wrong_key_is_the_same_401(env: Env, headers: dict[str, str]) -> None:
    _, _, fake, fast = env
    response = assert_same(env, "POST", "/predictions/m", content=PHOTO, headers=headers)
    assert response.status_code == 401 and response.json()["type"] == "Unauthorized"
    assert response.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    assert fast == ["/predictions/m"] and not fake.requests


def test_bearer_key_is_accepted(env: Env) -> None:
    assert assert_same(env, "PUT", "/predictions/m", content=PHOTO, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_too_large_is_the_same_413_by_length_and_chunked(env: Env) -> None:
    _, _, fake, _ = env
    by_length = assert_same(env, "PUT", "/predictions/m", content=b"x" * 1001, headers={"X-API-Key": KEY})
    client, routed, _, _ = env
    fast, slow = (c.put("/predictions/m", content=iter([b"x" * 600, b"x" * 600]), headers={"X-API-Key": KEY})
                  for c in (client, routed))
    assert comparable(fast) == comparable(slow)
    chunked = fast
    assert by_length.status_code == chunked.status_code == 413
    assert by_length.json()["type"] == "PayloadTooLarge" and not fake.requests


@pytest.mark.parametrize(("method", "path", "status"), [
    ("POST", "/predictions/", 404),
    ("POST", "/predictions/m/1.0/extra", 404),
    ("POST", "/predictions/-m", 400),  # the route's pattern refuses the name: FastAPI's validation error
    ("POST", "/predictions/m/-1.0", 400),
    ("POST", "/predictions/" + "m" * 129, 400),
    ("GET", "/predictions/m", 405),
    ("DELETE", "/predictions/m/1.0", 405),
    ("POST", "/predictions", 404),
    ("POST", "/predictionsx/m", 404),
])
def test_anything_else_falls_through_to_fastapi(env: Env, method: str, path: str, status: int) -> None:
    _, _, fake, fast = env
    response = assert_same(env, method, path, content=PHOTO)
    assert response.status_code == status and "request_id" in response.json()
    assert fast == [] and not fake.requests


def test_other_routes_still_answer(env: Env) -> None:
    client, _, _, fast = env
    assert client.get("/ping").status_code in (200, 503)
    assert client.get("/openapi.json").json()["paths"]["/predictions/{model}"]["post"]["operationId"] == "predict"
    assert fast == []


@pytest.mark.parametrize(("content_type", "sent_type"), [
    ("image/jpeg", "image/jpeg"),
    ("application/x-www-form-urlencoded", "application/octet-stream"),  # curl --data-binary's default
    (None, "application/octet-stream"),
])
def test_content_types_are_forwarded_as_the_routes_forward_them(env: Env, content_type: str | None, sent_type: str) -> None:
    _, _, fake, _ = env
    headers = {"X-API-Key": KEY, **({"Content-Type": content_type} if content_type else {})}
    assert_same(env, "PUT", "/predictions/m", content=PHOTO, headers=headers)
    assert [r.headers["content-type"] for r in fake.requests] == [sent_type, sent_type]


def test_non_ascii_content_type_and_empty_body_are_the_same_400s(env: Env) -> None:
    bad_type = assert_same(env, "PUT", "/predictions/m", content=PHOTO,
                           headers={"X-API-Key": KEY, "Content-Type": b"image/jp\xe9g"})
    empty = assert_same(env, "PUT", "/predictions/m", content=b"")
    assert bad_type.status_code == empty.status_code == 400 and empty.json()["type"] == "EmptyBody"


def test_query_parameters_are_forwarded_and_bad_ones_refused(env: Env) -> None:
    _, _, fake, _ = env
    assert assert_same(env, "POST", "/predictions/similar?k=3", content=PHOTO).status_code == 200
    assert all(b'name="k"\r\n\r\n3' in r.content and PHOTO in r.content for r in fake.requests)  # form fields, as today
    bad = assert_same(env, "POST", "/predictions/similar?1k=3", content=PHOTO)
    assert bad.status_code == 400 and bad.json()["type"] == "BadRequest" and len(fake.requests) == 2


def test_multipart_form_with_a_parameter_is_forwarded(env: Env) -> None:
    _, _, fake, _ = env
    files = {"file": ("a.jpg", PHOTO, "image/jpeg"), "k": (None, "2")}
    assert assert_same(env, "POST", "/predictions/similar", files=files).status_code == 200
    assert all(b'name="k"\r\n\r\n2' in r.content for r in fake.requests)
    two_files = assert_same(env, "POST", "/predictions/similar",
                            files=[("a", ("a.jpg", PHOTO, "image/jpeg")), ("b", ("b.jpg", PHOTO, "image/jpeg"))])
    assert two_files.status_code == 400


@pytest.mark.parametrize("status", [400, 404, 503, 507])
def test_upstream_errors_pass_through_identically(env: Env, status: int) -> None:
    _, _, fake, _ = env
    fake.handler = lambda r: httpx.Response(status, json={"code": status, "type": "Upstream", "message": "no"})
    assert assert_same(env, "PUT", "/predictions/m", content=PHOTO).status_code == status


def test_an_unexpected_error_is_the_same_500_and_reaches_the_server(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    client, routed, _, _ = env

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(PredictionService, "predict", broken)
    with pytest.raises(RuntimeError, match="boom"):  # as through Starlette's ServerErrorMiddleware
        client.put("/predictions/m", content=PHOTO, headers={"X-API-Key": KEY})
    quiet = TestClient(client.app, raise_server_exceptions=False)
    fast = quiet.put("/predictions/m", content=PHOTO, headers={"X-API-Key": KEY})
    assert comparable(fast) == comparable(routed.put("/predictions/m", content=PHOTO, headers={"X-API-Key": KEY}))
    assert fast.status_code == 500 and fast.json()["type"] == "InternalServerError"


def test_every_prediction_is_recorded_once(tmp_path: Path) -> None:
    with bridge_under_test(tmp_path, FakeTorchServe) as (client, _, store):
        ids = [client.put("/predictions/m", content=PHOTO).headers["x-request-id"] for _ in range(5)]
        assert client.app.state.recorder.wait_idle(5)
        assert isinstance(store, FlakyStore) and sorted(store.rows) == sorted(ids)


def test_with_opentelemetry_on_predictions_go_through_fastapi(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _, fake, fast = env
    app = client.app
    assert isinstance(app, BridgeApp)
    monkeypatch.setattr(app._native_telemetry, "enabled", lambda: True)  # a tracer or meter provider configured
    app._instrumented = None
    assert client.put("/predictions/m", content=PHOTO, headers={"X-API-Key": KEY}).status_code == 200
    assert fast == [] and len(fake.requests) == 1
