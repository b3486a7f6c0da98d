"""Visual similarity: the k catalogue items nearest to a photo, by distance between unit-norm embeddings."""

from __future__ import annotations

import os
from typing import Any

import torch
from batch_handler import BatchImageHandler, ItemError, OipOutput, int_param, request_param
from model_architectures import ImageEmbedder
from similarity_index import SimilarityIndex
from torch import nn

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


class SimilarItemsHandler(BatchImageHandler):
    """Answers ``{"items": [{"id", "distance"}, ...], "k": k}`` (nearest first) for each image.

    Request parameters: ``k`` (default: the handler config's ``topk``, at most ``max_k``) and
    ``embedding=true`` to include the query's own embedding.
    """

    param_names = ("k", "embedding")
    config_keys = ("index_file", "max_k", "embedding_dim")
    kind = "similar"
    oip_outputs = (
        OipOutput("ids", "BYTES", "items[].id"),
        OipOutput("distances", "FP32", "items[].distance"),
        OipOutput("embedding", "FP32", "embedding", "embedding_dim", asked_by="embedding"),
    )

    def initialize(self, context: Any) -> None:
        """Load the embedder, then the catalogue index shipped in the archive, checked against the embedder."""
        super().initialize(context)
        crop = self.config.tensor.crop
        dimension = self.forward(torch.zeros(1, 3, crop, crop, device=self.device)).shape[1]
        declared = int(self.config.extra.get("embedding_dim", dimension))
        if declared != dimension:  # the archive's /v2 signature states it
            raise ValueError(f"handler embedding_dim {declared} does not match the model's {dimension}-d embedding")
        index_file = self.config.extra.get("index_file", "catalogue_index.pt")
        self.index = SimilarityIndex.load(os.path.join(self.model_dir, index_file), dimension=dimension)
        max_k = int(self.config.extra.get("max_k", 50))
        if max_k < 1 or self.config.topk < 1:
            raise ValueError(f"max_k and topk must be at least 1, got {max_k} and {self.config.topk}")
        self.max_k = min(max_k, len(self.index))
        self.default_k = min(self.config.topk, self.max_k)

    def load_model(self, model_dir: str) -> nn.Module:
        """The classification backbone's pooled features, L2-normalised."""
        return ImageEmbedder(super().load_model(model_dir))

    def item_params(self, row: dict[str, Any]) -> tuple[int, bool]:
        """``k`` within 1..max_k and whether to return the embedding; a bad value refuses this item only."""
        k = int_param(row, "k", self.default_k, 1, self.max_k)
        flag = (request_param(row, "embedding") or "").strip().lower()
        if flag not in TRUE + FALSE:
            raise ItemError(f"parameter embedding must be true or false, got {flag[:20]!r}")
        return k, flag in TRUE

    def postprocess_batch(self, outputs: torch.Tensor, params: list[tuple[int, bool]]) -> list[dict[str, Any]]:
        """One search for the whole batch at the largest k asked, each item cut to its own k."""
        distances, indices = self.index.search(outputs, max(k for k, _ in params))
        results = []
        for embedding, row_distances, row_indices, (k, with_embedding) in zip(outputs, distances, indices, params):
            items = [
                {"id": self.index.ids[i], "distance": round(d, 6)}
                for d, i in zip(row_distances[:k].tolist(), row_indices[:k].tolist())
            ]
            result: dict[str, Any] = {"items": items, "k": k}
            if with_embedding:
                result["embedding"] = [round(v, 7) for v in embedding.tolist()]
            results.append(result)
        return results

    def describe(self) -> dict[str, Any]:
        """The base description plus the catalogue's size and origin."""
        index = {"items": len(self.index), "dimension": self.index.dimension, "max_k": self.max_k}
        return {**super().describe(), "index": {**index, "metadata": self.index.metadata}}
