"""``python -m archive_scripts.deploy_config [--check]``: every file that repeats the specs' facts, from the specs.

The model catalogue ``stack/models.json`` (archive_scripts.model_catalogue: what the bridge, servingctl and the
tests read), ``config.properties``' ``load_models`` (every spec's archive), the README's table of models, and
``deploy/compose.yaml``'s model parts (the routes, a box per model and replica, their key volumes; between its
``# >>> generated`` markers, the rest of the file is written by hand). Then one box per model, each from its spec:

- ``deploy/k8s/models/<model>/``: the kustomization naming deploy/k8s/box (the template) ``box-<model>``, and
  its patches: the archive (``SERVING_MODELS``), resources sized to workers × threads, the HPA's queue-time
  target (5 × maxBatchDelay) and its model; ``deploy/k8s/models/kustomization.yaml`` lists the boxes the base
  runs (the benchmark-only boxes are added by overlays/benchmark);
- ``deploy/k8s/base/routes.json``: the bridge's ``BRIDGE_ROUTES`` (stack/routing.py), each model to its box's
  Service; ``deploy/k8s/base/box.config.properties``: the repository's config.properties with TorchServe's
  token authorization off (docs/deployment.md: the NetworkPolicy admits only the bridge and servingctl);
- ``deploy/kserve/<model>/``: an InferenceService and its KServe ``config.properties``, whose ``model_snapshot``
  spells out the model's worker and batching settings (KServe's TorchServe reads no model-config.yaml).

``--check`` changes nothing and exits 1 when a file is out of date (tests/deploy runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from archive_scripts import compose_models, model_catalogue
from archive_scripts.regions import replace_region
from archive_scripts.specs import SPECS, ArchiveSpec
from stack.models import CATALOGUE, Model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
KSERVE = DEPLOY / "kserve"
KSERVE_TEMPLATE = KSERVE / "config.template.properties"
SNAPSHOT_KEY = "model_snapshot="

CONFIG_PROPERTIES = REPO_ROOT / "config.properties"
COMPOSE = DEPLOY / "compose.yaml"
README = REPO_ROOT / "README.md"
# Every box has its own pod, so every box listens on the image's default ports (deploy/k8s/box/deployment.yaml).
BOX_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
# TorchServe's token check is off in Kubernetes; the bridge's client still reads a key file per box, so the
# routes name this fixed one (a ConfigMap), whose keys TorchServe ignores. It is not a secret.
TOKEN_OFF_KEY_FILE = "/var/lib/serving/boxes/token-auth-off.json"
TOKEN_OFF_KEYS = {name: {"key": "token-authorization-is-off"} for name in ("management", "inference", "API")}

# A box's resources: TorchServe's frontend (JVM, -Xmx512m) plus the workers' cores, and memory per worker. Workers
# whose spec says threads 0 share the box's cores, each batch taking its share among the busy workers
# (handlers/box_load.py): the box asks for BOX_CORES for them, and its CPU limit is its request, so the workers size
# their threads to exactly that (handlers/batch_handler.py usable_cores).
BOX_CORES = 2
FRONTEND_CPU_M = 500
FRONTEND_MEMORY_MI = 1024
WORKER_MEMORY_MI = 768
QUEUE_TARGET_BATCH_DELAYS = 5  # a queue wait well above maxBatchDelay means the workers are saturated
# ... and well above one batch's time: with a 1 ms delay, 5 ms of queue is a single batch's wait, not saturation
QUEUE_TARGET_MIN_MS = 50
MIN_REPLICAS, MAX_REPLICAS = 2, 10
KSERVE_STORAGE = "s3://photo-serving-models/kserve/0.1.0"
# KServe's TorchServe runtime plus the engines' runtimes (docker/kserve-runtime.Dockerfile), built where the
# cluster's registry is.
KSERVE_IMAGE = "photo-serving/torchserve-kfs-engines:0.12.0"
NAMESPACE = "photo-serving"


def load_models(config: Path = CONFIG_PROPERTIES) -> list[str]:
    """The archives a TorchServe ``config.properties`` loads at start (``load_models``)."""
    for line in config.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "load_models":
            return [name.strip() for name in value.split(",") if name.strip()]
    return []


def kserve_snapshot(archives: list[str]) -> str:
    """The ``model_snapshot`` value serving ``archives``: each spec's model-config.yaml settings, spec order."""
    models: dict[str, dict[str, dict[str, object]]] = {}
    for spec in SPECS:
        if spec.archive_name in archives:
            entry = {"defaultVersion": True, "marName": spec.archive_name, **spec.model_config}
            models.setdefault(spec.name, {})[spec.version] = entry
    unknown = set(archives) - {spec.archive_name for spec in SPECS}
    if unknown:
        raise ValueError(f"load_models names archives no spec builds: {sorted(unknown)}")
    snapshot = {"name": "startup.cfg", "modelCount": len(archives), "models": models}
    return json.dumps(snapshot, separators=(",", ":"))


