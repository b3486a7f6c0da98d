"""``python -m benchmarks.gpu_check [--device cuda|cpu] [--quick]``: our handler against raw PyTorch on one device.

What it measures, per model (resnet18, classifier) in the archives' ``gpu`` flavour (precision and
torch.compile from the spec; ``--precision`` / ``--no-compile`` override), at batch 8 / 32 / 64:

- ``raw_forward``: the handler's own (compiled) model on a batch already on the device, no decoding;
- ``raw_pipeline``: plain PyTorch decode+forward: ``decode_jpeg(list, device=...)``, torchvision's resize,
  centre crop and normalise, then the same model (the baseline the issue's 0.9× goal is against);
- ``handler_device`` / ``handler_cpu``: our handler through ``initialize()`` + ``handle()`` with a ts
  Context (archive_scripts.inprocess), preprocessing on the device and with Pillow on the CPU, each with the
  share of its time spent in preprocessing (decode, resize, crop, normalise, copy);
- ``tolerance``: device path vs Pillow path on the golden photos, in 8-bit levels, on this device's decoder.

Photos: the throughput benchmark's (benchmarks/throughput/photos.py), 640×480 and 1600×1200 JPEGs.
Needs no TorchServe frontend, Java or registry: torch, torchvision, Pillow, numpy, PyYAML, psutil,
scikit-image/scikit-learn (photos) and the carried ``ts`` and EfficientNet packages (benchmarks/gpu_check.sh).
Writes benchmarks/results/gpu-check.{json,md} on a GPU and gpu-check-cpu.{json,md} on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MODELS = ("resnet18", "classifier")
GOLDEN = ("chelsea", "coffee", "rocket", "china", "flower")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu (a smoke run, not GPU figures)")
    parser.add_argument("--quick", action="store_true", help="batch 8 only, few repetitions, fp32 eager")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {MODELS}")
    parser.add_argument("--batches", default="8,32,64", help="batch sizes (the handler's limit is 64)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), help="override the spec's gpu precision")
    parser.add_argument("--no-compile", action="store_true", help="override the spec's gpu torch.compile")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement (after warm-up)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where gpu-check[-cpu].{json,md} go")
    return parser.parse_args(argv)


def sync(device: Any) -> None:
    """Wait for the device's queued work, so wall-clock timings include it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(run: Callable[[], Any], images: int, device: Any, seconds: float, min_runs: int = 3) -> dict[str, Any]:
    """Images/s of ``run`` (``images`` per call): one warm-up call, then calls for about ``seconds``."""
    run()
    sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"images_per_s": round(images / median, 1), "ms_per_batch": round(median * 1e3, 3), "runs": len(times)}


