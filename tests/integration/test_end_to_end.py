"""A photo in, a batched TorchServe prediction out, the result in PostgreSQL and InfluxDB."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from stack.services import TorchServe
from tests.integration.conftest import LiveStack, json_body

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
# What EfficientNet-Lite0 must answer for each bundled photo (top-1 within these labels).
KNOWN_ANSWERS = {
    "chelsea": CAT_LABELS,
    "coffee": {"espresso", "cup", "coffee mug"},
    "flower": {"daisy"},
    "rocket": {"missile", "projectile", "space shuttle"},
    "china": {"palace", "monastery", "bell cote", "boathouse", "castle", "pagoda", "stupa", "dome"},
}


NO_CACHE = {"Cache-Control": "no-cache"}


def _send_together(url: str, bodies: list[bytes], headers: dict[str, str] | None = None) -> list[requests.Response]:
    """Send every body at once (a barrier releases them together) so TorchServe can batch them."""
    barrier = threading.Barrier(len(bodies))

    def send(body: bytes) -> requests.Response:
        barrier.wait()
        return requests.put(url, data=body, headers={**NO_CACHE, **(headers or {})}, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def test_photo_through_bridge_is_predicted_and_recorded(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    photo = photos["chelsea"]
    response = requests.put(f"{live_stack.bridge}/predictions/classifier", data=photo, headers=NO_CACHE, timeout=30)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json_body(response)
    predictions = body["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["label"] in CAT_LABELS
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    assert body["model"] == {"name": "classifier", "version": "1.0"}
    request_id = response.headers["x-request-id"]

    row = live_stack.row(request_id)
    assert row is not None, "no PostgreSQL row for the prediction"
    assert row["model"] == "classifier" and row["model_version"] == "1.0" and row["status"] == 200
    assert row["top_label"] == predictions[0]["label"]
    assert row["top_score"] == pytest.approx(predictions[0]["score"])
    assert row["input_sha256"] == hashlib.sha256(photo).hexdigest()
    assert row["input_bytes"] == len(photo)
    assert row["output"]["predictions"] == predictions
    assert 0 < row["latency_ms"] < 30_000

    point = live_stack.point(request_id)
    assert point is not None, "no InfluxDB point for the prediction"
    assert point["model"] == "classifier" and point["version"] == "1.0" and point["status"] == "200"
    assert point["latency_ms"] == pytest.approx(row["latency_ms"])
    assert point["input_bytes"] == len(photo)


def test_failures_are_recorded_too(live_stack: LiveStack) -> None:
    response = requests.post(f"{live_stack.bridge}/predictions/resnet18", data=b"definitely not a photo", timeout=30)

    assert response.status_code == 400
    body = json_body(response)
    assert body["type"] == "InvalidImage" and "not a recognised image" in body["message"]
    row = live_stack.row(response.headers["x-request-id"])
    assert row is not None and row["status"] == 400 and row["model"] == "resnet18"
    assert "not a recognised image" in row["error"]
    assert live_stack.point(response.headers["x-request-id"]) is not None


def test_mixed_batch_good_photos_answered_bad_ones_get_their_own_4xx(
    live_stack: LiveStack, photos: dict[str, bytes]
) -> None:
    good = photos["chelsea"]
    bad = [b"", b"hello", good[: len(good) // 2]]  # empty, text, truncated JPEG
    bodies = [good] * 12 + [bad[1], bad[2], bad[1], bad[2]]
    bodies.append(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)  # a broken PNG

    responses = _send_together(f"{live_stack.bridge}/predictions/resnet18", bodies)

    statuses = [r.status_code for r in responses]
    assert statuses[:12] == [200] * 12, statuses
    assert all(400 <= s < 500 for s in statuses[12:]), statuses
    labels = {json_body(r)["predictions"][0]["label"] for r in responses[:12]}
    assert len(labels) == 1, "the same photo must get the same answer whatever its batch-mates"
    batch_sizes = [int(r.headers["x-batch-size"]) for r in responses if "x-batch-size" in r.headers]
    assert max(batch_sizes) > 1, f"no batch larger than 1 formed: {batch_sizes}"
    for response in responses[12:]:
        error = json_body(response)
        assert error["code"] == response.status_code and error["message"]
    request_ids = [r.headers["x-request-id"] for r in responses]
    assert all(live_stack.row(rid) is not None for rid in request_ids)


def test_known_photos_get_their_own_answers_when_batched_together(
    live_stack: LiveStack, photos: dict[str, bytes]
) -> None:
    names = list(KNOWN_ANSWERS) * 4
    responses = _send_together(f"{live_stack.bridge}/predictions/classifier", [photos[n] for n in names])

    wrong = []
    for name, response in zip(names, responses):
        assert response.status_code == 200, response.text
        top1 = json_body(response)["predictions"][0]["label"]
        if top1 not in KNOWN_ANSWERS[name]:
            wrong.append((name, top1))
    assert not wrong, f"answers that belong to another photo or are wrong: {wrong}"
    assert max(int(r.headers["x-batch-size"]) for r in responses) > 1


def test_torchserve_direct_batches_with_per_item_errors(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    bodies = [photos["coffee"]] * 6 + [b"not an image", b"GIF89a broken"]
    responses = _send_together(
        f"{live_stack.torchserve}/predictions/classifier", bodies, headers=live_stack.inference_headers()
    )

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 6 + [400, 400], statuses
    assert {json_body(r)["predictions"][0]["label"] for r in responses[:6]} <= KNOWN_ANSWERS["coffee"]


def test_torchserve_logs_a_prediction_once_in_its_access_log_and_nowhere_else(
    live_stack: LiveStack, photos: dict[str, bytes]
) -> None:
    """log4j2.xml: TorchServe's built-in logging wrote ~33 lines per prediction (ts_log.log, stdout, twice each)."""
    torchserve = TorchServe()
    files = {name: torchserve.logs / name for name in ("access_log.log", "ts_log.log", "model_log.log")}
    files["stdout"] = torchserve.log_file
    url = f"{live_stack.torchserve}/predictions/classifier"
    for photo in list(photos.values())[:2]:  # warm: a first prediction may register its metrics (one-off lines)
        assert requests.put(url, data=photo, headers=live_stack.inference_headers(), timeout=60).status_code == 200

    def lines() -> dict[str, int]:
        return {name: len(path.read_bytes().splitlines()) for name, path in files.items()}

    before = lines()
    for photo in list(photos.values()) * 2:
        assert requests.put(url, data=photo, headers=live_stack.inference_headers(), timeout=60).status_code == 200
    time.sleep(0.5)  # the frontend's appenders write as the answers go out; let a late line land
    grown = {name: count - before[name] for name, count in lines().items()}
    assert grown["access_log.log"] >= 2 * len(photos), grown  # one per prediction (plus the bridge's scrapes)
    assert grown["ts_log.log"] < 3 and grown["stdout"] < 3 and grown["model_log.log"] < 3, grown


