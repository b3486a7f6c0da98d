"""deploy/compose.yaml: valid for Docker Compose (its own `config`, no daemon) and for the Compose
specification's JSON schema, with the services, volumes, health gates and credentials it promises."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    REPO_ROOT,
    compose_command,
    run,
    tool,
)

SERVICES = {"serving", "postgres", "influxdb", "grafana"}


def seconds(duration: str) -> float:
    """A Go duration as `docker compose config` prints it ("1m0s", "60s", "1m30s", "500ms") in seconds."""
    assert re.fullmatch(r"(\d+(\.\d+)?(ms|h|m|s))+", duration), duration
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def env_file_keys(path: Path) -> dict[str, str]:
    keys = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def test_compose_config_renders_without_a_daemon(compose_config: dict[str, Any]) -> None:
    assert compose_config["name"] == "photo-serving"
    assert set(compose_config["services"]) == SERVICES


def test_docker_compose_version_is_available(compose_env: dict[str, str]) -> None:
    result = run([*compose_command(), "version"], env=compose_env)
    assert "Docker Compose version" in result.stdout


def test_compose_refuses_to_start_without_credentials(compose_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = run([*compose_command(), "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config", "--quiet"],
                 env=compose_env, check=False)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


def test_compose_file_matches_the_compose_specification_schema() -> None:
    # check-jsonschema ships the Compose specification's schema (vendored from SchemaStore).
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])


def test_serving_is_the_one_image_built_from_the_repository(compose_config: dict[str, Any]) -> None:
    serving = compose_config["services"]["serving"]
    assert Path(serving["build"]["context"]).resolve() == REPO_ROOT
    assert serving["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert serving["image"].rsplit("/", 1)[-1].split(":")[0] == "serving"
    # The bridge is the only published port; TorchServe's stay on the container's loopback.
    assert [p["target"] for p in serving["ports"]] == [8000]


def test_start_order_is_gated_on_real_health_checks(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    gates = {name: dep["condition"] for name, dep in services["serving"]["depends_on"].items()}
    assert gates == {"postgres": "service_healthy", "influxdb": "service_healthy"}
    assert {name: dep["condition"] for name, dep in services["grafana"]["depends_on"].items()} == {
        "influxdb": "service_healthy"
    }
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8086/ping" in services["influxdb"]["healthcheck"]["test"]
    assert any("/api/health" in part for part in services["grafana"]["healthcheck"]["test"])
    # serving keeps the image's own HEALTHCHECK (bridge /ping): not overridden, not disabled.
    assert "healthcheck" not in services["serving"]


def test_the_bridge_gets_time_to_drain(compose_config: dict[str, Any]) -> None:
    serving = compose_config["services"]["serving"]
    assert seconds(serving["stop_grace_period"]) >= 40
    assert serving.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_named_volumes_hold_every_piece_of_state(compose_config: dict[str, Any]) -> None:
    def mounts(service: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in compose_config["services"][service]["volumes"]
                if v["type"] == "volume"}

    assert mounts("postgres") == {"/var/lib/postgresql/data": "pg-data"}
    assert mounts("influxdb") == {"/var/lib/influxdb": "influx-data"}
    assert mounts("grafana") == {"/var/lib/grafana": "grafana-data"}
    assert mounts("serving") == {"/var/lib/serving/spool": "serving-spool"}
    assert set(compose_config["volumes"]) == {"pg-data", "influx-data", "grafana-data", "serving-spool"}


def test_serving_runs_read_only_with_writable_state(compose_config: dict[str, Any]) -> None:
    serving = compose_config["services"]["serving"]
    assert serving["read_only"] is True
    tmpfs = {entry.split(":")[0]: entry for entry in serving["tmpfs"]}
    assert set(tmpfs) == {"/tmp", "/var/lib/serving"}
    assert "uid=1000" in tmpfs["/var/lib/serving"]  # the image's `serving` user (USER 1000:1000)
    assert serving["cap_drop"] == ["ALL"]


def test_databases_and_influx_are_not_published(compose_config: dict[str, Any]) -> None:
    for name in ("postgres", "influxdb"):
        assert not compose_config["services"][name].get("ports"), name


def test_database_names_and_versions(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "serving"
    assert services["influxdb"]["image"].startswith("influxdb:1.8")
    assert services["influxdb"]["environment"]["INFLUXDB_DB"] == "serving"
    env = services["serving"]["environment"]
    assert env["BRIDGE_INFLUX_HOST"] == "influxdb" and env["BRIDGE_INFLUX_DATABASE"] == "serving"
    assert re.fullmatch(r"postgresql://[^:@/]+:[^@/]+@postgres:5432/serving", env["BRIDGE_PG_DSN"])


def test_credentials_come_only_from_the_env_file() -> None:
    text = COMPOSE_FILE.read_text()
    # Every credential is a required ${VAR:?...} reference, never a value in the file.
    for name in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\$\{{{name}:\?", text), name
        assert re.search(rf"^\s*{name}=", text, re.MULTILINE) is None
    referenced = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(env_file_keys(ENV_EXAMPLE))
    assert referenced <= documented, f"not in deploy/.env.example: {sorted(referenced - documented)}"
    assert all("CHANGE_ME" in env_file_keys(ENV_EXAMPLE)[k] for k in ("POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"))


def test_the_real_env_file_is_never_committed() -> None:
    result = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], check=False, cwd=REPO_ROOT)
    assert result.returncode == 0, "deploy/.env must be git-ignored"
    result = subprocess.run(["git", "check-ignore", "-q", "deploy/.env.example"], check=False, cwd=REPO_ROOT)
    assert result.returncode == 1, "deploy/.env.example must stay committable"


def test_grafana_is_provisioned_with_influxdb_and_the_dashboards(compose_config: dict[str, Any]) -> None:
    grafana = compose_config["services"]["grafana"]
    binds = {Path(v["source"]).resolve(): v["target"] for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = DEPLOY / "grafana" / "provisioning"
    dashboards_dir = DEPLOY / "grafana" / "dashboards"
    assert binds[provisioning.resolve()] == "/etc/grafana/provisioning"

    datasources = yaml.safe_load((provisioning / "datasources" / "influxdb.yaml").read_text())["datasources"]
    (influx,) = [d for d in datasources if d["type"] == "influxdb"]
    assert influx["url"] == "http://influxdb:8086"  # the Compose service and InfluxDB's port
    assert influx["jsonData"]["dbName"] == compose_config["services"]["influxdb"]["environment"]["INFLUXDB_DB"]
    assert influx["uid"]  # fixed, so dashboards can refer to it

    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == binds[dashboards_dir.resolve()]


def test_durations_parse() -> None:
    assert seconds("1m0s") == 60 and seconds("1m30s") == 90 and seconds("500ms") == pytest.approx(0.5)
