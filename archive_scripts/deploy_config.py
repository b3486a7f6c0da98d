"""``python -m archive_scripts.deploy_config [--check]``: deploy configs that repeat the specs' settings, from the specs.

KServe's TorchServe takes its models from a ``model_snapshot`` line in deploy/kserve/config.properties, with
each model's worker and batching settings spelled out. That line is written here from the specs of the
versions ``config.properties`` loads at start; ``--check`` only says whether the file is current.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from archive_scripts.specs import SPECS

REPO_ROOT = Path(__file__).resolve().parent.parent
KSERVE_CONFIG = REPO_ROOT / "deploy" / "kserve" / "config.properties"
SNAPSHOT_KEY = "model_snapshot="


def load_models(config: Path = REPO_ROOT / "config.properties") -> list[str]:
    """The archives a TorchServe ``config.properties`` loads at start (``load_models``)."""
    for line in config.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "load_models":
            return [name.strip() for name in value.split(",") if name.strip()]
    return []


def kserve_snapshot(archives: list[str]) -> str:
    """The ``model_snapshot`` value serving ``archives``: each spec's model-config.yaml settings, spec order."""
    models: dict[str, dict[str, dict[str, object]]] = {}
    for spec in SPECS:
        if spec.archive_name in archives:
            entry = {"defaultVersion": True, "marName": spec.archive_name, **spec.model_config}
            models.setdefault(spec.name, {})[spec.version] = entry
    unknown = set(archives) - {spec.archive_name for spec in SPECS}
    if unknown:
        raise ValueError(f"load_models names archives no spec builds: {sorted(unknown)}")
    snapshot = {"name": "startup.cfg", "modelCount": len(archives), "models": models}
    return json.dumps(snapshot, separators=(",", ":"))


def render(text: str, snapshot: str) -> str:
    """``text`` (a config.properties) with its ``model_snapshot`` line replaced by ``snapshot``."""
    lines = text.splitlines(keepends=True)
    (index,) = [i for i, line in enumerate(lines) if line.startswith(SNAPSHOT_KEY)]
    lines[index] = f"{SNAPSHOT_KEY}{snapshot}\n"
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the KServe config's snapshot from the specs, or with ``--check`` report whether it is current."""
    parser = argparse.ArgumentParser(prog="python -m archive_scripts.deploy_config", description=__doc__)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the file is out of date")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    current = KSERVE_CONFIG.read_text()
    wanted = render(current, kserve_snapshot(load_models()))
    if wanted == current:
        print(f"{KSERVE_CONFIG.relative_to(REPO_ROOT)} is up to date")
        return 0
    if args.check:
        print(f"{KSERVE_CONFIG.relative_to(REPO_ROOT)} is out of date: python -m archive_scripts.deploy_config")
        return 1
    KSERVE_CONFIG.write_text(wanted)
    print(f"wrote {KSERVE_CONFIG.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