def boxes() -> list[ArchiveSpec]:
    """The spec of each model's box (Kubernetes: one Deployment per model, scaled by its HPA), in the specs' order."""
    return list(SPECS)


def box_name(spec: ArchiveSpec) -> str:
    """The box's Deployment, Service, HPA and PDB name."""
    return f"box-{spec.name}"


def worker_cores(spec: ArchiveSpec) -> int:
    """The cores a box's workers use together: BOX_CORES when they share every core (threads 0), else workers ×
    threads."""
    return spec.workers.max_workers * spec.workers.threads if spec.workers.threads else BOX_CORES


def resources(spec: ArchiveSpec) -> dict[str, dict[str, str]]:
    """Requests and limits of one box: the frontend plus its workers' cores (limits = requests)."""
    workers = spec.workers.max_workers
    cpu_m = FRONTEND_CPU_M + 1000 * worker_cores(spec)
    memory = f"{FRONTEND_MEMORY_MI + WORKER_MEMORY_MI * workers}Mi"
    return {"requests": {"cpu": f"{cpu_m}m", "memory": memory}, "limits": {"cpu": f"{cpu_m}m", "memory": memory}}


def queue_target_ms(spec: ArchiveSpec) -> int:
    """The HPA's target queue wait per request for the box of ``spec``: 5 batch delays, at least QUEUE_TARGET_MIN_MS."""
    return max(QUEUE_TARGET_MIN_MS, QUEUE_TARGET_BATCH_DELAYS * spec.workers.max_batch_delay_ms)


def routes() -> dict[str, dict[str, Any]]:
    """BRIDGE_ROUTES / SERVINGCTL_ROUTES in Kubernetes: each model to its box's Service (same namespace)."""
    out: dict[str, dict[str, Any]] = {}
    for spec in boxes():
        service = box_name(spec)
        route: dict[str, Any] = {
            "url": f"http://{service}:{BOX_PORTS['inference']}",
            "management_url": f"http://{service}:{BOX_PORTS['management']}",
            # Prometheus scrapes every pod; through the Service the bridge would see one replica at random.
            "metrics_url": None,
            "key_file": TOKEN_OFF_KEY_FILE,
        }
        if spec.serving.benchmark_only:
            route["required"] = False
        out[spec.name] = route
    return out


def _yaml(header: str, *docs: Any) -> str:
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = "---\n".join(yaml.safe_dump(doc, sort_keys=False, width=120) for doc in docs)
    return comment + body


def _generated(what: str) -> str:
    return f"GENERATED by `python -m archive_scripts.deploy_config` from {what}: do not edit (a test checks)."


