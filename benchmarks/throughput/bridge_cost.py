"""The serving path's own cost: CPU per request of the bridge and of TorchServe's Java frontend, side by side.

    .venv/bin/python -m benchmarks.throughput.bridge_cost [--model resnet18|null] [--concurrency 8]
        [--duration 20] [--idle 30] [--hey] [--profile FILE.json] [--out FILE.json]

A private stack (harness services on free ports): TorchServe with one model — resnet18 (our archive) or
``null`` (:mod:`benchmarks.throughput.null_handler`, a handler that answers at once) — and a bridge in front
of it recording into a PostgreSQL and an InfluxDB database of its own. Then, each from ``/proc/<pid>/stat``
(utime + stime: every thread of the process, the bridge's recording threads included):

- idle: CPU of the bridge and of the frontend over ``--idle`` seconds with no traffic;
- load: our load generator at ``--concurrency`` in flight, uncached (``Cache-Control: no-cache``), through
  the bridge and straight to TorchServe in two halves each, in alternating order (bridge, direct, direct,
  bridge): CPU ms per answered request of each process, their ratio, the
  frontend's own cost per request when nothing stands in front of it, resident memory of each process;
- the latency the bridge adds at 1 in flight, paired (:mod:`benchmarks.throughput.paired`: each photo through
  the bridge and direct, back to back, alternating);
- with ``--hey``: the same through the bridge with ``hey`` (Debian's package; installed when missing) — a
  load generator we did not write;
- with the null model: requests/s per core of CPU spent by the serving processes (bridge + TorchServe, and
  TorchServe alone) — the ceiling of the serving path itself.

``--profile`` runs ``py-spy record`` on the bridge during the bridge run (py-spy on PATH or in /tmp/pyspy).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.throughput import paired
from benchmarks.throughput.photos import load_photos, make_photos
from benchmarks.throughput.servers import prepare_databases
from stack.services import REPO_ROOT, Bridge, StackError, TorchServe, TorchServePorts, log
from stack.services.base import apt_install
from stack.services.faults import free_ports

NULL_HANDLER = Path(__file__).resolve().parent / "null_handler.py"
COST_DATABASE = "serving_bridge_cost"  # PostgreSQL and InfluxDB: never the stack's ``serving``
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAIRS = {"null": 400, "resnet18": 100}  # photos sent both ways at 1 in flight, for the latency the bridge adds
PAIRS_IDLE, IDLE_THINK_S = 150, 0.040  # the null model again, idle 40 ms (about a resnet18 forward) before each
PYSPY_DIRS = (Path("/tmp/pyspy/bin"),)


# --- /proc ------------------------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) ``pid`` has used so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of the line)


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


@dataclass
class Processes:
    """The processes whose CPU is compared: {role: [pids]}."""

    roles: dict[str, list[int]]

    def snapshot(self) -> dict[str, float]:
        """CPU seconds so far, by role."""
        out = {}
        for role, pids in self.roles.items():
            total = 0.0
            for pid in pids:
                try:
                    total += cpu_s(pid)
                except OSError:
                    continue
            out[role] = total
        return out

    def memory(self) -> dict[str, float]:
        """RSS MiB by role (summed over its processes)."""
        out = {}
        for role, pids in self.roles.items():
            total = 0.0
            for pid in pids:
                try:
                    total += rss_mib(pid)
                except OSError:
                    continue
            out[role] = round(total, 1)
        return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two snapshots, by role."""
    return {role: after[role] - before.get(role, 0.0) for role in after}


# --- the private stack ------------------------------------------------------------------------------------------


def build_null_archive(store: Path, workdir: Path, workers: int = 1) -> Path:
    """``<store>/null.mar``: :mod:`null_handler`, ``workers`` workers, batch 1."""
    import yaml
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    from archive_scripts.build import private_tempdir

    workdir.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    config = workdir / "null-model-config.yaml"
    config.write_text(yaml.safe_dump({"minWorkers": workers, "maxWorkers": workers, "batchSize": 1,
                                      "maxBatchDelay": 1, "responseTimeout": 30}, sort_keys=False))
    with private_tempdir(workdir / "staging-null"):
        generate_model_archive(ModelArchiverConfig(
            model_name="null", handler=str(NULL_HANDLER), version="1.0", export_path=str(store),
            config_file=str(config), force=True,
        ))
    return store / "null.mar"


