"""The topology of deploy/compose.yaml run for real (``make test-containers``): a balancer, two bridges and a
model server box per model (classifier on two boxes, similar, price), each in its own container, on loopback.

The compose file runs as it is, under its own project name and a port prefix (SERVING_PORT_PREFIX: 4 → 48000,
48180, ...) so it never meets the shared local stack; PostgreSQL and InfluxDB are private instances of the service
harness (stack/services) on the prefixed ports, since their official images cannot be pulled here. Figures are
printed (``pytest -s``) and kept in ``.state/containers/figures.json``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from archive_scripts.compose_models import layout, ports
from stack import docker as docker_stack
from stack import models
from stack.services import InfluxDB, PrivatePostgres
from stack.settings import REPO_ROOT, StackSettings
from stack.torchserve import read_keys

pytestmark = pytest.mark.containers

PROJECT = "photo-serving-test"
COMPOSE_FILE = REPO_ROOT / "deploy" / "compose.yaml"
# The boxes a plain `up` starts, and their ports, as deploy/compose.yaml is generated (archive_scripts.compose_models).
LAYOUT = [box for box in layout(models.catalogue()) if not box.model.benchmark_only]
MODELS = tuple(dict.fromkeys(box.model.name for box in LAYOUT))
BOX_PORTS = {box.model.name: ports(layout(models.catalogue()), box)["inference"] for box in LAYOUT if box.replica == 1}
(REPLICA,) = [box for box in LAYOUT if box.replica == 2]  # the classifier's second box (Serving(boxes=2))
REPLICA_PORT = ports(layout(models.catalogue()), REPLICA)["inference"]
SERVICES = ("balancer", "bridge-1", "bridge-2", *(box.name for box in LAYOUT))
HEALTHY_WITHIN_S = 300.0
ADOPT_AFTER_S = 3
FIGURES = REPO_ROOT / ".state" / "containers" / "figures.json"


def figure(name: str, value: Any) -> None:
    """Print one figure and keep it in FIGURES."""
    print(f"\nFIGURE {name}: {value}")
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    known[name] = value
    FIGURES.write_text(json.dumps(known, indent=2, sort_keys=True))


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Debian's docker CLI (stack.docker), output captured."""
    return docker_stack.docker(*args, check=check)


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ports_of(prefix: str) -> list[int]:
    base = [8000, 8001, 8002, 5432, 8086, 8088]
    for port in (*BOX_PORTS.values(), REPLICA_PORT):
        # inference, management, metrics, gRPC x2, the first workers' sockets
        base += [port, port + 1, port + 2, port - 1010, port - 1009, port + 1000, port + 1001]
    return [int(f"{prefix}{p}") for p in base]


def photo() -> bytes:
    """A JPEG of a cat (scikit-image's sample), as a client would send."""
    from PIL import Image
    from skimage import data

    out = io.BytesIO()
    Image.fromarray(data.chelsea()).save(out, format="JPEG", quality=90)
    return out.getvalue()


