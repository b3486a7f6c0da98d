"""Which engine runs each model fastest on this machine, and what decoding a photo costs: the measurement the
specs' engines are chosen from.

    .venv/bin/python -m benchmarks.engines [--models M ...] [--engines E ...] [--seconds S] [--out DIR]

For every model, its archive's own PyTorch module (``model_store/{name}_v{version}.mar`` loaded through its
handler with the eager engine: backbone, head and normalisation, exactly what a worker runs) is put on every
engine of :mod:`handlers.engines` (the exported ones exported as the build exports them) and timed forward only,
images/s at 1 and 2 threads × batch 1 and 8, in this one process, engines alternating within each setting.
Each engine's outputs on the model's golden photos are compared with eager's (largest absolute difference; the
archive's golden gate is the judge at build time). Then decoding: the candidates for photo bytes → model input,
ms per photo on one thread at 640×480 and 1600×1200, and how far each one's pixels are from ours.

The chosen engine per model is the fastest (geometric mean of batch 1 and batch 8 at every core's threads, the
serving layout) among those that agree with eager within ``TOLERANCE``; ``tests/unit`` holds the specs to it.
Writes ``benchmarks/results/engines.{json,md}``. About 10 minutes (torch.compile compiles once per model).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.machine import cpu_name
from stack.services import REPO_ROOT, log

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
THREADS = (1, 2)
BATCHES = (1, 8)
TOLERANCE = 1e-3  # largest |engine - eager| on the golden photos' outputs (logits, embeddings, price head)
DECODE_SIZES = ((640, 480), (1600, 1200))


def timed(run: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``run`` over about ``seconds`` (after two untimed calls)."""
    run()
    run()
    calls, started = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls / elapsed


def model_module(name: str, workdir: Path) -> tuple[Any, Any]:
    """The archive's handler loaded with the eager engine, and its model directory."""
    from archive_scripts.inprocess import LocalWorker
    from archive_scripts.specs import find_spec

    mar = REPO_ROOT / "model_store" / find_spec(name).archive_name
    if not mar.exists():
        raise SystemExit(f"{mar} is missing: build it first (`make archives` or `python -m archive_scripts {name}`)")
    model_dir = workdir / name
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(model_dir)
    worker = LocalWorker.from_model_dir(model_dir, handler_overrides={"engine": "eager", "threads": 1})
    return worker.handler, model_dir


def measure_model(name: str, engines: tuple[str, ...], seconds: float, workdir: Path) -> dict[str, Any]:
    """Every engine's images/s per threads × batch for one model, and its agreement with eager."""
    import torch

    from archive_scripts.export import export_module
    from archive_scripts.photos import sample_photo
    from archive_scripts.specs import find_spec
    from handlers.engines import EXPORTED_FILES, load_engine

    handler, _ = model_module(name, workdir)
    crop = handler.config.tensor.crop
    golden, _ = handler.prepare_batch([sample_photo(case.photo) for case in find_spec(name).golden])
    assert golden is not None, f"{name}: its golden photos did not decode"
    with torch.inference_mode():
        reference = handler.model(golden)
    loaded: dict[tuple[str, int], Any] = {}
    doc: dict[str, Any] = {"engines": {}}
    for engine in engines:
        entry: dict[str, Any] = {"images_per_s": {}}
        started = time.monotonic()
        files_dir = workdir / f"{name}-{engine}"
        if engine in EXPORTED_FILES:
            export_module(engine, handler.model, crop, files_dir)
        entry["export_s"] = round(time.monotonic() - started, 1)
        for threads in THREADS:
            torch.set_num_threads(threads)
            started = time.monotonic()
            if engine in EXPORTED_FILES or threads == THREADS[0]:  # a PyTorch engine follows torch's threads
                loaded[engine, threads] = load_engine(
                    engine, copy.deepcopy(handler.model), str(files_dir), torch.device("cpu"), (threads,)
                )
            else:
                loaded[engine, threads] = loaded[engine, THREADS[0]]
            with torch.inference_mode():
                for batch in sorted(BATCHES, reverse=True):  # compiles here, before anything is timed
                    loaded[engine, threads](torch.zeros(batch, 3, crop, crop))
                outputs = loaded[engine, threads](golden)
            entry.setdefault("load_s", {})[str(threads)] = round(time.monotonic() - started, 1)
            entry["max_abs_diff"] = float((outputs.float() - reference).abs().max())
        entry["agrees"] = entry["max_abs_diff"] <= TOLERANCE
        doc["engines"][engine] = entry
        log(f"  {name} {engine}: ready (export {entry['export_s']} s, load {entry['load_s']}), "
            f"max |Δ| vs eager {entry['max_abs_diff']:.2e}")
    for threads in THREADS:  # engines alternate within each setting: a burst of other load hits them alike
        torch.set_num_threads(threads)
        for batch in BATCHES:
            data = torch.randn(batch, 3, crop, crop)
            for engine in engines:
                run = loaded[engine, threads]
                with torch.inference_mode():
                    rate = timed(lambda run=run, data=data: run(data), seconds) * batch
                doc["engines"][engine]["images_per_s"][f"{threads}t_b{batch}"] = round(rate, 1)
            log(f"  {name}, {threads} thread(s), batch {batch}: " + ", ".join(
                f"{e} {doc['engines'][e]['images_per_s'][f'{threads}t_b{batch}']:.1f}" for e in engines))
    doc["chosen"] = choose(doc["engines"], max(THREADS))
    return doc


