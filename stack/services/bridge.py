"""The bridge (``python -m bridge``) wired to a TorchServe and, optionally, to given databases."""

from __future__ import annotations

import sys
from pathlib import Path

from stack.services.base import REPO_ROOT, Service, StackError, http_status, pid_alive, wait_for
from stack.services.influxdb import InfluxDB
from stack.services.torchserve import TorchServe
from stack.settings import StackSettings


class Bridge(Service):
    """The bridge (``python -m bridge``), by default on 127.0.0.1:8000 (health: http://127.0.0.1:8000/ping).

    Another one (a benchmark's, a test's) gets its own ``port``, ``state_dir`` (spool, log, pid file), the
    TorchServe it talks to, the PostgreSQL DSN and InfluxDB it records into, and extra ``BRIDGE_*`` settings
    in ``env``. What is not given keeps the bridge's own defaults (the stack's services).
    """

    def __init__(
        self,
        name: str = "bridge",
        state_dir: Path | None = None,
        port: int = 8000,
        torchserve: TorchServe | None = None,
        env: dict[str, str] | None = None,
        pg_dsn: str | None = None,
        influxdb: InfluxDB | None = None,
        influx_database: str | None = None,
        settings: StackSettings | None = None,
    ) -> None:
        super().__init__(name, state_dir, settings)
        self.port = port
        self.torchserve = torchserve or TorchServe(settings=self.settings)
        self.pg_dsn = pg_dsn
        self.influxdb = influxdb
        self.influx_database = influx_database
        self.extra_env = dict(env or {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    def is_up(self) -> bool:
        return http_status(f"{self.url}/ping", timeout_s=3) == 200

    def env(self) -> dict[str, str]:
        """The ``BRIDGE_*`` variables it starts with."""
        ts = self.torchserve
        env = {
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_TORCHSERVE_URL": ts.inference_url,
            "BRIDGE_TORCHSERVE_MANAGEMENT_URL": ts.management_url,
            "BRIDGE_TORCHSERVE_METRICS_URL": ts.metrics_url,
            "BRIDGE_TORCHSERVE_KEY_FILE": str(ts.key_file),
            "BRIDGE_SPOOL_DIR": str(self.spool_dir),
        }
        if self.pg_dsn:
            env["BRIDGE_PG_DSN"] = self.pg_dsn
        if self.influxdb:
            env.update(BRIDGE_INFLUX_HOST="127.0.0.1", BRIDGE_INFLUX_PORT=str(self.influxdb.http_port))
        if self.influx_database:
            env["BRIDGE_INFLUX_DATABASE"] = self.influx_database
        return {**env, **self.extra_env}

    def up(self) -> bool:
        if self.is_up():
            return False
        if http_status(f"{self.url}/openapi.json") is not None:
            raise StackError(f"something else answers on 127.0.0.1:{self.port} but is not healthy; stop it and retry")
        self.start()
        return True

    def start(self, timeout_s: float = 60.0, ready_path: str = "/ping", accept: tuple[int, ...] = (200,)) -> None:
        """Start it and wait until ``ready_path`` answers one of ``accept``."""
        pid = self._spawn([sys.executable, "-m", "bridge"], REPO_ROOT, self.env())

        def ready() -> bool:
            if not pid_alive(pid):
                raise StackError(f"the bridge ({self.name}) exited; see {self.log_file}:\n{self.log_text()[-3000:]}")
            return http_status(f"{self.url}{ready_path}", timeout_s=5) in accept

        wait_for(ready, timeout_s, f"the bridge ({self.name}) on {self.port}", self.log_file)

    def stop(self, timeout_s: float = 30.0) -> None:
        super().stop(timeout_s)
