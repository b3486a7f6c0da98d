"""What the components' settings share: the state-directory rule, and the configuration reference they generate.

``python -m stack.configuration`` rewrites docs/configuration.md from the settings classes (``--check`` only
compares); tests/unit/test_configuration_docs.py fails when the page and the classes differ.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

# The settings class of each component, by import path (bridge and ops import this module, so not at the top).
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("bridge", "bridge.settings:Settings"),
    ("servingctl", "ops.settings:Settings"),
    ("stack", "stack.settings:StackSettings"),
)
DOCS_PAGE = "docs/configuration.md"
REGENERATE = ".venv/bin/python -m stack.configuration"


def source_checkout() -> Path | None:
    """The repository checkout these packages run from, or None when they are installed (no writable checkout)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and os.access(root, os.W_OK) else None


def default_state_dir() -> Path:
    """The checkout's ``.state/`` when running from a source checkout, else the per-user state directory."""
    checkout = source_checkout()
    if checkout is not None:
        return checkout / ".state"
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "photo-serving"


STATE_DIR_DEFAULT_TEXT = (
    "`.state/` of the source checkout; installed: `$XDG_STATE_HOME/photo-serving` (`~/.local/state/photo-serving`)"
)


def env_names(settings: type[BaseSettings], name: str) -> tuple[str, ...]:
    """The environment variables a field is read from, the first one set winning."""
    alias = settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    if isinstance(alias, str):
        return (alias,)
    return ((settings.model_config.get("env_prefix", "") + name).upper(),)


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:  # computed when the settings are built
        return str(extra["default_text"])
    value: Any = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple | list):
        value = ",".join(value)
    return f"`{value}`" if value != "" else "empty"


def reference(settings: type[BaseSettings]) -> str:
    """One Markdown table of a settings class: field, environment variable(s), default, description."""
    rows = ["| setting | environment | default | description |", "|---|---|---|---|"]
    for name, field in settings.model_fields.items():
        envs = " else ".join(f"`{env}`" for env in env_names(settings, name))
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {envs} | {_default(field)} | {description} |")
    return "\n".join(rows)


def render() -> str:
    """The whole configuration reference page (docs/configuration.md)."""
    parts = [
        "# Configuration reference",
        "",
        (
            f"Generated from the settings classes by `{REGENERATE}`; do not edit by hand "
            "(tests/unit/test_configuration_docs.py fails when this page and the classes differ)."
        ),
        "",
        (
            "Every setting is an environment variable. Lists take a JSON list (`[\"a\", \"b\"]`) or "
            "comma-separated values (`a,b`). State directories follow one rule: the component's own variable, "
            "else the stack's shared `SERVING_STATE_DIR`, else the source checkout's `.state/` when running from "
            "one, else the per-user `$XDG_STATE_HOME/photo-serving`."
        ),
    ]
    for component, path in COMPONENTS:
        parts += ["", f"## {component}", ""]
        module, _, name = path.partition(":")
        settings = getattr(importlib.import_module(module), name)
        summary = (settings.__doc__ or "").strip().replace("``", "`")  # reST literals → Markdown
        parts += [f"`{path.replace(':', '.')}`: {summary}", "", reference(settings)]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write docs/configuration.md, or with ``--check`` say whether it is current (exit status 1 if not)."""
    parser = argparse.ArgumentParser(prog="python -m stack.configuration", description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the page is stale")
    args = parser.parse_args(argv)
    page = Path(__file__).resolve().parent.parent / DOCS_PAGE
    text = render()
    if args.check:
        current = page.read_text() if page.exists() else ""
        if current != text:
            print(f"{DOCS_PAGE} is out of date: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    print(f"wrote {DOCS_PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
