"""Bytes → normalised RGB image → model input tensor.

The one place where untrusted image bytes are parsed. Every way a payload can be unusable maps to an
:class:`ImageError` carrying the HTTP status the client should see, so a handler can answer that item
with a 4xx while its batch-mates are served. No TorchServe imports, no model code.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a photo can reasonably arrive in; anything else (PSD, EPS, ICO, ...) is refused before decoding.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


class ImageError(ValueError):
    """An item that is not a usable image; ``status`` is the HTTP status to answer it with."""

    status = 400
    kind = "InvalidImage"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImage(ImageError):
    kind = "EmptyImage"


class UnsupportedContent(ImageError):
    status = 415
    kind = "UnsupportedMediaType"


class ImageTooLarge(ImageError):
    status = 413
    kind = "PayloadTooLarge"


class ImageDimensionsTooLarge(ImageError):
    status = 422
    kind = "ImageTooLarge"


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds checked before any pixel is decoded."""

    max_bytes: int = 6_000_000
    max_pixels: int = 40_000_000  # e.g. 8000 × 5000; Pillow's own bomb limit is ~89 M
    max_side: int = 16_384


@dataclass(frozen=True)
class TensorSpec:
    """How a model wants its input: short side resized to ``resize``, centre crop ``crop``, normalised."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits(), min_size: int = 0) -> Image.Image:
    """Decode ``data`` into an upright 8-bit RGB image, or raise :class:`ImageError`.

    ``min_size`` lets large JPEGs be decoded at a reduced scale (Pillow's ``draft``) as long as both
    sides stay at least that large — much faster, and the model resizes anyway.
    """
    img = open_image(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if min_size and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            img.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDimensionsTooLarge(f"image dimensions are too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image is truncated or corrupt ({exc})") from exc
    with contextlib.suppress(Exception):  # a malformed EXIF block must not fail an otherwise good photo
        img = ImageOps.exif_transpose(img) or img
    return to_rgb(img)


def open_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> Image.Image:
    """Parse only the header of ``data`` (format, mode, size, EXIF) after the byte and pixel limits, or raise."""
    if not data:
        raise EmptyImage("empty body: send the image bytes (JPEG, PNG, GIF, WebP, BMP or TIFF)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            _check_dimensions(img.size, limits)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(
            "body is not a recognised image; supported formats: JPEG, PNG, GIF, WebP, BMP, TIFF"
        ) from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDimensionsTooLarge(f"image dimensions are too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image is truncated or corrupt ({exc})") from exc
    return img


def _check_dimensions(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has invalid dimensions {width}×{height}")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageDimensionsTooLarge(
            f"image is {width}×{height} pixels; the limit is {limits.max_pixels} pixels "
            f"and {limits.max_side} pixels per side"
        )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: alpha over white, 16/32-bit scaled (not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "F" else max(float(arr.max()), 1.0)
        arr8 = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_tensor(img: Image.Image, spec: TensorSpec) -> torch.Tensor:
    """Resize (short side), centre-crop and normalise an RGB image into a CHW float tensor."""
    width, height = img.size
    scale = spec.resize / min(width, height)
    new_width, new_height = max(spec.crop, round(width * scale)), max(spec.crop, round(height * scale))
    left = (new_width - spec.crop) // 2
    top = (new_height - spec.crop) // 2
    # Resample only the source region the centre crop keeps (same sampling grid as resize-then-crop):
    # resizing the whole image first turns a 1×16384 strip into 256×4 M pixels, gigabytes thrown away.
    sx, sy = width / new_width, height / new_height
    box = (left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy)
    img = img.resize((spec.crop, spec.crop), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (pixels.float().div_(255.0) - mean) / std


def image_to_tensor(data: bytes, spec: TensorSpec, limits: DecodeLimits = DecodeLimits()) -> torch.Tensor:
    """Decode ``data`` and turn it into the model input described by ``spec``."""
    return to_tensor(decode_image(data, limits, min_size=spec.resize), spec)
