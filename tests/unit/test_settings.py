"""The bridge's and servingctl's settings: lists from the environment, and where state lives."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.settings import Settings as BridgeSettings
from ops.settings import Settings as OpsSettings
from stack import configuration, models

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BRIDGE_STATE_DIR", "SERVING_STATE_DIR", "SERVINGCTL_STATE_DIR", "BRIDGE_SPOOL_DIR",
                 "BRIDGE_TORCHSERVE_KEY_FILE", "BRIDGE_API_KEYS", "BRIDGE_JOB_MODELS", "SERVINGCTL_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("raw", ["a,b", " a , b ,", '["a", "b"]'])
def test_lists_are_read_comma_separated_or_as_json(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BRIDGE_API_KEYS", raw)
    monkeypatch.setenv("BRIDGE_JOB_MODELS", raw)
    settings = BridgeSettings()
    assert settings.api_keys == ("a", "b") and settings.job_models == ("a", "b")


def test_list_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_API_KEYS", "")
    assert BridgeSettings().api_keys == ()
    assert BridgeSettings().job_models == tuple(m.name for m in models.catalogue() if m.in_jobs)
    assert BridgeSettings().job_models  # the catalogue names the models a job runs by default
    assert BridgeSettings(api_keys=["k"]).api_keys == ("k",)


def test_a_checkout_keeps_its_state_in_dot_state() -> None:
    settings = BridgeSettings()
    assert settings.state_dir == REPO_ROOT / ".state"
    assert settings.spool_dir == REPO_ROOT / ".state" / "spool"
    assert settings.torchserve_key_file == REPO_ROOT / ".state" / "torchserve" / "key_file.json"
    assert OpsSettings.from_values({}, {}).key_file == REPO_ROOT / ".state" / "torchserve" / "key_file.json"


def test_an_installed_package_keeps_its_state_per_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(configuration, "source_checkout", lambda: None)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert BridgeSettings().spool_dir == tmp_path / "xdg" / "photo-serving" / "spool"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert BridgeSettings().state_dir == tmp_path / ".local" / "state" / "photo-serving"
    assert OpsSettings().state_dir == tmp_path / ".local" / "state" / "photo-serving"
    assert OpsSettings().model_store == Path.cwd() / "model_store"


def test_the_component_state_dir_wins_over_the_shared_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERVING_STATE_DIR", str(tmp_path / "shared"))
    assert BridgeSettings().torchserve_key_file == tmp_path / "shared" / "torchserve" / "key_file.json"
    assert OpsSettings().key_file == tmp_path / "shared" / "torchserve" / "key_file.json"
    monkeypatch.setenv("BRIDGE_STATE_DIR", str(tmp_path / "own"))
    assert BridgeSettings().spool_dir == tmp_path / "own" / "spool"
    assert BridgeSettings(spool_dir=tmp_path / "spool").spool_dir == tmp_path / "spool"
    environ = {"SERVING_STATE_DIR": str(tmp_path / "shared"), "SERVINGCTL_STATE_DIR": str(tmp_path / "ops")}
    assert OpsSettings.from_values({}, environ).key_file == tmp_path / "ops" / "torchserve" / "key_file.json"
    assert OpsSettings.from_values({"state_dir": tmp_path / "flag"}, environ).state_dir == tmp_path / "flag"


def test_servingctl_names_the_bad_environment_variable() -> None:
    with pytest.raises(ValueError, match="SERVINGCTL_INFLUX_TIMEOUT_S='soon'"):
        OpsSettings.from_values({}, {"SERVINGCTL_INFLUX_TIMEOUT_S": "soon"})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "bridge.example.com"])
def test_an_open_api_beyond_loopback_is_refused(host: str) -> None:
    with pytest.raises(ValidationError, match="BRIDGE_API_KEYS"):
        BridgeSettings(host=host)
    assert BridgeSettings(host=host, api_keys=("k",)).api_keys == ("k",)
    assert BridgeSettings(host=host, allow_open_api=True).allow_open_api


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_may_be_open(host: str) -> None:
    assert BridgeSettings(host=host).api_keys == ()
