"""Real photos that ship with pip packages (no downloads), used as golden and smoke inputs."""

from __future__ import annotations

import io

from PIL import Image


def sample_photo(name: str, quality: int = 90) -> bytes:
    """JPEG bytes of a bundled photo: scikit-image's ``chelsea`` (a cat), ``coffee``, ``rocket``,
    ``astronaut``, or scikit-learn's ``china`` / ``flower``."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(f"{name}.jpg")
    else:
        from skimage import data

        pixels = getattr(data, name)()
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
