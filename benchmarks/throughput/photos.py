"""The benchmark's photos: real photos at ordinary sizes, written once per run and read by every row.

The bundled real photos (scikit-image / scikit-learn, see :func:`archive_scripts.photos.sample_photo`) are
resized with Pillow to 640×480 and 1600×1200 and saved as JPEG at quality 90. The originals are at most
640 px wide, so the 1600×1200 versions are upscaled: real content, ordinary dimensions and decode cost,
though smoother (smaller files) than a camera's photo of that size.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from archive_scripts.photos import sample_photo

SOURCES = ("chelsea", "coffee", "rocket", "astronaut", "china", "flower")
SIZES: tuple[tuple[int, int], ...] = ((640, 480), (1600, 1200))
QUALITY = 90


def make_photos(dest: Path, sources: tuple[str, ...] = SOURCES, sizes: tuple[tuple[int, int], ...] = SIZES) -> list[Path]:
    """Write ``source_WxH.jpg`` for every source and size into ``dest``; returns the paths, sizes interleaved.

    The order alternates sizes (640×480, 1600×1200, 640×480, ...), so any run of consecutive requests
    carries both sizes alike.
    """
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in sources:
        original = Image.open(io.BytesIO(sample_photo(name))).convert("RGB")
        for width, height in sizes:
            buffer = io.BytesIO()
            original.resize((width, height), Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=QUALITY)
            path = dest / f"{name}_{width}x{height}.jpg"
            path.write_bytes(buffer.getvalue())
            paths.append(path)
    return paths


def load_photos(directory: Path) -> list[bytes]:
    """The photos :func:`make_photos` wrote, in its order (sorted by source, then size)."""
    paths = sorted(directory.glob("*.jpg"), key=_order_key)
    if not paths:
        raise FileNotFoundError(f"no .jpg photos in {directory}")
    return [p.read_bytes() for p in paths]


def _order_key(path: Path) -> tuple[int, int, str]:
    name, _, size = path.stem.rpartition("_")
    source = SOURCES.index(name) if name in SOURCES else len(SOURCES)
    width = int(size.split("x")[0]) if "x" in size and size.split("x")[0].isdigit() else 0
    return source, width, path.name


def describe(paths: list[Path]) -> list[dict[str, object]]:
    """Name, size and bytes of each photo (for the results file)."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append({"file": path.name, "width": img.width, "height": img.height, "bytes": path.stat().st_size})
    return out
