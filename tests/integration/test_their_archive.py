"""A ``.mar`` built elsewhere around TorchServe's stock ``image_classifier`` handler, deployed with one command.

``servingctl deploy PATH --golden PHOTO=EXPECTED`` copies it into the model store, registers it, checks the golden
cases given on the command line through TorchServe and records the change; the bridge then serves it, records
each request in PostgreSQL and InfluxDB, and describes it over /v2 as a model it has no table entry for (one
BYTES output holding the JSON answer). The stack is shared: the model is unregistered and the copied archive
removed again on the way out.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

from archive_scripts.build import REPO_ROOT
from archive_scripts.photos import sample_photo
from bridge.oip import ITEM_OUTPUTS
from ops.errors import GoldenCheckFailed, NotFound
from ops.history import PostgresHistory
from ops.settings import Settings
from ops.torchserve import TorchServe
from tests.integration.conftest import PG_DSN, LiveStack, json_body
from tests.integration.test_ops_cli import influx_actions

MODEL, VERSION = "their-colournet", "1.0"
ARCHIVE = f"{MODEL}.mar"  # torch-model-archiver's own file name: the name it keeps in the model store
LABELS = ("warm", "cool", "bright", "dark", "green", "magenta")
TOPK = 5  # the stock image_classifier answers its top 5
NO_CACHE = {"Cache-Control": "no-cache"}  # each request answered by the model (and recorded as such)

# Their model: six colour scores from the photo's mean colour after the stock handler's ImageNet
# normalisation, so the answers are known (the cat is warm by a wide margin, the rocket's sky is dark).
MODEL_PY = '''
import torch
from torch import nn


class ColourNet(nn.Module):
    """Scores six colour labels of a 224x224 photo from its mean normalised colour."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, kernel_size=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)).flatten(1))
