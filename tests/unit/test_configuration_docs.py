"""docs/configuration.md is generated from the settings classes: a stale page fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from bridge.settings import Settings as BridgeSettings
from ops.settings import Settings as OpsSettings
from stack.configuration import COMPONENTS, DOCS_PAGE, REGENERATE, env_names, render

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_page_says_what_the_settings_classes_say() -> None:
    page = REPO_ROOT / DOCS_PAGE
    current = page.read_text() if page.exists() else ""
    assert current == render(), f"{DOCS_PAGE} differs from the settings classes; regenerate it: {REGENERATE}"


@pytest.mark.parametrize("settings", [BridgeSettings, OpsSettings], ids=["bridge", "servingctl"])
def test_every_setting_is_described_with_its_environment_variable(settings: type[BaseSettings]) -> None:
    page = render()
    for name, field in settings.model_fields.items():
        assert field.description, f"{settings.__module__}.{name} has no Field(description=...)"
        assert all(f"`{env}`" in page for env in env_names(settings, name)), name


def test_every_component_has_a_section() -> None:
    page = render()
    assert [line[3:] for line in page.splitlines() if line.startswith("## ")] == [name for name, _ in COMPONENTS]
