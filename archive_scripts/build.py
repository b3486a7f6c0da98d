"""Build an archive from its spec, gate it on its golden photos, then publish it to the model store.

Nothing reaches ``model_store/`` unless the freshly built archive, unpacked and loaded through its own
handler in a separate process, answered every golden case correctly. Archives are reproducible: the
same inputs give byte-identical ``.mar`` files (torch-model-archiver's timestamps are normalised).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_packaging import generate_model_archive

from archive_scripts.export import export_archive
from archive_scripts.gate import run_gate
from archive_scripts.golden import GoldenCase
from archive_scripts.specs import ArchiveSpec, BuildInputs
from archive_scripts.weights import WeightsInfo, from_model_file, from_torchscript, from_user_file
from handlers.engines import EXPORTED_FILES, RUNTIME_PACKAGES

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
MANIFEST_NAME = "manifest.json"
# The packages that shape an archive's behaviour: a change of any rebuilds it (the engines' runtimes included).
STACK_PACKAGES = ("torch", "torchvision", "torchserve", "torch-model-archiver", "onnx", "onnxruntime", "openvino")
# Fixed time for every zip entry and for MANIFEST.json's createdOn: archives depend on content only.
EPOCH_ZIP = (1980, 1, 1, 0, 0, 0)
EPOCH_TEXT = "01/01/1980 00:00:00"

OURS = BuildInputs()  # no user weights or catalogue: the golden answers are ours to check exactly


class GateFailed(RuntimeError):
    """The built archive did not answer its golden inputs; nothing was published."""


class MissingInput(FileNotFoundError):
    """A file the spec names (its model_file or serialized_file) is not there; nothing was built."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """Hex sha256 over a file, or over every file of a folder (names and contents, sorted)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(item.relative_to(path)).encode() + b"\0" + sha256_file(item).encode())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape an archive's behaviour."""
    return {name: metadata.version(name) for name in STACK_PACKAGES}


def code_files(spec: ArchiveSpec) -> list[Path]:
    """The handler code an archive carries, handler first."""
    return [HANDLERS_DIR / spec.handler, *(HANDLERS_DIR / m for m in spec.modules)]


def spec_inputs(spec: ArchiveSpec) -> list[Path]:
    """The files the spec names (model_file, serialized_file, labels), absolute, after checking they are there."""
    files = [path for path in (spec.model_path, spec.serialized_path, spec.labels_path) if path is not None]
    for path in files:
        if not path.is_file():
            where = f"in {spec.spec_file}" if spec.spec_file else "in its spec"
            raise MissingInput(
                f"{spec.name}: {path} does not exist; write it, or fix model_file / serialized_file / labels {where} "
                f"(paths are relative to the repository root, {REPO_ROOT})"
            )
    return files


def fingerprint(spec: ArchiveSpec, inputs: BuildInputs) -> str:
    """A hash of every input of the build, so an unchanged archive is not rebuilt."""
    digest = hashlib.sha256(f"{spec.name}:{spec.version}".encode())
    digest.update(json.dumps(spec.accelerator.handler_config(), sort_keys=True).encode())  # the build's flavour
    spec_file = [spec.spec_file] if spec.spec_file else []
    sources = [*code_files(spec), *sorted((REPO_ROOT / "archive_scripts").glob("*.py")), *spec_file, *spec_inputs(spec)]
    for path in sources:
        digest.update(path.name.encode() + sha256_file(path).encode())
    digest.update(json.dumps(package_versions(), sort_keys=True).encode())
    for user_path in (inputs.weights, inputs.catalogue):
        digest.update((sha256_tree(user_path) if user_path else "default").encode())
    return digest.hexdigest()


