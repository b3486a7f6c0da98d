"""deploy/k8s (kustomize base + cpu/gpu/benchmark overlays, one generated box per model) and deploy/kserve (an
InferenceService per model): rendered with kubectl's built-in kustomize, every object validated against the
Kubernetes JSON schemas of pinned versions (strict: unknown fields fail), the InferenceServices against KServe's
schema, and the promises of the layout checked."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources as importlib_resources
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from stack import models
from tests.deploy.conftest import (
    API_LABELS,
    BENCHMARK,
    BOX_LABELS,
    K8S,
    KSERVE,
    KSERVE_KUBERNETES_VERSION,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    REPO_ROOT,
    SCHEMAS,
    boxes,
    configmap_by_prefix,
    container,
    find,
    find_all,
    kserve_models,
    read_properties,
    selects,
)

QUEUE_METRIC = "ts_queue_latency_per_request_ms"


def validate(obj: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {path}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(exc.message)


# --- schema validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", [*OVERLAYS, BENCHMARK, "base"])
def test_every_rendered_object_is_valid_kubernetes(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                   version: str) -> None:
    assert rendered[overlay]
    for obj in rendered[overlay]:
        validate(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_secret_template_is_valid_kubernetes(secret_template: dict[str, Any], version: str) -> None:
    validate(secret_template, version)


def test_the_validator_rejects_an_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(find(rendered["cpu"], "Deployment", "api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ping"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def kserve_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "kserve_v1beta1_inferenceservice.json").read_text())
    k8s_dir = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((k8s_dir / f"v{KSERVE_KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text())
    registry = Registry().with_resources([(definitions["$id"], Resource.from_contents(definitions))])
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("model", kserve_models())
def test_inference_service_matches_kserve_schema(inference_services: dict[str, dict[str, Any]], model: str) -> None:
    errors = sorted(kserve_validator().iter_errors(inference_services[model]), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda isvc: isvc["spec"]["predictor"]["model"].update(storageURI="s3://typo"),
        lambda isvc: isvc["spec"]["predictor"]["model"]["resources"].update(limit={"cpu": "1"}),
        lambda isvc: isvc.update(kind="InferenceServices"),
        lambda isvc: isvc["spec"].pop("predictor"),
    ],
    ids=["misspelt-field", "misspelt-kubernetes-field", "wrong-kind", "no-predictor"],
)
def test_the_kserve_schema_rejects_mistakes(inference_services: dict[str, dict[str, Any]], mutate: Any) -> None:
    broken = copy.deepcopy(inference_services["classifier"])
    mutate(broken)
    assert list(kserve_validator().iter_errors(broken))


def test_kserve_schema_records_its_source() -> None:
    schema = json.loads((SCHEMAS / "kserve_v1beta1_inferenceservice.json").read_text())
    assert schema["x-source"]["pypi"].startswith("kserve==")
    assert schema["x-source"]["kubernetes"] == KSERVE_KUBERNETES_VERSION


# --- what the base promises -----------------------------------------------------------------------------------


MODELS_IN_BASE = tuple(m.name for m in models.catalogue() if not m.benchmark_only)
BENCHMARK_MODELS = tuple(m.name for m in models.catalogue() if m.benchmark_only)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_layout(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    kinds = sorted(o["kind"] for o in objects)
    per_box = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert kinds == sorted(["ConfigMap"] * 4 + ["ServiceAccount"] * 2 + ["NetworkPolicy"] * 2
                           + ["PersistentVolumeClaim"] + per_box * (1 + len(MODELS_IN_BASE)))
    # One box per model (its own Deployment, HPA, PDB and Service), named after it, and the bridges' own.
    assert sorted(boxes(objects)) == sorted(MODELS_IN_BASE)
    for kind in per_box:
        names = {o["metadata"]["name"] for o in find_all(objects, kind)}
        assert names == {"api", *(f"box-{m}" for m in MODELS_IN_BASE)}, kind
    # Templates only: no Secret (and so no credential) is ever rendered from the repository.
    assert not find_all(objects, "Secret")
    assert {o["metadata"].get("namespace") for o in objects} == {"photo-serving"}


def test_the_benchmark_overlay_adds_the_benchmark_models_boxes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cpu, benchmark = rendered["cpu"], rendered[BENCHMARK]
    assert BENCHMARK_MODELS  # resnet18
    assert sorted(boxes(benchmark)) == sorted([*MODELS_IN_BASE, *BENCHMARK_MODELS])
    extra = {(o["kind"], o["metadata"]["name"]) for o in benchmark} - {(o["kind"], o["metadata"]["name"]) for o in cpu}
    assert extra == {(kind, f"box-{model}") for model in BENCHMARK_MODELS for kind in
                     ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service")}
    assert {o["metadata"].get("namespace") for o in benchmark} == {"photo-serving"}


def test_the_generated_files_are_up_to_date() -> None:
    from archive_scripts import deploy_config

    assert not deploy_config.stale(), "out of date: python -m archive_scripts.deploy_config"
    assert deploy_config.main(["--check"]) == 0
    # Nothing generated for a model that no longer has a box.
    names = set(models.names())
    assert {p.name for p in (K8S / "models").iterdir() if p.is_dir()} == names
    assert set(kserve_models()) == names


@pytest.mark.parametrize("overlay", [*OVERLAYS, BENCHMARK])
def test_pods_are_hardened(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for deployment in find_all(rendered[overlay], "Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count"
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 1000, name  # the images' USER 1000:1000
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name
        for c in pod["containers"]:
            ctx = c["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (name, c["name"])
            assert not c["image"].endswith(":latest") and ":" in c["image"], (name, c["name"])


def mounts(deployment: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """A container's volume mounts by path, each with its volume."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: {**volumes[m["name"]], "mount": m} for m in container(deployment, name)["volumeMounts"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    for deployment in boxes(objects).values():
        box = mounts(deployment, "torchserve")
        for path in ("/tmp", "/var/lib/serving"):
            assert "emptyDir" in box[path], path
    api = mounts(find(objects, "Deployment", "api"), "bridge")
    assert "emptyDir" in api["/tmp"]
    # One journal for every bridge: a claim every bridge pod mounts (docs/deployment.md).
    claim = find(objects, "PersistentVolumeClaim", api["/var/lib/serving/spool"]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def healthcheck_command(dockerfile: str) -> list[str]:
    """The exec form of a Dockerfile's HEALTHCHECK CMD."""
    found = re.search(r"^HEALTHCHECK [^\n]*\\\n\s+CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert found, "no HEALTHCHECK CMD [...]"
    return json.loads(found[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    bridge = container(find(objects, "Deployment", "api"), "bridge")
    for probe in ("startupProbe", "readinessProbe"):
        assert bridge[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    readiness, liveness = bridge["readinessProbe"], bridge["livenessProbe"]
    # Liveness is the lenient one: it accepts /ping's 503 and gives up only after much longer.
    assert liveness != readiness
    assert "/ping" in " ".join(liveness["exec"]["command"]) and "503" in " ".join(liveness["exec"]["command"])
    assert (liveness["periodSeconds"] * liveness["failureThreshold"]
            > 3 * readiness["periodSeconds"] * readiness["failureThreshold"])
    # A box is ready when its model answers: the model-server image's own health check.
    health = healthcheck_command((REPO_ROOT / "Dockerfile").read_text())
    for model, deployment in boxes(objects).items():
        torchserve = container(deployment, "torchserve")
        for probe in ("startupProbe", "readinessProbe"):
            assert torchserve[probe]["exec"]["command"] == health, (model, probe)
        readiness, liveness = torchserve["readinessProbe"], torchserve["livenessProbe"]
        assert liveness["tcpSocket"] == {"port": "inference"}, model
        assert (liveness["periodSeconds"] * liveness["failureThreshold"]
                > 3 * readiness["periodSeconds"] * readiness["failureThreshold"]), model


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_leaves_time_to_drain(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    for deployment, name, drain_s in ((find(objects, "Deployment", "api"), "bridge", 40),
                                      *((d, "torchserve", 30) for d in boxes(objects).values())):
        pre_stop = container(deployment, name)["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= drain_s + int(pre_stop[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_and_secrets_are_wired(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                             secret_template: dict[str, Any]) -> None:
    from archive_scripts import deploy_config

    objects = rendered[overlay]
    bridge = container(find(objects, "Deployment", "api"), "bridge")
    config_refs = [ref["configMapRef"]["name"] for ref in bridge["envFrom"] if "configMapRef" in ref]
    secret_refs = [ref["secretRef"]["name"] for ref in bridge["envFrom"] if "secretRef" in ref]
    assert config_refs == [configmap_by_prefix(objects, "serving-env")["metadata"]["name"]]
    assert secret_refs == [secret_template["metadata"]["name"]]
    # BRIDGE_ROUTES: the generated routes, from a ConfigMap whose hash rolls the bridges on a change.
    (routes_env,) = [e for e in bridge["env"] if e["name"] == "BRIDGE_ROUTES"]
    ref = routes_env["valueFrom"]["configMapKeyRef"]
    routes = configmap_by_prefix(objects, "serving-routes")
    assert ref["name"] == routes["metadata"]["name"]
    assert json.loads(routes["data"][ref["key"]]) == deploy_config.routes()
    # Every route's key file is the one the bridge mounts.
    keys = mounts(find(objects, "Deployment", "api"), "bridge")["/var/lib/serving/boxes"]
    assert keys["mount"]["readOnly"] is True
    key_map = configmap_by_prefix(objects, "serving-box-keys")
    assert keys["configMap"]["name"] == key_map["metadata"]["name"]
    for route in deploy_config.routes().values():
        assert route["key_file"] == f"/var/lib/serving/boxes/{next(iter(key_map['data']))}"

    box_config = configmap_by_prefix(objects, "serving-box-config")
    assert box_config["data"]["config.properties"] == (K8S / "base" / "box.config.properties").read_text()
    for deployment in boxes(objects).values():
        mount = mounts(deployment, "torchserve")["/app/config.properties"]
        assert mount["mount"]["subPath"] == "config.properties"
        assert mount["configMap"]["name"] == box_config["metadata"]["name"]


def test_the_box_config_is_the_repositorys_with_token_authorization_off() -> None:
    box = read_properties(K8S / "base" / "box.config.properties")
    repo = read_properties(REPO_ROOT / "config.properties")
    assert repo["disable_token_authorization"] == "false" and box["disable_token_authorization"] == "true"
    assert {k: v for k, v in box.items() if k != "disable_token_authorization"} == {
        k: v for k, v in repo.items() if k != "disable_token_authorization"}


@pytest.mark.parametrize("overlay", [*OVERLAYS, BENCHMARK])
def test_service_pdb_and_hpa_of_each_box(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    from archive_scripts.specs import SPECS

    objects = rendered[overlay]
    specs = {spec.name: spec for spec in SPECS}
    for model, deployment in boxes(objects).items():
        name = deployment["metadata"]["name"]
        assert name == f"box-{model}"
        assert BOX_LABELS.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        # The Service, PDB and HPA of this box pick its pods and no other box's.
        others = [d for m, d in boxes(objects).items() if m != model]
        service, pdb = find(objects, "Service", name), find(objects, "PodDisruptionBudget", name)
        for selector in (service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
            assert selects(selector, deployment) and not any(selects(selector, d) for d in others), name
        ports = {p["name"]: p["containerPort"] for p in container(deployment, "torchserve")["ports"]}
        assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
            "inference": (ports["inference"], "inference"), "management": (ports["management"], "management")}

        hpa = find(objects, "HorizontalPodAutoscaler", name)
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
        # On this model's queue time; the target follows its spec's batch delay.
        assert by_type["Pods"]["pods"]["metric"]["name"] == QUEUE_METRIC
        assert by_type["Pods"]["pods"]["metric"]["selector"] == {"matchLabels": {"model_name": model}}
        assert by_type["Pods"]["pods"]["target"] == {
            "type": "AverageValue", "averageValue": str(max(50, 5 * specs[model].workers.max_batch_delay_ms))}
        assert by_type["Resource"]["resource"]["name"] == "cpu"
        # With a PDB allowing one pod down, two replicas keep serving through a node drain.
        assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["maxUnavailable"]
        assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_box_resources_fit_the_specs_workers(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    from archive_scripts.deploy_config import worker_cores
    from archive_scripts.specs import SPECS

    specs = {spec.name: spec for spec in SPECS}
    for model, deployment in boxes(rendered[overlay]).items():
        workers = specs[model].workers
        requests = container(deployment, "torchserve")["resources"]["requests"]
        cpu_m = int(requests["cpu"].removesuffix("m")) if requests["cpu"].endswith("m") else 1000 * int(requests["cpu"])
        # The workers' cores must fit the CPUs the box asks for, with room for TorchServe's frontend; the limit is
        # the request, so workers of "every core" (threads 0) size their threads to exactly what was asked for.
        assert cpu_m > 1000 * worker_cores(specs[model]) >= 1000 * (workers.max_workers * workers.threads or 1), model
        assert container(deployment, "torchserve")["resources"]["limits"]["cpu"] == requests["cpu"], model


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_bridges_service_pdb_and_hpa(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "api")
    assert API_LABELS.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service, pdb = find(objects, "Service", "api"), find(objects, "PodDisruptionBudget", "api")
    assert selects(service["spec"]["selector"], deployment) and selects(pdb["spec"]["selector"]["matchLabels"], deployment)
    assert not any(selects(service["spec"]["selector"], d) for d in boxes(objects).values())
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {"http": (8000, "http")}
    hpa = find(objects, "HorizontalPodAutoscaler", "api")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    # At least two bridges behind the one address, one at a time disrupted.
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["maxUnavailable"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("overlay", [*OVERLAYS, BENCHMARK])
def test_only_the_bridge_and_servingctl_reach_the_boxes(rendered: dict[str, list[dict[str, Any]]],
                                                        overlay: str) -> None:
    objects = rendered[overlay]
    policy = find(objects, "NetworkPolicy", "model-boxes")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(selects(selector, d) for d in boxes(objects).values())
    assert not selects(selector, find(objects, "Deployment", "api"))
    # Every rule names who may come in (no rule open to all), on the box's own ports.
    admitted: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits everyone"
        for port in rule["ports"]:
            admitted.setdefault(port["port"], []).extend(rule["from"])
    for deployment in boxes(objects).values():
        ports = {p["name"]: p["containerPort"] for p in container(deployment, "torchserve")["ports"]}
        assert set(admitted) == set(ports.values())
        for api in ("inference", "management"):
            peers = admitted[ports[api]]
            assert [p["podSelector"]["matchLabels"] for p in peers] == [API_LABELS, {"app.kubernetes.io/name": "servingctl"}]
            assert not any("namespaceSelector" in p or "ipBlock" in p for p in peers), "same namespace only"
            assert selects(peers[0]["podSelector"]["matchLabels"], find(objects, "Deployment", "api"))
        (prometheus,) = admitted[ports["metrics"]]
        assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
        assert "namespaceSelector" in prometheus
    # The bridges' own port is open (clients, the Ingress); nothing else of theirs.
    api_policy = find(objects, "NetworkPolicy", "api")
    assert selects(api_policy["spec"]["podSelector"]["matchLabels"], find(objects, "Deployment", "api"))
    assert {p["port"] for rule in api_policy["spec"]["ingress"] for p in rule["ports"]} == {8000}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_torchserve_binds_the_pod_ip_with_its_metrics_scraped_per_pod(rendered: dict[str, list[dict[str, Any]]],
                                                                     overlay: str) -> None:
    for model, deployment in boxes(rendered[overlay]).items():
        torchserve = container(deployment, "torchserve")
        env = {e["name"]: e for e in torchserve["env"]}
        # The entry point binds TorchServe's listeners to SERVING_TS_HOST: the pod's IP, not 0.0.0.0.
        assert env["SERVING_TS_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, model
        ports = {p["name"]: p["containerPort"] for p in torchserve["ports"]}
        for api in ("inference", "management", "metrics"):
            assert int(env[f"SERVING_TS_{api.upper()}_PORT"]["value"]) == ports[api], (model, api)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"])
        assert annotations["prometheus.io/scrape"] == "true"


def test_prometheus_adapter_publishes_the_hpa_metric() -> None:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == QUEUE_METRIC
    assert rule["seriesQuery"].startswith("ts_queue_latency_microseconds{")
    assert "ts_inference_requests_total" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # The HPAs select their model's series: the selector's labels reach the query.
    assert rule["metricsQuery"].count("<<.LabelMatchers>>") == 2


# --- overlays -------------------------------------------------------------------------------------------------


def model_image(objects: list[dict[str, Any]]) -> str:
    (image,) = {container(d, "torchserve")["image"] for d in boxes(objects).values()}
    return image


def test_cpu_overlay_has_no_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in find_all(rendered["cpu"], "Deployment"):
        assert "nvidia.com/gpu" not in json.dumps(deployment), deployment["metadata"]["name"]
    assert not re.search(r"-cu\d+$", model_image(rendered["cpu"]))


def test_gpu_overlay_gives_every_box_one_gpu_and_the_cuda_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cpu_boxes, gpu_boxes = boxes(rendered["cpu"]), boxes(rendered["gpu"])
    assert sorted(gpu_boxes) == sorted(cpu_boxes)
    for model, deployment in gpu_boxes.items():
        torchserve = container(deployment, "torchserve")
        assert torchserve["resources"]["limits"]["nvidia.com/gpu"] == 1, model
        tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        # Everything else of the box survives the patch: its model, its CPU share, its probes, its hardening.
        cpu_torchserve = container(cpu_boxes[model], "torchserve")
        assert [e for e in torchserve["env"] if e["name"] != "NVIDIA_DRIVER_CAPABILITIES"] == cpu_torchserve["env"]
        assert torchserve["resources"]["requests"]["cpu"] == cpu_torchserve["resources"]["requests"]["cpu"]
        assert torchserve["readinessProbe"] == cpu_torchserve["readinessProbe"]
        assert torchserve["startupProbe"]["failureThreshold"] > cpu_torchserve["startupProbe"]["failureThreshold"]
        assert torchserve["securityContext"]["readOnlyRootFilesystem"] is True
        assert find(rendered["gpu"], "HorizontalPodAutoscaler", deployment["metadata"]["name"])["spec"]["maxReplicas"] >= 2
    assert re.fullmatch(re.escape(model_image(rendered["cpu"])) + r"-cu\d+", model_image(rendered["gpu"]))
    # The bridges have no torch: the CPU overlay's, untouched.
    assert find(rendered["gpu"], "Deployment", "api") == find(rendered["cpu"], "Deployment", "api")


# --- KServe ---------------------------------------------------------------------------------------------------


def kserve_properties(model: str) -> dict[str, str]:
    """deploy/kserve/<model>/config.properties read the way KServe's TorchServe wrapper reads it: every line
    holding '=' is split at the first '=' (comments are not special to it)."""
    keys: dict[str, str] = {}
    for line in (KSERVE / model / "config.properties").read_text().splitlines():
        if "=" in line:
            name, value = line.split("=", 1)
            assert name.strip() not in keys, f"{name.strip()} repeated"
            keys[name.strip()] = value.strip()
    return keys


@pytest.mark.parametrize("model", kserve_models())
def test_kserve_config_survives_the_wrappers_parser(model: str) -> None:
    for line in (KSERVE / model / "config.properties").read_text().splitlines():
        if line.lstrip().startswith("#"):
            assert "=" not in line, f"KServe's wrapper would read this comment as a setting: {line!r}"


@pytest.mark.parametrize("model", kserve_models())
def test_kserve_config_follows_kserves_torchserve_layout(model: str) -> None:
    props = kserve_properties(model)
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["inference_address"].endswith(":8085")
    assert props["management_address"].endswith(":8085")
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["enable_metrics_api"] == "true" and props["metrics_mode"] == "prometheus"
    assert props["service_envelope"] == "kserve"
    # KServe's model server sends no token, so TorchServe's APIs stay on the container's loopback.
    assert props["disable_token_authorization"] == "true"
    for key in ("inference_address", "management_address"):
        assert props[key].startswith("http://127.0.0.1:"), key
    assert props["enable_model_api"] == "false"


def test_kserve_snapshots_serve_the_repositorys_models(load_models: list[str]) -> None:
    from archive_scripts.specs import SPECS

    specs = {spec.archive_name: spec for spec in SPECS}
    served: list[str] = []
    for model in kserve_models():
        snapshot = json.loads(kserve_properties(model)["model_snapshot"])
        models = snapshot["models"]
        assert list(models) == [model], "one model per InferenceService, like one model per box"
        assert snapshot["modelCount"] == sum(len(versions) for versions in models.values())
        for version, entry in models[model].items():
            spec = specs[entry["marName"]]
            assert (model, version) == (spec.name, spec.version)
            assert entry["defaultVersion"] is True
            knobs = {k: entry[k] for k in spec.model_config}
            assert knobs == spec.model_config, f"{entry['marName']}: snapshot knobs differ from model-config.yaml"
            served.append(entry["marName"])
    assert sorted(served) == sorted(load_models), "keep the snapshots in step with config.properties load_models"


def test_inference_services_use_kserves_torchserve_runtime(inference_services: dict[str, dict[str, Any]]) -> None:
    storage = set()
    for name, isvc in inference_services.items():
        assert isvc["metadata"]["name"] == name
        model = isvc["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] == "pytorch"
        assert model["protocolVersion"] == "v1"
        assert re.fullmatch(r"(s3|gs|https|pvc|azure)://[^\s]+", model["storageUri"])
        assert model["storageUri"].endswith(f"/{name}")
        storage.add(model["storageUri"])
        assert model["runtimeVersion"] == "0.12.0"  # the TorchServe the archives were built and gated with
    assert len(storage) == len(inference_services), "each model its own storage prefix"
