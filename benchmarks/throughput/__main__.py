"""``make bench`` / ``make bench-quick``: throughput and latency of every way we could serve a model, side by side.

    .venv/bin/python -m benchmarks.throughput [--model classifier|resnet18|...] [--quick] [--concurrency 1 8 32]
                                               [--duration S] [--warmup S]
                                               [--passes N] [--rows prototype torchserve_stock ...]
                                               [--no-recording] [--no-serving-path] [--no-shadow] [--keep]

One invocation measures one model (default: the classifier, EfficientNet-Lite0), on the same real JPEG photos
(640×480 and 1600×1200):

1. the limit: in-process decode + our preprocessing + the forward on the archive's engine (the fastest this
   machine has for the model), at each load the best of the layouts that hold no more photos than that load;
2. resnet18 only: the seed's prototype design (a faithful baseline, not our code path): ThreadingHTTPServer;
3. resnet18 only: TorchServe with its stock ``image_classifier`` handler (archive built here, in a temporary store);
4. TorchServe with our handler on eager PyTorch and the layout served until engines existed (built here), and
   TorchServe with our archive as ``make up`` serves it, each called directly with its token;
5. the full stack: our bridge in front of (4), recording to PostgreSQL and InfluxDB — through ``/predictions``,
   and the same photos through the Open Inference Protocol (``POST /v2/models/resnet18/infer``): binary tensor
   data as tritonclient sends it, base64 JSON, and binary with 8 photos per request (at 8 and 32 photos in
   flight, as 1 and 4 requests), each with the bridge's CPU per request beside ``/predictions``' in the same passes;
6. the classifier only: shadowing under load (:mod:`benchmarks.throughput.shadowing`): version 1.1 registered
   beside the live one with one worker, a copy of every live request at 100 %, the live latency through (5)'s bridge
   at 1 and 2 in flight (``--quick``: 1) in phases off/on/on/off, and what became of the copies;
7. the serving path's own cost: CPU ms per request of the bridge and of TorchServe's frontend read from /proc
   per process, ``hey`` beside our load generator, idle CPU, and a null model's ceiling
   (:mod:`benchmarks.throughput.bridge_cost`, on a private stack on free ports).

Load for 2–5 comes from a separate process (:mod:`benchmarks.throughput.loadgen`) holding 1, 8 and 32
requests in flight. Each load is measured in passes (3 by default); in every pass the limit runs again and
the rows follow one another, so bursts of other users' load on this shared machine hit all of them alike —
and the CPU that other processes used meanwhile is reported beside every figure ("others' cores"), with
the CPU time per image, which such load disturbs far less than images/s.
Every server is the benchmark's own, on its own ports (18000, 18080–18085, 18090, 17070–17073)
under ``.state/bench/``; all are stopped at the end, also on Ctrl-C. Then the recording path alone
(:mod:`benchmarks.throughput.recording`). Results: a printed table, ``benchmarks/results/latest.json``,
``latest.png`` and ``latest.md`` (``latest-quick.*`` with ``--quick``, so CI never replaces the full figures).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from archive_scripts.build import sha256_file
from archive_scripts.specs import SPECS, find_spec
from benchmarks.machine import cpu_name
from benchmarks.throughput import paired, report, shadowing
from benchmarks.throughput.limit import Layout, system_busy_s
from benchmarks.throughput.limit import measure as measure_limit
from benchmarks.throughput.photos import describe, load_photos, make_photos
from benchmarks.throughput.report import Limit, Measurement
from benchmarks.throughput.servers import (
    BENCH_DATABASE,
    Servers,
    Target,
    all_ports,
    bench_dsn,
    check_ports_free,
    extract_weights,
    recorded_counts,
    snapshot_archive,
)
from benchmarks.throughput.shadow_report import DESCRIPTION as SHADOW_DESCRIPTION
from benchmarks.throughput.shadow_report import SHADOW_HEADER, shadow_goals, shadow_lines
from stack.services import REPO_ROOT, InfluxDB, PostgreSQL, StackError, TorchServe, log
from stack.settings import StackSettings

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


@dataclass(frozen=True)
class Plan:
    """How long and at which loads everything runs."""

    concurrencies: tuple[int, ...]
    warmup_s: float  # before each pass
    duration_s: float  # measured seconds per row and load, split over the passes
    passes: int
    limit_layouts: tuple[Layout, ...]
    limit_warmup_s: float
    limit_duration_s: float
    rows: tuple[str, ...]
    recording: bool
    serving_path: bool
    quick: bool
    model: str = "classifier"
    shadow: bool = False  # the shadowing row (full stack, a candidate version at 100 %)

    @property
    def pass_s(self) -> float:
        """Measured seconds of one pass."""
        return self.duration_s / self.passes

    def estimate_s(self) -> float:
        """A rough duration, for the opening line."""
        sweep = len(self.limit_layouts) * (self.limit_warmup_s + self.limit_duration_s + 5)
        rounds = len(self.concurrencies) * self.passes
        per_round = len(self.rows) * (self.warmup_s + self.pass_s + 1) + self.limit_warmup_s + self.pass_s + 5
        path = (self.idle_s + 5 * (self.warmup_s + self.pass_s) + 30) * self.serving_path
        shadow = (25 + len(self.shadow_loads) * (4 * (self.warmup_s + self.shadow_phase_s + 1) + 8)) * self.shadow
        return (sweep + rounds * per_round + 10 * len(self.rows) + (40 if self.quick else 90) * self.recording + path
                + shadow)

    @property
    def shadow_loads(self) -> tuple[int, ...]:
        """Photos in flight of the shadowing row: moderate loads, where the cores are not saturated."""
        return (1,) if self.quick else (1, 2)

    @property
    def shadow_phase_s(self) -> float:
        """Measured seconds of each of a shadowing load's four phases (off, on, on, off)."""
        return self.duration_s if self.quick else self.duration_s / 2

    @property
    def idle_s(self) -> float:
        """Seconds of no traffic over which the serving path's idle CPU is measured."""
        return 10.0 if self.quick else 30.0


