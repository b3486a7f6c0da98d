"""What the bridge records of one inference: the record (defined once, in stack.database) and its summary
(stack.answers, shared with ``servingctl replay``)."""

from __future__ import annotations

from stack.answers import answered_version, score_map, summarise_output
from stack.database import InferenceRecord

__all__ = ["InferenceRecord", "answered_version", "score_map", "summarise_output"]
