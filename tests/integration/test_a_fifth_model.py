"""A fifth model, of a kind none of ours has, added to a copy of the checkout by writing only its spec and handler.

An object detector (a variable number of boxes per photo): its spec in archive_scripts/models/, its handler in
handlers/. Then, in that copy, what a newcomer runs: ``python -m archive_scripts.deploy_config`` (the catalogue, the
compose file, the Kubernetes and KServe files, config.properties) and ``python -m archive_scripts detector`` (build,
golden gate); then the stack's own harness serves it (TorchServe and a bridge of that copy on free ports, recording
into databases of their own), and it answers over /predictions, /v2 and a job, each answer recorded (PostgreSQL; InfluxDB too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
import yaml

from archive_scripts.photos import sample_photo
from tests.integration.conftest import INFLUX
from tests.reliability.instances import private_databases

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "detector"
ARCHIVE = f"{NAME}_v1.0.mar"

SPEC = '''"""An object detector: a variable number of boxes per photo (the cells of a 4x4 grid that score above 0.5)."""

from dataclasses import dataclass
from typing import Any

from archive_scripts import weights
from archive_scripts.golden import TIE, GoldenCase
from archive_scripts.specs import ArchiveSpec

GRID, THRESHOLD = 4, 0.5


@dataclass(frozen=True)
class Detections:
    """Well-formed detections: boxes inside the photo, scores above the threshold, best first."""

    def failure(self, body: dict[str, Any]) -> str | None:
        found = body.get("detections")
        if not isinstance(found, list):
            return f"no detections in {str(body)[:200]}"
        scores = [d["score"] for d in found]
        if scores != sorted(scores, reverse=True) or any(s < THRESHOLD for s in scores):
            return f"scores not sorted above {THRESHOLD}: {scores}"
        if any(len(d["box"]) != 4 or not all(0.0 <= v <= 1.0 for v in d["box"]) for d in found):
            return "a box is not 4 coordinates inside the photo"
        return None

    def relaxed(self) -> "Detections":
        return self

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        def boxes(answer: dict[str, Any], margin: float = 0.0) -> set[tuple[float, ...]]:
            return {tuple(d["box"]) for d in answer["detections"] if d["score"] >= THRESHOLD + margin}

        differ = (boxes(fp32, TIE) - boxes(body)) | (boxes(body, TIE) - boxes(fp32))
        return f"boxes {sorted(differ)} differ from fp32's" if differ else None


SPEC = ArchiveSpec(
    name="detector",
    version="1.0",
    handler="detector_handler.py",
    architecture="resnet18",
    make_weights=lambda dest, inputs: weights.seeded_init("resnet18", dest, seed=7, num_classes=GRID * GRID),
    golden=(GoldenCase("chelsea", Detections()), GoldenCase("rocket", Detections())),
    topk=None,
    labels=None,
    handler_options={"num_classes": GRID * GRID, "grid": GRID, "threshold": THRESHOLD},
    description="a 4x4-grid object detector (untrained): a variable number of boxes per photo",
)
'''

HANDLER = '''"""Object detection: the cells of a grid whose score passes the threshold, as boxes, best first."""

from __future__ import annotations

from typing import Any

import torch
from batch_handler import BatchImageHandler, OipOutput


class GridDetectorHandler(BatchImageHandler):
    """Answers ``{"detections": [{"box": [x0, y0, x1, y1], "score", "label"}, ...]}`` (coordinates in [0, 1])."""

    config_keys = ("grid", "threshold")
    kind = "detector"
    oip_outputs = (
        OipOutput("boxes", "FP32", "detections[].box"),
        OipOutput("scores", "FP32", "detections[].score"),
        OipOutput("labels", "BYTES", "detections[].label"),
    )

    def postprocess_batch(self, outputs: torch.Tensor, params: list[Any]) -> list[dict[str, Any]]:
        grid = int(self.config.extra["grid"])
        threshold = float(self.config.extra["threshold"])
        answers = []
        for row in outputs[:, : grid * grid].sigmoid().tolist():
            cells = sorted(((s, i) for i, s in enumerate(row) if s >= threshold), reverse=True)
            boxes = [[(i % grid) / grid, (i // grid) / grid, (i % grid + 1) / grid, (i // grid + 1) / grid]
                     for _, i in cells]
            answers.append({"detections": [{"box": b, "score": round(s, 6), "label": "object"}
                                           for (s, _), b in zip(cells, boxes)]})
        return answers
'''

# Run inside the copy: the stack's harness (stack.services) of that copy, its TorchServe serving the new archive
# and its bridge (which reads that copy's catalogue), on free ports; stopped when stdin closes.
SERVE = '''
import json, sys
from pathlib import Path
from stack.services import Bridge, TorchServe, TorchServePorts
from stack.services.faults import free_ports

state, pg_dsn, influx_database = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print(json.dumps({"load_models": TorchServe("torchserve", state).load_models()}), flush=True)
# A running stack from before the model was added (nothing loaded, to keep it quick), then `make up` again: the
# harness registers the archive load_models names now.
torchserve = TorchServe("torchserve", state, ports=TorchServePorts.free(), models=[])
torchserve.start(240.0)
torchserve.models = ["detector_v1.0.mar"]
assert not torchserve.up(), "up() started a second TorchServe"  # it registers what is new, then it is ready
assert torchserve.ready() and "detector" in torchserve.model_names()
bridge = Bridge("bridge", state / "bridge", port=free_ports(1)[0], torchserve=torchserve, pg_dsn=pg_dsn,
                influx_database=influx_database, env={"BRIDGE_TELEMETRY_INTERVAL_S": "0", "BRIDGE_CACHE": "false"})
try:
    bridge.start(90.0)
    print(json.dumps({"bridge": bridge.url}), flush=True)
    sys.stdin.read()
finally:
    bridge.stop()
    torchserve.stop()
'''


def copy_checkout(dest: Path) -> None:
    """The checkout's files as git sees them (committed or not, ignored ones left out), plus the built archives."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run(copy: Path, *argv: str, timeout: float = 600) -> str:
    """``python argv`` in the copy (its own modules first); its output, or the test fails with it."""
    env = {**os.environ, "PYTHONPATH": str(copy), "SERVING_STATE_DIR": str(copy / ".state")}
    result = subprocess.run([sys.executable, *argv], cwd=copy, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout with the fifth model's spec and handler written, regenerated and built."""
    root = tmp_path_factory.mktemp("fifth-model") / "checkout"
    copy_checkout(root)
    (root / "archive_scripts" / "models" / f"{NAME}.py").write_text(SPEC)
    (root / "handlers" / f"{NAME}_handler.py").write_text(HANDLER)
    run(root, "-m", "archive_scripts.deploy_config")
    (root / "model_store").mkdir(exist_ok=True)
    run(root, "-m", "archive_scripts", NAME)
    return root


@pytest.fixture(scope="module")
def served(copy: Path) -> Iterator[dict[str, Any]]:
    """The copy's harness serving the new model: the bridge's URL, its databases and config.properties' models."""
    with private_databases("fifth_model") as (pg_dsn, influx_database):
        env = {**os.environ, "PYTHONPATH": str(copy), "SERVING_STATE_DIR": str(copy / ".state")}
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(copy / ".state"), pg_dsn, influx_database], cwd=copy, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            facts: dict[str, Any] = {"pg_dsn": pg_dsn, "influx_database": influx_database}
            said = []  # the harness' progress lines, and one JSON line per fact
            for line in process.stdout:
                said.append(line)
                if line.startswith("{"):
                    facts.update(json.loads(line))
                if "bridge" in facts:
                    break
            assert any("registering detector_v1.0.mar" in line for line in said), said
            assert "bridge" in facts, f"the copy's stack did not start: {said}\n{process.stderr.read() if process.stderr else ''}"
            yield facts
        finally:
            process.stdin.close()
            process.wait(timeout=120)