def score(entry: dict[str, Any], threads: int) -> float:
    """Geometric mean of batch 1 and batch 8 images/s at ``threads``: a lone photo and a full batch alike."""
    rates = [entry["images_per_s"][f"{threads}t_b{batch}"] for batch in BATCHES]
    return math.prod(rates) ** (1 / len(rates))


def choose(engines: dict[str, dict[str, Any]], threads: int) -> str:
    """The fastest engine that agrees with eager."""
    agreeing = {name: entry for name, entry in engines.items() if entry["agrees"]}
    return max(agreeing, key=lambda name: score(agreeing[name], threads))


# --- decoding ---------------------------------------------------------------------------------------------------


def decode_candidates() -> dict[str, Callable[[bytes], Any]]:
    """Photo bytes → (3, crop, crop) model input, each way we could do it on the CPU."""
    import numpy as np
    import simplejpeg
    import torch
    from PIL import Image

    from handlers.device_preprocess import DevicePreprocessor
    from handlers.image_decoding import DecodeLimits, TensorSpec, decode_image, image_to_tensor, to_tensor

    spec, limits = TensorSpec(), DecodeLimits()
    on_cpu = DevicePreprocessor(spec, limits, torch.device("cpu"))

    def turbo(data: bytes) -> Any:  # libjpeg-turbo's own DCT scaling, then our resampling
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=spec.resize, min_width=spec.resize)
        return to_tensor(Image.fromarray(np.ascontiguousarray(pixels)), spec)

    return {
        "pillow_draft (ours)": lambda data: image_to_tensor(data, spec, limits),
        "pillow_full_size": lambda data: to_tensor(decode_image(data, limits), spec),
        "torchvision_decode_jpeg": lambda data: on_cpu([data])[0][0],
        "simplejpeg_scaled": turbo,
    }


