"""What every service of the harness shares: spawning, polling, pid files and the up/down contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from stack.services.faults import kill9, terminate_group
from stack.settings import REPO_ROOT, StackSettings

VENV_BIN = Path(sys.executable).parent


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
    """SIGTERM the process group ``pid`` leads, wait, then SIGKILL."""
    terminate_group(pid, timeout_s, what, log=True)


def spawn(cmd: list[str], log_file: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start a detached process (own session) logging to ``log_file``; returns its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True,
        )
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
        result = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"`{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}")


class Service:
    """One local service: ``up()`` starts it unless it answers already, ``down()`` stops it if we started it.

    ``state_dir`` holds its pid file (``<name>.pid``) and log (``logs/<name>.log``): the stack's ``.state/``
    by default; tests and benchmarks pass their own so that their instances live beside the stack's.
    ``start()``/``stop()`` act now, whatever the state: the fault tests use them to stop and restart a
    service on the same ports.
    """

    def __init__(self, name: str, state_dir: Path | None = None, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.name = name
        self.state_dir = state_dir or self.settings.state_dir

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The pid of the process we started, while it lives."""
        return read_pid(self.pid_file)

    def is_up(self) -> bool:
        """It answers its health check."""
        raise NotImplementedError

    def start(self) -> None:
        """Start it and wait until it is ready."""
        raise NotImplementedError

    def up(self) -> bool:
        """Start it unless it answers already; True when it was started here."""
        if self.is_up():
            return False
        self.start()
        return True

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the process we started (its whole process group), if it lives."""
        pid = self.pid
        if pid is not None:
            stop_pid(pid, self.name, timeout_s)
        self.pid_file.unlink(missing_ok=True)

    def down(self) -> bool:
        """Stop the service if we started it; True when something was stopped."""
        if self.pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self.stop()
        return True

    def kill9(self) -> None:
        """``kill -9`` the process we started (a crash: no cleanup, the pid file stays)."""
        pid = self.pid
        if pid is not None:
            kill9(pid)

    def log_text(self) -> str:
        """Everything it logged so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def _spawn(self, cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> int:
        pid = spawn(cmd, self.log_file, cwd, env)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(pid))
        return pid


__all__ = ["REPO_ROOT", "VENV_BIN", "Service", "StackError", "apt_install", "http_status", "log", "pid_alive",
           "read_pid", "spawn", "stop_pid", "wait_for"]
