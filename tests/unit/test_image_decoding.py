"""image_decoding: untrusted bytes → upright 8-bit RGB → model tensor, or an ImageError with its HTTP status."""

from __future__ import annotations

import functools
import io
import json
import random
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import image_decoding
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_decoding import (
    DecodeLimits,
    EmptyImage,
    ImageDimensionsTooLarge,
    ImageError,
    ImageTooLarge,
    TensorSpec,
    decode_image,
    image_to_tensor,
    to_tensor,
)
from PIL import Image, ImageFile

HANDLERS_DIR = Path(image_decoding.__file__).resolve().parent
WHITE = (255, 255, 255)
EXIF_ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """``img`` saved as ``fmt`` bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def pixels(data: bytes, **kwargs: Any) -> np.ndarray:
    """Decode and return the HxWx3 uint8 array, checking the mode on the way."""
    img = decode_image(data, **kwargs)
    assert img.mode == "RGB"
    return np.asarray(img)


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    """A smooth RGB image: lossy codecs reproduce it within a few levels."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2).astype(np.uint8))


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Random RGB pixels: every rotation or flip of them is different."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def raw_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG written by hand, so the header can claim any size; ``idat`` defaults to no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(b"") if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@functools.cache
def chelsea_jpeg() -> bytes:
    """A real photo (scikit-image's cat) as JPEG bytes."""
    from archive_scripts.photos import sample_photo

    return sample_photo("chelsea")


# --- bodies that are not images -----------------------------------------------------------------------


def test_zero_bytes_is_400_empty_image() -> None:
    with pytest.raises(EmptyImage) as info:
        decode_image(b"")
    assert info.value.status == 400
    assert isinstance(info.value, ImageError)


@pytest.mark.parametrize(
    "body",
    [
        b"hello, this is not an image\n",
        b'{"image": "aGVsbG8="}',
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
        bytes(range(256)) * 4,
    ],
    ids=["text", "json", "svg", "binary-noise"],
)
def test_non_image_bytes_are_400(body: bytes) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(body)
    assert info.value.status == 400
    assert "not a recognised image" in info.value.message


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999], ids=["half", "90pct", "missing-tail"])
def test_truncated_jpeg_is_400(keep: float) -> None:
    photo = chelsea_jpeg()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageError) as info:
        decode_image(photo[: int(len(photo) * keep)])
    assert info.value.status == 400
    assert "truncated" in info.value.message
    # The untruncated photo decodes: the cut, not the photo, is what is refused.
    assert decode_image(photo).size == (451, 300)


