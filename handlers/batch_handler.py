"""The shared batch mechanism every image handler of ours is built on.

TorchServe hands ``handle()`` a batch and needs one response per item, in order. A raised exception
fails the whole batch, so here every item is decoded on its own: unusable items get their own 4xx via
TorchServe's per-item status, the valid ones go through the model in one forward pass.
Subclasses override only :meth:`BatchImageHandler.postprocess_batch` (and, if needed, ``load_model``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from box_load import BoxLoad, thread_shares
from device_preprocess import DevicePreprocessor, ItemErrors, cpu_batch, to_device
from engines import EXPORTED_FILES, LEGACY_ENGINE, Engine, check_engine, load_engine
from image_decoding import (
    DecodeLimits,
    EmptyImage,
    ImageError,
    TensorSpec,
    UnsupportedContent,
)
from model_architectures import load_model, load_model_file, load_torchscript
from torch import nn
from ts.metrics.dimension import Dimension
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)

JSON = "application/json"
BATCH_SIZE_HEADER = "X-Batch-Size"
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # autocast dtype


@dataclass(frozen=True)
class HandlerConfig:
    """The ``handler:`` section of an archive's ``model-config.yaml``."""

    architecture: str = ""  # a name in model_architectures.ARCHITECTURES; "": the archive's model file or TorchScript
    threads: int = 0  # torch / engine threads and decoding threads; 0: every core this worker may use
    num_classes: int = 1000
    topk: int = 5
    labels_file: str = "index_to_name.json"
    tensor: TensorSpec = field(default_factory=TensorSpec)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    precision: str = "fp32"  # fp16 / bf16: the forward pass under autocast
    engine: str = LEGACY_ENGINE  # how the forward runs: handlers/engines.py
    decode_on_device: bool = True  # on a GPU worker, JPEGs are decoded and preprocessed on the GPU
    device: str | None = None  # run on this device instead of gpu_id's (tests, benchmarks: "cpu" drives the device path)
    extra: dict[str, Any] = field(default_factory=dict)  # keys a subclass declared in its config_keys

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"handler precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        check_engine(self.engine)
        if self.precision != "fp32" and self.engine in EXPORTED_FILES:
            raise ValueError(f"handler precision {self.precision} needs a PyTorch engine (autocast); {self.engine} runs fp32")
        if self.threads < 0:
            raise ValueError(f"handler threads must be 0 (every core) or more, got {self.threads}")

    @classmethod
    def from_yaml(cls, section: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> HandlerConfig:
        """Build from the yaml section; unknown keys are an error, not silently ignored."""
        section = dict(section)
        tensor_keys = {"resize", "crop", "mean", "std"}
        limit_keys = {"max_bytes": "max_image_bytes", "max_pixels": "max_image_pixels", "max_side": "max_image_side"}
        tensor = TensorSpec(**{k: _tuple(section.pop(k)) for k in tensor_keys & section.keys()})
        limits = DecodeLimits(
            **{k: int(section.pop(yaml_key)) for k, yaml_key in limit_keys.items() if yaml_key in section}
        )
        extra = {k: section.pop(k) for k in extra_keys if k in section}
        # Archives built before engines existed say `compile: true|false`; without it they ran channels_last.
        legacy_compile = bool(section.pop("compile", False))
        section.setdefault("engine", "compile" if legacy_compile else LEGACY_ENGINE)
        known = {
            "architecture", "threads", "num_classes", "topk", "labels_file", "precision", "engine",
            "decode_on_device", "device",
        }
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"unknown keys in model-config.yaml handler section: {sorted(unknown)}")
        return cls(tensor=tensor, limits=limits, extra=extra, **section)


class OipOutput(NamedTuple):
    """One output tensor of a kind of answer over the Open Inference Protocol (``/v2``), read from each item's JSON.

    The catalogue (stack/models.json) carries these to the bridge, which builds every model's tensors from them.
    """

    name: str
    datatype: str  # BYTES | FP32 | FP64 | INT32 | INT64 | BOOL
    # Where in an item's answer: "price"; "predictions[].label" (every element's); "interval.low,interval.high"
    # (several, concatenated); "" the whole answer as one JSON text.
    path: str
    width: int | str = -1  # values per item: a number, -1 (it varies), or a handler config key ("topk")
    asked_by: str = ""  # an optional output, there only when this request parameter is true ("embedding")


JSON_ANSWER = (OipOutput("answer", "BYTES", "", 1),)  # the generic kind: any answer, one JSON text per item


