"""Process-level tools for tests and benchmarks: free ports, kill -9, SIGSTOP/SIGCONT, process groups."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil


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


def ensure_free(ports: tuple[int, ...]) -> None:
    """Fail with a clear message when one of ``ports`` is already taken on loopback."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise RuntimeError(f"port {port} is taken; a private instance needs it ({exc})") from exc


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
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def process_tree(pid: int | None) -> list[int]:
    """``pid`` first, then every process it forked (recursively); empty when it is gone."""
    if pid is None:
        return []
    try:
        return [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


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


def terminate_group(pgid: int, timeout_s: float, what: str = "", log: bool = False) -> None:
    """SIGCONT + SIGTERM the process group a spawned service leads, wait for all of it, SIGKILL what remains."""
    for sig in (signal.SIGCONT, signal.SIGTERM):  # a frozen process only acts on SIGTERM once continued
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    deadline = time.monotonic() + timeout_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_members(pgid):
        if log:
            print(f"  {what or pgid} did not stop in {timeout_s:.0f} s; killing it", flush=True)
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