@pytest.mark.parametrize("fmt", ["ICO", "EPS", "PCX", "TGA", "PPM", "SGI"])
def test_formats_outside_the_allow_list_are_400_even_though_pillow_reads_them(fmt: str) -> None:
    data = encode(gradient(32, 32), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # a valid file of that format
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.status == 400
    assert "JPEG, PNG, GIF, WebP, BMP, TIFF" in info.value.message


# --- size limits --------------------------------------------------------------------------------------


def test_body_over_max_bytes_is_413_just_under_is_decoded() -> None:
    data = encode(gradient(), "PNG")
    assert decode_image(data, DecodeLimits(max_bytes=len(data))).size == (64, 48)
    with pytest.raises(ImageTooLarge) as info:
        decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
    assert info.value.status == 413


def test_byte_limit_is_checked_before_parsing() -> None:
    # Garbage over the limit is "too large" (413), not "not an image" (400): nothing was parsed.
    with pytest.raises(ImageTooLarge):
        decode_image(b"\x00" * 101, DecodeLimits(max_bytes=100))


@pytest.mark.parametrize(
    ("width", "height"),
    [(50_000, 50_000), (20_000, 8), (8, 20_000), (8_000, 6_000)],
    ids=["pillow-bomb-error", "too-wide", "too-tall", "over-max-pixels"],
)
def test_huge_dimensions_are_422_from_the_header_alone(width: int, height: int) -> None:
    # The file holds no pixel data at all: decoding it would fail as truncated (400), so a 422 proves
    # the refusal came from the header, before any pixel buffer was allocated.
    with pytest.raises(ImageDimensionsTooLarge) as info:
        decode_image(raw_png(width, height))
    assert info.value.status == 422


def test_header_only_png_of_normal_size_is_400_truncated() -> None:
    """Control for the test above: the same construction with acceptable dimensions fails decoding."""
    with pytest.raises(ImageError) as info:
        decode_image(raw_png(64, 64))
    assert info.value.status == 400


@functools.cache
def bilevel_bomb() -> bytes:
    """A complete, valid 12000×12000 1-bit PNG of zeros: ~20 KB that would decode to 432 MB of RGB."""
    side = 12_000
    row = b"\x00" + bytes(side // 8)  # filter byte + packed bits
    return raw_png(side, side, bit_depth=1, color_type=0, idat=zlib.compress(row * side, 9))


def test_decompression_bomb_is_422() -> None:
    data = bilevel_bomb()
    assert len(data) < 100_000
    with pytest.raises(ImageDimensionsTooLarge) as info:
        decode_image(data)
    assert info.value.status == 422


def test_pillow_bomb_warning_is_an_error_even_with_our_limits_lifted() -> None:
    # 144 M pixels: over Pillow's warning threshold (~89 M), under its hard error (~179 M).
    assert Image.MAX_IMAGE_PIXELS < 12_000**2 < 2 * Image.MAX_IMAGE_PIXELS
    lifted = DecodeLimits(max_bytes=10**9, max_pixels=10**12, max_side=10**6)
    with pytest.raises(ImageDimensionsTooLarge) as info:
        decode_image(bilevel_bomb(), lifted)
    assert info.value.status == 422


def test_image_within_custom_pixel_limits_decodes_and_just_over_is_422() -> None:
    data = encode(gradient(100, 50), "PNG")
    assert decode_image(data, DecodeLimits(max_pixels=5000, max_side=100)).size == (100, 50)
    with pytest.raises(ImageDimensionsTooLarge):
        decode_image(data, DecodeLimits(max_pixels=4999))
    with pytest.raises(ImageDimensionsTooLarge):
        decode_image(data, DecodeLimits(max_side=99))


def test_extreme_aspect_ratio_does_not_allocate_gigabytes() -> None:
    """A 1×16384 strip (within every limit, ~150 bytes as PNG) must not be upscaled whole to 256×4 M pixels."""
    script = textwrap.dedent(
        """
        import io, json, resource, sys
        sys.path.insert(0, sys.argv[1])
        from PIL import Image
        from image_decoding import TensorSpec, image_to_tensor
        buffer = io.BytesIO()
        Image.new("RGB", (1, 16384), (200, 100, 50)).save(buffer, "PNG")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tensor = image_to_tensor(buffer.getvalue(), TensorSpec(mean=(0, 0, 0), std=(1, 1, 1)))
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(json.dumps({"bytes": len(buffer.getvalue()), "shape": list(tensor.shape), "grown_mib": grown_kib / 1024,
                          "colours": tensor.mul(255).round().flatten(1).unique(dim=1).tolist()}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(HANDLERS_DIR)], check=False, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["bytes"] < 1000
    assert result["shape"] == [3, 224, 224]
    assert result["grown_mib"] < 256, f"peak memory grew by {result['grown_mib']:.0f} MiB for a 1×16384 image"
    assert result["colours"] == [[200.0], [100.0], [50.0]]


# --- modes → RGB --------------------------------------------------------------------------------------


def test_cmyk_jpeg_converts_to_the_same_colours() -> None:
    rgb = gradient()
    data = encode(rgb.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    diff = np.abs(pixels(data).astype(int) - np.asarray(rgb, dtype=int))
    assert diff.mean() < 2 and diff.max() <= 16


def test_cmyk_black_channel_darkens() -> None:
    zeros = Image.new("L", (16, 16), 0)
    cmyk = Image.merge("CMYK", (zeros, zeros, zeros, Image.new("L", (16, 16), 128)))
    out = pixels(encode(cmyk, "JPEG", quality=95))
    assert np.all(np.abs(out.astype(int) - 127) <= 2)


def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = pixels(encode(Image.fromarray(gray), "PNG"))
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], gray)


def test_bilevel_is_black_and_white() -> None:
    bits = np.zeros((8, 8), dtype=bool)
    bits[:, 4:] = True
    out = pixels(encode(Image.fromarray(bits), "PNG"))
    assert np.all(out[:, :4] == 0) and np.all(out[:, 4:] == 255)


def test_palette_without_transparency_keeps_its_colours() -> None:
    quantized = Image.fromarray(noise(32, 24)).quantize(16)
    data = encode(quantized, "PNG")
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" not in opened.info
    np.testing.assert_array_equal(pixels(data), np.asarray(quantized.convert("RGB")))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    # Index 0 is black *and* transparent: it must come out white, not black.
    indices = np.array([[0, 1, 2, 0], [2, 1, 0, 1]], dtype=np.uint8)
    img = Image.frombytes("P", (4, 2), indices.tobytes())
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 - 3) * 3)
    data = encode(img, fmt, transparency=0)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    out = pixels(data)
    expected = np.array([WHITE, (255, 0, 0), (0, 0, 255)], dtype=np.uint8)[indices]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_rgba_is_composited_over_white(fmt: str) -> None:
    rgba = np.array([[(255, 0, 0, 0), (0, 0, 255, 255), (255, 0, 0, 128), (0, 0, 0, 0)]], dtype=np.uint8)
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    data = encode(Image.fromarray(rgba), fmt, **params)
    assert Image.open(io.BytesIO(data)).mode == "RGBA"
    out = pixels(data).astype(int)[0]
    np.testing.assert_array_equal(out[0], WHITE)  # fully transparent red → background
    np.testing.assert_array_equal(out[1], (0, 0, 255))  # opaque blue stays blue
    assert out[2][0] == 255 and abs(out[2][1] - 127) <= 1 and abs(out[2][2] - 127) <= 1  # half red over white
    np.testing.assert_array_equal(out[3], WHITE)  # transparent black is not black


def test_gray_with_alpha_is_composited_over_white() -> None:
    la = np.array([[(0, 0), (0, 255), (0, 128), (200, 255)]], dtype=np.uint8)
    data = encode(Image.fromarray(la), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "LA"
    out = pixels(data).astype(int)[0]
    np.testing.assert_array_equal(out[0], WHITE)
    np.testing.assert_array_equal(out[1], (0, 0, 0))
    assert np.all(np.abs(out[2] - 127) <= 1)
    np.testing.assert_array_equal(out[3], (200, 200, 200))


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I;16B")])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt: str, mode: str) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.frombytes(mode, (4, 1), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    data = encode(img, fmt)
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I;16B", "I")  # really 16-bit on disk
    out = pixels(data)[0]
    for channel in range(3):
        np.testing.assert_array_equal(out[:, channel], [0, 1, 128, 255])


def test_16_bit_png_from_a_real_photo_matches_its_8_bit_version() -> None:
    gray8 = np.asarray(Image.open(io.BytesIO(chelsea_jpeg())).convert("L"))
    gray16 = gray8.astype(np.uint16) * 257  # 0..255 → 0..65535, exactly invertible
    out = pixels(encode(Image.fromarray(gray16), "PNG"))
    np.testing.assert_array_equal(out[:, :, 0], gray8)


# --- EXIF orientation ---------------------------------------------------------------------------------

# Pixels as stored for an upright image ``u``, per EXIF orientation (6: "rotate 90° clockwise to view",
# 8: "rotate 90° counter-clockwise to view", 3: "rotate 180°").
STORED_FOR_ORIENTATION = {
    3: lambda u: np.rot90(u, 2),
    6: lambda u: np.rot90(u, 1),
    8: lambda u: np.rot90(u, -1),
}


def with_orientation(stored: np.ndarray, orientation: int, fmt: str) -> bytes:
    """``stored`` pixels saved as ``fmt`` with an EXIF orientation tag."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    params: dict[str, Any] = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    return encode(Image.fromarray(np.ascontiguousarray(stored)), fmt, exif=exif.tobytes(), **params)


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_exif_orientation_is_applied_exactly(orientation: int, fmt: str) -> None:
    upright = noise(48, 32)
    stored = STORED_FOR_ORIENTATION[orientation](upright)
    out = pixels(with_orientation(stored, orientation, fmt))
    assert out.shape == upright.shape  # 48 wide, 32 tall, whatever the stored layout
    np.testing.assert_array_equal(out, upright)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_of_a_jpeg_photo(orientation: int) -> None:
    upright = np.asarray(Image.open(io.BytesIO(chelsea_jpeg())))  # 300 tall, 451 wide
    data = with_orientation(STORED_FOR_ORIENTATION[orientation](upright), orientation, "JPEG")
    assert Image.open(io.BytesIO(data)).size == (300, 451)  # stored portrait
    out = pixels(data).astype(int)
    assert out.shape == upright.shape
    assert np.abs(out - upright).mean() < 4
    # The other rotation would be upside down: far off.
    other = 8 if orientation == 6 else 6
    wrong = np.rot90(STORED_FOR_ORIENTATION[orientation](upright), 1 if other == 8 else -1)
    assert np.abs(out - wrong.astype(int)).mean() > 20


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_does_not_fail_a_good_photo() -> None:
    base = gradient()
    data = encode(base, "PNG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f garbage")
    np.testing.assert_array_equal(pixels(data), np.asarray(base))


# --- formats and frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 6),
        ("JPEG", {"quality": 95}, 2),
    ],
    ids=["png", "bmp", "tiff", "tiff-lzw", "webp-lossless", "webp-lossy", "jpeg"],
)
def test_allowed_formats_decode_to_their_pixels(fmt: str, params: dict[str, Any], tolerance: int) -> None:
    base = gradient()
    data = encode(base, fmt, **params)
    assert Image.open(io.BytesIO(data)).format == fmt
    diff = np.abs(pixels(data).astype(int) - np.asarray(base, dtype=int))
    assert diff.mean() <= tolerance


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_uses_its_first_frame(fmt: str) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (20, 10), c) for c in colours]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = pixels(data)
    assert out.shape == (10, 20, 3)
    assert np.all(out == colours[0])