@dataclass
class Topology:
    """The running project: its ports, containers, databases and how to drive compose."""

    prefix: str
    env_file: Path
    postgres: PrivatePostgres
    influx: InfluxDB
    healthy_after_s: dict[str, float] = field(default_factory=dict)

    def port(self, port: int) -> int:
        return int(f"{self.prefix}{port}")

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{self.port(port)}"

    def compose(self, *args: str, check: bool = True, override: Path | None = None) -> subprocess.CompletedProcess[str]:
        files = [str(COMPOSE_FILE), *([str(override)] if override else [])]
        command = [str(Path(sys.executable).parent / "docker-compose"), "-p", PROJECT, "--env-file",
                   str(self.env_file), *(arg for f in files for arg in ("-f", f)), *args]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    @staticmethod
    def container(service: str) -> str:
        return f"{PROJECT}-{service}-1"

    def state(self, service: str) -> dict[str, Any]:
        return dict(json.loads(docker("inspect", "--format", "{{json .State}}", self.container(service)).stdout))

    def restarts(self, service: str) -> int:
        return int(docker("inspect", "--format", "{{.RestartCount}}", self.container(service)).stdout)

    def wait_healthy(self, service: str, timeout_s: float = HEALTHY_WITHIN_S) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            state = self.state(service)
            if state.get("Health", {}).get("Status") == "healthy":
                return time.monotonic() - started
            time.sleep(0.5)
        logs = docker("logs", "--tail", "40", self.container(service), check=False)
        pytest.fail(f"{service} not healthy in {timeout_s:.0f} s: {state}\n{logs.stdout}{logs.stderr}")

    def key_file(self, model: str) -> Path:
        """The host's view of a box's key volume (root reads it; the bridges mount it read-only)."""
        mountpoint = docker("volume", "inspect", "--format", "{{.Mountpoint}}", f"{PROJECT}_{model}-keys").stdout
        return Path(mountpoint.strip()) / "key_file.json"

    def recorded(self, request_ids: list[str]) -> set[str]:
        rows = self.postgres.query("SELECT request_id::text FROM inferences WHERE request_id::text = ANY(%s)",
                                   (request_ids,))
        return {row[0] for row in rows}


@pytest.fixture(scope="module")
def topology() -> Iterator[Topology]:
    """Images built, private databases up, the compose project started; everything removed afterwards."""
    assert docker_stack.images() == 0
    prefix = next((p for p in ("4", "3", "5", "2") if all(port_free(port) for port in ports_of(p))), None)
    if prefix is None:
        pytest.fail("no port prefix with every port free (4xxxx, 3xxxx, 5xxxx, 2xxxx)")
    # Under the checkout's .state (pytest's tmp dir is private to root; PostgreSQL runs as `postgres` under it).
    root = REPO_ROOT / ".state" / "containers" / "topology"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for path in (root, root.parent):
        path.chmod(0o755)
    settings = StackSettings(state_dir=root)
    postgres = PrivatePostgres(root / "postgres", port=int(f"{prefix}5432"), settings=settings)
    influx = InfluxDB(settings, "influxdb", root, int(f"{prefix}8086"), int(f"{prefix}8088"))
    env_file = root / "compose.env"
    env_file.write_text("\n".join([
        f"SERVING_PORT_PREFIX={prefix}", "POSTGRES_USER=postgres", "POSTGRES_PASSWORD=trust-auth-ignores-it",
        "GRAFANA_ADMIN_PASSWORD=unused", f"BRIDGE_RECORD_ADOPT_AFTER_S={ADOPT_AFTER_S}",
    ]) + "\n")
    top = Topology(prefix, env_file, postgres, influx)
    top.compose("down", "--volumes", "--remove-orphans", check=False)
    try:
        postgres.up()
        influx.start()
        began = time.monotonic()
        top.compose("up", "--detach", "--no-deps", *SERVICES)
        for service in SERVICES:
            top.wait_healthy(service)
        figure("compose_up_to_all_healthy_s", round(time.monotonic() - began, 1))
        # Each container's start to its first passing health check (all six start at once on 2 cores).
        for service in SERVICES:
            started = top.state(service)["StartedAt"]
            top.healthy_after_s[service] = _healthy_since_start(top.container(service), started)
        figure("start_to_healthy_s", top.healthy_after_s)
        yield top
    finally:
        logs = root / "logs"
        logs.mkdir(exist_ok=True)
        for service in SERVICES:
            out = docker("logs", "--tail", "200", Topology.container(service), check=False)
            (logs / f"{service}.log").write_text(out.stdout + out.stderr)
        top.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        influx.down()
        postgres.down()


def _healthy_since_start(container: str, started_at: str) -> float:
    """Seconds from the container's start to its first passing health check (Docker's health log)."""
    from datetime import datetime

    def parse(stamp: str) -> datetime:
        head, _, frac = stamp.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")

    log = json.loads(docker("inspect", "--format", "{{json .State.Health.Log}}", container).stdout) or []
    passed = [parse(entry["End"]) for entry in log if entry.get("ExitCode") == 0]
    return round((min(passed) - parse(started_at)).total_seconds(), 1) if passed else -1.0


