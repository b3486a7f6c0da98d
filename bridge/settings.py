"""The bridge's settings: environment variables prefixed ``BRIDGE_``, with defaults for the local stack."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stack import models
from stack.configuration import STATE_DIR_DEFAULT_TEXT, default_state_dir
from stack.routing import Box, Routes, parse_routes

# A list from the environment: a JSON list, or comma-separated as before lists were lists (BRIDGE_API_KEYS=a,b).
Names = Annotated[tuple[str, ...], NoDecode]


class Settings(BaseSettings):
    """Every knob of the bridge (``python -m bridge``), each read from its ``BRIDGE_*`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", frozen=True, validate_by_name=True)

    host: str = Field("127.0.0.1", description="address the bridge listens on")
    api_keys: Names = Field(
        (), description="secret keys with every scope and no rate limit, accepted beside the keys `servingctl keys` "
        "stores in PostgreSQL (docs/api-keys.md); keys are required on the API routes (X-API-Key or Bearer) once "
        "either holds one; none anywhere = open"
    )
    port: int = Field(8000, description="port the bridge listens on")
    allow_open_api: bool = Field(
        False, description="serve without API keys on a non-loopback host (an open API); off: such a start is refused"
    )
    web_key: str | None = Field(
        None, description="a publishable API key (servingctl keys create --publishable) the web page at / sends; "
        "served to every browser, so never a secret key; unset: the page sends none"
    )
    state_dir: Path = Field(
        default_factory=default_state_dir, validation_alias=AliasChoices("BRIDGE_STATE_DIR", "SERVING_STATE_DIR"),
        description="the bridge's state: the journal, and TorchServe's key file when the stack runs here",
        json_schema_extra={"default_text": STATE_DIR_DEFAULT_TEXT},
    )

    torchserve_url: str = Field("http://127.0.0.1:8080", description="TorchServe's inference API")
    torchserve_management_url: str = Field(
        "http://127.0.0.1:8081", description="TorchServe's management API (token renewal, default versions, workers)"
    )
    torchserve_metrics_url: str = Field("http://127.0.0.1:8082/metrics", description="TorchServe's Prometheus metrics")
    routes: dict[str, tuple[Box, ...]] = Field(
        default_factory=dict,
        description="model → its model server box, or a list of boxes (replicas: requests spread over them, "
        "failing over), JSON: {\"classifier\": {\"url\", \"management_url\", \"metrics_url\", \"key_file\"}, "
        "\"price\": [{...}, {...}]}; \"*\": every other model (stack/routing.py)",
        json_schema_extra={"default_text": "empty: every model to the one TorchServe of the `torchserve_*` settings"},
    )
    telemetry_interval_s: float = Field(
        10.0, description="seconds between TorchServe scrapes + bridge metrics written to InfluxDB; 0 = off"
    )
    torchserve_key_file: Path = Field(
        default_factory=lambda data: data["state_dir"] / "torchserve" / "key_file.json",
        description="TorchServe's key file (its management, inference and API keys)",
        json_schema_extra={"default_text": "`<state_dir>/torchserve/key_file.json`"},
    )
    torchserve_timeout_s: float = Field(
        25.0, description="per-request limit → 504 (below the archives' responseTimeout, 30 s: answered first)"
    )
    max_connections: int = Field(256, description="connections to TorchServe")
    max_body_bytes: int = Field(6_000_000, description="larger request bodies → 413")
    request_head_timeout_s: float = Field(
        10.0, description="a connection whose request head is not complete by then is closed"
    )
    request_body_timeout_s: float = Field(10.0, description="a request body not complete by then → 408")

    pg_dsn: str = Field(
        "postgresql://postgres@127.0.0.1:5432/serving", description="PostgreSQL: records, jobs and results"
    )
    pg_connect_timeout_s: int = Field(3, description="seconds to connect to PostgreSQL")
    db_timeout_s: float = Field(10.0, description="longest a request-time query may take before a 503")
    influx_host: str = Field("127.0.0.1", description="InfluxDB host (metrics, best effort)")
    influx_port: int = Field(8086, description="InfluxDB port")
    influx_database: str = Field("serving", description="InfluxDB database")
    influx_timeout_s: float = Field(3.0, description="seconds per InfluxDB write")

    cache: bool = Field(True, description="same photo + same model version → the recorded answer (X-Cache: HIT)")
    cache_timeout_s: float = Field(0.05, description="a slower cache lookup is a miss")

    job_models: Names = Field(
        default_factory=models.job_models,
        description="what a job runs when it names no models",
        json_schema_extra={"default_text": "the catalogue's models with `in_jobs` (stack/models.json)"},
    )
    job_concurrency: int = Field(4, description="job workers per bridge")
    job_lease_s: float = Field(30.0, description="seconds a worker holds a job before another may take it over")
    job_deadline_s: float = Field(
        600.0, gt=0,
        description="how long a job waits out outages (TorchServe down, 503/504) before it fails with the reason per"
        " model: 10 minutes ride out a TorchServe restart (1–3 min with model loading), a rolling update or a"
        " replaced box, yet leave no client waiting long on a deployment that is gone; a submission may ask for"
        " its own (`?deadline=`, up to `job_deadline_max_s`)",
    )
    job_deadline_max_s: float = Field(3600.0, gt=0, description="the longest deadline a submission may ask for")
    job_backoff_base_s: float = Field(
        1.0, gt=0, description="first retry of a model in an outage within this many seconds (doubling per attempt)"
    )
    job_backoff_cap_s: float = Field(
        30.0, gt=0,
        description="longest wait between two attempts (full jitter: uniform in [0, min(cap, base·2ⁿ⁻¹)]); bounds"
        " both the records an outage writes (about 2 per cap per model) and the delay after TorchServe is back",
    )
    job_idle_check_s: float = Field(
        5.0, gt=0,
        description="an idle worker looks at the queue at least this often: the safety net for jobs whose bridge died"
        " (expired leases) and for a lost wake-up; submissions wake workers at once (PostgreSQL LISTEN/NOTIFY)",
    )
    job_drain_s: float = Field(
        15.0, ge=0,
        description="on shutdown (SIGTERM), how long running jobs may finish before they are given back to the queue"
        " for another bridge",
    )

    keys_refresh_s: float = Field(
        0.5, gt=0, description="how often the stored API keys are read from PostgreSQL: a key created or revoked by"
        " `servingctl keys` counts on every bridge within this"
    )
    rate_limit_bridges: int = Field(
        1, ge=1, description="bridges sharing a key's rate limit behind one balancer: each allows rate/N requests a"
        " second and bursts of burst/N (a token bucket per key per bridge)"
    )
    priority_saturation: int = Field(
        4, ge=0, description="requests in flight from this bridge to one model at which it counts as saturated: job"
        " requests then wait until interactive ones (predictions, /v2 infer) are through, one job request per model"
        " still running (bridge/priority.py); 0 = no priority"
    )
    rollout_refresh_s: float = Field(
        1.0, gt=0, description="how often the active rollouts (servingctl shadow/canary) are read from PostgreSQL: a"
        " rollout started, changed or stopped takes effect on every bridge within this"
    )
    canary_check_s: float = Field(
        5.0, gt=0, description="how often a canary is compared with the live version over its window (and aborted"
        " when it breaches its limits; docs/rollouts.md)"
    )
    shadow_queue: int = Field(
        64, ge=1, description="shadow copies waiting for the candidate; more are dropped (counted), never waited for"
    )
    shadow_concurrency: int = Field(1, ge=1, description="shadow copies in flight to the candidate at once, per bridge")
    shadow_timeout_s: float = Field(
        10.0, gt=0, description="a candidate slower than this is given up (recorded as its 504, counted)"
    )
    capture_fraction: float = Field(
        0.0, ge=0, le=1, description="share of served predictions (uncached, without model parameters) whose photo is"
        " kept on disk for `servingctl replay` (docs/replay.md): its bytes only, never a header or key; 0 = off"
    )
    capture_budget_bytes: int = Field(
        2**30, ge=0, description="the capture directory holds at most this many bytes: beyond it photos are not"
        " captured (counted as capture_skipped_budget)"
    )
    capture_retention_s: float = Field(
        7 * 86400.0, gt=0, description="a captured photo not sent again for this long is deleted (swept every minute)"
    )
    capture_dir: Path = Field(
        default_factory=lambda data: data["state_dir"] / "captures",
        description="captured photos, by sha256 (`<dir>/ab/<sha256>`); bridges may share it (a volume), and "
        "servingctl's `capture_dir` must name it too",
        json_schema_extra={"default_text": "`<state_dir>/captures`"},
    )

    record_batch_size: int = Field(500, description="records per journal segment / PostgreSQL insert")
    record_retry_interval_s: float = Field(2.0, description="how often an unavailable PostgreSQL / InfluxDB is retried")
    record_adopt_after_s: float = Field(
        30.0, description="journal segments older than this that no bridge stored — left by a removed bridge sharing "
        "the spool volume — are written by this one; 0 = off"
    )
    spool_dir: Path = Field(
        default_factory=lambda data: data["state_dir"] / "spool",
        description="the journal: records not yet in PostgreSQL survive restarts here",
        json_schema_extra={"default_text": "`<state_dir>/spool`"},
    )
    influx_buffer_points: int = Field(100_000, description="bound on points held while InfluxDB is down")

    @field_validator("routes", mode="before")
    @classmethod
    def _routes(cls, value: Any) -> Any:
        return parse_routes(value)

    def routing(self) -> Routes:
        """The routes, with the ``torchserve_*`` settings as the one box when no model is routed."""
        single = Box(url=self.torchserve_url, management_url=self.torchserve_management_url,
                     metrics_url=self.torchserve_metrics_url, key_file=self.torchserve_key_file)
        return Routes(self.routes, single)

    @field_validator("api_keys", "job_models", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return tuple(name.strip() for name in value.split(",") if name.strip())

    @model_validator(mode="after")
    def _web_key_is_not_secret(self) -> Settings:
        if self.web_key and (self.web_key in self.api_keys or self.web_key.startswith("sk_")):
            raise ValueError(
                "BRIDGE_WEB_KEY is sent to every browser that opens the page at /: give it a publishable key "
                "(servingctl keys create --publishable), never a secret key or one of BRIDGE_API_KEYS"
            )
        return self

    @model_validator(mode="after")
    def _no_open_api_beyond_loopback(self) -> Settings:
        if self.api_keys or self.allow_open_api or _is_loopback(self.host):
            return self
        raise ValueError(
            f"refusing to serve an open API on {self.host}: anyone who reaches it could run the models and read "
            "every recorded result. Set BRIDGE_API_KEYS (e.g. BRIDGE_API_KEYS=$(openssl rand -hex 24)) and give "
            "the key to clients (X-API-Key), or listen on 127.0.0.1, or set BRIDGE_ALLOW_OPEN_API=true to accept it"
        )


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; anything else (0.0.0.0 included) is reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve to anything
