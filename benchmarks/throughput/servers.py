"""The servers the benchmark starts for itself, beside (never instead of) the shared stack.

Everything here runs on its own ports and under the run's own state folder, through the stack's own service
classes (:mod:`stack.services`): the prototype baseline, TorchServe with the stock ``image_classifier``
handler (an archive built here into a temporary model store), TorchServe with our archive, and a bridge in
front of the latter recording into PostgreSQL and InfluxDB (a database of the benchmark's own in each).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import yaml

from archive_scripts.specs import Workers
from stack.services import (
    REPO_ROOT,
    Bridge,
    InfluxDB,
    PostgreSQL,
    StackError,
    TorchServe,
    TorchServePorts,
    http_status,
    log,
    spawn,
    stop_pid,
    wait_for,
)
from stack.settings import StackSettings

OURS_PORTS = TorchServePorts(inference=18080, management=18081, metrics=18082, grpc_inference=17070, grpc_management=17071)
STOCK_PORTS = TorchServePorts(inference=18083, management=18084, metrics=18085, grpc_inference=17072, grpc_management=17073)
EAGER_PORTS = TorchServePorts(inference=18086, management=18087, metrics=18088, grpc_inference=17074, grpc_management=17075)
BRIDGE_PORT = 18000
PROTOTYPE_PORT = 18090
STOCK_ARCHIVE = "resnet18_stock.mar"
MODEL = "resnet18"  # the prototype's and the stock handler's model (both baselines are written for ResNet-18)
# The eager row: each model as it was served until engines existed (2026-12-06): eager PyTorch in channels_last,
# batches of 8 with a 10 ms delay, one torch thread per worker, resnet18 on two workers, the others on one.
EAGER_ENGINE = "channels_last"
EAGER_WORKERS = Workers(min_workers=1, max_workers=1, batch_size=8, max_batch_delay_ms=10, threads=1)
EAGER_WORKERS_OF = {"resnet18": replace(EAGER_WORKERS, min_workers=2, max_workers=2)}
BENCH_DATABASE = "serving_throughput_bench"  # PostgreSQL and InfluxDB: never the stack's ``serving``

# The stock handler loads an eager model from a file holding exactly one class, plus a state_dict.
STOCK_MODEL_FILE = '''"""torchvision's ResNet-18 as one class, for TorchServe's stock image_classifier handler."""

from torchvision.models import resnet


class ResNet18(resnet.ResNet):
    """ResNet-18, 1000 classes (the state_dict of our archive loads into it)."""

    def __init__(self) -> None:
        super().__init__(resnet.BasicBlock, [2, 2, 2, 2])
'''


# --- model files ------------------------------------------------------------------------------------------------


def snapshot_archive(mar: Path, store: Path) -> Path:
    """A copy of our archive in the run's own model store: every row of the run uses this very file, even if
    ``model_store/`` is rebuilt meanwhile (the limit loads it again in every pass)."""
    if not mar.exists():
        raise StackError(f"{mar} is missing; build it with `.venv/bin/python -m archive_scripts`")
    store.mkdir(parents=True, exist_ok=True)
    copy = store / mar.name
    shutil.copyfile(mar, copy)
    return copy


def extract_weights(mar: Path, dest: Path) -> tuple[Path, dict[str, Any]]:
    """The archive's weights (a state_dict file) and its model-config.yaml (batching, workers, handler)."""
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
        config = yaml.safe_load(archive.read(manifest["configFile"]))
        weights = dest / "weights.pt"
        weights.write_bytes(archive.read(manifest["serializedFile"]))
    return weights, config


def build_stock_archive(weights: Path, our_config: dict[str, Any], store: Path, workdir: Path) -> Path:
    """``resnet18_stock.mar``: TorchServe's stock ``image_classifier`` handler, our weights and batch settings."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    from archive_scripts.build import private_tempdir, write_labels

    workdir.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    model_file = workdir / "resnet18_stock_model.py"
    model_file.write_text(STOCK_MODEL_FILE)
    labels = workdir / "index_to_name.json"
    write_labels(labels)
    # Same batching, workers and timeout as our archive; no handler section (the stock handler has none).
    config = {k: v for k, v in our_config.items() if k not in ("handler", "metadata")}
    config_file = workdir / "model-config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    with private_tempdir(workdir / "staging"):
        generate_model_archive(ModelArchiverConfig(
            model_name=MODEL, handler="image_classifier", version="1.0", serialized_file=str(weights),
            model_file=str(model_file), extra_files=str(labels), export_path=str(workdir), config_file=str(config_file),
            force=True,
        ))
    target = store / STOCK_ARCHIVE
    os.replace(workdir / f"{MODEL}.mar", target)
    return target


# --- processes, CPU and memory ------------------------------------------------------------------------------------


def _role(proc: psutil.Process, default: str) -> str:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return default
    if "model_service_worker.py" in cmdline:
        return "TorchServe worker"
    if "org.pytorch.serve.ModelServer" in cmdline:
        return "TorchServe frontend (Java)"
    if "bin/torchserve" in cmdline:
        return "torchserve launcher"
    return default


def pg_backends_of(pid: int) -> dict[int, str]:
    """PostgreSQL backend processes serving ``pid``'s connections (found by client port), as {pid: role}."""
    try:
        ports = [c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp") if c.raddr and c.raddr.port == 5432]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {}
    if not ports:
        return {}
    import psycopg2

    try:
        with psycopg2.connect(StackSettings().pg_admin_dsn, connect_timeout=3) as conn, conn.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,))
            return {row[0]: "PostgreSQL backends (bridge's)" for row in cur.fetchall()}
    except psycopg2.Error:
        return {}


