"""servingctl against the real stack: deploy a second resnet18 version, roll back, scale, retire, history.

The stack is shared: every test leaves TorchServe exactly as it found it (registered versions, default
versions, worker counts), restoring it in a ``finally`` even when an assertion fails, and keeps the time a
non-default state is visible short.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from archive_scripts.build import REPO_ROOT, build
from archive_scripts.golden import GoldenCase, TopLabelIn
from archive_scripts.photos import sample_photo
from archive_scripts.specs import find_spec
from ops.cli import Dependencies, main
from ops.settings import Settings
from ops.torchserve import TorchServe
from tests.integration.conftest import INFLUX, LiveStack, json_body

MODEL, NEW = "resnet18", "2.0"
ARCHIVE = f"{MODEL}_v{NEW}.mar"
STORE = REPO_ROOT / "model_store"

State = dict[str, tuple[str, dict[str, tuple[int, int, int]]]]


def snapshot(ts: TorchServe) -> State:
    """Per model: its default version and, per registered version, (minWorkers, maxWorkers, workers)."""
    state: State = {}
    for name in ts.list_models():
        info = ts.describe(name)
        state[name] = (info.default, {v.version: (v.min_workers, v.max_workers, len(v.workers)) for v in info.versions})
    return state


def restore(ts: TorchServe, before: State) -> None:
    """Undo whatever a test left: defaults first, then extra versions, then worker ranges."""
    for name, (default, versions) in before.items():
        info = ts.describe(name)
        if info.default != default:
            ts.set_default(name, default)
        for v in info.versions:
            if v.version not in versions:
                ts.unregister(name, v.version)
            elif (v.min_workers, v.max_workers, len(v.workers)) != versions[v.version]:
                lo, hi, _ = versions[v.version]
                ts.scale(name, v.version, lo, hi)


@pytest.fixture()
def torchserve(live_stack: LiveStack) -> Iterator[TorchServe]:
    """A client of the live TorchServe; on the way out TorchServe must be exactly as it was found."""
    ts = TorchServe(Settings.from_values({}))
    remove_leftover(ts)
    before = snapshot(ts)
    try:
        yield ts
    finally:
        restore(ts, before)
        assert snapshot(ts) == before, "TorchServe was not left as it was found"


def remove_leftover(ts: TorchServe) -> None:
    """resnet18 2.0 left registered by an interrupted earlier run of these tests: its default back, 2.0 gone."""
    info = ts.describe(MODEL)
    if info.version(NEW) is None:
        return
    if info.default == NEW:
        (other,) = [v.version for v in info.versions if v.version != NEW][:1]
        ts.set_default(MODEL, other)
    ts.unregister(MODEL, NEW)


@pytest.fixture(scope="module")
def archive() -> str:
    """resnet18 2.0 in the model store (built, and gated, when missing).

    Only when missing: torch-model-archiver stages files in a fixed /tmp/<model> directory, so a rebuild
    racing another build of resnet18 on the shared machine fails; the deploy's own golden check through
    TorchServe judges whatever archive is there.
    """
    if not (STORE / ARCHIVE).is_file():
        build(find_spec(MODEL, NEW), STORE)
    return ARCHIVE


class Servingctl:
    """Runs servingctl in-process (so its golden lookup can be replaced), timing each command."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.golden: Any = None
        self.timings: dict[str, float] = {}

    def __call__(self, *argv: str, expect: int = 0) -> str:
        out, err = io.StringIO(), io.StringIO()
        deps = Dependencies() if self.golden is None else Dependencies(golden=self.golden)
        started = time.monotonic()
        code = main([*argv, "--actor", self.actor], deps, out, err)
        self.timings[" ".join(argv)] = time.monotonic() - started
        assert code == expect, f"servingctl {' '.join(argv)} → {code}\n{out.getvalue()}\n{err.getvalue()}"
        return out.getvalue() + err.getvalue()

    def describe(self) -> dict[str, Any]:
        return json.loads(self("describe", MODEL, "--json"))

    def history(self) -> list[dict[str, Any]]:
        """This test's changes of the model, oldest first."""
        changes = json.loads(self("history", MODEL, "--json"))
        return [c for c in reversed(changes) if c["actor"] == self.actor]


@pytest.fixture()
def servingctl() -> Servingctl:
    return Servingctl(actor=f"it-{uuid.uuid4().hex[:8]}")


def served_version(live_stack: LiveStack, photo: bytes) -> str:
    """The version TorchServe's /predictions/resnet18 (the default) answers with."""
    response = requests.post(f"{live_stack.torchserve}/predictions/{MODEL}", data=photo,
                             headers=live_stack.inference_headers(), timeout=30)
    assert response.status_code == 200, response.text
    return str(json_body(response)["model"]["version"])


