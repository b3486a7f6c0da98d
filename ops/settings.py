"""servingctl's settings: each a flag over an environment variable (``SERVINGCTL_*``) over a default."""

from __future__ import annotations

import getpass
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from stack.comparison import Gate
from stack.configuration import STATE_DIR_DEFAULT_TEXT, default_state_dir, env_names, source_checkout
from stack.routing import Box, Routes, parse_routes


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid
        return "unknown"


def _model_store() -> Path:
    checkout = source_checkout()
    return checkout / "model_store" if checkout is not None else Path.cwd() / "model_store"


def _env(name: str) -> str:
    return f"SERVINGCTL_{name.upper()}"


class Settings(BaseSettings):
    """Every setting of servingctl, each also a flag (``key_file``: ``--key-file``); flag > environment > default."""

    model_config = SettingsConfigDict(
        env_prefix="SERVINGCTL_", env_ignore_empty=True, frozen=True, validate_by_name=True
    )

    management_url: str = Field("http://127.0.0.1:8081", description="TorchServe's management API")
    inference_url: str = Field(
        "http://127.0.0.1:8080", description="TorchServe's inference API (golden checks of a new version go through it)"
    )
    state_dir: Path = Field(
        default_factory=default_state_dir, validation_alias=AliasChoices(_env("state_dir"), "SERVING_STATE_DIR"),
        description="the stack's state directory (TorchServe's key file is under it)",
        json_schema_extra={"default_text": STATE_DIR_DEFAULT_TEXT},
    )
    key_file: Path = Field(
        default_factory=lambda data: data["state_dir"] / "torchserve" / "key_file.json",
        description="TorchServe's key_file.json (management, inference and API keys)",
        json_schema_extra={"default_text": "`<state_dir>/torchserve/key_file.json`"},
    )
    routes: str = Field(
        "", description="model → its model server box, the bridge's BRIDGE_ROUTES JSON (stack/routing.py); each "
        "model is managed on its box",
        json_schema_extra={"default_text": "empty: every model on the one TorchServe above"},
    )
    model_store: Path = Field(
        default_factory=_model_store,
        description="the model store TorchServe registers archives from (deploy takes file names in it)",
        json_schema_extra={"default_text": "`model_store/` of the source checkout; installed: `./model_store`"},
    )
    capture_dir: Path = Field(
        default_factory=lambda data: data["state_dir"] / "captures",
        description="the photos the bridges captured (their BRIDGE_CAPTURE_DIR), which `replay` sends to a candidate",
        json_schema_extra={"default_text": "`<state_dir>/captures` (the bridge's default too)"},
    )
    timeout: float = Field(
        10.0, validation_alias=_env("timeout_s"),
        description="seconds to wait for an ordinary TorchServe call or a golden prediction",
    )
    sync_timeout: float = Field(
        180.0, validation_alias=_env("sync_timeout_s"),
        description="seconds to wait for a synchronous register or scale (workers loading)",
    )
    pg_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/serving",
        description="PostgreSQL holding the change history (table model_changes)",
    )
    influx_host: str = Field("127.0.0.1", description="InfluxDB host (best effort)")
    influx_port: int = Field(8086, description="InfluxDB port")
    influx_database: str = Field("serving", description="InfluxDB database")
    influx_timeout: float = Field(
        3.0, validation_alias=_env("influx_timeout_s"), description="seconds per InfluxDB write"
    )
    promote_min_samples: int = Field(
        200, ge=1, description="promote: the fewest photos compared (shadowed or replayed) before a candidate may pass"
    )
    promote_max_error_rate_delta: float = Field(
        0.01, ge=0, description="promote: the most the candidate's 5xx rate may exceed the live version's (0.01 = 1 point)"
    )
    promote_max_p99_ratio: float = Field(
        2.0, gt=0, description="promote: the most the candidate's p99 latency may be, as a multiple of the live one's"
    )
    promote_thresholds: str = Field(
        "", description="promote: per kind of answer, each metric's bound as JSON, e.g. "
        '{"classifier": {"top1_agreement": 0.95}, "*": {"answer_agreement": 0.99}} (docs/rollouts.md)',
        json_schema_extra={"default_text": "classifier top1_agreement ≥ 0.9, top5_overlap ≥ 0.8; price "
                           "relative_difference ≤ 0.15, live_in_candidate_interval ≥ 0.8; similar jaccard_at_k ≥ 0.7; "
                           "other kinds answer_agreement ≥ 0.95"},
    )
    actor: str = Field(
        default_factory=_login_name, validation_alias=AliasChoices(_env("actor"), "USER"),
        description="who is recorded in the history", json_schema_extra={"default_text": "`$USER`"},
    )

    @field_validator("management_url", "inference_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")

    @field_validator("promote_thresholds")
    @classmethod
    def _thresholds_parse(cls, text: str) -> str:
        parse_thresholds(text)  # refused now rather than at promote time
        return text

    def gate(self) -> Gate:
        """The promote gate these settings describe."""
        metrics = parse_thresholds(self.promote_thresholds)
        return Gate(self.promote_min_samples, self.promote_max_error_rate_delta, self.promote_max_p99_ratio,
                    **({"metrics": metrics} if metrics else {}))

    @field_validator("routes")
    @classmethod
    def _routes_parse(cls, routes: str) -> str:
        parse_routes(routes)  # refused now rather than at the first call
        return routes

    def routing(self) -> Routes:
        """The routes, with the management/inference/key-file settings as the one box when no model is routed."""
        single = Box(url=self.inference_url, management_url=self.management_url, key_file=self.key_file)
        return Routes(parse_routes(self.routes), single)

    @classmethod
    def from_values(cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
        """Flags given (not None), else ``environ`` if given (tests), else the process environment, else defaults."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if flags.get(name) is not None:
                values[name] = flags[name]
            elif environ is not None:
                raw = next((environ[env] for env in env_names(cls, name) if environ.get(env)), None)
                if raw is not None:
                    values[name] = raw
        try:
            return cls(**values)
        except ValidationError as exc:  # flags were checked by argparse: the environment is wrong
            raise ValueError("; ".join(_explain(cls, error) for error in exc.errors())) from exc


def _explain(settings: type[Settings], error: ErrorDetails) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    where = env_names(settings, name)[0] if name in settings.model_fields else name
    return f"{where}={error['input']!r}: {error['msg']}"


def parse_thresholds(text: str) -> dict[str, dict[str, float]]:
    """``{kind: {metric: bound}}`` from JSON (empty text: none); a ValueError saying what is wrong otherwise."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"promote_thresholds is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(bounds, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds.values())
        for bounds in data.values()
    ):
        raise ValueError('promote_thresholds must map a kind to {metric: number}, e.g. {"classifier": {"top1_agreement": 0.95}}')
    return {str(kind): {str(k): float(v) for k, v in bounds.items()} for kind, bounds in data.items()}