# A load's limit is its best layout holding no more photos than it has in flight: 1 → one process, batch 1, both
# threads; 8 → batches of 4 in two processes or 8 in one; 32 → any.
FULL_LAYOUTS = tuple(Layout(p, t, b) for p, t in ((2, 1), (1, 2)) for b in (1, 4, 8, 16))
QUICK_LAYOUTS = (Layout(1, 2, 1), Layout(2, 1, 4), Layout(1, 2, 8))


def parse_args(argv: list[str]) -> tuple[Plan, argparse.Namespace]:
    """Options → a plan (``--quick`` changes the defaults)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="classifier", choices=[s.name for s in SPECS],
                   help="the model served and measured (default classifier; the prototype and stock rows: resnet18)")
    p.add_argument("--quick", action="store_true", help="CI mode: short runs, 1 and 8 in flight, fewer limit layouts")
    p.add_argument("--concurrency", type=int, nargs="+", help="requests in flight to sweep (default 1 8 32; quick 1 8)")
    p.add_argument("--warmup", type=float, help="seconds of load before each measured pass (default 3; quick 2)")
    p.add_argument("--duration", type=float, help="measured seconds per row and load (default 21; quick 5)")
    p.add_argument("--passes", type=int, help="split each measurement into this many passes, the rows and the limit "
                   "alternating, so bursts of other users' load hit them alike (default 3; quick 1)")
    p.add_argument("--rows", nargs="+", choices=report.TABLE_ROWS, default=None,
                   help="served rows to run (default: all); the limit always runs; the OIP rows use full_stack's bridge")
    p.add_argument("--no-recording", action="store_true", help="skip the recording-path benchmark")
    p.add_argument("--no-serving-path", action="store_true",
                   help="skip the serving path's own cost (idle CPU, null model, hey)")
    p.add_argument("--no-shadow", action="store_true",
                   help="skip the shadowing row (the classifier's full stack with version 1.1 shadowing 100 %%)")
    p.add_argument("--prototype-threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads of the prototype baseline (default: every core, torch's own default)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR,
                   help="where latest.json/.png/.md go (latest-quick.* for --quick)")
    p.add_argument("--keep", action="store_true", help="keep the run's folder under .state/bench (logs, photos)")
    args = p.parse_args(argv)
    quick = args.quick
    rows = args.rows or [r for r in report.TABLE_ROWS if args.model == "resnet18" or r not in report.RESNET_ONLY_ROWS]
    if args.model != "resnet18" and set(rows) & set(report.RESNET_ONLY_ROWS):
        p.error(f"the rows {', '.join(report.RESNET_ONLY_ROWS)} are baselines written for resnet18 (--model resnet18)")
    plan = Plan(
        concurrencies=tuple(args.concurrency or ((1, 8) if quick else (1, 8, 32))),
        warmup_s=args.warmup if args.warmup is not None else (2.0 if quick else 3.0),
        duration_s=args.duration if args.duration is not None else (5.0 if quick else 21.0),
        passes=args.passes or (1 if quick else 3),
        limit_layouts=QUICK_LAYOUTS if quick else FULL_LAYOUTS,
        limit_warmup_s=2.0 if quick else 3.0,
        limit_duration_s=4.0 if quick else 10.0,
        rows=tuple(r for r in report.TABLE_ROWS if r in rows),
        recording=not args.no_recording,
        serving_path=not args.no_serving_path,
        quick=quick,
        model=args.model,
        shadow=not args.no_shadow and "full_stack" in rows and args.model in shadowing.CANDIDATES,
    )
    if any(c < 1 for c in plan.concurrencies) or plan.duration_s <= 0 or plan.warmup_s < 0 or plan.passes < 1:
        p.error("--concurrency and --passes must be ≥ 1, --duration > 0 and --warmup ≥ 0")
    if "full_stack" in plan.rows and "torchserve_ours" not in plan.rows:
        p.error("the full_stack row needs the torchserve_ours row (the bridge sits in front of it)")
    if any(r in report.OIP_MODES for r in plan.rows) and "full_stack" not in plan.rows:
        p.error("the OIP rows need the full_stack row (they go through its bridge)")
    return plan, args


def heading(text: str) -> None:
    """A section line."""
    print(f"\n== {text}", flush=True)


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": "none (CPU only)",
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "torchvision": metadata.version("torchvision"),
        "torchserve": metadata.version("torchserve"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": round(os.getloadavg()[0], 2),
    }


def ensure_archive(model: str) -> Path:
    """model_store/{model}_v{version}.mar, built (and gated) when missing or out of date."""
    mar = REPO_ROOT / "model_store" / find_spec(model).archive_name
    log(f"{mar.relative_to(REPO_ROOT)}: building it if missing or out of date (python -m archive_scripts {model}) ...")
    result = subprocess.run([sys.executable, "-m", "archive_scripts", model], cwd=REPO_ROOT, check=False)
    if result.returncode != 0 or not mar.exists():
        raise StackError(f"building the {model} archive failed (see above)")
    return mar


def run_load(target: Target, photos_dir: Path, concurrency: int, plan: Plan, log_dir: Path,
             marks: dict[str, datetime] | None = None) -> tuple[Measurement, list[float]]:
    """One pass of the load generator against ``target`` (CPU sampled at its START/END lines), and its latencies.

    ``concurrency`` counts photos in flight: a target of N photos per request holds concurrency / N requests.
    ``marks``, when given, receives the wall-clock (UTC) times of the measured window's ``start`` and ``end``.
    """
    requests = max(1, concurrency // target.photos_per_request)
    cmd = [sys.executable, "-m", "benchmarks.throughput.loadgen", "--url", target.url, "--photos", str(photos_dir),
           "--concurrency", str(requests), "--warmup", str(plan.warmup_s), "--duration", str(plan.pass_s),
           "--method", target.method]
    if target.oip:
        cmd += ["--oip", target.oip, "--per-request", str(target.photos_per_request)]
    for header in target.headers():
        cmd += ["--header", header]
    log_dir.mkdir(parents=True, exist_ok=True)
    before = after = None
    busy_start = busy_end = 0.0
    result: dict[str, Any] | None = None
    with open(log_dir / "loadgen.log", "ab") as stderr:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.strip()
                if line == "START":
                    if marks is not None:
                        marks["start"] = datetime.now(UTC)
                    busy_start = system_busy_s()
                    before = target.group.cpu_snapshot()
                elif line == "END":
                    if marks is not None:
                        marks["end"] = datetime.now(UTC)
                    busy_end = system_busy_s()
                    after = target.group.cpu_snapshot()
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT "):])
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if result is None or before is None or after is None:
        raise StackError(f"the load generator failed against {target.url}; see {log_dir / 'loadgen.log'}")
    cpu_s, breakdown = target.group.cpu_delta(before, after)
    others = (busy_end - busy_start - cpu_s - result["client_cpu_s"]) / result["window_s"]
    if result["errors"]:
        log(f"  {result['errors']} errors: statuses {result['statuses']}, failures {result['failures']}, "
            f"e.g. {result['error_samples'][:2]}")
    return Measurement(
        row=target.row, concurrency=concurrency, images_per_s=result["images_per_s"],
        p50_ms=_nan(result["p50_ms"]), p95_ms=_nan(result["p95_ms"]), p99_ms=_nan(result["p99_ms"]),
        cpu_s=cpu_s, window_s=result["window_s"], ok=result["ok"], errors=result["errors"],
        cpu_breakdown=breakdown, client_cpu_s=result["client_cpu_s"], sent_total=result["sent_total"],
        others_cores=max(0.0, others), mean_batch=_nan(result["mean_batch"]),
        photos_per_request=result["photos_per_request"],
    ), result["latencies_ms"]


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def wait_recorded(dsn: str, expected: int, timeout_s: float = 20.0) -> tuple[int, int]:
    """(rows, points) once the bridge's recorder has written at least ``expected`` rows (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    counts = recorded_counts(dsn)
    while counts[0] < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        counts = recorded_counts(dsn)
    return counts


