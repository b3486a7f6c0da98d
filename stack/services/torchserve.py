"""TorchServe with the project's config.properties, on chosen ports, with chosen models and overrides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from stack.services.base import REPO_ROOT, VENV_BIN, Service, StackError, http_status, log, stop_pid, wait_for
from stack.services.faults import free_ports, kill9, signal_all
from stack.settings import StackSettings
from stack.torchserve import KeyFileUnreadable, Keys, read_keys

CONFIG = REPO_ROOT / "config.properties"
LOG_CONFIG = REPO_ROOT / "log4j2.xml"  # each line once, no per-request lines (see the file)


@dataclass(frozen=True)
class TorchServePorts:
    """TorchServe's listeners, all on 127.0.0.1 (the defaults are config.properties' own)."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> TorchServePorts:
        """Five ports that are free now."""
        return cls(*free_ports(5))

    def all(self) -> tuple[int, ...]:
        """Every port, for free-port checks and listener checks."""
        return (self.inference, self.management, self.metrics, self.grpc_inference, self.grpc_management)


class TorchServe(Service):
    """TorchServe with config.properties, the model store and its key file under ``<state_dir>/<name>``.

    The defaults are the stack's instance. Another one (a benchmark's, a test's) gets its own ``state_dir``,
    ``model_store``, ``ports``, ``models`` (which replace config.properties' load_models), ``overrides`` (other
    config.properties keys) and ``env`` (added to TorchServe's environment). With ``all_workers``, ready
    means every worker of every model READY (at least minWorkers of them), not one per model.
    """

    def __init__(
        self,
        name: str = "torchserve",
        state_dir: Path | None = None,
        model_store: Path | None = None,
        ports: TorchServePorts = TorchServePorts(),
        models: list[str] | None = None,
        overrides: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        all_workers: bool = False,
        settings: StackSettings | None = None,
    ) -> None:
        super().__init__(name, state_dir, settings)
        self.model_store = model_store or self.settings.model_store
        self.ports = ports
        self.models = models
        self.overrides = dict(overrides or {})
        self.extra_env = dict(env or {})
        self.all_workers = all_workers
        self._names: dict[str, str] = {}

    # --- where things are

    @property
    def home(self) -> Path:
        """Its working directory: key file, effective config, tmp."""
        return self.state_dir / self.name

    @property
    def tmp(self) -> Path:
        """java.io.tmpdir (models are unpacked under it), the launcher's pid file and the workers' sockets."""
        return self.home / "tmp"

    @property
    def logs(self) -> Path:
        """TorchServe's own logs (ts_log.log, model_log.log, metrics)."""
        return self.state_dir / "logs" / self.name

    @property
    def key_file(self) -> Path:
        return self.home / "key_file.json"

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    # --- keys and readiness

    def keys(self) -> Keys:
        """Its current keys; KeyFileUnreadable before TorchServe wrote them."""
        return read_keys(self.key_file)

    def inference_key(self) -> str | None:
        """The current inference key, None before TorchServe wrote it."""
        try:
            return self.keys().inference
        except KeyFileUnreadable:
            return None

    def ping(self) -> int | None:
        """Status of TorchServe's ping with the inference key; None when there is no key or no answer."""
        key = self.inference_key()
        if key is None:
            return None
        return http_status(f"{self.inference_url}/ping", {"Authorization": f"Bearer {key}"})

    def is_up(self) -> bool:
        return self.ping() == 200

    def management(self, method: str, path: str, timeout_s: float = 30.0) -> Any:
        """One management API call with the current management key; the decoded JSON answer."""
        request = urllib.request.Request(
            f"{self.management_url}{path}", method=method,
            headers={"Authorization": f"Bearer {self.keys().management}"},
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read() or b"null")

    def describe(self, model: str) -> list[dict[str, Any]]:
        """The management API's describe of ``model``'s default version."""
        return self.management("GET", f"/models/{model}", timeout_s=5)

    def worker_pids(self, model: str | None = None) -> list[int]:
        """The Python workers of ``model`` (every loaded model by default), READY or not."""
        models = [model] if model else self.model_names()
        return [int(w["pid"]) for m in models for d in self.describe(m) for w in d.get("workers", [])
                if int(w.get("pid", -1)) > 0]

    def workers_ready(self, model: str) -> bool:
        """Every worker of ``model`` is READY and there are at least minWorkers of them."""
        for d in self.describe(model):
            workers = d.get("workers", [])
            if len(workers) < d.get("minWorkers", 1) or not all(w.get("status") == "READY" for w in workers):
                return False
        return True

    def models_ready(self) -> bool:
        """Every loaded model has a READY worker (all of them with ``all_workers``); ping says Healthy before."""
        try:
            for name in self.model_names():
                if self.all_workers:
                    if not self.workers_ready(name):
                        return False
                elif not any(w.get("status") == "READY" for d in self.describe(name) for w in d.get("workers", [])):
                    return False
        except (OSError, ValueError, KeyError, KeyFileUnreadable):
            return False
        return True

    def ready(self) -> bool:
        """Up and every model ready."""
        return self.is_up() and self.models_ready()

    # --- configuration

    def load_models(self) -> list[str]:
        """The archives loaded at start: ``models`` when given, config.properties' load_models otherwise."""
        if self.models is not None:
            return list(self.models)
        for line in CONFIG.read_text().splitlines():
            if line.strip().startswith("load_models="):
                return [m.strip() for m in line.split("=", 1)[1].split(",") if m.strip()]
        return []

    def model_name(self, archive: str) -> str:
        """The model name an archive registers (the store's manifest, else the archive's own MANIFEST)."""
        if archive not in self._names:
            manifest = self.model_store / "manifest.json"
            entry = json.loads(manifest.read_text()).get(archive) if manifest.exists() else None
            if entry:
                self._names[archive] = entry["model"]
            else:
                with zipfile.ZipFile(self.model_store / archive) as mar:
                    self._names[archive] = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"]
        return self._names[archive]

    def model_names(self) -> list[str]:
        """The model names of the loaded archives."""
        return [self.model_name(a) for a in self.load_models()]

    def config_text(self) -> str:
        """config.properties with this instance's keys replaced in place and this checkout's paths added."""
        store = self.model_store
        values = {"model_store": str(store), "allowed_urls": f"file://{store}/[A-Za-z0-9_.-]+\\\\.mar"}
        if self.ports != TorchServePorts() or self.models is not None:
            p = self.ports
            values.update(
                inference_address=f"http://127.0.0.1:{p.inference}",
                management_address=f"http://127.0.0.1:{p.management}",
                metrics_address=f"http://127.0.0.1:{p.metrics}",
                grpc_inference_port=str(p.grpc_inference), grpc_management_port=str(p.grpc_management),
                load_models=",".join(self.load_models()),
            )
        values.update(self.overrides)
        lines = []
        for line in CONFIG.read_text().splitlines():
            key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
            if key in values:
                line = f"{key}={values.pop(key)}"
            lines.append(line)
        added = [f"{k}={v}" for k, v in values.items()]
        return "\n".join(lines) + "\n\n# --- added by the stack for this checkout\n" + "\n".join(added) + "\n"

    def env(self) -> dict[str, str]:
        """The environment TorchServe (and so its workers, less the blacklisted names) starts with."""
        # TEMP → the JVM's java.io.tmpdir (unpacked models); TMPDIR → TorchServe's pid file and sockets.
        logs = str(self.logs)
        return {"TEMP": str(self.tmp), "TMPDIR": str(self.tmp), "LOG_LOCATION": logs, "METRICS_LOCATION": logs,
                "OMP_NUM_THREADS": "1", **self.extra_env}

    # --- lifecycle

    def up(self) -> bool:
        """Start it unless it runs (True: started here); a running one registers the archives new since it started."""
        if self.ready():
            return False
        if self.is_up():  # running: maybe an archive of load_models is new since it started (a model just added)
            if self.register_missing():
                wait_for(self.ready, 240.0, f"TorchServe ({self.name}) and its models", self.log_file)
            return False
        self.start()
        return True

    def register_missing(self) -> list[str]:
        """Register the archives of ``load_models`` a running TorchServe does not serve yet, with their minWorkers."""
        served = {entry["modelName"] for entry in self.management("GET", "/models?limit=1000")["models"]}
        registered = []
        for archive in self.load_models():
            if self.model_name(archive) in served:
                continue
            if not (self.model_store / archive).exists():
                raise StackError(f"{archive} is not in {self.model_store}; run `python -m archive_scripts`")
            workers = self.min_workers(archive)
            log(f"{self.name}: registering {archive} ({workers} worker(s)), new since TorchServe started")
            self.management("POST", f"/models?url={archive}&initial_workers={workers}&synchronous=true",
                            timeout_s=240.0)
            registered.append(archive)
        return registered

    def min_workers(self, archive: str) -> int:
        """minWorkers of the archive's model-config.yaml (1 when it has none)."""
        with zipfile.ZipFile(self.model_store / archive) as mar:
            config_file = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"].get("configFile")
            config = yaml.safe_load(mar.read(config_file)) if config_file else {}
        return int((config or {}).get("minWorkers", 1))

    def start(self, timeout_s: float = 180.0) -> None:
        """Start it and wait until every model is ready."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        missing = [m for m in self.load_models() if not (self.model_store / m).exists()]
        if missing:
            raise StackError(f"archives missing from {self.model_store}: {missing}; run `python -m archive_scripts`")
        config = self.home / "config.properties"
        config.write_text(self.config_text())
        cmd = [str(VENV_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--ts-config", str(config),
               "--log-config", str(LOG_CONFIG)]
        self._spawn(cmd, self.home, self.env())
        wait_for(self.ready, timeout_s, f"TorchServe ({self.name}) and its models", self.log_file)

    def stop(self, timeout_s: float = 30.0) -> None:
        """``torchserve --stop`` as an operator would (it removes key_file.json), then wait for every process."""
        if self.home.exists():  # else never started
            subprocess.run([str(VENV_BIN / "torchserve"), "--stop", "--foreground"], cwd=self.home,
                           env={**os.environ, **self.env()}, capture_output=True, timeout=90, check=False)
        self._reap(timeout_s)
        self.key_file.unlink(missing_ok=True)

    def _reap(self, timeout_s: float = 30.0) -> None:
        pid = self.pid
        if pid is not None:
            stop_pid(pid, self.name, timeout_s)
        self.pid_file.unlink(missing_ok=True)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            # orphaned workers of this instance: their socket path lives under our tmp dir
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "model_service_worker" in cmdline and str(self.tmp) in cmdline:
                kill9(proc.info["pid"])

    def down(self) -> bool:
        if self.pid is None and self.frontend_pid() is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self.stop()
        return True

    # --- faults

    def frontend_pid(self) -> int | None:
        """The Java frontend (the launcher writes its pid to TMPDIR/.model_server.pid)."""
        try:
            pid = int((self.tmp / ".model_server.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def all_worker_pids(self) -> list[int]:
        """Every process the frontend started."""
        frontend = self.frontend_pid()
        if frontend is None:
            return []
        try:
            return [c.pid for c in psutil.Process(frontend).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill_all(self) -> None:
        """kill -9 the frontend and every worker (a crash); the stale key file stays, like after a crash."""
        frontend = self.frontend_pid()
        workers = self.all_worker_pids()
        if frontend is not None:
            signal_all([frontend], signal.SIGCONT)  # a frozen frontend dies too
            kill9(frontend)
        for pid in workers:
            kill9(pid)
        self._reap()

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Wait until every model is ready; the seconds it took."""
        began = time.monotonic()
        wait_for(self.ready, timeout_s, f"TorchServe ({self.name})'s workers", self.log_file)
        return time.monotonic() - began
