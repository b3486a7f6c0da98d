"""Bad and unusual request bodies, made with Pillow at test time (deterministic; no binary files committed).

Every function returns bytes (or a body plus the headers it needs). Real photos come from the packages the
archive gate already uses (scikit-image / scikit-learn), so no download is involved.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

from archive_scripts.photos import sample_photo

# The photos the normalisation cases are derived from, chosen for how EfficientNet-Lite0 answers them:
# "coffee" is "espresso" at ~0.95, far ahead of its second label, so a correct mode conversion cannot flip
# it; "rocket" is "missile" upright but "crane"/"matchstick" when seen sideways, so an ignored EXIF
# orientation changes the answer.
REFERENCE_PHOTO = "coffee"
ORIENTATION_PHOTO = "rocket"
GOOD_PHOTOS = ("chelsea", "coffee", "flower", "rocket", "china")

TEXT = b"hello, this is not an image\n"
EXIF_ORIENTATION = 0x0112


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    """``img`` saved as ``fmt`` bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


@functools.cache
def photo(name: str = REFERENCE_PHOTO) -> bytes:
    """A real photo as JPEG bytes (quality 90)."""
    return sample_photo(name)


@functools.cache
def photo_image(name: str = REFERENCE_PHOTO) -> Image.Image:
    """The same photo as an RGB Pillow image (the pixels every variant below starts from)."""
    return Image.open(io.BytesIO(photo(name))).convert("RGB")


# --- not an image at all -------------------------------------------------------------------------------


def zero_bytes() -> bytes:
    """An empty body."""
    return b""


def text() -> bytes:
    """Plain text."""
    return TEXT


def truncated_jpeg(keep: float = 0.5) -> bytes:
    """A real JPEG cut after ``keep`` of its bytes."""
    data = photo()
    return data[: int(len(data) * keep)]


# --- dimensions ---------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG written by hand so its header can claim any size; ``idat`` defaults to no pixel data at all.

    A header-only file of acceptable size fails decoding (400, truncated), so a 422 for a huge one proves
    the refusal came from the header, before any pixel buffer was allocated.
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(b"") if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


@functools.cache
def decompression_bomb() -> bytes:
    """A complete, valid 12000×12000 1-bit PNG of zeros: ~20 KB that would decode to 432 MB of RGB."""
    side = 12_000
    row = b"\x00" + bytes(side // 8)  # filter byte + packed bits
    return raw_png(side, side, bit_depth=1, color_type=0, idat=zlib.compress(row * side, 9))


def pillow_bomb_header() -> bytes:
    """A PNG header claiming 50000×50000 (2.5 G pixels, over Pillow's own hard bomb limit)."""
    return raw_png(50_000, 50_000)


def huge_dimensions_png() -> bytes:
    """A PNG header claiming 20000×8: few pixels, but one side over the 16384 limit."""
    return raw_png(20_000, 8)


def huge_dimensions_jpeg(width: int = 30_000, height: int = 30_000) -> bytes:
    """A real JPEG whose SOF header is rewritten to claim ``width``×``height``."""
    data = bytearray(photo())
    pos = 2
    while pos < len(data):
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):  # SOF0/1/2: precision(1) height(2) width(2)
            struct.pack_into(">HH", data, pos + 5, height, width)
            return bytes(data)
        pos += 2 + length
    raise AssertionError("no SOF marker in the sample JPEG")


# --- size limits --------------------------------------------------------------------------------------


def padded_jpeg(size: int) -> bytes:
    """A real JPEG followed by zero bytes up to exactly ``size`` bytes (decoders stop at the EOI marker)."""
    data = photo()
    assert size >= len(data)
    return data + bytes(size - len(data))


def chunked(data: bytes, chunk_size: int = 64 * 1024) -> Iterator[bytes]:
    """``data`` as an iterator, which requests sends with ``Transfer-Encoding: chunked``."""
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]


# --- modes that need converting to RGB ----------------------------------------------------------------


def cmyk_jpeg() -> bytes:
    """The reference photo as a CMYK JPEG."""
    return encode(photo_image().convert("CMYK"), "JPEG", quality=95)


def clean_jpeg() -> bytes:
    """The reference photo re-encoded exactly like the variants (quality 95): what they are compared with."""
    return encode(photo_image(), "JPEG", quality=95)


def grey_png() -> bytes:
    """Mode L (8-bit greyscale) PNG."""
    return encode(photo_image().convert("L"), "PNG")


def palette_png() -> bytes:
    """Mode P (256-colour palette) PNG."""
    return encode(photo_image().quantize(256), "PNG")


def rgba_png() -> bytes:
    """Mode RGBA PNG, fully opaque except a transparent 8-pixel border (composited over white)."""
    img = photo_image().convert("RGBA")
    alpha = np.zeros((img.height, img.width), dtype=np.uint8)
    alpha[8:-8, 8:-8] = 255
    img.putalpha(Image.fromarray(alpha))
    return encode(img, "PNG")