def write_labels(dest: Path) -> None:
    """ImageNet-1k class names, as torchvision ships them, keyed by index."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    dest.write_text(json.dumps({str(i): name for i, name in enumerate(_IMAGENET_CATEGORIES)}, indent=0))


def normalise_archive(mar: Path) -> None:
    """Rewrite the zip with sorted entries, fixed timestamps and a fixed ``createdOn``: byte-reproducible."""
    with zipfile.ZipFile(mar) as src:
        entries = sorted((info.filename, src.read(info)) for info in src.infolist() if not info.is_dir())
    tmp = mar.with_suffix(".normalised")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in entries:
            if name == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["createdOn"] = EPOCH_TEXT
                data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = zipfile.ZipInfo(name, date_time=EPOCH_ZIP)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            dst.writestr(info, data)
    os.replace(tmp, mar)


@contextlib.contextmanager
def private_tempdir(path: Path) -> Iterator[None]:
    """torch-model-archiver stages files in ``gettempdir()/<model name>``: give each build its own."""
    path.mkdir()
    previous, tempfile.tempdir = tempfile.tempdir, str(path)
    try:
        yield
    finally:
        tempfile.tempdir = previous


def network_weights(spec: ArchiveSpec, dest: Path, inputs: BuildInputs) -> WeightsInfo:
    """The weights the archive ships, checked against its network: the user's ``--weights`` when they are the
    network's (the spec has no ``user_weights`` of its own), else the spec's ``make_weights`` or ``serialized_file``."""
    user = inputs.weights if not spec.user_weights else None
    if spec.architecture:
        if user is not None:
            return from_user_file(spec.architecture, user, dest)
        assert spec.make_weights is not None  # the spec's own check
        return spec.make_weights(dest, inputs)
    source = user or spec.serialized_path
    assert source is not None  # the spec's own check: no architecture, so a serialized_file
    if spec.model_path is not None:
        return from_model_file(spec.model_path, source, dest)
    return from_torchscript(source, dest)


def assemble(spec: ArchiveSpec, workdir: Path, inputs: BuildInputs) -> tuple[Path, dict[str, Any]]:
    """Write weights, extra files and config into ``workdir``, export for the engine, package, normalise."""
    info = network_weights(spec, workdir / "weights.pt", inputs)
    extra_files = [HANDLERS_DIR / m for m in spec.modules]
    extra_metadata: dict[str, Any] = {}
    if spec.labels is not None:
        if spec.labels_path is None:
            write_labels(workdir / "index_to_name.json")
        else:
            shutil.copyfile(spec.labels_path, workdir / "index_to_name.json")
        extra_files.append(workdir / "index_to_name.json")
    if spec.make_extras is not None:
        extras = spec.make_extras(workdir, inputs)
        extra_files.extend(extras.files)
        extra_metadata = extras.metadata
    about = {"description": spec.description, "weights": info.source, "trained": info.trained, **extra_metadata}
    engine = spec.accelerator.engine
    if engine in EXPORTED_FILES:  # exported from exactly what the eager archive's handler runs
        eager = replace(spec, accelerator=replace(spec.accelerator, engine="eager"))
        eager_mar = package(eager, workdir / "eager", info.path, extra_files, about)
        extra_files += export_archive(eager_mar, engine, workdir / "exported")
    mar = package(spec, workdir / "final", info.path, extra_files, about)
    details = {
        "weights_sha256": sha256_file(info.path),
        "weights_source": info.source,
        **({"weights_user_file": str(info.user_file)} if info.user_file else {}),
        "trained": info.trained,
        **({"model_file_sha256": sha256_file(spec.model_path)} if spec.model_path else {}),
        "handler_sha256": {p.name: sha256_file(p) for p in code_files(spec)},
        "extra_files_sha256": {p.name: sha256_file(p) for p in extra_files if p.parent != HANDLERS_DIR},
        **({"extras": extra_metadata} if extra_metadata else {}),
    }
    return mar, details


def package(spec: ArchiveSpec, workdir: Path, weights: Path, extra_files: list[Path], metadata: dict[str, Any]) -> Path:
    """model-config.yaml from the spec, then torch-model-archiver, then normalised: the ``.mar`` in ``workdir``.

    A spec's ``model_file`` goes in as torch-model-archiver's own ``--model-file`` (the manifest's ``modelFile``).
    """
    workdir.mkdir(parents=True)
    network = {"architecture": spec.architecture} if spec.architecture else {}
    config = {**spec.model_config, "handler": {**network, **spec.handler_config}, "metadata": metadata}
    names = [p.name for p in [weights, *extra_files, *([spec.model_path] if spec.model_path else [])]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # the archive is one flat folder: one would silently replace the other
        raise ValueError(f"{spec.name}: more than one file of the archive is named {', '.join(repeated)}; rename one")
    config_path = workdir / "model-config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = workdir / "out"
    out.mkdir()
    with private_tempdir(workdir / "staging"):
        generate_model_archive(
            ModelArchiverConfig(
                model_name=spec.name,
                handler=str(HANDLERS_DIR / spec.handler),
                version=spec.version,
                serialized_file=str(weights),
                model_file=str(spec.model_path) if spec.model_path else None,
                extra_files=",".join(str(p) for p in extra_files),
                export_path=str(out),
                config_file=str(config_path),
                force=True,
            )
        )
    # torch-model-archiver names the file after the model; we keep one file per version.
    mar = out / spec.archive_name
    os.replace(out / f"{spec.name}.mar", mar)
    normalise_archive(mar)
    return mar


def golden_cases(spec: ArchiveSpec, inputs: BuildInputs) -> tuple[GoldenCase, ...]:
    """The spec's golden cases; with the user's weights or catalogue, their answers' form only."""
    if inputs == OURS:
        return spec.golden
    return tuple(case.relaxed() for case in spec.golden)


def gate(spec: ArchiveSpec, mar_path: Path, inputs: BuildInputs = OURS) -> None:
    """Raise GateFailed unless the built archive answers every golden case correctly."""
    failures = run_gate(mar_path, golden_cases(spec, inputs))
    if failures:
        listed = "\n".join(f"  - {f}" for f in failures)
        raise GateFailed(f"{spec.name} {spec.version} failed its golden gate; nothing was published:\n{listed}")


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


def publish(mar: Path, store: Path, entry: dict[str, Any]) -> None:
    """Move the gated archive into the store and record it in the manifest, each step atomic."""
    staged = store / f".{mar.name}.partial"
    shutil.copyfile(mar, staged)
    os.replace(staged, store / mar.name)
    manifest = load_manifest(store)
    manifest[mar.name] = entry
    tmp_manifest = store / f".{MANIFEST_NAME}.partial"
    tmp_manifest.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_manifest, store / MANIFEST_NAME)


def build(spec: ArchiveSpec, store: Path, inputs: BuildInputs = OURS, force: bool = False) -> str:
    """Build, gate and publish one archive; returns "built" or "up to date"."""
    store.mkdir(parents=True, exist_ok=True)
    print_fp = fingerprint(spec, inputs)
    if not force and is_up_to_date(spec, store, print_fp):
        return "up to date"
    with tempfile.TemporaryDirectory(prefix=f"build-{spec.name}-") as tmp:
        mar, details = assemble(spec, Path(tmp), inputs)
        gate(spec, mar, inputs)
        entry = {
            "model": spec.name,
            "version": spec.version,
            "sha256": sha256_file(mar),
            "fingerprint": print_fp,
            "golden": "expected answers" if inputs == BuildInputs() else "answer form only (user inputs)",
            "accelerator": spec.accelerator.handler_config(),
            "engine": {
                "name": spec.accelerator.engine,
                "package": RUNTIME_PACKAGES[spec.accelerator.engine],
                "version": metadata.version(RUNTIME_PACKAGES[spec.accelerator.engine]),
            },
            **details,
            "packages": package_versions(),
        }
        publish(mar, store, entry)
    return "built"
