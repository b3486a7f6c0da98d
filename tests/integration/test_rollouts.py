"""Safe rollouts against the real stack: classifier 1.1 (the same network on another engine: a changed archive)
shadowed, compared, replayed and promoted; a deliberately broken 1.2 refused by promote and aborted as a canary.

A bridge of this test's own (port 18001: capture on, canaries checked every second, telemetry every 2 s) serves the
traffic beside the shared one; both read the same rollouts. TorchServe is left as it was found: defaults, versions.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests

from archive_scripts.build import build
from archive_scripts.specs import find_spec
from bridge.rollouts import client_share
from ops.cli import main
from ops.errors import NotFound, Refused
from ops.settings import Settings
from ops.torchserve import TorchServe
from stack.services import REPO_ROOT, Bridge
from tests.integration.conftest import PG_DSN, LiveStack
from tests.integration.test_dashboard import expand, has_values, influx

MODEL, LIVE, GOOD, BROKEN = "classifier", "1.0", "1.1", "1.2"
PORT = 18001
NO_CACHE = {"Cache-Control": "no-cache"}
ROLLOUTS_DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dashboards" / "rollouts.json"
BROKEN_HANDLER = '''"""A deliberately broken candidate: every request fails in the handler."""


def handle(data, context):
    if data is None:  # TorchServe initialises a module-level handler by calling it without data
        return None
    raise RuntimeError("deliberately broken candidate")
'''


@pytest.fixture(scope="module")
def store() -> Path:
    return Settings.from_values({}).model_store


@pytest.fixture(scope="module")
def torchserve(live_stack: LiveStack) -> Iterator[TorchServe]:
    ts = TorchServe(Settings.from_values({}))
    yield ts
    ts.close()


def _forget(ts: TorchServe, version: str) -> None:
    info = ts.describe(MODEL)
    if info.default != LIVE:
        ts.set_default(MODEL, LIVE)
    if info.version(version) is not None:
        ts.unregister(MODEL, version)


def _stop_rollouts() -> None:
    with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:
        cur.execute("UPDATE rollouts SET state = 'stopped', ended_at = now(), ended_reason = 'test cleanup'"
                    " WHERE model = %s AND state = 'active'", (MODEL,))


@pytest.fixture(scope="module")
def candidates(torchserve: TorchServe, store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """1.1 built from the spec on OpenVINO (gated) and deployed; 1.2 a handler that always fails, registered as is."""
    assert torchserve.describe(MODEL).default == LIVE, "the shared stack must serve classifier 1.0 by default"
    _stop_rollouts()
    for version in (GOOD, BROKEN):
        _forget(torchserve, version)
    if not (store / f"{MODEL}_v{GOOD}.mar").is_file():
        build(find_spec(MODEL, GOOD, engine="openvino"), store)
    broken = build_broken_archive(tmp_path_factory.mktemp("broken"))
    shutil.copy(broken, store / broken.name)
    try:
        assert run("deploy", f"{MODEL}_v{GOOD}.mar", "--workers", "1")[0] == 0
        torchserve.register(MODEL, broken.name, 1)
        yield
    finally:
        _stop_rollouts()
        for version in (GOOD, BROKEN):
            _forget(torchserve, version)
        (store / broken.name).unlink(missing_ok=True)


def build_broken_archive(directory: Path) -> Path:
    (directory / "broken_handler.py").write_text(BROKEN_HANDLER)
    (directory / "empty.bin").write_bytes(b"")
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    subprocess.run([str(archiver), "--model-name", MODEL, "--version", BROKEN, "--handler", "broken_handler.py",
                    "--serialized-file", "empty.bin", "--export-path", str(directory), "--force"],
                   cwd=directory, check=True, capture_output=True, timeout=120)
    built = directory / f"{MODEL}.mar"
    named = directory / f"{MODEL}_v{BROKEN}_broken.mar"
    built.rename(named)
    return named


@dataclass(frozen=True)
class RolloutBridge:
    url: str
    captures: Path


@pytest.fixture(scope="module")
def bridge(live_stack: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutBridge]:
    state = tmp_path_factory.mktemp("rollout-bridge")
    captures = state / "captures"
    service = Bridge(name="bridge-rollouts", state_dir=state, port=PORT, env={
        "BRIDGE_CAPTURE_FRACTION": "1", "BRIDGE_CAPTURE_DIR": str(captures),
        "BRIDGE_CANARY_CHECK_S": "1", "BRIDGE_TELEMETRY_INTERVAL_S": "2", "BRIDGE_SHADOW_QUEUE": "256",
    })
    service.up()
    try:
        yield RolloutBridge(service.url, captures)
    finally:
        service.stop()


ACTOR = f"it-rollouts-{uuid.uuid4().hex[:6]}"


def run(*argv: str, env: dict[str, str] | None = None, capture_dir: Path | None = None) -> tuple[int, str]:
    """servingctl in-process; (exit status, stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--actor", ACTOR], stdout=out, stderr=err, environ=env or {})
    return code, out.getvalue() + err.getvalue()


def send(url: str, photo: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.put(f"{url}/predictions/{MODEL}", data=photo, headers={**NO_CACHE, **(headers or {})}, timeout=60)


def rows(sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def wait_for(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def reference(live_ids: list[str], version: str) -> dict[str, Any]:
    """The comparison computed here, from the rows, without stack.comparison."""
    found = rows(
        "SELECT l.status, l.output, l.latency_ms, c.status, c.output, c.latency_ms FROM inferences c"
        " JOIN inferences l ON l.request_id = c.shadow_of WHERE c.shadow_of = ANY(%s::uuid[]) AND c.model_version = %s"
        " AND c.source = 'shadow'", live_ids, version)
    assert len(found) == len(live_ids), f"{len(found)} shadow pairs for {len(live_ids)} live requests"
    top1, overlap = [], []
    for live_status, live, _, candidate_status, candidate, _ in found:
        if live_status == candidate_status == 200:
            a = [p["label"] for p in live["predictions"]]
            b = [p["label"] for p in candidate["predictions"]]
            top1.append(float(a[0] == b[0]))
            overlap.append(len(set(a) & set(b)) / len(a))
    return {
        "samples": len(found),
        "top1_agreement": sum(top1) / len(top1) if top1 else None,
        "top5_overlap": sum(overlap) / len(overlap) if overlap else None,
        "live_p50": percentile([r[2] for r in found if r[0] == 200], 0.5),
        "candidate_p99": percentile([r[5] for r in found if r[3] == 200], 0.99) if any(r[3] == 200 for r in found) else None,
        "candidate_errors": sum(r[3] >= 500 for r in found) / len(found),
    }


def shadow_traffic(url: str, photos: dict[str, bytes], rounds: int) -> list[str]:
    """Every photo ``rounds`` times, two in flight (load), all answered 200 by the live version."""
    bodies = [photo for _ in range(rounds) for photo in photos.values()]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda body: send(url, body), bodies))
    assert [a.status_code for a in answers] == [200] * len(bodies)
    assert {a.headers["X-Model-Version"] for a in answers} == {LIVE}  # a shadow never answers a client
    return [a.headers["X-Request-Id"] for a in answers]


def pairs_recorded(ids: list[str]) -> bool:
    return rows("SELECT count(*) FROM inferences WHERE shadow_of = ANY(%s::uuid[])", ids)[0][0] >= len(ids)


def history() -> list[tuple[str, str | None, dict[str, Any]]]:
    found = rows("SELECT action, version, detail FROM model_changes WHERE model = %s AND (actor = %s OR actor LIKE"
                 " 'bridge@%%') AND changed_at > now() - interval '15 minutes' ORDER BY id", MODEL, ACTOR)
    return [(action, version, detail) for action, version, detail in found]


@dataclass(frozen=True)
class Shadowed:
    ids: list[str]  # the live requests, each copied to 1.1
    since: datetime  # the first of them


@pytest.fixture(scope="module")
def shadowed(candidates: None, bridge: RolloutBridge, photos: dict[str, bytes]) -> Shadowed:
    """1.1 shadowing 100 % of classifier's live requests, under load (two in flight), every copy recorded."""
    code, out = run("shadow", MODEL, GOOD)
    assert code == 0, out
    wait_for(lambda: requests.get(f"{bridge.url}/v1/rollouts", timeout=5).json()["items"], 5, "the bridge to see it")
    time.sleep(1.2)  # the shared bridge too (BRIDGE_ROLLOUT_REFRESH_S)
    ids = shadow_traffic(bridge.url, photos, rounds=4)
    wait_for(lambda: pairs_recorded(ids), 30, "every shadow answer to be recorded")
    since = rows("SELECT min(created_at) FROM inferences WHERE request_id = ANY(%s::uuid[])", ids)[0][0]
    return Shadowed(ids, since)


def compare_report(bridge: RolloutBridge, shadowed: Shadowed) -> dict[str, Any]:
    report = requests.get(f"{bridge.url}/v1/reports/compare", params={
        "model": MODEL, "version": GOOD, "since": shadowed.since.isoformat(), "source": "shadow"}, timeout=10)
    assert report.status_code == 200, report.text
    return dict(report.json()["comparison"])


def test_shadow_answers_are_linked_never_served_and_compared_as_a_reference_says(
    bridge: RolloutBridge, shadowed: Shadowed,
) -> None:
    ids = shadowed.ids
    linked = requests.get(f"{bridge.url}/v1/results", params={"shadow_of": ids[0]}, timeout=10).json()["items"]
    assert [(r["model_version"], r["source"], r["shadow_of"]) for r in linked] == [(GOOD, "shadow", ids[0])]
    served = requests.get(f"{bridge.url}/v1/results", params={"model": MODEL, "version": GOOD}, timeout=10).json()
    assert served["items"] == []  # a candidate's shadow answers are not what clients were served

    expected = reference(ids, GOOD)
    comparison = compare_report(bridge, shadowed)
    assert comparison["samples"] == expected["samples"] == len(ids)
    assert comparison["metrics"]["top1_agreement"]["value"] == pytest.approx(expected["top1_agreement"])
    assert comparison["metrics"]["top5_overlap"]["value"] == pytest.approx(expected["top5_overlap"])
    assert comparison["live"]["p50_ms"] == pytest.approx(expected["live_p50"])
    assert comparison["candidate"]["p99_ms"] == pytest.approx(expected["candidate_p99"])
    assert comparison["candidate"]["server_errors"]["value"] == expected["candidate_errors"] == 0
    assert expected["top1_agreement"] >= 0.9  # the same network on another engine

    code, out = run("compare", MODEL, GOOD, "--since", shadowed.since.isoformat(), "--source", "shadow", "--json")
    assert code == 0, out
    assert json.loads(out)["metrics"] == comparison["metrics"]


def test_replaying_the_captured_photos_gives_the_comparison_shadowing_gave(
    bridge: RolloutBridge, shadowed: Shadowed,
) -> None:
    comparison = compare_report(bridge, shadowed)
    code, out = run("replay", MODEL, GOOD, "--since", shadowed.since.isoformat(), "--json",
                    env={"SERVINGCTL_CAPTURE_DIR": str(bridge.captures)})
    assert code == 0, out
    replayed = json.loads(out[out.index("{"):])
    assert replayed["samples"] == len(shadowed.ids)
    for name in ("top1_agreement", "top5_overlap"):
        assert replayed["metrics"][name]["value"] == pytest.approx(comparison["metrics"][name]["value"]), name
    assert replayed["candidate"]["server_errors"]["value"] == 0


def test_promote_is_gated_on_the_comparison_then_sets_the_default_and_rollback_undoes_it(
    bridge: RolloutBridge, shadowed: Shadowed, torchserve: TorchServe,
) -> None:
    since = shadowed.since.isoformat()
    code, out = run("promote", MODEL, GOOD, "--since", since, env={"SERVINGCTL_PROMOTE_MIN_SAMPLES": "1000"})
    assert code == Refused.exit_code and "at least 1000 needed" in out, out
    assert torchserve.describe(MODEL).default == LIVE
    code, out = run("promote", MODEL, GOOD, "--since", since,
                    env={"SERVINGCTL_PROMOTE_MIN_SAMPLES": str(len(shadowed.ids))})
    try:
        assert code == 0, out
        assert torchserve.describe(MODEL).default == GOOD
    finally:
        code, out = run("rollback", MODEL)
        assert code == 0, out
    assert torchserve.describe(MODEL).default == LIVE
    actions = [(action, version) for action, version, _ in history()]
    assert actions[-4:] == [("promote-refused", GOOD), ("set-default", GOOD), ("promote", GOOD),
                            ("rollback", LIVE)] and ("shadow", GOOD) in actions, actions
    rollout = rows("SELECT state FROM rollouts WHERE model = %s AND version = %s ORDER BY id DESC LIMIT 1", MODEL, GOOD)
    assert rollout == [("promoted",)]
    wait_for(lambda: requests.get(f"{bridge.url}/v1/rollouts", timeout=5).json()["items"] == [], 5,
             "the promoted rollout to end on the bridge")


def test_every_rollouts_dashboard_panel_shows_data(
    bridge: RolloutBridge, shadowed: Shadowed, photos: dict[str, bytes],
) -> None:
    """Each panel's InfluxQL (Grafana's macros expanded) returns data after the shadow above and some feedback."""
    price = requests.put(f"{bridge.url}/predictions/price", data=photos["coffee"], headers=NO_CACHE, timeout=60)
    assert price.status_code == 200, price.text
    for request_id, truth in ((shadowed.ids[0], "tabby"), (price.headers["X-Request-Id"], 12.5)):
        wait_for(lambda rid=request_id: rows("SELECT 1 FROM inferences WHERE request_id = %s", rid), 10, "the row")
        answer = requests.post(f"{bridge.url}/v1/feedback", json={"request_id": request_id, "truth": truth}, timeout=10)
        assert answer.status_code in (200, 201), answer.text
    dashboard = json.loads(ROLLOUTS_DASHBOARD.read_text())
    queries = [(panel["title"], target["query"]) for panel in dashboard["panels"] for target in panel["targets"]]
    for title, query in queries:
        wait_for(lambda q=query: has_values(influx(expand(q))), 20, f"data in panel {title!r}: {expand(query)}")


def test_a_broken_candidate_is_refused_by_promote_and_aborted_as_a_canary(
    candidates: None, bridge: RolloutBridge, photos: dict[str, bytes], torchserve: TorchServe,
) -> None:
    code, out = run("shadow", MODEL, BROKEN)
    assert code == 0, out
    time.sleep(1.5)
    ids = shadow_traffic(bridge.url, {"chelsea": photos["chelsea"], "coffee": photos["coffee"]}, rounds=5)
    wait_for(lambda: pairs_recorded(ids), 30, "every shadow answer to be recorded")
    code, out = run("promote", MODEL, BROKEN, env={"SERVINGCTL_PROMOTE_MIN_SAMPLES": "10"})
    assert code == Refused.exit_code, out
    assert "server errors 100.00 %" in out and "top1_agreement: no pair of answers" in out, out
    assert torchserve.describe(MODEL).default == LIVE

    code, out = run("canary", MODEL, BROKEN, "--percent", "50", "--window", "60", "--min-requests", "5")
    assert code == 0, out
    wait_for(lambda: requests.get(f"{bridge.url}/v1/rollouts", timeout=5).json()["items"][0]["mode"] == "canary", 5,
             "the canary to be seen")
    time.sleep(1.2)
    failed: list[str] = []
    for client in range(40):
        for _ in range(2):
            answer = send(bridge.url, photos["chelsea"], {"X-Client-Id": f"client-{client}"})
            if answer.status_code != 200:
                failed.append(f"client-{client}")
            else:
                assert answer.headers["X-Model-Version"] == LIVE
        if not requests.get(f"{bridge.url}/v1/rollouts", timeout=5).json()["items"]:
            break  # aborted already
    # Only the canary's clients met the candidate: those whose share of the model falls under 50 %, on any bridge.
    assert failed and all(client_share(MODEL, f"id:{client}") < 0.5 for client in failed), failed
    wait_for(lambda: not requests.get(f"{bridge.url}/v1/rollouts", timeout=5).json()["items"], 15, "the canary's abort")
    assert rows("SELECT state FROM rollouts WHERE model = %s AND version = %s ORDER BY id DESC LIMIT 1",
                MODEL, BROKEN) == [("aborted",)]
    aborts = [(version, detail) for action, version, detail in history() if action == "canary-abort"]
    assert aborts and aborts[-1][0] == BROKEN and "server errors" in aborts[-1][1]["reason"], aborts
    time.sleep(1.2)
    after = [send(bridge.url, photos["chelsea"], {"X-Client-Id": f"client-{c}"}) for c in range(10)]
    assert {(a.status_code, a.headers["X-Model-Version"]) for a in after} == {(200, LIVE)}
    code, out = run("stop-rollout", MODEL)
    assert code == NotFound.exit_code, out  # nothing active any more
