"""InfluxDB 1.x (Debian's ``influxdb`` package) with its data under the state directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from stack.services.base import Service, apt_install, http_status, wait_for
from stack.settings import DATABASE, StackSettings


class InfluxDB(Service):
    """influxd with data under ``<state_dir>/<name>``, HTTP on ``http_port`` (the stack's: 8086) and the database."""

    def __init__(
        self,
        settings: StackSettings | None = None,
        name: str = "influxdb",
        state_dir: Path | None = None,
        http_port: int = 8086,
        bind_port: int = 8088,
    ) -> None:
        super().__init__(name, state_dir, settings)
        self.http_port = http_port
        self.bind_port = bind_port
        self.database = DATABASE

    @property
    def home(self) -> Path:
        return self.state_dir / self.name

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def is_up(self) -> bool:
        return http_status(f"{self.url}/ping") == 204

    def up(self) -> bool:
        started = super().up()
        self.create_database()
        return started

    def start(self) -> None:
        """Write its config, start influxd (installed when missing) and wait for /ping."""
        influxd = shutil.which("influxd") or "/usr/bin/influxd"
        if not Path(influxd).exists():
            apt_install("influxdb")
        home = self.home
        for sub in ("meta", "data", "wal"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        config = home / "influxdb.conf"
        config.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{self.bind_port}"\n'
            f'[meta]\n  dir = "{home}/meta"\n'
            f'[data]\n  dir = "{home}/data"\n  wal-dir = "{home}/wal"\n  query-log-enabled = false\n'
            f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.http_port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        self._spawn([influxd, "-config", str(config)], home)
        wait_for(self.is_up, 30, f"InfluxDB on {self.http_port}", self.log_file)
        self.create_database()

    def freeze(self) -> None:
        """SIGSTOP influxd (it hangs: connections are accepted by the kernel, never answered)."""
        pid = self.pid
        assert pid is not None, "InfluxDB was not started here"
        os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT influxd."""
        pid = self.pid
        if pid is not None:
            os.kill(pid, signal.SIGCONT)

    def query(self, q: str, database: str | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
        """One InfluxQL statement (POST, so CREATE/DROP work too); the decoded answer."""
        data = urllib.parse.urlencode({"q": q, **({"db": database} if database else {})}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.url}/query", data=data), timeout=timeout_s) as r:
            return json.loads(r.read() or b"{}")

    def create_database(self, name: str | None = None) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x."""
        self.query(f"CREATE DATABASE {name or self.database}", timeout_s=5)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE (idempotent too)."""
        self.query(f"DROP DATABASE {name}", timeout_s=5)