# --- load --------------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Clients sending photos in threads until stopped; every answer kept (time, model, status, request id)."""

    base_url: str
    models: tuple[str, ...]
    clients_per_model: int = 1
    uncached: bool = False  # Cache-Control: no-cache: every photo reaches a box, none is answered from the record
    answers: list[tuple[float, str, int, str, dict[str, str]]] = field(default_factory=list)
    versions: list[tuple[float, str]] = field(default_factory=list)  # (time, version) of each 200
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        body = photo()
        for model in self.models:
            for _ in range(self.clients_per_model):
                thread = threading.Thread(target=self._client, args=(model, body), daemon=True)
                thread.start()
                self._threads.append(thread)
        return self

    def _client(self, model: str, body: bytes) -> None:
        headers = {"Cache-Control": "no-cache"} if self.uncached else {}
        with httpx.Client(base_url=self.base_url, timeout=30, headers=headers) as client:
            while not self._stop.is_set():
                try:
                    response = client.put(f"/predictions/{model}", content=body)
                    answer = (response.status_code, response.headers.get("x-request-id", ""), dict(response.headers))
                    if response.status_code == 200:
                        self.versions.append((time.monotonic(), str(response.json()["model"]["version"])))
                except httpx.HTTPError as exc:
                    answer = (0, "", {"error": type(exc).__name__})
                self.answers.append((time.monotonic(), model, *answer))
                if answer[0] != 200:
                    time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)

    def statuses(self, model: str | None = None, after: float = 0.0, before: float = float("inf")) -> Counter[int]:
        return Counter(a[2] for a in self.answers if (model is None or a[1] == model) and after <= a[0] < before)

    def per_second(self, model: str, after: float, before: float) -> float:
        """Answers of ``model`` with 200 per second between two times."""
        return self.statuses(model, after, before)[200] / (before - after)

    def acknowledged(self) -> list[str]:
        return [a[3] for a in self.answers if a[2] == 200 and a[3]]


