"""A spec's network from torch-model-archiver's own ``model_file`` + ``serialized_file``, or from a TorchScript file."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from archive_scripts.build import OURS, MissingInput, build, fingerprint, network_weights, sha256_file
from archive_scripts.export import export_or_explain
from archive_scripts.golden import GoldenCase, TopLabelIn
from archive_scripts.specs import REPO_ROOT, ArchiveSpec, BuildInputs
from archive_scripts.weights import UnusableWeights
from handlers.engines import EngineUnavailable, cannot_take, load_engine
from handlers.model_architectures import load_model_file

# A small CNN with ImageNet's 1000 outputs (the classifier handler's labels fit), torch-model-archiver's convention:
# one nn.Module subclass, built with no arguments.
MODEL_PY = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))
'''
LABELS = tuple(f"thing {i}" for i in range(1000))


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model.py, its seeded state_dict, a TorchScript of the same network, and an index_to_name.json of our own."""
    folder = tmp_path_factory.mktemp("user-model")
    (folder / "model.py").write_text(MODEL_PY)
    model = load_class(folder / "model.py")
    torch.manual_seed(0)
    network = model().eval()
    torch.save(network.state_dict(), folder / "state_dict.pt")
    torch.jit.save(torch.jit.trace(network, torch.zeros(1, 3, 224, 224)), folder / "scripted.pt")
    (folder / "labels.json").write_text(json.dumps({str(i): name for i, name in enumerate(LABELS)}))
    return {name: folder / name for name in ("model.py", "state_dict.pt", "scripted.pt", "labels.json")}


def load_class(path: Path) -> Any:
    from handlers.model_architectures import model_file_class

    return model_file_class(str(path))


def spec(files: dict[str, Path], source: str, **changes: Any) -> ArchiveSpec:
    """A classifier spec of the tiny network, from ``source`` (model_file or torchscript), cpu flavour."""
    network: dict[str, Any] = (
        {"model_file": files["model.py"], "serialized_file": files["state_dict.pt"]}
        if source == "model_file"
        else {"serialized_file": files["scripted.pt"]}
    )
    declared = ArchiveSpec(
        name="tiny",
        version="1.0",
        handler="classifier_handler.py",
        # Untrained: any label of its own list is right; ImageNet's would mean the labels file was not ours.
        golden=(GoldenCase("chelsea", TopLabelIn(LABELS)), GoldenCase("coffee")),
        labels=str(files["labels.json"]),
        **network,
    )
    return replace(declared, **changes).flavoured("cpu")


@pytest.mark.parametrize("engine", ["eager", "onnxruntime"])
@pytest.mark.parametrize("source", ["model_file", "torchscript"])
def test_a_model_file_or_a_torchscript_builds_and_passes_its_gate(
    user_files: dict[str, Path], source: str, engine: str, tmp_path: Path
) -> None:
    built = spec(user_files, source, engine=engine)
    assert build(built, tmp_path) == "built"  # onnxruntime: exported, then gated against its fp32 eager twin

    entry = json.loads((tmp_path / "manifest.json").read_text())[built.archive_name]
    weights = user_files["state_dict.pt" if source == "model_file" else "scripted.pt"]
    assert entry["weights_sha256"] == sha256_file(weights) and entry["trained"] is True
    assert entry["weights_user_file"] == str(weights) and weights.name in entry["weights_source"]
    assert entry["engine"]["name"] == engine
    with zipfile.ZipFile(tmp_path / built.archive_name) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
        handler = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
        names = set(archive.namelist())
        labels = json.loads(archive.read("index_to_name.json"))
    assert "architecture" not in handler and manifest["serializedFile"] == "weights.pt"
    assert labels["999"] == "thing 999"
    if source == "model_file":  # torch-model-archiver's own --model-file: in the manifest, beside the handler
        assert manifest["modelFile"] == "model.py" and "model.py" in names
        assert entry["model_file_sha256"] == sha256_file(user_files["model.py"])
    else:
        assert "modelFile" not in manifest and "model.py" not in names
    assert build(built, tmp_path) == "up to date"


def test_the_fingerprint_follows_the_model_file_and_the_serialized_file(
    user_files: dict[str, Path], tmp_path: Path
) -> None:
    model_py, weights = tmp_path / "model.py", tmp_path / "weights.pt"
    model_py.write_text(MODEL_PY)
    weights.write_bytes(user_files["state_dict.pt"].read_bytes())
    edited = spec(user_files, "model_file", model_file=model_py, serialized_file=weights)
    before = fingerprint(edited, OURS)
    model_py.write_text(MODEL_PY + "\n# a comment\n")
    after_model = fingerprint(edited, OURS)
    weights.write_bytes(user_files["scripted.pt"].read_bytes())
    assert len({before, after_model, fingerprint(edited, OURS)}) == 3