def test_the_regenerated_files_route_and_describe_the_new_model(copy: Path) -> None:
    catalogue = json.loads((copy / "stack" / "models.json").read_text())["models"]
    (entry,) = [m for m in catalogue if m["name"] == NAME]
    assert entry["kind"] == "detector" and entry["archive"] == ARCHIVE
    assert [o["name"] for o in entry["outputs"]] == ["boxes", "scores", "labels"]
    assert [m["name"] for m in catalogue][:4] == [m["name"] for m in json.loads(
        (REPO_ROOT / "stack" / "models.json").read_text())["models"]], "ours first, as before"
    # compose: a box of its own, routed, its key volume mounted by the bridges
    compose = yaml.safe_load((copy / "deploy" / "compose.yaml").read_text())
    box = compose["services"][f"box-{NAME}"]
    assert box["environment"]["SERVING_MODELS"] == ARCHIVE
    route = json.loads(compose["x-routes"])[NAME]
    assert route["url"] == f"http://127.0.0.1:{box['environment']['SERVING_TS_INFERENCE_PORT']}"
    assert any(v.startswith(f"{NAME}-keys:") for v in compose["services"]["bridge-1"]["volumes"])
    assert f"{NAME}-keys" in compose["volumes"]
    # Kubernetes: its box, in the base, routed to its Service; KServe: its InferenceService
    base = yaml.safe_load((copy / "deploy" / "k8s" / "models" / "kustomization.yaml").read_text())
    assert NAME in base["resources"]
    assert (copy / "deploy" / "k8s" / "models" / NAME / "deployment.patch.yaml").exists()
    assert json.loads((copy / "deploy" / "k8s" / "base" / "routes.json").read_text())[NAME]["url"] == \
        f"http://box-{NAME}:8080"
    assert (copy / "deploy" / "kserve" / NAME / "inferenceservice.yaml").exists()
    # the local stack serves it at start; the README's table lists it
    assert ARCHIVE in (copy / "config.properties").read_text()
    assert f"| `{NAME}` 1.0 | detector: boxes, scores, labels |" in (copy / "README.md").read_text()
    # and the checks of the copy's own deploy tier agree that everything is current
    run(copy, "-m", "archive_scripts.deploy_config", "--check")


