"""The Python SDK (sdk/serving_client) against httpx.MockTransport: request shapes, errors, paging, jobs."""

from __future__ import annotations

import builtins
import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import serving_client
from serving_client import (
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    GatewayTimeout,
    JobFailed,
    JobStatus,
    JobTimeout,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ServingError,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
)

OPENAPI = Path(__file__).resolve().parents[2] / "bridge" / "openapi.json"
BASE = "http://bridge.test"
PHOTO = b"\xff\xd8\xff\xe0fake-jpeg"
JOB_ID = "0b6f1c5e-3d0a-4f3c-9a39-2f1d2c3b4a5e"
PREDICTION = {
    "predictions": [{"label": "tabby", "index": 281, "score": 0.81}, {"label": "tiger cat", "index": 282, "score": 0.1}],
    "model": {"name": "classifier", "version": "1.0"}, "batch_size": 3,
}

Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport that records every request and answers with the current ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.handler(request)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


@pytest.fixture
def bridge() -> Recorder:
    return Recorder(lambda request: httpx.Response(500, text="no handler set"))


@pytest.fixture
def client(bridge: Recorder) -> Iterator[Client]:
    with Client(BASE, api_key="k-123", timeout=7.0, transport=bridge.transport) as c:
        yield c


def job_json(status: str = "queued", results: dict[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    return {
        "id": JOB_ID, "status": status, "models": ["classifier", "resnet18"],
        "created_at": "2026-01-02T03:04:05.123456Z", "updated_at": "2026-01-02T03:04:06Z", "attempts": 1,
        "results": results, "error": error,
    }


RESULTS = {
    "classifier": {"status": 200, "request_id": "r-1", "model_version": "1.0", "output": PREDICTION, "error": None},
    "resnet18": {"status": 422, "request_id": "r-2", "model_version": "1.0", "output": None,
                 "error": "image too large"},
}


# --- client basics -----------------------------------------------------------------------------------------


def test_api_key_user_agent_and_close(bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json={"status": "Healthy", "torchserve": "Healthy"})
    with Client(BASE + "/", api_key="secret", transport=bridge.transport) as c:
        assert c.ping() == {"status": "Healthy", "torchserve": "Healthy"}
        assert c.base_url == BASE
    assert bridge.last.headers["X-API-Key"] == "secret"
    assert bridge.last.headers["User-Agent"] == f"serving-client/{serving_client.__version__}"
    assert (bridge.last.method, bridge.last.url.path) == ("GET", "/ping")
    with pytest.raises(RuntimeError):  # closed: httpx refuses to send
        c.ping()


def test_no_api_key_header_without_a_key(bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json={"status": "Healthy"})
    with Client(BASE, transport=bridge.transport) as c:
        c.ping()
    assert "X-API-Key" not in bridge.last.headers and "Authorization" not in bridge.last.headers


def test_unhealthy_ping_raises_service_unavailable(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(
        503, json={"status": "Unhealthy", "torchserve": "Unreachable (connection refused)", "recording": {}}
    )
    with pytest.raises(ServiceUnavailable, match=r"TorchServe Unreachable \(connection refused\)") as info:
        client.ping()
    assert info.value.status == 503 and info.value.body["status"] == "Unhealthy"


# --- predict -----------------------------------------------------------------------------------------------


def prediction_response(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=PREDICTION, headers={
        "X-Request-Id": "req-1", "X-Model-Version": "1.0", "X-Batch-Size": "3",
    })


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "str path", "Path", "file object"])
def test_predict_sends_the_raw_bytes_with_put(client: Client, bridge: Recorder, tmp_path: Path, kind: str) -> None:
    bridge.handler = prediction_response
    path = tmp_path / "cat.jpg"
    path.write_bytes(PHOTO)
    photo: Any = {"bytes": PHOTO, "bytearray": bytearray(PHOTO), "str path": str(path), "Path": path,
                  "file object": io.BytesIO(PHOTO)}[kind]

    prediction = client.predict("classifier", photo)

    request = bridge.last
    assert request.method == "PUT"
    assert request.url.path == "/predictions/classifier"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["X-API-Key"] == "k-123"
    assert request.content == PHOTO
    assert prediction.body == PREDICTION
    assert (prediction.request_id, prediction.model_version, prediction.batch_size) == ("req-1", "1.0", 3)
    assert (prediction.top_label, prediction.top_score) == ("tabby", 0.81)


def test_predict_with_a_version_and_an_open_file(client: Client, bridge: Recorder, tmp_path: Path) -> None:
    bridge.handler = prediction_response
    (tmp_path / "cat.jpg").write_bytes(PHOTO)
    with open(tmp_path / "cat.jpg", "rb") as photo:
        client.predict("resnet18", photo, version="2.0")
    assert (bridge.last.method, bridge.last.url.path, bridge.last.content) == ("PUT", "/predictions/resnet18/2.0", PHOTO)


def test_predict_without_batch_headers_and_a_non_topk_body(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json={"price": 12.5})
    prediction = client.predict("price", PHOTO)
    assert prediction.body == {"price": 12.5}
    assert (prediction.request_id, prediction.model_version, prediction.batch_size) == (None, None, None)
    assert prediction.top_label is None


def test_a_photo_of_the_wrong_kind_is_refused_before_sending(client: Client, bridge: Recorder, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(TypeError, match="binary file object"):
        client.predict("classifier", 12)  # type: ignore[arg-type]
    with open(tmp_path / "a.txt") as text_mode, pytest.raises(TypeError, match="'rb'"):
        client.predict("classifier", text_mode)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        client.predict("classifier", tmp_path / "missing.jpg")
    assert bridge.requests == []


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc_type", "kind"),
    [
        (400, BadRequest, "InvalidImage"),
        (401, Unauthorized, "Unauthorized"),
        (404, NotFound, "NotFound"),
        (409, Conflict, "Conflict"),
        (413, PayloadTooLarge, "PayloadTooLarge"),
        (415, UnsupportedMediaType, "UnsupportedMediaType"),
        (422, Unprocessable, "ImageTooLarge"),
        (503, ServiceUnavailable, "ServiceUnavailable"),
        (504, GatewayTimeout, "GatewayTimeout"),
        (500, ServingError, "InternalServerError"),
        (429, TooManyRequests, "TooManyRequests"),
        (403, Forbidden, "Forbidden"),
        (418, ServingError, "ImATeapot"),
    ],
)
def test_each_status_raises_its_exception_with_the_envelope(
    client: Client, bridge: Recorder, status: int, exc_type: type[ServingError], kind: str
) -> None:
    envelope = {"code": status, "type": kind, "message": f"what went wrong ({status})", "request_id": "rid-9"}
    bridge.handler = lambda r: httpx.Response(status, json=envelope, headers={"X-Request-Id": "header-rid"})

    with pytest.raises(exc_type) as info:
        client.predict("classifier", PHOTO)

    error = info.value
    assert type(error) is exc_type and isinstance(error, ServingError)
    assert error.status == status
    assert error.message == f"what went wrong ({status})"
    assert error.type == kind
    assert error.request_id == "rid-9", "the envelope's request id wins"
    assert error.body == envelope
    assert str(error) == f"{status} {kind}: what went wrong ({status}) (request id rid-9)"


def test_torchserve_errors_take_the_request_id_from_the_header(client: Client, bridge: Recorder) -> None:
    body = {"code": 400, "type": "InvalidImage", "message": "image is truncated or corrupt",
            "model": {"name": "classifier", "version": "1.0"}}
    bridge.handler = lambda r: httpx.Response(400, json=body, headers={"X-Request-Id": "rid-from-header"})
    with pytest.raises(BadRequest) as info:
        client.predict("classifier", PHOTO)
    assert info.value.request_id == "rid-from-header"
    assert info.value.message == "image is truncated or corrupt"


def test_service_unavailable_carries_retry_after(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(
        503, json={"code": 503, "type": "ServiceUnavailable", "message": "TorchServe is unavailable",
                   "request_id": "rid"}, headers={"Retry-After": "2"})
    with pytest.raises(ServiceUnavailable) as info:
        client.predict("classifier", PHOTO)
    assert info.value.retry_after == 2.0

    bridge.handler = lambda r: httpx.Response(503, text="busy")
    with pytest.raises(ServiceUnavailable) as info:
        client.predict("classifier", PHOTO)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(502, text="<html><body>Bad Gateway</body></html>",
                        headers={"Content-Type": "text/html"}), "<html><body>Bad Gateway</body></html>"),
        (httpx.Response(504, content=b""), "Gateway Timeout"),
        (httpx.Response(400, json=["not", "an", "envelope"]), '["not","an","envelope"]'),
        (httpx.Response(413, content=b"\xff\xfe\x00binary"), None),
    ],
)
def test_non_json_error_bodies_still_give_a_typed_error(
    client: Client, bridge: Recorder, response: httpx.Response, message: str | None
) -> None:
    bridge.handler = lambda r: response
    with pytest.raises(ServingError) as info:
        client.predict("classifier", PHOTO)
    assert info.value.status == response.status_code
    assert type(info.value) is {502: ServingError, 504: GatewayTimeout, 400: BadRequest, 413: PayloadTooLarge}[
        response.status_code]
    assert info.value.message
    if message is not None:
        assert info.value.message == message
    assert info.value.request_id is None and info.value.type is None