def test_torchserve_refuses_requests_without_a_valid_token(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    url = f"{live_stack.torchserve}/predictions/classifier"
    assert requests.put(url, data=photos["coffee"], timeout=10).status_code == 400
    wrong = {"Authorization": "Bearer wrong-token"}
    assert requests.put(url, data=photos["coffee"], headers=wrong, timeout=10).status_code == 400


def test_bridge_ping_reports_torchserve_and_recording(live_stack: LiveStack) -> None:
    response = requests.get(f"{live_stack.bridge}/ping", timeout=10)
    assert response.status_code == 200
    body = json_body(response)
    assert body["status"] == "Healthy" and body["torchserve"] == "Healthy"
    assert body["recording"]["postgres"] == "ok"
    assert body["recording"]["spool_segments"] == 0


def test_specific_version_and_unknown_model(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    ok = requests.post(f"{live_stack.bridge}/predictions/resnet18/1.0", data=photos["rocket"], timeout=30)
    assert ok.status_code == 200 and ok.headers["x-model-version"] == "1.0"

    missing = requests.post(f"{live_stack.bridge}/predictions/no-such-model", data=photos["rocket"], timeout=30)
    assert missing.status_code == 404
    assert "no-such-model" in json_body(missing)["message"]
    assert live_stack.row(missing.headers["x-request-id"])["status"] == 404


def test_multipart_upload_with_one_file(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    response = requests.post(
        f"{live_stack.bridge}/predictions/classifier",
        files={"file": ("cat.jpg", photos["chelsea"], "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert json_body(response)["predictions"][0]["label"] in CAT_LABELS


def unique_photo(jpeg: bytes) -> bytes:
    """The same pixels as ``jpeg``, never seen before: a JPEG comment (COM segment) holding a fresh uuid4."""
    assert jpeg[:2] == b"\xff\xd8", "not a JPEG"
    comment = f"never seen before: {uuid.uuid4()}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def test_same_photo_same_version_is_answered_from_the_record(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    photo = unique_photo(photos["rocket"])  # unique across runs against the same PostgreSQL
    url = f"{live_stack.bridge}/predictions/classifier"
    first = requests.put(url, data=photo, timeout=30)
    assert first.status_code == 200 and "x-cache" not in first.headers
    assert live_stack.row(first.headers["x-request-id"]) is not None  # recorded → cacheable

    second = requests.put(url, data=photo, timeout=30)
    assert second.status_code == 200 and second.headers["x-cache"] == "HIT"
    assert json_body(second)["cached"] is True
    assert json_body(second)["predictions"] == json_body(first)["predictions"]
    row = live_stack.row(second.headers["x-request-id"])
    assert row is not None and row["source"] == "cache" and row["model_version"] == "1.0"

    bypass = requests.put(url, data=photo, headers=NO_CACHE, timeout=30)
    assert "x-cache" not in bypass.headers and "cached" not in json_body(bypass)


def test_price_and_similar_items_with_parameters(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    price = requests.put(f"{live_stack.bridge}/predictions/price", data=photos["chelsea"], headers=NO_CACHE, timeout=30)
    assert price.status_code == 200
    body = json_body(price)
    assert body["currency"] == "EUR" and 45 <= body["price"] <= 180
    assert body["interval"]["low"] < body["price"] < body["interval"]["high"] and body["interval"]["coverage"] == 0.8

    url = f"{live_stack.bridge}/predictions/similar"
    three = requests.put(url, params={"k": "3", "embedding": "true"}, data=photos["chelsea"], timeout=30)
    assert three.status_code == 200, three.text
    body = json_body(three)
    assert body["items"][0]["id"] == "chelsea-01" and len(body["items"]) == 3
    assert len(body["embedding"]) == 1280
    assert requests.put(url, params={"k": "0"}, data=photos["chelsea"], timeout=30).status_code == 400
    batched = _send_together(url, [photos["coffee"], photos["flower"], b"broken", photos["rocket"]])
    assert [r.status_code for r in batched] == [200, 200, 400, 200]
    assert [json_body(r)["items"][0]["id"].split("-")[0] for r in (batched[0], batched[1], batched[3])] == [
        "coffee", "flower", "rocket"]


def test_requests_with_parameters_are_never_answered_from_the_cache(
    live_stack: LiveStack, photos: dict[str, bytes]
) -> None:
    url = f"{live_stack.bridge}/predictions/similar"
    photo = unique_photo(photos["chelsea"])
    answers = [requests.put(url, params={"k": "3"}, data=photo, timeout=30) for _ in range(2)]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert "x-cache" not in answer.headers and "cached" not in json_body(answer), "answered from the cache"
        assert "x-batch-size" in answer.headers, "the model ran (only a real run has a batch)"
        assert len(json_body(answer)["items"]) == 3
        row = live_stack.row(answer.headers["x-request-id"])
        assert row is not None and row["source"] == "sync" and row["batch_size"] is not None
    assert json_body(answers[0])["items"] == json_body(answers[1])["items"]
