"""The local stack's services: InfluxDB, PostgreSQL, TorchServe and the bridge.

Each service knows how to tell it is up, how to start it (installing what is missing) and how to stop
it. A service found already running is used as it is and never stopped by us: ``down`` only stops what
``up`` started, which is remembered by pid files under ``.state/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("SERVING_STATE_DIR", REPO_ROOT / ".state"))
VENV_BIN = Path(sys.executable).parent
DATABASE = "serving"
PG_ADMIN_DSN = os.environ.get("SERVING_PG_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


class StackError(RuntimeError):
    """A service could not be brought up; the message says what to do next."""


def log(message: str) -> None:
    """Progress line."""
    print(f"  {message}", flush=True)


def wait_for(check: Callable[[], bool], timeout_s: float, what: str, log_file: Path | None = None) -> None:
    """Poll ``check`` until it is true; raise StackError naming the log to read otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    hint = f"; see {log_file}" if log_file else ""
    raise StackError(f"{what} did not become ready within {timeout_s:.0f} s{hint}")


def http_status(url: str, headers: dict[str, str] | None = None, timeout_s: float = 1.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A child of this process that exited stays a zombie until reaped (the spawner may be the one
    # stopping it, e.g. the tests or the benchmark): reap it and call it gone.
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False
    except ChildProcessError:
        pass  # not our child: os.kill already said it exists
    return True


def read_pid(path: Path) -> int | None:
    """The pid recorded in ``path`` if that process is still alive."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def stop_pid(pid: int, what: str, timeout_s: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        log(f"{what} did not stop in {timeout_s:.0f} s; killing it")
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def spawn(cmd: list[str], log_file: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start a detached process (own session) logging to ``log_file``; returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
    # reap it if it exits while we are still around, so pid checks see it gone
    time.sleep(0.05)
    return proc.pid


def apt_install(package: str) -> None:
    """Install a Debian package (the machine has no systemd: nothing is started by the install)."""
    if shutil.which("apt-get") is None:
        raise StackError(f"{package} is missing and apt-get is not available: install {package} yourself")
    log(f"installing Debian package {package} (apt-get) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}")


@dataclass
class Service:
    """Common shape: ``up()`` returns True when it started the service, False when it was running.

    ``state_dir`` holds its pid file and log (the stack's ``.state/``; a benchmark passes its own).
    """

    name: str
    state_dir: Path = STATE_DIR

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    def is_up(self) -> bool:
        raise NotImplementedError

    def up(self) -> bool:
        raise NotImplementedError

    def down(self) -> bool:
        """Stop the service if we started it; True when something was stopped."""
        pid = read_pid(self.pid_file)
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        stop_pid(pid, self.name)
        self.pid_file.unlink(missing_ok=True)
        return True


class InfluxDB(Service):
    """InfluxDB 1.x from Debian's ``influxdb`` package, data under .state/influxdb, on :8086."""

    url = "http://127.0.0.1:8086"

    def __init__(self) -> None:
        super().__init__("influxdb")

    def is_up(self) -> bool:
        return http_status(f"{self.url}/ping") == 204

    def up(self) -> bool:
        if self.is_up():
            self.create_database()
            return False
        influxd = shutil.which("influxd") or "/usr/bin/influxd"
        if not Path(influxd).exists():
            apt_install("influxdb")
        home = STATE_DIR / "influxdb"
        for sub in ("meta", "data", "wal"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        config = home / "influxdb.conf"
        config.write_text(
            "reporting-disabled = true\n"
            'bind-address = "127.0.0.1:8088"\n'
            f'[meta]\n  dir = "{home}/meta"\n'
            f'[data]\n  dir = "{home}/data"\n  wal-dir = "{home}/wal"\n  query-log-enabled = false\n'
            '[http]\n  enabled = true\n  bind-address = "127.0.0.1:8086"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        pid = spawn([influxd, "-config", str(config)], self.log_file, home)
        self.pid_file.write_text(str(pid))
        wait_for(self.is_up, 30, "InfluxDB", self.log_file)
        self.create_database()
        return True

    def create_database(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x."""
        data = f"q=CREATE DATABASE {DATABASE}".encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/query", data=data), timeout=5).close()


class PostgreSQL(Service):
    """The machine's PostgreSQL on 127.0.0.1:5432 (started with pg_ctlcluster, installed if missing)."""

    def __init__(self) -> None:
        super().__init__("postgres")

    def is_up(self) -> bool:
        try:
            import psycopg2

            psycopg2.connect(PG_ADMIN_DSN, connect_timeout=2).close()
            return True
        except Exception:  # noqa: BLE001
            return False

    def up(self) -> bool:
        started = False
        if not self.is_up():
            if shutil.which("pg_ctlcluster") is None:
                apt_install("postgresql")
            versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
            if not versions:
                raise StackError("no PostgreSQL cluster found under /etc/postgresql; install postgresql")
            log(f"starting PostgreSQL {versions[-1]} (pg_ctlcluster) ...")
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                capture_output=True, text=True,
            )
            wait_for(self.is_up, 30, "PostgreSQL", Path(f"/var/log/postgresql/postgresql-{versions[-1]}-main.log"))
            started = True  # started, but not ours to stop: it is the machine's server
        self.create_database()
        return started

    def create_database(self) -> None:
        """Create the ``serving`` database when missing."""
        import psycopg2

        conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {DATABASE}")
                    log(f"created PostgreSQL database {DATABASE}")
        finally:
            conn.close()

    def down(self) -> bool:
        return False  # the machine's PostgreSQL is shared; never stopped by the stack


@dataclass(frozen=True)
class TorchServePorts:
    """TorchServe's listeners, all on 127.0.0.1 (the defaults are config.properties' own)."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071


class TorchServe(Service):
    """TorchServe with config.properties, the model store and its key file under .state/torchserve.

    The defaults are the stack's instance; a benchmark starts another one beside it with its own
    ``state_dir``, ``model_store``, ``ports`` and ``models`` (which replace config.properties' load_models).
    """

    def __init__(
        self,
        name: str = "torchserve",
        state_dir: Path = STATE_DIR,
        model_store: Path = REPO_ROOT / "model_store",
        ports: TorchServePorts = TorchServePorts(),
        models: list[str] | None = None,
    ) -> None:
        super().__init__(name, state_dir)
        self.home = state_dir / name
        self.model_store = model_store
        self.ports = ports
        self.models = models

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    def inference_key(self) -> str | None:
        try:
            return json.loads(self.key_file.read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError):
            return None

    def is_up(self) -> bool:
        key = self.inference_key()
        if key is None:
            return False
        return http_status(f"{self.inference_url}/ping", {"Authorization": f"Bearer {key}"}) == 200

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def models_ready(self) -> bool:
        """Every model in load_models has a READY worker (TorchServe's ping says Healthy before that)."""
        key = self.inference_key()
        if key is None:
            return False
        for archive in self.load_models():
            name = self.model_name(archive)
            # A prediction-free readiness probe: the model's describe via the inference API is not
            # available, so ask the management API with the management key.
            try:
                mgmt = json.loads(self.key_file.read_text())["management"]["key"]
                req = urllib.request.Request(f"{self.management_url}/models/{name}", headers={"Authorization": f"Bearer {mgmt}"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    described = json.loads(r.read())
            except (OSError, ValueError, KeyError):
                return False
            workers = [w for m in described for w in m.get("workers", [])]
            if not any(w.get("status") == "READY" for w in workers):
                return False
        return True

    def load_models(self) -> list[str]:
        """The archives loaded at start: ``models`` when given, config.properties' load_models otherwise."""
        if self.models is not None:
            return list(self.models)
        for line in (REPO_ROOT / "config.properties").read_text().splitlines():
            if line.strip().startswith("load_models="):
                return [m.strip() for m in line.split("=", 1)[1].split(",") if m.strip()]
        return []

    def model_name(self, archive: str) -> str:
        """The model name an archive registers (the store's manifest, else the archive's own MANIFEST)."""
        manifest = self.model_store / "manifest.json"
        if manifest.exists():
            entry = json.loads(manifest.read_text()).get(archive)
            if entry:
                return entry["model"]
        with zipfile.ZipFile(self.model_store / archive) as mar:
            return json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"]

    def effective_config(self) -> Path:
        """config.properties plus this checkout's paths (model store, allowed URLs) and any overrides."""
        store = self.model_store
        config = self.home / "config.properties"
        overrides = ""
        if self.ports != TorchServePorts() or self.models is not None:
            # Java's Properties keep the last value of a repeated key: these lines win.
            p = self.ports
            overrides = (
                "# --- instance overrides (ports, models)\n"
                f"inference_address=http://127.0.0.1:{p.inference}\n"
                f"management_address=http://127.0.0.1:{p.management}\n"
                f"metrics_address=http://127.0.0.1:{p.metrics}\n"
                f"grpc_inference_port={p.grpc_inference}\n"
                f"grpc_management_port={p.grpc_management}\n"
                f"load_models={','.join(self.load_models())}\n"
            )
        config.write_text(
            (REPO_ROOT / "config.properties").read_text()
            + "\n# --- added by the stack for this checkout\n"
            + f"model_store={store}\n"
            + f"allowed_urls=file://{store}/[A-Za-z0-9_.-]+\\\\.mar\n"
            + overrides
        )
        return config

    def _env(self) -> dict[str, str]:
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        # TEMP → the JVM's java.io.tmpdir (unpacked models); TMPDIR → TorchServe's pid file and sockets.
        logs = str(self.state_dir / "logs" / self.name)
        return {"TEMP": str(tmp), "TMPDIR": str(tmp), "LOG_LOCATION": logs, "METRICS_LOCATION": logs,
                "OMP_NUM_THREADS": "1"}

    def up(self) -> bool:
        if self.is_up() and self.models_ready():
            return False
        self.home.mkdir(parents=True, exist_ok=True)
        missing = [m for m in self.load_models() if not (self.model_store / m).exists()]
        if missing:
            raise StackError(f"archives missing from {self.model_store}: {missing}; run `python -m archive_scripts`")
        config = self.effective_config()
        cmd = [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config)]
        pid = spawn(cmd, self.log_file, self.home, self._env())
        self.pid_file.write_text(str(pid))
        wait_for(lambda: self.is_up() and self.models_ready(), 180, "TorchServe and its models", self.log_file)
        return True

    def down(self) -> bool:
        pid = read_pid(self.pid_file)
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        subprocess.run([str(VENV_BIN / "torchserve"), "--stop"], cwd=self.home, env={**os.environ, **self._env()},
                       capture_output=True)
        stop_pid(pid, self.name, timeout_s=30)
        self.pid_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)
        return True


class Bridge(Service):
    """The bridge (``python -m bridge``), by default on 127.0.0.1:8000 (health: http://127.0.0.1:8000/ping).

    A benchmark starts another one with its own ``port``, ``state_dir`` (spool, log, pid file), the
    TorchServe it talks to and extra ``BRIDGE_*`` settings in ``env``.
    """

    def __init__(
        self,
        name: str = "bridge",
        state_dir: Path = STATE_DIR,
        port: int = 8000,
        torchserve: TorchServe | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(name, state_dir)
        self.port = port
        self.torchserve = torchserve or TorchServe()
        self.env = env or {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_up(self) -> bool:
        return http_status(f"http://127.0.0.1:{self.port}/ping", timeout_s=3) == 200

    def up(self) -> bool:
        if self.is_up():
            return False
        if http_status(f"{self.url}/openapi.json") is not None:
            raise StackError(f"something else answers on 127.0.0.1:{self.port} but is not healthy; stop it and retry")
        env = {"BRIDGE_TORCHSERVE_KEY_FILE": str(self.torchserve.key_file),
               "BRIDGE_SPOOL_DIR": str(self.state_dir / "spool"), **self.env}
        if self.port != 8000:
            env["BRIDGE_PORT"] = str(self.port)
        if self.torchserve.ports != TorchServePorts():
            ts = self.torchserve
            env.update(BRIDGE_TORCHSERVE_URL=ts.inference_url, BRIDGE_TORCHSERVE_MANAGEMENT_URL=ts.management_url,
                       BRIDGE_TORCHSERVE_METRICS_URL=ts.metrics_url)
        pid = spawn([sys.executable, "-m", "bridge"], self.log_file, REPO_ROOT, env)
        self.pid_file.write_text(str(pid))
        wait_for(self.is_up, 60, "the bridge", self.log_file)
        return True


def all_services() -> list[Service]:
    """In start order."""
    return [PostgreSQL(), InfluxDB(), TorchServe(), Bridge()]
