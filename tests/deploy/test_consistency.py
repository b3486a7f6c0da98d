"""Compose, Kubernetes, KServe, the images and the local stack agree: the images make images builds, the bridge on 8000 with
its health check at /ping, TorchServe's ports on loopback only, and only environment variables the bridge
actually reads (bridge.settings.Settings). And hadolint passes on both Dockerfiles (docker/api.Dockerfile: the
bridge; docker/model-server.Dockerfile: TorchServe with the models)."""

from __future__ import annotations

import inspect
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bridge.settings import Settings
from tests.deploy.conftest import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    K8S,
    KSERVE,
    OVERLAYS,
    REPO_ROOT,
    configmap_by_prefix,
    container,
    find,
    read_properties,
    run,
    tool,
)

DOCKERFILES = {"api": REPO_ROOT / "docker" / "api.Dockerfile", "model": REPO_ROOT / "docker" / "model-server.Dockerfile",
               "balancer": REPO_ROOT / "docker" / "balancer.Dockerfile"}
DOCKERFILE = DOCKERFILES["api"].read_text()  # the bridge's image: what compose and Kubernetes publish on 8000
MODEL_DOCKERFILE = DOCKERFILES["model"].read_text()
MODEL_ENTRYPOINT = (REPO_ROOT / "docker" / "model-server-entrypoint.sh").read_text()
TS_CONFIG = read_properties(REPO_ROOT / "config.properties")
BRIDGE_ENV = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}
BRIDGE_PORT = 8000
HEALTH_PATH = "/ping"
# Non-BRIDGE_ variables the serving container may get from a deployment.
OTHER_ENV = {"NVIDIA_DRIVER_CAPABILITIES"}


def torchserve_ports() -> set[int]:
    ports = {urlsplit(TS_CONFIG[k]).port for k in ("inference_address", "management_address", "metrics_address")}
    ports |= {int(TS_CONFIG[k]) for k in ("grpc_inference_port", "grpc_management_port")}
    return {p for p in ports if p is not None}


def image_repository(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":")[0]


# --- two images (and the balancer) ---------------------------------------------------------------------------


BRIDGES = ("bridge-1", "bridge-2")
BOXES = ("box-classifier", "box-similar", "box-price")


def test_compose_runs_the_images_make_images_builds(compose_config: dict[str, Any]) -> None:
    from stack import docker as docker_stack

    built = {image.name: image.dockerfile for image in docker_stack.IMAGES}
    assert built == {"serving-api": "docker/api.Dockerfile", "serving-model": "docker/model-server.Dockerfile",
                     "serving-balancer": "docker/balancer.Dockerfile"}
    assert re.search(r"docker build -f docker/api\.Dockerfile -t serving-api \.", DOCKERFILE)
    assert re.search(r"docker build -f docker/model-server\.Dockerfile -t serving-model \.", MODEL_DOCKERFILE)
    services = compose_config["services"]
    images = {name: image_repository(services[name]["image"]) for name in (*BRIDGES, *BOXES, "balancer")}
    assert images == {**dict.fromkeys(BRIDGES, "serving-api"), **dict.fromkeys(BOXES, "serving-model"),
                      "balancer": "serving-balancer"}
    tags = {services[name]["image"].split(":")[1] for name in images}
    default_tag = re.search(r"\$\{SERVING_TAG:-([^}]+)\}", COMPOSE_FILE.read_text())
    assert default_tag and tags == {default_tag[1]}, "one release: every image of the topology has the same tag"


