"""Price estimation: a photo → a price, its currency and an interval of stated coverage."""

from __future__ import annotations

import os
from typing import Any

import torch
from batch_handler import BatchImageHandler, OipOutput
from model_architectures import ImageEmbedder
from price_head import cents, load_head, price_interval, z_for
from torch import nn


class PriceHandler(BatchImageHandler):
    """Answers ``{"price", "currency", "interval": {"low", "high", "coverage"}}`` for each image."""

    config_keys = ("price_head_file", "currency", "interval")
    kind = "price"
    oip_outputs = (
        OipOutput("price", "FP32", "price", 1),
        OipOutput("interval", "FP32", "interval.low,interval.high", 2),
        OipOutput("currency", "BYTES", "currency", 1),
    )

    def load_model(self, model_dir: str) -> nn.Module:
        """The pretrained backbone's embedding followed by the archive's price head, as one module."""
        extra = self.config.extra
        self.coverage = float(extra.get("interval", 0.8))
        z_for(self.coverage)  # a bad coverage fails the worker at load, not every request
        head, self.head_metadata = load_head(os.path.join(model_dir, extra.get("price_head_file", "price_head.pt")))
        self.currency = str(extra.get("currency") or self.head_metadata.get("currency") or "")
        trained_in = self.head_metadata.get("currency", self.currency)
        if not self.currency or trained_in != self.currency:
            raise ValueError(f"handler currency {self.currency!r} does not match the head's {trained_in!r}")
        return nn.Sequential(ImageEmbedder(super().load_model(model_dir)), head)

    def postprocess_batch(self, outputs: torch.Tensor, params: list[Any]) -> list[dict[str, Any]]:
        """Each row's ``(mu, log_sigma)`` as a price and interval in the configured currency."""
        price, low, high = (t.tolist() for t in price_interval(outputs[:, 0], outputs[:, 1], self.coverage))
        return [
            {
                "price": cents(p),
                "currency": self.currency,
                "interval": {"low": cents(lo), "high": cents(hi), "coverage": self.coverage},
            }
            for p, lo, hi in zip(price, low, high)
        ]

    def describe(self) -> dict[str, Any]:
        """The base description plus where the price head came from and how it was checked."""
        return {**super().describe(), "price_head": self.head_metadata}