def print_table(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> None:
    """A table to stdout."""
    print(report.render_text(header, lines), flush=True)


def serve_and_measure(plan: Plan, run_dir: Path, photos_dir: Path, archive: Path, weights: Path,
                      our_config: dict[str, Any], args: argparse.Namespace) -> tuple[Limit, list[Measurement], dict[str, Any]]:
    """The limit, then every served row at every load; servers stopped before returning."""
    heading(f"limit: in-process, {len(plan.limit_layouts)} layouts × {plan.limit_duration_s:g} s")
    candidates, limit_details = [], {}
    for layout in plan.limit_layouts:
        log(f"limit {layout.label} ...")
        measurement, details = measure_limit(layout, archive, run_dir, photos_dir, plan.limit_warmup_s, plan.limit_duration_s)
        log(f"  {measurement.images_per_s:.1f} img/s, {measurement.cpu_cores:.2f} cores")
        if measurement.others_cores > report.NOISY_CORES:  # other users took the cores it was measuring: once more
            log(f"  others used {measurement.others_cores:.2f} cores meanwhile: measuring {layout.label} again ...")
            again, details = measure_limit(layout, archive, run_dir, photos_dir, plan.limit_warmup_s, plan.limit_duration_s)
            log(f"  {again.images_per_s:.1f} img/s, others {again.others_cores:.2f} cores")
            measurement = min((measurement, again), key=lambda m: m.others_cores)
        candidates.append(measurement)
        limit_details[layout.label] = details
    limit = Limit(candidates)
    log("best by load: " + ", ".join(f"{c} in flight {limit.best_for(c).config}" for c in plan.concurrencies))

    photo = min(photos_dir.glob("*.jpg")).read_bytes()
    servers = Servers(run_dir, archive, weights, our_config, photo, args.prototype_threads, plan.model)
    runs: list[Measurement] = []
    extras: dict[str, Any] = {"cold_start": {}, "memory": {}}
    try:
        heading("starting the benchmark's own servers (cold start: processes spawned → first prediction)")
        targets: list[Target] = []
        starters = {
            "prototype": servers.start_prototype,
            "torchserve_stock": servers.start_torchserve_stock,
            "torchserve_eager": servers.start_torchserve_eager,
            "torchserve_ours": servers.start_torchserve_ours,
        }
        for row in (r for r in plan.rows if r in report.SERVED_ROWS):
            log(f"{report.ROWS[row]} ...")
            target = servers.start_bridge(targets[-1]) if row == "full_stack" else starters[row]()
            targets.append(target)
            extras["cold_start"][row] = target.cold_start
            log(f"  ready in {target.cold_start['ready_s']:.1f} s, first prediction at {target.cold_start['first_prediction_s']:.1f} s")
        bridge = next((t for t in targets if t.row == "full_stack"), None)
        for row in (r for r in plan.rows if r in report.OIP_MODES):
            assert bridge is not None  # parse_args refuses OIP rows without full_stack
            encoding, per_request = report.OIP_MODES[row]
            targets.append(servers.oip_target(bridge, row, encoding, per_request))
            log(f"{report.ROWS[row]}: {targets[-1].url} answers")

        heading(f"load: {', '.join(map(str, plan.concurrencies))} in flight × {len(targets)} rows, "
                f"{plan.passes} pass(es) of {plan.warmup_s:g} s warm-up + {plan.pass_s:g} s each; in every pass the "
                f"limit (that load's best layout) runs again and the rows alternate")
        for concurrency in plan.concurrencies:
            best = next(layout for layout in plan.limit_layouts if layout.label == limit.best_for(concurrency).config)
            parts: dict[str, list[Measurement]] = {t.row: [] for t in targets}
            latencies: dict[str, list[float]] = {t.row: [] for t in targets}
            for number in range(1, plan.passes + 1):
                log(f"{concurrency} in flight, pass {number}/{plan.passes}: limit ({best.label}) ...")
                repeat, _ = measure_limit(best, archive, run_dir, photos_dir, plan.limit_warmup_s, plan.pass_s)
                repeat.config = f"{best.label} (with {concurrency} in flight, pass {number})"
                repeat.load = concurrency
                limit.repeats.append(repeat)
                line = [f"limit {repeat.images_per_s:.1f}"]
                for target in targets:
                    if concurrency % target.photos_per_request:
                        continue  # N photos per request: only where N divides the photos in flight
                    m, lat = run_load(target, photos_dir, concurrency, plan, run_dir / "logs")
                    parts[target.row].append(m)
                    latencies[target.row] += lat
                    line.append(f"{target.row} {m.images_per_s:.1f}")
                log("  img/s: " + ", ".join(line) + f" (others' cores ≈ {repeat.others_cores:.1f})")
            for target in targets:
                if not parts[target.row]:
                    continue
                m = report.merge(parts[target.row], latencies[target.row])
                runs.append(m)
                log(f"{report.ROWS[target.row]}, {concurrency} in flight: {m.images_per_s:.1f} img/s, "
                    f"p50 {m.p50_ms:.0f} ms, p99 {m.p99_ms:.0f} ms, CPU {m.cpu_cores:.2f} cores "
                    f"({m.cpu_ms_per_image:.0f} ms/img), others {m.others_cores:.2f} cores"
                    + (f", mean batch {m.mean_batch:.1f}" if not math.isnan(m.mean_batch) else ""))
        log("limit used for the ratios: " + ", ".join(
            f"{c} in flight {limit.images_per_s_at(c):.1f} img/s ({limit.best_for(c).config})" for c in plan.concurrencies))

        direct = next((t for t in targets if t.row == "torchserve_ours"), None)
        if bridge is not None and direct is not None:
            extras["added_latency"] = added_latency(bridge, direct, photos_dir, plan)
        extras["model"] = plan.model

        if plan.serving_path:
            extras["serving_path"] = {"runs": [hey_model(targets, photos_dir, plan)]}

        for target in targets:
            if target.row in report.OIP_MODES:
                continue  # the full stack's own processes
            processes = target.group.memory()
            if target.row == "full_stack":  # its TorchServe is the previous row's: list only what the bridge adds
                processes = [p for p in processes if "TorchServe" not in p["role"] and "torchserve" not in p["role"]]
            extras["memory"][target.row] = processes
        extras["memory"]["limit"] = limit_details[limit.best.config]["memory"]
        if "full_stack" in plan.rows:
            through = ("full_stack", *report.OIP_ROWS)  # each photo of an OIP request is recorded on its own
            sent = sum(m.sent_total * m.photos_per_request for m in runs if m.row in through) + 1
            rows, points = wait_recorded(bench_dsn(), sent)
            extras["full_stack_recorded"] = {
                "requests_sent_to_bridge_at_least": sent, "postgres_rows": rows, "influxdb_points": points,
                "database": BENCH_DATABASE,
            }
            log(f"full stack recorded {rows} rows in PostgreSQL and {points} points in InfluxDB "
                f"for ≥ {sent} requests (database {BENCH_DATABASE})")
            if rows < sent or points < sent:
                log(f"WARNING: {sent - min(rows, points)} requests through the bridge are missing from the record "
                    f"(see {run_dir / 'logs' / 'bridge.log'})")
        if plan.shadow and bridge is not None and servers.ours is not None:  # last: its candidate worker stays
            extras["shadowing"] = measure_shadowing(bridge, servers.ours, photos_dir, photo, plan, run_dir)
    finally:
        heading("stopping the benchmark's servers")
        servers.stop_all()
    extras["limit_details"] = limit_details
    return limit, runs, extras


def measure_shadowing(bridge: Target, ours: TorchServe, photos_dir: Path, photo: bytes, plan: Plan,
                      run_dir: Path) -> dict[str, Any]:
    """The shadowing row (:mod:`benchmarks.throughput.shadowing`) on the full stack's bridge and TorchServe."""
    version = shadowing.CANDIDATES[plan.model][0]
    heading(f"shadowing: {plan.model} {version} copied 100 % of live requests, at {', '.join(map(str, plan.shadow_loads))} "
            f"in flight, phases off/on/on/off of {plan.warmup_s:g} s warm-up + {plan.shadow_phase_s:g} s")

    def load(target: Target, concurrency: int, seconds: float, marks: dict[str, datetime]) -> tuple[Measurement, list[float]]:
        return run_load(target, photos_dir, concurrency, replace(plan, duration_s=seconds, passes=1), run_dir / "logs",
                        marks)

    return shadowing.measure(bridge, ours, bench_dsn(), plan.model, find_spec(plan.model).version, photo,
                             plan.shadow_loads, plan.shadow_phase_s, load, run_dir / "model_store",
                             run_dir / "candidate_build")


def added_latency(bridge: Target, direct: Target, photos_dir: Path, plan: Plan) -> dict[str, Any]:
    """The latency the bridge adds at 1 in flight, paired (:mod:`benchmarks.throughput.paired`), the run's model."""
    pairs = 60 if plan.quick else 200

    def endpoint(target: Target) -> paired.Endpoint:
        headers = dict(h.split(": ", 1) for h in target.headers())
        return paired.Endpoint(target.url, target.method, headers)

    log(f"latency added at 1 in flight: {pairs} photos through the bridge and direct, alternating ...")
    doc = paired.measure(endpoint(bridge), endpoint(direct), load_photos(photos_dir), pairs)
    log("  " + paired.render(doc))
    return doc


HEY_ROLES = {"bridge": "bridge", "TorchServe frontend (Java)": "frontend", "TorchServe worker": "workers"}


def hey_model(targets: list[Target], photos_dir: Path, plan: Plan) -> dict[str, Any]:
    """``hey`` (a load generator we did not write) against the bridge and TorchServe direct, the run's model."""
    from benchmarks.throughput.bridge_cost import Processes, hey

    concurrency = report.COST_GOAL_CONCURRENCY
    doc: dict[str, Any] = {"model": plan.model, "concurrency": concurrency, "duration_s": plan.pass_s}
    photo = min(photos_dir.glob("*.jpg"))
    for target in targets:
        name = {"full_stack": "bridge_hey", "torchserve_ours": "direct_hey"}.get(target.row)
        if name is None:
            continue
        roles: dict[str, list[int]] = {}
        for pid, (role, _) in target.group.processes().items():
            if role in HEY_ROLES:
                roles.setdefault(HEY_ROLES[role], []).append(pid)
        log(f"hey → {report.ROWS[target.row]}, {concurrency} in flight, {plan.pass_s:g} s ...")
        run = hey(target.url, target.method, target.headers(), photo, concurrency, plan.pass_s, Processes(roles))
        log(f"  {run['requests_per_s']} req/s (hey's own figure {run['hey_requests_per_s']}), CPU ms/request "
            + ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_ms_per_request"].items() if v is not None))
        doc[name] = run
    return doc


def serving_path(run_dir: Path, plan: Plan) -> dict[str, Any]:
    """The null model on a private stack: idle CPU, the ceiling in requests/s per core, with ours and hey."""
    from benchmarks.throughput.bridge_cost import measure

    heading(f"serving path: idle {plan.idle_s:g} s, then a null model (answers at once) at "
            f"{report.COST_GOAL_CONCURRENCY} in flight, through the bridge and direct")
    doc = measure("null", report.COST_GOAL_CONCURRENCY, plan.warmup_s, plan.pass_s, plan.idle_s, True, None,
                  run_dir / "serving_path")
    from benchmarks.throughput.bridge_cost import render

    print(render(doc), flush=True)
    return doc


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run everything, print the tables, write the results; 1 on a clear error, 130 when interrupted."""
    plan, args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    machine = machine_info()
    print(f"Throughput benchmark{' (quick)' if plan.quick else ''}: about {plan.estimate_s() / 60:.0f} min. "
          f"{machine['cpu']}, {machine['cores']} cores, load average {machine['load_average_start']}", flush=True)
    bench_dir = StackSettings().state_dir / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="throughput-", dir=bench_dir))
    try:
        check_ports_free(all_ports())
        if "full_stack" in plan.rows or plan.recording:
            for service in (PostgreSQL(), InfluxDB()):
                if service.up():
                    log(f"{service.name} was not running: started it as `make up` would (`make down` stops it)")
        archive = snapshot_archive(ensure_archive(plan.model), run_dir / "model_store")
        weights, our_config = extract_weights(archive, run_dir / "model")
        photos_dir = run_dir / "photos"
        photo_paths = make_photos(photos_dir)
        photos = describe(photo_paths)
        log(f"{len(photos)} photos: " + ", ".join(sorted({f"{p['width']}×{p['height']}" for p in photos})))

        limit, runs, extras = serve_and_measure(plan, run_dir, photos_dir, archive, weights, our_config, args)
        if plan.serving_path:
            extras.setdefault("serving_path", {"runs": []})["runs"].append(serving_path(run_dir, plan))
        machine["load_average_end"] = round(os.getloadavg()[0], 2)

        heading("results: throughput and latency (ratios to the limit measured in this run)")
        print_table(report.LIMIT_HEADER, report.limit_lines(limit))
        print()
        print_table(report.TABLE_HEADER, report.table_rows(limit, runs))
        print()
        print_table(report.COLD_HEADER, report.cold_start_lines(extras["cold_start"]))
        print()
        print_table(report.MEMORY_HEADER, report.memory_lines(extras["memory"]))
        print()
        print_table(report.PROCESS_COST_HEADER, report.process_cost_lines(runs))
        gap = report.handler_gap_lines(report.handler_gap(runs, limit))
        if gap:
            print()
            print_table(report.GAP_HEADER, gap)
        added = report.added_latency_lines(report.added_latency(extras))
        if added:
            print()
            print_table(report.ADDED_HEADER, added)
        if any(m.row in report.OIP_MODES for m in runs):
            print()
            print_table(report.OIP_HEADER, report.oip_lines(runs))
        if "serving_path" in extras:
            print()
            print_table(report.SERVING_PATH_HEADER, report.serving_path_lines(extras["serving_path"]))
            print()
            print_table(report.IDLE_HEADER, report.idle_lines(extras["serving_path"]))
        if extras.get("shadowing"):
            print(f"\n{SHADOW_DESCRIPTION}")
            print_table(SHADOW_HEADER, shadow_lines(extras["shadowing"]))

        recording = None
        if plan.recording:
            heading("recording path alone")
            recording = _recording(run_dir, plan)
            print()
            print_table(report.RECORDING_HEADER, report.recording_lines(recording))

        settings = {
            "model": f"{plan.model} ({archive.name}: engine {our_config.get('handler', {}).get('engine')}, "
                     f"{our_config.get('handler', {}).get('architecture')})",
            "archive_sha256": sha256_file(archive),
            "batching": {k: our_config.get(k) for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")},
            "handler_threads": our_config.get("handler", {}).get("threads"),
            "concurrencies": list(plan.concurrencies), "warmup_s": plan.warmup_s, "duration_s": plan.duration_s,
            "passes": plan.passes,
            "limit_layouts": [layout.label for layout in plan.limit_layouts], "quick": plan.quick,
            "model_name": plan.model,
            "prototype_torch_threads": args.prototype_threads, "photos": photos,
        }
        document = report.results_document(machine, settings, limit, runs, extras, recording,
                                           shadow_goals(extras.get("shadowing")))
        heading("goals")
        goals = [report.Goal(**g) for g in document["goals"]]
        print_table(report.GOAL_HEADER, report.goal_lines(goals))
        _write_outputs(document, limit, runs, extras, recording, goals, args.out)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped", file=sys.stderr)
        return 130
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"run folder kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def _recording(run_dir: Path, plan: Plan) -> dict[str, Any]:
    """The recording-path benchmark, in the benchmark's own databases, left empty afterwards."""
    from benchmarks.throughput import recording
    from benchmarks.throughput.servers import influx_query, prepare_databases

    dsn = prepare_databases()
    try:
        return recording.run(dsn, "127.0.0.1", 8086, BENCH_DATABASE, run_dir, plan.quick)
    finally:
        prepare_databases()  # empty again: no benchmark rows or points are kept
        influx_query(f"DROP DATABASE {BENCH_DATABASE}")


def _section(intro: str, header: tuple[str, ...], lines: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table after its introduction, or nothing when it has no lines."""
    return ["", intro, "", report.render_markdown(header, lines)] if lines else []


def _write_outputs(document: dict[str, Any], limit: Limit, runs: list[Measurement], extras: dict[str, Any],
                   recording: dict[str, Any] | None, goals: list[report.Goal], out: Path) -> None:
    # A quick (CI) run never overwrites the full run's figures that the README shows.
    model = document["settings"].get("model_name", "classifier")
    stem = ("latest" if model == "classifier" else f"latest-{model}") + ("-quick" if document["settings"]["quick"] else "")
    json_path, png_path, md_path = out / f"{stem}.json", out / f"{stem}.png", out / f"{stem}.md"
    report.write_json(document, json_path)
    from benchmarks.throughput.plot import draw

    draw(document, png_path)
    machine = document["machine"]
    parts = [
        (f"Measured {machine['date']} on {machine['cpu']}, {machine['cores']} cores, no GPU "
         f"(load average {machine['load_average_start']} at start, {machine.get('load_average_end')} at the end; "
         f"{'quick' if document['settings']['quick'] else 'full'} run, "
         f"{document['settings']['duration_s']:g} s per point in {document['settings']['passes']} pass(es))."),
        "",
        report.render_markdown(report.TABLE_HEADER, report.table_rows(limit, runs)),
        "",
        report.render_markdown(report.LIMIT_HEADER, report.limit_lines(limit)),
        "",
        report.render_markdown(report.COLD_HEADER, report.cold_start_lines(extras["cold_start"])),
        "",
        report.render_markdown(report.MEMORY_HEADER, report.memory_lines(extras["memory"])),
        "",
        ("CPU per request by process, read from /proc for each process over the measured window "
        "(the bridge's recording threads included):"),
        "",
        report.render_markdown(report.PROCESS_COST_HEADER, report.process_cost_lines(runs)),
    ]
    parts += _section(
        "Where our handler's gap to the limit goes (TorchServe direct): images/s = cores the workers kept busy ÷ their "
        "CPU per image, so × limit = × from cores × × from CPU per image. The cores the workers did not get went to "
        "TorchServe's Java frontend, the load generator (the limit has none), other users, or stayed idle (no batch "
        "ready for a worker):",
        report.GAP_HEADER, report.handler_gap_lines(report.handler_gap(runs, limit)))
    parts += _section(
        "The latency the bridge adds at 1 in flight, paired: each photo sent through the bridge and to TorchServe "
        "direct back to back, the order alternating, one request at a time (the run's model on the main servers, the null "
        "model on the serving path's stack, also with the servers idle before each request); the interval is that "
        "of the median of the pairs' differences:",
        report.ADDED_HEADER, report.added_latency_lines(report.added_latency(extras)))
    if any(m.row in report.OIP_MODES for m in runs):
        parts += [
            "", ("The same photos through the Open Inference Protocol beside `/predictions`, on the full stack's "
            "bridge in the same passes (in flight: photos; a request of 8 photos runs at 8 and 32 in flight as 1 and "
            "4 requests; latency per request; bridge CPU from /proc over the same window):"), "",
            report.render_markdown(report.OIP_HEADER, report.oip_lines(runs)),
        ]
    if "serving_path" in extras:
        parts += [
            "", ("The serving path's own cost: hey (Debian's, a load generator we did not write) beside ours, and a "
            "null model (a handler that answers at once) for the ceiling in requests per CPU-second of the serving "
            "processes:"), "",
            report.render_markdown(report.SERVING_PATH_HEADER, report.serving_path_lines(extras["serving_path"])),
            "",
            report.render_markdown(report.IDLE_HEADER, report.idle_lines(extras["serving_path"])),
        ]
    parts += _section(SHADOW_DESCRIPTION, SHADOW_HEADER, shadow_lines(extras.get("shadowing")))
    if recording:
        parts += ["", report.render_markdown(report.RECORDING_HEADER, report.recording_lines(recording))]
    parts += ["", report.render_markdown(report.GOAL_HEADER, report.goal_lines(goals)), ""]
    md_path.write_text("\n".join(parts))
    print(f"\nwrote {json_path.relative_to(REPO_ROOT) if json_path.is_relative_to(REPO_ROOT) else json_path}, "
          f"{png_path.name}, {md_path.name}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
