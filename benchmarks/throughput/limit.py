"""The limit: what this machine does in-process, with no server in between.

Each worker process loads our archive (``model_store/{model}_v1.0.mar``, the same file our TorchServe
serves, on its engine: the fastest this machine has for the model) through its own handler, in-process (:class:`archive_scripts.inprocess.LocalWorker`: the handler's
``initialize()`` and ``handle()`` with a real ``ts`` Context), and calls ``handle()`` on batches of JPEG bytes
held in memory, as fast as it can: exactly our decode (Pillow with ``draft()``), crop-region resize,
normalisation, the model as the handler prepares it (memory format, ``inference_mode``) and its top-5
answer — so the limit follows every change to the handler, and what separates a served row from it is the
serving around the handler, nothing else. Layouts are tried side by side (e.g. 2 processes × 1 thread,
1 process × 2 threads; batch 1/4/8/16: the handler's threads, engine and decoding, set in its config) and the
limit at a load is the best layout that holds no more photos at once than that load has in flight.

A batch's images are already there, so its "latency" is just the time of one ``handle()`` of the batch.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import statistics
import threading
import time
import zipfile
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from benchmarks.throughput.report import Measurement, percentile


@dataclass(frozen=True)
class Layout:
    """Processes × torch threads per process, and images per forward."""

    processes: int
    threads: int
    batch: int

    @property
    def label(self) -> str:
        """E.g. ``2 proc × 1 thread, batch 8``."""
        return f"{self.processes} proc × {self.threads} thread{'s' if self.threads > 1 else ''}, batch {self.batch}"


def _worker(
    layout: Layout, model_dir: Path, photos_dir: Path, offset: int, warmup_s: float, duration_s: float,
    barrier: Barrier, results: Any,
) -> None:
    """One process of a layout: load the handler, warm up, wait for its siblings, then run for ``duration_s``."""
    import psutil
    import torch

    from archive_scripts.inprocess import LocalWorker
    from benchmarks.throughput.photos import load_photos

    # TorchServe's base handler warns at import about every optional backend it lacks (OpenVINO, ...): not news here
    logging.getLogger("ts").setLevel(logging.ERROR)
    worker = LocalWorker.from_model_dir(model_dir, handler_overrides={"threads": layout.threads})
    photos = load_photos(photos_dir)
    index = offset

    def one_batch() -> None:
        nonlocal index
        answers = worker.predict([photos[(index + k) % len(photos)] for k in range(layout.batch)])
        index += layout.batch
        if any(a.status != 200 for a in answers):
            raise RuntimeError(f"the handler refused a benchmark photo: {[a.body for a in answers if a.status != 200][:1]}")

    warm_until = time.monotonic() + warmup_s
    one_batch()
    while time.monotonic() < warm_until:
        one_batch()
    barrier.wait(timeout=180)
    started, cpu_started = time.monotonic(), time.process_time()
    deadline = started + duration_s
    latencies: list[float] = []
    images = 0
    while True:
        t0 = time.monotonic()
        one_batch()
        t1 = time.monotonic()
        latencies.append((t1 - t0) * 1000.0)
        images += layout.batch
        if t1 >= deadline:
            break
    memory = psutil.Process().memory_full_info()
    results.put({
        "images": images, "window_s": t1 - started, "cpu_s": time.process_time() - cpu_started,
        "latencies_ms": latencies, "rss_mb": memory.rss / 2**20, "pss_mb": getattr(memory, "pss", 0) / 2**20,
        "threads": torch.get_num_threads(),
    })


def system_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy so far (all processes, ours and others')."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def unpack(mar: Path, work_dir: Path) -> Path:
    """The archive unpacked once per run (``work_dir/limit_model``), shared by every limit process."""
    model_dir = work_dir / "limit_model"
    if not (model_dir / "MAR-INF" / "MANIFEST.json").exists():
        with zipfile.ZipFile(mar) as archive:
            archive.extractall(model_dir)
    return model_dir


def measure(layout: Layout, mar: Path, work_dir: Path, photos_dir: Path, warmup_s: float, duration_s: float,
            ) -> tuple[Measurement, dict[str, Any]]:
    """Run one layout of ``mar``'s handler (unpacked under ``work_dir``); its measurement and details (memory)."""
    model_dir = unpack(mar, work_dir)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(layout.processes + 1)  # the workers, and this process to time the window
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker, name=f"limit-{i}",
            args=(layout, model_dir, photos_dir, i * 5, warmup_s, duration_s, barrier, results),
        )
        for i in range(layout.processes)
    ]
    for proc in procs:
        proc.start()
    try:
        try:
            barrier.wait(timeout=180)
        except threading.BrokenBarrierError:
            raise RuntimeError(f"a limit worker ({layout.label}) failed or took over 180 s to load; see the output above") from None
        busy_start = system_busy_s()
        time.sleep(duration_s)
        busy = system_busy_s() - busy_start
        outputs = []
        for _ in procs:
            outputs.append(results.get(timeout=warmup_s + duration_s + 300))
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    latencies = [x for out in outputs for x in out["latencies_ms"]]
    window = statistics.fmean(out["window_s"] for out in outputs)
    cpu_s = sum(out["cpu_s"] for out in outputs)
    measurement = Measurement(
        row="limit", concurrency=layout.processes * layout.batch,  # the photos this layout holds at once
        images_per_s=sum(out["images"] / out["window_s"] for out in outputs),
        p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95), p99_ms=percentile(latencies, 99),
        cpu_s=cpu_s, window_s=window, ok=sum(out["images"] for out in outputs),
        config=layout.label, others_cores=max(0.0, busy / duration_s - cpu_s / window),
        notes="latency = one handle() of a batch: decode, preprocess, forward, top-5 (its images were in memory)",
    )
    details = {
        "layout": layout.label,
        "memory": [{"role": "limit process", "rss_mb": out["rss_mb"], "pss_mb": out["pss_mb"]} for out in outputs],
        "torch_threads": [out["threads"] for out in outputs],
    }
    return measurement, details
