"""Private TorchServe and bridge processes for checks that must not touch the shared stack.

A private instance listens on ports the kernel reports free (so two runs of the suite, or another
engineer's private instances, never collide), keeps its working directory, key file,
unpacked models, logs and spool under a temporary directory, and records into its own PostgreSQL and
InfluxDB databases; it is always stopped by the fixture that started it. Processes are started and polled
with :mod:`stack.services`' ``spawn``, ``wait_for`` and ``http_status``; the shared stack is never
reconfigured.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from stack.services import (
    PG_ADMIN_DSN,
    REPO_ROOT,
    STATE_DIR,
    VENV_BIN,
    InfluxDB,
    http_status,
    spawn,
    wait_for,
)

MODEL_STORE = REPO_ROOT / "model_store"


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now (bound together to port 0, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True)
class TorchServePorts:
    """The five listeners of one TorchServe."""

    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int

    @classmethod
    def free(cls) -> TorchServePorts:
        """Five ports that are free now."""
        return cls(*free_ports(5))

    def all(self) -> tuple[int, ...]:
        """Every port, for free-port checks and listener checks."""
        return (self.inference, self.management, self.metrics, self.grpc_inference, self.grpc_management)


SHARED_TORCHSERVE_PORTS = TorchServePorts(8080, 8081, 8082, 7070, 7071)


def ensure_free(ports: tuple[int, ...]) -> None:
    """Fail with a clear message when one of ``ports`` is already taken on loopback."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise RuntimeError(f"port {port} is taken; a private instance needs it ({exc})") from exc


