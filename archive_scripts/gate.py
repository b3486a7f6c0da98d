"""The golden gate, run in its own process: ``python -m archive_scripts.gate ARCHIVE CASES_JSON``.

Exits non-zero, saying which photo got which answer, when the archive answers any golden photo wrongly.
Golden photos are sent as one batch, plus an unusable item, so the gate also proves per-item errors.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from archive_scripts.inprocess import LocalWorker
from archive_scripts.photos import sample_photo


def check(mar_path: Path, cases: list[dict]) -> list[str]:
    """Return the list of failures (empty when the archive passes)."""
    failures = []
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        worker = LocalWorker.from_archive(mar_path, Path(tmp))
        photos = [sample_photo(case["photo"]) for case in cases]
        responses = worker.predict([*photos, b"not an image"])
        *answers, bad = responses
        if bad.status != 400:
            failures.append(f"a non-image item got status {bad.status}, expected 400")
        for case, answer in zip(cases, answers):
            if answer.status != 200:
                failures.append(f"{case['photo']}: status {answer.status}: {answer.body}")
                continue
            predictions = answer.body.get("predictions") or []
            if not predictions:
                failures.append(f"{case['photo']}: no predictions in {answer.body}")
                continue
            top1 = predictions[0]["label"]
            allowed = case["top1_any_of"]
            if allowed and top1 not in allowed:
                failures.append(f"{case['photo']}: top-1 {top1!r}, expected one of {allowed}")
            print(f"  golden {case['photo']}: {top1} ({predictions[0]['score']:.3f})")
    return failures


def main() -> int:
    """Entry point."""
    failures = check(Path(sys.argv[1]), json.loads(sys.argv[2]))
    for failure in failures:
        print(f"GOLDEN FAILURE: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
