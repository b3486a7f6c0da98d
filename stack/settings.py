"""The local stack's settings (``SERVING_*``): where its state lives and how to reach its PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "serving"  # the stack's PostgreSQL and InfluxDB database (the bridge's default)


class StackSettings(BaseSettings):
    """Every knob of the service harness; built by whoever builds the harness, never at import."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", frozen=True)

    state_dir: Path = REPO_ROOT / ".state"  # pid files, logs, InfluxDB data, TorchServe's home, the spool
    model_store: Path = REPO_ROOT / "model_store"
    pg_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"  # the machine's cluster, to create databases
    pg_bin: Path = Path("/usr/lib/postgresql/15/bin")  # initdb and pg_ctl, for private clusters (fault tests)

    def dsn(self, database: str = DATABASE) -> str:
        """The admin DSN pointed at ``database`` (the stack's own by default)."""
        return self.pg_admin_dsn.rsplit("/", 1)[0] + f"/{database}"
