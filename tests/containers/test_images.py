"""The two images built and run for real under Docker (``make test-containers``): non-root users, read-only root
filesystems, health checks that mean ready, and an API image with no torch and no Java.

Every container runs with ``--network host`` on free ports and binds 127.0.0.1 (dockerd runs without a bridge
network: stack/docker.py), and is removed afterwards. PostgreSQL and InfluxDB are not part of this module: the
bridge is pointed at closed ports and spools its records, which /ping reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack import docker as docker_stack
from stack.services.faults import free_ports
from stack.torchserve import read_keys

pytestmark = pytest.mark.containers

UID = "1000"
MODEL = "price_v1.0.mar"  # one model keeps the box quick to start; SERVING_MODELS takes a list
HEALTHY_WITHIN_S = 300.0
API_MAX_BYTES = 400_000_000  # torch alone is gigabytes: a bigger API image has pulled in the ML tier


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Debian's docker CLI (stack.docker), output captured."""
    return docker_stack.docker(*args, check=check)


def wait_healthy(name: str) -> float:
    """Seconds from now until Docker reports the container healthy; fails with its log when it never is."""
    started = time.monotonic()
    while time.monotonic() - started < HEALTHY_WITHIN_S:
        state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
        if state["Health"]["Status"] == "healthy":
            return time.monotonic() - started
        if not state["Running"] or state["Health"]["Status"] == "unhealthy":
            break
        time.sleep(0.5)
    logs = docker("logs", "--tail", "60", name, check=False)
    pytest.fail(f"{name} not healthy: {json.dumps(state.get('Health'))[-2000:]}\n{logs.stdout}{logs.stderr}")


def start(name: str, image: str, *args: str) -> None:
    """docker run -d, read-only root, no capabilities, host network; removed at the end of the module."""
    docker("rm", "-f", name, check=False)
    docker("run", "--detach", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *args, image)


@dataclass(frozen=True)
class ModelBox:
    """A running serving-model container."""

    name: str
    key_dir: Path
    inference: int
    management: int
    metrics: int
    healthy_after_s: float


@dataclass(frozen=True)
class ApiBox:
    """A running serving-api container."""

    name: str
    port: int
    healthy_after_s: float


@pytest.fixture(scope="module")
def images() -> None:
    """Both images, built when missing or out of date (BuildKit's cache makes an unchanged build quick)."""
    assert docker_stack.images() == 0


@pytest.fixture(scope="module")
def model_box(images: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelBox]:
    """One model server box serving MODEL; its key dir is a host directory the API container mounts read-only."""
    key_dir = tmp_path_factory.mktemp("model-box-keys")
    os.chown(key_dir, int(UID), int(UID))
    key_dir.chmod(0o750)
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    name = f"serving-model-test-{inference}"
    start(name, docker_stack.MODEL_IMAGE,
          "--tmpfs", f"/var/lib/serving:uid={UID},gid={UID},mode=0750",
          "--volume", f"{key_dir}:/var/lib/serving/torchserve",
          "--env", f"SERVING_MODELS={MODEL}",
          "--env", f"SERVING_TS_INFERENCE_PORT={inference}", "--env", f"SERVING_TS_MANAGEMENT_PORT={management}",
          "--env", f"SERVING_TS_METRICS_PORT={metrics}", "--env", f"SERVING_TS_GRPC_INFERENCE_PORT={grpc_inference}",
          "--env", f"SERVING_TS_GRPC_MANAGEMENT_PORT={grpc_management}")
    try:
        yield ModelBox(name, key_dir, inference, management, metrics, wait_healthy(name))
    finally:
        docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def api_box(model_box: ModelBox) -> Iterator[ApiBox]:
    """One API container in front of model_box, with the box's key dir mounted read-only."""
    port, closed = free_ports(2)
    name = f"serving-api-test-{port}"
    start(name, docker_stack.API_IMAGE,
          "--volume", f"{model_box.key_dir}:/var/lib/serving/torchserve:ro",
          "--env", "BRIDGE_HOST=127.0.0.1", "--env", f"BRIDGE_PORT={port}",
          "--env", f"BRIDGE_TORCHSERVE_URL=http://127.0.0.1:{model_box.inference}",
          "--env", f"BRIDGE_TORCHSERVE_MANAGEMENT_URL=http://127.0.0.1:{model_box.management}",
          "--env", f"BRIDGE_TORCHSERVE_METRICS_URL=http://127.0.0.1:{model_box.metrics}/metrics",
          # Nothing listens there: the bridge starts anyway and spools its records.
          "--env", f"BRIDGE_PG_DSN=postgresql://postgres@127.0.0.1:{closed}/serving",
          "--env", f"BRIDGE_INFLUX_PORT={closed}")
    try:
        yield ApiBox(name, port, wait_healthy(name))
    finally:
        docker("rm", "-f", name, check=False)


