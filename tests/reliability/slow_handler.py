"""A TorchServe handler that only sleeps, then answers: a model as slow as its model-config.yaml says.

Used by the fault tests for "a handler slower than the response timeout" and for "a burst beyond the
queue" (a known service time makes the queue's capacity, not the machine's speed, decide who is served).
"""

from __future__ import annotations

import json
import time
from typing import Any


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """Sleep ``handler.delay_s`` per batch, then answer every item with 200 JSON."""
    if data is None:  # TorchServe's load call for function handlers
        return None
    delay_s = float(((context.model_yaml_config or {}).get("handler") or {}).get("delay_s", 5.0))
    time.sleep(delay_s)
    for idx in range(len(data)):
        context.set_response_content_type(idx, "application/json")
        context.set_response_header(idx, "X-Batch-Size", str(len(data)))
    body = {"slept_s": delay_s, "batch_size": len(data), "model": {"name": context.model_name, "version": "1.0"}}
    return [json.dumps(body).encode() for _ in data]