def grey16_png() -> bytes:
    """16-bit greyscale PNG of the reference photo: every 8-bit level × 257, so the full 16-bit range is used.

    Clipping instead of scaling would turn nearly every pixel white; its expected answer is the 8-bit
    greyscale version's (:func:`grey_png`).
    """
    levels = np.asarray(photo_image().convert("L"), dtype=np.uint16) * 257
    img = Image.fromarray(levels)
    assert img.mode.startswith("I;16") or img.mode == "I"
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16"), "Pillow did not write a 16-bit PNG"
    return data


# --- orientation and animation ------------------------------------------------------------------------


def upright_jpeg() -> bytes:
    """The orientation photo, upright, encoded like the rotated variants: what they must match."""
    return encode(photo_image(ORIENTATION_PHOTO), "JPEG", quality=95)


def exif_rotated_jpeg(orientation: int) -> bytes:
    """The orientation photo stored sideways with the EXIF orientation (6 or 8) that makes it upright again."""
    # exif_transpose applies ROTATE_270 for 6 and ROTATE_90 for 8: store the inverse rotation.
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    img = photo_image(ORIENTATION_PHOTO).transpose(stored)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def sideways_jpeg(orientation: int) -> bytes:
    """The same stored pixels as :func:`exif_rotated_jpeg` but without EXIF (what ignoring the tag sees)."""
    stored = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    return encode(photo_image(ORIENTATION_PHOTO).transpose(stored), "JPEG", quality=95)


def _other_frames(count: int, size: tuple[int, int]) -> list[Image.Image]:
    """Frames that must never be used: another photo, then noise."""
    other = photo_image("china").resize(size)
    rng = np.random.default_rng(7)
    frames = [other]
    while len(frames) < count:
        frames.append(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)))
    return frames[:count]


def single_frame_gif() -> bytes:
    """The reference photo as a one-frame GIF (the answer the animated ones must match)."""
    return encode(photo_image(), "GIF")


def animated_gif(frames: int = 3) -> bytes:
    """An animated GIF whose first frame is the reference photo and whose others are not."""
    first = photo_image()
    data = encode(
        first, "GIF", save_all=True, append_images=_other_frames(frames - 1, first.size), duration=100, loop=0
    )
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == frames
    return data


def many_frame_gif(frames: int = 2000) -> bytes:
    """A small animated GIF with thousands of frames: only the first may be decoded."""
    first = photo_image().resize((64, 48))
    rest = [Image.new("RGB", first.size, (i % 256, 0, 0)) for i in range(frames - 1)]
    return encode(first, "GIF", save_all=True, append_images=rest, duration=10)


def single_frame_png() -> bytes:
    """The reference photo as a plain PNG (the answer the APNG must match)."""
    return encode(photo_image(), "PNG")


def animated_png(frames: int = 3) -> bytes:
    """An APNG whose default image and first frame are the reference photo."""
    first = photo_image()
    data = encode(first, "PNG", save_all=True, append_images=_other_frames(frames - 1, first.size), duration=100)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == frames
    return data


# --- request shapes -----------------------------------------------------------------------------------

BOUNDARY = "reliability-b0undary"


def multipart(
    parts: list[tuple[str, str | None, str | None, bytes]], boundary: str = BOUNDARY
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body from (field name, file name or None, content type or None, data) parts."""
    out = bytearray()
    for name, filename, content_type, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def multipart_no_file() -> tuple[bytes, dict[str, str]]:
    """A form with a text field and no file."""
    return multipart([("note", None, None, b"where is the photo?")])


def multipart_two_files() -> tuple[bytes, dict[str, str]]:
    """A form with two image files."""
    return multipart([("file", "a.jpg", "image/jpeg", photo()), ("file2", "b.jpg", "image/jpeg", photo("coffee"))])


def multipart_one_file() -> tuple[bytes, dict[str, str]]:
    """The control: a form with exactly one file."""
    return multipart([("file", "flower.jpg", "image/jpeg", photo())])


def nested_json(depth: int) -> bytes:
    """``[[[...]]]`` nested ``depth`` deep (deeper than Python's recursion limit for large depths)."""
    return b"[" * depth + b"]" * depth


# --- fuzz seeds ---------------------------------------------------------------------------------------

# Magic numbers of the formats the handler accepts (and two it does not), for spliced headers.
MAGIC = {
    "JPEG": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "GIF": b"GIF89a",
    "BMP": b"BM",
    "TIFF": b"II*\x00",
    "TIFF-BE": b"MM\x00*",
    "WEBP": b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    "ICO": b"\x00\x00\x01\x00",
    "PDF": b"%PDF-1.4\n",
}


@functools.cache
def fuzz_seeds() -> dict[str, bytes]:
    """Small real images in every accepted format (a 96×64 crop of a photo), the starting points of mutations."""
    img = photo_image("chelsea").resize((96, 64))
    return {
        "JPEG": encode(img, "JPEG", quality=85),
        "JPEG-progressive": encode(img, "JPEG", quality=85, progressive=True),
        "PNG": encode(img, "PNG"),
        "PNG16": encode(Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257), "PNG"),
        "GIF": encode(img, "GIF"),
        "WEBP": encode(img, "WEBP"),
        "BMP": encode(img, "BMP"),
        "TIFF": encode(img, "TIFF", compression="tiff_lzw"),
    }