def test_an_unreachable_bridge_is_a_connection_error_that_says_what_to_do() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with Client("http://127.0.0.1:9", transport=httpx.MockTransport(refuse)) as c, \
            pytest.raises(serving_client.ConnectionError) as info:
        c.predict("classifier", PHOTO)
    error = info.value
    assert error.status is None and isinstance(error.__cause__, httpx.ConnectError)
    assert "bridge not reachable at http://127.0.0.1:9" in str(error) and "`make up`" in str(error)
    assert isinstance(error, ServiceUnavailable) and isinstance(error, ServingError)
    assert isinstance(error, builtins.ConnectionError), "also caught by `except ConnectionError`"


def test_a_read_timeout_is_a_connection_error_too(client: Client, bridge: Recorder) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    bridge.handler = slow
    with pytest.raises(serving_client.ConnectionError, match="no answer from the bridge"):
        client.predict("classifier", PHOTO)


# --- jobs --------------------------------------------------------------------------------------------------


def test_submit_sends_models_idempotency_key_and_bytes(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(202, json=job_json(), headers={"Location": f"/v1/jobs/{JOB_ID}"})

    job = client.submit(PHOTO, models=["classifier", "resnet18"], idempotency_key="order-42")

    request = bridge.last
    assert (request.method, request.url.path) == ("POST", "/v1/jobs")
    assert request.url.params["models"] == "classifier,resnet18"
    assert request.headers["Idempotency-Key"] == "order-42"
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["X-API-Key"] == "k-123"
    assert request.content == PHOTO
    assert job.id == JOB_ID and job.created and job.location == f"/v1/jobs/{JOB_ID}"
    assert job.state.status is JobStatus.QUEUED
    assert job.state.created_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_submit_defaults_and_an_idempotent_replay(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json=job_json("succeeded", RESULTS))
    job = client.submit(PHOTO, models="classifier")
    assert bridge.last.url.params["models"] == "classifier"
    assert not job.created, "200 means the Idempotency-Key named an earlier job"

    client.submit(PHOTO)
    assert "models" not in bridge.last.url.params
    own_key = bridge.last.headers["Idempotency-Key"]
    assert own_key.startswith("sdk-") and uuid.UUID(own_key[4:]), "the SDK sends a key of its own"
    client.submit(PHOTO)
    assert bridge.last.headers["Idempotency-Key"] != own_key, "each submission gets a new key"


def test_submit_conflict_and_mismatch(client: Client, bridge: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    bridge.handler = lambda r: httpx.Response(
        409, json={"code": 409, "type": "Conflict", "message": "job pending", "request_id": "x"})
    with pytest.raises(Conflict, match="job pending"):
        client.submit(PHOTO, idempotency_key="k")
    assert len(bridge.requests) == client.submit_attempts, "409 (still being stored) is retried, then raised"
    bridge.requests.clear()
    bridge.handler = lambda r: httpx.Response(
        422, json={"code": 422, "type": "Unprocessable", "message": "different photo", "request_id": "y"})
    with pytest.raises(Unprocessable, match="different photo"):
        client.submit(PHOTO, idempotency_key="k")


def test_submit_retries_lost_answers_with_the_same_key(
    client: Client, bridge: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    answers = iter(["timeout", "refused", "503", "200"])

    def flaky(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer == "timeout":
            raise httpx.ReadTimeout("answer lost", request=request)
        if answer == "refused":
            raise httpx.ConnectError("refused", request=request)
        if answer == "503":
            return httpx.Response(503, headers={"Retry-After": "2"},
                                  json={"code": 503, "type": "UpstreamUnavailable", "message": "busy", "request_id": "z"})
        return httpx.Response(200, json=job_json(), headers={"Location": f"/v1/jobs/{JOB_ID}"})

    bridge.handler = flaky
    job = client.submit(PHOTO)
    keys = {r.headers["Idempotency-Key"] for r in bridge.requests}
    assert len(bridge.requests) == 4 and len(keys) == 1, "every retry carries the first attempt's key"
    assert job.id == JOB_ID
    assert sleeps[2] == 2.0, "the server's Retry-After is honoured"
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0, "exponential backoff with jitter"


def test_submit_waits_out_a_rate_limit_as_the_429_says(
    client: Client, bridge: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    answers = iter([429, 200])

    def limited(request: httpx.Request) -> httpx.Response:
        if next(answers) == 429:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={
                "code": 429, "type": "TooManyRequests", "message": "over its rate", "request_id": "r"})
        return httpx.Response(202, json=job_json(), headers={"Location": f"/v1/jobs/{JOB_ID}"})

    bridge.handler = limited
    assert client.submit(PHOTO).id == JOB_ID
    assert sleeps == [3.0] and len(bridge.requests) == 2
    bridge.handler = lambda r: httpx.Response(429, headers={"Retry-After": "1"}, json={
        "code": 429, "type": "TooManyRequests", "message": "over its rate", "request_id": "r"})
    with pytest.raises(TooManyRequests) as info:
        client.predict("classifier", PHOTO)  # a prediction is not retried: the caller decides
    assert info.value.retry_after == 1.0


def test_submit_does_not_retry_a_bad_request(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(
        400, json={"code": 400, "type": "BadRequest", "message": "not an image", "request_id": "b"})
    with pytest.raises(BadRequest):
        client.submit(PHOTO)
    assert len(bridge.requests) == 1


def test_status_is_a_fresh_get(client: Client, bridge: Recorder) -> None:
    states = iter(["queued", "running", "running"])
    bridge.handler = lambda r: httpx.Response(202 if r.method == "POST" else 200, json=job_json(next(states)))
    job = client.submit(PHOTO)
    assert job.status() is JobStatus.RUNNING
    assert job.status() == "running"
    gets = [r for r in bridge.requests if r.method == "GET"]
    assert len(gets) == 2
    assert all(r.url.path == f"/v1/jobs/{JOB_ID}" and "wait" not in r.url.params for r in gets)
    assert all(r.headers["X-API-Key"] == "k-123" for r in gets)


def test_result_long_polls_then_returns_one_result_per_model(client: Client, bridge: Recorder) -> None:
    answers = iter([job_json("queued"), job_json("running"), job_json("running"), job_json("succeeded", RESULTS)])
    bridge.handler = lambda r: httpx.Response(202 if r.method == "POST" else 200, json=next(answers))

    job = client.submit(PHOTO, models=["classifier", "resnet18"])
    results = job.result(timeout=120)

    polls = [r for r in bridge.requests if r.method == "GET"]
    assert len(polls) == 3
    for poll in polls:
        wait = float(poll.url.params["wait"])
        assert 0 < wait <= 30, "the bridge holds a poll at most 30 s"
        assert poll.extensions["timeout"]["read"] >= wait + 7.0, "the read timeout covers the wait"
    assert set(results) == {"classifier", "resnet18"}
    assert results["classifier"].ok and results["classifier"].top_label == "tabby"
    assert results["classifier"].output == PREDICTION and results["classifier"].request_id == "r-1"
    assert not results["resnet18"].ok and results["resnet18"].status == 422
    assert results["resnet18"].error == "image too large"
    assert job.state.status is JobStatus.SUCCEEDED

    assert job.result() == results and len(bridge.requests) == 4, "a finished job is not fetched again"


def test_wait_returns_a_failed_job_and_result_raises_job_failed(client: Client, bridge: Recorder) -> None:
    failed = job_json("failed", {"classifier": RESULTS["classifier"]}, "gave up after 5 attempts; unavailable: resnet18")
    bridge.handler = lambda r: httpx.Response(200, json=failed)
    job = client.job(JOB_ID)
    assert job.wait(timeout=5).status is JobStatus.FAILED

    with pytest.raises(JobFailed) as info:
        job.result(timeout=5)
    assert "gave up after 5 attempts" in str(info.value)
    assert info.value.job.results is not None and info.value.job.results["classifier"].ok
    assert isinstance(info.value, ServingError)


def test_result_times_out_with_a_timeout_error(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json=job_json("running"))
    job = client.job(JOB_ID)
    with pytest.raises(JobTimeout) as info:
        job.result(timeout=0.3)
    assert info.value.job.status is JobStatus.RUNNING
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ServingError)
    assert f"job {JOB_ID} still running after 0.3 s" in str(info.value)
    polls = [float(r.url.params["wait"]) for r in bridge.requests if "wait" in r.url.params]
    assert polls and all(0 < w <= 0.3 for w in polls)
    assert len(bridge.requests) < 10, "an early answer is not re-asked in a busy loop"


def test_an_unknown_job_is_not_found(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(
        404, json={"code": 404, "type": "NotFound", "message": f"no job {JOB_ID}", "request_id": "r"})
    with pytest.raises(NotFound, match=f"no job {JOB_ID}"):
        client.job(JOB_ID)


# --- results and reports -----------------------------------------------------------------------------------


def item(n: int) -> dict[str, Any]:
    return {"request_id": f"r-{n}", "model": "classifier", "status": 200, "top_label": "tabby"}


def test_results_follow_next_cursor_across_pages(client: Client, bridge: Recorder) -> None:
    pages = {None: ([item(1), item(2)], "c1"), "c1": ([item(3), item(4)], "c2"), "c2": ([item(5)], None)}

    def page(request: httpx.Request) -> httpx.Response:
        items, next_cursor = pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={"items": items, "next_cursor": next_cursor})

    bridge.handler = page
    since = datetime(2026, 1, 1, tzinfo=UTC)
    found = list(client.results(model="classifier", version="1.0", status=200, since=since,
                                until="2026-01-02T00:00:00Z", limit=2))

    assert [r["request_id"] for r in found] == ["r-1", "r-2", "r-3", "r-4", "r-5"]
    assert [r.url.params.get("cursor") for r in bridge.requests] == [None, "c1", "c2"]
    for request in bridge.requests:
        assert (request.method, request.url.path) == ("GET", "/v1/results")
        params = dict(request.url.params)
        params.pop("cursor", None)
        assert params == {"model": "classifier", "version": "1.0", "status": "200", "limit": "2",
                          "since": "2026-01-01T00:00:00+00:00", "until": "2026-01-02T00:00:00Z"}


def test_a_naive_time_is_sent_as_utc_since_the_bridge_requires_an_offset(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json={"items": [], "next_cursor": None})
    list(client.results(since=datetime(2026, 1, 1, 12, 30)))
    assert bridge.requests[-1].url.params["since"] == "2026-01-01T12:30:00+00:00"


def test_results_are_fetched_lazily_and_omit_unset_filters(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(200, json={"items": [item(1)], "next_cursor": "more"})
    results = client.results()
    assert bridge.requests == []
    assert next(results)["request_id"] == "r-1"
    assert dict(bridge.last.url.params) == {"limit": "100"}


def test_report(client: Client, bridge: Recorder) -> None:
    rows = [{"bucket": "2026-01-02T03:00:00Z", "label": "tabby", "count": 4}]
    bridge.handler = lambda r: httpx.Response(200, json={
        "model": "classifier", "since": "2026-01-01T03:00:00Z", "until": "2026-01-02T03:30:00Z", "bucket": "minute",
        "rows": rows,
    })
    report = client.report("labels", "classifier", since="2026-01-01T03:00:00Z", bucket="minute")
    assert (bridge.last.method, bridge.last.url.path) == ("GET", "/v1/reports/labels")
    assert dict(bridge.last.url.params) == {"model": "classifier", "since": "2026-01-01T03:00:00Z", "bucket": "minute"}
    assert (report.kind, report.model, report.bucket, report.rows) == ("labels", "classifier", "minute", rows)
    assert report.until == datetime(2026, 1, 2, 3, 30, tzinfo=UTC)

    for kind in ("latency", "errors"):
        client.report(kind, "classifier")
        assert bridge.last.url.path == f"/v1/reports/{kind}"
        assert dict(bridge.last.url.params) == {"model": "classifier", "bucket": "hour"}


def test_an_unknown_report_kind_is_refused_before_sending(client: Client, bridge: Recorder) -> None:
    with pytest.raises(ValueError, match="labels, latency, errors"):
        client.report("throughput", "classifier")
    assert bridge.requests == []


def test_a_bad_report_range_is_a_bad_request(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(400, json={
        "code": 400, "type": "BadRequest", "message": "`since` must be before `until`", "request_id": "r"})
    with pytest.raises(BadRequest, match="since"):
        client.report("labels", "classifier", since="2026-01-02T00:00:00Z", until="2026-01-01T00:00:00Z")


# --- ground truth and live accuracy ------------------------------------------------------------------------

FEEDBACK = {"request_id": JOB_ID, "model": "classifier", "model_version": "1.0", "truth": {"label": "tabby"},
            "received_at": "2026-01-02T03:04:05Z", "score": {"top1_correct": 1.0, "top5_correct": 1.0}}


def test_feedback_posts_the_truth_as_json(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda r: httpx.Response(201, json=FEEDBACK)
    stored = client.feedback(uuid.UUID(JOB_ID), "tabby")
    assert (bridge.last.method, bridge.last.url.path) == ("POST", "/v1/feedback")
    assert bridge.last.headers["content-type"] == "application/json"
    assert json.loads(bridge.last.content) == {"request_id": JOB_ID, "truth": "tabby"}
    assert (stored.created, stored.request_id, stored.model, stored.model_version) == (
        True, JOB_ID, "classifier", "1.0")
    assert (stored.truth, stored.score) == ({"label": "tabby"}, {"top1_correct": 1.0, "top5_correct": 1.0})
    assert stored.received_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    bridge.handler = lambda r: httpx.Response(200, json=FEEDBACK)
    assert client.feedback(JOB_ID, {"label": "tabby"}).created is False, "200: the same truth, stored before"


@pytest.mark.parametrize(("status", "kind", "error"), [
    (404, "NotFound", NotFound), (409, "Conflict", Conflict), (422, "Unprocessable", Unprocessable),
    (413, "PayloadTooLarge", PayloadTooLarge),
])
def test_feedback_errors_are_typed_and_not_retried(
    client: Client, bridge: Recorder, status: int, kind: str, error: type[ServingError]
) -> None:
    bridge.handler = lambda r: httpx.Response(
        status, json={"code": status, "type": kind, "message": f"refused: {kind}", "request_id": "f"})
    with pytest.raises(error, match=f"refused: {kind}"):
        client.feedback(JOB_ID, ["chelsea-01"])
    assert len(bridge.requests) == 1


def test_feedback_is_retried_when_the_bridge_is_unavailable(
    client: Client, bridge: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: None)
    answers = iter([httpx.Response(503, json={"code": 503, "type": "ServiceUnavailable", "message": "db down",
                                              "request_id": "z"}), httpx.Response(200, json=FEEDBACK)])
    bridge.handler = lambda r: next(answers)
    assert client.feedback(JOB_ID, "tabby").created is False
    assert len(bridge.requests) == 2
    assert bridge.requests[0].content == bridge.requests[1].content


def test_accuracy_report(client: Client, bridge: Recorder) -> None:
    rows = [{"bucket": "2026-01-02T03:00:00Z", "version": "1.0", "count": 2,
             "figures": {"mean_abs_error": {"value": 2.5, "low": 1.0, "high": 4.0, "n": 2}}}]
    bridge.handler = lambda r: httpx.Response(200, json={
        "model": "price", "kind": "price", "version": "1.0", "since": "2026-01-01T03:00:00Z",
        "until": "2026-01-02T03:30:00Z", "bucket": "hour", "figures": ["mean_abs_error", "interval_coverage"],
        "rows": rows,
    })
    report = client.accuracy("price", version="1.0", since=datetime(2026, 1, 1, 3, tzinfo=UTC))
    assert (bridge.last.method, bridge.last.url.path) == ("GET", "/v1/reports/accuracy")
    assert dict(bridge.last.url.params) == {"model": "price", "version": "1.0", "since": "2026-01-01T03:00:00+00:00",
                                            "bucket": "hour"}
    assert (report.model, report.kind, report.version, report.bucket) == ("price", "price", "1.0", "hour")
    assert (report.figures, report.rows) == (["mean_abs_error", "interval_coverage"], rows)
    assert report.until == datetime(2026, 1, 2, 3, 30, tzinfo=UTC)
    client.accuracy("classifier", bucket="day")
    assert dict(bridge.last.url.params) == {"model": "classifier", "bucket": "day"}


COMPARE = {
    "model": "classifier", "version": "1.1", "source": "all", "since": "2026-01-01T00:00:00Z",
    "until": "2026-01-02T00:00:00Z",
    "comparison": {
        "kind": "classifier", "samples": 3, "compared": 3,
        "metrics": {"top1_agreement": {"value": 1.0, "low": 0.44, "high": 1.0, "n": 3}},
        "live": {"server_errors": {"value": 0.0, "low": 0.0, "high": 0.56, "n": 3}, "p50_ms": 10.0, "p99_ms": 12.0},
        "candidate": {"server_errors": {"value": 0.0, "low": 0.0, "high": 0.56, "n": 3}, "p50_ms": 11.0, "p99_ms": 13.0},
        "error_rate_delta": 0.0, "p50_ratio": 1.1, "p99_ratio": 1.0833, "extra": {},
    },
}


def test_compare_and_rollouts(client: Client, bridge: Recorder) -> None:
    bridge.handler = lambda request: httpx.Response(200, json=COMPARE if "compare" in request.url.path else {
        "items": [{"id": 1, "model": "classifier", "version": "1.1", "mode": "shadow", "percent": 100.0}]})
    comparison = client.compare("classifier")
    assert (bridge.last.url.path, dict(bridge.last.url.params)) == (
        "/v1/reports/compare", {"model": "classifier", "source": "all"})
    assert (comparison.version, comparison.kind, comparison.samples, comparison.p99_ratio) == ("1.1", "classifier", 3, 1.0833)
    assert comparison.metrics["top1_agreement"]["value"] == 1.0 and comparison.live["p50_ms"] == 10.0
    assert comparison.since == datetime(2026, 1, 1, tzinfo=UTC)
    assert [r["mode"] for r in client.rollouts()] == ["shadow"]
    assert bridge.last.url.path == "/v1/rollouts"


# --- the contract ------------------------------------------------------------------------------------------


def test_every_request_the_sdk_sends_is_in_the_committed_openapi_document(client: Client, bridge: Recorder) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/predictions/"):
            return prediction_response(request)
        if path.startswith("/v1/jobs"):
            return httpx.Response(202 if request.method == "POST" else 200, json=job_json("succeeded", RESULTS))
        if path == "/v1/results":
            return httpx.Response(200, json={"items": [], "next_cursor": None})
        if path == "/v1/feedback":
            return httpx.Response(201, json=FEEDBACK)
        if path == "/v1/rollouts":
            return httpx.Response(200, json={"items": []})
        if path == "/v1/reports/compare":
            return httpx.Response(200, json=COMPARE)
        if path == "/v1/reports/accuracy":
            return httpx.Response(200, json={"model": "m", "kind": "json", "version": "1", "since": "2026-01-01T00:00:00Z",
                                             "until": "2026-01-02T00:00:00Z", "bucket": "day", "figures": [], "rows": []})
        if path.startswith("/v1/reports/"):
            return httpx.Response(200, json={"model": "m", "since": "2026-01-01T00:00:00Z",
                                             "until": "2026-01-02T00:00:00Z", "bucket": "hour", "rows": []})
        return httpx.Response(200, json={"status": "Healthy"})

    bridge.handler = answer
    client.ping()
    client.predict("classifier", PHOTO)
    client.predict("classifier", PHOTO, version="1.0")
    client.submit(PHOTO, models=["classifier"], idempotency_key="k").status()
    client.fetch_job(JOB_ID, wait=1)
    list(client.results(model="m", version="1", status=200, since="2026-01-01T00:00:00Z",
                        until="2026-01-02T00:00:00Z", limit=5))
    for kind in serving_client.REPORT_KINDS:
        client.report(kind, "m", since="2026-01-01T00:00:00Z", until="2026-01-02T00:00:00Z", bucket="day")
    client.feedback(JOB_ID, "tabby")
    client.accuracy("m", version="1", since="2026-01-01T00:00:00Z", until="2026-01-02T00:00:00Z", bucket="day")
    client.rollouts()
    client.compare("m", version="1.1", since="2026-01-01T00:00:00Z", until="2026-01-02T00:00:00Z", source="shadow")

    spec = json.loads(OPENAPI.read_text())
    operations = {
        (method.upper(), re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")): op
        for path, ops in spec["paths"].items() for method, op in ops.items()
    }
    for request in bridge.requests:
        matches = [op for (method, pattern), op in operations.items()
                   if method == request.method and pattern.match(request.url.path)]
        assert matches, f"{request.method} {request.url.path} is not in bridge/openapi.json"
        declared = {p["name"] for p in matches[0].get("parameters", []) if p["in"] == "query"}
        assert set(request.url.params) <= declared, (request.url, declared)
        declared_headers = {p["name"].lower() for p in matches[0].get("parameters", []) if p["in"] == "header"}
        if "idempotency-key" in request.headers:
            assert "idempotency-key" in declared_headers
        if request.content:
            assert request.headers["content-type"] in matches[0]["requestBody"]["content"]
