"""Unit-tier fixtures for the handlers: import paths, model directories laid out like an unpacked .mar."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLERS_DIR = REPO_ROOT / "handlers"
# The worker imports an archive's files by bare name; the tests import them the same way.
for _path in (HANDLERS_DIR, REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from archive_scripts.specs import SHARED_MODULES

HANDLER_FILES = ("classifier_handler.py", *SHARED_MODULES)  # what the classifier's archive carries

ModelDirFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def make_model_dir(tmp_path_factory: pytest.TempPathFactory) -> ModelDirFactory:
    """Write an unpacked archive (MANIFEST, handler code, weights, labels, model-config.yaml) and return its path.

    The layout mirrors what torch-model-archiver 0.12 writes and what ``archive_scripts.build`` puts in it.
    """

    def make(
        name: str,
        *,
        weights: Path,
        labels: list[str],
        handler: dict[str, Any],
        version: str = "1.0",
        batch_size: int = 8,
        metadata: dict[str, Any] | None = None,
    ) -> Path:
        model_dir = tmp_path_factory.mktemp(name)
        for filename in HANDLER_FILES:
            shutil.copyfile(HANDLERS_DIR / filename, model_dir / filename)
        shutil.copyfile(weights, model_dir / "weights.pt")
        (model_dir / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(labels)}))
        config = {
            "minWorkers": 1,
            "maxWorkers": 1,
            "batchSize": batch_size,
            "maxBatchDelay": 10,
            "responseTimeout": 30,
            "handler": handler,
            "metadata": metadata if metadata is not None else {"description": f"unit-test model {name}"},
        }
        (model_dir / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (model_dir / "MAR-INF").mkdir()
        manifest = {
            "createdOn": "01/01/2026 00:00:00",
            "runtime": "python",
            "model": {
                "modelName": name,
                "serializedFile": "weights.pt",
                "handler": "classifier_handler.py",
                "modelVersion": version,
                "configFile": "model-config.yaml",
            },
            "archiverVersion": "0.12.0",
        }
        (model_dir / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
        return model_dir

    return make


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained ResNet-18 ``state_dict`` with 10 classes (fast, deterministic)."""
    from archive_scripts.weights import seeded_init

    dest = tmp_path_factory.mktemp("weights") / "resnet18-10.pt"
    state = torch.random.get_rng_state()
    try:
        seeded_init("resnet18", dest, seed=0, num_classes=10)
    finally:
        torch.random.set_rng_state(state)
    return dest


@pytest.fixture(autouse=True, scope="module")
def _restore_torch_threads() -> Iterator[None]:
    """Handlers set torch's global thread count at initialize(); put it back for the rest of the session."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
