"""How many threads a batch gets: its share of the box's cores among the workers busy at that moment.

Every worker of a box (every model a TorchServe serves, in one container or on one machine) holds an exclusive
``flock`` on its own file in a shared directory while it runs a batch. Before each batch a worker marks itself
busy, then counts the others that are: a lone photo on an idle box gets every core, and two busy workers on two
cores get one each, batch by batch, with no coordinator and nothing to clean up when a worker dies (the kernel
drops its lock). Marking before counting means two workers starting together both see each other, never neither.
No TorchServe imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator

PREFIX = "worker-"


def default_directory() -> str:
    """The directory this box's workers share: under the temp dir (per container), per user."""
    return os.path.join(tempfile.gettempdir(), f"serving-box-load-{os.getuid()}")


def thread_shares(cores: int) -> tuple[int, ...]:
    """Every thread count a batch may get on ``cores``: cores // busy workers, for 1 .. cores busy (largest first)."""
    return tuple(sorted({max(1, cores // busy) for busy in range(1, cores + 1)}, reverse=True))


class BoxLoad:
    """This worker's view of the box: :meth:`busy` marks it busy for one batch and says how many threads it gets."""

    def __init__(self, cores: int, directory: str | None = None) -> None:
        self.cores = cores
        self.directory = directory or default_directory()
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.name = f"{PREFIX}{os.getpid()}"
        self._forget_the_dead()
        self.fd = os.open(os.path.join(self.directory, self.name), os.O_CREAT | os.O_RDWR, 0o600)

    @contextlib.contextmanager
    def busy(self) -> Iterator[int]:
        """Hold this worker's lock for the batch; yields its share of the cores (at least 1)."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            yield max(1, self.cores // (1 + self.others_busy()))
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def others_busy(self) -> int:
        """How many other workers of the box hold their lock right now."""
        count = 0
        for name in os.listdir(self.directory):
            if name == self.name or not name.startswith(PREFIX):
                continue
            try:
                fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
            except OSError:
                continue  # removed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                count += 1
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        return count

    def _forget_the_dead(self) -> None:
        """Remove the files of workers whose process is gone (restarted workers get new pids)."""
        for name in os.listdir(self.directory):
            pid = name.removeprefix(PREFIX)
            if not name.startswith(PREFIX) or not pid.isdigit():
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
            except PermissionError:
                pass  # alive, another user's