def test_user_weights_replace_the_serialized_file_and_are_checked(user_files: dict[str, Path], tmp_path: Path) -> None:
    model_file = spec(user_files, "model_file")
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(load_class(user_files["model.py"])().state_dict(), other)
    info = network_weights(model_file, tmp_path / "weights.pt", BuildInputs(weights=other))
    assert sha256_file(info.path) == sha256_file(other) and info.user_file == other.resolve()

    with pytest.raises(UnusableWeights, match=r"does not load into the network of .*model.py .*Missing key"):
        wrong = tmp_path / "wrong.pt"
        torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
        network_weights(model_file, tmp_path / "w2.pt", BuildInputs(weights=wrong))
    with pytest.raises(UnusableWeights, match="is not a TorchScript file .* needs the spec's model_file"):
        network_weights(spec(user_files, "torchscript"), tmp_path / "w3.pt", BuildInputs(weights=other))


def test_a_missing_file_of_the_spec_says_which_and_relative_to_what(user_files: dict[str, Path], tmp_path: Path) -> None:
    missing = spec(user_files, "model_file", serialized_file="models/tiny/nowhere.pt")
    assert missing.serialized_path == REPO_ROOT / "models" / "tiny" / "nowhere.pt"
    with pytest.raises(MissingInput, match=r"nowhere.pt does not exist; write it, or fix .* relative to the repository"):
        build(missing, tmp_path)
    assert not list(tmp_path.glob("*"))


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"architecture": "resnet18", "serialized_file": "x.pt"}, "names more than one network: give exactly one of"),
        ({"architecture": "resnet18", "model_file": "m.py", "serialized_file": "x.pt"}, "more than one network"),
        ({}, "names no network: give exactly one of architecture=NAME"),
        ({"model_file": "m.py"}, "names no network"),
        ({"architecture": "resnet99", "make_weights": lambda d, i: None}, "unknown architecture 'resnet99'"),
        ({"architecture": "resnet18"}, "needs make_weights"),
        ({"serialized_file": "x.pt", "make_weights": lambda d, i: None}, "serialized_file is its weights"),
        ({"model_file": "m.txt", "serialized_file": "x.pt"}, "model_file must be a .py file"),
        ({"model_file": "src/engines.py", "serialized_file": "x.pt"}, "engines.py has the name of one of the archive"),
        ({"serialized_file": "x.pt", "engine": "compile"}, "engine compile cannot take a TorchScript model"),
        ({"name": "my_model", "serialized_file": "x.pt"}, "model name 'my_model' must be a lowercase letter"),
    ],
)
def test_a_spec_with_no_network_or_more_than_one_is_refused(network: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"name": "tiny", "version": "1.0", "handler": "classifier_handler.py", "golden": ()}
    with pytest.raises(ValueError, match=message):
        ArchiveSpec(**{**fields, **network})


def test_a_torchscript_spec_runs_no_compile_in_the_gpu_flavour_and_refuses_it_when_asked() -> None:
    scripted = ArchiveSpec(name="tiny", version="1.0", handler="classifier_handler.py", golden=(), serialized_file="x.pt")
    assert scripted.flavoured("gpu").accelerator.engine == "channels_last"
    with pytest.raises(ValueError, match="engine compile cannot take a TorchScript model"):
        scripted.flavoured("cpu", engine="compile")


def test_compile_refuses_a_torchscript_module_and_the_exporters_take_it(user_files: dict[str, Path], tmp_path: Path) -> None:
    scripted = torch.jit.load(str(user_files["scripted.pt"]))
    eager = load_model_file(str(user_files["model.py"]), str(user_files["state_dict.pt"]))
    assert cannot_take("compile", eager) is None and cannot_take("eager", scripted) is None
    with pytest.raises(EngineUnavailable, match=r"engine compile cannot take a TorchScript model .* model_file"):
        load_engine("compile", scripted, str(tmp_path), torch.device("cpu"), (1,))
    files, problem = export_or_explain("openvino", scripted, 64, tmp_path / "ov")
    assert problem is None and [f.name for f in files] == ["model.xml", "model.bin"]


def test_a_model_file_must_define_one_module_built_with_no_arguments(user_files: dict[str, Path], tmp_path: Path) -> None:
    two = tmp_path / "two.py"
    two.write_text(MODEL_PY + "\n\nclass Other(nn.Module):\n    pass\n")
    with pytest.raises(ValueError, match="exactly one torch.nn.Module subclass .* found Other, TinyNet"):
        load_model_file(str(two), str(user_files["state_dict.pt"]))
    none = tmp_path / "none.py"
    none.write_text("from torch.nn import Linear\n")  # imported, not defined: not its network
    with pytest.raises(ValueError, match="found none"):
        load_model_file(str(none), str(user_files["state_dict.pt"]))
    needs = tmp_path / "needs.py"
    needs.write_text(MODEL_PY.replace("classes: int = 1000", "classes: int"))
    with pytest.raises(ValueError, match="must be constructible with no arguments"):
        load_model_file(str(needs), str(user_files["state_dict.pt"]))
