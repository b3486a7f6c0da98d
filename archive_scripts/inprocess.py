"""Run a handler in this process exactly as a TorchServe worker would: same Context, same calls.

Used by the build's smoke/golden gate (on a freshly built, unpacked archive) and by the unit tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ts.context import Context, RequestProcessor


@dataclass
class ItemResponse:
    """One item's answer: HTTP status, headers and JSON body."""

    status: int
    headers: dict[str, str]
    body: Any


def import_handler_class(directory: Path, handler_file: str) -> type:
    """The one class a handler file of ``directory`` defines, as TorchServe's worker finds it (its modules import
    each other by bare name, so ``directory`` goes on the path)."""
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    module = importlib.import_module(Path(handler_file).stem)
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    if len(classes) != 1:
        raise ValueError(f"{handler_file} must define exactly one class, found {len(classes)}")
    return classes[0]


class LocalWorker:
    """A handler instance driven through ``initialize()`` and ``handle()`` with a real ``ts`` Context."""

    def __init__(self, handler: Any, context: Context) -> None:
        self.handler = handler
        self.context = context

    @classmethod
    def from_model_dir(
        cls, model_dir: Path, gpu_id: int | None = None, handler_overrides: dict[str, Any] | None = None
    ) -> LocalWorker:
        """Load the handler of an unpacked archive (``MAR-INF/MANIFEST.json`` inside ``model_dir``).

        ``handler_overrides`` replace keys of model-config.yaml's handler section (e.g. the gate's fp32 twin).
        """
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        model = manifest["model"]
        yaml_config: dict[str, Any] = {}
        if "configFile" in model:
            yaml_config = yaml.safe_load((model_dir / model["configFile"]).read_text()) or {}
        if handler_overrides:
            yaml_config = {**yaml_config, "handler": {**yaml_config.get("handler", {}), **handler_overrides}}
        handler_class = import_handler_class(model_dir, model["handler"])
        context = Context(
            model["modelName"],
            str(model_dir),
            manifest,
            yaml_config.get("batchSize", 1),
            gpu_id,
            "local",
            model_yaml_config=yaml_config,
        )
        handler: Any = handler_class()  # the archive's own handler class, known only at run time
        handler.initialize(context)
        return cls(handler, context)

    @classmethod
    def from_archive(cls, mar_path: Path, unpack_to: Path) -> LocalWorker:
        """Unpack ``mar_path`` into ``unpack_to`` and load its handler."""
        with zipfile.ZipFile(mar_path) as archive:
            archive.extractall(unpack_to)
        return cls.from_model_dir(unpack_to)

    def handle(self, items: list[dict[str, Any]]) -> list[ItemResponse]:
        """Send one batch (each item as TorchServe passes it, e.g. ``{"data": bytes}``)."""
        self.context.request_processor = [RequestProcessor({}) for _ in items]
        self.context.request_ids = {i: f"local-{i}" for i in range(len(items))}
        outputs = self.handler.handle(items, self.context)
        if len(outputs) != len(items):
            raise AssertionError(f"handler answered {len(outputs)} items for a batch of {len(items)}")
        responses = []
        for idx, raw in enumerate(outputs):
            status, _ = self.context.get_response_status(idx)
            body = json.loads(raw) if raw else None
            responses.append(ItemResponse(status or 200, dict(self.context.get_response_headers(idx)), body))
        return responses

    def predict(self, photos: list[bytes]) -> list[ItemResponse]:
        """Send raw image bodies as one batch."""
        return self.handle([{"body": photo} for photo in photos])
