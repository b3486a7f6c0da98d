"""The fault tests' private stack: PostgreSQL, InfluxDB and TorchServe of their own, and the bridges tests start.

Other engineers use the shared stack while these tests stop, kill and freeze things. So every service here
is an instance of the harness (:mod:`stack.services`) on free loopback ports, with its data, logs, key file,
sockets and spool in one temp dir, started and stopped by the fixtures in ``conftest.py`` alone. What is
specific to the tests lives here: the slow archives, the private model store, the bridge's /ping figures.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from stack.services import REPO_ROOT, Bridge, InfluxDB, PrivatePostgres, TorchServe, TorchServePorts, wait_for
from stack.services.faults import free_ports, signal_all
from stack.settings import DATABASE, StackSettings

SLOW_HANDLER = Path(__file__).resolve().parent / "slow_handler.py"


def make_root(prefix: str = "reliability-") -> Path:
    """A temp dir every service user (root, postgres) can traverse."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


class PrivateInflux(InfluxDB):
    """The harness' InfluxDB on free ports, plus what the InfluxDB fault tests read and write."""

    def __init__(self, root: Path, settings: StackSettings) -> None:
        http_port, bind_port = free_ports(2)
        super().__init__(settings, "influxdb", root, http_port, bind_port)

    def write(self, line: str, database: str = DATABASE) -> requests.Response:
        """One line of line protocol (nanosecond timestamps)."""
        return requests.post(f"{self.url}/write", params={"db": database, "precision": "ns"}, data=line, timeout=10)

    def field_values(self, field_name: str, measurement: str, database: str = DATABASE) -> list[Any]:
        """Every value of one field of a measurement (e.g. the request ids of ``inference``)."""
        result = self.query(f'SELECT "{field_name}" FROM "{measurement}"', database)
        series = result["results"][0].get("series") or []
        return [row[1] for s in series for row in s["values"]]


# --- TorchServe: the real archives plus test-only slow ones ---------------------------------------


@dataclass(frozen=True)
class SlowModel:
    """An archive whose handler only sleeps (``slow_handler.py``): a model as slow as we say."""

    name: str
    delay_s: float
    job_queue_size: int = 0  # 0: TorchServe's global job_queue_size
    batch_size: int = 1
    response_timeout_s: int = 60

    def model_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "minWorkers": 1, "maxWorkers": 1, "batchSize": self.batch_size, "maxBatchDelay": 5,
            "responseTimeout": self.response_timeout_s, "handler": {"delay_s": self.delay_s},
        }
        if self.job_queue_size:
            config["jobQueueSize"] = self.job_queue_size
        return config


def build_slow_archive(model: SlowModel, store: Path, workdir: Path) -> Path:
    """``<store>/<name>.mar`` from slow_handler.py and a model-config.yaml, with torch-model-archiver's API."""
    import yaml
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    from archive_scripts.build import private_tempdir

    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"{model.name}-model-config.yaml"
    config_path.write_text(yaml.safe_dump(model.model_config(), sort_keys=False))
    with private_tempdir(workdir / f"staging-{model.name}"):
        generate_model_archive(
            ModelArchiverConfig(
                model_name=model.name, handler=str(SLOW_HANDLER), version="1.0", export_path=str(store),
                config_file=str(config_path), force=True,
            )
        )
    return store / f"{model.name}.mar"


def private_store(store: Path, archives: tuple[str, ...], slow_models: tuple[SlowModel, ...], workdir: Path) -> list[str]:
    """A model store with hard links (or copies) of the real archives and the slow ones built; the archives."""
    store.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        src, dst = REPO_ROOT / "model_store" / archive, store / archive
        if not src.exists():
            raise RuntimeError(f"{src} is missing: run `python -m archive_scripts` (or `make up`) first")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    for model in slow_models:
        build_slow_archive(model, store, workdir)
    return [*archives, *(f"{m.name}.mar" for m in slow_models)]


# --- bridge ---------------------------------------------------------------------------------------


class PrivateBridge(Bridge):
    """A harness bridge on a free port, wired to the private services, plus its /ping figures."""

    def ping(self) -> dict[str, Any]:
        """The bridge's /ping body (whatever its status)."""
        return requests.get(f"{self.url}/ping", timeout=30).json()

    def recording(self) -> dict[str, Any]:
        return self.ping()["recording"]

    def wait_recorded(self, timeout_s: float = 90, points: bool = False) -> float:
        """Wait until nothing is queued and the spool is empty (and, with ``points``, no point is buffered)."""
        started = time.monotonic()

        def drained() -> bool:
            rec = self.recording()
            done = rec["queued"] == 0 and rec["spool_segments"] == 0 and rec["postgres"] == "ok"
            return done and (not points or rec["points_buffered"] == 0)

        wait_for(drained, timeout_s, "the bridge's recording backlog to drain", self.log_file)
        return time.monotonic() - started