@dataclass
class Stack:
    """A running private TorchServe and the bridge in front of it."""

    model: str
    torchserve: TorchServe
    bridge: Bridge

    def processes(self) -> Processes:
        """Bridge, TorchServe's frontend, and its workers (the launcher is idle, left out)."""
        frontend = self.torchserve.frontend_pid()
        assert frontend is not None and self.bridge.pid is not None
        return Processes({"bridge": [self.bridge.pid], "frontend": [frontend], "workers": children(frontend)})


@contextmanager
def private_stack(run_dir: Path, model: str, database: str = COST_DATABASE,
                  bridge_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """TorchServe with ``model`` (resnet18 or null) and a bridge, on free ports; stopped on exit."""
    store = run_dir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    if model == "null":
        archive = build_null_archive(store, run_dir / "build").name
    else:
        source = REPO_ROOT / "model_store" / "resnet18_v1.0.mar"
        if not source.exists():
            raise StackError(f"{source} is missing; build it with `.venv/bin/python -m archive_scripts resnet18`")
        archive = source.name
        shutil.copyfile(source, store / archive)
    dsn = prepare_databases(database)
    torchserve = TorchServe("torchserve-cost", run_dir, store, TorchServePorts.free(), [archive])
    bridge = Bridge("bridge-cost", run_dir, free_ports(1)[0], torchserve, env=bridge_env, pg_dsn=dsn,
                    influx_database=database)
    try:
        log(f"starting TorchServe ({model}) and a bridge on free ports ...")
        torchserve.up()
        bridge.up()
        yield Stack(model, torchserve, bridge)
    finally:
        for service in (bridge, torchserve):
            try:
                service.down()
            except Exception as exc:  # noqa: BLE001 - stop the other one too
                log(f"stopping {service.name} failed: {exc}")


# --- load -------------------------------------------------------------------------------------------------------


def loadgen(url: str, method: str, headers: list[str], photos: Path, concurrency: int, warmup_s: float,
            duration_s: float, processes: Processes) -> dict[str, Any]:
    """One run of our load generator; CPU by role sampled at its START and END lines."""
    cmd = [sys.executable, "-m", "benchmarks.throughput.loadgen", "--url", url, "--photos", str(photos),
           "--concurrency", str(concurrency), "--warmup", str(warmup_s), "--duration", str(duration_s),
           "--method", method]
    for header in headers:
        cmd += ["--header", header]
    before = after = None
    result: dict[str, Any] | None = None
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "START":
            before = processes.snapshot()
        elif line.strip() == "END":
            after = processes.snapshot()
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    proc.wait(timeout=60)
    if result is None or before is None or after is None:
        raise StackError(f"the load generator failed against {url}")
    return summarize("loadgen", result["ok"], result["errors"], result["window_s"], result["p50_ms"],
                     delta(before, after), processes)


def combine(parts: list[dict[str, Any]], processes: Processes) -> dict[str, Any]:
    """One summary from runs of the same target (requests and CPU added up; p50: the mean of the runs' p50s)."""
    used: dict[str, float] = {}
    for part in parts:
        for role, seconds in part["cpu_s"].items():
            used[role] = used.get(role, 0.0) + seconds
    p50s = [part["p50_ms"] for part in parts if part["p50_ms"] is not None]
    return summarize(parts[0]["tool"], sum(part["ok"] for part in parts), sum(part["errors"] for part in parts),
                     sum(part["window_s"] for part in parts), sum(p50s) / len(p50s) if p50s else None, used, processes)


def summarize(tool: str, ok: int, errors: int, window_s: float, p50_ms: float | None, used: dict[str, float],
              processes: Processes) -> dict[str, Any]:
    """Requests/s, CPU ms per answered request by role, memory by role."""
    per_request = {role: 1000.0 * s / ok if ok else None for role, s in used.items()}
    serving = sum(used.values())
    return {
        "tool": tool, "ok": ok, "errors": errors, "window_s": round(window_s, 2),
        "requests_per_s": round(ok / window_s, 1) if window_s else None, "p50_ms": p50_ms,
        "cpu_s": {role: round(s, 3) for role, s in used.items()},
        "cpu_ms_per_request": {role: None if v is None else round(v, 3) for role, v in per_request.items()},
        "requests_per_core_s": round(ok / serving, 1) if serving else None,
        "rss_mib": processes.memory(),
    }


def hey_binary() -> str:
    """``hey``, installed from Debian's packages when missing."""
    found = shutil.which("hey")
    if found is None:
        apt_install("hey")
        found = shutil.which("hey")
    if found is None:
        raise StackError("hey is not on PATH after installing Debian's hey package")
    return found


def hey(url: str, method: str, headers: list[str], photo: Path, concurrency: int, duration_s: float,
        processes: Processes) -> dict[str, Any]:
    """``hey -z`` at ``concurrency`` in flight (one photo, the same body each time); CPU by role over its run."""
    cmd = [hey_binary(), "-z", f"{duration_s:g}s", "-c", str(concurrency), "-m", method, "-D", str(photo),
           "-T", "application/octet-stream"]
    for header in headers:
        cmd += ["-H", header]
    before = processes.snapshot()
    started = time.monotonic()
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=duration_s + 90, check=False).stdout
    window = time.monotonic() - started
    used = delta(before, processes.snapshot())
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    p50 = re.search(r"50%+ in ([\d.]+) secs", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    ok = statuses.get(200, 0)
    summary = summarize("hey", ok, sum(statuses.values()) - ok, window, float(p50.group(1)) * 1000 if p50 else None,
                        used, processes)
    summary["hey_requests_per_s"] = float(rps.group(1)) if rps else None  # hey's own figure (its own clock)
    return summary


def idle(processes: Processes, seconds: float) -> dict[str, float]:
    """Percent of one core each role used over ``seconds`` of no traffic."""
    before = processes.snapshot()
    time.sleep(seconds)
    used = delta(before, processes.snapshot())
    return {role: round(100.0 * s / seconds, 2) for role, s in used.items()}


@contextmanager
def pyspy(pid: int, out: Path | None, rate: int = 200, idle: bool = False) -> Iterator[None]:
    """``py-spy record`` on ``pid`` while the block runs (nothing when ``out`` is None); ``idle``: waits too."""
    if out is None:
        yield
        return
    binary = shutil.which("py-spy") or next((str(d / "py-spy") for d in PYSPY_DIRS if (d / "py-spy").exists()), None)
    if binary is None:
        raise StackError("py-spy is missing: pip install --target /tmp/pyspy py-spy")
    env = {**os.environ, "PYTHONPATH": "/tmp/pyspy"}
    cmd = [binary, "record", "-r", str(rate), "-p", str(pid), "-o", str(out), "--format", "speedscope", "--threads",
           "--nonblocking", *(["--idle"] if idle else [])]
    proc = subprocess.Popen(cmd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(2)
        proc.wait(timeout=30)


# --- one measurement --------------------------------------------------------------------------------------------


def measure(model: str, concurrency: int, warmup_s: float, duration_s: float, idle_s: float, with_hey: bool,
            profile: Path | None, run_dir: Path, bridge_env: dict[str, str] | None = None,
            profile_idle: Path | None = None) -> dict[str, Any]:
    """Everything above on one fresh private stack; a JSON-able document."""
    photos = run_dir / "photos"
    make_photos(photos)
    url_model = "null" if model == "null" else "resnet18"
    with private_stack(run_dir, model, bridge_env=bridge_env) as stack:
        processes = stack.processes()
        ts = stack.torchserve
        bridge_url = f"{stack.bridge.url}/predictions/{url_model}"
        direct_url = f"{ts.inference_url}/predictions/{url_model}"
        nocache = ["Cache-Control: no-cache"]
        doc: dict[str, Any] = {"model": model, "concurrency": concurrency, "duration_s": duration_s}
        time.sleep(3)  # start-up work (first key read, pools) out of the idle window
        if idle_s > 0:
            log(f"idle {idle_s:g} s ...")
            with pyspy(stack.bridge.pid or 0, profile_idle):
                doc["idle_percent_of_core"] = idle(processes, idle_s)
        # Two halves in alternating order (bridge, direct, direct, bridge): a drift of the machine's speed or of other
        # users' load during the run hits both alike.
        halves: dict[str, list[dict[str, Any]]] = {"bridge": [], "direct": []}
        runs = {
            "bridge": lambda: loadgen(bridge_url, "PUT", nocache, photos, concurrency, warmup_s, duration_s / 2, processes),
            "direct": lambda: loadgen(direct_url, "PUT", [f"Authorization: Bearer {ts.inference_key()}"], photos,
                                      concurrency, warmup_s, duration_s / 2, processes),
        }
        for name in ("bridge", "direct", "direct", "bridge"):
            log(f"{'through the bridge' if name == 'bridge' else 'TorchServe direct'}, {concurrency} in flight, "
                f"{duration_s / 2:g} s ...")
            with pyspy(stack.bridge.pid or 0, profile if name == "bridge" and not halves["bridge"] else None):
                halves[name].append(runs[name]())
        doc["bridge"], doc["direct"] = (combine(halves[name], processes) for name in ("bridge", "direct"))
        log(f"latency added at 1 in flight: {PAIRS[model]} photos through the bridge and direct, alternating ...")
        through = paired.Endpoint(bridge_url, "PUT", {"Cache-Control": "no-cache"})
        straight = paired.Endpoint(direct_url, "PUT", {"Authorization": f"Bearer {ts.inference_key()}"})
        shots = load_photos(photos)
        doc["paired"] = paired.measure(through, straight, shots, PAIRS[model])
        if model == "null":  # the same with the servers idle before each request, as a real model's forward leaves them
            log(f"the same with {1000 * IDLE_THINK_S:g} ms idle before each request ...")
            doc["paired_idle"] = paired.measure(through, straight, shots, PAIRS_IDLE,
                                                think_s=IDLE_THINK_S)
        if with_hey:
            log(f"hey: through the bridge, then TorchServe direct, {concurrency} in flight ...")
            photo = min(photos.glob("*.jpg"))
            doc["bridge_hey"] = hey(bridge_url, "PUT", nocache, photo, concurrency, duration_s, processes)
            doc["direct_hey"] = hey(direct_url, "PUT", [f"Authorization: Bearer {ts.inference_key()}"], photo,
                                    concurrency, duration_s, processes)
        doc["ratios"] = ratios(doc)
    return doc


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    """Bridge CPU per request ÷ the frontend's in the same run (and ÷ the frontend's when called directly)."""
    out: dict[str, Any] = {}
    for name in ("bridge", "bridge_hey"):
        run = doc.get(name)
        if not run:
            continue
        per = run["cpu_ms_per_request"]
        if per.get("bridge") is not None and per.get("frontend"):
            out[f"{name}_vs_frontend_same_run"] = round(per["bridge"] / per["frontend"], 2)
        direct = (doc.get("direct") or doc.get("direct_hey") or {}).get("cpu_ms_per_request", {}).get("frontend")
        if per.get("bridge") is not None and direct:
            out[f"{name}_vs_frontend_direct"] = round(per["bridge"] / direct, 2)
    b, d = (doc.get("bridge") or {}).get("requests_per_s"), (doc.get("direct") or {}).get("requests_per_s")
    if b and d:
        out["throughput_bridge_vs_direct"] = round(b / d, 3)
    return out


def render(doc: dict[str, Any]) -> str:
    """A few lines for the terminal / a Markdown note."""
    lines = [f"model {doc['model']}, {doc['concurrency']} in flight, {doc['duration_s']:g} s per run"]
    if "idle_percent_of_core" in doc:
        lines.append("idle, % of a core: " + ", ".join(f"{k} {v:.2f}" for k, v in doc["idle_percent_of_core"].items()))
    for name in ("bridge", "bridge_hey", "direct", "direct_hey"):
        run = doc.get(name)
        if run:
            per = ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_ms_per_request"].items() if v is not None)
            lines.append(f"{name:10s} ({run['tool']}): {run['requests_per_s']} req/s, p50 {run['p50_ms'] or 0:.1f} ms, "
                         f"CPU ms/request: {per}; {run['requests_per_core_s']} req per CPU-second; RSS MiB "
                         + ", ".join(f"{k} {v:.0f}" for k, v in run["rss_mib"].items()))
    for name in ("paired", "paired_idle"):
        if name in doc:
            lines.append(paired.render(doc[name]))
    lines.append("ratios: " + ", ".join(f"{k} {v}" for k, v in doc["ratios"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure once, print, optionally write JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput.bridge_cost", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("resnet18", "null"), default="resnet18")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--idle", type=float, default=30.0, help="seconds of no traffic measured first (0: skip)")
    p.add_argument("--hey", action="store_true", help="also load the bridge with hey")
    p.add_argument("--profile", type=Path, help="py-spy speedscope profile of the bridge during its run")
    p.add_argument("--profile-idle", type=Path, help="py-spy speedscope profile of the bridge while idle")
    p.add_argument("--bridge-env", action="append", default=[], help="BRIDGE_X=value for the bridge (repeatable)")
    p.add_argument("--out", type=Path, help="write the JSON document here")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(item.split("=", 1) for item in args.bridge_env)
    run_dir = Path(tempfile.mkdtemp(prefix="bridge-cost-", dir="/tmp"))
    run_dir.chmod(0o755)
    try:
        doc = measure(args.model, args.concurrency, args.warmup, args.duration, args.idle, args.hey, args.profile,
                      run_dir, env, args.profile_idle)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(render(doc), flush=True)
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