def usable_cores() -> int:
    """The cores this worker may use: its CPU affinity, capped by its cgroup's CPU quota (a container's limit)."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))  # 2.5 cores: 2 threads, the rest for the frontend
    except (OSError, ValueError):
        pass  # no cgroup v2 quota: the affinity is the limit
    return cores


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class ItemError(Exception):
    """A request item refused for something other than its image (e.g. a bad parameter)."""

    def __init__(self, message: str, status: int = 400, kind: str = "InvalidRequest") -> None:
        super().__init__(message)
        self.message, self.status, self.kind = message, status, kind


def request_param(row: dict[str, Any], name: str) -> str | None:
    """A request parameter TorchServe passed beside the body (query string or form field), as text."""
    value = row.get(name)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def int_param(row: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """An integer parameter within [low, high], or an ItemError saying what is allowed."""
    raw = request_param(row, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ItemError(f"parameter {name} must be an integer between {low} and {high}, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise ItemError(f"parameter {name} must be between {low} and {high}, got {value}")
    return value


def payload_bytes(row: dict[str, Any], param_names: tuple[str, ...] = ()) -> bytes:
    """The image bytes of one request item (raw body, or the single file of a multipart form).

    ``param_names`` are the handler's own parameters (query string or form fields), never the image.
    """
    values = [row[k] for k in ("data", "body") if k in row] or [
        v for k, v in row.items() if k not in param_names
    ]
    if not values:
        raise EmptyImage("empty request: send the image bytes")
    if len(values) > 1:
        raise ImageError("send exactly one image per request (a multipart form with one file)")
    value = values[0]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    # KServe's v1 protocol (and JSON clients) send the image base64-encoded: {"data": "<base64>"}.
    if isinstance(value, dict) and isinstance(value.get("b64", value.get("data")), str):
        value = value.get("b64", value.get("data"))
    if isinstance(value, str) and len(value) >= 16:
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    # TorchServe decodes JSON and text bodies before the handler sees them.
    raise UnsupportedContent(
        "expected raw image bytes (or base64 in JSON); the request's content type made it text or JSON "
        "(send it as application/octet-stream or image/*)",
    )


class BatchImageHandler(BaseHandler):
    """Decode each item on its own, run the valid ones as one batch, answer every item."""

    config: HandlerConfig
    device: torch.device
    param_names: tuple[str, ...] = ()  # request parameters item_params() reads
    config_keys: tuple[str, ...] = ()  # extra model-config.yaml handler keys (in config.extra)
    # The kind of answer and its outputs over /v2 (OipOutput). A subclass that declares none answers as "json".
    kind: str = "json"
    oip_outputs: tuple[OipOutput, ...] = JSON_ANSWER

    def initialize(self, context: Any) -> None:
        """Load weights and settings once per worker, from the archive and its model-config.yaml."""
        properties = context.system_properties
        self.manifest = context.manifest
        yaml_config = context.model_yaml_config or {}
        self.config = HandlerConfig.from_yaml(yaml_config.get("handler", {}), self.config_keys)
        self.metadata: dict[str, Any] = yaml_config.get("metadata", {})
        config = self.config
        self.threads = config.threads or usable_cores()
        torch.set_num_threads(self.threads)
        self.device = torch.device(config.device) if config.device else self.select_device(properties.get("gpu_id"))
        model_dir = properties["model_dir"]
        self.model_dir = model_dir
        self.model_name = self.manifest["model"]["modelName"]
        self.model_version = self.manifest["model"].get("modelVersion", "")
        # Each batch gets its share of the box's cores among the workers busy at that moment (box_load.py): a
        # lone photo every core, two busy workers on two cores one each. torch.compile keeps one thread count
        # (another would recompile).
        self.box = BoxLoad(self.threads)
        shares = (self.threads,) if config.engine == "compile" else thread_shares(self.threads)
        self.engine: Engine = load_engine(config.engine, self.load_model(model_dir).eval(), model_dir, self.device, shares)
        self.model: nn.Module | None = self.engine.torch_module  # None for an exported engine
        # A batch's photos are decoded on its threads (Pillow and torch release the GIL while they work).
        self.decoders = {n: ThreadPoolExecutor(n, thread_name_prefix="decode") for n in shares if n > 1}
        # The device path wherever there is a device to decode on: a GPU, or one named in the config.
        on_device = config.decode_on_device and (self.device.type == "cuda" or config.device is not None)
        self.preprocessor = DevicePreprocessor(config.tensor, config.limits, self.device) if on_device else None
        if self.engine.needs_warm_up or config.precision != "fp32":
            self.warm_up(int(properties.get("batch_size") or 1))
        self.initialized = True
        logger.info(
            "%s %s ready on %s: engine %s, %d thread(s), %s, preprocessing on %s",
            self.model_name,
            self.model_version,
            self.device,
            self.engine.name,
            self.threads,
            config.precision,
            self.device if self.preprocessor else "cpu",
        )

    def warm_up(self, batch_size: int) -> None:
        """Compile (and autotune) before the worker reports ready: the full batch, then one item."""
        crop = self.config.tensor.crop
        for size in sorted({batch_size, 1}, reverse=True):
            self.forward(torch.zeros(size, 3, crop, crop, device=self.device))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> AbstractContextManager[Any]:
        """The configured precision: autocast to fp16 / bf16, or nothing for fp32."""
        dtype = PRECISIONS[self.config.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def forward(self, batch: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        """The model on a batch already on the device, in the configured precision; fp32 outputs on the CPU.

        ``threads``: one of the engine's thread counts (default: all of this worker's).
        """
        with torch.inference_mode(), self.autocast():
            return self.engine(batch, threads).float().cpu()

    def prepare_batch(self, photos: list[bytes], threads: int = 1) -> tuple[torch.Tensor | None, ItemErrors]:
        """Model input on the device for the usable photos (in order), and each photo's error or None."""
        if self.preprocessor is not None:
            return self.preprocessor(photos)
        tensors, errors = cpu_batch(photos, self.config.tensor, self.config.limits, self.decoders.get(threads))
        return (to_device(torch.stack(tensors), self.device, self.engine.memory_format) if tensors else None), errors

    @staticmethod
    def select_device(gpu_id: int | None) -> torch.device:
        """The GPU TorchServe assigned this worker, or the CPU when there is none."""
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{gpu_id}")
        return torch.device("cpu")

    def load_model(self, model_dir: str) -> nn.Module:
        """The network with the archive's serialized file: the configured architecture and its state_dict; else the
        archive's model file (torch-model-archiver's ``--model-file``: its one nn.Module class) and its state_dict;
        else the serialized file as TorchScript."""
        model = self.manifest["model"]
        serialized = os.path.join(model_dir, model["serializedFile"])
        if self.config.architecture:
            return load_model(self.config.architecture, serialized, self.config.num_classes)
        if "modelFile" in model:
            return load_model_file(os.path.join(model_dir, model["modelFile"]), serialized)
        return load_torchscript(serialized)

    def network_source(self) -> str:
        """Where the network came from, as load_model() chose: the architecture, the model file, or TorchScript."""
        model = self.manifest["model"]
        if self.config.architecture:
            return self.config.architecture
        return f"model file {model['modelFile']}" if "modelFile" in model else "TorchScript"

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """Answer every item of the batch: a prediction or that item's own error."""
        self.context = context
        if self._is_describe():
            return [json.dumps(self.describe()).encode()]
        responses: list[bytes | None] = [None] * len(data)
        photos: list[bytes] = []
        params: list[Any] = []
        items: list[int] = []
        for idx, row in enumerate(data):
            try:
                item_params = self.item_params(row)
                photos.append(payload_bytes(row, self.param_names))
                params.append(item_params)
                items.append(idx)
            except (ImageError, ItemError) as exc:
                responses[idx] = self._error(context, idx, exc)
        with self.box.busy() as threads:
            batch, errors = self.prepare_batch(photos, threads)
            outputs = self.forward(batch, threads) if batch is not None else None
        valid = [idx for idx, error in zip(items, errors) if error is None]
        params = [p for p, error in zip(params, errors) if error is None]
        for idx, error in zip(items, errors):
            if error is not None:
                responses[idx] = self._error(context, idx, error)
        if outputs is not None:
            for idx, result in zip(valid, self.postprocess_batch(outputs, params)):
                body = {
                    **result,
                    "model": self._model_ref(),
                    "batch_size": len(data),
                }
                responses[idx] = self._reply(context, idx, 200, body)
        for idx in range(len(data)):
            context.set_response_header(idx, BATCH_SIZE_HEADER, str(len(data)))
        self._emit_batch_metrics(context, len(data), len(data) - len(valid))
        return [r if r is not None else b"" for r in responses]

    def _emit_batch_metrics(self, context: Any, items: int, rejected: int) -> None:
        """TorchServe handler metrics (Prometheus, per model): batches, items, rejected items."""
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        version = [Dimension("ModelVersion", self.model_version)]
        metrics.add_counter("HandlerBatches", 1, dimensions=version)
        metrics.add_counter("HandlerBatchItems", items, dimensions=version)
        metrics.add_counter("HandlerRejectedItems", rejected, dimensions=version)

    def item_params(self, row: dict[str, Any]) -> Any:
        """Per-item request parameters (validated; raise ItemError for a 4xx on this item only)."""
        return None

    def postprocess_batch(self, outputs: torch.Tensor, params: list[Any]) -> list[dict[str, Any]]:
        """Turn the model's batched output into one JSON-able result per item (``params`` from item_params)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What ``GET /models/{name}?customized=true`` shows."""
        return {
            "architecture": self.network_source(),
            "device": str(self.device),
            "threads": self.threads,
            "engine": self.engine.name,
            "precision": self.config.precision,
            "preprocessing": str(self.device) if self.preprocessor else "cpu",
            "input": {"resize": self.config.tensor.resize, "crop": self.config.tensor.crop},
            "limits": vars(self.config.limits),
            "metadata": self.metadata,
        }

    @staticmethod
    def _reply(context: Any, idx: int, status: int, body: dict[str, Any]) -> bytes:
        context.set_response_content_type(idx, JSON)
        if status != 200:
            context.set_response_status(status, body.get("type", ""), idx)
        return json.dumps(body).encode()

    def _error(self, context: Any, idx: int, exc: ImageError | ItemError) -> bytes:
        body = {"code": exc.status, "type": exc.kind, "message": exc.message, "model": self._model_ref()}
        return self._reply(context, idx, exc.status, body)

    def _model_ref(self) -> dict[str, str]:
        return {"name": self.model_name, "version": self.model_version}
