"""``python -m archive_scripts [MODEL ...] [--version V] [--weights MODEL=PATH] [--catalogue PATH] [--flavour F]
[--engine E] [--force]``; ``python -m archive_scripts new NAME --like KIND`` starts a model of your own."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from archive_scripts import new_model
from archive_scripts.build import REPO_ROOT, GateFailed, MissingInput, build
from archive_scripts.export import ExportFailed
from archive_scripts.specs import FLAVOURS, SPECS, BuildInputs, find_spec
from archive_scripts.weights import UnusableWeights
from handlers.engines import ENGINES


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line arguments."""
    other_weights = "; ".join(f"{s.name}: {s.user_weights}" for s in SPECS if s.user_weights)
    takes_catalogue = ", ".join(f"`{s.name}`" for s in SPECS if s.accepts_catalogue)
    parser = argparse.ArgumentParser(
        prog="python -m archive_scripts",
        description="Build TorchServe archives, gate them on golden photos, publish them to the model store. "
        "`python -m archive_scripts new NAME --like classifier|price|similar|json` starts a model of your own.",
    )
    parser.add_argument("models", nargs="*", help=f"models to build (default: all of {[s.name for s in SPECS]})")
    parser.add_argument("--version", help="build as this version (default: the spec's), e.g. 2.0")
    parser.add_argument(
        "--weights", action="append", default=[], metavar="MODEL=PATH",
        help=f"use your own weights for MODEL: a state_dict for its network, or a TorchScript file for a TorchScript "
        f"spec ({other_weights}); repeatable",
    )
    parser.add_argument(
        "--catalogue", type=Path, metavar="PATH",
        help=f"catalogue for {takes_catalogue}: a folder of images (id = file name) or an .npz/.pt of ids + embeddings",
    )
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "model_store", help="model store directory")
    parser.add_argument(
        "--flavour", choices=FLAVOURS, default="cpu",
        help="cpu: fp32 on the spec's engine (default); gpu: each spec's GPU precision and engine (docs/gpu.md)",
    )
    parser.add_argument(
        "--engine", choices=ENGINES,
        help="run the forward on this engine instead of the spec's (cpu: the fastest that passed its gate here; "
        "docs/engines.md); exported at build time and gated against the fp32 eager twin",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build the requested archives, one after another, with progress."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["new"]:
        return new_model.main(argv[1:])
    args = parse_args(argv)
    user_weights: dict[str, Path] = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            print(f"--weights expects MODEL=PATH to an existing file, got {item!r}", file=sys.stderr)
            return 2
        user_weights[name] = Path(path)
    if args.catalogue is not None and not args.catalogue.exists():
        print(f"--catalogue {args.catalogue} does not exist", file=sys.stderr)
        return 2
    try:
        names = args.models or [s.name for s in SPECS]
        specs = [find_spec(name, args.version, args.flavour, args.engine) for name in names]
    except (KeyError, ValueError) as exc:  # an unknown model, or an engine its network cannot take
        print(exc.args[0], file=sys.stderr)
        return 2
    for number, spec in enumerate(specs, 1):
        started = time.monotonic()
        print(f"[{number}/{len(specs)}] {spec.name} {spec.version} (engine {spec.accelerator.engine}) ...", flush=True)
        catalogue = args.catalogue if spec.accepts_catalogue else None
        inputs = BuildInputs(weights=user_weights.get(spec.name), catalogue=catalogue)
        try:
            outcome = build(spec, args.store, inputs, force=args.force)
        except (GateFailed, ExportFailed, MissingInput, UnusableWeights) as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"[{number}/{len(specs)}] {spec.name} {spec.version}: {outcome} → {args.store / spec.archive_name} "
              f"({time.monotonic() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
