"""The archive pipeline: reproducible builds, the golden gate, the manifest, versions side by side."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from archive_scripts.build import GateFailed, build, sha256_file
from archive_scripts.export import ExportFailed
from archive_scripts.golden import GoldenCase, TopLabelIn
from archive_scripts.specs import BuildInputs, find_spec
from handlers.engines import EXPORTED_FILES
from stack import models

RESNET = find_spec("resnet18")


def store_state(store: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(store.iterdir()) if p.is_file()}


def test_same_inputs_give_byte_identical_archives(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert build(RESNET, first) == "built"
    assert build(RESNET, second) == "built"
    name = RESNET.archive_name
    assert sha256_file(first / name) == sha256_file(second / name)
    manifest = json.loads((first / "manifest.json").read_text())[name]
    assert manifest["sha256"] == sha256_file(first / name)
    assert manifest["model"] == "resnet18" and manifest["version"] == RESNET.version
    assert set(manifest["packages"]) == {
        "torch", "torchvision", "torchserve", "torch-model-archiver", "onnx", "onnxruntime", "openvino"
    }
    engine = RESNET.accelerator.engine
    assert manifest["engine"]["name"] == engine and manifest["engine"]["version"]
    assert {"classifier_handler.py", "batch_handler.py", "image_decoding.py"} <= set(manifest["handler_sha256"])
    assert manifest["trained"] is False and "UNTRAINED" in manifest["weights_source"]
    with zipfile.ZipFile(first / name) as archive:
        config = archive.read("model-config.yaml").decode()
        assert "trained: false" in config
        assert {"MAR-INF/MANIFEST.json", "weights.pt", "index_to_name.json", *EXPORTED_FILES.get(engine, ())} <= set(
            archive.namelist()
        )
        assert f"engine: {engine}" in config

    assert build(RESNET, first) == "up to date"


def test_gate_rejects_a_wrong_answer_and_publishes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    build(RESNET, store)
    before = store_state(store)
    broken = replace(RESNET, version="9.9", golden=(GoldenCase("chelsea", TopLabelIn(("no such label",))),))

    with pytest.raises(GateFailed, match="top-1 .* expected one of"):
        build(broken, store)
    assert store_state(store) == before


def test_gate_rejects_an_archive_whose_handler_cannot_load(tmp_path: Path) -> None:
    store = tmp_path / "store"
    bad_config = replace(RESNET, version="9.8", handler_options={"no_such_key": 1})

    # an exported engine finds it first: exporting loads the archive's handler
    with pytest.raises((GateFailed, ExportFailed), match="unknown keys"):
        build(bad_config, store)
    assert not any(store.glob("*.mar")) and not (store / "manifest.json").exists()


def test_versions_sit_side_by_side_and_user_weights_plug_in(tmp_path: Path) -> None:
    store = tmp_path / "store"
    torch.manual_seed(123)
    from torchvision.models import resnet18

    user_weights = tmp_path / "my_resnet18.pt"
    torch.save(resnet18(num_classes=1000).state_dict(), user_weights)

    build(RESNET, store)
    build(find_spec("resnet18", "2.0"), store, BuildInputs(weights=user_weights))

    manifest = json.loads((store / "manifest.json").read_text())
    assert set(manifest) == {"resnet18_v1.0.mar", "resnet18_v2.0.mar"}
    v2 = manifest["resnet18_v2.0.mar"]
    assert v2["version"] == "2.0" and v2["weights_sha256"] == sha256_file(user_weights)
    assert v2["trained"] is True and "my_resnet18.pt" in v2["weights_source"]
    with zipfile.ZipFile(store / "resnet18_v2.0.mar") as archive:
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "2.0"


def test_user_weights_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(RuntimeError, match="state_dict"):
        build(RESNET, tmp_path / "store", BuildInputs(weights=wrong))
    assert not (tmp_path / "store" / RESNET.archive_name).exists()


def test_price_spec_preprocesses_as_its_head_was_trained() -> None:
    from archive_scripts import price_model

    config = find_spec("price").handler_config
    tensor = price_model.LITE0_INPUT  # what demo_views feeds the backbone the head is trained on
    assert (config["resize"], config["crop"]) == (tensor.resize, tensor.crop)
    assert tuple(config["mean"]) == tensor.mean and tuple(config["std"]) == tensor.std


def test_similar_spec_preprocesses_as_its_catalogue_was_embedded() -> None:
    from archive_scripts import catalogue

    config = find_spec("similar").handler_config
    tensor = catalogue.LITE0_INPUT  # what embed() feeds the backbone
    assert (config["resize"], config["crop"]) == (tensor.resize, tensor.crop)
    assert tuple(config["mean"]) == tensor.mean and tuple(config["std"]) == tensor.std


def test_the_feature_size_constant_is_the_backbones() -> None:
    from archive_scripts.weights import LITE0_FEATURES, LITE0_INPUT
    from handlers.model_architectures import ImageEmbedder, build_model
    from handlers.price_head import EMBEDDING_DIM

    with torch.inference_mode():
        embedder = ImageEmbedder(build_model("efficientnet_lite0")).eval()
        features = embedder(torch.zeros(1, 3, LITE0_INPUT.crop, LITE0_INPUT.crop)).shape[1]
    assert features == LITE0_FEATURES == EMBEDDING_DIM  # the price handler's own default (shipped in its archive)


def test_specs_declare_only_what_differs_from_the_defaults() -> None:
    from archive_scripts.specs import SPECS, Workers

    # model-config.yaml keys come out in the order TorchServe's and our own archives have always had them.
    preprocessing = ["resize", "crop", "mean", "std"]
    for spec in SPECS:
        assert list(spec.model_config) == ["minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"]
        assert next(iter(spec.handler_config)) == "threads"
        assert [key for key in spec.handler_config if key in preprocessing] == preprocessing
    assert all(spec.workers == Workers() for spec in SPECS)  # one worker on every core the box has, batches of 8
    assert "topk" not in find_spec("price").handler_config
    assert [s.name for s in SPECS if s.accepts_catalogue] == ["similar"]


def test_every_spec_has_golden_cases_and_a_unique_archive_name() -> None:
    from archive_scripts.specs import SPECS

    assert [s.name for s in SPECS] == list(models.names()), "the catalogue is current (deploy_config)"
    assert all(spec.golden for spec in SPECS)
    assert len({s.archive_name for s in SPECS}) == len(SPECS)


def test_flavours_write_precision_and_engine_into_the_handler_section() -> None:
    from archive_scripts.specs import SPECS, Accelerator

    for spec in SPECS:
        cpu, gpu = find_spec(spec.name), find_spec(spec.name, flavour="gpu")
        assert cpu.accelerator == Accelerator(engine=spec.engine)
        assert (cpu.handler_config["precision"], cpu.handler_config["engine"]) == ("fp32", spec.engine)
        assert (gpu.handler_config["precision"], gpu.handler_config["engine"]) == (spec.gpu.precision, spec.gpu.engine)
        assert "startupTimeout" not in cpu.model_config
        assert ("startupTimeout" in gpu.model_config) == (spec.gpu.engine == "compile")
        assert find_spec(spec.name, engine="eager").handler_config["engine"] == "eager"
    with pytest.raises(KeyError, match="flavour"):
        find_spec("resnet18", flavour="tpu")
    with pytest.raises(ValueError, match="engine must be one of"):
        find_spec("resnet18", engine="tensorrt")


def test_reduced_precision_archive_is_gated_against_its_fp32_twin(tmp_path: Path) -> None:
    from archive_scripts.specs import Accelerator

    bf16 = replace(RESNET, version="7.0", accelerator=Accelerator(precision="bf16"))
    assert build(bf16, tmp_path) == "built"
    manifest = json.loads((tmp_path / "manifest.json").read_text())[bf16.archive_name]
    assert manifest["accelerator"] == {"precision": "bf16", "engine": "eager"}
    with zipfile.ZipFile(tmp_path / bf16.archive_name) as archive:
        assert "precision: bf16" in archive.read("model-config.yaml").decode()
        assert "device_preprocess.py" in archive.namelist()
