"""The local stack's settings (``SERVING_*``): where its state lives and how to reach its PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "serving"  # the stack's PostgreSQL and InfluxDB database (the bridge's default)


class StackSettings(BaseSettings):
    """Every knob of the service harness; built by whoever builds the harness, never at import."""

    model_config = SettingsConfigDict(env_prefix="SERVING_", frozen=True)

    state_dir: Path = Field(
        REPO_ROOT / ".state", description="pid files, logs, InfluxDB's data, TorchServe's home and key file, the spool",
        json_schema_extra={"default_text": "`.state/` of the checkout"},
    )
    model_store: Path = Field(
        REPO_ROOT / "model_store", description="the archives TorchServe loads (built by `python -m archive_scripts`)",
        json_schema_extra={"default_text": "`model_store/` of the checkout"},
    )
    pg_admin_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/postgres",
        description="the machine's PostgreSQL, to create the `serving` database (never stopped by the stack)",
    )
    pg_bin: Path = Field(
        Path("/usr/lib/postgresql/15/bin"), description="initdb and pg_ctl, for the fault tests' private clusters"
    )

    def dsn(self, database: str = DATABASE) -> str:
        """The admin DSN pointed at ``database`` (the stack's own by default)."""
        return self.pg_admin_dsn.rsplit("/", 1)[0] + f"/{database}"
