"""The bridge's settings: environment variables prefixed ``BRIDGE_``, with defaults for the local stack."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".state"


class Settings(BaseSettings):
    """Every knob of the bridge; see the README's "Configuration" table."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", frozen=True)

    host: str = "127.0.0.1"
    api_keys: str = ""  # comma-separated; empty = no key required
    port: int = 8000

    torchserve_url: str = "http://127.0.0.1:8080"
    torchserve_management_url: str = "http://127.0.0.1:8081"
    torchserve_metrics_url: str = "http://127.0.0.1:8082/metrics"
    telemetry_interval_s: float = 10.0  # scrape TorchServe + write the bridge's own metrics; 0 = off
    torchserve_key_file: Path = STATE_DIR / "torchserve" / "key_file.json"
    torchserve_timeout_s: float = 25.0  # below the archives' responseTimeout (30 s): the bridge answers 504 first
    max_connections: int = 256
    max_body_bytes: int = 6_000_000
    request_head_timeout_s: float = 10.0  # a connection whose request head is not complete by then is closed
    request_body_timeout_s: float = 10.0  # a body not complete by then is a 408

    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/serving"
    pg_connect_timeout_s: int = 3
    db_timeout_s: float = 10.0  # longest a request-time query may take before a 503
    influx_host: str = "127.0.0.1"
    influx_port: int = 8086
    influx_database: str = "serving"
    influx_timeout_s: float = 3.0

    cache: bool = True  # same photo + same model version → the recorded answer (X-Cache: HIT)
    cache_timeout_s: float = 0.05  # a slower lookup is a miss

    job_models: str = "classifier,price,similar"  # what POST /v1/jobs runs by default
    job_concurrency: int = 4
    job_lease_s: float = 30.0
    job_max_attempts: int = 5

    record_batch_size: int = 500
    record_flush_interval_s: float = 0.05
    record_retry_interval_s: float = 2.0
    spool_dir: Path = STATE_DIR / "spool"
    influx_buffer_points: int = 100_000

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The configured API keys (none means the API is open)."""
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def job_model_list(self) -> tuple[str, ...]:
        """The models a job runs when the submission names none."""
        return tuple(m.strip() for m in self.job_models.split(",") if m.strip())
