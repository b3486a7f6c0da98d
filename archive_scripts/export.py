"""Export a model for its engine at build time, so that what ships in the ``.mar`` is ready to load.

The module exported is exactly what the archive's own handler runs: the archive, built first with the
``eager`` engine, is loaded through its handler in a spawned process (as the golden gate does), and the
handler's PyTorch module (backbone, head, normalisation: all of it) is written out with a dynamic batch size:

- ``onnxruntime``: ``model.onnx`` (torch.onnx's TorchScript exporter, opset 17);
- ``openvino``: ``model.xml`` + ``model.bin`` (OpenVINO IR from its PyTorch frontend, weights kept in fp32).

Both take the module whatever its source: an architecture, a user's ``model_file`` class, or a TorchScript module
(torch.onnx's TorchScript exporter and OpenVINO's frontend both read ``torch.jit`` modules).

An engine that cannot take the model fails the build with the operator it could not convert and the engines
that take the model.
"""

from __future__ import annotations

import multiprocessing
import re
import tempfile
import traceback
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from handlers.engines import ENGINES, EXPORTED_FILES, INPUT_NAME, ONNX_FILE, OPENVINO_FILES, OUTPUT_NAME, cannot_take

if TYPE_CHECKING:
    from torch import nn

ONNX_OPSET = 17
OPERATOR = re.compile(r"\b(?:aten|prim|onnx)::[A-Za-z0-9_.]+")


class ExportFailed(RuntimeError):
    """The engine cannot take this model; the message names the operator and the engines that can."""


def export_module(engine: str, module: nn.Module, crop: int, dest: Path) -> list[Path]:
    """Write ``module`` (an ``nn.Module`` taking (N, 3, crop, crop)) into ``dest`` as ``engine`` loads it."""
    import torch

    dest.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, crop, crop)
    if engine == "onnxruntime":
        torch.onnx.export(
            module, (example,), str(dest / ONNX_FILE), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=ONNX_OPSET,
            dynamo=False,  # the TorchScript exporter: no onnxscript at build time, CNNs export exactly
        )
    elif engine == "openvino":
        import openvino as ov

        model = ov.convert_model(module, example_input=example, input=[ov.PartialShape([-1, 3, crop, crop])])
        ov.save_model(model, str(dest / OPENVINO_FILES[0]), compress_to_fp16=False)  # the default halves the weights
    else:
        raise ValueError(f"engine {engine} exports nothing; exported engines: {', '.join(EXPORTED_FILES)}")
    return [dest / name for name in EXPORTED_FILES[engine]]


def export_or_explain(engine: str, module: nn.Module, crop: int, dest: Path) -> tuple[list[Path], str | None]:
    """Export ``module`` for ``engine`` into ``dest``: its files, or why not (naming the engines that take it)."""
    try:
        return export_module(engine, module, crop, dest), None
    except Exception as exc:  # noqa: BLE001 - every exporter has its own errors: report, then try the others
        problem = _describe(exc)
    # The PyTorch engines run whatever operators the module has (compile: unless it is TorchScript).
    takes = [e for e in ENGINES if e not in EXPORTED_FILES and cannot_take(e, module) is None]
    with tempfile.TemporaryDirectory(prefix="export-try-") as tmp:
        for other in EXPORTED_FILES:
            if other == engine:
                continue
            try:
                export_module(other, module, crop, Path(tmp) / other)
            except Exception:  # noqa: BLE001, S112 - only whether it exports matters here
                continue
            takes.append(other)
    engines = ", ".join(e for e in ENGINES if e in takes)
    return [], f"engine {engine} cannot take this model: {problem}; engines that take this model: {engines}"


def _export_in_worker(mar: Path, engine: str, dest: Path) -> tuple[list[Path], str | None]:
    """In the spawned process: the module of the archive's own handler, exported; or what went wrong."""
    from archive_scripts.inprocess import LocalWorker

    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        with zipfile.ZipFile(mar) as archive:
            archive.extractall(tmp)
        try:
            worker = LocalWorker.from_model_dir(Path(tmp), handler_overrides={"engine": "eager"})
        except Exception as exc:  # noqa: BLE001 - the archive itself is broken: say so, not "cannot export"
            return [], f"the archive's handler failed to load: {type(exc).__name__}: {exc}"
        return export_or_explain(engine, worker.handler.model, worker.handler.config.tensor.crop, dest)


def _describe(exc: BaseException) -> str:
    """The operator an exporter could not convert, when its message names one, and the error's first line."""
    text = f"{type(exc).__name__}: {exc}"
    operators = sorted(set(OPERATOR.findall(text)) - {"prim::Constant"})
    first_line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    if operators:
        return f"cannot convert operator {', '.join(operators)} ({first_line.strip()[:200]})"
    return f"{type(exc).__name__}: {first_line.strip()[:300]}\n{traceback.format_exc(limit=3)}"


def export_archive(mar: Path, engine: str, dest: Path, timeout_s: float = 900) -> list[Path]:
    """Export the model of ``mar`` (built with the eager engine) for ``engine`` into ``dest``; its files.

    Raises :class:`ExportFailed` naming the operator that could not be converted and the engines that work.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        files, problem = pool.apply_async(_export_in_worker, (mar, engine, dest)).get(timeout_s)
    if problem is not None:
        raise ExportFailed(f"{mar.stem}: {problem}")
    return files
