"""Engines: exported at build time, gated against the fp32 eager twin, chosen from the committed measurement."""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from archive_scripts.build import REPO_ROOT, build
from archive_scripts.export import ExportFailed, export_module, export_or_explain
from archive_scripts.gate import run_gate
from archive_scripts.inprocess import LocalWorker
from archive_scripts.photos import sample_photo
from archive_scripts.specs import SPECS, find_spec
from handlers.engines import ENGINES, EXPORTED_FILES, EngineUnavailable, load_engine
from handlers.model_architectures import build_model

ENGINES_JSON = REPO_ROOT / "benchmarks" / "results" / "engines.json"


class Unconvertible(nn.Module):
    """A model with an operator neither exporter converts (a singular value decomposition)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(images.mean(dim=1))[1]


@pytest.mark.parametrize("engine", sorted(EXPORTED_FILES))
def test_an_exported_engine_answers_as_eager_pytorch(engine: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = build_model("resnet18").eval()
    files = export_module(engine, module, 64, tmp_path)
    assert [f.name for f in files] == list(EXPORTED_FILES[engine]) and all(f.stat().st_size > 1000 for f in files)
    loaded = load_engine(engine, module, str(tmp_path), torch.device("cpu"), thread_counts=(2, 1))
    assert sorted(loaded.runs) == [1, 2]  # a session per thread count, opened at load
    batch = torch.randn(3, 3, 64, 64)  # a batch size the export never saw: the batch axis is dynamic
    with torch.inference_mode():
        expected = module(batch)
    for threads in (1, 2, None):
        assert torch.allclose(loaded(batch, threads), expected, atol=1e-4), (loaded(batch, threads) - expected).abs().max()
    assert loaded.torch_module is None  # nothing of the PyTorch module is kept at run time


def test_a_missing_exported_file_fails_the_worker_instead_of_falling_back(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match=r"needs model\.onnx in the archive; rebuild it"):
        load_engine("onnxruntime", build_model("resnet18"), str(tmp_path), torch.device("cpu"), (1,))
    with pytest.raises(ValueError, match="engine must be one of"):
        load_engine("tensorrt", build_model("resnet18"), str(tmp_path), torch.device("cpu"), (1,))


def test_an_engine_that_cannot_take_the_model_names_the_operator_and_the_engines_that_can(tmp_path: Path) -> None:
    files, problem = export_or_explain("openvino", Unconvertible().eval(), 32, tmp_path / "out")
    assert files == []
    assert problem is not None and problem.startswith("engine openvino cannot take this model: cannot convert operator aten::linalg_svd")
    takes = problem.split("engines that take this model: ")[1].split(", ")
    assert takes[:3] == ["eager", "channels_last", "compile"] and "openvino" not in takes


def test_a_user_model_an_engine_cannot_take_fails_its_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the builder: nothing is published, and the message says what to do."""
    import archive_scripts.build as build_module

    def refuse(mar: Path, engine: str, dest: Path) -> list[Path]:
        _, problem = export_or_explain(engine, Unconvertible().eval(), 32, dest)
        raise ExportFailed(f"{mar.stem}: {problem}")

    monkeypatch.setattr(build_module, "export_archive", refuse)
    with pytest.raises(ExportFailed, match=r"resnet18_v1.0: engine onnxruntime cannot take this model: cannot convert "
                       r"operator aten::linalg_svd .*; engines that take this model: eager, channels_last, compile$"):
        build(find_spec("resnet18", engine="onnxruntime"), tmp_path)
    assert not list(tmp_path.glob("*.mar"))


def _tampered(mar: Path, dest: Path) -> Path:
    """``mar`` with its ONNX classifier layer negated: an engine that no longer answers as the fp32 model does."""
    import onnx
    from onnx import numpy_helper

    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "model.onnx":
                model = onnx.load_from_string(data)
                weights = next(t for t in model.graph.initializer if tuple(t.dims)[:1] == (1000,) and len(t.dims) == 2)
                weights.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights), weights.name))
                data = model.SerializeToString()
            out.writestr(info, data)
    return dest


def test_the_gate_refuses_an_engine_that_disagrees_with_the_fp32_eager_twin(tmp_path: Path) -> None:
    spec = find_spec("classifier", engine="onnxruntime")
    store = tmp_path / "store"
    assert build(spec, store) == "built"
    manifest = json.loads((store / "manifest.json").read_text())[spec.archive_name]
    assert manifest["engine"]["name"] == "onnxruntime" and manifest["accelerator"]["engine"] == "onnxruntime"

    failures = run_gate(_tampered(store / spec.archive_name, tmp_path / "tampered.mar"), spec.golden)
    assert failures and any("fp32 says" in f and "engine onnxruntime" in f for f in failures), failures


