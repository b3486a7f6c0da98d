"""A TorchServe handler that answers at once: the null model, for the serving path's own ceiling.

No decoding, no model: what remains of a request's cost is TorchServe's frontend, the frontend ↔ worker IPC
and (through the bridge) the bridge itself.
"""

from __future__ import annotations

from typing import Any

ANSWER = b'{"predictions": [], "model": {"name": "null", "version": "1.0"}}'


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """Answer every item of the batch with the same small JSON body."""
    if data is None:  # TorchServe's load call for function handlers
        return None
    for idx in range(len(data)):
        context.set_response_content_type(idx, "application/json")
        context.set_response_header(idx, "X-Batch-Size", str(len(data)))
    return [ANSWER] * len(data)
