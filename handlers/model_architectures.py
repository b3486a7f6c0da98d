"""The networks our archives can carry: an architecture by name, a user's model file, or a TorchScript file.

An archive ships a ``state_dict`` plus this module; the handler builds the named architecture and loads
the weights into it. Keeping construction here (not pickled modules) means weights from anywhere plug in
by path as long as their keys match the architecture. A spec may instead give torch-model-archiver's own
``model_file`` + ``serialized_file`` (:func:`load_model_file`) or a TorchScript file (:func:`load_torchscript`).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _resnet18(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


def _efficientnet_lite0(num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": _resnet18,
    "efficientnet_lite0": _efficientnet_lite0,
}


def build_model(architecture: str, num_classes: int = 1000) -> nn.Module:
    """Construct an untrained ``architecture`` with ``num_classes`` outputs."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None
    return factory(num_classes)


def load_model(architecture: str, weights_path: str, num_classes: int = 1000) -> nn.Module:
    """Build ``architecture`` and load the ``state_dict`` saved at ``weights_path`` (strict keys)."""
    model = build_model(architecture, num_classes)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def model_file_class(model_file: str) -> type[nn.Module]:
    """The one ``nn.Module`` subclass defined in ``model_file`` (torch-model-archiver's ``--model-file``)."""
    path = Path(model_file)
    # A private module name: the file's own (e.g. "model") may be taken by another module of the worker.
    module_spec = importlib.util.spec_from_file_location(f"model_file_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"model file {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # what dataclasses and pickling look classes up in
    module_spec.loader.exec_module(module)
    found = [
        cls for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, nn.Module) and cls.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(cls.__name__ for cls in found) or "none"
        raise ValueError(
            f"model file {path.name} must define exactly one torch.nn.Module subclass (torch-model-archiver's "
            f"--model-file convention), found {names}; import the others from a module instead of defining them there"
        )
    return found[0]


def load_model_file(model_file: str, weights_path: str) -> nn.Module:
    """The network of ``model_file``, built with no arguments, with the ``state_dict`` at ``weights_path`` (strict)."""
    cls = model_file_class(model_file)
    try:
        model = cls()
    except TypeError as exc:
        raise ValueError(
            f"{cls.__name__} (model file {Path(model_file).name}) must be constructible with no arguments, as "
            f"torch-model-archiver's --model-file requires: give its parameters defaults ({exc})"
        ) from exc
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_torchscript(path: str) -> nn.Module:
    """A TorchScript module saved with ``torch.jit.save`` (traced or scripted), on the CPU."""
    module: nn.Module = torch.jit.load(path, map_location="cpu")
    return module.eval()


class ImageEmbedder(nn.Module):
    """A classification backbone's pooled last feature map, L2-normalised: one unit vector per image."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D) unit-norm embeddings."""
        # nn.Module.__getattr__ is typed Tensor | Module; the backbone is an EfficientNet with this method.
        features = self.backbone.extract_features(images)  # type: ignore[operator]
        return F.normalize(features.mean(dim=(2, 3)), dim=1)
