"""Query time of the similarity index: our torch search against faiss-cpu IndexFlatL2 and plain numpy.

``python -m benchmarks.similarity_search [--sizes 10000 100000] [--batches 1 8] [--k 10] [--threads 1 0]
[--out benchmarks/results/similarity-search]``

Random unit vectors (D=1280, seeded), the same queries for every method, timed in alternating blocks
(torch, faiss, numpy, torch, ...) so that load from other processes hits them alike; the table shows the
median and the minimum of those runs. ``--threads 0`` means every core. faiss is optional: without it the
faiss column reads nan. The table, the index sizes and the machine (CPU, cores, load average, date) are
written to ``OUT.json`` and ``OUT.md`` (``--out ''`` writes nothing).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import machine, write_results
from handlers.similarity_index import SimilarityIndex

DIMENSION = 1280
METHODS = ("torch", "faiss", "numpy")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "similarity-search"


def unit_vectors(count: int, dimension: int, seed: int) -> torch.Tensor:
    """``count`` random unit vectors (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, dimension, generator=generator)
    return vectors / vectors.norm(dim=1, keepdim=True)


def interleaved_ms(
    runs: dict[str, Callable[[], object]], repeats: int, block: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times in ms of each run, measured in alternating blocks (A×10, B×10, C×10, A×10, ...).

    Alternating spreads background load over the methods alike; blocks (each after a short warm-up) keep
    one library's idle-spinning OpenMP/BLAS threads from being billed to the next library's first call.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    while any(len(t) < repeats for t in times.values()):
        for name, run in runs.items():
            for _ in range(warmup):
                run()
            for _ in range(min(block, repeats - len(times[name]))):
                started = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - started) * 1e3)
    return times