def box_files(spec: ArchiveSpec) -> dict[str, str]:
    """deploy/k8s/models/<model>/: the box template named and patched for ``spec``."""
    name = box_name(spec)
    instance = {"app.kubernetes.io/instance": name}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../../box"],
        "nameSuffix": f"-{spec.name}",
        "labels": [{"pairs": instance, "includeSelectors": True}],
        "patches": [
            {"path": "deployment.patch.yaml"},
            {"path": "hpa.patch.yaml", "target": {"kind": "HorizontalPodAutoscaler", "name": "box"}},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "box"},
        "spec": {"template": {"spec": {
            "topologySpreadConstraints": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": instance}},
            ],
            "containers": [{
                "name": "torchserve",
                "env": [{"name": "SERVING_MODELS", "value": spec.archive_name}],
                "resources": resources(spec),
            }],
        }}},
    }
    hpa = [
        {"op": "replace", "path": "/spec/metrics/0/pods/metric/selector/matchLabels/model_name", "value": spec.name},
        {"op": "replace", "path": "/spec/metrics/0/pods/target/averageValue", "value": str(queue_target_ms(spec))},
    ]
    workers = spec.workers
    about = f"archive_scripts/specs.py ({spec.name} {spec.version})"
    return {
        "kustomization.yaml": _yaml(f"{_generated(about)}\nThe box {name}: deploy/k8s/box with this model's patches.",
                                    kustomization),
        "deployment.patch.yaml": _yaml(
            f"{_generated(about)}\n{spec.archive_name}: {workers.max_workers} worker(s) sharing {worker_cores(spec)}"
            f" core(s) ({spec.accelerator.engine}) + TorchServe's frontend.",
            deployment,
        ),
        "hpa.patch.yaml": _yaml(
            f"{_generated(about)}\nmaxBatchDelay is {workers.max_batch_delay_ms} ms: a queue wait of "
            f"{queue_target_ms(spec)} ms per request on average adds replicas.",
            hpa,
        ),
    }


def config_properties() -> str:
    """config.properties with ``load_models`` naming every spec's archive (the local stack serves them all)."""
    lines = CONFIG_PROPERTIES.read_text().splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if line.startswith("load_models=")]
    lines[index] = f"load_models={','.join(spec.archive_name for spec in SPECS)}\n"
    return "".join(lines)


def readme_table(models: tuple[Model, ...]) -> str:
    """The README's table of models, from the catalogue."""
    rows = ["| model | answers (kind: /v2 outputs) | engine | boxes | run by a job by default | what it is |",
            "|---|---|---|---|---|---|"]
    for m in models:
        boxes = f"{m.boxes}" + (" (benchmark profile)" if m.benchmark_only else "")
        outputs = ", ".join(o.name for o in m.outputs)
        rows.append(f"| `{m.name}` {m.version} | {m.kind}: {outputs} | {m.engine} | {boxes} | "
                    f"{'yes' if m.in_jobs else 'no'} | {m.description} |")
    return "\n".join(rows) + "\n"


def box_config(config: str) -> str:
    """deploy/k8s/base/box.config.properties: the repository's config.properties, token authorization off."""
    lines = config.splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if line.startswith("disable_token_authorization=")]
    lines[index] = (
        "# Kubernetes: off. Several replicas behind one Service cannot share TorchServe's per-process keys; the\n"
        "# NetworkPolicy `model-boxes` admits only the bridge and servingctl (docs/deployment.md).\n"
        "disable_token_authorization=true\n"
    )
    head = "".join(f"# {line}\n" for line in _generated("config.properties").splitlines())
    return head + "".join(lines)


def kserve_config(spec: ArchiveSpec) -> str:
    """deploy/kserve/<model>/config.properties: the template with this model's snapshot."""
    return (
        KSERVE_TEMPLATE.read_text().rstrip("\n") + "\n\n"
        f"# {_generated('archive_scripts/specs.py and config.template.properties')}\n"
        f"{SNAPSHOT_KEY}{kserve_snapshot([spec.archive_name])}\n"
    )


