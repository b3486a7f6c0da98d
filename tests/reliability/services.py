"""Private instances of the stack's services for the fault tests: PostgreSQL, InfluxDB, TorchServe, bridges.

Other engineers use the shared stack (bridge 8000, TorchServe 8080–8082 / 7070–7071, InfluxDB 8086,
PostgreSQL 5432) while these tests stop, kill and freeze things. So every service here runs on free
loopback ports picked at start, with its data, logs, key file, sockets and spool in one temp dir, and is
started and stopped by the fixtures in ``conftest.py`` alone. The helpers of ``stack/services.py``
(spawn, wait_for, http_status, stop_pid) do the process work; each class adds what a fault needs: kill -9,
SIGSTOP/SIGCONT, stop and restart on the same ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import requests

from stack.services import REPO_ROOT, VENV_BIN, http_status, spawn, stop_pid, wait_for

PG_BIN = Path(os.environ.get("RELIABILITY_PG_BIN", "/usr/lib/postgresql/15/bin"))
DATABASE = "serving"
SLOW_HANDLER = Path(__file__).resolve().parent / "slow_handler.py"


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nobody listens on right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def make_root(prefix: str = "reliability-") -> Path:
    """A temp dir every service user (root, postgres) can traverse."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def kill9(pid: int, wait_s: float = 10.0) -> None:
    """SIGKILL one process (not its group) and wait until it is gone (reaped when it is our child)."""
    try:
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(wait_s)
    except psutil.NoSuchProcess:
        pass


def signal_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to every pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --- PostgreSQL -----------------------------------------------------------------------------------