@dataclass
class ProcessGroup:
    """The processes that serve one row: named roots with their descendants, plus any found on demand."""

    roots: dict[int, str]
    extra: Callable[[], dict[int, str]] | None = None
    shared: dict[int, str] = field(default_factory=dict)  # counted in the breakdown only (e.g. InfluxDB)

    def processes(self) -> dict[int, tuple[str, psutil.Process]]:
        """{pid: (role, process)} for every live process of the group."""
        found: dict[int, tuple[str, psutil.Process]] = {}
        for pid, role in self.roots.items():
            try:
                root = psutil.Process(pid)
                found[pid] = (_role(root, role), root)
                for child in root.children(recursive=True):
                    found[child.pid] = (_role(child, role), child)
            except psutil.NoSuchProcess:
                continue
        for pid, role in {**(self.extra() if self.extra else {}), **self.shared}.items():
            try:
                found.setdefault(pid, (role, psutil.Process(pid)))
            except psutil.NoSuchProcess:
                continue
        return found

    def cpu_snapshot(self) -> dict[int, tuple[str, float]]:
        """{pid: (role, user + system CPU seconds so far)}."""
        snapshot = {}
        for pid, (role, proc) in self.processes().items():
            try:
                times = proc.cpu_times()
                # children_*: short-lived children already reaped (e.g. TorchServe's metric collector runs)
                snapshot[pid] = (role, times.user + times.system + times.children_user + times.children_system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return snapshot

    def cpu_delta(self, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> tuple[float, dict[str, float]]:
        """(CPU seconds of the group between two snapshots, seconds by role); shared processes only in the roles."""
        by_role: dict[str, float] = {}
        total = 0.0
        for pid, (role, cpu) in after.items():
            used = cpu - before[pid][1] if pid in before else cpu  # a process born in the window
            by_role[role] = by_role.get(role, 0.0) + used
            if pid not in self.shared:
                total += used
        return total, {k: round(v, 3) for k, v in sorted(by_role.items())}

    def memory(self) -> list[dict[str, Any]]:
        """RSS and PSS (MiB) of each process (shared ones left out)."""
        out = []
        for pid, (role, proc) in sorted(self.processes().items()):
            if pid in self.shared:
                continue
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            out.append({"role": role, "pid": pid, "rss_mb": round(info.rss / 2**20, 1),
                        "pss_mb": round(getattr(info, "pss", 0) / 2**20, 1)})
        return out


# --- the served rows -----------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where the load generator sends a row's requests, and which processes serve them."""

    row: str
    url: str
    method: str
    headers: Callable[[], list[str]]
    group: ProcessGroup
    cold_start: dict[str, float] = field(default_factory=dict)
    oip: str | None = None  # "binary" or "json": OIP infer requests (loadgen --oip) instead of the photo as the body
    photos_per_request: int = 1



def post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 30.0) -> tuple[int, bytes]:
    """One request; (status, body), status 0 when nothing answered."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def first_prediction(url: str, photo: bytes, headers: Callable[[], dict[str, str]], timeout_s: float) -> float:
    """Send ``photo`` until a 200 comes back; the monotonic time it did."""
    deadline = time.monotonic() + timeout_s
    last = (0, b"")
    while time.monotonic() < deadline:
        last = post(url, photo, headers())
        if last[0] == 200:
            return time.monotonic()
        time.sleep(0.1)
    raise StackError(f"no successful prediction from {url} within {timeout_s:.0f} s (last: {last[0]} {last[1][:200]!r})")


def ports_in_use(ports: list[int]) -> list[int]:
    """Which of ``ports`` something listens on (127.0.0.1)."""
    busy = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in ports:
            busy.add(conn.laddr.port)
    return sorted(busy)


def check_ports_free(ports: list[int]) -> None:
    """Refuse to start when any of the benchmark's ports is taken (a previous run left behind?)."""
    busy = ports_in_use(ports)
    if busy:
        raise StackError(
            f"ports {busy} are already in use; the benchmark needs {sorted(ports)} for its own servers. "
            "Is another `make bench` running, or did one leave processes behind? (`ss -ltnp` shows who holds them)"
        )


def all_ports() -> list[int]:
    """Every port the benchmark's servers use."""
    ports = [BRIDGE_PORT, PROTOTYPE_PORT]
    for p in (OURS_PORTS, STOCK_PORTS, EAGER_PORTS):
        ports += [p.inference, p.management, p.metrics, p.grpc_inference, p.grpc_management]
    return ports


class Servers:
    """Starts the benchmark's servers one by one (timing each cold start) and stops all of them."""

    def __init__(self, run_dir: Path, archive: Path, weights: Path, our_config: dict[str, Any], photo: bytes,
                 prototype_threads: int, model: str) -> None:
        self.run_dir = run_dir
        self.archive = archive  # our archive, in the run's own model store
        self.model = model  # the model our archive serves (the URLs of our rows)
        self.weights = weights
        self.our_config = our_config
        self.photo = photo
        self.prototype_threads = prototype_threads
        self._stops: list[tuple[str, Callable[[], object]]] = []
        self.ours: TorchServe | None = None

    # each start_* returns the row's Target, with its cold start measured

    def start_prototype(self) -> Target:
        """The seed prototype's design (baseline), in its own process."""
        log_file = self.run_dir / "logs" / "prototype.log"
        cmd = [sys.executable, "-m", "benchmarks.throughput.prototype", "--port", str(PROTOTYPE_PORT),
               "--weights", str(self.weights), "--threads", str(self.prototype_threads)]
        started = time.monotonic()
        pid = spawn(cmd, log_file, REPO_ROOT)
        self._stops.append(("prototype", lambda: stop_pid(pid, "prototype", timeout_s=10)))
        url = f"http://127.0.0.1:{PROTOTYPE_PORT}"
        wait_for(lambda: http_status(f"{url}/ping") == 200, 120, "the prototype baseline", log_file)
        ready = time.monotonic()
        first = first_prediction(f"{url}/predictions/{MODEL}", self.photo, dict, 60)
        return Target("prototype", f"{url}/predictions/{MODEL}", "POST", list, ProcessGroup({pid: "prototype server"}),
                      {"ready_s": ready - started, "first_prediction_s": first - started})

    def _start_torchserve(self, row: str, service: TorchServe) -> Target:
        started = time.monotonic()
        self._stops.append((service.name, service.down))
        service.up()
        ready = time.monotonic()
        model = MODEL if row == "torchserve_stock" else self.model
        first = first_prediction(f"{service.inference_url}/predictions/{model}", self.photo, lambda: _bearer(service), 60)
        pid = service.pid
        assert pid is not None
        return Target(
            row, f"{service.inference_url}/predictions/{model}", "POST",
            lambda: [f"Authorization: Bearer {service.inference_key()}"],
            ProcessGroup({pid: "torchserve launcher"}),
            {"ready_s": ready - started, "first_prediction_s": first - started},
        )

    def start_torchserve_stock(self) -> Target:
        """TorchServe with the stock image_classifier handler (archive built into a temporary store)."""
        store = self.run_dir / "stock_model_store"
        build_stock_archive(self.weights, self.our_config, store, self.run_dir / "stock_build")
        service = TorchServe("torchserve-stock", self.run_dir, store, STOCK_PORTS, [STOCK_ARCHIVE])
        return self._start_torchserve("torchserve_stock", service)

    def start_torchserve_eager(self) -> Target:
        """TorchServe with our handler on eager PyTorch: the model as served until engines existed, built here."""
        from archive_scripts.build import build
        from archive_scripts.specs import find_spec

        spec = replace(find_spec(self.model, engine=EAGER_ENGINE), workers=EAGER_WORKERS_OF.get(self.model, EAGER_WORKERS))
        store = self.run_dir / "eager_model_store"
        log(f"  building {spec.archive_name} with engine {EAGER_ENGINE} ({spec.workers.max_workers} worker(s) × 1 thread, "
            f"batch {spec.workers.batch_size}, delay {spec.workers.max_batch_delay_ms} ms) ...")
        build(spec, store)
        service = TorchServe("torchserve-eager", self.run_dir, store, EAGER_PORTS, [spec.archive_name])
        return self._start_torchserve("torchserve_eager", service)

    def start_torchserve_ours(self) -> Target:
        """TorchServe with our archive (our handler; the run's copy of model_store/'s), only its model loaded."""
        self.ours = TorchServe("torchserve-ours", self.run_dir, self.archive.parent, OURS_PORTS, [self.archive.name])
        return self._start_torchserve("torchserve_ours", self.ours)

    def start_bridge(self, ours: Target) -> Target:
        """A bridge in front of our TorchServe, recording into the benchmark's own PostgreSQL/InfluxDB databases."""
        assert self.ours is not None, "start our TorchServe first"
        dsn = prepare_databases()
        bridge = Bridge("bridge", self.run_dir, BRIDGE_PORT, self.ours, pg_dsn=dsn, influx_database=BENCH_DATABASE)
        started = time.monotonic()
        self._stops.append(("bridge", bridge.down))
        bridge.up()
        ready = time.monotonic()
        url = f"{bridge.url}/predictions/{self.model}"
        first = first_prediction(url, self.photo, lambda: {"Cache-Control": "no-cache"}, 60)
        pid = bridge.pid
        assert pid is not None
        influx_pid = _listener_pid(8086)
        group = ProcessGroup(
            {pid: "bridge", **ours.group.roots}, extra=lambda: pg_backends_of(pid),
            shared={influx_pid: "InfluxDB (shared server, not in the total)"} if influx_pid else {},
        )
        return Target("full_stack", url, "PUT", lambda: ["Cache-Control: no-cache"], group,
                      {"ready_s": ready - started, "first_prediction_s": first - started})

    def oip_target(self, bridge: Target, row: str, encoding: str, photos_per_request: int) -> Target:
        """The full stack's bridge through ``POST /v2/models/{model}/infer``: the same processes, headers and photos.

        One request is checked first, so a broken OIP route stops the run here rather than filling a row with errors.
        """
        from benchmarks.throughput.loadgen import items_failed, oip_request

        base = urlsplit(bridge.url)
        url = f"{base.scheme}://{base.netloc}/v2/models/{self.model}/infer"
        body, headers = oip_request([self.photo] * photos_per_request, encoding == "binary")
        extra = dict(h.split(": ", 1) for h in bridge.headers())
        status, answer = post(url, body, {**headers, **extra})
        if status != 200 or items_failed(answer, None):
            raise StackError(f"OIP ({encoding}, {photos_per_request} photos) through the bridge answered {status}: "
                             f"{answer[:300]!r}")
        return Target(row, url, "POST", bridge.headers, bridge.group, oip=encoding,
                      photos_per_request=photos_per_request)

    def stop_all(self) -> None:
        """Stop everything started, newest first; never raises."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                log(f"stopping {name} ...")
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"stopping {name} failed: {exc}")


def _bearer(service: TorchServe) -> dict[str, str]:
    key = service.inference_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _listener_pid(port: int) -> int | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


# --- the benchmark's own databases -------------------------------------------------------------------------------


def bench_dsn() -> str:
    """The benchmark database's DSN on the stack's PostgreSQL server."""
    return StackSettings().dsn(BENCH_DATABASE)


def prepare_databases(name: str = BENCH_DATABASE) -> str:
    """Create (or empty) PostgreSQL database ``name`` (migrated) and InfluxDB database ``name``; the DSN."""
    import psycopg2

    from stack.database import Database, migrate

    postgres = PostgreSQL()
    try:
        postgres.create_database(name)
    except psycopg2.Error as exc:
        raise StackError(f"PostgreSQL is not reachable at {postgres.admin_dsn} ({exc}); start it with `make up`") from exc
    dsn = StackSettings().dsn(name)
    db = Database(dsn)
    migrate(db)
    db.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE inferences")
        # an interrupted shadowing row must not leave its bridge copying requests in the next run
        cur.execute("UPDATE rollouts SET state = 'stopped', ended_at = now(), ended_reason = 'benchmark databases reset'"
                    " WHERE state = 'active'")
    influx = InfluxDB()
    if not influx.is_up():
        raise StackError(f"InfluxDB does not answer on {influx.url}; start it with `make up`")
    influx.drop_database(name)
    influx.create_database(name)
    return dsn


def influx_query(q: str, database: str | None = None) -> dict[str, Any]:
    """One InfluxQL statement on the stack's InfluxDB."""
    return InfluxDB().query(q, database)


def recorded_counts(dsn: str) -> tuple[int, int]:
    """(rows in the benchmark's inferences table, points in its InfluxDB inference measurement)."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM inferences")
        row = cur.fetchone()
    rows = int(row[0]) if row else 0
    result = influx_query("SELECT count(latency_ms) FROM inference", BENCH_DATABASE)
    series = result.get("results", [{}])[0].get("series")
    points = series[0]["values"][0][1] if series else 0
    return rows, points