def inference_service(spec: ArchiveSpec) -> str:
    """deploy/kserve/<model>/inferenceservice.yaml: KServe's TorchServe runtime serving this model alone."""
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/part-of": NAMESPACE, "app.kubernetes.io/instance": box_name(spec)},
            "annotations": {
                "serving.kserve.io/deploymentMode": "RawDeployment",
                "serving.kserve.io/enable-prometheus-scraping": "true",
            },
        },
        "spec": {"predictor": {
            "serviceAccountName": "photo-serving-models",
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "scaleMetric": "cpu",
            "scaleTarget": 70,
            "model": {
                "modelFormat": {"name": "pytorch"},
                "protocolVersion": "v1",
                "runtimeVersion": "0.12.0",
                "image": KSERVE_IMAGE,  # the runtime's own image lacks the engines (docker/kserve-runtime.Dockerfile)
                "storageUri": f"{KSERVE_STORAGE}/{spec.name}",
                "resources": resources(spec),
            },
        }},
    }
    header = (
        f"{_generated(f'archive_scripts/specs.py ({spec.name} {spec.version})')}\n"
        f"KServe's TorchServe runtime serving {spec.archive_name} alone (engine {spec.accelerator.engine}: the image\n"
        f"{KSERVE_IMAGE} adds the engines' runtimes), sized like the box box-{spec.name}.\n"
        f"{KSERVE_STORAGE}/{spec.name}/config/config.properties <- deploy/kserve/{spec.name}/config.properties\n"
        f"{KSERVE_STORAGE}/{spec.name}/model-store/{spec.archive_name} <- model_store/{spec.archive_name}"
    )
    return _yaml(header, isvc)


def outputs() -> dict[Path, str]:
    """Every generated file and the text it should hold."""
    specs = boxes()
    out: dict[Path, str] = {}
    for spec in specs:
        for name, text in box_files(spec).items():
            out[K8S / "models" / spec.name / name] = text
        out[KSERVE / spec.name / "config.properties"] = kserve_config(spec)
        out[KSERVE / spec.name / "inferenceservice.yaml"] = inference_service(spec)
    benchmark_only = sorted(spec.name for spec in specs if spec.serving.benchmark_only)
    models = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
              "resources": [spec.name for spec in specs if not spec.serving.benchmark_only]}
    out[K8S / "models" / "kustomization.yaml"] = _yaml(
        f"{_generated('archive_scripts/specs.py')}\nThe boxes the base runs; "
        f"{', '.join(benchmark_only) or 'none'}: overlays/benchmark.",
        models,
    )
    out[K8S / "base" / "routes.json"] = json.dumps(routes(), indent=2) + "\n"
    out[K8S / "base" / "token-auth-off.json"] = json.dumps(TOKEN_OFF_KEYS, indent=2) + "\n"
    out[CONFIG_PROPERTIES] = config_properties()
    out[K8S / "base" / "box.config.properties"] = box_config(out[CONFIG_PROPERTIES])
    catalogue = model_catalogue.models()
    out[CATALOGUE] = model_catalogue.catalogue_text(catalogue)
    out[COMPOSE] = compose_models.compose(COMPOSE.read_text(), catalogue)
    out[README] = replace_region(README.read_text(), "models", readme_table(catalogue), comment=("<!--", "-->"))
    return out


def stale() -> list[Path]:
    """Generated files whose content differs from what the specs give."""
    return [path for path, text in outputs().items() if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    """Write the generated deploy files, or with ``--check`` report whether they are current."""
    parser = argparse.ArgumentParser(prog="python -m archive_scripts.deploy_config", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    wanted = outputs()
    out_of_date = stale()
    for path in out_of_date:
        if args.check:
            print(f"{path.relative_to(REPO_ROOT)} is out of date: python -m archive_scripts.deploy_config")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(wanted[path])
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    if not out_of_date:
        print(f"{len(wanted)} generated deploy files are up to date")
    return 1 if out_of_date and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
