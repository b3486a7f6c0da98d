"""The archives we build, declared: handler, code, weights, model-config.yaml and golden inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from archive_scripts import weights
from archive_scripts.weights import WeightsInfo

# Handler modules every image archive carries (imported by bare name inside the worker).
SHARED_MODULES = ("batch_handler.py", "image_decoding.py", "model_architectures.py")

IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# EfficientNet-Lite weights were trained on inputs scaled to [-1, 1].
MINUS_ONE_TO_ONE = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

CAT_LABELS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


@dataclass(frozen=True)
class GoldenCase:
    """A photo the archive must answer; ``top1_any_of`` empty means "any well-formed answer"."""

    photo: str
    top1_any_of: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchiveSpec:
    """Everything that goes into one ``.mar``."""

    name: str
    version: str
    handler: str
    architecture: str
    make_weights: Callable[[Path, Path | None], WeightsInfo]
    model_config: dict[str, Any]
    handler_config: dict[str, Any]
    golden: tuple[GoldenCase, ...]
    modules: tuple[str, ...] = SHARED_MODULES
    labels: str | None = "imagenet"
    description: str = ""

    @property
    def archive_name(self) -> str:
        """File name in the model store."""
        return f"{self.name}.mar"


def _weights_or(
    architecture: str, default: Callable[[Path], WeightsInfo]
) -> Callable[[Path, Path | None], WeightsInfo]:
    def make(dest: Path, user_weights: Path | None) -> WeightsInfo:
        if user_weights is not None:
            return weights.from_user_file(architecture, user_weights, dest)
        return default(dest)

    return make


SPECS: tuple[ArchiveSpec, ...] = (
    ArchiveSpec(
        name="classifier",
        version="1.0",
        handler="classifier_handler.py",
        architecture="efficientnet_lite0",
        make_weights=_weights_or("efficientnet_lite0", weights.efficientnet_lite0_imagenet),
        model_config={"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 30},
        handler_config={"threads": 1, "topk": 5, "resize": 256, "crop": 224, **MINUS_ONE_TO_ONE},
        golden=(
            GoldenCase("chelsea", CAT_LABELS),
            GoldenCase("coffee", ("espresso", "cup", "coffee mug")),
            GoldenCase("flower", ("daisy",)),
        ),
        description="EfficientNet-Lite0, ImageNet-1k, top-5 labels",
    ),
    ArchiveSpec(
        name="resnet18",
        version="1.0",
        handler="classifier_handler.py",
        architecture="resnet18",
        make_weights=_weights_or("resnet18", lambda dest: weights.seeded_init("resnet18", dest, seed=0)),
        model_config={"minWorkers": 2, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 10, "responseTimeout": 30},
        handler_config={"threads": 1, "topk": 5, "resize": 256, "crop": 224, **IMAGENET_NORMALISATION},
        golden=(GoldenCase("chelsea"), GoldenCase("rocket")),
        description="torchvision ResNet-18 at 224x224, the throughput model (untrained unless weights are given)",
    ),
)


def find_spec(name: str) -> ArchiveSpec:
    """The spec called ``name``; a clear error listing the known ones otherwise."""
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise KeyError(f"no archive spec named {name!r}; known: {', '.join(s.name for s in SPECS)}")
