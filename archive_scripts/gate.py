"""The golden gate: load a freshly built archive through its own handler and check its golden cases.

Runs in a separate (spawned) process so the archive's bare-named modules are imported fresh and a crash
in the handler cannot take the builder with it. Golden photos go as one batch, plus an unusable item, so
the gate also proves that one bad item gets its own 4xx while its batch-mates are answered. An archive that
runs in reduced precision or on any engine but eager PyTorch (channels_last, compiled, ONNX Runtime, OpenVINO) is
also loaded as its fp32, eager twin, and its answers must agree with the twin's (top-1 label, nearest item, price
within the fp32 interval).
"""

from __future__ import annotations

import multiprocessing
import tempfile
import traceback
from pathlib import Path

from archive_scripts.golden import GoldenCase
from handlers.engines import EXPORTED_FILES

FP32_EAGER = {"precision": "fp32", "engine": "eager"}


def check(mar_path: Path, cases: tuple[GoldenCase, ...]) -> list[str]:
    """Return what is wrong (empty when the archive passes). Runs in the gate's own process."""
    import torch

    from archive_scripts.inprocess import ItemResponse, LocalWorker
    from archive_scripts.photos import sample_photo

    items = [{"body": sample_photo(case.photo), **{k: v.encode() for k, v in case.params}} for case in cases]
    reference: list[ItemResponse] = []
    try:
        with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
            worker = LocalWorker.from_archive(mar_path, Path(tmp))
            config = worker.handler.config
            accelerated = config.precision != "fp32" or config.engine != "eager"
            if accelerated and config.engine not in EXPORTED_FILES and torch.cuda.is_available():
                worker = LocalWorker.from_model_dir(Path(tmp), gpu_id=0)  # the GPU flavour, gated where it runs
            *answers, bad = worker.handle([*items, {"body": b"not an image"}])
            if accelerated:
                twin = LocalWorker.from_model_dir(Path(tmp), worker.context.system_properties["gpu_id"], FP32_EAGER)
                reference = twin.handle(items)
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
    for case, answer, fp32 in zip(cases, answers, reference):
        if answer.status == 200 and fp32.status == 200:
            problem = case.expect.agrees(answer.body, fp32.body)
            if problem:
                failures.append(f"{case.photo}: {problem} ({config.precision}, engine {config.engine})")
        elif fp32.status != 200:
            failures.append(f"{case.photo}: the fp32 twin answered {fp32.status}: {fp32.body}")
    return failures


def run_gate(mar_path: Path, cases: tuple[GoldenCase, ...], timeout_s: float = 900) -> list[str]:
    """Run :func:`check` in a fresh spawned process and return its failures."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply_async(check, (mar_path, cases)).get(timeout_s)
