"""A golden case's parameters reach the handler: ``servingctl deploy`` of ``similar`` on a real TorchServe.

TorchServe 0.12 drops the query string of /predictions, so parameters sent there never reach the handler and
a golden case with ``k=3`` passed with the handler's default k. Here the spec's golden cases are checked
with an expectation that also requires the parameters to have taken effect (``k`` items, the embedding).

A private TorchServe on free ports, with its own home under the test's temporary directory, loads nothing at
start; servingctl registers ``similar_v1.0.mar`` from the model store into it. The shared stack is not used.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from archive_scripts.golden import Expectation, GoldenCase
from archive_scripts.photos import sample_photo
from ops.cli import Dependencies, main
from ops.history import Change, MemoryHistory
from ops.settings import Settings
from ops.torchserve import TorchServe as Servingctl
from stack.services import REPO_ROOT, TorchServe, TorchServePorts
from stack.services.faults import free_ports
from stack.torchserve import Answer, AsyncClient

MODEL, VERSION = "similar", "1.0"
ARCHIVE = f"{MODEL}_v{VERSION}.mar"
STORE = REPO_ROOT / "model_store"


@dataclass(frozen=True)
class ParamsTookEffect:
    """The spec's expectation, and the case's parameters visible in the answer (else the handler never saw them)."""

    expect: Expectation
    params: dict[str, str]

    def failure(self, body: dict[str, Any]) -> str | None:
        problem = self.expect.failure(body)
        if problem:
            return problem
        items = body.get("items") or []
        if "k" in self.params and (body.get("k") != int(self.params["k"]) or len(items) != int(self.params["k"])):
            return f"k={self.params['k']} did not reach the handler: {len(items)} items, k={body.get('k')}"
        if self.params.get("embedding") == "true" and not body.get("embedding"):
            return "embedding=true did not reach the handler: no embedding in the answer"
        return None

    def relaxed(self) -> Expectation:
        return self


class NoSink:
    def write(self, change: Change) -> str | None:
        return None


@pytest.fixture(scope="module")
def private_torchserve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe on free ports with no model loaded, stopped afterwards."""
    assert (STORE / ARCHIVE).is_file(), f"{STORE / ARCHIVE} is missing; build the archives: python -m archive_scripts"
    torchserve = TorchServe("torchserve-golden", state_dir=tmp_path_factory.mktemp("golden"),
                            ports=TorchServePorts(*free_ports(5)), models=[])
    torchserve.up()
    try:
        yield torchserve
    finally:
        torchserve.down()


def settings_env(torchserve: TorchServe) -> dict[str, str]:
    return {"SERVINGCTL_MANAGEMENT_URL": torchserve.management_url, "SERVINGCTL_INFERENCE_URL": torchserve.inference_url,
            "SERVINGCTL_KEY_FILE": str(torchserve.key_file), "SERVINGCTL_MODEL_STORE": str(STORE),
            "SERVINGCTL_ACTOR": "test", "SERVINGCTL_SYNC_TIMEOUT_S": "300"}


def test_deploy_golden_check_parameters_reach_the_handler(private_torchserve: TorchServe) -> None:
    from archive_scripts.specs import find_spec

    cases = find_spec(MODEL, VERSION).golden
    assert {name for case in cases for name, _ in case.params} >= {"k", "embedding"}, "the spec lost its parameters"
    strict = tuple(GoldenCase(c.photo, ParamsTookEffect(c.expect, dict(c.params)), c.params) for c in cases)
    history = MemoryHistory()
    out, err = io.StringIO(), io.StringIO()
    deps = Dependencies(golden=lambda model, version: strict, photo=sample_photo, history=lambda s: history,
                        sink=lambda s: NoSink())
    code = main(["deploy", ARCHIVE], deps, out, err, settings_env(private_torchserve))
    assert code == 0, err.getvalue() + out.getvalue()
    assert f"all {len(strict)} golden input(s) answered correctly" in out.getvalue()
    assert [c.action for c in history.changes(MODEL)] == ["deploy"]


def test_prediction_parameters_shape_the_answer(private_torchserve: TorchServe) -> None:
    ts = Servingctl(Settings.from_values({}, settings_env(private_torchserve)))
    try:
        if MODEL not in ts.list_models():  # run alone: the deploy test did not register it
            ts.register(ARCHIVE, 1)
        photo = sample_photo("chelsea")
        plain = ts.predict(MODEL, VERSION, photo)
        asked = ts.predict(MODEL, VERSION, photo, {"k": "2", "embedding": "true"})
    finally:
        ts.close()
    assert plain.status == asked.status == 200, (plain.text, asked.text)
    assert len(plain.body["items"]) == plain.body["k"] != 2 and "embedding" not in plain.body
    assert len(asked.body["items"]) == asked.body["k"] == 2 and len(asked.body["embedding"]) > 0


def test_the_bridges_async_face_sends_them_too(private_torchserve: TorchServe) -> None:
    async def ask() -> Answer:
        ts = AsyncClient(private_torchserve.inference_url, private_torchserve.management_url,
                         private_torchserve.key_file)
        try:
            if MODEL not in await ts.models():
                await ts.register(ARCHIVE, 1)
            return await ts.predict(MODEL, VERSION, sample_photo("coffee"), "image/jpeg", {"k": "1"})
        finally:
            await ts.close()

    answer = asyncio.run(ask())
    assert answer.status == 200 and answer.json()["k"] == 1 and len(answer.json()["items"]) == 1
