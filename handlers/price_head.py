"""The price head: an image embedding → a log-normal price distribution, its file format and its interval.

``PriceHead`` maps a unit-norm embedding to ``(mu, log_sigma)`` of ``log(price)``. The estimate is
``exp(mu)`` (the median of that log-normal) and the interval ``exp(mu ± z·sigma)`` with ``z`` the normal
quantile for the requested coverage. A head file is ``{"state_dict": ..., "metadata": {...}}`` written with
``torch.save`` and read back with ``weights_only=True``; a bare ``state_dict`` is accepted too. Pure module:
no TorchServe imports.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

import torch
from torch import nn

EMBEDDING_DIM = 1280  # EfficientNet-Lite0's pooled features
MIN_PRICE = 0.01  # one cent: nothing is quoted below it
MAX_PRICE = 1e12  # keeps exp() finite, so answers stay valid JSON
_LOG_SIGMA_RANGE = (-10.0, 5.0)


class HeadFileError(ValueError):
    """A price head file that cannot be loaded into :class:`PriceHead` (wrong keys, shapes or values)."""


class PriceHead(nn.Module):
    """Linear(embedding → 2): ``mu`` and ``log_sigma`` of ``log(price)``."""

    def __init__(self, in_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, 2)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) → (N, 2): column 0 is ``mu``, column 1 ``log_sigma``."""
        return self.linear(embeddings)


def z_for(coverage: float) -> float:
    """The two-sided standard-normal quantile: ``P(|Z| ≤ z) = coverage``."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"interval coverage must be strictly between 0 and 1, got {coverage}")
    return NormalDist().inv_cdf(0.5 + coverage / 2.0)


def price_interval(
    mu: torch.Tensor, log_sigma: torch.Tensor, coverage: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(price, low, high)``: the log-normal's median and its central ``coverage`` interval, clamped finite."""
    sigma = log_sigma.clamp(*_LOG_SIGMA_RANGE).exp()
    z = z_for(coverage)
    bounds = (math.log(MIN_PRICE), math.log(MAX_PRICE))

    def at(k: float) -> torch.Tensor:
        return (mu + k * z * sigma).clamp(*bounds).exp()

    return at(0.0), at(-1.0), at(1.0)


def cents(value: float) -> float:
    """A price rounded to cents, never below one cent."""
    return max(round(value, 2), MIN_PRICE)


def save_head(head: PriceHead, path: Path, metadata: dict[str, Any]) -> None:
    """Write ``head``'s weights and a small JSON-like ``metadata`` dict (readable with ``weights_only=True``)."""
    state = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in head.state_dict().items()}
    torch.save({"state_dict": state, "metadata": dict(metadata)}, path)


def load_head(path: Path | str, in_features: int = EMBEDDING_DIM) -> tuple[PriceHead, dict[str, Any]]:
    """Read a head file (ours, or a bare ``state_dict``), checking keys, shapes and finiteness strictly."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HeadFileError(f"{Path(path).name} is not a readable torch state_dict file: {exc}") from exc
    if not isinstance(saved, dict):
        raise HeadFileError(f"{Path(path).name} holds a {type(saved).__name__}, expected a state_dict")
    state = saved.get("state_dict", saved)
    metadata = saved.get("metadata", {}) if "state_dict" in saved else {}
    head = PriceHead(in_features)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for k, v in state.items()}
    if found != expected:
        raise HeadFileError(f"{Path(path).name} does not fit PriceHead: expected {expected}, found {found}")
    if not all(torch.isfinite(v).all() for v in state.values()):
        raise HeadFileError(f"{Path(path).name} has NaN or infinite weights")
    head.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return head.eval(), dict(metadata)
