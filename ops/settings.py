"""servingctl's settings: one table of options, each a flag with an environment default (``SERVINGCTL_*``)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _state_dir(environ: Mapping[str, str]) -> Path:
    # The stack keeps TorchServe's working directory (and so its key file) under SERVING_STATE_DIR.
    return Path(environ.get("SERVING_STATE_DIR", str(REPO_ROOT / ".state")))


def _actor(environ: Mapping[str, str]) -> str:
    try:
        return environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid
        return "unknown"


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable, how to compute the default, its help."""

    name: str
    env: str
    default: Callable[[Mapping[str, str]], Any]
    type: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("management_url", "SERVINGCTL_MANAGEMENT_URL", lambda e: "http://127.0.0.1:8081", str,
           "TorchServe's management API"),
    Option("inference_url", "SERVINGCTL_INFERENCE_URL", lambda e: "http://127.0.0.1:8080", str,
           "TorchServe's inference API (golden checks of a new version go through it)"),
    Option("key_file", "SERVINGCTL_KEY_FILE", lambda e: _state_dir(e) / "torchserve" / "key_file.json", Path,
           "TorchServe's key_file.json (management, inference and API keys)"),
    Option("model_store", "SERVINGCTL_MODEL_STORE", lambda e: REPO_ROOT / "model_store", Path,
           "the model store TorchServe registers archives from (deploy takes file names in it)"),
    Option("timeout", "SERVINGCTL_TIMEOUT_S", lambda e: 10.0, float,
           "seconds to wait for an ordinary TorchServe call or a golden prediction"),
    Option("sync_timeout", "SERVINGCTL_SYNC_TIMEOUT_S", lambda e: 180.0, float,
           "seconds to wait for a synchronous register or scale (workers loading)"),
    Option("pg_dsn", "SERVINGCTL_PG_DSN", lambda e: "postgresql://postgres@127.0.0.1:5432/serving", str,
           "PostgreSQL holding the change history (table model_changes)"),
    Option("influx_host", "SERVINGCTL_INFLUX_HOST", lambda e: "127.0.0.1", str, "InfluxDB host (best effort)"),
    Option("influx_port", "SERVINGCTL_INFLUX_PORT", lambda e: 8086, int, "InfluxDB port"),
    Option("influx_database", "SERVINGCTL_INFLUX_DATABASE", lambda e: "serving", str, "InfluxDB database"),
    Option("influx_timeout", "SERVINGCTL_INFLUX_TIMEOUT_S", lambda e: 3.0, float, "seconds per InfluxDB write"),
    Option("actor", "SERVINGCTL_ACTOR", _actor, str, "who is recorded in the history (default: $USER)"),
)


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one invocation (flags over environment over defaults)."""

    management_url: str
    inference_url: str
    key_file: Path
    model_store: Path
    timeout: float
    sync_timeout: float
    pg_dsn: str
    influx_host: str
    influx_port: int
    influx_database: str
    influx_timeout: float
    actor: str

    @classmethod
    def from_values(cls, values: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """Take each option from ``values`` (parsed flags), else its environment variable, else its default."""
        env = os.environ if environ is None else environ
        resolved: dict[str, Any] = {}
        for option in OPTIONS:
            value = values.get(option.name)
            if value is None:
                raw = env.get(option.env)
                value = option.type(raw) if raw else option.default(env)
            resolved[option.name] = option.type(value) if isinstance(value, str) else value
        resolved["management_url"] = resolved["management_url"].rstrip("/")
        resolved["inference_url"] = resolved["inference_url"].rstrip("/")
        return cls(**resolved)