def test_model_box_is_healthy_only_with_its_models_ready(model_box: ModelBox) -> None:
    print(f"\n{docker_stack.MODEL_IMAGE}: healthy {model_box.healthy_after_s:.1f} s after docker run ({MODEL})")
    check = docker("exec", model_box.name, "python", "/usr/local/lib/serving/model_server_health.py")
    assert check.stdout.strip() == "ready: price"
    keys = read_keys(model_box.key_dir / "key_file.json")
    ping = urllib.request.Request(f"http://127.0.0.1:{model_box.inference}/ping",
                                  headers={"Authorization": f"Bearer {keys.inference}"})
    with urllib.request.urlopen(ping, timeout=5) as response:
        assert response.status == 200
    # TorchServe's token authorization is on in the box: no key, no management API (its answer: 400, not 401).
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{model_box.management}/models", timeout=5)
    assert refused.value.code == 400 and "InvalidKeyException" in refused.value.read().decode()


def test_model_box_listens_on_loopback_only(model_box: ModelBox) -> None:
    config = (model_box.key_dir / "config.properties").read_text()
    assert f"inference_address=http://127.0.0.1:{model_box.inference}\n" in config
    assert f"management_address=http://127.0.0.1:{model_box.management}\n" in config
    assert f"load_models={MODEL}\n" in config


def test_api_box_is_healthy_when_its_model_box_answers(api_box: ApiBox) -> None:
    print(f"\n{docker_stack.API_IMAGE}: healthy {api_box.healthy_after_s:.1f} s after docker run")
    with urllib.request.urlopen(f"http://127.0.0.1:{api_box.port}/ping", timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "Healthy" and body["torchserve"] == "Healthy"


@pytest.mark.parametrize("which", ["model", "api"])
def test_runs_as_non_root_on_a_read_only_root(which: str, model_box: ModelBox, api_box: ApiBox) -> None:
    name = model_box.name if which == "model" else api_box.name
    assert docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
    assert docker("exec", name, "id", "-u").stdout.strip() == UID
    for path in ("/app/written", "/written"):
        attempt = docker("exec", name, "touch", path, check=False)
        assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr
    image = docker_stack.MODEL_IMAGE if which == "model" else docker_stack.API_IMAGE
    assert docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == f"{UID}:{UID}"


def test_api_image_has_no_torch_and_no_java(images: None) -> None:
    probe = "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'numpy', 'ts') if u.find_spec(m)])"
    found = docker("run", "--rm", "--network", "none", "--entrypoint", "python", docker_stack.API_IMAGE, "-c", probe)
    assert found.stdout.strip() == "[]"
    java = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", docker_stack.API_IMAGE, "-c",
                  "command -v java || ls /usr/lib/jvm", check=False)
    assert java.returncode != 0, java.stdout
    size = int(docker("image", "inspect", "--format", "{{.Size}}", docker_stack.API_IMAGE).stdout)
    print(f"\n{docker_stack.API_IMAGE}: {size / 1e6:.0f} MB")
    assert size < API_MAX_BYTES