def numpy_search(matrix: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in numpy: one matmul, argpartition, then sort the k winners."""
    similarities = queries @ matrix.T
    top = np.argpartition(-similarities, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarities, top, axis=1), axis=1)
    indices = np.take_along_axis(top, order, axis=1)
    return np.sqrt(np.maximum(2 - 2 * np.take_along_axis(similarities, indices, axis=1), 0)), indices


def file_mb(index: SimilarityIndex, dtype: torch.dtype) -> float:
    """Size of the saved index file in MB (10⁶ bytes)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.pt"
        index.save(path, dtype=dtype)
        return path.stat().st_size / 1e6


def bench_size(
    size: int, args: argparse.Namespace, faiss: Any, threadpoolctl: Any
) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """Time every method at ``size`` items; returns the table rows, their figures and the index sizes."""
    index = SimilarityIndex([f"item-{i}" for i in range(size)], unit_vectors(size, DIMENSION, seed=size))
    matrix = np.ascontiguousarray(index.embeddings.numpy())  # N × D, each library's preferred layout
    flat = None
    if faiss is not None:
        flat = faiss.IndexFlatL2(DIMENSION)
        flat.add(matrix)
    rows: list[str] = []
    results: list[dict[str, Any]] = []
    for threads in args.threads:
        count = threads or os.cpu_count() or 1
        torch.set_num_threads(count)
        if faiss is not None:
            faiss.omp_set_num_threads(count)
        limits = threadpoolctl.threadpool_limits(count) if threadpoolctl else None
        for batch in args.batches:
            queries = unit_vectors(batch, DIMENSION, seed=size + batch)
            q = queries.numpy()
            runs: dict[str, Callable[[], object]] = {
                "torch": lambda: index.search(queries, args.k),  # noqa: B023 - called before the loop moves on
                "numpy": lambda: numpy_search(matrix, q, args.k),  # noqa: B023
            }
            agree = None
            if flat is not None:
                runs["faiss"] = lambda: flat.search(q, args.k)  # noqa: B023
                agree = bool(np.array_equal(index.search(queries, args.k)[1].numpy(), flat.search(q, args.k)[1]))
                if not agree:
                    rows.append(f"  note: torch and faiss disagree on some neighbours at {size} items, batch {batch}")
            times = interleaved_ms(runs, args.repeats)
            median = {m: statistics.median(times[m]) if m in times else float("nan") for m in METHODS}
            best = {m: min(times[m]) if m in times else float("nan") for m in METHODS}
            rows.append(
                f"{size:>8} {count:>4} {batch:>5} | "
                + " ".join(f"{median[m]:>8.2f}" for m in METHODS)
                + f" | {median['faiss'] / median['torch']:>7.2f} {median['numpy'] / median['torch']:>7.2f} | "
                + " ".join(f"{best[m]:>8.2f}" for m in METHODS)
                + f" | {best['faiss'] / best['torch']:>7.2f}"
            )
            results.append(
                {
                    "items": size,
                    "threads": count,
                    "batch": batch,
                    "median_ms": {m: _number(median[m]) for m in METHODS},
                    "min_ms": {m: _number(best[m]) for m in METHODS},
                    "faiss_agrees_with_torch": agree,
                }
            )
        if limits is not None:
            limits.restore_original_limits()
    sizes = {
        "items": size,
        "memory_mb_float32": round(index.size_mb(), 1),
        "file_mb_float32": round(file_mb(index, torch.float32), 1),
        "file_mb_float16": round(file_mb(index, torch.float16), 1),
        "faiss_copy_mb": round(flat.ntotal * DIMENSION * 4 / 1e6, 1) if flat is not None else None,
    }
    faiss_copy = f"; faiss IndexFlatL2 holds its own copy ({sizes['faiss_copy_mb']:.1f} MB)" if flat else ""
    print(
        f"{size:>7} items: {sizes['memory_mb_float32']:.1f} MB in memory (float32); index file "
        f"{sizes['file_mb_float32']:.1f} MB as float32, {sizes['file_mb_float16']:.1f} MB as float16" + faiss_copy,
        flush=True,
    )
    return rows, results, sizes


def _number(value: float) -> float | None:
    """A JSON-safe number: rounded, NaN (a method that did not run) as None."""
    return None if math.isnan(value) else round(value, 3)


def markdown(report: dict[str, Any]) -> str:
    """The results file's table in Markdown."""
    m = report["machine"]
    lines = [
        (
            f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores (load average {m['load_average_start']} at start,"
            f" {m['load_average_end']} at the end) by `{report['command']}`: torch {report['versions']['torch']},"
            f" numpy {report['versions']['numpy']}, faiss {report['versions']['faiss']}; D={report['dimension']},"
            f" k={report['k']}, {report['repeats']} runs per method. ms per query batch; ratio = other / torch"
            " (above 1: torch is faster)."
        ),
        "",
        (
            "| items | threads | batch | torch ms | faiss ms | numpy ms | faiss / torch | numpy / torch"
            " | torch min ms | faiss min ms | numpy min ms |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a / b:.2f}"

    for r in report["results"]:
        med, low = r["median_ms"], r["min_ms"]
        lines.append(
            f"| {r['items']:,} | {r['threads']} | {r['batch']} | {cell(med['torch'])} | {cell(med['faiss'])}"
            f" | {cell(med['numpy'])} | {ratio(med['faiss'], med['torch'])} | {ratio(med['numpy'], med['torch'])}"
            f" | {cell(low['torch'])} | {cell(low['faiss'])} | {cell(low['numpy'])} |"
        )
    lines += ["", "| items | in memory MB (float32) | file MB float32 | file MB float16 | faiss's own copy MB |"]
    lines.append("|---:|---:|---:|---:|---:|")
    for z in report["index_sizes"]:
        faiss_mb = "-" if z["faiss_copy_mb"] is None else f"{z['faiss_copy_mb']:.1f}"
        lines.append(
            f"| {z['items']:,} | {z['memory_mb_float32']:.1f} | {z['file_mb_float32']:.1f}"
            f" | {z['file_mb_float16']:.1f} | {faiss_mb} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.similarity_search", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0 = every core")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results files OUT.json and OUT.md ('' = print only)")
    return parser.parse_args(argv)


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)
    load_start = os.getloadavg()[0]
    faiss, threadpoolctl = _optional("faiss"), _optional("threadpoolctl")
    faiss_version = faiss.__version__ if faiss else "not installed"
    print(f"torch {torch.__version__}, numpy {np.__version__}, faiss {faiss_version}")
    print(f"{os.cpu_count()} CPU cores, D={DIMENSION}, k={args.k}, {args.repeats} runs per method")
    rows: list[str] = []
    results: list[dict[str, Any]] = []
    index_sizes: list[dict[str, Any]] = []
    for size in args.sizes:
        size_rows, size_results, sizes = bench_size(size, args, faiss, threadpoolctl)
        rows += size_rows
        results += size_results
        index_sizes.append(sizes)
    print("\nms per query batch; ratio = other / torch (above 1: torch is faster)\n")
    print(f"{'':>19} | {'median ms':^26} | {'ratio':^15} | {'minimum ms':^26} | {'ratio':^7}")
    header = (
        f"{'items':>8} {'thr':>4} {'batch':>5} | "
        + " ".join(f"{m:>8}" for m in METHODS)
        + f" | {'faiss/t':>7} {'numpy/t':>7} | "
        + " ".join(f"{m:>8}" for m in METHODS)
        + f" | {'faiss/t':>7}"
    )
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    if args.out:
        report = {
            "command": " ".join(["python -m benchmarks.similarity_search", *arguments]).strip(),
            "machine": machine(load_start),
            "versions": {"torch": torch.__version__, "numpy": np.__version__, "faiss": faiss_version},
            "dimension": DIMENSION,
            "k": args.k,
            "repeats": args.repeats,
            "results": results,
            "index_sizes": index_sizes,
        }
        write_results(args.out, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
