"""PostgreSQL: the machine's cluster for the stack, or a private cluster (initdb on a free port) for fault tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from stack.services.base import Service, StackError, apt_install, log, wait_for
from stack.services.faults import free_ports, process_tree, signal_all
from stack.settings import DATABASE, StackSettings


class PostgreSQL(Service):
    """The machine's PostgreSQL at ``settings.pg_admin_dsn`` (started with pg_ctlcluster, installed if missing).

    ``up()`` creates the stack's database; ``down()`` never stops the server: it is the machine's, shared.
    """

    def __init__(self, settings: StackSettings | None = None, name: str = "postgres") -> None:
        super().__init__(name, settings=settings)
        self.admin_dsn = self.settings.pg_admin_dsn
        self.database = DATABASE

    @property
    def dsn(self) -> str:
        """The DSN of the stack's database on this server."""
        return self.admin_dsn.rsplit("/", 1)[0] + f"/{self.database}"

    def is_up(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(self.admin_dsn, connect_timeout=2).close()
            return True
        except psycopg2.Error:
            return False

    def up(self) -> bool:
        started = False
        if not self.is_up():
            self.start()
            started = True  # started, but not ours to stop: it is the machine's server
        self.create_database()
        return started

    def start(self) -> None:
        """pg_ctlcluster start the newest cluster under /etc/postgresql."""
        if shutil.which("pg_ctlcluster") is None:
            apt_install("postgresql")
        versions = sorted(os.listdir("/etc/postgresql")) if Path("/etc/postgresql").is_dir() else []
        if not versions:
            raise StackError("no PostgreSQL cluster found under /etc/postgresql; install postgresql")
        log(f"starting PostgreSQL {versions[-1]} (pg_ctlcluster) ...")
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            capture_output=True, text=True, check=False,
        )
        wait_for(self.is_up, 30, "PostgreSQL", Path(f"/var/log/postgresql/postgresql-{versions[-1]}-main.log"))

    def down(self) -> bool:
        return False  # the machine's PostgreSQL is shared; never stopped by the stack

    def create_database(self, name: str | None = None) -> None:
        """Create ``name`` (the stack's database by default) when missing."""
        import psycopg2

        name = name or self.database
        conn = psycopg2.connect(self.admin_dsn, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE {name}")
                    log(f"created PostgreSQL database {name}")
        finally:
            conn.close()

    def query(self, sql: str, params: tuple[Any, ...] = (), dsn: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own connection (autocommit, the stack's database by default); its rows."""
        import psycopg2

        conn = psycopg2.connect(dsn or self.dsn, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()


class PrivatePostgres(PostgreSQL):
    """A throwaway cluster (initdb -A trust) under ``root`` on a free port, with the stack's database.

    For fault tests: ``stop("immediate")`` is a crash (no checkpoint), ``start()`` recovers on the same port,
    ``freeze()``/``thaw()`` SIGSTOP/SIGCONT the postmaster and every backend.
    """

    def __init__(self, root: Path, port: int | None = None, settings: StackSettings | None = None) -> None:
        super().__init__(settings, name="postgres")
        self.root = root
        self.state_dir = root
        self.data = root / "data"
        self.sockets = root / "sock"
        self.port = port or free_ports(1)[0]
        self.admin_dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result

    def up(self) -> bool:
        """initdb on first use, then start unless it runs; creates the database."""
        if self.is_up():
            return False
        if not (self.data / "PG_VERSION").exists():
            self.init()
        else:
            self.start()
        return True

    def init(self) -> None:
        """initdb, then start and create the database."""
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._run(str(self.settings.pg_bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")
        self.start()
        self.create_database()

    def start(self) -> None:
        """pg_ctl start (crash recovery after an immediate stop) and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        self._run(str(self.settings.pg_bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-o",
                  options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:  # type: ignore[override]
        """pg_ctl stop -m ``mode`` (immediate: like a crash, no checkpoint)."""
        self._run(str(self.settings.pg_bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def down(self) -> bool:
        if self.postmaster_pid() is None:
            return False
        signal_all(self.pids(), signal.SIGCONT)  # a frozen cluster cannot stop
        self.stop("fast")
        return True

    @property
    def pid(self) -> int | None:
        return self.postmaster_pid()

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from postmaster.pid, None when it is not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        """The postmaster first, then every process it forked (backends, checkpointer, ...)."""
        return process_tree(self.postmaster_pid())

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster, then every process it forked (again until no new one appears); the pids."""
        frozen: list[int] = []
        for _ in range(5):  # a backend forked just before the postmaster stopped is caught on the next pass
            new = [pid for pid in self.pids() if pid not in frozen]
            if not new:
                break
            signal_all(new, signal.SIGSTOP)
            frozen += new
            time.sleep(0.05)
        return frozen

    @staticmethod
    def thaw(pids: list[int]) -> None:
        """SIGCONT what ``freeze()`` stopped, children first."""
        signal_all(list(reversed(pids)), signal.SIGCONT)

    def close(self) -> None:
        """Stop it however it was left (frozen, running or already down)."""
        self.down()