def test_large_jpeg_is_decoded_at_reduced_scale_but_not_below_min_size() -> None:
    data = encode(gradient(2048, 1536), "JPEG", quality=85)
    assert decode_image(data).size == (2048, 1536)
    width, height = decode_image(data, min_size=256).size
    assert 256 <= height < 1536 and 256 <= width < 2048
    assert width / height == pytest.approx(2048 / 1536, rel=0.01)


# --- tensors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"),
    [(600, 200), (200, 600), (13, 7), (1, 1), (224, 224), (256, 300)],
    ids=["wide", "tall", "tiny", "one-pixel", "exactly-crop", "near-resize"],
)
def test_to_tensor_shape_is_3_by_crop_by_crop(width: int, height: int) -> None:
    img = Image.fromarray(noise(width, height))
    for spec in (TensorSpec(), TensorSpec(resize=72, crop=64)):
        tensor = to_tensor(img, spec)
        assert tensor.shape == (3, spec.crop, spec.crop)
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("tall", [False, True], ids=["wide", "tall"])
def test_to_tensor_crops_the_centre(tall: bool) -> None:
    # Three bands along the long side: the centre crop must see only the middle (green) band.
    bands = np.zeros((100, 300, 3), dtype=np.uint8)
    bands[:, :100] = (255, 0, 0)
    bands[:, 100:200] = (0, 255, 0)
    bands[:, 200:] = (0, 0, 255)
    img = Image.fromarray(np.ascontiguousarray(bands.transpose(1, 0, 2)) if tall else bands)
    tensor = to_tensor(img, TensorSpec(mean=(0, 0, 0), std=(1, 1, 1)))
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 224, 224)
    torch.testing.assert_close(tensor, green)


