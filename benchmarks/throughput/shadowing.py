"""Shadowing under load, measured on the full stack's own bridge and TorchServe (issue 23's benchmark row).

A candidate version of the run's model (classifier 1.1 on OpenVINO: a changed archive; the live 1.0 runs ONNX
Runtime) is registered on the benchmark's TorchServe with one worker — ``model_store/``'s archive when its build
fingerprint is current, else built here into the run's folder. Then, at each moderate load (cores not saturated),
the live load runs through the bridge in phases off/on/on/off: a shadow rollout at 100 % is started and ended in the
benchmark's PostgreSQL database (``stack.database.rollouts``), as ``servingctl shadow`` does, and each phase starts
only once the bridge has read the change (``BRIDGE_ROLLOUT_REFRESH_S`` and a margin) and the last phase's copies are
drained. What became of the copies is read back from PostgreSQL: the live requests recorded in a measured window and
the candidate's rows whose ``shadow_of`` names them. The arithmetic: :mod:`benchmarks.throughput.shadow_report`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2

from archive_scripts.build import OURS, build, fingerprint, is_up_to_date, sha256_file
from archive_scripts.specs import find_spec
from benchmarks.throughput.report import NOISY_CORES, Measurement
from benchmarks.throughput.servers import Target, first_prediction
from benchmarks.throughput.shadow_report import Phase, summarise
from bridge.settings import Settings as BridgeSettings
from stack.database.rollouts import end_rollout, start_rollout
from stack.services import REPO_ROOT, TorchServe, log
from stack.torchserve.client import Client

CANDIDATES = {"classifier": ("1.1", "openvino")}  # model → the candidate's (version, engine)
FRACTION = 1.0
ACTOR = "benchmarks.throughput"
MARGIN_S = 0.5  # beyond BRIDGE_ROLLOUT_REFRESH_S before a phase starts
ORDER = (False, True, True, False)  # shadowing in each phase of a load

# A load: (target, photos in flight, the phase's seconds, wall-clock START/END marks) → (measurement, latencies)
Load = Callable[[Target, int, float, dict[str, datetime]], tuple[Measurement, list[float]]]


def candidate_archive(model: str, store: Path, work: Path) -> tuple[Path, str]:
    """The candidate's archive copied into ``store`` (the running TorchServe's model store), and where it came from."""
    version, engine = CANDIDATES[model]
    spec = find_spec(model, version, engine=engine)
    shared = REPO_ROOT / "model_store"
    if is_up_to_date(spec, shared, fingerprint(spec, OURS)):
        source, origin = shared / spec.archive_name, f"model_store/{spec.archive_name} (its fingerprint is current)"
    else:
        log(f"  building {spec.archive_name} ({engine}) into the run's folder (about 20 s) ...")
        build(spec, work)
        source, origin = work / spec.archive_name, "built in this run"
    target = store / spec.archive_name
    shutil.copyfile(source, target)
    return target, origin


def register_candidate(ts: TorchServe, archive: Path, model: str, version: str) -> float:
    """Register ``archive`` with one worker (its model-config's two scaled down); seconds until it answers."""
    started = time.monotonic()
    with Client(ts.inference_url, ts.management_url, ts.key_file) as client:
        client.register(archive.name, 1)
        (described,) = client.describe(model, version)
        if len(described.get("workers", [])) != 1:
            client.scale(model, version, 1, 1)
    return time.monotonic() - started


def set_shadow(dsn: str, model: str, version: str, live_version: str, on: bool) -> None:
    """Start (``on``) or end the model's shadow rollout in the bridge's database, as servingctl would."""
    with closing(psycopg2.connect(dsn)) as conn, conn:
        if on:
            start_rollout(conn, model, version, live_version, "shadow", FRACTION, {}, ACTOR)
        else:
            end_rollout(conn, model, "stopped", "benchmark phase over")


COUNT_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE c.status = 200),
       count(*) FILTER (WHERE c.status IS NOT NULL AND c.status <> 200)
FROM (SELECT DISTINCT ON (l.request_id) l.request_id, c.status FROM inferences l
      LEFT JOIN inferences c ON c.shadow_of = l.request_id AND c.model = l.model AND c.model_version = %(version)s
      WHERE l.model = %(model)s AND l.model_version = %(live)s AND l.shadow_of IS NULL AND l.source = 'sync'
        AND l.created_at >= %(start)s AND l.created_at <= %(end)s
      ORDER BY l.request_id, c.created_at DESC) c
