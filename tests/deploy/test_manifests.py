"""deploy/k8s (kustomize base + cpu/gpu overlays) and deploy/kserve: rendered with kubectl's built-in
kustomize, every object validated against the Kubernetes JSON schemas of pinned versions (strict: unknown
fields fail), the InferenceService against KServe's schema, and the promises of the layout checked."""

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

from tests.deploy.conftest import (
    K8S,
    KSERVE,
    KSERVE_KUBERNETES_VERSION,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    REPO_ROOT,
    SCHEMAS,
    configmap_by_prefix,
    container,
    find,
    find_all,
    read_properties,
)

POD_LABELS = {"app.kubernetes.io/name": "serving", "app.kubernetes.io/component": "inference"}
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
@pytest.mark.parametrize("overlay", [*OVERLAYS, "base"])
def test_every_rendered_object_is_valid_kubernetes(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                   version: str) -> None:
    assert rendered[overlay]
    for obj in rendered[overlay]:
        validate(obj, version)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_secret_template_is_valid_kubernetes(secret_template: dict[str, Any], version: str) -> None:
    validate(secret_template, version)


def test_the_validator_rejects_an_unknown_field(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = copy.deepcopy(find(rendered["cpu"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ping"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def kserve_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "kserve_v1beta1_inferenceservice.json").read_text())
    k8s_dir = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((k8s_dir / f"v{KSERVE_KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text())
    registry = Registry().with_resources([(definitions["$id"], Resource.from_contents(definitions))])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_inference_service_matches_kserve_schema(inference_service: dict[str, Any]) -> None:
    errors = sorted(kserve_validator().iter_errors(inference_service), key=lambda e: list(e.path))
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
def test_the_kserve_schema_rejects_mistakes(inference_service: dict[str, Any], mutate: Any) -> None:
    broken = copy.deepcopy(inference_service)
    mutate(broken)
    assert list(kserve_validator().iter_errors(broken))


def test_kserve_schema_records_its_source() -> None:
    schema = json.loads((SCHEMAS / "kserve_v1beta1_inferenceservice.json").read_text())
    assert schema["x-source"]["pypi"].startswith("kserve==")
    assert schema["x-source"]["kubernetes"] == KSERVE_KUBERNETES_VERSION


# --- what the base promises -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_layout(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["ConfigMap"] * 3 + ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                                                 "PodDisruptionBudget", "Service", "ServiceAccount"])
    # Templates only: no Secret (and so no credential) is ever rendered from the repository.
    assert not find_all(objects, "Secret")
    assert {o["metadata"].get("namespace") for o in objects} == {"photo-serving"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serving_pod_is_hardened(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployment = find(rendered[overlay], "Deployment", "serving")
    pod = deployment["spec"]["template"]["spec"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000  # the image's USER 1000:1000
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    for c in pod["containers"]:
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, c["name"]
        assert ctx["allowPrivilegeEscalation"] is False, c["name"]
        assert ctx["capabilities"]["drop"] == ["ALL"], c["name"]
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        assert not c["image"].endswith(":latest") and ":" in c["image"], c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_paths_are_empty_dirs(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployment = find(rendered[overlay], "Deployment", "serving")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(deployment, "serving")["volumeMounts"]}
    for path in ("/tmp", "/var/lib/serving", "/var/lib/serving/spool"):
        assert "emptyDir" in volumes[mounts[path]], path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    serving = container(find(rendered[overlay], "Deployment", "serving"), "serving")
    for probe in ("startupProbe", "readinessProbe"):
        assert serving[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    readiness, liveness = serving["readinessProbe"], serving["livenessProbe"]
    # Liveness is the lenient one: it accepts /ping's 503 and gives up only after much longer.
    assert liveness != readiness
    assert "/ping" in " ".join(liveness["exec"]["command"]) and "503" in " ".join(liveness["exec"]["command"])
    assert (liveness["periodSeconds"] * liveness["failureThreshold"]
            > 3 * readiness["periodSeconds"] * readiness["failureThreshold"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_leaves_time_to_drain(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    deployment = find(rendered[overlay], "Deployment", "serving")
    pre_stop = container(deployment, "serving")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 40 + int(pre_stop[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_and_secrets_are_wired(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                             secret_template: dict[str, Any]) -> None:
    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "serving")
    serving = container(deployment, "serving")
    config_refs = [ref["configMapRef"]["name"] for ref in serving["envFrom"] if "configMapRef" in ref]
    secret_refs = [ref["secretRef"]["name"] for ref in serving["envFrom"] if "secretRef" in ref]
    assert config_refs == [configmap_by_prefix(objects, "serving-env")["metadata"]["name"]]
    assert secret_refs == [secret_template["metadata"]["name"]]

    torchserve_config = configmap_by_prefix(objects, "serving-torchserve-config")
    assert torchserve_config["data"]["config.properties"] == (REPO_ROOT / "config.properties").read_text()
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in serving["volumeMounts"] if m["mountPath"] == "/app/config.properties"]
    assert mount["subPath"] == "config.properties"
    assert volumes[mount["name"]]["configMap"]["name"] == torchserve_config["metadata"]["name"]


def test_the_base_copy_of_config_properties_is_the_repositorys() -> None:
    assert (K8S / "base" / "config.properties").read_text() == (REPO_ROOT / "config.properties").read_text(), (
        "deploy/k8s/base/config.properties must be a copy of config.properties: cp config.properties deploy/k8s/base/"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_and_policy_select_the_pods(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    labels = find(objects, "Deployment", "serving")["spec"]["template"]["metadata"]["labels"]
    assert POD_LABELS.items() <= labels.items()
    service = find(objects, "Service", "serving")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        "http": (8000, "http"), "metrics": (9082, "metrics")}
    pdb = find(objects, "PodDisruptionBudget", "serving")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = find(objects, "NetworkPolicy", "serving")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {8000, 9082}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_scales_on_queue_time_with_cpu_fallback(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objects = rendered[overlay]
    hpa = find(objects, "HorizontalPodAutoscaler", "serving")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serving"}
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert by_type["Pods"]["pods"]["metric"]["name"] == QUEUE_METRIC
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    # With a PDB allowing one pod down, two replicas keep serving through a node drain.
    pdb = find(objects, "PodDisruptionBudget", "serving")
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["maxUnavailable"]
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_prometheus_adapter_publishes_the_hpa_metric() -> None:
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == QUEUE_METRIC
    assert rule["seriesQuery"].startswith("ts_queue_latency_microseconds{")
    assert "ts_inference_requests_total" in rule["metricsQuery"]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_sidecar_republishes_only_torchserve_metrics(rendered: dict[str, list[dict[str, Any]]],
                                                             overlay: str) -> None:
    objects = rendered[overlay]
    deployment = find(objects, "Deployment", "serving")
    sidecar = container(deployment, "metrics-proxy")
    (port,) = sidecar["ports"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    nginx = configmap_by_prefix(objects, "serving-metrics-proxy")["data"]["nginx.conf"]
    assert re.search(rf"listen {port['containerPort']};", nginx)
    metrics_address = read_properties(REPO_ROOT / "config.properties")["metrics_address"]
    assert re.findall(r"proxy_pass (\S+);", nginx) == [f"{metrics_address}/metrics"]


# --- overlays -------------------------------------------------------------------------------------------------


def image_of(objects: list[dict[str, Any]]) -> str:
    return container(find(objects, "Deployment", "serving"), "serving")["image"]


def test_cpu_overlay_has_no_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    serving = container(find(rendered["cpu"], "Deployment", "serving"), "serving")
    assert "nvidia.com/gpu" not in json.dumps(serving["resources"])
    assert not re.search(r"-cu\d+$", image_of(rendered["cpu"]))


def test_gpu_overlay_asks_for_one_gpu_and_the_cuda_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deployment = find(rendered["gpu"], "Deployment", "serving")
    serving = container(deployment, "serving")
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu_image, gpu_image = image_of(rendered["cpu"]), image_of(rendered["gpu"])
    assert re.fullmatch(re.escape(cpu_image) + r"-cu\d+", gpu_image)
    tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    # Everything else of the base survives the patch.
    assert serving["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert serving["securityContext"]["readOnlyRootFilesystem"] is True


# --- KServe ---------------------------------------------------------------------------------------------------


def kserve_properties() -> dict[str, str]:
    """deploy/kserve/config.properties read the way KServe's TorchServe wrapper reads it: every line holding
    '=' is split at the first '=' (comments are not special to it)."""
    keys: dict[str, str] = {}
    for line in (KSERVE / "config.properties").read_text().splitlines():
        if "=" in line:
            name, value = line.split("=", 1)
            assert name.strip() not in keys, f"{name.strip()} repeated"
            keys[name.strip()] = value.strip()
    return keys


def test_kserve_config_survives_the_wrappers_parser() -> None:
    for line in (KSERVE / "config.properties").read_text().splitlines():
        if line.lstrip().startswith("#"):
            assert "=" not in line, f"KServe's wrapper would read this comment as a setting: {line!r}"


def test_kserve_config_follows_kserves_torchserve_layout() -> None:
    props = kserve_properties()
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


def test_kserve_snapshot_serves_the_repositorys_models(load_models: list[str]) -> None:
    from archive_scripts.specs import SPECS

    snapshot = json.loads(kserve_properties()["model_snapshot"])
    models = snapshot["models"]
    assert snapshot["modelCount"] == sum(len(versions) for versions in models.values())
    served = {entry["marName"]: (name, version, entry) for name, versions in models.items()
              for version, entry in versions.items()}
    assert sorted(served) == sorted(load_models), "keep the snapshot in step with config.properties load_models"
    specs = {spec.archive_name: spec for spec in SPECS}
    for mar, (name, version, entry) in served.items():
        spec = specs[mar]
        assert (name, version) == (spec.name, spec.version)
        assert entry["defaultVersion"] is True
        knobs = {k: entry[k] for k in spec.model_config}
        assert knobs == spec.model_config, f"{mar}: snapshot knobs differ from model-config.yaml"


def test_inference_service_uses_kserves_torchserve_runtime(inference_service: dict[str, Any]) -> None:
    model = inference_service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v1"
    assert re.fullmatch(r"(s3|gs|https|pvc|azure)://[^\s]+", model["storageUri"])
    assert model["runtimeVersion"] == "0.12.0"  # the TorchServe the archives were built and gated with