def test_to_tensor_keeps_the_aspect_ratio_of_the_content() -> None:
    # A 200×100 image with a 50×50 black square in the centre: scaled uniformly, it stays square.
    arr = np.full((100, 200, 3), 255, dtype=np.uint8)
    arr[25:75, 75:125] = 0
    tensor = to_tensor(Image.fromarray(arr), TensorSpec(resize=200, crop=200, mean=(0, 0, 0), std=(1, 1, 1)))
    dark = tensor[0] < 0.5
    rows = torch.nonzero(dark.any(dim=1)).flatten()
    cols = torch.nonzero(dark.any(dim=0)).flatten()
    assert abs((rows.max() - rows.min()).item() - (cols.max() - cols.min()).item()) <= 1
    assert 95 <= (rows.max() - rows.min()).item() <= 102  # 50 px × (200 / 100)


def test_to_tensor_normalises_with_the_spec_mean_and_std() -> None:
    colour = (10, 128, 250)
    spec = TensorSpec(resize=40, crop=32, mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    tensor = to_tensor(Image.new("RGB", (50, 30), colour), spec)
    for channel in range(3):
        expected = (colour[channel] / 255 - spec.mean[channel]) / spec.std[channel]
        torch.testing.assert_close(tensor[channel], torch.full((32, 32), expected), atol=1e-6, rtol=0)


def test_image_to_tensor_decodes_orients_and_normalises() -> None:
    upright = np.zeros((40, 80, 3), dtype=np.uint8)
    upright[:, :40] = (255, 0, 0)  # left half red, right half blue
    upright[:, 40:] = (0, 0, 255)
    data = with_orientation(STORED_FOR_ORIENTATION[6](upright), 6, "PNG")
    spec = TensorSpec(resize=32, crop=32, mean=(0, 0, 0), std=(1, 1, 1))
    tensor = image_to_tensor(data, spec)
    assert tensor.shape == (3, 32, 32)
    assert tensor[0, :, :10].min() > 0.99 and tensor[2, :, :10].max() < 0.01  # left is red
    assert tensor[2, :, -10:].min() > 0.99 and tensor[0, :, -10:].max() < 0.01  # right is blue


def test_image_to_tensor_applies_the_limits() -> None:
    with pytest.raises(ImageDimensionsTooLarge):
        image_to_tensor(raw_png(30_000, 10), TensorSpec())
    with pytest.raises(ImageTooLarge):
        image_to_tensor(encode(gradient(), "PNG"), TensorSpec(), DecodeLimits(max_bytes=10))


# --- anything else is an ImageError -------------------------------------------------------------------


def png_with_short_idat() -> bytes:
    """A PNG whose IDAT length is understated: the rest of the pixel data reads as a broken chunk."""
    png = encode(Image.fromarray(noise(24, 16)), "PNG")
    at = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[at - 4 : at])
    return png[: at - 4] + struct.pack(">I", length // 2) + png[at:]


def tiff_with_tag(tag: int, field_type: int, value: bytes) -> bytes:
    """A small TIFF with one IFD entry's type and value overwritten."""
    tiff = encode(Image.fromarray(noise(24, 16)), "TIFF")
    (ifd,) = struct.unpack("<I", tiff[4:8])
    (count,) = struct.unpack("<H", tiff[ifd : ifd + 2])
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack("<H", tiff[entry : entry + 2])[0] == tag:
            patched = struct.pack("<HH", tag, field_type) + tiff[entry + 4 : entry + 8] + value
            return tiff[:entry] + patched + tiff[entry + 12 :]
    raise KeyError(tag)


@pytest.mark.parametrize(
    "make",
    [
        png_with_short_idat,  # Pillow raises SyntaxError while loading
        lambda: tiff_with_tag(273, 9, struct.pack("<i", -116)),  # negative strip offset: ValueError on seek
        lambda: tiff_with_tag(256, 1, struct.pack("<I", 0)),  # width as a BYTE field: ValueError
    ],
    ids=["png-broken-chunk", "tiff-negative-strip-offset", "tiff-width-wrong-type"],
)
def test_structural_corruption_that_pillow_reports_oddly_is_400(make: Any) -> None:
    with pytest.raises(ImageError) as info:
        decode_image(make())
    assert info.value.status == 400


FUZZ_FORMATS = ("JPEG", "PNG", "PNG16", "GIF", "WEBP", "BMP", "TIFF")


@functools.cache
def fuzz_seeds() -> dict[str, bytes]:
    """One small valid file per format (and a 16-bit PNG) to corrupt."""
    img = Image.fromarray(noise(24, 16, seed=3))
    return {
        "JPEG": encode(img, "JPEG"),
        "PNG": encode(img, "PNG"),
        "PNG16": encode(Image.fromarray(noise(24, 16)[:, :, 0].astype(np.uint16) * 257), "PNG"),
        "GIF": encode(img, "GIF"),
        "WEBP": encode(img, "WEBP"),
        "BMP": encode(img, "BMP"),
        "TIFF": encode(img, "TIFF", compression="tiff_lzw"),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt metadata it skips
@pytest.mark.parametrize("fmt", sorted(FUZZ_FORMATS))
def test_thousands_of_seeded_corruptions_fail_only_with_image_error(fmt: str) -> None:
    """Deterministic corpus: overwritten, deleted and inserted bytes; Pillow raises ValueError,
    SyntaxError or EOFError on a few of these as well as OSError, and each must become a 4xx."""
    rng = random.Random(f"corrupt-{fmt}")
    seed = fuzz_seeds()[fmt]
    escaped = []
    for case in range(2000):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            pos, roll = rng.randrange(len(data)), rng.random()
            if roll < 0.6:
                data[pos] = rng.randrange(256)
            elif roll < 0.8:
                del data[pos : pos + rng.randint(1, 16)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            image_to_tensor(bytes(data), TensorSpec(resize=32, crop=28))
        except ImageError:
            pass
        except Exception as exc:  # noqa: BLE001 - collecting every escape is the point
            escaped.append(f"case {case}: {type(exc).__name__}: {exc}")
    assert escaped == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(FUZZ_FORMATS)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    keep=st.floats(0.05, 1.0),
)
def test_corrupted_images_fail_only_with_image_error(fmt: str, edits: list[tuple[float, int]], keep: float) -> None:
    """Hypothesis explores new corruptions (overwritten bytes, then a cut) on every run."""
    data = bytearray(fuzz_seeds()[fmt])
    for where, value in edits:
        data[int(where * len(data))] = value
    data = data[: max(1, int(len(data) * keep))]
    try:
        tensor = image_to_tensor(bytes(data), TensorSpec(resize=32, crop=28))
    except ImageError as exc:
        assert exc.status in (400, 413, 415, 422)
    else:
        assert tensor.shape == (3, 28, 28)