def measure_decoding(seconds: float) -> dict[str, Any]:
    """ms per photo on one thread per candidate and size, and the largest pixel difference from ours."""
    import torch
    from PIL import Image

    from archive_scripts.photos import sample_photo

    torch.set_num_threads(1)
    original = Image.open(io.BytesIO(sample_photo("chelsea"))).convert("RGB")
    candidates = decode_candidates()
    doc: dict[str, Any] = {}
    for width, height in DECODE_SIZES:
        buffer = io.BytesIO()
        original.resize((width, height), Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        ours = candidates["pillow_draft (ours)"](data)
        for name, run in candidates.items():
            ms = 1000.0 / timed(lambda run=run, data=data: run(data), seconds)
            # in 8-bit levels: the inputs are (pixel/255 - mean) / std, std ≈ 0.225
            levels = float((run(data) - ours).abs().max()) * 0.225 * 255
            doc.setdefault(name, {})[f"{width}x{height}"] = {"ms": round(ms, 2), "max_levels_from_ours": round(levels, 1)}
        log("  decode " + f"{width}×{height}: " + ", ".join(f"{n} {doc[n][f'{width}x{height}']['ms']:.1f} ms" for n in candidates))
    return doc


# --- report -----------------------------------------------------------------------------------------------------


def render(document: dict[str, Any]) -> str:
    """The Markdown page."""
    machine = document["machine"]
    lines = [
        (f"# Engines per model, forward only ({machine['date']}, {machine['cpu']}, {machine['cores']} cores, "
         f"load average {machine['load_average_start']} → {machine['load_average_end']})"),
        "",
        (f"`python -m benchmarks.engines`: images/s of each model's own module, forward only, in one process; "
         f"{document['seconds']:g} s per figure; engines alternate within each setting. Chosen: the fastest "
         "(geometric mean of batch 1 and 8 at 2 threads, the serving layout) that agrees with eager on the "
         f"golden photos within {TOLERANCE:g}."),
        "",
    ]
    settings = [f"{t}t_b{b}" for t in THREADS for b in BATCHES]
    header = "| model | engine | " + " | ".join(s.replace("t_b", " thread(s), batch ") for s in settings)
    lines += [header + " | × eager (2 threads, batch 8) | max abs diff vs eager | chosen |",
              "|---|---|" + "---:|" * (len(settings) + 2) + "---|"]
    for model, doc in document["models"].items():
        eager = doc["engines"].get("eager", {}).get("images_per_s", {}).get("2t_b8")
        for engine, entry in doc["engines"].items():
            rates = [f"{entry['images_per_s'][s]:.1f}" for s in settings]
            gain = f"{entry['images_per_s']['2t_b8'] / eager:.2f}" if eager else "–"
            chosen = "**chosen**" if engine == doc["chosen"] else ""
            lines.append(f"| {model} | {engine} | " + " | ".join(rates)
                         + f" | {gain} | {entry['max_abs_diff']:.1e} | {chosen} |")
    if document.get("decoding"):
        lines += ["", ("Decoding a JPEG into the model's input (resize 256, crop 224, normalised), one thread, "
                       "ms per photo; max levels: the largest difference from our pixels, in 8-bit levels:"), "",
                  "| candidate | " + " | ".join(f"{w}×{h} ms | max levels" for w, h in DECODE_SIZES) + " |",
                  "|---|" + "---:|---:|" * len(DECODE_SIZES)]
        for name, sizes in document["decoding"].items():
            cells = [f"{sizes[f'{w}x{h}']['ms']:.2f} | {sizes[f'{w}x{h}']['max_levels_from_ours']:.0f}" for w, h in DECODE_SIZES]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure, print and write the results."""
    from archive_scripts.specs import SPECS
    from handlers.engines import ENGINES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.engines", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=[s.name for s in SPECS], choices=[s.name for s in SPECS])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per figure (default 3)")
    parser.add_argument("--no-decoding", action="store_true", help="skip the decoding candidates")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where engines.json / engines.md go")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if "eager" not in args.engines:
        args.engines.insert(0, "eager")  # the reference every engine is compared with
    document: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(), "cores": os.cpu_count(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_start": round(os.getloadavg()[0], 2),
            "packages": {p: metadata.version(p) for p in ("torch", "onnxruntime", "openvino", "onnx")},
        },
        "seconds": args.seconds, "tolerance": TOLERANCE, "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        for name in args.models:
            log(f"{name}: {', '.join(args.engines)} × threads {THREADS} × batch {BATCHES} ...")
            document["models"][name] = measure_model(name, tuple(args.engines), args.seconds, Path(tmp))
            log(f"  {name}: chosen {document['models'][name]['chosen']}")
    if not args.no_decoding:
        log("decoding candidates ...")
        document["decoding"] = measure_decoding(args.seconds)
    document["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    document["chosen"] = {name: doc["chosen"] for name, doc in document["models"].items()}
    document["mean_chosen_over_eager_2t_b8"] = statistics.fmean(
        doc["engines"][doc["chosen"]]["images_per_s"]["2t_b8"] / doc["engines"]["eager"]["images_per_s"]["2t_b8"]
        for doc in document["models"].values()
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engines.json").write_text(json.dumps(document, indent=2) + "\n")
    page = render(document)
    (args.out / "engines.md").write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