'''
#             warm        cool        bright     dark          green           magenta
HEAD = [[1, 0, -1], [-1, 0, 1], [1, 1, 1], [-1, -1, -1], [-0.5, 1, -0.5], [0.5, -1, 0.5]]


def build_their_archive(directory: Path) -> Path:
    """``torch-model-archiver`` around the stock ``image_classifier`` handler, as a user outside this project runs it."""
    (directory / "model.py").write_text(MODEL_PY)
    torch.save({"conv.weight": torch.eye(3).reshape(3, 3, 1, 1), "conv.bias": torch.zeros(3),
                "head.weight": 10 * torch.tensor(HEAD), "head.bias": torch.zeros(6)}, directory / "weights.pt")
    (directory / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(LABELS)}))
    export = directory / "export"
    export.mkdir()
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    subprocess.run([str(archiver), "--model-name", MODEL, "--version", VERSION, "--model-file", "model.py",
                    "--serialized-file", "weights.pt", "--handler", "image_classifier",
                    "--extra-files", "index_to_name.json", "--export-path", str(export)],
                   cwd=directory, check=True, capture_output=True, timeout=120)
    return export / ARCHIVE


@pytest.fixture(scope="module")
def their_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_their_archive(tmp_path_factory.mktemp("their"))


@dataclass
class Servingctl:
    """``python -m ops`` as its own process, as an operator runs it, under a per-test actor."""

    actor: str

    def __call__(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SERVINGCTL_ACTOR": self.actor}
        return subprocess.run([sys.executable, "-m", "ops", *argv], check=False, cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    def history(self) -> list[dict[str, Any]]:
        """This test's changes of the model, oldest first."""
        history = PostgresHistory(PG_DSN)
        try:
            return [{"action": c.action, "version": c.version, "detail": c.detail}
                    for c in reversed(history.changes(MODEL)) if c.actor == self.actor]
        finally:
            history.close()


@pytest.fixture()
def servingctl() -> Servingctl:
    return Servingctl(actor=f"it-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def store(live_stack: LiveStack) -> Iterator[Path]:
    """The model store, with neither their model registered nor their archive in it, and so left afterwards."""
    torchserve, store = TorchServe(Settings.from_values({})), Settings.from_values({}).model_store
    if MODEL in torchserve.list_models() or (store / ARCHIVE).exists():
        pytest.skip(f"{MODEL} is registered, or {ARCHIVE} is in the model store, on the shared stack; not touching it")
    try:
        yield store
    finally:
        try:
            torchserve.unregister(MODEL, VERSION)  # servingctl retire keeps a model's default (only) version
        except NotFound:
            pass
        finally:
            torchserve.close()
            (store / ARCHIVE).unlink(missing_ok=True)


def assert_stock_answer(body: Any) -> None:
    """The stock image_classifier's answer for one photo: its top 5 labels → probabilities, highest first."""
    assert isinstance(body, dict) and len(body) == TOPK and set(body) <= set(LABELS), body
    scores = list(body.values())
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores) and sum(scores) <= 1.0 + 1e-6, body
    assert scores == sorted(scores, reverse=True), body


def assert_recorded(live_stack: LiveStack, request_id: str, answer: dict[str, Any]) -> None:
    """Recorded under the version that served it (the answer names none: the model's default) with its top label."""
    row = live_stack.row(request_id)
    assert row is not None, f"no PostgreSQL row for {request_id}"
    assert (row["model"], row["model_version"], row["status"], row["error"]) == (MODEL, VERSION, 200, None)
    top_label, top_score = next(iter(answer.items()))
    assert (row["top_label"], row["top_score"]) == (top_label, pytest.approx(top_score))
    assert row["output"] == pytest.approx(answer)
    point = live_stack.point(request_id)
    assert point is not None, f"no InfluxDB point for {request_id}"
    assert point["version"] == VERSION, point


def cached_answer(live_stack: LiveStack, photo: bytes, attempts: int = 5) -> requests.Response:
    """The photo's answer from the results cache (a lookup slower than its deadline is a miss: asked again)."""
    for _ in range(attempts):
        response = requests.post(f"{live_stack.bridge}/predictions/{MODEL}", data=photo, timeout=30)
        assert response.status_code == 200, response.text
        if response.headers.get("x-cache") == "HIT":
            return response
    pytest.fail(f"no cache hit in {attempts} requests for a photo recorded under {MODEL} {VERSION}")


def test_their_archive_is_deployed_with_one_command_served_recorded_and_described(
    live_stack: LiveStack, store: Path, servingctl: Servingctl, their_archive: Path, tmp_path: Path
) -> None:
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(sample_photo("chelsea"))

    deployed = servingctl("deploy", str(their_archive), "--golden", f"{cat}=top:warm", "--golden", "rocket=dark")

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"copied {their_archive}" in deployed.stdout and "all 2 golden input(s) answered correctly" in deployed.stdout
    assert (store / ARCHIVE).read_bytes() == their_archive.read_bytes()
    [change] = servingctl.history()
    assert (change["action"], change["version"]) == ("deploy", VERSION)
    assert change["detail"]["copied_from"] == str(their_archive.resolve())
    assert change["detail"]["golden"] == "command line" and change["detail"]["golden_cases"] == 2
    assert len(influx_actions(servingctl.actor)) == 1

    photo = cat.read_bytes()
    response = requests.post(f"{live_stack.bridge}/predictions/{MODEL}", data=photo, headers=NO_CACHE, timeout=30)
    assert response.status_code == 200, response.text
    answer = json_body(response)
    assert_stock_answer(answer)
    assert next(iter(answer)) == "warm"
    assert response.headers["x-model-version"] == VERSION
    assert_recorded(live_stack, response.headers["x-request-id"], answer)

    cached = cached_answer(live_stack, photo)  # recorded with its version, so the results cache finds it
    assert cached.headers["x-model-version"] == VERSION
    assert list(json_body(cached)) == list(answer), "as the model ordered it, with no 'cached' label added"
    assert json_body(cached) == pytest.approx(answer)

    request = {"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                           "parameters": {"content_type": "base64"}, "data": [base64.b64encode(photo).decode()]}]}
    inferred = requests.post(f"{live_stack.bridge}/v2/models/{MODEL}/infer", json=request, headers=NO_CACHE,
                             timeout=30)
    assert inferred.status_code == 200, inferred.text
    assert (json_body(inferred)["model_version"], inferred.headers["x-model-version"]) == (VERSION, VERSION)
    outputs = json_body(inferred)["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in outputs] == [("answer", "BYTES", [1, 1])], outputs
    assert json.loads(outputs[0]["data"][0]) == pytest.approx(answer)
    assert_recorded(live_stack, inferred.headers["x-request-id"], answer)

    metadata = requests.get(f"{live_stack.bridge}/v2/models/{MODEL}", timeout=10)
    assert metadata.status_code == 200, metadata.text
    described = json_body(metadata)
    item_outputs = {t.name for t in ITEM_OUTPUTS}
    assert [(o["name"], o["datatype"]) for o in described["outputs"] if o["name"] not in item_outputs] == [
        ("answer", "BYTES")], described
    assert described["versions"] == [VERSION]


def test_their_archive_failing_a_golden_case_is_unregistered_and_its_copy_removed(
    live_stack: LiveStack, store: Path, servingctl: Servingctl, their_archive: Path
) -> None:
    # The cat is warm: "cool" is their lowest score for it, outside the top 5 the handler answers.
    rejected = servingctl("deploy", str(their_archive), "--golden", "chelsea=cool", "--set-default")

    assert rejected.returncode == GoldenCheckFailed.exit_code, rejected.stdout + rejected.stderr
    assert "failed its golden check" in rejected.stderr and "'cool' is not in the answer" in rejected.stderr
    assert f"removed {store / ARCHIVE} again" in rejected.stdout
    torchserve = TorchServe(Settings.from_values({}))
    try:
        assert MODEL not in torchserve.list_models()
    finally:
        torchserve.close()
    assert not (store / ARCHIVE).exists()
    assert [c["action"] for c in servingctl.history()] == ["deploy-rejected"]
    assert requests.post(f"{live_stack.bridge}/predictions/{MODEL}", data=sample_photo("chelsea"),
                         timeout=30).status_code == 404
