"""Classify every image in a folder: ``python classify_folder.py DIR [--model classifier]``.

Prints ``file → top label (score)`` per image and a summary; a file the model refuses (corrupt, too large)
is reported and the run goes on. Exits 1 only when the bridge cannot be reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from serving_client import Client, ConnectionError, ServingError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Outcome:
    """What one file got: a label, or an error message."""

    path: Path
    label: str | None = None
    score: float | None = None
    error: str | None = None


class Progress:
    """A one-line progress bar on a stream (stderr): ``[#####.....] 5/10 name``."""

    def __init__(self, total: int, stream: TextIO, enabled: bool = True, width: int = 30) -> None:
        self.total, self.stream, self.enabled, self.width = total, stream, enabled, width
        self.done = 0
        self._shown = 0

    def advance(self, name: str) -> None:
        """Count one more file done and redraw."""
        self.done += 1
        self.draw(name)

    def draw(self, name: str = "") -> None:
        """Redraw the line in place."""
        if not self.enabled or not self.total:
            return
        filled = self.width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {name}"[:100]
        self.stream.write("\r" + line.ljust(self._shown))
        self.stream.flush()
        self._shown = len(line)

    def clear(self) -> None:
        """Erase the line, so that other output starts on a clean line."""
        if self.enabled and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
            self._shown = 0


def images_in(folder: Path) -> list[Path]:
    """The folder's image files (by suffix), sorted by name; hidden files are skipped."""
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def classify(client: Client, model: str, path: Path) -> Outcome:
    """One file's outcome; only an unreachable bridge is raised."""
    try:
        prediction = client.predict(model, path)
    except ConnectionError:
        raise
    except ServingError as exc:
        return Outcome(path, error=str(exc))
    except OSError as exc:
        return Outcome(path, error=f"cannot read: {exc.strerror or exc}")
    if prediction.top_label is None:
        return Outcome(path, error=f"no label in the answer: {str(prediction.body)[:200]}")
    return Outcome(path, label=prediction.top_label, score=prediction.top_score)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder of images")
    parser.add_argument("--model", default="classifier", help="model to ask (default: classifier)")
    parser.add_argument("--workers", type=int, default=4, help="requests in flight (they share batches)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--url", default=os.environ.get("SERVING_URL", "http://127.0.0.1:8000"),
                        help="the bridge (default: $SERVING_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("SERVING_API_KEY"), help="default: $SERVING_API_KEY")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Classify the folder; 0 when every file was tried (bad files included), 1 when the bridge is down."""
    args = parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    paths = images_in(args.folder)
    progress = Progress(len(paths), sys.stderr, enabled=not args.quiet)
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with Client(args.url, api_key=args.api_key) as client, ThreadPoolExecutor(max(1, args.workers)) as pool:
        try:
            for outcome in pool.map(lambda p: classify(client, args.model, p), paths):
                outcomes.append(outcome)
                progress.clear()
                if outcome.error is None:
                    score = f" ({outcome.score:.2f})" if outcome.score is not None else ""
                    print(f"{outcome.path.name} → {outcome.label}{score}")
                else:
                    print(f"{outcome.path.name} → ERROR {outcome.error}")
                progress.advance(outcome.path.name)
        except ConnectionError as exc:
            progress.clear()
            print(f"error: {exc}", file=sys.stderr)
            return 1
    progress.clear()
    failed = [o for o in outcomes if o.error is not None]
    labels = Counter(o.label for o in outcomes if o.label is not None)
    print(f"{len(outcomes)} files in {time.monotonic() - started:.1f} s: "
          f"{len(outcomes) - len(failed)} classified, {len(failed)} failed")
    for label, count in labels.most_common(5):
        print(f"  {count:>4}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
