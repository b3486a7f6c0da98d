"""servingctl against a fake TorchServe (a real HTTP server in a thread), with an in-memory history."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from archive_scripts.golden import Expectation, GoldenCase, TopLabelIn
from ops.cli import Dependencies, main
from ops.errors import HistoryUnavailable, Refused, UsageError
from ops.golden import (
    AnswerIsObject,
    ContainsJson,
    GoldenLookup,
    HasLabel,
    TopLabel,
    parse_golden,
    sample_photo,
    spec_golden,
)
from ops.history import Change, InfluxChanges, MemoryHistory, rollback_target
from ops.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_keys(path: Path, management: str = "mgmt-1", inference: str = "inf-1",
               expires_in: timedelta = timedelta(minutes=60)) -> None:
    """A key file shaped like TorchServe 0.12's."""
    expires = (datetime.now(UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    path.write_text(json.dumps({
        "management": {"key": management, "expiration time": expires},
        "inference": {"key": inference, "expiration time": expires},
        "API": {"key": "api-1"},
    }))


def version_json(model: str, version: str, workers: int = 1, min_w: int | None = None,
                 max_w: int | None = None) -> dict[str, Any]:
    return {
        "modelName": model, "modelVersion": version, "modelUrl": f"{model}_v{version}.mar",
        "minWorkers": workers if min_w is None else min_w, "maxWorkers": workers if max_w is None else max_w,
        "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 30,
        "workers": [{"id": str(9000 + i), "status": "READY", "memoryUsage": 500 * 2**20, "pid": 4000 + i}
                    for i in range(workers)],
    }


@dataclass
class FakeTorchServe:
    """TorchServe's management and inference APIs, enough for servingctl: state, keys, error bodies."""

    key_file: Path
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    # label answered per version; None: a malformed answer
    labels: dict[str, str | None] = field(default_factory=dict)
    management_key: str = "mgmt-1"
    inference_key: str = "inf-1"
    scale_answers_500: bool = False  # TorchServe 0.12 on some synchronous scale-downs that did happen

    def add(self, model: str, version: str, default: bool = False, workers: int = 1) -> None:
        entry = self.models.setdefault(model, {"default": version, "versions": {}})
        entry["versions"][version] = version_json(model, version, workers)
        if default:
            entry["default"] = version

    def mutations(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.calls if m != "GET" and not p.startswith("/predictions")]

    # --- request handling ---------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, Any]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.calls.append((method, url.path, query))
        parts = [p for p in url.path.split("/") if p]
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if parts[:1] == ["token"]:
            return self.renew(query["type"], token)
        expected = self.inference_key if parts[:1] == ["predictions"] else self.management_key
        if token != expected:
            return 400, {"code": 400, "type": "InvalidKeyException",
                         "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}
        if parts[:1] == ["predictions"]:
            return self.predict(parts[1], parts[2])
        if method == "GET" and parts == ["models"]:
            return 200, {"models": [{"modelName": m, "modelUrl": f"{m}_v{e['default']}.mar"} for m, e in self.models.items()]}
        if method == "POST" and parts == ["models"]:
            return self.register(query)
        model = self.models.get(parts[1])
        if model is None:
            return 404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {parts[1]}"}
        version = parts[2] if len(parts) > 2 and parts[2] != "all" else None
        if version is not None and version not in model["versions"]:
            return 404, {"code": 404, "type": "ModelVersionNotFoundException",
                         "message": f"Model version: {version} does not exist for model: {parts[1]}"}
        if method == "GET":
            if len(parts) > 2 and parts[2] == "all":
                return 200, list(model["versions"].values())
            return 200, [model["versions"][version or model["default"]]]
        if method == "PUT" and parts[-1] == "set-default":
            model["default"] = version
            return 200, {"status": "Default version successfully updated"}
        if method == "PUT":
            described = model["versions"][version or model["default"]]
            lo, hi = int(query["min_worker"]), int(query["max_worker"])
            described.update(version_json(parts[1], described["modelVersion"], lo, lo, hi))
            if self.scale_answers_500:
                return 500, {"code": 500, "type": "InternalServerException",
                             "message": f"Failed to start workers for model {parts[1]} version: null"}
            return 200, {"status": "Workers scaled"}
        if method == "DELETE":
            if version == model["default"]:
                return 403, {"code": 403, "type": "InvalidModelVersionException",
                             "message": f"Cannot remove default version for model {parts[1]}"}
            del model["versions"][version]
            return 200, {"status": f'Model "{parts[1]}" unregistered'}
        return 405, {"code": 405, "type": "MethodNotAllowedException", "message": "Requested method is not allowed"}

    def register(self, query: dict[str, str]) -> tuple[int, Any]:
        name, _, version = query["url"].removesuffix(".mar").partition("_v")
        versions = self.models.setdefault(name, {"default": version, "versions": {}})["versions"]
        if version in versions:
            return 409, {"code": 409, "type": "ConflictStatusException", "message": "already registered"}
        versions[version] = version_json(name, version, int(query.get("initial_workers", 1)))
        versions[version]["batchSize"] = int(query.get("batch_size", 8))
        versions[version]["maxBatchDelay"] = int(query.get("max_batch_delay", 10))
        return 200, {"status": f'Model "{name}" Version: {version} registered with 1 initial workers'}

    def predict(self, model: str, version: str) -> tuple[int, Any]:
        if version not in self.models.get(model, {}).get("versions", {}):
            return 404, {"code": 404, "type": "ModelVersionNotFoundException", "message": "no such version"}
        label = self.labels.get(version, "tabby")
        if label is None:
            return 200, {"unexpected": True}
        return 200, {"predictions": [{"label": label, "index": 281, "score": 0.9}],
                     "model": {"name": model, "version": version}, "batch_size": 1}

    def renew(self, kind: str, token: str) -> tuple[int, Any]:
        if token != "api-1":
            return 400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed"}
        if kind == "management":
            self.management_key = "mgmt-renewed"
        write_keys(self.key_file, management=self.management_key, inference=self.inference_key)
        return 200, {"status": "renewed"}


@pytest.fixture()
def fake(tmp_path: Path) -> Iterator[tuple[FakeTorchServe, str]]:
    """A fake TorchServe listening on a free loopback port: (its state, its URL)."""
    with fake_box(tmp_path) as box:
        yield box


@contextmanager
def fake_box(tmp_path: Path) -> Iterator[tuple[FakeTorchServe, str]]:
    """The ``fake`` fixture's TorchServe (one more for a test of several boxes)."""
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    state = FakeTorchServe(key_file)
    state.add("resnet18", "1.0", default=True, workers=2)
    state.add("classifier", "1.0", default=True)

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            status, body = state.handle(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A model store with a resnet18 2.0 archive (only its MAR-INF/MANIFEST.json matters here)."""
    path = tmp_path / "store"
    path.mkdir()
    for name, version in (("resnet18", "2.0"), ("resnet18", "1.0")):
        with zipfile.ZipFile(path / f"{name}_v{version}.mar", "w") as mar:
            mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": name, "modelVersion": version}}))
    return path


class RecordingSink:
    def __init__(self, warning: str | None = None) -> None:
        self.changes: list[Change] = []
        self.warning = warning

    def write(self, change: Change) -> str | None:
        self.changes.append(change)
        return self.warning


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    """Runs servingctl in-process against the fake, with a shared in-memory history."""

    url: str
    key_file: Path
    store: Path
    history: MemoryHistory = field(default_factory=MemoryHistory)
    sink: RecordingSink = field(default_factory=RecordingSink)
    golden: tuple[GoldenCase, ...] = (GoldenCase("chelsea", TopLabelIn(("tabby",))), GoldenCase("rocket"))
    photos: list[str] = field(default_factory=list)
    lookup: GoldenLookup | None = None  # the golden cases' lookup (default: ``golden`` for any model)

    def __call__(self, *argv: str, environ: dict[str, str] | None = None) -> Run:
        out, err = io.StringIO(), io.StringIO()

        def photo(name: str) -> bytes:
            self.photos.append(name)
            return b"\xff\xd8fake"

        deps = Dependencies(golden=self.lookup or (lambda model, version: self.golden), photo=photo,
                            history=lambda settings: self.history, sink=lambda settings: self.sink)
        env = {"SERVINGCTL_MANAGEMENT_URL": self.url, "SERVINGCTL_INFERENCE_URL": self.url,
               "SERVINGCTL_KEY_FILE": str(self.key_file), "SERVINGCTL_MODEL_STORE": str(self.store),
               "SERVINGCTL_ACTOR": "tester", "SERVINGCTL_TIMEOUT_S": "5", **(environ or {})}
        code = main(list(argv), deps, out, err, env)
        return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture()
def cli(fake: tuple[FakeTorchServe, str], store: Path) -> Cli:
    state, url = fake
    return Cli(url=url, key_file=state.key_file, store=store)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- arguments ------------------------------------------------------------------------------------------


def test_help_explains_every_command_and_setting(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for word in ("models", "describe", "deploy", "set-default", "rollback", "retire", "scale", "history",
                 "SERVINGCTL_PG_DSN", "SERVINGCTL_KEY_FILE", "SERVINGCTL_MANAGEMENT_URL", "exit status"):
        assert word in result.out


@pytest.mark.parametrize("argv", [
    (),
    ("frobnicate",),
    ("describe",),
    ("scale", "resnet18", "--min", "1"),
    ("scale", "resnet18", "--min", "one", "--max", "2"),
    ("set-default", "resnet18"),
])
def test_argument_errors_exit_2_with_usage(cli: Cli, argv: tuple[str, ...]) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert "usage: servingctl" in result.err


@pytest.mark.parametrize(("archive", "says"), [
    ("../resnet18_v2.0.mar", "not a file"), ("sub/resnet18_v2.0.mar", "not a file"),
    ("/nonexistent/x.mar", "not a file"), ("..mar", "model store"), ("resnet18_v2.0.zip", "must be a .mar file"),
    ("missing_v9.mar", "nor one of the model store's"),
])
def test_deploy_refuses_an_archive_neither_in_the_model_store_nor_a_file(
    cli: Cli, fake: tuple[FakeTorchServe, str], archive: str, says: str
) -> None:
    result = cli("deploy", archive)
    assert result.code == 2, result.err
    assert says in result.err and "Traceback" not in result.err
    assert fake[0].mutations() == []


def test_scale_refuses_min_above_max(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    result = cli("scale", "resnet18", "--min", "3", "--max", "1")
    assert result.code == 2 and "--min" in result.err
    assert fake[0].mutations() == []


def test_a_bad_setting_in_the_environment_is_a_usage_error(cli: Cli) -> None:
    result = cli("models", environ={"SERVINGCTL_TIMEOUT_S": "soon"})
    assert result.code == 2 and "SERVINGCTL" not in result.out


def test_flags_override_environment_and_may_follow_the_command(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    result = cli("scale", "resnet18", "--min", "1", "--max", "1", "--actor", "alice")
    assert result.code == 0, result.err
    assert cli.history.changes("resnet18")[0].actor == "alice"
    settings = Settings.from_values({}, {"SERVINGCTL_PG_DSN": "postgresql://x@h/db", "USER": "bob"})
    assert settings.pg_dsn == "postgresql://x@h/db" and settings.actor == "bob"
    assert Settings.from_values({"pg_dsn": "postgresql://flag"}, {"SERVINGCTL_PG_DSN": "env"}).pg_dsn == "postgresql://flag"


# --- TorchServe's failures --------------------------------------------------------------------------------


def test_connection_refused_says_torchserve_is_not_running(cli: Cli) -> None:
    port = free_port()
    result = cli("models", environ={"SERVINGCTL_MANAGEMENT_URL": f"http://127.0.0.1:{port}"})
    assert result.code == 3
    assert f"TorchServe is not running on 127.0.0.1:{port}; start it with `make up`" in result.err


def test_missing_key_file_and_nothing_listening_is_also_not_running(cli: Cli, tmp_path: Path) -> None:
    port = free_port()
    result = cli("describe", "resnet18", environ={"SERVINGCTL_MANAGEMENT_URL": f"http://127.0.0.1:{port}",
                                                  "SERVINGCTL_KEY_FILE": str(tmp_path / "gone.json")})
    assert result.code == 3 and "is not running" in result.err


def test_missing_key_file_while_torchserve_answers_points_at_key_file(cli: Cli, tmp_path: Path) -> None:
    result = cli("models", environ={"SERVINGCTL_KEY_FILE": str(tmp_path / "gone.json")})
    assert result.code == 5 and "gone.json" in result.err and "--key-file" in result.err


def test_unknown_model_is_404_listing_the_known_ones(cli: Cli) -> None:
    result = cli("describe", "nosuch")
    assert result.code == 4
    assert "no model 'nosuch'" in result.err and "classifier, resnet18" in result.err


def test_unknown_version_is_404_listing_the_versions(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0")
    result = cli("set-default", "resnet18", "9.9")
    assert result.code == 4
    assert "no version '9.9'" in result.err and "1.0, 2.0" in result.err
    assert fake[0].mutations() == []


def test_rejected_key_says_the_key_file_may_be_stale(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].management_key = "rotated-elsewhere"
    result = cli("models")
    assert result.code == 5
    assert "InvalidKeyException" in result.err and "key file may be stale" in result.err
    # one retry after re-reading the key file, then give up
    assert [c[1] for c in fake[0].calls] == ["/models", "/models"]


def test_a_key_renewed_by_another_process_is_picked_up(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    state = fake[0]
    state.management_key = "mgmt-2"
    original = state.handle

    def handle(method: str, target: str, headers: dict[str, str]) -> tuple[int, Any]:
        answer = original(method, target, headers)
        if answer[0] == 400:  # the bridge renewed meanwhile: the file now has the new key
            write_keys(state.key_file, management="mgmt-2")
        return answer

    state.handle = handle  # type: ignore[method-assign]
    assert cli("models").code == 0


def test_a_key_about_to_expire_is_renewed_with_the_api_key(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    state = fake[0]
    write_keys(state.key_file, expires_in=timedelta(seconds=30))
    # Issued an hour ago (TorchServe's default lifetime): 30 s left is inside the renewal window of 2 min.
    # (A key file written just now with 30 s of life would be renewed only in its last quarter, 7.5 s.)
    issued = time.time() - 3600
    os.utime(state.key_file, (issued, issued))
    result = cli("models")
    assert result.code == 0, result.err
    assert ("GET", "/token", {"type": "management"}) in state.calls
    assert json.loads(state.key_file.read_text())["management"]["key"] == "mgmt-renewed"


# --- reading ----------------------------------------------------------------------------------------------


def test_models_and_describe_show_versions_workers_and_batching(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0")
    listing = cli("models")
    assert listing.code == 0
    assert "resnet18    classifier  1.0      *" in listing.out and "resnet18    classifier  2.0" in listing.out
    fake[0].add("their-model", "0.3")
    assert "their-model  json        0.3" in cli("models").out  # a model the catalogue does not know
    described = cli("describe", "resnet18")
    assert described.code == 0
    assert "default version 1.0; versions 1.0, 2.0" in described.out
    assert "batchSize 8" in described.out and "maxBatchDelay 10 ms" in described.out
    assert "workers min 2 / max 2" in described.out and "responseTimeout 30 s" in described.out
    assert "worker 9000" in described.out and "READY" in described.out and "500 MiB" in described.out
    assert "pid 4000" in described.out
    as_json = json.loads(cli("describe", "resnet18", "--json").out)
    assert as_json["default"] == "1.0" and [v["version"] for v in as_json["versions"]] == ["1.0", "2.0"]


# --- deploy -----------------------------------------------------------------------------------------------


def test_deploy_checks_golden_inputs_through_torchserve_then_sets_default(
    cli: Cli, fake: tuple[FakeTorchServe, str]
) -> None:
    state = fake[0]
    result = cli("deploy", "resnet18_v2.0.mar", "--set-default")
    assert result.code == 0, result.err
    assert ("POST", "/models", {"url": "resnet18_v2.0.mar", "initial_workers": "1", "synchronous": "true"}) in state.calls
    predictions = [c[1] for c in state.calls if c[1].startswith("/predictions")]
    assert predictions == ["/predictions/resnet18/2.0"] * 2 and cli.photos == ["chelsea", "rocket"]
    assert state.models["resnet18"]["default"] == "2.0"
    actions = [(c.action, c.from_value, c.to_value) for c in reversed(cli.history.changes("resnet18"))]
    assert actions == [("deploy", None, "2.0"), ("set-default", "1.0", "2.0")]
    assert [c.action for c in cli.sink.changes] == ["deploy", "set-default"]


def test_deploy_passes_batch_overrides_to_torchserve(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    result = cli("deploy", "resnet18_v2.0.mar", "--batch-size", "4", "--max-batch-delay", "25")
    assert result.code == 0, result.err
    register = next(q for m, p, q in fake[0].calls if (m, p) == ("POST", "/models"))
    assert register["batch_size"] == "4" and register["max_batch_delay"] == "25" and "response_timeout" not in register
    assert cli.history.changes("resnet18")[0].detail["batch_size"] == 4
    assert "batchSize 4   maxBatchDelay 25 ms" in cli("describe", "resnet18").out


def test_deploy_without_set_default_keeps_the_default(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    result = cli("deploy", "resnet18_v2.0.mar")
    assert result.code == 0, result.err
    assert fake[0].models["resnet18"]["default"] == "1.0"
    assert "2.0" in fake[0].models["resnet18"]["versions"]
    assert "servingctl set-default resnet18 2.0" in result.out


def test_failed_golden_check_unregisters_and_keeps_the_old_default(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    state = fake[0]
    state.labels["2.0"] = "goldfish"  # the new version answers, but wrongly for the cat
    result = cli("deploy", "resnet18_v2.0.mar", "--set-default")
    assert result.code == 8
    assert "failed its golden check" in result.err and "the default stays 1.0" in result.err
    assert "top-1 'goldfish'" in result.err
    assert ("DELETE", "/models/resnet18/2.0") in state.mutations()
    assert not any(p.endswith("set-default") for _, p in state.mutations())
    assert state.models["resnet18"]["default"] == "1.0" and list(state.models["resnet18"]["versions"]) == ["1.0"]
    assert [c.action for c in cli.history.changes("resnet18")] == ["deploy-rejected"]


def test_malformed_answers_fail_the_golden_check(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].labels["2.0"] = None
    cli.golden = (GoldenCase("rocket"),)
    assert cli("deploy", "resnet18_v2.0.mar").code == 8
    assert list(fake[0].models["resnet18"]["versions"]) == ["1.0"]


def test_deploy_of_a_registered_version_is_refused(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    result = cli("deploy", "resnet18_v1.0.mar")
    assert result.code == 7 and "already registered" in result.err
    assert fake[0].mutations() == []


def test_nothing_changes_when_the_history_is_unreachable(cli: Cli, fake: tuple[FakeTorchServe, str], store: Path) -> None:
    def unreachable(settings: Settings) -> MemoryHistory:
        raise HistoryUnavailable("cannot reach the change history in PostgreSQL; nothing was changed")

    for argv in (("deploy", "resnet18_v2.0.mar", "--set-default"), ("scale", "resnet18", "--min", "1", "--max", "1"),
                 ("retire", "resnet18", "1.0"), ("rollback", "resnet18")):
        out, err = io.StringIO(), io.StringIO()
        env = {"SERVINGCTL_MANAGEMENT_URL": cli.url, "SERVINGCTL_INFERENCE_URL": cli.url,
               "SERVINGCTL_KEY_FILE": str(cli.key_file), "SERVINGCTL_MODEL_STORE": str(store)}
        code = main(list(argv), Dependencies(history=unreachable, sink=lambda s: RecordingSink(),
                                             golden=lambda m, v: cli.golden, photo=lambda n: b""), out, err, env)
        assert code == 6, (argv, err.getvalue())
        assert "nothing was changed" in err.getvalue()
    assert fake[0].mutations() == []


def test_an_influx_failure_is_only_a_warning(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    cli.sink = RecordingSink(warning="recording the change in InfluxDB (127.0.0.1:1/serving) failed: refused")
    result = cli("scale", "resnet18", "--min", "1", "--max", "1")
    assert result.code == 0
    assert "servingctl: warning: recording the change in InfluxDB" in result.err


def test_influx_sink_returns_a_warning_when_influx_is_down() -> None:
    sink = InfluxChanges("127.0.0.1", free_port(), "serving", timeout_s=1)
    change = Change("resnet18", "2.0", "set-default", "1.0", "2.0", "tester", id=1,
                    changed_at=datetime.now(UTC))
    warning = sink.write(change)
    assert warning is not None and "InfluxDB" in warning


# --- default, rollback, retire, scale ---------------------------------------------------------------------


def test_retire_is_refused_for_the_default(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0")
    result = cli("retire", "resnet18", "1.0")
    assert result.code == 7 and "is the default version" in result.err
    assert fake[0].mutations() == [] and cli.history.changes("resnet18") == []


def test_retire_unregisters_another_version(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0")
    result = cli("retire", "resnet18", "2.0")
    assert result.code == 0, result.err
    assert fake[0].mutations() == [("DELETE", "/models/resnet18/2.0")]
    assert cli.history.changes("resnet18")[0].action == "retire"


def test_rollback_picks_the_previous_default_and_stacks(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    state = fake[0]
    state.add("resnet18", "2.0")
    state.add("resnet18", "3.0")
    assert cli("set-default", "resnet18", "2.0").code == 0
    assert cli("set-default", "resnet18", "3.0").code == 0

    first = cli("rollback", "resnet18")
    assert first.code == 0, first.err
    assert state.models["resnet18"]["default"] == "2.0" and "3.0 → 2.0" in first.out
    second = cli("rollback", "resnet18")
    assert second.code == 0, second.err
    assert state.models["resnet18"]["default"] == "1.0"
    third = cli("rollback", "resnet18")
    assert third.code == 7 and "no earlier default" in third.err
    assert state.models["resnet18"]["default"] == "1.0"
    newest = cli.history.changes("resnet18")[0]
    assert newest.action == "rollback" and newest.reverts == 1


def test_rollback_refuses_when_the_previous_default_was_retired(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    state = fake[0]
    state.add("resnet18", "2.0")
    assert cli("set-default", "resnet18", "2.0").code == 0
    del state.models["resnet18"]["versions"]["1.0"]
    result = cli("rollback", "resnet18")
    assert result.code == 7 and "no longer registered" in result.err
    assert state.models["resnet18"]["default"] == "2.0"


def test_rollback_target_refuses_a_default_changed_outside_servingctl() -> None:
    history = MemoryHistory()
    history.record(Change("m", "2.0", "set-default", "1.0", "2.0", "a"))
    with pytest.raises(Refused, match="changed outside servingctl"):
        rollback_target("m", history.changes("m"), current_default="3.0")
    assert rollback_target("m", history.changes("m"), current_default="2.0").from_value == "1.0"
    with pytest.raises(Refused, match="no earlier default"):
        rollback_target("m", [], current_default="1.0")


def test_set_default_refuses_a_version_without_ready_workers(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0", workers=0)
    result = cli("set-default", "resnet18", "2.0")
    assert result.code == 7 and "no READY worker" in result.err
    assert fake[0].models["resnet18"]["default"] == "1.0"


def test_scale_is_synchronous_reports_workers_and_is_recorded(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    result = cli("scale", "resnet18", "--min", "1", "--max", "3")
    assert result.code == 0, result.err
    assert ("PUT", "/models/resnet18", {"min_worker": "1", "max_worker": "3", "synchronous": "true"}) in fake[0].calls
    assert "min=2 max=2 workers=2 → min=1 max=3 workers=1" in result.out and "worker 9000" in result.out
    change = cli.history.changes("resnet18")[0]
    assert (change.action, change.version, change.from_value, change.to_value) == (
        "scale", "1.0", "min=2 max=2 workers=2", "min=1 max=3 workers=1")


def test_scale_a_given_version(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0")
    assert cli("scale", "resnet18", "--min", "0", "--max", "1", "--version", "2.0").code == 0
    assert fake[0].mutations() == [("PUT", "/models/resnet18/2.0")]
    refused = cli("scale", "resnet18", "--min", "0", "--max", "1")
    assert refused.code == 7 and "without workers" in refused.err


def test_history_lists_who_what_when(cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    fake[0].add("resnet18", "2.0")
    cli("set-default", "resnet18", "2.0")
    cli("rollback", "resnet18")
    result = cli("history", "resnet18")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split()[:5] == ["ID", "WHEN", "WHO", "ACTION", "VERSION"]
    assert "tester" in lines[1] and "rollback" in lines[1] and "2.0 → 1.0" in lines[1] and "undoes #1" in lines[1]
    assert "set-default" in lines[2] and "1.0 → 2.0" in lines[2]


def test_python_dash_m_ops_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "ops", "--help"], check=False, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "usage: servingctl" in result.stdout


# --- routes: one box per model ----------------------------------------------------------------------------


def test_with_routes_each_model_is_managed_on_its_own_box(cli: Cli, fake: tuple[FakeTorchServe, str],
                                                          tmp_path: Path) -> None:
    box_a, url_a = fake
    other = tmp_path / "other"
    other.mkdir()
    with fake_box(other) as (box_b, url_b):
        box_b.models.pop("classifier")
        box_b.add("classifier", "3.0", default=True)  # box B also loads a resnet18 it is not routed for
        routes = {"resnet18": {"url": url_a, "management_url": url_a, "key_file": str(box_a.key_file)},
                  "classifier": {"url": url_b, "management_url": url_b, "key_file": str(box_b.key_file)}}
        env = {"SERVINGCTL_ROUTES": json.dumps(routes)}
        listing = cli("models", "--json", environ=env)
        assert listing.code == 0, listing.err
        shown = {(m["model"], m["default"]) for m in json.loads(listing.out)}
        assert shown == {("resnet18", "1.0"), ("classifier", "3.0")}
        assert cli("scale", "classifier", "--min", "2", "--max", "2", environ=env).code == 0
        assert ("PUT", "/models/classifier") in box_b.mutations() and not box_a.mutations()
        unrouted = cli("describe", "similar", environ=env)
        assert unrouted.code != 0 and "not routed" in unrouted.err



# --- routes: one model scaled out to several boxes ----------------------------------------------------------


@contextmanager
def two_resnet18_boxes(cli: Cli, fake: tuple[FakeTorchServe, str], tmp_path: Path
                       ) -> Iterator[tuple[FakeTorchServe, FakeTorchServe, dict[str, str]]]:
    """resnet18 routed to two boxes (the ``fake`` one and another): the environment servingctl needs."""
    box_a, url_a = fake
    other = tmp_path / "other"
    other.mkdir()
    with fake_box(other) as (box_b, url_b):
        routes = {"resnet18": [{"url": url, "management_url": url, "key_file": str(box.key_file)}
                               for box, url in ((box_a, url_a), (box_b, url_b))]}
        yield box_a, box_b, {"SERVINGCTL_ROUTES": json.dumps(routes)}


def test_a_model_on_two_boxes_is_deployed_box_by_box(cli: Cli, fake: tuple[FakeTorchServe, str],
                                                     tmp_path: Path) -> None:
    with two_resnet18_boxes(cli, fake, tmp_path) as (box_a, box_b, env):
        run = cli("deploy", "resnet18_v2.0.mar", "--set-default", environ=env)
        assert run.code == 0, run.err
        assert box_a.models["resnet18"]["default"] == box_b.models["resnet18"]["default"] == "2.0"
        assert run.out.index("[box 127.0.0.1") < run.out.index("resnet18 default: 1.0 → 2.0")
        assert run.out.count("[box ") == 2
        boxes = {c.detail.get("box") for c in cli.history.changes("resnet18") if c.action == "set-default"}
        assert len(boxes) == 2 and None not in boxes
        listing = json.loads(cli("models", "--json", environ=env).out)
        assert sorted((m["box"], m["default"]) for m in listing if m["model"] == "resnet18") == sorted(
            (b, "2.0") for b in boxes)


def test_a_deploy_failing_on_the_second_box_is_undone_on_the_first(cli: Cli, fake: tuple[FakeTorchServe, str],
                                                                  tmp_path: Path) -> None:
    with two_resnet18_boxes(cli, fake, tmp_path) as (box_a, box_b, env):
        box_b.labels["2.0"] = "not a cat"  # box B answers the golden photo wrongly
        run = cli("deploy", "resnet18_v2.0.mar", "--set-default", environ=env)
        assert run.code != 0 and "golden" in run.err
        for box in (box_a, box_b):
            assert box.models["resnet18"]["default"] == "1.0" and "2.0" not in box.models["resnet18"]["versions"]
        assert "undoing" in run.out


def test_scale_and_rollback_change_every_box_of_the_model(cli: Cli, fake: tuple[FakeTorchServe, str],
                                                          tmp_path: Path) -> None:
    with two_resnet18_boxes(cli, fake, tmp_path) as (box_a, box_b, env):
        assert cli("scale", "resnet18", "--min", "3", "--max", "3", environ=env).code == 0
        for box in (box_a, box_b):
            assert len(box.models["resnet18"]["versions"]["1.0"]["workers"]) == 3
        assert cli("deploy", "resnet18_v2.0.mar", "--set-default", environ=env).code == 0
        rolled = cli("rollback", "resnet18", environ=env)
        assert rolled.code == 0, rolled.err
        assert box_a.models["resnet18"]["default"] == box_b.models["resnet18"]["default"] == "1.0"
        described = json.loads(cli("describe", "resnet18", "--json", environ=env).out)
        assert [d["default"] for d in described] == ["1.0", "1.0"] and len({d["box"] for d in described}) == 2


def test_models_lists_the_boxes_that_answer_and_warns_of_one_that_does_not(cli: Cli, fake: tuple[FakeTorchServe, str],
                                                                           tmp_path: Path) -> None:
    box_a, url_a = fake
    down = f"http://127.0.0.1:{free_port()}"
    routes = {"resnet18": {"url": url_a, "management_url": url_a, "key_file": str(box_a.key_file)},
              "similar": {"url": down, "management_url": down, "key_file": str(tmp_path / "absent.json")}}
    listing = cli("models", "--json", environ={"SERVINGCTL_ROUTES": json.dumps(routes)})
    assert listing.code == 0, listing.err
    assert [m["model"] for m in json.loads(listing.out)] == ["resnet18"]
    assert "not running" in listing.err and down.removeprefix("http://") in listing.err


def test_a_scale_down_answered_500_by_torchserve_succeeds_when_the_workers_are_in_range(
        cli: Cli, fake: tuple[FakeTorchServe, str]) -> None:
    state, _ = fake
    state.scale_answers_500 = True
    run = cli("scale", "resnet18", "--min", "1", "--max", "1")
    assert run.code == 0, run.err
    assert "workers=2 → min=1 max=1 workers=1" in run.out, run.out
    assert len(state.models["resnet18"]["versions"]["1.0"]["workers"]) == 1


def test_a_scale_refused_500_with_the_workers_out_of_range_still_fails(cli: Cli, fake: tuple[FakeTorchServe, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from stack.torchserve import protocol

    monkeypatch.setattr(protocol, "SCALE_SETTLE_CHECKS", 2)
    state, _ = fake
    state.scale_answers_500 = True
    real = state.handle

    def no_change(method: str, target: str, headers: dict[str, str]) -> tuple[int, Any]:
        if method == "PUT":
            return 500, {"code": 500, "type": "InternalServerException", "message": "Failed to start workers"}
        return real(method, target, headers)

    state.handle = no_change  # type: ignore[method-assign]
    run = cli("scale", "resnet18", "--min", "3", "--max", "3")
    assert run.code != 0 and "500" in run.err


# --- deploy of a .mar built elsewhere, --golden ----------------------------------------------------------

STOCK_ANSWER = {"tabby": 0.41, "tiger_cat": 0.3, "Egyptian_cat": 0.2, "lynx": 0.05, "model": 0.01}


def write_mar(path: Path, model: str | None = "resnet18", version: str | None = "3.0", payload: bytes = b"w") -> Path:
    """A zip shaped like torch-model-archiver's output (None leaves the field out of the manifest)."""
    fields = {k: v for k, v in (("modelName", model), ("modelVersion", version)) if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"runtime": "python", "model": {
            **fields, "handler": "image_classifier", "serializedFile": "weights.pt"}}))
        mar.writestr("weights.pt", payload)
    return path


def registered_urls(state: FakeTorchServe) -> list[str]:
    return [q["url"] for m, p, q in state.calls if (m, p) == ("POST", "/models")]


def test_a_mar_built_elsewhere_is_copied_into_the_store_and_checked_on_the_command_line_golden(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path
) -> None:
    theirs = write_mar(tmp_path / "elsewhere" / "resnet18_v3.0.mar")
    result = cli("deploy", str(theirs), "--golden", "chelsea=tabby")
    assert result.code == 0, result.err
    assert (store / "resnet18_v3.0.mar").read_bytes() == theirs.read_bytes()
    assert registered_urls(fake[0]) == ["resnet18_v3.0.mar"]
    assert cli.photos == ["chelsea"]  # the command line's cases replace the spec's (chelsea and rocket)
    detail = cli.history.changes("resnet18")[0].detail
    assert detail["copied_from"] == str(theirs.resolve()) and detail["golden"] == "command line"


def test_a_mar_with_an_odd_file_name_is_stored_as_model_v_version(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path
) -> None:
    theirs = write_mar(tmp_path / "my archive (1).mar")
    assert cli("deploy", str(theirs), "--golden", "chelsea=tabby").code == 0
    assert registered_urls(fake[0]) == ["resnet18_v3.0.mar"] and (store / "resnet18_v3.0.mar").is_file()


def test_a_path_into_the_model_store_is_not_copied(cli: Cli, fake: tuple[FakeTorchServe, str], store: Path) -> None:
    result = cli("deploy", str(store / "resnet18_v2.0.mar"))
    assert result.code == 0, result.err
    assert "copied" not in result.out and registered_urls(fake[0]) == ["resnet18_v2.0.mar"]


def test_a_different_file_of_the_same_name_in_the_store_is_never_overwritten(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path
) -> None:
    ours = write_mar(store / "resnet18_v3.0.mar", payload=b"ours")
    before = ours.read_bytes()
    result = cli("deploy", str(write_mar(tmp_path / "resnet18_v3.0.mar", payload=b"theirs")), "--golden", "chelsea=tabby")
    assert result.code == Refused.exit_code and "not overwriting" in result.err
    assert ours.read_bytes() == before and fake[0].mutations() == []


def test_an_identical_file_in_the_store_is_accepted_and_kept_when_the_deploy_fails(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path
) -> None:
    write_mar(store / "resnet18_v3.0.mar")
    fake[0].labels["3.0"] = "goldfish"
    result = cli("deploy", str(write_mar(tmp_path / "resnet18_v3.0.mar")), "--golden", "chelsea=tabby")
    assert result.code == 8, result.err
    assert "already there (the same bytes" in result.out and (store / "resnet18_v3.0.mar").is_file()


def test_a_failed_deploy_removes_the_copy_it_made(cli: Cli, fake: tuple[FakeTorchServe, str], store: Path,
                                                  tmp_path: Path) -> None:
    fake[0].labels["3.0"] = "goldfish"
    result = cli("deploy", str(write_mar(tmp_path / "resnet18_v3.0.mar")), "--golden", "chelsea=top:tabby")
    assert result.code == 8
    assert "top label 'goldfish'" in result.err and "removed" in result.out
    assert not (store / "resnet18_v3.0.mar").exists()
    assert "3.0" not in fake[0].models["resnet18"]["versions"]
    assert [c.action for c in cli.history.changes("resnet18")] == ["deploy-rejected"]


def test_a_copy_is_removed_when_the_version_is_already_registered(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path
) -> None:
    result = cli("deploy", str(write_mar(tmp_path / "theirs.mar", version="1.0")), "--golden", "chelsea=tabby")
    assert result.code == 7 and "already registered" in result.err
    assert not (store / "theirs.mar").exists() and fake[0].mutations() == []


def test_a_bare_name_in_both_the_store_and_here_that_differ_is_refused(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mar(tmp_path / "here" / "resnet18_v2.0.mar", version="2.0", payload=b"different")
    monkeypatch.chdir(tmp_path / "here")
    result = cli("deploy", "resnet18_v2.0.mar")
    assert result.code == 2 and "they differ" in result.err
    assert fake[0].mutations() == []


def test_a_bare_name_only_here_is_deployed_from_here(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mar(tmp_path / "here" / "resnet18_v3.0.mar")
    monkeypatch.chdir(tmp_path / "here")
    assert cli("deploy", "resnet18_v3.0.mar", "--golden", "chelsea=tabby").code == 0
    assert (store / "resnet18_v3.0.mar").is_file()


@pytest.mark.parametrize(("content", "says"), [
    (b"not a zip at all", "File is not a zip file"),
    (None, "There is no item named 'MAR-INF/MANIFEST.json'"),
    ({"model": {"modelVersion": "1.0"}}, "no 'modelName'"),
    ({"model": "resnet18"}, "not a model archive"),
    ("{not json", "not a model archive"),
])
def test_a_file_that_is_not_a_model_archive_is_refused(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path, content: Any, says: str
) -> None:
    path = tmp_path / "theirs.mar"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        with zipfile.ZipFile(path, "w") as mar:
            mar.writestr("weights.pt", b"w")
            if content is not None:
                mar.writestr("MAR-INF/MANIFEST.json", content if isinstance(content, str) else json.dumps(content))
    result = cli("deploy", str(path), "--golden", "chelsea=tabby")
    assert result.code == 2, result.err
    assert "is not a model archive" in result.err and says in result.err and "build it with" in result.err
    assert fake[0].mutations() == [] and sorted(p.name for p in store.iterdir()) == [
        "resnet18_v1.0.mar", "resnet18_v2.0.mar"]


@pytest.mark.parametrize(("model", "version"), [
    ("their model", "1.0"), ("-leading", "1.0"), ("a/b", "1.0"), ("x" * 129, "1.0"), ("a..b", "1.0"),
    ("resnet18", "1 0"), ("resnet18", ""),
])
def test_a_name_or_version_torchserve_or_the_bridge_would_refuse_is_refused(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path, model: str, version: str
) -> None:
    result = cli("deploy", str(write_mar(tmp_path / "theirs.mar", model, version)), "--golden", "chelsea=tabby")
    assert result.code == 2, result.err
    assert "is not one TorchServe and the bridge take" in result.err and "--model-name" in result.err
    assert fake[0].mutations() == [] and not (store / "theirs.mar").exists()


@pytest.mark.parametrize(("golden", "says"), [
    ("chelsea", "PHOTO and EXPECTED must both be given"),
    ("=tabby", "PHOTO and EXPECTED must both be given"),
    ("chelsea=", "PHOTO and EXPECTED must both be given"),
    ("no-such-photo=tabby", "neither a bundled photo"),
    ("chelsea=top:", "top: needs a label"),
    ("chelsea=@/nonexistent/expected.json", "cannot read"),
])
def test_a_malformed_golden_is_a_usage_error(cli: Cli, fake: tuple[FakeTorchServe, str], store: Path,
                                             tmp_path: Path, golden: str, says: str) -> None:
    result = cli("deploy", str(write_mar(tmp_path / "resnet18_v3.0.mar")), "--golden", golden)
    assert result.code == 2, result.err
    assert says in result.err and "--golden PHOTO=EXPECTED" in result.err and "Traceback" not in result.err
    assert fake[0].mutations() == [] and not (store / "resnet18_v3.0.mar").exists()


def test_golden_json_that_is_not_json_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "expected.json").write_text("{tabby")
    with pytest.raises(UsageError, match="is not JSON"):
        parse_golden(f"chelsea=@{tmp_path / 'expected.json'}")


def test_a_model_without_a_spec_needs_golden_on_the_command_line(
    cli: Cli, fake: tuple[FakeTorchServe, str], store: Path, tmp_path: Path
) -> None:
    cli.lookup = spec_golden
    result = cli("deploy", str(write_mar(tmp_path / "theirs_v1.0.mar", "theirs", "1.0")))
    assert result.code == Refused.exit_code
    assert "no golden inputs to check theirs 1.0" in result.err and "--golden PHOTO=EXPECTED" in result.err
    assert fake[0].mutations() == [] and not (store / "theirs_v1.0.mar").exists()


def test_deploy_help_documents_golden(cli: Cli) -> None:
    help_text = cli("deploy", "--help").out
    for words in ("--golden PHOTO=EXPECTED", "replace the spec's cases", "top:LABEL", "@FILE.json",
                  "image_classifier", "copied into the model"):
        assert words in help_text


# --- the command line's expectations ----------------------------------------------------------------------

OURS = {"predictions": [{"label": "tabby", "index": 281, "score": 0.6}, {"label": "lynx", "index": 287, "score": 0.3}],
        "model": {"name": "classifier", "version": "1.0"}}


@pytest.mark.parametrize(("expect", "body", "passes"), [
    (HasLabel("tabby"), STOCK_ANSWER, True),
    (HasLabel("lynx"), STOCK_ANSWER, True),  # anywhere in the top 5
    (HasLabel("goldfish"), STOCK_ANSWER, False),
    (HasLabel("lynx"), OURS, True),  # a string value anywhere
    (HasLabel("0.41"), STOCK_ANSWER, False),  # numbers are not labels
    (TopLabel("tabby"), STOCK_ANSWER, True),
    (TopLabel("lynx"), STOCK_ANSWER, False),
    (TopLabel("tabby"), {"lynx": 0.1, "tabby": 0.9}, True),  # by score, whatever the order
    (TopLabel("tabby"), OURS, True),
    (TopLabel("lynx"), OURS, False),
    (TopLabel("tabby"), {"text": "tabby"}, False),  # nothing scored
    (ContainsJson({"tabby": 0.41}), STOCK_ANSWER, True),
    (ContainsJson({"tabby": 0.41001}), STOCK_ANSWER, True),  # within 1e-4 relative
    (ContainsJson({"tabby": 0.5}), STOCK_ANSWER, False),
    (ContainsJson({"model": {"version": "1.0"}}), OURS, True),
    (ContainsJson({"model": {"version": 1.0}}), OURS, False),  # "1.0" is not 1.0
    (ContainsJson({"predictions": [{"label": "tabby"}, {"label": "lynx"}]}), OURS, True),
    (ContainsJson({"predictions": [{"label": "tabby"}]}), OURS, False),  # lists: the same length
    (ContainsJson({"price": True}), {"price": 1}, False),
    (AnswerIsObject(), STOCK_ANSWER, True),
    (AnswerIsObject(), {}, False),
])
def test_command_line_expectations(expect: Expectation, body: dict[str, Any], passes: bool) -> None:
    problem = expect.failure(body)
    assert (problem is None) == passes, problem
    assert expect.agrees(body, body) == problem  # a reduced-precision answer must meet the same expectation
    assert expect.relaxed().failure(body) is None or body == {}


def test_golden_parses_each_form(tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(b"\xff\xd8")
    (tmp_path / "expected.json").write_text('{"tabby": 0.41}')
    assert parse_golden("chelsea=tabby") == GoldenCase("chelsea", HasLabel("tabby"))
    assert parse_golden("chelsea=a=b") == GoldenCase("chelsea", HasLabel("a=b"))  # split at the first '='
    assert parse_golden(f"{photo}=top:tabby") == GoldenCase(str(photo), TopLabel("tabby"))
    json_case = parse_golden(f"coffee=@{tmp_path / 'expected.json'}")
    assert json_case.expect == ContainsJson({"tabby": 0.41}, source=str(tmp_path / "expected.json"))
    assert sample_photo(str(photo)) == b"\xff\xd8"
