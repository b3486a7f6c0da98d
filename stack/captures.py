"""The capture directory's layout, shared by the bridge (which writes it) and ``servingctl replay`` (which reads it).

A captured photo is its request body's bytes and nothing else, named by their sha256 (the ``input_sha256`` of
the request's record): ``<dir>/<first two hex digits>/<sha256>``. Content-addressed, so bridges sharing the
directory (a volume) write the same name for the same photo, and a name says nothing about who sent it.
"""

from __future__ import annotations

import re
from pathlib import Path

DIGEST = re.compile(r"[0-9a-f]{64}")
TEMP_PREFIX = "."  # a photo being written: ``.<sha256>.<writer>.tmp``, renamed into place when complete


def is_digest(text: str) -> bool:
    """Whether ``text`` is a sha256 in lowercase hex (the only names the directory holds)."""
    return DIGEST.fullmatch(text) is not None


def capture_path(directory: Path, digest: str) -> Path:
    """Where the photo whose sha256 is ``digest`` is kept; a ValueError for anything that is not a sha256."""
    if not is_digest(digest):
        raise ValueError(f"not a sha256 in lowercase hex: {digest[:80]!r}")
    return directory / digest[:2] / digest