def test_it_was_built_and_gated(copy: Path) -> None:
    manifest = json.loads((copy / "model_store" / "manifest.json").read_text())
    assert ARCHIVE in manifest and manifest[ARCHIVE]["engine"]["name"] == "onnxruntime"


def test_it_answers_over_predictions_v2_and_a_job_and_every_answer_is_recorded(served: dict[str, Any]) -> None:
    bridge = served["bridge"]
    assert ARCHIVE in served["load_models"], "make up's harness loads it at start (config.properties)"
    photo = sample_photo("chelsea")

    answer = requests.post(f"{bridge}/predictions/{NAME}", data=photo, timeout=60)
    assert answer.status_code == 200, answer.text
    detections = answer.json()["detections"]
    assert all(len(d["box"]) == 4 and d["score"] >= 0.5 for d in detections)

    metadata = requests.get(f"{bridge}/v2/models/{NAME}", timeout=30).json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"][:3]] == [
        ("boxes", "FP32", [-1, -1]), ("scores", "FP32", [-1, -1]), ("labels", "BYTES", [-1, -1])]

    infer = {"inputs": [{"name": "image", "shape": [2, 1], "datatype": "BYTES", "parameters": {"content_type": "base64"},
                         "data": [_b64(photo), _b64(sample_photo("rocket"))]}]}
    v2 = requests.post(f"{bridge}/v2/models/{NAME}/infer", json=infer, timeout=60)
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["boxes"]["shape"][0] == 2 and outputs["scores"]["shape"][0] == 2
    assert outputs["boxes"]["shape"][1] == 4 * outputs["scores"]["shape"][1]
    first = outputs["scores"]["data"][: outputs["scores"]["shape"][1]]
    assert [round(s, 6) for s in first[: len(detections)]] == [d["score"] for d in detections]

    job = requests.post(f"{bridge}/v1/jobs?models={NAME}", data=photo, timeout=30)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    body = job.json()
    while body["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        body = requests.get(f"{bridge}/v1/jobs/{body['id']}?wait=10", timeout=30).json()
    assert body["status"] == "succeeded", body
    assert body["results"][NAME]["status"] == 200 and body["results"][NAME]["output"]["detections"] == detections

    rows = _recorded(served["pg_dsn"], expected=4)  # /predictions, two items over /v2, the job
    assert {source for source, _ in rows} >= {"sync", "job"}, rows
    assert all(status == 200 for _, status in rows), rows
    assert _points(served["influx_database"], expected=4) >= 4


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _recorded(dsn: str, expected: int, timeout_s: float = 30.0) -> list[tuple[str, int]]:
    """The detector's rows in the inferences table (source, status), once at least ``expected`` are there."""
    deadline = time.monotonic() + timeout_s
    while True:
        with psycopg2.connect(dsn) as connection, connection.cursor() as cur:
            cur.execute("SELECT source, status FROM inferences WHERE model = %s", (NAME,))
            rows = [(str(source), int(status)) for source, status in cur.fetchall()]
        if len(rows) >= expected or time.monotonic() > deadline:
            assert len(rows) >= expected, f"{len(rows)} of {expected} answers recorded: {rows}"
            return rows
        time.sleep(0.5)


def _points(database: str, expected: int, timeout_s: float = 30.0) -> int:
    """The detector's InfluxDB points, once at least ``expected`` are there."""
    query = f"SELECT count(latency_ms) FROM inference WHERE model = '{NAME}'"
    deadline = time.monotonic() + timeout_s
    while True:
        result = requests.get(f"{INFLUX}/query", params={"db": database, "q": query}, timeout=10).json()
        series = result["results"][0].get("series")
        count = int(series[0]["values"][0][1]) if series else 0
        if count >= expected or time.monotonic() > deadline:
            assert count >= expected, f"{count} of {expected} answers in InfluxDB {database}: {result}"
            return count
        time.sleep(0.5)