def test_kubernetes_keeps_one_image_name_across_overlays(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # The Kubernetes layout still runs the bridge and TorchServe in one pod (issue 13 item 5 splits it per model).
    k8s_images = {o: container(find(rendered[o], "Deployment", "serving"), "serving")["image"] for o in OVERLAYS}
    assert {image_repository(i) for i in k8s_images.values()} == {"serving"}
    assert re.fullmatch(r"serving:[^-]+", k8s_images["cpu"])
    # The GPU tag names the CUDA wheel index the Dockerfile documents for GPU builds.
    cuda = re.fullmatch(r"serving:.+-(cu\d+)", k8s_images["gpu"])
    assert cuda and f"/whl/{cuda[1]}" in MODEL_DOCKERFILE


# --- the bridge on 8000, health at /ping ----------------------------------------------------------------------


def test_bridge_port_everywhere(compose_config: dict[str, Any], rendered: dict[str, list[dict[str, Any]]]) -> None:
    import stack.services

    assert Settings.model_fields["port"].default == BRIDGE_PORT
    assert re.search(rf"^EXPOSE {BRIDGE_PORT}$", DOCKERFILE, re.MULTILINE)
    assert re.search(rf"BRIDGE_PORT={BRIDGE_PORT}\b", DOCKERFILE)
    assert f"http://127.0.0.1:{BRIDGE_PORT}{HEALTH_PATH}" in inspect.getsource(stack.services.Bridge)
    # compose: host networking, the bridges on the balancer's port + 1 and + 2, the balancer on 8000
    balancer = compose_config["services"]["balancer"]["environment"]
    assert balancer["BALANCER_LISTEN"].endswith(f":{BRIDGE_PORT}")
    assert [int(compose_config["services"][b]["environment"]["BRIDGE_PORT"]) for b in BRIDGES] == [
        BRIDGE_PORT + 1, BRIDGE_PORT + 2]
    for overlay in OVERLAYS:
        serving = container(find(rendered[overlay], "Deployment", "serving"), "serving")
        assert [(p["name"], p["containerPort"]) for p in serving["ports"]] == [("http", BRIDGE_PORT)]
        service = find(rendered[overlay], "Service", "serving")
        assert {p["port"] for p in service["spec"]["ports"] if p["targetPort"] == "http"} == {BRIDGE_PORT}


def test_health_check_path_everywhere(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import stack.services

    healthcheck = re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (.*)$", DOCKERFILE, re.MULTILINE)
    assert healthcheck and f"http://127.0.0.1:{BRIDGE_PORT}{HEALTH_PATH}" in healthcheck[1]
    assert f"{HEALTH_PATH}\"" in inspect.getsource(stack.services.Bridge.is_up)
    routes = [path.read_text() for path in (REPO_ROOT / "bridge").rglob("*.py")]
    assert any(re.search(rf"\.get\(\s*\"{HEALTH_PATH}\"", source) for source in routes), "the bridge serves /ping"
    for overlay in OVERLAYS:
        serving = container(find(rendered[overlay], "Deployment", "serving"), "serving")
        assert serving["readinessProbe"]["httpGet"]["path"] == HEALTH_PATH
        assert f"127.0.0.1:{BRIDGE_PORT}{HEALTH_PATH}" in " ".join(serving["livenessProbe"]["exec"]["command"])


# --- TorchServe on loopback -----------------------------------------------------------------------------------


def test_torchserve_listens_on_loopback_only() -> None:
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(TS_CONFIG[key]).hostname == "127.0.0.1", key
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert TS_CONFIG[key] == "127.0.0.1", key
    assert torchserve_ports() == {8080, 8081, 8082, 7070, 7071}


def test_the_bridge_reaches_torchserve_on_loopback() -> None:
    for field, key in (("torchserve_url", "inference_address"), ("torchserve_management_url", "management_address")):
        default = urlsplit(Settings.model_fields[field].default)
        assert default.hostname == "127.0.0.1"
        assert default.port == urlsplit(TS_CONFIG[key]).port, field


def test_no_torchserve_port_is_exposed(compose_config: dict[str, Any],
                                      rendered: dict[str, list[dict[str, Any]]]) -> None:
    ts_ports = torchserve_ports()
    for name, service in compose_config["services"].items():
        assert not service.get("ports") and not service.get("expose"), name  # host networking: nothing published
    # The boxes' TorchServe ports are their own, none the local stack's (8080-8082, 7070-7071).
    box_ports = {int(v) for b in BOXES for k, v in compose_config["services"][b]["environment"].items()
                 if k.endswith("_PORT")}
    assert len(box_ports) == 6 * len(BOXES) and not box_ports & ts_ports
    for overlay in OVERLAYS:
        deployment = find(rendered[overlay], "Deployment", "serving")
        exposed = {p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
                   for p in c.get("ports", [])}
        assert not exposed & ts_ports, overlay
        service = find(rendered[overlay], "Service", "serving")
        assert not {p["port"] for p in service["spec"]["ports"]} & ts_ports


def test_no_deployment_points_the_bridge_away_from_loopback(compose_config: dict[str, Any],
                                                            rendered: dict[str, list[dict[str, Any]]],
                                                            secret_template: dict[str, Any]) -> None:
    from stack.routing import parse_routes

    for env in deployment_environments(compose_config, rendered, secret_template).values():
        for name in ("BRIDGE_TORCHSERVE_URL", "BRIDGE_TORCHSERVE_MANAGEMENT_URL"):
            if name in env:
                assert urlsplit(env[name]).hostname == "127.0.0.1", name
        for box in parse_routes(env.get("BRIDGE_ROUTES", "")).values():  # compose: host networking, loopback
            for url in (box.url, box.management_url, box.metrics_url or box.url):
                assert urlsplit(url).hostname == "127.0.0.1", url


# --- the bridge's environment ---------------------------------------------------------------------------------


def deployment_environments(compose_config: dict[str, Any], rendered: dict[str, list[dict[str, Any]]],
                            secret_template: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Every environment the bridge's container gets, by where it is defined."""
    envs = {f"compose-{b}": dict(compose_config["services"][b]["environment"]) for b in BRIDGES}
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        serving = container(find(objects, "Deployment", "serving"), "serving")
        env = dict(configmap_by_prefix(objects, "serving-env")["data"])
        env |= {e["name"]: e.get("value", "") for e in serving.get("env", [])}
        envs[f"k8s-{overlay}"] = env
    envs["k8s-secret"] = dict(secret_template["stringData"])
    return envs


def test_only_settings_the_bridge_reads(compose_config: dict[str, Any], rendered: dict[str, list[dict[str, Any]]],
                                        secret_template: dict[str, Any]) -> None:
    for where, env in deployment_environments(compose_config, rendered, secret_template).items():
        unknown = {name for name in env if name not in BRIDGE_ENV and name not in OTHER_ENV}
        assert not unknown, f"{where}: not bridge settings (bridge/settings.py): {sorted(unknown)}"
    # The API image sets the bridge's settings in its ENV; the model server sets none.
    exported = set(re.findall(r"\b(BRIDGE_[A-Z0-9_]+)=", DOCKERFILE))
    assert exported and exported <= BRIDGE_ENV, sorted(exported - BRIDGE_ENV)
    assert not re.search(r"\bBRIDGE_[A-Z0-9_]+=", MODEL_DOCKERFILE + MODEL_ENTRYPOINT)
    examples = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith("BRIDGE_")}
    assert examples <= BRIDGE_ENV, sorted(examples - BRIDGE_ENV)


def test_databases_are_configured_in_every_deployment(compose_config: dict[str, Any],
                                                      rendered: dict[str, list[dict[str, Any]]],
                                                      secret_template: dict[str, Any]) -> None:
    envs = deployment_environments(compose_config, rendered, secret_template)
    k8s = {**envs["k8s-cpu"], **envs["k8s-secret"]}
    for where, env in (*((b, envs[f"compose-{b}"]) for b in BRIDGES), ("k8s", k8s)):
        # The entry point warns when these are unset: the defaults point at the container itself.
        assert {"BRIDGE_PG_DSN", "BRIDGE_INFLUX_HOST"} <= set(env), where
        assert env.get("BRIDGE_INFLUX_DATABASE", Settings.model_fields["influx_database"].default) == "serving"


def test_secrets_stay_out_of_configmaps(rendered: dict[str, list[dict[str, Any]]],
                                        secret_template: dict[str, Any]) -> None:
    for overlay in OVERLAYS:
        env = configmap_by_prefix(rendered[overlay], "serving-env")["data"]
        assert not set(env) & set(secret_template["stringData"]), overlay
    assert "REPLACE_ME" in secret_template["stringData"]["BRIDGE_PG_DSN"]


def test_kustomize_sources_parse() -> None:
    for path in K8S.rglob("*.yaml"):
        assert list(yaml.safe_load_all(path.read_text())), path


# --- per-model settings: the archive specs ---------------------------------------------------------------------


def test_kserve_snapshot_is_generated_from_the_specs() -> None:
    from archive_scripts import deploy_config

    snapshot = read_properties(KSERVE / "config.properties")["model_snapshot"]
    assert snapshot == deploy_config.kserve_snapshot(deploy_config.load_models()), (
        "deploy/kserve/config.properties differs from the specs: python -m archive_scripts.deploy_config"
    )
    assert deploy_config.load_models() == deploy_config.load_models(K8S / "base" / "config.properties")


def test_deploy_comments_quote_the_specs_batch_delay() -> None:
    from archive_scripts.deploy_config import load_models
    from archive_scripts.specs import SPECS

    served = {spec.workers.max_batch_delay_ms for spec in SPECS if spec.archive_name in load_models()}
    quoted = {int(ms) for path in K8S.rglob("*.yaml")
              for ms in re.findall(r"maxBatchDelay is (\d+) ms", path.read_text())}
    assert quoted and quoted <= served, f"deploy/k8s quotes maxBatchDelay {sorted(quoted)}, the specs say {sorted(served)}"


# --- the Dockerfile -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_hadolint_passes_on_the_dockerfile(which: str) -> None:
    result = run([tool("hadolint"), "--no-color", str(DOCKERFILES[which])], check=False)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("needle", ["USER 1000:1000", "HEALTHCHECK", "STOPSIGNAL SIGTERM", "/var/lib/serving/spool"])
def test_the_image_provides_what_the_deployments_assume(needle: str) -> None:
    assert needle in DOCKERFILE


@pytest.mark.parametrize("needle", ["USER 1000:1000", "HEALTHCHECK", "STOPSIGNAL SIGTERM"])
def test_the_model_server_image_is_non_root_with_a_health_check(needle: str) -> None:
    assert needle in MODEL_DOCKERFILE


def test_no_dockerfile_fetches_a_frontend_from_a_registry() -> None:
    # A `# syntax=` line makes BuildKit pull its frontend image; no registry is reachable where we build.
    for path in DOCKERFILES.values():
        assert not re.search(r"^#\s*syntax\s*=", path.read_text(), re.MULTILINE | re.IGNORECASE), path
