"""Image classification: top-k labels with softmax scores."""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from batch_handler import BatchImageHandler, OipOutput


class ImageClassifierHandler(BatchImageHandler):
    """Answers ``{"predictions": [{"label", "index", "score"}, ...]}`` for each image."""

    kind = "classifier"
    oip_outputs = (
        OipOutput("labels", "BYTES", "predictions[].label", "topk"),
        OipOutput("scores", "FP32", "predictions[].score", "topk"),
        OipOutput("class_ids", "INT64", "predictions[].index", "topk"),
    )

    def initialize(self, context: Any) -> None:
        """Load the model, then the label names shipped in the archive."""
        super().initialize(context)
        with open(os.path.join(self.model_dir, self.config.labels_file), encoding="utf-8") as f:
            names = json.load(f)
        self.labels = [names[str(i)] for i in range(len(names))]

    def postprocess_batch(self, outputs: torch.Tensor, params: list[Any]) -> list[dict[str, Any]]:
        """Top-k of the softmax over each row of logits."""
        scores, indices = outputs.softmax(dim=1).topk(min(self.config.topk, outputs.shape[1]), dim=1)
        return [
            {
                "predictions": [
                    {"label": self.labels[i], "index": i, "score": round(s, 6)}
                    for s, i in zip(row_scores.tolist(), row_indices.tolist())
                ]
            }
            for row_scores, row_indices in zip(scores, indices)
        ]
