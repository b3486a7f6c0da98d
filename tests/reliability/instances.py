"""Private TorchServe and bridge instances for the security and bad-input checks, beside the shared stack.

They are the harness' own (:mod:`stack.services`) on ports the kernel reports free, with their working
directory, key file, unpacked models, logs and spool under a temporary directory, recording into databases
of their own on the shared PostgreSQL and InfluxDB; the fixture that starts one always stops it. What is
specific to these tests: the constructors' shape, key renewal, and the throwaway databases.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2

from stack.services import REPO_ROOT, Bridge, InfluxDB, TorchServe, TorchServePorts
from stack.services.faults import ensure_free, environ_of, free_ports, group_members, terminate_group
from stack.settings import StackSettings

MODEL_STORE = REPO_ROOT / "model_store"
SHARED_TORCHSERVE_PORTS = TorchServePorts()


class PrivateTorchServe(TorchServe):
    """TorchServe with the project's config.properties, on free ports, in ``home``.

    Only the listeners, ``load_models`` and ``token_expiration_min`` differ from config.properties (plus the
    lines the stack adds for this checkout: ``model_store`` and ``allowed_urls``).
    """

    def __init__(
        self,
        home: Path,
        ports: TorchServePorts | None = None,
        token_expiration_min: int = 60,
        models: tuple[str, ...] = ("resnet18_v1.0.mar",),
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(home.name, home.parent, ports=ports or TorchServePorts.free(), models=list(models),
                         overrides={"token_expiration_min": str(token_expiration_min)}, env=env)

    def start(self, timeout_s: float = 240.0) -> None:
        """Start it (the ports must be free) and wait until every model has a READY worker."""
        ensure_free(self.ports.all())
        super().start(timeout_s)

    def fresh_key(self, kind: str, margin_s: float = 15.0) -> str:
        """The current key of ``kind``, renewed first when it expires within ``margin_s``."""
        keys = self.keys()
        expires = keys.inference_expires if kind == "inference" else keys.management_expires
        if expires is not None and (expires - datetime.now(UTC)).total_seconds() < margin_s:
            return self.renew(kind)
        return keys.inference if kind == "inference" else keys.management

    def renew(self, kind: str) -> str:
        """Renew the ``inference`` or ``management`` key with the API key (TorchServe rewrites the key file)."""
        request = urllib.request.Request(
            f"{self.management_url}/token?type={kind}", headers={"Authorization": f"Bearer {self.keys().api}"}
        )
        urllib.request.urlopen(request, timeout=30).close()
        keys = self.keys()
        return keys.inference if kind == "inference" else keys.management


class PrivateBridge(Bridge):
    """``python -m bridge`` on its own port, spool and databases, pointed at a chosen TorchServe."""

    def __init__(
        self,
        home: Path,
        torchserve_url: str,
        management_url: str,
        metrics_url: str,
        key_file: Path,
        pg_dsn: str,
        influx_database: str,
        env: dict[str, str] | None = None,
        port: int = 0,  # 0: a port that is free when the bridge is made
    ) -> None:
        wiring = {
            "BRIDGE_TORCHSERVE_URL": torchserve_url,
            "BRIDGE_TORCHSERVE_MANAGEMENT_URL": management_url,
            "BRIDGE_TORCHSERVE_METRICS_URL": metrics_url,
            "BRIDGE_TORCHSERVE_KEY_FILE": str(key_file),
            "BRIDGE_TELEMETRY_INTERVAL_S": "0",
            "BRIDGE_JOB_MODELS": "resnet18",
        }
        super().__init__("bridge", home, port or free_ports(1)[0], env={**wiring, **(env or {})}, pg_dsn=pg_dsn,
                         influx_database=influx_database)

    def start(self, ready_path: str = "/openapi.json", timeout_s: float = 60.0) -> None:  # type: ignore[override]
        """Start it (the port must be free) and wait until ``ready_path`` answers 200."""
        ensure_free((self.port,))
        super().start(timeout_s, ready_path)


@contextlib.contextmanager
def private_databases(prefix: str) -> Iterator[tuple[str, str]]:
    """A PostgreSQL and an InfluxDB database named ``<prefix>_<pid>``, dropped afterwards: (pg dsn, influx db).

    The pid keeps concurrent runs apart; databases of the same prefix left by a test process that no longer
    exists (killed mid-run) are dropped first.
    """
    assert re.fullmatch(r"[a-z0-9_]+", prefix), prefix
    settings = StackSettings()
    name = f"{prefix}_{os.getpid()}"
    admin = psycopg2.connect(settings.pg_admin_dsn, connect_timeout=5)
    admin.autocommit = True
    influx = InfluxDB(settings)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{prefix}\\_%",))
            for (stale,) in cur.fetchall():
                owner = stale.rsplit("_", 1)[-1]
                if owner.isdigit() and int(owner) != os.getpid() and not Path(f"/proc/{owner}").exists():
                    cur.execute(f"DROP DATABASE IF EXISTS {stale} WITH (FORCE)")
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {name}")
        influx.create_database(name)
        yield settings.dsn(name), name
    finally:
        with contextlib.suppress(Exception), admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        with contextlib.suppress(Exception):
            influx.drop_database(name)
        admin.close()


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
    "private_databases",
    "terminate_group",
]