"""


def copies(dsn: str, model: str, version: str, live_version: str, start: datetime, end: datetime) -> tuple[int, int, int]:
    """(live requests recorded in [start, end], their copies answered 200, their copies recorded otherwise)."""
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute(COUNT_SQL, {"model": model, "version": version, "live": live_version, "start": start, "end": end})
        row = cur.fetchone()
    return (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)


def wait_drained(dsn: str, model: str, since: datetime, min_s: float, timeout_s: float) -> float:
    """Wait until no row of ``model`` newer than ``since`` appears for a second (copies answered, records written)."""
    started = time.monotonic()
    last, stable_since = -1, time.monotonic()
    while time.monotonic() - started < timeout_s:
        with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM inferences WHERE model = %s AND created_at >= %s", (model, since))
            row = cur.fetchone()
        count = int(row[0]) if row else 0
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since >= 1.0 and time.monotonic() - started >= min_s:
            break
        time.sleep(0.25)
    return time.monotonic() - started


def quiet_phase(run_load: Load, bridge: Target, concurrency: int, phase_s: float,
                shadow: bool) -> tuple[Phase, tuple[datetime, datetime]]:
    """One phase, measured once more when other processes kept more than NOISY_CORES busy (the quieter one kept)."""
    best: tuple[Phase, tuple[datetime, datetime]] | None = None
    for attempt in range(2):
        marks: dict[str, datetime] = {}
        run, latencies = run_load(bridge, concurrency, phase_s, marks)
        log(f"  {concurrency} in flight, shadowing {'on ' if shadow else 'off'}: {run.images_per_s:.1f} img/s, "
            f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, others {run.others_cores:.2f} cores"
            + (" (again)" if attempt else ""))
        if best is None or run.others_cores < best[0].run.others_cores:
            best = Phase(shadow, run, latencies), (marks["start"], marks["end"])
        if not run.others_cores > NOISY_CORES:
            break
    assert best is not None
    return best


def measure(bridge: Target, ts: TorchServe, dsn: str, model: str, live_version: str, photo: bytes,
            loads: tuple[int, ...], phase_s: float, run_load: Load, store: Path, work: Path) -> dict[str, Any]:
    """Register the candidate, then each load in phases off/on/on/off; the JSON-able document."""
    version, engine = CANDIDATES[model]
    settings = BridgeSettings()  # the same environment as the benchmark's bridge
    wait_s = settings.rollout_refresh_s + MARGIN_S
    set_shadow(dsn, model, version, live_version, False)  # nothing left over from an interrupted run
    archive, origin = candidate_archive(model, store, work)
    log(f"  {archive.name} ({origin}): registering it with 1 worker ...")
    seconds = register_candidate(ts, archive, model, version)
    headers = dict(h.split(": ", 1) for h in bridge.headers())
    first_prediction(f"{bridge.url}/{version}", photo, lambda: headers, 60)  # naming a version: never shadowed
    log(f"  registered and answering through the bridge in {seconds:.1f} s")
    doc: dict[str, Any] = {
        "candidate": {"model": model, "version": version, "engine": engine, "archive": origin,
                      "archive_sha256": sha256_file(archive), "workers": 1, "register_s": round(seconds, 1)},
        "live_version": live_version, "fraction": FRACTION, "phase_s": phase_s,
        "order": ["on" if s else "off" for s in ORDER],
        "bridge": {"shadow_queue": settings.shadow_queue, "shadow_concurrency": settings.shadow_concurrency,
                   "shadow_timeout_s": settings.shadow_timeout_s, "rollout_refresh_s": settings.rollout_refresh_s},
        "loads": [],
    }
    shadowing = False
    try:
        for concurrency in loads:
            phases: list[Phase] = []
            windows: list[tuple[datetime, datetime]] = []
            for shadow in ORDER:
                if shadow != shadowing:
                    set_shadow(dsn, model, version, live_version, shadow)
                    shadowing = shadow
                    if shadow:
                        time.sleep(wait_s)  # every bridge reads the rollout within refresh_s
                    else:  # read, and the last copies answered: none competes with the next phase
                        drained = wait_drained(dsn, model, windows[-1][0], wait_s, 30.0)
                        log(f"  shadowing ended, copies drained in {drained:.1f} s")
                phase, window = quiet_phase(run_load, bridge, concurrency, phase_s, shadow)
                phases.append(phase)
                windows.append(window)
            for phase, (start, end) in zip(phases, windows, strict=True):
                if phase.shadow:
                    phase.live, phase.answered, phase.failed = copies(dsn, model, version, live_version, start, end)
            summary = summarise(concurrency, phases)
            doc["loads"].append(summary)
            c = summary["on"]["copies"]
            log(f"  {concurrency} in flight: live p50 {summary['p50_ratio']:.2f}× with shadowing (noise "
                f"±{100 * summary['noise']:.1f} %); copies offered {c['offered']}, answered {c['answered']}, "
                f"failed {c['failed']}, dropped {c['dropped']}")
    finally:
        if shadowing:
            set_shadow(dsn, model, version, live_version, False)
    return doc
