"""stack.torchserve: one protocol, two faces (sync and async), against a TorchServe faked with httpx.MockTransport."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest

from archive_scripts.golden import GoldenCase, NearestItemIs
from ops.golden import check_through_torchserve
from ops.settings import Settings
from ops.torchserve import TorchServe
from stack import torchserve
from stack.torchserve import AsyncClient, Client, renewal_due

PHOTO = b"\xff\xd8\xff\xe0fake-jpeg-bytes"
ITEMS = {"items": [{"id": "chelsea-01", "distance": 0.0}], "k": 1}


def write_keys(path: Path, inference: str = "inf-1", management: str = "mgmt-1",
               life: timedelta = timedelta(minutes=60), left: timedelta | None = None) -> None:
    """A key file as TorchServe 0.12 writes it: issued ``life - left`` ago, expiring in ``left``."""
    left = life if left is None else left
    expires = (datetime.now(UTC) + left).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    path.write_text(json.dumps({
        "management": {"key": management, "expiration time": expires},
        "inference": {"key": inference, "expiration time": expires},
        "API": {"key": "api-1"},
    }))
    issued = time.time() - (life - left).total_seconds()
    os.utime(path, (issued, issued))


def form_fields(request: httpx.Request) -> dict[str, bytes]:
    """The multipart form fields of a request, by name."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    parsed: Message = message_from_bytes(head + request.content)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)  # type: ignore[misc]
            for part in parsed.get_payload()}  # type: ignore[union-attr]


