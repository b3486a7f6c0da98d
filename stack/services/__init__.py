"""The service harness: the one way to start PostgreSQL, InfluxDB, TorchServe and the bridge.

``make up`` (``python -m stack``) starts the local stack's instances with :class:`stack.settings.StackSettings`;
tests and benchmarks start other instances beside it with their own ports, directories, models, config
overrides and environment, and use :mod:`stack.services.faults` for kill -9, SIGSTOP/SIGCONT and free ports.
A service found already running is used as it is and never stopped: ``down`` only stops what ``up`` started,
which is remembered by pid files under the state directory.
"""

from __future__ import annotations

from stack.services.base import (
    REPO_ROOT,
    VENV_BIN,
    Service,
    StackError,
    http_status,
    log,
    pid_alive,
    read_pid,
    spawn,
    stop_pid,
    wait_for,
)
from stack.services.bridge import Bridge
from stack.services.influxdb import InfluxDB
from stack.services.postgres import PostgreSQL, PrivatePostgres
from stack.services.torchserve import TorchServe, TorchServePorts
from stack.settings import StackSettings


def all_services(settings: StackSettings | None = None) -> list[Service]:
    """The local stack's services, in start order."""
    settings = settings or StackSettings()
    torchserve = TorchServe(settings=settings)
    return [PostgreSQL(settings), InfluxDB(settings), torchserve, Bridge(torchserve=torchserve, settings=settings)]


__all__ = [
    "REPO_ROOT",
    "VENV_BIN",
    "Bridge",
    "InfluxDB",
    "PostgreSQL",
    "PrivatePostgres",
    "Service",
    "StackError",
    "TorchServe",
    "TorchServePorts",
    "all_services",
    "http_status",
    "log",
    "pid_alive",
    "read_pid",
    "spawn",
    "stop_pid",
    "wait_for",
]