def influx_actions(actor: str) -> list[str]:
    result = requests.get(f"{INFLUX}/query", params={
        "db": "serving", "q": f"SELECT action, \"to\" FROM model_changes WHERE actor = '{actor}'"}, timeout=5).json()
    series = result["results"][0].get("series") or []
    return [row[1] for s in series for row in s["values"]]


def test_deploy_set_default_rollback_scale_retire_and_history(
    live_stack: LiveStack, torchserve: TorchServe, servingctl: Servingctl, archive: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = torchserve.describe(MODEL)
    assert before.version(NEW) is None  # removed by the fixture if an interrupted run left it
    original_default = before.default
    original = before.default_info
    photo = sample_photo("chelsea")

    servingctl("deploy", archive, "--set-default", "--batch-size", "4", "--max-batch-delay", "20")
    # Checked at once, then rolled back: the stack is shared and others expect the original default.
    described = servingctl.describe()
    version_after_deploy = served_version(live_stack, photo)
    servingctl("rollback", MODEL)

    assert described["default"] == NEW
    versions = {v["version"]: v for v in described["versions"]}
    assert sorted(versions) == sorted([original_default, NEW])
    assert (versions[NEW]["batch_size"], versions[NEW]["max_batch_delay_ms"]) == (4, 20)  # run-time batch knobs
    assert versions[NEW]["workers"] and all(w["status"] == "READY" for w in versions[NEW]["workers"])
    assert version_after_deploy == NEW
    assert servingctl.describe()["default"] == original_default
    assert served_version(live_stack, photo) == original_default

    out = servingctl("scale", MODEL, "--min", "1", "--max", "1")
    scaled = {v["version"]: v for v in servingctl.describe()["versions"]}[original_default]
    assert (scaled["min_workers"], scaled["max_workers"], len(scaled["workers"])) == (1, 1, 1), out
    servingctl("scale", MODEL, "--min", str(original.min_workers), "--max", str(original.max_workers))
    restored = {v["version"]: v for v in servingctl.describe()["versions"]}[original_default]
    assert len(restored["workers"]) == len(original.workers)

    servingctl("retire", MODEL, NEW)
    after = servingctl.describe()
    assert after["default"] == original_default and NEW not in [v["version"] for v in after["versions"]]

    steps = [(c["action"], c["version"], c["from_value"], c["to_value"]) for c in servingctl.history()]
    assert steps == [
        ("deploy", NEW, None, NEW),
        ("set-default", NEW, original_default, NEW),
        ("rollback", original_default, NEW, original_default),
        ("scale", original_default, original.workers_text(), "min=1 max=1 workers=1"),
        ("scale", original_default, "min=1 max=1 workers=1", original.workers_text()),
        ("retire", NEW, NEW, None),
    ]
    assert len(influx_actions(servingctl.actor)) == len(steps)  # each change is also a point in InfluxDB

    with capsys.disabled():
        print("\nservingctl against the live stack:")
        for command, seconds in servingctl.timings.items():
            if not command.startswith(("describe", "history")):
                print(f"  {command:<70} {seconds:6.2f} s")


def test_deploy_failing_its_golden_check_leaves_the_old_default_serving(
    live_stack: LiveStack, torchserve: TorchServe, servingctl: Servingctl, archive: str
) -> None:
    before = torchserve.describe(MODEL)
    assert before.version(NEW) is None  # removed by the fixture if an interrupted run left it
    # An impossible expectation stands in for a version that answers wrongly.
    servingctl.golden = lambda model, version: (GoldenCase("chelsea", TopLabelIn(("no such label",))),)

    out = servingctl("deploy", archive, "--set-default", expect=8)

    assert "failed its golden check" in out and f"the default stays {before.default}" in out
    after = servingctl.describe()
    assert after["default"] == before.default
    assert [v["version"] for v in after["versions"]] == [v.version for v in before.versions]
    assert served_version(live_stack, sample_photo("chelsea")) == before.default
    assert [c["action"] for c in servingctl.history()] == ["deploy-rejected"]


def test_errors_against_the_live_stack(live_stack: LiveStack, torchserve: TorchServe, servingctl: Servingctl,
                                      tmp_path: Path) -> None:
    default = torchserve.describe(MODEL).default
    assert "is the default version" in servingctl("retire", MODEL, default, expect=7)
    assert "registered versions" in servingctl("set-default", MODEL, "99.0", expect=4)
    assert "registered models" in servingctl("describe", "no-such-model", expect=4)
    stale = tmp_path / "key_file.json"
    stale.write_text(json.dumps({"management": {"key": "stale"}, "inference": {"key": "stale"}, "API": {"key": "x"}}))
    assert "key file may be stale" in servingctl("models", "--key-file", str(stale), expect=5)
