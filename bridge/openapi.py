"""``python -m bridge.openapi [--check]``: write (or check) the committed OpenAPI document, bridge/openapi.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bridge.app import create_app
from bridge.settings import Settings

SPEC_PATH = Path(__file__).resolve().parent / "openapi.json"


def generate() -> str:
    """The app's OpenAPI document as stable, pretty JSON."""
    return json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    """Write the spec, or with --check fail when the committed one differs from the app."""
    spec = generate()
    if argv[:1] == ["--check"]:
        if not SPEC_PATH.exists() or SPEC_PATH.read_text() != spec:
            print(f"{SPEC_PATH} is out of date: run `.venv/bin/python -m bridge.openapi`", file=sys.stderr)
            return 1
        return 0
    SPEC_PATH.write_text(spec)
    print(f"wrote {SPEC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
