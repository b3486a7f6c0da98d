"""The network architectures our archives can carry, by name.

An archive ships a ``state_dict`` plus this module; the handler builds the named architecture and loads
the weights into it. Keeping construction here (not pickled modules) means weights from anywhere plug in
by path as long as their keys match the architecture.
"""

from __future__ import annotations

from collections.abc import Callable

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