class PrivateTorchServe:
    """TorchServe with the project's config.properties, but on other ports, in its own directory.

    The configuration is config.properties with only the listeners, ``load_models`` and
    ``token_expiration_min`` changed, plus the lines the stack adds for this checkout (``model_store`` and
    ``allowed_urls``, copied from the shared instance's effective configuration when it has one).
    """

    def __init__(
        self,
        home: Path,
        ports: TorchServePorts | None = None,
        token_expiration_min: int = 60,
        models: tuple[str, ...] = ("resnet18_v1.0.mar",),
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.ports = ports or TorchServePorts.free()
        self.token_expiration_min = token_expiration_min
        self.models = models
        self.extra_env = dict(env or {})
        self.pid: int | None = None

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "torchserve.log"

    @property
    def tmp_dir(self) -> Path:
        """java.io.tmpdir (models are unpacked under it), TorchServe's pid file and worker sockets."""
        return self.home / "tmp"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def keys(self) -> dict[str, Any]:
        """The key file as TorchServe wrote it."""
        return json.loads(self.key_file.read_text())

    def key(self, kind: str) -> str | None:
        """The current ``inference`` / ``management`` / ``API`` key, None before TorchServe wrote them."""
        try:
            return self.keys()[kind]["key"]
        except (OSError, ValueError, KeyError):
            return None

    def is_up(self) -> bool:
        """TorchServe's ping (with the inference key) answers 200."""
        key = self.key("inference")
        return key is not None and http_status(f"{self.inference_url}/ping", {"Authorization": f"Bearer {key}"}) == 200

    def models_ready(self) -> bool:
        """Every loaded model has a READY worker."""
        try:
            return all(
                any(w.get("status") == "READY" for v in self.management("GET", f"/models/{name}") for w in v["workers"])
                for name in self.model_names()
            )
        except (OSError, ValueError, KeyError):
            return False

    def model_names(self) -> list[str]:
        """The model names of the loaded archives (the store's manifest)."""
        manifest = json.loads((MODEL_STORE / "manifest.json").read_text())
        return [manifest[archive]["model"] for archive in self.models]

    def renew(self, kind: str) -> str:
        """Renew the ``inference`` or ``management`` key with the API key (TorchServe rewrites the key file)."""
        request = urllib.request.Request(
            f"{self.management_url}/token?type={kind}", headers={"Authorization": f"Bearer {self.key('API')}"}
        )
        urllib.request.urlopen(request, timeout=30).close()
        key = self.key(kind)
        assert key is not None
        return key

    def fresh_key(self, kind: str, margin_s: float = 15.0) -> str:
        """The current key of ``kind``, renewed first when it expires within ``margin_s``."""
        keys = self.keys()
        if (key_expiry(keys, kind) - datetime.now(UTC)).total_seconds() < margin_s:
            return self.renew(kind)
        return keys[kind]["key"]

    def management(self, method: str, path: str, key: str | None = None, timeout_s: float = 30.0) -> Any:
        """A management API call (with a fresh management key unless given); the decoded JSON answer."""
        key = key or self.fresh_key("management")
        request = urllib.request.Request(
            f"{self.management_url}{path}", method=method, headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")

    def config_text(self) -> str:
        """The configuration this instance runs with."""
        text = (REPO_ROOT / "config.properties").read_text()
        replacements = {
            "inference_address": f"http://127.0.0.1:{self.ports.inference}",
            "management_address": f"http://127.0.0.1:{self.ports.management}",
            "metrics_address": f"http://127.0.0.1:{self.ports.metrics}",
            "grpc_inference_port": str(self.ports.grpc_inference),
            "grpc_management_port": str(self.ports.grpc_management),
            "token_expiration_min": str(self.token_expiration_min),
            "load_models": ",".join(self.models),
        }
        for key, value in replacements.items():
            text, count = re.subn(rf"^{key}=.*$", f"{key}={value}".replace("\\", "\\\\"), text, flags=re.MULTILINE)
            assert count == 1, f"config.properties has no single {key}= line"
        return text + "\n# --- added for this private instance\n" + "\n".join(stack_added_lines()) + "\n"

    def env(self) -> dict[str, str]:
        """The environment TorchServe (and so its workers, less the blacklisted names) starts with."""
        logs = str(self.home / "logs")
        return {
            "TEMP": str(self.tmp_dir),
            "TMPDIR": str(self.tmp_dir),
            "LOG_LOCATION": logs,
            "METRICS_LOCATION": logs,
            "OMP_NUM_THREADS": "1",
            **self.extra_env,
        }

    def start(self, timeout_s: float = 240.0) -> None:
        """Start it (the ports must be free) and wait until every model has a READY worker."""
        ensure_free(self.ports.all())
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        config = self.home / "config.properties"
        config.write_text(self.config_text())
        cmd = [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config)]
        self.pid = spawn(cmd, self.log_file, self.home, self.env())
        wait_for(lambda: self.is_up() and self.models_ready(), timeout_s, "private TorchServe", self.log_file)

    def stop(self) -> None:
        """Stop it and everything it started (its process group: Java and the Python workers)."""
        if self.pid is None:
            return  # never started (start() failed before spawning)
        subprocess.run(
            [str(VENV_BIN / "torchserve"), "--stop"],
            cwd=self.home,
            env={**os.environ, **self.env()},
            capture_output=True,
            timeout=60,
            check=False,
        )
        if self.pid is not None:
            terminate_group(self.pid, timeout_s=30)
        self.pid = None

    def worker_pids(self) -> list[int]:
        """Pids of the Python workers of every loaded model (management API)."""
        pids = []
        for name in self.model_names():
            for version in self.management("GET", f"/models/{name}/all"):
                pids += [int(w["pid"]) for w in version.get("workers", []) if int(w.get("pid", -1)) > 0]
        return pids


def key_expiry(keys: dict[str, Any], kind: str) -> datetime:
    """When a key of TorchServe's key file expires (Java prints nanoseconds; Python parses microseconds)."""
    head, _, frac = keys[kind]["expiration time"].rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}").replace(tzinfo=UTC)


def stack_added_lines() -> list[str]:
    """``model_store`` and ``allowed_urls`` as the stack appends them to config.properties.

    Read from the shared instance's effective configuration (what really runs); when there is none yet,
    the same lines made the way the stack makes them.
    """
    effective = STATE_DIR / "torchserve" / "config.properties"
    found: dict[str, str] = {}
    if effective.exists():
        for line in effective.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if key in ("model_store", "allowed_urls"):
                found[key] = line  # the last one wins, as in Java's Properties
    found.setdefault("model_store", f"model_store={MODEL_STORE}")
    found.setdefault("allowed_urls", f"allowed_urls=file://{MODEL_STORE}/[A-Za-z0-9_.-]+\\\\.mar")
    return [found["model_store"], found["allowed_urls"]]


