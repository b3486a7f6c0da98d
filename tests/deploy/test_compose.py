"""deploy/compose.yaml: valid for Docker Compose (its own `config`, no daemon) and for the Compose
specification's JSON schema, with the services, volumes, health gates and credentials it promises."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from archive_scripts.compose_models import layout
from stack import models
from tests.deploy.conftest import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    REPO_ROOT,
    compose_command,
    run,
    tool,
)

# Each model server box and the model it serves, from the catalogue (a model may have several boxes).
LAYOUT = layout(models.catalogue())
MODEL_OF = {box.name: box.model for box in LAYOUT}
BOXES = set(MODEL_OF)
BENCHMARK_BOXES = {box.name for box in LAYOUT if box.model.benchmark_only}
BRIDGES = {"bridge-1", "bridge-2"}
SERVICES = {"balancer", *BRIDGES, *BOXES, "postgres", "influxdb", "grafana"}  # servingctl: profile ops, on demand


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
    # benchmark-only models' boxes (resnet18's) are in the benchmark profile: not started by a plain `up`.
    assert BENCHMARK_BOXES and set(compose_config["services"]) == SERVICES - BENCHMARK_BOXES


def test_the_benchmark_profile_adds_the_benchmark_boxes(compose_env: dict[str, str]) -> None:
    result = run([*compose_command(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "--profile",
                  "benchmark", "config", "--services"], env=compose_env)
    assert set(result.stdout.split()) == SERVICES


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


@pytest.fixture(scope="module")
def full(compose_env: dict[str, str]) -> dict[str, Any]:
    """`docker compose config` with the benchmark profile: every service."""
    result = run([*compose_command(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "--profile",
                  "benchmark", "config", "--format", "json"], env=compose_env)
    return dict(json.loads(result.stdout))


def test_two_images_of_the_repository_and_the_balancer(full: dict[str, Any]) -> None:
    services = full["services"]
    for name in BRIDGES:
        assert services[name]["image"].split(":")[0] == "serving-api", name
    for name in BOXES:
        assert services[name]["image"].split(":")[0] == "serving-model", name
    assert services["balancer"]["image"].split(":")[0] == "serving-balancer"


def test_host_networking_and_loopback_everywhere(full: dict[str, Any]) -> None:
    for name, service in full["services"].items():
        assert service["network_mode"] == "host", name
        assert not service.get("ports"), f"{name}: host networking publishes nothing; services bind 127.0.0.1"
    assert full["services"]["balancer"]["environment"]["BALANCER_LISTEN"] == "127.0.0.1:8000"
    for name in BRIDGES:
        assert full["services"][name]["environment"]["BRIDGE_HOST"] == "127.0.0.1"
    assert full["services"]["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def test_each_box_serves_one_model_on_ports_of_its_own(full: dict[str, Any]) -> None:
    seen: set[str] = set()
    for name in BOXES:
        env = full["services"][name]["environment"]
        assert env["SERVING_MODELS"] == MODEL_OF[name].archive
        ports = {v for k, v in env.items() if k.startswith("SERVING_TS_") and k.endswith("_PORT")}
        assert len(ports) == 6 and not ports & seen, name  # inference, management, metrics, gRPC x2, workers
        seen |= ports
        assert full["services"][name]["restart"] == "unless-stopped"
    for name in BENCHMARK_BOXES:
        assert full["services"][name]["profiles"] == ["benchmark"]


def test_the_bridges_route_each_model_to_its_box_with_its_key(full: dict[str, Any]) -> None:
    from stack.routing import parse_routes

    balancer = full["services"]["balancer"]["environment"]["BALANCER_UPSTREAMS"].split(",")
    bridge_ports = {full["services"][name]["environment"]["BRIDGE_PORT"] for name in BRIDGES}
    assert {u.split(":")[1] for u in balancer} == bridge_ports and len(bridge_ports) == 2
    routes = {full["services"][name]["environment"]["BRIDGE_ROUTES"] for name in BRIDGES}
    assert len(routes) == 1, "every bridge has the same routes"
    parsed = parse_routes(routes.pop())
    for model in models.catalogue():
        assert len(parsed[model.name]) == model.boxes, f"{model.name} runs on {model.boxes} box(es)"
    assert max(m.boxes for m in models.catalogue()) > 1, "a model is scaled out (the classifier)"
    assert set(parsed) == set(models.names())
    for name in BOXES:
        model = MODEL_OF[name].name
        env = full["services"][name]["environment"]
        (box,) = [b for b in parsed[model] if b.url == f"http://127.0.0.1:{env['SERVING_TS_INFERENCE_PORT']}"]
        assert box.management_url == f"http://127.0.0.1:{env['SERVING_TS_MANAGEMENT_PORT']}"
        assert box.metrics_url == f"http://127.0.0.1:{env['SERVING_TS_METRICS_PORT']}/metrics"
        # The box writes its key file into its own volume; every bridge mounts that volume read-only.
        (key_volume,) = [v for v in full["services"][name]["volumes"] if v["target"] == "/var/lib/serving/torchserve"]
        for bridge in BRIDGES:
            mounts = {v["target"]: v for v in full["services"][bridge]["volumes"]}
            mount = mounts[str(box.key_file.parent)]
            assert mount["source"] == key_volume["source"] and mount["read_only"] is True
        assert box.required is not MODEL_OF[name].benchmark_only


def test_start_order_is_gated_on_real_health_checks(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    for name in BRIDGES:
        gates = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert gates == {"postgres": "service_healthy", "influxdb": "service_healthy"}
        # the bridges keep the image's own HEALTHCHECK (/ping: 200 only when every required box answers)
        assert "healthcheck" not in services[name]
    for name in BOXES - BENCHMARK_BOXES:
        assert "healthcheck" not in services[name]  # the image's: every model of the box has a READY worker
    assert {name: dep["condition"] for name, dep in services["grafana"]["depends_on"].items()} == {
        "influxdb": "service_healthy"
    }
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8086/ping" in services["influxdb"]["healthcheck"]["test"]
    assert any("/api/health" in part for part in services["grafana"]["healthcheck"]["test"])


def test_the_bridge_gets_time_to_drain(compose_config: dict[str, Any]) -> None:
    for name in BRIDGES:
        bridge = compose_config["services"][name]
        assert seconds(bridge["stop_grace_period"]) >= 30
        assert bridge.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_named_volumes_hold_every_piece_of_state(full: dict[str, Any]) -> None:
    def mounts(service: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in full["services"][service]["volumes"] if v["type"] == "volume"}

    assert mounts("postgres") == {"/var/lib/postgresql/data": "pg-data"}
    assert mounts("influxdb") == {"/var/lib/influxdb": "influx-data"}
    assert mounts("grafana") == {"/var/lib/grafana": "grafana-data"}
    for name in BRIDGES:  # one journal shared by the bridges: a removed bridge's records are adopted
        assert mounts(name)["/var/lib/serving/spool"] == "bridge-journal"
        # one capture store, read by servingctl replay (content-addressed: bridges sharing it never clash)
        assert mounts(name)["/var/lib/serving/captures"] == "captures"
        assert full["services"][name]["environment"]["BRIDGE_CAPTURE_DIR"] == "/var/lib/serving/captures"
    assert set(full["volumes"]) == {"pg-data", "influx-data", "grafana-data", "bridge-journal", "captures",
                                    *(f"{b.removeprefix('box-')}-keys" for b in BOXES)}


def test_servingctl_runs_on_demand_with_the_same_routes_and_every_key(compose_env: dict[str, str]) -> None:
    from stack.routing import parse_routes

    result = run([*compose_command(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "--profile",
                  "ops", "config", "--format", "json"], env=compose_env)
    services = json.loads(result.stdout)["services"]
    ctl = services["servingctl"]
    assert ctl["profiles"] == ["ops"] and ctl["image"].split(":")[0] == "serving-ops" and ctl["read_only"] is True
    routes = parse_routes(ctl["environment"]["SERVINGCTL_ROUTES"])
    assert routes == parse_routes(services["bridge-1"]["environment"]["BRIDGE_ROUTES"])
    mounts = {v["target"]: v for v in ctl["volumes"]}
    assert mounts["/var/lib/serving/captures"]["source"] == "captures" and mounts["/var/lib/serving/captures"]["read_only"]
    assert ctl["environment"]["SERVINGCTL_CAPTURE_DIR"] == "/var/lib/serving/captures"
    for boxes in routes.values():
        for box in boxes:
            assert mounts[str(box.key_file.parent)]["read_only"] is True


def test_our_containers_run_read_only_with_writable_state(full: dict[str, Any]) -> None:
    for name in {"balancer", *BRIDGES, *BOXES}:
        service = full["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
    for name in BOXES:
        tmpfs = {entry.split(":")[0]: entry for entry in full["services"][name]["tmpfs"]}
        assert set(tmpfs) == {"/tmp", "/var/lib/serving"}
        assert "uid=1000" in tmpfs["/var/lib/serving"]  # the image's `serving` user (USER 1000:1000)


def test_databases_and_influx_are_not_published(compose_config: dict[str, Any]) -> None:
    for name in ("postgres", "influxdb"):
        assert not compose_config["services"][name].get("ports"), name
    assert "listen_addresses=127.0.0.1" in compose_config["services"]["postgres"]["command"]
    assert compose_config["services"]["influxdb"]["environment"]["INFLUXDB_HTTP_BIND_ADDRESS"] == "127.0.0.1:8086"


def test_database_names_and_versions(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "serving"
    assert services["influxdb"]["image"].startswith("influxdb:1.8")
    assert services["influxdb"]["environment"]["INFLUXDB_DB"] == "serving"
    for name in BRIDGES:
        env = services[name]["environment"]
        assert env["BRIDGE_INFLUX_HOST"] == "127.0.0.1" and env["BRIDGE_INFLUX_DATABASE"] == "serving"
        assert re.fullmatch(r"postgresql://[^:@/]+:[^@/]+@127\.0\.0\.1:5432/serving", env["BRIDGE_PG_DSN"])


def test_a_port_prefix_moves_every_port(compose_env: dict[str, str], tmp_path: Path) -> None:
    env_file = tmp_path / "prefixed.env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "\nSERVING_PORT_PREFIX=4\n")
    result = run([*compose_command(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"], env=compose_env)
    ports = {int(p) for p in re.findall(r"(?:127\.0\.0\.1:|PORT: \"?)(\d{4,5})\b", result.stdout)}
    assert ports and all(40000 <= p < 50000 for p in ports), sorted(p for p in ports if not 40000 <= p < 50000)


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
    # Grafana expands ${INFLUXDB_URL} from its environment: InfluxDB's loopback address and port
    assert influx["url"] == "${INFLUXDB_URL}"
    assert grafana["environment"]["INFLUXDB_URL"] == "http://127.0.0.1:8086"
    assert influx["jsonData"]["dbName"] == compose_config["services"]["influxdb"]["environment"]["INFLUXDB_DB"]
    assert influx["uid"]  # fixed, so dashboards can refer to it

    providers = yaml.safe_load((provisioning / "dashboards" / "dashboards.yaml").read_text())["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == binds[dashboards_dir.resolve()]


def test_durations_parse() -> None:
    assert seconds("1m0s") == 60 and seconds("1m30s") == 90 and seconds("500ms") == pytest.approx(0.5)
