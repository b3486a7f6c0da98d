"""``python -m archive_scripts [MODEL ...] [--weights MODEL=PATH] [--store DIR] [--force]``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from archive_scripts.build import REPO_ROOT, GateFailed, build
from archive_scripts.specs import SPECS, find_spec


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        prog="python -m archive_scripts",
        description="Build TorchServe archives, gate them on golden photos, publish them to the model store.",
    )
    parser.add_argument("models", nargs="*", help=f"models to build (default: all of {[s.name for s in SPECS]})")
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="MODEL=PATH",
        help="use your own state_dict for MODEL (repeatable)",
    )
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "model_store", help="model store directory")
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the requested archives, one after another, with progress."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    user_weights: dict[str, Path] = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"--weights expects MODEL=PATH to an existing file, got {item!r}", file=sys.stderr)
            return 2
        user_weights[name] = Path(path)
    try:
        specs = [find_spec(name) for name in args.models] if args.models else list(SPECS)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    for number, spec in enumerate(specs, 1):
        started = time.monotonic()
        print(f"[{number}/{len(specs)}] {spec.name} {spec.version} ...", flush=True)
        try:
            outcome = build(spec, args.store, user_weights.get(spec.name), force=args.force)
        except GateFailed as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"[{number}/{len(specs)}] {spec.name} {spec.version}: {outcome} ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