def wait(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if check():
            return time.monotonic() - started
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


# --- the tests ---------------------------------------------------------------------------------------------------


def test_every_container_is_non_root_read_only_and_healthy(topology: Topology) -> None:
    for service in SERVICES:
        name = topology.container(service)
        assert topology.state(service)["Health"]["Status"] == "healthy", service
        assert docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", name).stdout.strip() == "true"
        assert docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", name).stdout.strip() == "host"
        assert docker("exec", name, "id", "-u").stdout.strip() == "1000", service
    # A box is healthy only when its model answers: its health check names it.
    for model in MODELS:
        check = docker("exec", topology.container(f"box-{model}"), "python", "/usr/local/lib/serving/model_server_health.py")
        assert check.stdout.strip() == f"ready: {model}"
    ping = httpx.get(f"{topology.url(8000)}/ping", timeout=10).json()
    assert ping["status"] == "Healthy" and {b["models"][0] for b in ping["boxes"].values()} >= set(MODELS)


def test_a_photo_through_the_balancer_to_each_model_is_recorded(topology: Topology) -> None:
    body = photo()
    ids: dict[str, str] = {}
    for model in MODELS:
        started = time.monotonic()
        response = httpx.put(f"{topology.url(8000)}/predictions/{model}", content=body, timeout=60)
        assert response.status_code == 200, response.text
        ids[model] = response.headers["x-request-id"]
        figure(f"first_photo_s.{model}", round(time.monotonic() - started, 2))
    wait(lambda: topology.recorded(list(ids.values())) == set(ids.values()), 30, "PostgreSQL rows")
    rows = topology.postgres.query("SELECT request_id::text, model, status FROM inferences WHERE request_id::text = ANY(%s)",
                                   (list(ids.values()),))
    assert {(model, status) for _, model, status in rows} == {(m, 200) for m in MODELS}

    def points() -> set[str]:
        result = topology.influx.query('SELECT "request_id" FROM "inference"', database="serving")
        series = result["results"][0].get("series") or []
        return {row[1] for s in series for row in s["values"]}

    wait(lambda: set(ids.values()) <= points(), 30, "InfluxDB points")


def test_each_box_refuses_what_lacks_its_key(topology: Topology) -> None:
    keys = {model: read_keys(topology.key_file(model)) for model in MODELS}
    for model, port in BOX_PORTS.items():
        inference, management = topology.url(port), topology.url(port + 1)
        refused = [
            httpx.get(f"{management}/models", timeout=5),
            httpx.put(f"{inference}/predictions/{model}", content=b"x", timeout=5),
            # another box's keys do not open this one
            httpx.get(f"{management}/models", timeout=5,
                      headers={"Authorization": f"Bearer {keys['classifier' if model != 'classifier' else 'price'].management}"}),
        ]
        for response in refused:
            assert response.status_code == 400 and "InvalidKeyException" in response.text, (model, response.text)
        allowed = httpx.get(f"{management}/models", timeout=5, headers={"Authorization": f"Bearer {keys[model].management}"})
        assert allowed.status_code == 200 and allowed.json()["models"][0]["modelName"] == model
    # Every TorchServe port listens on loopback only (Java's sockets are IPv6 ones, 127.0.0.1 mapped: tcp6).
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    for port in [topology.port(p + d) for p in BOX_PORTS.values() for d in (0, 1, 2)]:
        local = [line.split()[1] for table in ("tcp", "tcp6") for line in
                 Path(f"/proc/net/{table}").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and line.split()[1].endswith(f":{port:04X}")]
        assert local and {address.split(":")[0] for address in local} <= loopback, (port, local)


def test_a_box_killed_under_load_fails_only_its_model_and_comes_back(topology: Topology) -> None:
    load = Load(topology.url(8000), MODELS).start()
    time.sleep(3)
    box = topology.container("box-price")
    restarts = topology.restarts("box-price")
    # SIGKILL to the box's init from outside: a crash, which the restart policy undoes. (`docker kill` is a
    # person's stop: Docker does not restart it, by design.)
    killed_at = time.monotonic()
    os.kill(int(topology.state("box-price")["Pid"]), 9)
    # A job submitted while the box is down waits out the outage (bridge.job_runner) and finishes once it is back.
    submitted = httpx.post(f"{topology.url(8000)}/v1/jobs?models=price,classifier", content=photo(), timeout=30)
    assert submitted.status_code == 202, submitted.text
    job_url = f"{topology.url(8000)}/v1/jobs/{submitted.json()['id']}"
    wait(lambda: topology.restarts("box-price") > restarts, 60, f"{box} restarted by its restart policy")
    topology.wait_healthy("box-price", 240)
    back_s = time.monotonic() - killed_at
    wait(lambda: load.statuses("price", after=time.monotonic() - 1)[200] > 0, 60, "price answering again")
    job: dict[str, Any] = {}

    def job_done() -> bool:
        job.update(httpx.get(job_url, params={"wait": 5}, timeout=30).json())
        return job["status"] in ("succeeded", "failed")

    job_took = wait(job_done, 120, "the job submitted during the outage")
    time.sleep(2)
    load.stop()
    during = load.statuses("price", after=killed_at, before=killed_at + back_s)
    others = {m: dict(load.statuses(m, after=killed_at)) for m in ("classifier", "similar")}
    figure("box_killed", {"price_back_healthy_s": round(back_s, 1), "price_during_outage": dict(during),
                          "others_after_kill": others, "job_attempts": job.get("attempts"),
                          "job_done_s_after_box_healthy": round(job_took, 1)})
    assert job["status"] == "succeeded" and job["attempts"] >= 2, job  # at least one attempt met the outage
    assert set(job["results"]) == {"price", "classifier"}, job
    assert set(during) <= {200, 503} and during[503] > 0, during
    assert all(a[4].get("retry-after") for a in load.answers if a[1] == "price" and a[2] == 503)
    for model, statuses in others.items():
        assert set(statuses) == {200}, (model, statuses)


def test_a_bridge_removed_under_load_loses_no_acknowledged_record(topology: Topology) -> None:
    for service in SERVICES:
        topology.wait_healthy(service, 240)  # a box killed by the test before may still be coming back
    direct_1 = Load(topology.url(8001), ("classifier", "price")).start()
    direct_2 = Load(topology.url(8002), ("classifier", "price")).start()
    balanced = Load(topology.url(8000), ("similar",)).start()
    loads = (direct_1, direct_2, balanced)
    time.sleep(3)
    # PostgreSQL down first, so that bridge-1 holds acknowledged records only in the journal when it goes.
    topology.postgres.stop("immediate")
    time.sleep(4)
    removed_at = time.monotonic()
    docker("rm", "--force", topology.container("bridge-1"))  # no drain: SIGKILL and gone
    time.sleep(4)
    for load in loads:
        load.stop()
    only_journaled = [a[3] for a in direct_1.answers if a[2] == 200 and a[0] < removed_at]
    topology.postgres.start()
    acknowledged = [rid for load in loads for rid in load.acknowledged()]
    took = wait(lambda: topology.recorded(acknowledged) == set(acknowledged), ADOPT_AFTER_S + 60,
                "every acknowledged record in PostgreSQL")
    recording = httpx.get(f"{topology.url(8002)}/ping", timeout=10).json()["recording"]
    figure("bridge_removed", {
        "acknowledged": len(acknowledged), "acknowledged_by_bridge_1": len(only_journaled),
        "lost": len(set(acknowledged) - topology.recorded(acknowledged)),
        "all_recorded_s_after_postgres_back": round(took, 1), "replayed_by_bridge_2": recording.get("replayed"),
        "bridge_2_clients": dict(direct_2.statuses()), "balancer_after_removal": dict(balanced.statuses(after=removed_at)),
        "bridge_1_clients_after_removal": dict(direct_1.statuses(after=removed_at)),
    })
    assert only_journaled, "bridge-1 acknowledged nothing: the test proves nothing"
    assert set(direct_2.statuses()) == {200}, direct_2.statuses()
    # Through the balancer only what was in flight on bridge-1 may fail (502), never a request sent afterwards.
    assert set(balanced.statuses(after=removed_at + 1)) == {200}, balanced.statuses(after=removed_at)
    topology.compose("up", "--detach", "--no-deps", "bridge-1")
    topology.wait_healthy("bridge-1", 60)


# --- one model on two boxes ----------------------------------------------------------------------------------------


def servingctl(topology: Topology, *argv: str) -> subprocess.CompletedProcess[str]:
    """servingctl from its image (compose service `servingctl`, profile ops), as an operator runs it."""
    return topology.compose("--profile", "ops", "run", "--rm", "--no-deps", "-T", "servingctl", *argv, check=False)


def box_workers(topology: Topology, port: int, model: str) -> int:
    """Workers of ``model``'s default version on the box whose inference port is ``port`` (its own key)."""
    volume = REPLICA.keys if port == REPLICA_PORT else model
    mountpoint = docker("volume", "inspect", "--format", "{{.Mountpoint}}", f"{PROJECT}_{volume}-keys").stdout
    key = read_keys(Path(mountpoint.strip()) / "key_file.json").management
    described = httpx.get(f"{topology.url(port + 1)}/models/{model}", timeout=10,
                          headers={"Authorization": f"Bearer {key}"}).json()
    return len(described[0]["workers"])


def test_servingctl_changes_a_scaled_out_model_box_by_box(topology: Topology) -> None:
    for service in SERVICES:
        topology.wait_healthy(service, 240)
    boxes = (BOX_PORTS["classifier"], REPLICA_PORT)
    started = time.monotonic()
    scaled = servingctl(topology, "scale", "classifier", "--min", "2", "--max", "2")
    assert scaled.returncode == 0, scaled.stdout + scaled.stderr
    assert scaled.stdout.count("[box ") == 2, scaled.stdout
    assert [box_workers(topology, port, "classifier") for port in boxes] == [2, 2]
    figure("servingctl_scale_two_boxes_s", round(time.monotonic() - started, 1))
    listing = servingctl(topology, "models", "--json")
    assert listing.returncode == 0, listing.stderr
    shown = [m for m in json.loads(listing.stdout) if m["model"] == "classifier"]
    assert len({m["box"] for m in shown}) == 2
    history = servingctl(topology, "history", "classifier", "--json")
    assert sum(c["action"] == "scale" for c in json.loads(history.stdout)) == 2  # one change per box, recorded
    back = servingctl(topology, "scale", "classifier", "--min", "1", "--max", "1")
    assert back.returncode == 0, back.stderr
    assert [box_workers(topology, port, "classifier") for port in boxes] == [1, 1]


def classifier_requests(topology: Topology, port: int) -> float:
    """Requests TorchServe counted for classifier on the box whose inference port is ``port`` (its metrics API)."""
    from bridge.telemetry import parse_prometheus

    text = httpx.get(f"{topology.url(port + 2)}/metrics", timeout=10).text
    return sum(s.value for s in parse_prometheus(text)
               if s.name == "ts_inference_requests_total" and s.labels.get("model_name") == "classifier")


def test_a_second_box_shares_the_load_and_a_stopped_one_fails_no_request(topology: Topology) -> None:
    """Classifier on one box, then on two: with both up, each box answers a fair share of the requests (from the
    boxes' own counters), and stopping and starting one under load fails no request. The throughput of each phase
    is a figure, not an assert: on a shared 2-core machine a second box adds no CPU."""
    for service in SERVICES:
        topology.wait_healthy(service, 240)
    phase_s = 20.0
    boxes = {"box-classifier": BOX_PORTS["classifier"], REPLICA.name: REPLICA_PORT}
    load = Load(topology.url(8000), ("classifier", "price"), clients_per_model=4, uncached=True).start()
    time.sleep(3)
    stopped_at = time.monotonic()
    topology.compose("stop", "--timeout", "30", "box-classifier-2")  # classifier on one box
    one_from = time.monotonic() + 2
    time.sleep(phase_s + 2)
    one_until = time.monotonic()
    topology.compose("start", "box-classifier-2")
    topology.wait_healthy("box-classifier-2", 240)
    time.sleep(2)
    two_from = time.monotonic()
    counted_from = {box: classifier_requests(topology, port) for box, port in boxes.items()}
    time.sleep(phase_s)
    counted = {box: classifier_requests(topology, port) - counted_from[box] for box, port in boxes.items()}
    two_until = time.monotonic()
    load.stop()
    rates = {
        "one_box": {m: round(load.per_second(m, one_from, one_until), 2) for m in ("classifier", "price")},
        "two_boxes": {m: round(load.per_second(m, two_from, two_until), 2) for m in ("classifier", "price")},
    }
    rates["classifier_ratio"] = round(rates["two_boxes"]["classifier"] / max(rates["one_box"]["classifier"], 1e-9), 2)
    rates["price_ratio"] = round(rates["two_boxes"]["price"] / max(rates["one_box"]["price"], 1e-9), 2)
    figure("scale_out_classifier", {**rates, "requests_per_box_with_two": counted, "clients_per_model": 4,
                                    "phase_s": phase_s, "cpus": os.cpu_count()})
    # Stopping one of classifier's boxes and starting it again under load failed no request.
    assert set(load.statuses(after=stopped_at)) == {200}, load.statuses(after=stopped_at)
    # Classifier kept answering on one box, and with two, the bridges spread its requests over both (round robin:
    # about half each; a fifth each is the floor, whatever the machine's speed).
    assert rates["one_box"]["classifier"] > 0 and rates["two_boxes"]["classifier"] > 0, rates
    total = sum(counted.values())
    assert total >= 10, f"too few classifier requests reached the boxes to judge the spread: {counted}"
    assert all(n >= 0.2 * total for n in counted.values()), f"one box took (nearly) all the requests: {counted}"


ROLLOUT_IMAGE = "serving-model:rollout-1.1"


def test_a_new_version_rolled_out_box_by_box_fails_no_request(topology: Topology, tmp_path: Path) -> None:
    """The release: classifier 1.1 built and gated like any archive, an image carrying it; then each box is replaced
    in turn (`compose up` of one service with the release's override) while clients keep sending photos."""
    for service in SERVICES:
        topology.wait_healthy(service, 240)
    context = tmp_path / "release"
    context.mkdir()
    built = subprocess.run([sys.executable, "-m", "archive_scripts", "classifier", "--version", "1.1", "--store",
                            str(context)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (context / "Dockerfile").write_text(f"FROM {docker_stack.MODEL_IMAGE}\nCOPY classifier_v1.1.mar /app/model_store/\n")
    docker("build", "--network", "host", "--tag", ROLLOUT_IMAGE, str(context))
    load = Load(topology.url(8000), ("classifier",), clients_per_model=4, uncached=True).start()
    time.sleep(3)
    rolled: list[str] = []
    took: dict[str, float] = {}
    began = time.monotonic()
    for service in ("box-classifier", "box-classifier-2"):
        rolled.append(service)
        override = tmp_path / "release.yaml"
        override.write_text("services:\n" + "".join(
            f"  {name}:\n    image: {ROLLOUT_IMAGE}\n    environment:\n      SERVING_MODELS: classifier_v1.1.mar\n"
            for name in rolled))
        step = time.monotonic()
        topology.compose("up", "--detach", "--no-deps", service, override=override)
        topology.wait_healthy(service, 240)
        took[service] = round(time.monotonic() - step, 1)
    done = time.monotonic()
    time.sleep(3)
    load.stop()
    before = Counter(v for t, v in load.versions if t < began)
    during = Counter(v for t, v in load.versions if began <= t < done)
    after = Counter(v for t, v in load.versions if t >= done + 1)
    figure("rollout_box_by_box", {"replace_to_healthy_s": took, "statuses": dict(load.statuses()),
                                  "versions_before": dict(before), "versions_during": dict(during),
                                  "versions_after": dict(after)})
    assert set(load.statuses()) == {200}, load.statuses()
    assert set(before) == {"1.0"} and set(after) == {"1.1"}, (before, after)
    assert during["1.0"] and during["1.1"], "both versions answered while the boxes were replaced one by one"


# --- the page and the keys (last: keys close the API to the tests above) --------------------------------------------


def test_the_page_is_served_and_keys_from_servingctl_hold_on_both_bridges(topology: Topology) -> None:
    """The web page through the balancer; then keys made in the servingctl container: a publishable key predicts but
    reads no results, a revoked one is refused; every answer is checked several times (the balancer alternates)."""
    base = topology.url(8000)
    page = httpx.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "Sell an item" in page.text, page.text[:300]

    def created(*argv: str) -> str:
        made = servingctl(topology, "keys", "create", *argv, "--json")
        assert made.returncode == 0, made.stdout + made.stderr
        return str(json.loads(made.stdout)["key"])

    def statuses(path: str, key: str | None, method: str = "GET", body: bytes | None = None) -> set[int]:
        headers = {"X-API-Key": key} if key else {}
        return {httpx.request(method, base + path, headers=headers, content=body, timeout=60).status_code
                for _ in range(4)}

    publishable, secret = created("containers page", "--publishable"), created("containers ops")
    wait(lambda: statuses("/v1/results?limit=1", None) == {401}, 10, "both bridges asking for a key")
    assert statuses("/predictions/classifier", publishable, "PUT", photo()) == {200}
    assert statuses("/v1/results?limit=1", publishable) == {403}
    assert statuses("/v1/results?limit=1", secret) == {200}
    revoked = servingctl(topology, "keys", "revoke", publishable.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr
    started = time.monotonic()
    wait(lambda: statuses("/predictions/classifier", publishable, "PUT", photo()) == {401}, 5, "the revocation")
    figure("revoked_key_refused_through_the_balancer_s", round(time.monotonic() - started, 2))
    assert servingctl(topology, "keys", "revoke", secret.split("_")[1]).returncode == 0
    wait(lambda: statuses("/v1/results?limit=1", None) == {200}, 10, "the API open again without keys")