def model_dir(name: str, dest: Path, precision: str | None, compile_: bool | None) -> Path:
    """An unpacked archive of ``name``'s gpu flavour (as archive_scripts.build lays it out), without building."""
    import torch
    import yaml
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    from archive_scripts.specs import find_spec
    from archive_scripts.weights import efficientnet_lite0_imagenet, seeded_init

    spec = find_spec(name, flavour="gpu")
    dest.mkdir(parents=True)
    for module in (spec.handler, *spec.modules):
        shutil.copyfile(HANDLERS_DIR / module, dest / module)
    state = torch.random.get_rng_state()
    try:
        if spec.architecture == "resnet18":
            seeded_init("resnet18", dest / "weights.pt", seed=0)  # untrained: speed does not depend on it
        else:
            efficientnet_lite0_imagenet(dest / "weights.pt")
    finally:
        torch.random.set_rng_state(state)
    (dest / "index_to_name.json").write_text(json.dumps(dict(enumerate(_IMAGENET_CATEGORIES))))
    handler = {"architecture": spec.architecture, **spec.handler_config}
    if precision:
        handler["precision"] = precision
    if compile_ is not None:
        handler["engine"] = "compile" if compile_ else "channels_last"
    config = {**spec.model_config, "handler": handler}
    (dest / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (dest / "MAR-INF").mkdir()
    manifest = {"model": {"modelName": name, "serializedFile": "weights.pt", "handler": spec.handler,
                          "modelVersion": spec.version, "configFile": "model-config.yaml"}}
    (dest / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return dest


def raw_pipeline(handler: Any) -> Callable[[list[bytes]], Any]:
    """Plain PyTorch decode+forward on the handler's device and model: the baseline of the 0.9× goal."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    spec, device = handler.config.tensor, handler.device

    def run(photos: list[bytes]) -> Any:
        encoded = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in photos]
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        crops = [TF.center_crop(TF.resize(img, [spec.resize], antialias=True), [spec.crop]) for img in images]
        batch = TF.normalize(torch.stack(crops).float().div_(255.0), list(spec.mean), list(spec.std))
        return handler.forward(batch.contiguous(memory_format=torch.channels_last))

    return run


def tolerance(handler: Any) -> dict[str, float]:
    """Device path vs Pillow path on the golden photos: |Δ| in 8-bit levels (max, mean, 99th percentile)."""
    import torch
    from device_preprocess import DevicePreprocessor
    from image_decoding import image_to_tensor

    from archive_scripts.photos import sample_photo

    spec, limits = handler.config.tensor, handler.config.limits
    photos = [sample_photo(name) for name in GOLDEN]
    device_batch, _ = DevicePreprocessor(spec, limits, handler.device)(photos)
    cpu_batch = torch.stack([image_to_tensor(p, spec, limits) for p in photos])
    diff = (device_batch.float().cpu() - cpu_batch).abs() * torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0
    flat = diff.flatten()
    return {"max": round(flat.max().item(), 2), "mean": round(flat.mean().item(), 3),
            "p99": round(torch.quantile(flat[:: max(1, flat.numel() // 1_000_000)], 0.99).item(), 2)}


def measure_model(name: str, args: argparse.Namespace, photos: list[bytes], workdir: Path) -> dict[str, Any]:
    """Every row for one model."""
    import torch
    from device_preprocess import DevicePreprocessor

    from archive_scripts.inprocess import LocalWorker

    device = torch.device(args.device)
    compile_ = False if (args.no_compile or args.quick) else None
    precision = args.precision or ("fp32" if args.quick else None)
    started = time.perf_counter()
    directory = model_dir(name, workdir / name, precision, compile_)
    if device.type == "cuda":  # as TorchServe starts a GPU worker: gpu_id in the context
        worker = LocalWorker.from_model_dir(directory, gpu_id=device.index or 0)
    else:  # the device path driven on the CPU
        worker = LocalWorker.from_model_dir(directory, handler_overrides={"device": "cpu"})
    handler = worker.handler
    load_s = time.perf_counter() - started
    preprocessor = DevicePreprocessor(handler.config.tensor, handler.config.limits, device)
    spent = {"prepare": 0.0}
    prepare = handler.prepare_batch

    def timed_prepare(batch_photos: list[bytes]) -> Any:
        start = time.perf_counter()
        out = prepare(batch_photos)
        sync(device)
        spent["prepare"] += time.perf_counter() - start
        return out

    handler.prepare_batch = timed_prepare
    result: dict[str, Any] = {
        "precision": handler.config.precision, "compile": handler.config.engine == "compile",
        "engine": handler.config.engine,
        "initialize_s": round(load_s, 1), "tolerance_levels": tolerance(handler), "batches": {},
    }
    pipeline = raw_pipeline(handler)
    for size in args.batch_sizes:
        batch_photos = [photos[i % len(photos)] for i in range(size)]
        items = [{"body": p} for p in batch_photos]
        zeros = torch.zeros(size, 3, handler.config.tensor.crop, handler.config.tensor.crop, device=device)
        zeros = zeros.contiguous(memory_format=torch.channels_last)
        row: dict[str, Any] = {
            "raw_forward": rate(partial(handler.forward, zeros), size, device, args.seconds),
            "raw_pipeline": rate(partial(pipeline, batch_photos), size, device, args.seconds),
        }
        for label, pre in (("handler_device", preprocessor), ("handler_cpu", None)):
            handler.preprocessor = pre
            spent["prepare"] = 0.0
            started = time.perf_counter()
            stats: dict[str, Any] = rate(partial(worker.handle, items), size, device, args.seconds)
            total = time.perf_counter() - started
            answers = worker.handle(items)
            assert all(a.status == 200 for a in answers), [a.body for a in answers if a.status != 200]
            stats["preprocess_share"] = round(spent["prepare"] / total, 3) if total else None
            row[label] = stats
        for label, pre in (("preprocess_device", preprocessor), ("preprocess_cpu", None)):
            handler.preprocessor = pre
            row[label] = rate(partial(prepare, batch_photos), size, device, args.seconds)
        row["handler_device_vs_raw_pipeline"] = round(
            row["handler_device"]["images_per_s"] / row["raw_pipeline"]["images_per_s"], 3
        )
        row["device_vs_cpu_preprocess"] = round(
            row["preprocess_device"]["images_per_s"] / row["preprocess_cpu"]["images_per_s"], 2
        )
        result["batches"][str(size)] = row
        print(f"  {name} batch {size}: {json.dumps(row)}", flush=True)
    handler.preprocessor = preprocessor
    return result


def environment(device: Any, load_start: float) -> dict[str, Any]:
    """What ran the check: the device, the packages, and the machine (benchmarks/machine.py)."""
    import torch
    import torchvision

    from benchmarks.machine import cpu_name, machine

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_name()})"
    return {
        "device": name,
        "device_type": device.type,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        **machine(load_start),
    }


def markdown(report: dict[str, Any]) -> str:
    """The results as a short Markdown page."""
    env = report["environment"]
    lines = [
        f"# GPU check: {env['device']}",
        "",
        report["label"],
        "",
        (
            f"torch {env['torch']}, torchvision {env['torchvision']}, CUDA {env['cuda']}, "
            f"Python {env['python']}, {env['date']}; {report['mode']} mode, {report['photos']}."
        ),
        "",
        (
            f"Host: {env['cpu']}, {env['cores']} cores, load average {env['load_average_start']} at the start, "
            f"{env['load_average_end']} at the end."
        ),
        "",
        (
            "Goals (issue 16): handler with device decode ≥ 0.9× raw PyTorch decode+forward at batch 32; "
            "device preprocessing ≥ 3× CPU preprocessing per image."
        ),
        "",
        (
            "| model | precision | batch | raw forward img/s | raw decode+forward img/s | handler, device decode "
            "img/s (preprocess share) | handler, CPU decode img/s (preprocess share) | handler/raw | "
            "device/CPU preprocess |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in report["models"].items():
        precision = model["precision"] + (", compiled" if model["compile"] else "")
        for size, row in model["batches"].items():
            dev, cpu = row["handler_device"], row["handler_cpu"]
            lines.append(
                f"| {name} | {precision} | {size} | {row['raw_forward']['images_per_s']} | "
                f"{row['raw_pipeline']['images_per_s']} | {dev['images_per_s']} ({dev['preprocess_share']:.0%}) | "
                f"{cpu['images_per_s']} ({cpu['preprocess_share']:.0%}) | {row['handler_device_vs_raw_pipeline']} | "
                f"{row['device_vs_cpu_preprocess']}× |"
            )
    lines += ["", "Device path vs Pillow path on the golden photos (8-bit levels):", ""]
    for name, model in report["models"].items():
        tol = model["tolerance_levels"]
        lines.append(f"- {name}: max {tol['max']}, mean {tol['mean']}, 99th percentile {tol['p99']}")
    for name, error in report.get("failed", {}).items():
        lines += ["", f"**{name} failed:**", "", "```", error.strip().splitlines()[-1], "```"]
    lines += ["", "Initialize (load, compile, warm-up): "
              + ", ".join(f"{n} {m['initialize_s']} s" for n, m in report["models"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the check and write its results."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for path in (REPO_ROOT, HANDLERS_DIR):  # the handlers import each other by bare name, as in the worker
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import torch

    from benchmarks.throughput.photos import make_photos

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a smoke run (not GPU figures)", file=sys.stderr)
        return 2
    args.batch_sizes = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    args.seconds = min(args.seconds, 0.5) if args.quick else args.seconds
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    on_gpu = device.type == "cuda"
    report: dict[str, Any] = {
        "label": (
            f"Measured on a GPU ({torch.cuda.get_device_name(device)})." if on_gpu else
            "CPU SMOKE RUN: the device path driven on the CPU to prove the check runs. These are NOT GPU "
            "figures; the GPU figures are unmeasured until this runs on a GPU (benchmarks/gpu_check.sh)."
        ),
        "mode": "quick" if args.quick else "full",
        "environment": environment(device, load_start),
        "models": {},
        "failed": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        photos = [p.read_bytes() for p in make_photos(Path(tmp) / "photos")]
        report["photos"] = f"{len(photos)} JPEGs, 640×480 and 1600×1200 (benchmarks/throughput/photos.py)"
        for name in args.models.split(","):
            print(f"{name} ...", flush=True)
            try:
                report["models"][name] = measure_model(name, args, photos, Path(tmp))
            except Exception:  # noqa: BLE001 - a model that fails here is a finding: record it, measure the next
                report["failed"][name] = traceback.format_exc()
                print(report["failed"][name], file=sys.stderr, flush=True)
            report["elapsed_s"] = round(time.perf_counter() - started, 1)
            report["environment"] = environment(device, load_start)  # the load average at the end, too
            write(report, args.out, "gpu-check" if on_gpu else "gpu-check-cpu")  # a timeout keeps what was done
    return 1 if report["failed"] else 0


def write(report: dict[str, Any], out: Path, stem: str) -> None:
    """``stem``.json and ``stem``.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(report))
    print(f"wrote {out / stem}.{{json,md}} after {report['elapsed_s']} s", flush=True)

if __name__ == "__main__":
    sys.exit(main())