class Fake:
    """TorchServe's answers with keys checked against the key file; ``answer`` handles the rest."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self.requests: list[httpx.Request] = []
        self.answer: Callable[[httpx.Request], httpx.Response] = lambda r: httpx.Response(
            200, json=ITEMS, headers={"X-Batch-Size": "4"})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        keys = json.loads(self.key_file.read_text())
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if request.url.path == "/token":
            kind = request.url.params["type"]
            assert token == keys["API"]["key"]
            keys[kind]["key"] += "-renewed"
            keys[kind]["expiration time"] = (datetime.now(UTC) + timedelta(minutes=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.key_file.write_text(json.dumps(keys))
            return httpx.Response(200, json={"status": "renewed"})
        api = "inference" if request.url.port == 8080 else "management"
        if token != keys[api]["key"]:
            return httpx.Response(400, json={"code": 400, "type": "InvalidKeyException", "message": "Token failed"})
        return self.answer(request)

    def paths(self) -> list[str]:
        return [r.url.path for r in self.requests]


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    return Fake(key_file)


def client(fake: Fake, **kwargs: Any) -> Client:
    return Client("http://ts:8080", "http://ts:8081", fake.key_file, transport=httpx.MockTransport(fake), **kwargs)


def async_client(fake: Fake, **kwargs: Any) -> AsyncClient:
    return AsyncClient("http://ts:8080", "http://ts:8081", fake.key_file, transport=httpx.MockTransport(fake), **kwargs)


# --- parameters reach the handler ------------------------------------------------------------------------


def test_parameters_travel_as_form_fields_beside_the_photo(fake: Fake) -> None:
    with client(fake) as ts:
        answer = ts.predict("similar", "1.0", PHOTO, "image/jpeg", {"k": "3", "embedding": "true"})
    assert answer.status == 200 and answer.batch_size == 4 and answer.json() == ITEMS
    sent = fake.requests[-1]
    assert sent.url.path == "/predictions/similar/1.0" and not sent.url.query  # TorchServe drops the query string
    assert form_fields(sent) == {"data": PHOTO, "k": b"3", "embedding": b"true"}


def test_without_parameters_the_photo_is_the_body(fake: Fake) -> None:
    with client(fake) as ts:
        ts.predict("resnet18", None, PHOTO, "image/jpeg")
    assert fake.requests[-1].content == PHOTO and fake.requests[-1].headers["content-type"] == "image/jpeg"


def test_servingctl_golden_check_sends_the_cases_parameters_as_form_fields(fake: Fake, tmp_path: Path) -> None:
    settings = Settings.from_values({"key_file": str(fake.key_file), "inference_url": "http://ts:8080",
                                     "management_url": "http://ts:8081"}, {})
    cases = (GoldenCase("chelsea", NearestItemIs("chelsea-01"), params=(("k", "3"),)),
             GoldenCase("flower", NearestItemIs(None), params=(("embedding", "true"),)))
    ts = TorchServe(settings, httpx.MockTransport(fake))
    assert check_through_torchserve(ts, "similar", "1.0", cases, lambda name: name.encode()) == []
    sent = [form_fields(r) for r in fake.requests if r.url.path.startswith("/predictions")]
    assert sent == [{"data": b"chelsea", "k": b"3"}, {"data": b"flower", "embedding": b"true"}]


# --- keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("life", "renewed_within"), [
    (timedelta(minutes=60), timedelta(minutes=2)),  # at most 2 min before expiry
    (timedelta(seconds=60), timedelta(seconds=15)),  # a quarter of the lifetime
    (timedelta(seconds=8), timedelta(seconds=5)),  # at least 5 s before
])
def test_renewal_rule(life: timedelta, renewed_within: timedelta) -> None:
    now = datetime.now(UTC)
    issued, expires = now - life + renewed_within, now + renewed_within
    assert renewal_due(issued - timedelta(seconds=1), expires - timedelta(seconds=1), now)
    assert not renewal_due(issued + timedelta(seconds=1), expires + timedelta(seconds=1), now)
    assert not renewal_due(issued, None, now)


def test_a_key_due_is_renewed_with_the_api_key_first(fake: Fake) -> None:
    write_keys(fake.key_file, left=timedelta(seconds=90))
    with client(fake) as ts:
        assert ts.predict("m", None, PHOTO, "image/jpeg").status == 200
    assert fake.paths() == ["/token", "/predictions/m"]
    assert fake.requests[-1].headers["authorization"] == "Bearer inf-1-renewed"


def test_concurrent_requests_renew_once(fake: Fake) -> None:
    write_keys(fake.key_file, left=timedelta(seconds=90))

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)  # every request in flight at once, the renewal too
        return fake(request)

    async def burst() -> None:
        ts = AsyncClient("http://ts:8080", "http://ts:8081", fake.key_file, transport=httpx.MockTransport(slow))
        await asyncio.gather(*(ts.predict("m", None, PHOTO, "image/jpeg") for _ in range(5)))
        await ts.close()

    asyncio.run(burst())
    assert sorted(fake.paths()) == ["/predictions/m"] * 5 + ["/token"]  # the others waited for the new key
    assert {r.headers["authorization"] for r in fake.requests[1:]} == {"Bearer inf-1-renewed"}


def test_a_key_renewed_elsewhere_is_picked_up_on_retry(fake: Fake) -> None:
    with client(fake) as ts:
        ts.ping()
        keys = json.loads(fake.key_file.read_text())
        keys["inference"]["key"] = "inf-2"
        mtime = fake.key_file.stat().st_mtime
        fake.key_file.write_text(json.dumps(keys))
        os.utime(fake.key_file, (mtime, mtime))  # same mtime: only the refusal makes the file be read again
        assert ts.ping().status == 200
    assert [r.headers["authorization"] for r in fake.requests[1:]] == ["Bearer inf-1", "Bearer inf-2"]


@pytest.mark.parametrize("attempts", [2, 3])
def test_a_key_refused_on_every_attempt_is_key_rejected(fake: Fake, attempts: int) -> None:
    fake.answer = lambda r: httpx.Response(400, json={"type": "InvalidKeyException"})
    with client(fake, key_attempts=attempts) as ts, pytest.raises(torchserve.KeyRejected) as info:
        ts.models()
    assert fake.paths() == ["/models"] * attempts
    assert info.value.api == "management" and "key file may be stale" in info.value.message


def test_a_missing_key_file_is_unavailable(fake: Fake) -> None:
    fake.key_file.unlink()
    with client(fake) as ts, pytest.raises(torchserve.KeyFileUnreadable, match="is TorchServe running"):
        ts.ping()
    assert fake.requests == []


# --- answers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 507])
def test_a_failed_worker_is_unavailable(fake: Fake, status: int) -> None:
    fake.answer = lambda r: httpx.Response(status, json={"code": status, "type": "X", "message": "Worker died."})
    with client(fake) as ts, pytest.raises(torchserve.WorkerFailed) as info:
        ts.predict("m", None, PHOTO, "image/jpeg")
    assert isinstance(info.value, torchserve.TorchServeUnavailable)
    assert info.value.status == status and "Worker died." in info.value.message


def test_a_handler_error_is_an_answer(fake: Fake) -> None:
    fake.answer = lambda r: httpx.Response(400, json={"code": 400, "type": "BadInput", "message": "not a photo"})
    with client(fake) as ts:
        assert ts.predict("m", None, PHOTO, "image/jpeg").status == 400


@pytest.mark.parametrize(("failure", "error"), [
    (httpx.ConnectError, torchserve.TorchServeUnreachable),
    (httpx.ReadTimeout, torchserve.TorchServeTimeout),
])
def test_transport_failures(fake: Fake, failure: type[httpx.RequestError], error: type[Exception]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise failure("no", request=request)

    fake.answer = fail
    with client(fake, timeout_s=7) as ts, pytest.raises(error) as info:
        ts.predict("m", "1.0", PHOTO, "image/jpeg")
    assert "ts:8080" in str(info.value)
    assert fake.requests[-1].extensions["timeout"]["read"] == 7


def test_management_404_is_not_found_other_refusals_say_what_torchserve_said(fake: Fake) -> None:
    fake.answer = lambda r: httpx.Response(404, json={"type": "ModelVersionNotFoundException", "message": "no"})
    with client(fake) as ts:
        with pytest.raises(torchserve.NotFound) as info:
            ts.set_default("m", "9.9")
        assert (info.value.model, info.value.version, info.value.kind) == ("m", "9.9", "ModelVersionNotFoundException")
        fake.answer = lambda r: httpx.Response(409, json={"type": "ConflictStatusException", "message": "registered"})
        with pytest.raises(torchserve.ManagementRefused, match="409 to POST /models: registered"):
            ts.register("m_v1.0.mar", 1, {"batch_size": 4})
    assert fake.requests[-1].url.params["batch_size"] == "4"
    assert fake.requests[-1].extensions["timeout"]["read"] == 180  # synchronous: waits for workers


def test_describe_all_marks_the_default_and_the_default_version_is_cached(fake: Fake) -> None:
    def management(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/models":
            return httpx.Response(200, json={"models": [{"modelName": "m"}]})
        if request.url.path == "/models/m/all":
            return httpx.Response(200, json=[{"modelName": "m", "modelVersion": v} for v in ("1.0", "2.0")])
        return httpx.Response(200, json=[{"modelName": "m", "modelVersion": "2.0"}])

    fake.answer = management
    with client(fake) as ts:
        described = ts.describe_all()
        assert [(d["modelVersion"], d["isDefault"]) for d in described] == [("1.0", False), ("2.0", True)]
        assert ts.default_version("m") == ts.default_version("m") == "2.0"
        assert fake.paths().count("/models/m") == 2  # describe_all's, then one for both default_version calls
        fake.answer = lambda r: httpx.Response(500, text="oops")
        assert ts.default_version("other") is None


def test_both_faces_send_the_same_requests(fake: Fake) -> None:
    with client(fake) as ts:
        ts.predict("similar", "1.0", PHOTO, "image/jpeg", {"k": "2"})
    sync = fake.requests[-1]

    async def once() -> None:
        ts = async_client(fake)
        await ts.predict("similar", "1.0", PHOTO, "image/jpeg", {"k": "2"})
        await ts.close()

    asyncio.run(once())
    sent = fake.requests[-1]
    assert (sent.method, sent.url, sent.headers["authorization"]) == (sync.method, sync.url, sync.headers["authorization"])
    assert form_fields(sent) == form_fields(sync)


def test_a_non_ascii_digit_batch_size_is_ignored_not_a_crash() -> None:
    from stack.torchserve.protocol import inference_answer

    answer = inference_answer(httpx.Response(200, headers={"X-Batch-Size": "\u00b2".encode("latin-1")}, content=b"{}"))
    assert answer.batch_size is None