def test_the_eager_twin_and_the_engine_answer_the_golden_photos_alike(tmp_path: Path) -> None:
    """The archive make up serves: its engine's answers on the golden photos equal eager PyTorch's."""
    spec = find_spec("classifier")
    store = tmp_path / "store"
    build(spec, store)
    with zipfile.ZipFile(store / spec.archive_name) as archive:
        archive.extractall(tmp_path / "model")
    photos = [sample_photo(case.photo) for case in spec.golden]
    served = LocalWorker.from_model_dir(tmp_path / "model").predict(photos)
    eager = LocalWorker.from_model_dir(tmp_path / "model", handler_overrides={"engine": "eager"}).predict(photos)
    for got, want in zip(served, eager):
        assert [p["label"] for p in got.body["predictions"]] == [p["label"] for p in want.body["predictions"]]
        assert np.allclose([p["score"] for p in got.body["predictions"]], [p["score"] for p in want.body["predictions"]],
                           atol=1e-4)


def test_each_spec_runs_the_fastest_engine_that_agreed_in_the_committed_measurement() -> None:
    measured = json.loads(ENGINES_JSON.read_text())
    for spec in SPECS:
        model = measured["models"][spec.name]
        assert set(model["engines"]) == set(ENGINES), f"{spec.name}: measure every engine (python -m benchmarks.engines)"
        assert spec.engine == model["chosen"] == measured["chosen"][spec.name], (
            f"{spec.name}: the spec says {spec.engine}, the measurement chose {model['chosen']}"
        )
        assert model["engines"][spec.engine]["agrees"]


def test_an_old_archive_without_an_engine_key_runs_as_it_always_did() -> None:
    from handlers.batch_handler import HandlerConfig

    assert HandlerConfig.from_yaml({"architecture": "resnet18"}).engine == "channels_last"
    assert HandlerConfig.from_yaml({"architecture": "resnet18", "compile": True}).engine == "compile"
    assert HandlerConfig.from_yaml({"architecture": "resnet18", "engine": "openvino"}).engine == "openvino"
    with pytest.raises(ValueError, match="threads"):
        HandlerConfig.from_yaml({"architecture": "resnet18", "threads": -1})


def test_a_batch_is_decoded_on_every_thread_and_answers_in_order(tmp_path: Path) -> None:
    spec = replace(find_spec("resnet18", engine="eager"), version="3.0")
    build(spec, tmp_path / "store")
    with zipfile.ZipFile(tmp_path / "store" / spec.archive_name) as archive:
        archive.extractall(tmp_path / "model")
    worker = LocalWorker.from_model_dir(tmp_path / "model", handler_overrides={"threads": 2})
    assert set(worker.handler.decoders) == {2} and worker.handler.describe()["threads"] == 2
    photos = [sample_photo(name) for name in ("chelsea", "coffee", "rocket")]
    png = io.BytesIO()
    from PIL import Image

    Image.open(io.BytesIO(photos[0])).save(png, format="PNG")
    batch = [photos[0], b"not an image", photos[1], png.getvalue(), photos[2]]
    answers = worker.predict(batch)
    assert [a.status for a in answers] == [200, 400, 200, 200, 200]
    alone = [worker.predict([p])[0].body["predictions"][0]["label"] for p in (photos[0], photos[1], png.getvalue(), photos[2])]
    assert [a.body["predictions"][0]["label"] for a in answers if a.status == 200] == alone


def test_a_batch_gets_its_share_of_the_cores_among_the_busy_workers(tmp_path: Path) -> None:
    """Two workers on a 2-core box: alone, a batch gets both; while the other is busy, one each."""
    import multiprocessing

    from handlers.box_load import BoxLoad, thread_shares

    assert thread_shares(2) == (2, 1) and thread_shares(4) == (4, 2, 1) and thread_shares(1) == (1,)
    me = BoxLoad(2, str(tmp_path))
    with me.busy() as threads:
        assert threads == 2 and me.others_busy() == 0
    context = multiprocessing.get_context("spawn")
    holding, release = context.Event(), context.Event()
    other = context.Process(target=_hold_busy, args=(str(tmp_path), holding, release))
    other.start()
    try:
        assert holding.wait(60)
        with me.busy() as threads:
            assert threads == 1 and me.others_busy() == 1
    finally:
        release.set()
        other.join(30)
    with me.busy() as threads:  # the other worker is done (and gone): every core again
        assert threads == 2
    BoxLoad(2, str(tmp_path))  # a new worker forgets the dead one's file
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"worker-{os.getpid()}"]


def _hold_busy(directory: str, holding: Any, release: Any) -> None:
    from handlers.box_load import BoxLoad

    with BoxLoad(2, directory).busy():
        holding.set()
        release.wait(60)
