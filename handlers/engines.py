"""How a worker runs its model's forward pass: the engine named in model-config.yaml's handler section.

=================  =====================================================================================
``eager``          the PyTorch module as built, contiguous (NCHW) input
``channels_last``  the PyTorch module with weights and input in channels_last (what every archive ran before
                   engines existed, and the engine of an archive whose config names none)
``compile``        ``torch.compile`` (Inductor) of the channels_last module, compiled and warmed up in
                   ``initialize()`` before the worker reports ready (the gpu flavour's engine)
``onnxruntime``    the archive's ``model.onnx`` (exported at build time) in an ONNX Runtime CPU session
``openvino``       the archive's ``model.xml``/``model.bin`` (OpenVINO IR, exported at build time), compiled
                   for the CPU in fp32
=================  =====================================================================================

The exported engines take no PyTorch at run time beyond the tensors around them, and never fall back: a missing
file or runtime fails the worker's load with what to do. No TorchServe imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ENGINES = ("eager", "channels_last", "compile", "onnxruntime", "openvino")
LEGACY_ENGINE = "channels_last"  # an archive whose handler section names no engine ran this
ONNX_FILE = "model.onnx"
OPENVINO_FILES = ("model.xml", "model.bin")
# Files each engine needs beside the archive's weights, written by the build (archive_scripts/export.py).
EXPORTED_FILES: dict[str, tuple[str, ...]] = {"onnxruntime": (ONNX_FILE,), "openvino": OPENVINO_FILES}
# The Python package that runs each engine: its version goes into the archive's manifest entry.
RUNTIME_PACKAGES = {
    "eager": "torch", "channels_last": "torch", "compile": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
}
INPUT_NAME, OUTPUT_NAME = "input", "output"


class EngineUnavailable(RuntimeError):
    """The engine cannot run here (its runtime or its exported file is missing): the worker must not start."""


@dataclass
class Engine:
    """A loaded forward pass: a batch (N, 3, H, W) float32 on the worker's device → (N, ...) outputs.

    ``runs`` holds one runner per thread count the worker may use (handlers/box_load.py): an exported engine's
    session is opened for each at load time, so a batch never waits for one; a PyTorch engine sets torch's threads.
    """

    name: str
    runs: dict[int, Callable[[torch.Tensor], torch.Tensor]]
    memory_format: torch.memory_format = torch.contiguous_format  # the layout the runners want their input in
    needs_warm_up: bool = False  # compiles on first use: warm it up before the worker reports ready
    torch_module: nn.Module | None = None  # the PyTorch module the engine runs, when it runs one

    def __call__(self, batch: torch.Tensor, threads: int | None = None) -> torch.Tensor:
        """The outputs of ``batch`` on ``threads`` threads (default: the most this engine was loaded for)."""
        run = self.runs[max(self.runs) if threads is None else threads]
        return run(batch.contiguous(memory_format=self.memory_format))


def check_engine(name: str) -> str:
    """``name`` if it is an engine, else a ValueError listing them."""
    if name not in ENGINES:
        raise ValueError(f"handler engine must be one of {', '.join(ENGINES)}, got {name!r}")
    return name


def cannot_take(engine: str, module: nn.Module) -> str | None:
    """Why ``engine`` cannot run ``module`` whatever its operators, or None: torch.compile takes no TorchScript."""
    if engine == "compile" and isinstance(module, torch.jit.ScriptModule):
        others = ", ".join(e for e in ENGINES if e != "compile")
        return (
            "engine compile cannot take a TorchScript model (torch.compile does not compile torch.jit modules): "
            f"choose another engine for it ({others}), or give the spec the model's model_file + serialized_file "
            "(its Python class and state_dict) instead of a TorchScript file"
        )
    return None


def load_engine(
    name: str, module: nn.Module, model_dir: str, device: torch.device, thread_counts: tuple[int, ...]
) -> Engine:
    """The engine ``name`` for ``module`` (evaluated), reading exported files from ``model_dir``, for each count of
    ``thread_counts``."""
    check_engine(name)
    if name in EXPORTED_FILES:
        if device.type != "cpu":
            raise EngineUnavailable(f"engine {name} runs on the CPU only, but this worker's device is {device}")
        missing = [f for f in EXPORTED_FILES[name] if not os.path.exists(os.path.join(model_dir, f))]
        if missing:
            raise EngineUnavailable(
                f"engine {name} needs {', '.join(missing)} in the archive; rebuild it with "
                f"`python -m archive_scripts` (which exports the model for its engine)"
            )
        loader = _onnxruntime if name == "onnxruntime" else _openvino
        return Engine(name, {threads: loader(model_dir, threads) for threads in thread_counts})
    if name == "eager":
        module = module.to(device)
        return Engine(name, _torch_runs(module, thread_counts), torch.contiguous_format, torch_module=module)
    problem = cannot_take(name, module)
    if problem is not None:
        raise EngineUnavailable(problem)
    # channels_last: measured ~1.4× faster than NCHW for ResNet-18 convolutions on one CPU thread.
    # torch's stubs have no overload for (device, memory_format=...), which Module.to accepts at run time.
    module = module.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    if name == "compile":
        compiled: Callable[[torch.Tensor], torch.Tensor] = torch.compile(module, dynamic=True)
        return Engine(name, _torch_runs(compiled, thread_counts), torch.channels_last, needs_warm_up=True,
                      torch_module=module)
    return Engine(name, _torch_runs(module, thread_counts), torch.channels_last, torch_module=module)


def _torch_runs(
    forward: Callable[[torch.Tensor], torch.Tensor], thread_counts: tuple[int, ...]
) -> dict[int, Callable[[torch.Tensor], torch.Tensor]]:
    def runner(threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(batch: torch.Tensor) -> torch.Tensor:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return forward(batch)

        return run

    return {threads: runner(threads) for threads in thread_counts}


def _import(package: str) -> Any:
    try:
        return __import__(package)
    except ImportError as exc:
        raise EngineUnavailable(
            f"this archive's engine needs the {package} package, which this model server lacks ({exc}); install "
            f"requirements.txt, or rebuild the archive for another engine (spec engine=...)"
        ) from exc


def _onnxruntime(model_dir: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    ort = _import("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No spin-waiting between batches: the worker's decoding threads, TorchServe's frontend and the box's other
    # workers need those cores (ONNX Runtime spins by default).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        os.path.join(model_dir, ONNX_FILE), options, providers=["CPUExecutionProvider"]
    )

    def run(batch: torch.Tensor) -> torch.Tensor:
        (outputs,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})
        return torch.from_numpy(outputs)

    return run


def _openvino(model_dir: str, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    ov = _import("openvino")
    # fp32 always: on a CPU with bf16 units OpenVINO would otherwise pick bf16 by itself, ungated. No CPU pinning:
    # OpenVINO pins its threads from the first core on, so two one-thread workers would share core 0 (measured:
    # 2 processes × 1 thread of resnet18 kept 1.01 cores busy).
    compiled = ov.Core().compile_model(
        os.path.join(model_dir, OPENVINO_FILES[0]),
        "CPU",
        {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
        },
    )
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> torch.Tensor:
        outputs = request.infer({0: batch.numpy()}, share_inputs=True)
        return torch.from_numpy(outputs[0].copy())

    return run
