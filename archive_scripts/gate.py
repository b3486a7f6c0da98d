"""The golden gate: load a freshly built archive through its own handler and check its golden cases.

Runs in a separate (spawned) process so the archive's bare-named modules are imported fresh and a crash
in the handler cannot take the builder with it. Golden photos go as one batch, plus an unusable item, so
the gate also proves that one bad item gets its own 4xx while its batch-mates are answered.
"""

from __future__ import annotations

import multiprocessing
import tempfile
import traceback
from pathlib import Path

from archive_scripts.golden import GoldenCase


def check(mar_path: Path, cases: tuple[GoldenCase, ...]) -> list[str]:
    """Return what is wrong (empty when the archive passes). Runs in the gate's own process."""
    from archive_scripts.inprocess import LocalWorker
    from archive_scripts.photos import sample_photo

    try:
        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            worker = LocalWorker.from_archive(mar_path, Path(tmp))
            items = [{"body": sample_photo(case.photo), **{k: v.encode() for k, v in case.params}} for case in cases]
            *answers, bad = worker.handle([*items, {"body": b"not an image"}])
    except Exception:  # noqa: BLE001 - any failure to load or answer is a gate failure, with its traceback
        return [f"the archive failed to load or answer:\n{traceback.format_exc()}"]
    failures = []
    if bad.status != 400:
        failures.append(f"a non-image item in the batch got status {bad.status}, expected 400")
    for case, answer in zip(cases, answers):
        if answer.status != 200:
            failures.append(f"{case.photo}: status {answer.status}: {answer.body}")
            continue
        problem = case.expect.failure(answer.body)
        if problem:
            failures.append(f"{case.photo}: {problem}")
    return failures


def run_gate(mar_path: Path, cases: tuple[GoldenCase, ...], timeout_s: float = 300) -> list[str]:
    """Run :func:`check` in a fresh spawned process and return its failures."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply_async(check, (mar_path, cases)).get(timeout_s)