@contextlib.contextmanager
def private_databases(prefix: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL and an InfluxDB database named ``<prefix>_<pid>``, dropped afterwards: (pg dsn, influx db).

    The pid keeps concurrent runs apart; databases of the same prefix left by a test process that no longer
    exists (killed mid-run) are dropped first.
    """
    assert re.fullmatch(r"[a-z0-9_]+", prefix), prefix
    name = f"{prefix}_{os.getpid()}"
    admin = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    admin.autocommit = True
    influx = InfluxDB.url
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{prefix}\\_%",))
            for (stale,) in cur.fetchall():
                owner = stale.rsplit("_", 1)[-1]
                if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
                    cur.execute(f"DROP DATABASE IF EXISTS {stale} WITH (FORCE)")
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {name}")
        _influx_query(influx, f"CREATE DATABASE {name}")
        yield PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}", name
    finally:
        with contextlib.suppress(Exception), admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        with contextlib.suppress(Exception):
            _influx_query(influx, f"DROP DATABASE {name}")
        admin.close()


def _influx_query(url: str, query: str) -> None:
    data = f"q={query}".encode()
    urllib.request.urlopen(urllib.request.Request(f"{url}/query", data=data), timeout=5).close()


@dataclass
class PrivateBridge:
    """``python -m bridge`` on its own port, spool and databases, pointed at a chosen TorchServe."""

    home: Path
    torchserve_url: str
    management_url: str
    metrics_url: str
    key_file: Path
    pg_dsn: str
    influx_database: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0  # 0: a port that is free when the bridge is made
    pid: int | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_ports(1)[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.home / "bridge.log"

    def log_text(self) -> str:
        """Everything the bridge logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def start(self, ready_path: str = "/openapi.json", timeout_s: float = 60.0) -> None:
        """Start it and wait until ``ready_path`` answers 200."""
        ensure_free((self.port,))
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_TORCHSERVE_URL": self.torchserve_url,
            "BRIDGE_TORCHSERVE_MANAGEMENT_URL": self.management_url,
            "BRIDGE_TORCHSERVE_METRICS_URL": self.metrics_url,
            "BRIDGE_TORCHSERVE_KEY_FILE": str(self.key_file),
            "BRIDGE_SPOOL_DIR": str(self.home / "spool"),
            "BRIDGE_PG_DSN": self.pg_dsn,
            "BRIDGE_INFLUX_DATABASE": self.influx_database,
            "BRIDGE_TELEMETRY_INTERVAL_S": "0",
            "BRIDGE_JOB_MODELS": "resnet18",
            **self.env,
        }
        self.pid = spawn([sys.executable, "-m", "bridge"], self.log_file, REPO_ROOT, env)
        wait_for(
            lambda: http_status(f"{self.url}{ready_path}", timeout_s=3) == 200,
            timeout_s,
            f"private bridge on {self.port}",
            self.log_file,
        )

    def stop(self) -> None:
        """SIGTERM its process group, then SIGKILL if needed."""
        if self.pid is not None:
            terminate_group(self.pid, timeout_s=15)
        self.pid = None


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry))
    return members


def terminate_group(pgid: int, timeout_s: float) -> None:
    """SIGTERM the process group a spawned service leads, wait for all of it, SIGKILL what remains, reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.5)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pgid, os.WNOHANG)  # spawned by this process: reap the zombie


def environ_of(pid: int) -> dict[str, str]:
    """The environment a running process was started with (/proc/<pid>/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


__all__ = [
    "MODEL_STORE",
    "SHARED_TORCHSERVE_PORTS",
    "PrivateBridge",
    "PrivateTorchServe",
    "TorchServePorts",
    "ensure_free",
    "environ_of",
    "free_ports",
    "group_members",
    "key_expiry",
    "private_databases",
    "terminate_group",
]