class PrivatePostgres:
    """A throwaway PostgreSQL 15 cluster (initdb -A trust) on a free port, with database ``serving``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sock"
        self.log_file = root / "postgres.log"
        self.port = free_ports(1)[0]
        self._as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def init(self) -> None:
        """initdb, then start and create the database."""
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")
        self.start()
        conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", connect_timeout=5)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DATABASE}")
        conn.close()

    def start(self) -> None:
        """pg_ctl start (crash recovery after an immediate stop) and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-o", options,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """pg_ctl stop -m ``mode`` (immediate: like a crash, no checkpoint)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        """The postmaster first, then every process it forked (backends, checkpointer, ...)."""
        pid = self.postmaster_pid()
        if pid is None:
            return []
        try:
            return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster, then every process it forked (again until no new one appears); the pids."""
        frozen: list[int] = []
        for _ in range(5):  # a backend forked just before the postmaster stopped is caught on the next pass
            new = [pid for pid in self.pids() if pid not in frozen]
            if not new:
                break
            signal_all(new, signal.SIGSTOP)
            frozen += new
            time.sleep(0.05)
        return frozen

    @staticmethod
    def thaw(pids: list[int]) -> None:
        signal_all(list(reversed(pids)), signal.SIGCONT)

    def is_up(self) -> bool:
        try:
            psycopg2.connect(self.dsn, connect_timeout=2).close()
            return True
        except psycopg2.Error:
            return False

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement in its own connection (autocommit); the rows it returns."""
        conn = psycopg2.connect(self.dsn, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def close(self) -> None:
        if self.postmaster_pid() is not None:
            signal_all(self.pids(), signal.SIGCONT)  # a frozen cluster cannot stop
            self.stop("fast")


# --- InfluxDB -------------------------------------------------------------------------------------


class PrivateInflux:
    """influxd (InfluxDB 1.x) with its data in ``root`` and HTTP on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http_port, self.bind_port = free_ports(2)
        self.log_file = root / "influxd.log"
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        for sub in ("meta", "data", "wal"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.bind_port}"\n'
            f'[meta]\n  dir = "{self.root}/meta"\n'
            f'[data]\n  dir = "{self.root}/data"\n  wal-dir = "{self.root}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.http_port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        influxd = shutil.which("influxd") or "/usr/bin/influxd"
        self.pid = spawn([influxd, "-config", str(config)], self.log_file, self.root)
        wait_for(self.is_up, 30, "private InfluxDB", self.log_file)
        self.create_database(DATABASE)

    def is_up(self) -> bool:
        return http_status(f"{self.url}/ping") == 204

    def stop(self) -> None:
        if self.pid is not None:
            signal_all([self.pid], signal.SIGCONT)
            stop_pid(self.pid, "private InfluxDB")
            self.pid = None

    def freeze(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGCONT)

    def create_database(self, name: str) -> None:
        self.query(f"CREATE DATABASE {name}", method="POST")

    def query(self, q: str, database: str = DATABASE, method: str = "GET") -> dict[str, Any]:
        response = requests.request(method, f"{self.url}/query", params={"db": database, "q": q}, timeout=10)
        response.raise_for_status()
        return response.json()

    def write(self, line: str, database: str = DATABASE) -> requests.Response:
        return requests.post(f"{self.url}/write", params={"db": database, "precision": "ns"}, data=line, timeout=10)

    def field_values(self, field_name: str, measurement: str, database: str = DATABASE) -> list[Any]:
        """Every value of one field of a measurement (e.g. the request ids of ``inference``)."""
        result = self.query(f'SELECT "{field_name}" FROM "{measurement}"', database)
        series = result["results"][0].get("series") or []
        return [row[1] for s in series for row in s["values"]]


# --- TorchServe -----------------------------------------------------------------------------------


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


@dataclass
class PrivateTorchServe:
    """TorchServe with config.properties on free ports, its own working dir and a private model store.

    The store holds a hard link (or copy) of the real archives from ``model_store/`` plus the test-only
    slow archives, so the configuration is the production one except for ports, paths and ``load_models``.
    """

    root: Path
    archives: tuple[str, ...] = ("resnet18_v1.0.mar",)
    slow_models: tuple[SlowModel, ...] = ()
    overrides: dict[str, str] = field(default_factory=dict)
    launcher_pid: int | None = None

    def __post_init__(self) -> None:
        self.store = self.root / "model_store"
        self.tmp = self.root / "tmp"
        self.logs = self.root / "logs"
        self.log_file = self.logs / "torchserve.out"
        (self.inference_port, self.management_port, self.metrics_port,
         self.grpc_inference_port, self.grpc_management_port) = free_ports(5)

    # addresses
    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def key_file(self) -> Path:
        return self.root / "key_file.json"

    def prepare(self) -> None:
        """The private model store (real archives linked in, slow archives built) and the config."""
        for d in (self.store, self.tmp, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        for archive in self.archives:
            src, dst = REPO_ROOT / "model_store" / archive, self.store / archive
            if not src.exists():
                raise RuntimeError(f"{src} is missing: run `python -m archive_scripts` (or `make up`) first")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        for model in self.slow_models:
            build_slow_archive(model, self.store, self.root / "build")
        self.config_path = self.root / "config.properties"
        self.config_path.write_text(self.effective_config())

    def load_models(self) -> list[str]:
        return [*self.archives, *(f"{m.name}.mar" for m in self.slow_models)]

    def model_names(self) -> list[str]:
        names = [a.split("_v")[0] for a in self.archives]
        return names + [m.name for m in self.slow_models]

    def effective_config(self) -> str:
        """config.properties with this instance's ports, store and load_models (every other line kept)."""
        values = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": f"http://127.0.0.1:{self.metrics_port}",
            "grpc_inference_port": str(self.grpc_inference_port),
            "grpc_management_port": str(self.grpc_management_port),
            "load_models": ",".join(self.load_models()),
            "model_store": str(self.store),
            "allowed_urls": f"file://{self.store}/[A-Za-z0-9_.-]+\\\\.mar",
            **self.overrides,
        }
        lines = []
        for line in (REPO_ROOT / "config.properties").read_text().splitlines():
            key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
            if key in values:
                line = f"{key}={values.pop(key)}"
            lines.append(line)
        lines.append("# --- private instance of the reliability tests")
        lines += [f"{k}={v}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    def _env(self) -> dict[str, str]:
        # TEMP → java.io.tmpdir (unpacked models); TMPDIR → the launcher's pid file and the workers' sockets.
        return {"TEMP": str(self.tmp), "TMPDIR": str(self.tmp), "LOG_LOCATION": str(self.logs),
                "METRICS_LOCATION": str(self.logs), "OMP_NUM_THREADS": "1"}

    # lifecycle
    def start(self, timeout_s: float = 180) -> float:
        """Start and wait until every model has all its workers READY; returns the seconds it took."""
        started = time.monotonic()
        cmd = [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(self.config_path)]
        self.launcher_pid = spawn(cmd, self.log_file, self.root, self._env())
        wait_for(self.ready, timeout_s, "private TorchServe and its models", self.log_file)
        return time.monotonic() - started

    def stop(self) -> None:
        """``torchserve --stop`` as an operator would (removes key_file.json), then wait for the processes."""
        subprocess.run([str(VENV_BIN / "torchserve"), "--stop", "--foreground"], cwd=self.root,
                       env={**os.environ, **self._env()}, capture_output=True, timeout=90, check=False)
        self._reap()

    def kill_all(self) -> None:
        """kill -9 the frontend and every worker (a crash); the stale key file stays, like after a crash."""
        frontend = self.frontend_pid()
        workers = self.all_worker_pids()
        if frontend is not None:
            signal_all([frontend], signal.SIGCONT)
            kill9(frontend)
        for pid in workers:
            kill9(pid)
        self._reap()

    def _reap(self) -> None:
        if self.launcher_pid is not None:
            stop_pid(self.launcher_pid, "private TorchServe", timeout_s=30)
            self.launcher_pid = None
        for proc in psutil.process_iter(["pid", "cmdline"]):
            # orphaned workers of this instance: their socket path lives under our tmp dir
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "model_service_worker" in cmdline and str(self.tmp) in cmdline:
                kill9(proc.info["pid"])

    def frontend_pid(self) -> int | None:
        """The Java frontend (the launcher writes its pid to TMPDIR/.model_server.pid)."""
        try:
            pid = int((self.tmp / ".model_server.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def all_worker_pids(self) -> list[int]:
        frontend = self.frontend_pid()
        if frontend is None:
            return []
        try:
            return [c.pid for c in psutil.Process(frontend).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    # keys and APIs
    def keys(self) -> dict[str, str]:
        raw = json.loads(self.key_file.read_text())
        return {"inference": raw["inference"]["key"], "management": raw["management"]["key"]}

    def ping(self) -> int | None:
        try:
            key = self.keys()["inference"]
        except (OSError, ValueError, KeyError):
            return None
        return http_status(f"{self.inference_url}/ping", {"Authorization": f"Bearer {key}"})

    def describe(self, model: str) -> list[dict[str, Any]]:
        response = requests.get(f"{self.management_url}/models/{model}",
                                headers={"Authorization": f"Bearer {self.keys()['management']}"}, timeout=5)
        response.raise_for_status()
        return response.json()

    def worker_pids(self, model: str) -> list[int]:
        """The Python workers of ``model`` (management API describe), READY or not."""
        return [int(w["pid"]) for d in self.describe(model) for w in d.get("workers", []) if w.get("pid")]

    def workers_ready(self, model: str) -> bool:
        """Every worker of ``model`` is READY and there are at least minWorkers of them."""
        for d in self.describe(model):
            workers = d.get("workers", [])
            if len(workers) < d.get("minWorkers", 1) or not all(w.get("status") == "READY" for w in workers):
                return False
        return True

    def ready(self) -> bool:
        if self.ping() != 200:
            return False
        try:
            return all(self.workers_ready(m) for m in self.model_names())
        except (requests.RequestException, OSError, ValueError, KeyError):
            return False

    def close(self) -> None:
        frontend = self.frontend_pid()
        if frontend is not None:
            signal_all([frontend], signal.SIGCONT)
        if self.launcher_pid is not None or frontend is not None:
            self.stop()


# --- bridge ---------------------------------------------------------------------------------------


class PrivateBridge:
    """``python -m bridge`` on a free port, wired to the private services, with its own spool."""

    def __init__(
        self,
        root: Path,
        torchserve: PrivateTorchServe,
        postgres: PrivatePostgres,
        influx: PrivateInflux,
        **settings: Any,
    ) -> None:
        self.root = root
        self.port = free_ports(1)[0]
        self.spool_dir = root / "spool"
        self.log_file = root / "bridge.log"
        self.env = {
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_API_KEYS": "",
            "BRIDGE_TORCHSERVE_URL": torchserve.inference_url,
            "BRIDGE_TORCHSERVE_MANAGEMENT_URL": torchserve.management_url,
            "BRIDGE_TORCHSERVE_METRICS_URL": torchserve.metrics_url,
            "BRIDGE_TORCHSERVE_KEY_FILE": str(torchserve.key_file),
            "BRIDGE_PG_DSN": postgres.dsn,
            "BRIDGE_INFLUX_HOST": "127.0.0.1",
            "BRIDGE_INFLUX_PORT": str(influx.http_port),
            "BRIDGE_SPOOL_DIR": str(self.spool_dir),
            "BRIDGE_TELEMETRY_INTERVAL_S": "5",
            "BRIDGE_JOB_MODELS": "resnet18",
            **{f"BRIDGE_{k.upper()}": str(v) for k, v in settings.items()},
        }
        self.pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60, healthy: bool = True) -> float:
        """Start and wait for /ping 200 (or, with ``healthy=False``, for any answer); returns seconds taken."""
        started = time.monotonic()
        self.pid = spawn([sys.executable, "-m", "bridge"], self.log_file, REPO_ROOT, self.env)
        want = (200,) if healthy else (200, 503)

        def up() -> bool:
            if self.pid is not None and not psutil.pid_exists(self.pid):
                raise RuntimeError(f"the bridge exited; see {self.log_file}:\n{self.log_tail()}")
            return http_status(f"{self.url}/ping", timeout_s=5) in want

        wait_for(up, timeout_s, "private bridge", self.log_file)
        return time.monotonic() - started

    def kill9(self) -> None:
        assert self.pid is not None
        kill9(self.pid)
        self.pid = None

    def stop(self) -> None:
        if self.pid is not None:
            stop_pid(self.pid, "private bridge", timeout_s=30)
            self.pid = None

    def ping(self) -> dict[str, Any]:
        """The bridge's /ping body (whatever its status)."""
        response = requests.get(f"{self.url}/ping", timeout=30)
        return response.json()

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

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


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
        self.postgres = PrivatePostgres(root / "postgres")
        self.influx = PrivateInflux(root / "influxdb")
        self.torchserve = PrivateTorchServe(root / "torchserve", slow_models=SLOW_MODELS)
        self.bridges: list[PrivateBridge] = []
        self.startup_s: dict[str, float] = {}

    def start(self) -> None:
        for name, start in (("postgres", self.postgres.init), ("influxdb", self.influx.start),
                            ("torchserve", self._start_torchserve)):
            began = time.monotonic()
            start()
            self.startup_s[name] = round(time.monotonic() - began, 1)

    def _start_torchserve(self) -> None:
        self.torchserve.prepare()
        self.torchserve.start()

    def bridge(self, name: str, **settings: Any) -> PrivateBridge:
        """A bridge (not started yet) on the private services; ``settings`` are BRIDGE_* variables in lower case."""
        home = self.root / "bridges" / f"{len(self.bridges):02d}-{name}"
        home.mkdir(parents=True)
        bridge = PrivateBridge(home, self.torchserve, self.postgres, self.influx, **settings)
        self.bridges.append(bridge)
        return bridge

    def ensure_healthy(self, timeout_s: float = 120) -> None:
        """Undo what a previous test may have left: thaw everything, start what is down, wait for workers."""
        signal_all(self.postgres.pids(), signal.SIGCONT)
        if self.influx.pid is not None:
            signal_all([self.influx.pid], signal.SIGCONT)
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
        wait_for(self.torchserve.ready, timeout_s, "private TorchServe's workers", self.torchserve.log_file)

    def close(self) -> None:
        for bridge in self.bridges:
            bridge.stop()
        for close in (self.torchserve.close, self.influx.stop, self.postgres.close):
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
