"""Compose, Kubernetes, KServe, the images and the local stack agree: the images make images builds, the bridge on 8000 with
its health check at /ping, one box per model with the same archive, settings and health check everywhere, each
model routed to the box that serves it (compose's and Kubernetes' BRIDGE_ROUTES), TorchServe's ports reachable by
the bridge only, and only environment variables the bridge actually reads (bridge.settings.Settings). And hadolint
passes on the Dockerfiles (docker/api.Dockerfile: the bridge; the root Dockerfile: TorchServe with the models)."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from archive_scripts.compose_models import layout
from bridge.settings import Settings
from stack import models
from tests.deploy.conftest import (
    BENCHMARK,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    K8S,
    KSERVE,
    OVERLAYS,
    REPO_ROOT,
    boxes,
    configmap_by_prefix,
    container,
    find,
    find_all,
    kserve_models,
    read_properties,
    run,
    tool,
)

DOCKERFILES = {"api": REPO_ROOT / "docker" / "api.Dockerfile", "model": REPO_ROOT / "Dockerfile",
               "balancer": REPO_ROOT / "docker" / "balancer.Dockerfile",
               "kserve-runtime": REPO_ROOT / "docker" / "kserve-runtime.Dockerfile"}
DOCKERFILE = DOCKERFILES["api"].read_text()  # the bridge's image: what compose and Kubernetes publish on 8000
MODEL_DOCKERFILE = DOCKERFILES["model"].read_text()
MODEL_ENTRYPOINT = (REPO_ROOT / "docker" / "model-server-entrypoint.sh").read_text()
TS_CONFIG = read_properties(REPO_ROOT / "config.properties")
BRIDGE_ENV = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}
BRIDGE_PORT = 8000
HEALTH_PATH = "/ping"
# Non-BRIDGE_ variables the bridge's container may get from a deployment.
OTHER_ENV: set[str] = set()
# What a model box's container may get: the entry point's settings (docker/model-server-entrypoint.sh) and the
# NVIDIA runtime's.
BOX_ENV = set(re.findall(r"\$\{?(SERVING_[A-Z_]+)", MODEL_ENTRYPOINT)) | {"NVIDIA_DRIVER_CAPABILITIES"}


def torchserve_ports() -> set[int]:
    ports = {urlsplit(TS_CONFIG[k]).port for k in ("inference_address", "management_address", "metrics_address")}
    ports |= {int(TS_CONFIG[k]) for k in ("grpc_inference_port", "grpc_management_port")}
    return {p for p in ports if p is not None}


def image_repository(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":")[0]


# --- two images (and the balancer) ---------------------------------------------------------------------------


BRIDGES = ("bridge-1", "bridge-2")
# The boxes a plain `docker compose up` starts (benchmark-only models' are in a profile), from the catalogue.
BOXES = tuple(box.name for box in layout(models.catalogue()) if not box.model.benchmark_only)


def test_compose_runs_the_images_make_images_builds(compose_config: dict[str, Any]) -> None:
    from stack import docker as docker_stack

    built = {image.name: image.dockerfile for image in docker_stack.IMAGES}
    assert built == {"serving-api": "docker/api.Dockerfile", "serving-model": "Dockerfile",
                     "serving-ops": "Dockerfile", "serving-balancer": "docker/balancer.Dockerfile"}
    assert re.search(r"docker build -f docker/api\.Dockerfile -t serving-api \.", DOCKERFILE)
    assert re.search(r"docker build -t serving-model \.", MODEL_DOCKERFILE)  # the root Dockerfile: no -f
    services = compose_config["services"]
    images = {name: image_repository(services[name]["image"]) for name in (*BRIDGES, *BOXES, "balancer")}
    assert images == {**dict.fromkeys(BRIDGES, "serving-api"), **dict.fromkeys(BOXES, "serving-model"),
                      "balancer": "serving-balancer"}
    tags = {services[name]["image"].split(":")[1] for name in images}
    default_tag = re.search(r"\$\{SERVING_TAG:-([^}]+)\}", COMPOSE_FILE.read_text())
    assert default_tag and tags == {default_tag[1]}, "one release: every image of the topology has the same tag"


def test_kubernetes_runs_the_same_images(compose_config: dict[str, Any],
                                         rendered: dict[str, list[dict[str, Any]]]) -> None:
    services = compose_config["services"]
    for overlay in (*OVERLAYS, BENCHMARK):
        objects = rendered[overlay]
        api = container(find(objects, "Deployment", "api"), "bridge")["image"]
        assert image_repository(api) == image_repository(services[BRIDGES[0]]["image"]) == "serving-api"
        models = {container(d, "torchserve")["image"] for d in boxes(objects).values()}
        assert {image_repository(i) for i in models} == {image_repository(services[BOXES[0]]["image"])}
        assert {image_repository(i) for i in models} == {"serving-model"}
        assert len(models) == 1, f"{overlay}: every box of a release runs the same model-server image"
    cpu_api = container(find(rendered["cpu"], "Deployment", "api"), "bridge")["image"]
    (cpu_model,) = {container(d, "torchserve")["image"] for d in boxes(rendered["cpu"]).values()}
    assert cpu_api.split(":")[1] == cpu_model.split(":")[1], "one release: the API and the boxes have the same tag"
    assert re.fullmatch(r"serving-model:[^-]+", cpu_model)
    # The GPU tag names the CUDA wheel index the Dockerfile documents for GPU builds.
    (gpu_model,) = {container(d, "torchserve")["image"] for d in boxes(rendered["gpu"]).values()}
    cuda = re.fullmatch(re.escape(cpu_model) + r"-(cu\d+)", gpu_model)
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
        bridge = container(find(rendered[overlay], "Deployment", "api"), "bridge")
        assert [(p["name"], p["containerPort"]) for p in bridge["ports"]] == [("http", BRIDGE_PORT)]
        service = find(rendered[overlay], "Service", "api")
        assert {p["port"] for p in service["spec"]["ports"] if p["targetPort"] == "http"} == {BRIDGE_PORT}


def test_health_check_path_everywhere(rendered: dict[str, list[dict[str, Any]]]) -> None:
    import stack.services

    healthcheck = re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (.*)$", DOCKERFILE, re.MULTILINE)
    assert healthcheck and f"http://127.0.0.1:{BRIDGE_PORT}{HEALTH_PATH}" in healthcheck[1]
    assert f"{HEALTH_PATH}\"" in inspect.getsource(stack.services.Bridge.is_up)
    routes = [path.read_text() for path in (REPO_ROOT / "bridge").rglob("*.py")]
    assert any(re.search(rf"\.get\(\s*\"{HEALTH_PATH}\"", source) for source in routes), "the bridge serves /ping"
    for overlay in OVERLAYS:
        bridge = container(find(rendered[overlay], "Deployment", "api"), "bridge")
        assert bridge["readinessProbe"]["httpGet"]["path"] == HEALTH_PATH
        assert f"127.0.0.1:{BRIDGE_PORT}{HEALTH_PATH}" in " ".join(bridge["livenessProbe"]["exec"]["command"])


def test_a_box_is_healthy_when_its_model_answers_everywhere(compose_config: dict[str, Any],
                                                           rendered: dict[str, list[dict[str, Any]]]) -> None:
    healthcheck = re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])$", MODEL_DOCKERFILE, re.MULTILINE)
    assert healthcheck
    command = json.loads(healthcheck[1])
    # compose keeps the image's health check; Kubernetes runs the same command as readiness and startup.
    for box in BOXES:
        assert "healthcheck" not in compose_config["services"][box] or not compose_config["services"][box][
            "healthcheck"].get("test"), box
    for overlay in OVERLAYS:
        for model, deployment in boxes(rendered[overlay]).items():
            torchserve = container(deployment, "torchserve")
            assert torchserve["readinessProbe"]["exec"]["command"] == command, (overlay, model)
            assert torchserve["startupProbe"]["exec"]["command"] == command, (overlay, model)


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
        objects = rendered[overlay]
        # Kubernetes: the bridges' pods and Service carry no TorchServe port; the boxes' Services carry inference
        # and management only (metrics are scraped per pod), and the NetworkPolicy model-boxes guards all three
        # (test_manifests.test_only_the_bridge_and_servingctl_reach_the_boxes).
        api = find(objects, "Deployment", "api")
        exposed = {p["containerPort"] for c in api["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert exposed == {BRIDGE_PORT}, overlay
        for service in find_all(objects, "Service"):
            if service["metadata"]["name"] == "api":
                assert {p["port"] for p in service["spec"]["ports"]} == {BRIDGE_PORT}
            else:
                assert {p["name"] for p in service["spec"]["ports"]} == {"inference", "management"}, overlay
        assert {p["port"] for rule in find(objects, "NetworkPolicy", "model-boxes")["spec"]["ingress"]
                for p in rule["ports"]} == {8080, 8081, 8082}


def test_routes_reach_the_boxes_on_their_own_network(compose_config: dict[str, Any],
                                                     rendered: dict[str, list[dict[str, Any]]],
                                                     secret_template: dict[str, Any]) -> None:
    from stack.routing import parse_routes

    services = {s["metadata"]["name"] for s in find_all(rendered[BENCHMARK], "Service")}
    for where, env in deployment_environments(compose_config, rendered, secret_template).items():
        for name in ("BRIDGE_TORCHSERVE_URL", "BRIDGE_TORCHSERVE_MANAGEMENT_URL"):
            if name in env:
                assert urlsplit(env[name]).hostname == "127.0.0.1", name
        for box in [b for replicas in parse_routes(env.get("BRIDGE_ROUTES", "")).values() for b in replicas]:
            for url in (box.url, box.management_url, box.metrics_url or box.url):
                if where.startswith("compose"):  # host networking: loopback
                    assert urlsplit(url).hostname == "127.0.0.1", url
                else:  # a box's Service in the bridges' namespace
                    assert urlsplit(url).hostname in services - {"api"}, url


# --- routing: each model to the box that serves it -------------------------------------------------------------


def compose_boxes(compose_config: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    """The environments of the compose boxes serving each model (several when it is scaled out)."""
    from archive_scripts.specs import SPECS

    model_of = {spec.archive_name: spec.name for spec in SPECS}
    out: dict[str, list[dict[str, str]]] = {}
    for service in compose_config["services"].values():
        env = service.get("environment") or {}
        if "SERVING_MODELS" in env:
            (archive,) = env["SERVING_MODELS"].split(",")
            out.setdefault(model_of[archive], []).append(env)
    return out


def k8s_routes(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> dict[str, Any]:
    from stack.routing import parse_routes

    bridge = container(find(rendered[overlay], "Deployment", "api"), "bridge")
    (ref,) = [e["valueFrom"]["configMapKeyRef"] for e in bridge["env"] if e["name"] == "BRIDGE_ROUTES"]
    return parse_routes(configmap_by_prefix(rendered[overlay], "serving-routes")["data"][ref["key"]])


def test_compose_and_kubernetes_route_the_same_models(compose_config: dict[str, Any],
                                                      compose_benchmark_config: dict[str, Any],
                                                      rendered: dict[str, list[dict[str, Any]]]) -> None:
    from stack.routing import parse_routes

    compose = parse_routes(compose_config["services"][BRIDGES[0]]["environment"]["BRIDGE_ROUTES"])
    for overlay in (*OVERLAYS, BENCHMARK):
        k8s = k8s_routes(rendered, overlay)
        assert sorted(k8s) == sorted(compose), overlay
        # Kubernetes: one Service per model, its replicas behind it; compose lists a scaled-out model's boxes.
        assert all(len(replicas) == 1 for replicas in k8s.values()), overlay
        assert {m: b.required for m, (b,) in k8s.items()} == {
            m: {b.required for b in replicas} == {True} for m, replicas in compose.items()}, overlay
    # Both run a box for every model routed as required (the benchmark-only ones under a profile / overlay).
    required = sorted(m for m, replicas in compose.items() if replicas[0].required)
    assert sorted(compose_boxes(compose_config)) == sorted(boxes(rendered["cpu"])) == required
    assert sorted(compose_boxes(compose_benchmark_config)) == sorted(boxes(rendered[BENCHMARK])) == sorted(compose)


def test_each_route_points_at_the_box_that_serves_its_model(compose_benchmark_config: dict[str, Any],
                                                            rendered: dict[str, list[dict[str, Any]]]) -> None:
    from stack.routing import parse_routes

    # compose: host networking, so a route's port is the port its box's TorchServe listens on.
    compose = parse_routes(compose_benchmark_config["services"][BRIDGES[0]]["environment"]["BRIDGE_ROUTES"])
    compose_served = compose_boxes(compose_benchmark_config)
    assert sorted(compose_served) == sorted(compose)
    for model, envs in compose_served.items():
        assert len(envs) == len(compose[model]), f"{model}: one route entry per box"
        for box, env in zip(compose[model], sorted(envs, key=lambda e: int(e["SERVING_TS_INFERENCE_PORT"])), strict=True):
            assert urlsplit(box.url).port == int(env["SERVING_TS_INFERENCE_PORT"]), model
            assert urlsplit(box.management_url).port == int(env["SERVING_TS_MANAGEMENT_PORT"]), model
            assert box.metrics_url and urlsplit(box.metrics_url).port == int(env["SERVING_TS_METRICS_PORT"]), model
    # Kubernetes: a route's host is a Service that selects the model's box, and its port reaches TorchServe's.
    objects = rendered[BENCHMARK]
    routes = k8s_routes(rendered, BENCHMARK)
    for model, deployment in boxes(objects).items():
        (box,) = routes[model]
        service = find(objects, "Service", urlsplit(box.url).hostname)
        assert urlsplit(box.management_url).hostname == service["metadata"]["name"]
        selected = [d for d in boxes(objects).values()
                    if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [deployment], f"{model}: its route's Service selects another box"
        torchserve = container(deployment, "torchserve")
        env = {e["name"]: e.get("value") for e in torchserve["env"]}
        named = {p["name"]: p["containerPort"] for p in torchserve["ports"]}
        by_port = {p["port"]: named[p["targetPort"]] for p in service["spec"]["ports"]}
        assert by_port[urlsplit(box.url).port] == int(env["SERVING_TS_INFERENCE_PORT"]), model
        assert by_port[urlsplit(box.management_url).port] == int(env["SERVING_TS_MANAGEMENT_PORT"]), model


def test_each_box_serves_the_same_archive_with_the_specs_settings(compose_benchmark_config: dict[str, Any],
                                                                  rendered: dict[str, list[dict[str, Any]]]) -> None:
    from archive_scripts.specs import SPECS

    specs = {spec.name: spec for spec in SPECS}
    compose = {m: {env["SERVING_MODELS"] for env in envs} for m, envs in compose_boxes(compose_benchmark_config).items()}
    assert all(len(archives) == 1 for archives in compose.values()), "a model's replicas serve the same archive"
    k8s = {m: next(e["value"] for e in container(d, "torchserve")["env"] if e["name"] == "SERVING_MODELS")
           for m, d in boxes(rendered[BENCHMARK]).items()}
    kserve: dict[str, str] = {}
    for model in kserve_models():
        snapshot = json.loads(read_properties(KSERVE / model / "config.properties")["model_snapshot"])
        ((_version, entry),) = snapshot["models"][model].items()
        kserve[model] = entry["marName"]
        # Workers and batching: the archive's model-config.yaml (compose, Kubernetes) = KServe's snapshot = spec.
        assert {k: entry[k] for k in specs[model].model_config} == specs[model].model_config, model
    assert {m: archive for m, (archive,) in compose.items()} == k8s == kserve == {m: specs[m].archive_name for m in compose}


def test_kserve_is_sized_and_scaled_like_the_boxes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered[BENCHMARK]
    for model, deployment in boxes(objects).items():
        isvc = yaml.safe_load((KSERVE / model / "inferenceservice.yaml").read_text())
        predictor = isvc["spec"]["predictor"]
        assert predictor["model"]["resources"] == container(deployment, "torchserve")["resources"], model
        hpa = find(objects, "HorizontalPodAutoscaler", deployment["metadata"]["name"])["spec"]
        assert (predictor["minReplicas"], predictor["maxReplicas"]) == (hpa["minReplicas"], hpa["maxReplicas"])
        assert isvc["metadata"]["namespace"] == deployment["metadata"]["namespace"]


# --- the bridge's environment ---------------------------------------------------------------------------------


def deployment_environments(compose_config: dict[str, Any], rendered: dict[str, list[dict[str, Any]]],
                            secret_template: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Every environment the bridge's container gets, by where it is defined."""
    envs = {f"compose-{b}": dict(compose_config["services"][b]["environment"]) for b in BRIDGES}
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        bridge = container(find(objects, "Deployment", "api"), "bridge")
        env = dict(configmap_by_prefix(objects, "serving-env")["data"])
        for entry in bridge.get("env", []):
            ref = entry.get("valueFrom", {}).get("configMapKeyRef")
            value = configmap_by_prefix(objects, ref["name"].rsplit("-", 1)[0])["data"][ref["key"]] if ref else None
            env[entry["name"]] = entry.get("value", "") if value is None else value
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
    # The boxes get only what their entry point reads.
    for overlay in OVERLAYS:
        for model, deployment in boxes(rendered[overlay]).items():
            names = {e["name"] for e in container(deployment, "torchserve")["env"]}
            assert names <= BOX_ENV, f"k8s-{overlay} box {model}: {sorted(names - BOX_ENV)}"
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


def test_kserve_snapshots_and_kubernetes_boxes_are_generated_from_the_specs() -> None:
    from archive_scripts import deploy_config

    assert not deploy_config.stale(), "deploy files differ from the specs: python -m archive_scripts.deploy_config"
    for model in kserve_models():
        snapshot = read_properties(KSERVE / model / "config.properties")["model_snapshot"]
        (spec,) = [s for s in deploy_config.boxes() if s.name == model]
        assert snapshot == deploy_config.kserve_snapshot([spec.archive_name])
    assert deploy_config.load_models() == deploy_config.load_models(K8S / "base" / "box.config.properties")


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