def predict_once(url: str, model: str, photo: bytes, timeout_s: float = 35) -> requests.Response:
    """One prediction through a bridge (raw body)."""
    return requests.put(f"{url}/predictions/{model}", data=photo,
                        headers={"Content-Type": "application/octet-stream"}, timeout=timeout_s)


# --- the whole private stack ----------------------------------------------------------------------

# The test-only archives (slow_handler.py) beside resnet18. TorchServe's responseTimeout (60 s) is longer
# than every delay except slowts's, so only the bridge's own timeout is in play for ``slow``.
SLOW_MODELS = (
    SlowModel("slow", delay_s=6.0),  # slower than the bridge's timeout in the test (2 s)
    SlowModel("slowts", delay_s=6.0, response_timeout_s=2),  # slower than TorchServe's own responseTimeout
    SlowModel("burst", delay_s=0.25, job_queue_size=4),  # a known service time and a queue of 4
)


class FaultStack:
    """The private PostgreSQL, InfluxDB and TorchServe of one test session, and the bridges tests start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.settings = StackSettings(state_dir=root, model_store=root / "torchserve" / "model_store")
        self.postgres = PrivatePostgres(root / "postgres", settings=self.settings)
        self.influx = PrivateInflux(root, self.settings)
        self.torchserve = TorchServe(state_dir=root, ports=TorchServePorts.free(), models=[], all_workers=True,
                                     settings=self.settings)
        self.bridges: list[PrivateBridge] = []
        self.startup_s: dict[str, float] = {}

    def start(self) -> None:
        for name, start in (("postgres", self.postgres.up), ("influxdb", self.influx.start),
                            ("torchserve", self._start_torchserve)):
            began = time.monotonic()
            start()
            self.startup_s[name] = round(time.monotonic() - began, 1)

    def _start_torchserve(self) -> None:
        ts = self.torchserve
        ts.models = private_store(ts.model_store, ("resnet18_v1.0.mar",), SLOW_MODELS, ts.home / "build")
        ts.start()

    def bridge(self, name: str, **settings: Any) -> PrivateBridge:
        """A bridge (not started yet) on the private services; ``settings`` are BRIDGE_* variables in lower case."""
        home = self.root / "bridges" / f"{len(self.bridges):02d}-{name}"
        home.mkdir(parents=True)
        env = {
            "BRIDGE_HOST": "127.0.0.1", "BRIDGE_API_KEYS": "", "BRIDGE_TELEMETRY_INTERVAL_S": "5",
            "BRIDGE_JOB_MODELS": "resnet18", **{f"BRIDGE_{k.upper()}": str(v) for k, v in settings.items()},
        }
        bridge = PrivateBridge("bridge", home, free_ports(1)[0], self.torchserve, env, pg_dsn=self.postgres.dsn,
                               influxdb=self.influx, settings=self.settings)
        self.bridges.append(bridge)
        return bridge

    def ensure_healthy(self, timeout_s: float = 120) -> None:
        """Undo what a previous test may have left: thaw everything, start what is down, wait for workers."""
        signal_all(self.postgres.pids(), signal.SIGCONT)
        self.influx.thaw()
        frontend = self.torchserve.frontend_pid()
        if frontend is not None:
            signal_all([frontend], signal.SIGCONT)
        if not self.postgres.is_up():
            self.postgres.start()
        if not self.influx.is_up():
            self.influx.stop()
            self.influx.start()
        if frontend is None:
            self.torchserve.kill_all()  # leftovers of a crash: launcher, orphaned workers
            self.torchserve.start()
        self.torchserve.wait_ready(timeout_s)

    def close(self) -> None:
        for bridge in self.bridges:
            bridge.stop()
        for close in (self.torchserve.down, self.influx.down, self.postgres.down):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - tear everything down even when one part fails
                print(f"tearing down the private stack: {exc}", file=sys.stderr)

    def keep_logs(self, dest: Path, max_bytes: int = 5_000_000) -> None:
        """Copy every log of the session (services and bridges) to ``dest`` before the temp dir goes."""
        for path in self.root.rglob("*"):
            if path.is_file() and path.suffix in (".log", ".out") and path.stat().st_size <= max_bytes:
                target = dest / path.relative_to(self.root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
