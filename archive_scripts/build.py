"""Build an archive from its spec, gate it on its golden photos, then publish it to the model store.

Nothing reaches ``model_store/`` unless the freshly built archive, unpacked and loaded through its own
handler in a separate process, answered every golden photo correctly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive

from archive_scripts.specs import ArchiveSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
MANIFEST_NAME = "manifest.json"
STACK_PACKAGES = ("torch", "torchvision", "torchserve", "torch-model-archiver")


class GateFailed(RuntimeError):
    """The built archive did not answer its golden inputs; nothing was published."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an archive's behaviour."""
    return {name: metadata.version(name) for name in STACK_PACKAGES}


def code_files(spec: ArchiveSpec) -> list[Path]:
    """The handler code an archive carries, handler first."""
    return [HANDLERS_DIR / spec.handler, *(HANDLERS_DIR / m for m in spec.modules)]


def fingerprint(spec: ArchiveSpec, user_weights: Path | None) -> str:
    """A hash of every input of the build, so an unchanged archive is not rebuilt."""
    digest = hashlib.sha256(f"{spec.name}:{spec.version}".encode())
    for path in code_files(spec):
        digest.update(path.name.encode() + sha256_file(path).encode())
    for path in sorted((REPO_ROOT / "archive_scripts").glob("*.py")):
        digest.update(path.name.encode() + sha256_file(path).encode())
    digest.update(json.dumps(package_versions(), sort_keys=True).encode())
    digest.update((sha256_file(user_weights) if user_weights else "default-weights").encode())
    return digest.hexdigest()


def model_config_yaml(spec: ArchiveSpec, weights_source: str, trained: bool) -> dict[str, Any]:
    """The archive's model-config.yaml: TorchServe's batching/worker keys plus our handler section."""
    return {
        **spec.model_config,
        "handler": {"architecture": spec.architecture, **spec.handler_config},
        "metadata": {
            "description": spec.description,
            "weights": weights_source,
            "trained": trained,
        },
    }


def write_labels(dest: Path) -> None:
    """ImageNet-1k class names, as torchvision ships them, keyed by index."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    dest.write_text(json.dumps({str(i): name for i, name in enumerate(_IMAGENET_CATEGORIES)}, indent=0))


def assemble(spec: ArchiveSpec, workdir: Path, user_weights: Path | None) -> tuple[Path, dict[str, Any]]:
    """Write weights, labels and config into ``workdir`` and run torch-model-archiver there."""
    info = spec.make_weights(workdir / "weights.pt", user_weights)
    extra = [str(HANDLERS_DIR / m) for m in spec.modules]
    if spec.labels == "imagenet":
        write_labels(workdir / "index_to_name.json")
        extra.append(str(workdir / "index_to_name.json"))
    config_path = workdir / "model-config.yaml"
    config_path.write_text(yaml.safe_dump(model_config_yaml(spec, info.source, info.trained), sort_keys=False))
    out = workdir / "out"
    out.mkdir()
    generate_model_archive(
        ModelArchiverConfig(
            model_name=spec.name,
            handler=str(HANDLERS_DIR / spec.handler),
            version=spec.version,
            serialized_file=str(info.path),
            extra_files=",".join(extra),
            export_path=str(out),
            config_file=str(config_path),
            force=True,
        )
    )
    details = {
        "weights_sha256": sha256_file(info.path),
        "weights_source": info.source,
        "trained": info.trained,
        "handler_sha256": {p.name: sha256_file(p) for p in code_files(spec)},
    }
    return out / spec.archive_name, details


def run_gate(spec: ArchiveSpec, mar_path: Path) -> None:
    """Load the archive in a fresh process and check every golden photo; raise GateFailed otherwise."""
    cases = json.dumps([asdict(case) for case in spec.golden])
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "archive_scripts.gate", str(mar_path), cases],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise GateFailed(f"{spec.name} {spec.version} failed its golden gate; nothing published:\n{tail}")


def load_manifest(store: Path) -> dict[str, Any]:
    """The model store's manifest (archive file name → entry)."""
    path = store / MANIFEST_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def is_up_to_date(spec: ArchiveSpec, store: Path, print_fp: str) -> bool:
    """True when the published archive was built from exactly these inputs and is intact."""
    entry = load_manifest(store).get(spec.archive_name)
    mar = store / spec.archive_name
    return bool(
        entry and mar.exists() and entry.get("fingerprint") == print_fp and entry.get("sha256") == sha256_file(mar)
    )


def build(spec: ArchiveSpec, store: Path, user_weights: Path | None = None, force: bool = False) -> str:
    """Build, gate and publish one archive; returns "built" or "up to date"."""
    store.mkdir(parents=True, exist_ok=True)
    print_fp = fingerprint(spec, user_weights)
    if not force and is_up_to_date(spec, store, print_fp):
        return "up to date"
    with tempfile.TemporaryDirectory(prefix=f"build-{spec.name}-") as tmp:
        mar, details = assemble(spec, Path(tmp), user_weights)
        run_gate(spec, mar)
        staged = store / f".{spec.archive_name}.partial"
        shutil.copyfile(mar, staged)
        os.replace(staged, store / spec.archive_name)
    manifest = load_manifest(store)
    manifest[spec.archive_name] = {
        "model": spec.name,
        "version": spec.version,
        "sha256": sha256_file(store / spec.archive_name),
        "fingerprint": print_fp,
        **details,
        "packages": package_versions(),
    }
    tmp_manifest = store / f".{MANIFEST_NAME}.partial"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_manifest, store / MANIFEST_NAME)
    return "built"
