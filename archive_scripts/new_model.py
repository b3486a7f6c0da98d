"""``python -m archive_scripts new NAME --like classifier|price|similar|json``: start a model of your own.

Writes ``archive_scripts/models/NAME.py``, a spec (``SPEC = ArchiveSpec(...)``, found by archive_scripts.specs)
modelled on one of our kinds of answer, whose TODO comments say what to fill in. ``--like json``, a new kind of
answer, also writes ``handlers/NAME_handler.py``: a handler answering each row of the model's output as numbers.
As written, every spec builds and passes its gate (on seeded or pretrained weights, and demo extras).

NAME is the model's one name everywhere (specs.MODEL_NAME): TorchServe's, its files', the bridge's routes, its
Kubernetes and KServe objects. Only lowercase letters and digits are valid in all of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from string import Template

from archive_scripts.specs import MODEL_NAME, REPO_ROOT, SPECS, YOUR_SPECS_DIR

KINDS = ("classifier", "price", "similar", "json")
RESERVED = frozenset({"new"})  # `python -m archive_scripts new` is this command, not a build of a model "new"

HEADER = '''"""$name: $what.

Written by `python -m archive_scripts new $name --like $like`; yours to edit. Fill in each TODO, then build it and
gate it on its golden photos: `python -m archive_scripts $name` (docs/adding-a-model.md). As written it builds and
passes its gate$as_written.
"""

from __future__ import annotations
'''

NETWORK = '''    # TODO the network: exactly one of (paths relative to the repository root, or absolute)
    #   architecture="resnet18" + make_weights: a name in handlers/model_architectures.py ARCHITECTURES and its
    #     default weights, here an UNTRAINED seeded init;
    #   model_file="models/$name/model.py", serialized_file="models/$name/weights.pt": torch-model-archiver's own
    #     convention, a .py file defining one torch.nn.Module subclass built with no arguments, and its state_dict;
    #   serialized_file="models/$name/model.pt" alone: a TorchScript file (torch.jit.save of a traced or scripted model).
    # `python -m archive_scripts $name --weights $name=PATH` replaces the weights for one build: a state_dict for the
    # architecture or the model file's class, or a TorchScript file.
'''

PREPROCESS = '''    # TODO preprocessing: the input your weights were trained on. Default: resize 256, crop 224, ImageNet's mean and
    # std; inputs in [-1, 1] are preprocess=TensorSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    # (from handlers.image_decoding import TensorSpec).
'''

GOLDEN = '''    # TODO golden photos: bundled ones (archive_scripts/photos.py: chelsea (a cat), coffee, rocket, astronaut, china,
    # flower), each with what a correct model answers (archive_scripts/golden.py). Nothing is published unless the
    # built archive answers them all; with `--weights` only the answer's form is checked.
'''

CLASSIFIER = (
    HEADER
    + '''
from archive_scripts import weights
from archive_scripts.golden import GoldenCase, TopLabelIn
from archive_scripts.specs import ArchiveSpec, Serving

SPEC = ArchiveSpec(
    name="$name",
    version="1.0",
    handler="classifier_handler.py",  # top-k labels with their scores (handlers/classifier_handler.py)
'''
    + NETWORK
    + '''    architecture="resnet18",
    make_weights=lambda dest, inputs: weights.seeded_init("resnet18", dest, seed=0),
'''
    + PREPROCESS
    + '''    # TODO labels: output i is named by entry i of an index_to_name.json ({"0": "name", ...}): labels="imagenet"
    # (ImageNet's 1000 classes), or yours, e.g. labels="models/$name/index_to_name.json".
    labels="imagenet",
    topk=5,
'''
    + GOLDEN
    + '''    # TopLabelIn() checks the answer's form only (an untrained model passes); once yours is trained, name the labels
    # it must answer, e.g. GoldenCase("chelsea", TopLabelIn(("tabby", "tiger cat", "Egyptian cat"))).
    golden=(GoldenCase("chelsea", TopLabelIn()), GoldenCase("coffee", TopLabelIn())),
    engine="onnxruntime",  # how the forward runs (docs/engines.md): eager, channels_last, onnxruntime or openvino
    description="$name: top-5 labels (TODO: say what it classifies; an UNTRAINED ResNet-18 until your weights)",
    serving=Serving(),  # one box; Serving(in_jobs=True) also runs it in jobs that name no models
)
'''
)

PRICE = (
    HEADER
    + '''
from pathlib import Path

from archive_scripts import price_model, weights
from archive_scripts.golden import GoldenCase, PriceWithin
from archive_scripts.specs import SHARED_MODULES, ArchiveSpec, BuildInputs, Extras, Serving
from archive_scripts.weights import LITE0_INPUT, WeightsInfo

HEAD_FILE = "price_head.pt"
CURRENCY = price_model.CURRENCY  # TODO the currency your head answers in (the demo head's prices are in EUR)


def backbone(dest: Path, inputs: BuildInputs) -> WeightsInfo:
    """The pretrained EfficientNet-Lite0 whose embedding the head reads (`--weights $name=PATH` is the head's)."""
    return weights.efficientnet_lite0_imagenet(dest)


def price_head(workdir: Path, inputs: BuildInputs) -> Extras:
    """The head: yours (`--weights $name=PATH`, a price_head.pt, validated), or the DEMO head trained here."""
    info = price_model.build_price_head(workdir / HEAD_FILE, inputs.weights, currency=CURRENCY)
    return Extras(files=(info.path,), metadata={"price_head": info.source, "price_head_trained_on": info.trained_on})


SPEC = ArchiveSpec(
    name="$name",
    version="1.0",
    handler="price_handler.py",  # a price, its currency and an interval (handlers/price_handler.py)
    # The network is the pretrained backbone, its embedding fed to the price head: the head is what you give,
    # `python -m archive_scripts $name --weights $name=PATH` (archive_scripts/price_model.py writes and checks one).
    architecture="efficientnet_lite0",
    make_weights=backbone,
    preprocess=LITE0_INPUT,  # what the backbone was trained on, and the demo head too
    topk=None,
    handler_options={"price_head_file": HEAD_FILE, "currency": CURRENCY, "interval": price_model.COVERAGE},
    modules=(*SHARED_MODULES, "price_head.py"),
    labels=None,
    make_extras=price_head,
    user_weights="its price head; the backbone stays the pretrained one",
'''
    + GOLDEN
    + '''    # The demo head answers coffee ~11.9, chelsea ~86, flower ~8.2 EUR: bounds your head must meet replace these.
    golden=(
        GoldenCase("coffee", PriceWithin(8.0, 18.0)),
        GoldenCase("chelsea", PriceWithin(45.0, 180.0)),
        GoldenCase("flower", PriceWithin(5.0, 13.5)),
    ),
    engine="onnxruntime",  # how the forward runs (docs/engines.md): eager, channels_last, onnxruntime or openvino
    description="$name: a price with its 80% interval (TODO: whose prices; the DEMO head until yours)",
    serving=Serving(),  # one box; Serving(in_jobs=True) also runs it in jobs that name no models
)
'''
)

SIMILAR = (
    HEADER
    + '''
from pathlib import Path

from archive_scripts import catalogue, weights
from archive_scripts.golden import GoldenCase, NearestItemIs
from archive_scripts.specs import SHARED_MODULES, ArchiveSpec, BuildInputs, Extras, Serving
from archive_scripts.weights import LITE0_FEATURES, LITE0_INPUT


def catalogue_index(workdir: Path, inputs: BuildInputs) -> Extras:
    """The catalogue's index, embedded with this archive's weights: yours (`--catalogue PATH`) or the DEMO one."""
    info = catalogue.archive_index(workdir, inputs.catalogue)
    return Extras(files=(info.path,), metadata=info.summary())


SPEC = ArchiveSpec(
    name="$name",
    version="1.0",
    handler="similar_handler.py",  # the k nearest catalogue items (handlers/similar_handler.py)
    # The network embeds photos and the catalogue alike: EfficientNet-Lite0's features (its extract_features(); a
    # network of your own needs one too). `--weights $name=PATH`: a state_dict for it; `--catalogue PATH`: your
    # catalogue, a folder of images (id = file name) or an .npz/.pt of ids + embeddings.
    architecture="efficientnet_lite0",
    make_weights=lambda dest, inputs: weights.efficientnet_lite0_imagenet(dest),
    preprocess=LITE0_INPUT,  # what the weights were trained on; the catalogue is embedded with it too
    handler_options={"index_file": catalogue.INDEX_FILE, "max_k": 50, "embedding_dim": LITE0_FEATURES},
    modules=(*SHARED_MODULES, "similarity_index.py"),
    labels=None,
    make_extras=catalogue_index,
    accepts_catalogue=True,
'''
    + GOLDEN
    + '''    # The demo catalogue holds each golden photo (id "<photo>-01"); with yours, name items your photos must find.
    golden=(
        GoldenCase("coffee", NearestItemIs("coffee-01", max_distance=0.01)),
        GoldenCase("chelsea", NearestItemIs("chelsea-01", max_distance=0.01), params=(("k", "3"),)),
    ),
    engine="onnxruntime",  # how the forward runs (docs/engines.md): eager, channels_last, onnxruntime or openvino
    description="$name: the k nearest catalogue items (TODO: which catalogue; the DEMO one until yours)",
    serving=Serving(),  # one box; Serving(in_jobs=True) also runs it in jobs that name no models
)
'''
)

JSON_SPEC = (
    HEADER
    + '''
import math
from dataclasses import dataclass
from typing import Any

from archive_scripts import weights
from archive_scripts.golden import GoldenCase
from archive_scripts.specs import ArchiveSpec, Serving


@dataclass(frozen=True)
class HasOutputs:
    """TODO what a correct answer is (an Expectation, as in archive_scripts/golden.py): here, finite numbers."""

    def failure(self, body: dict[str, Any]) -> str | None:
        """What is wrong with an answer, or None."""
        outputs = body.get("outputs")
        if not isinstance(outputs, list) or not outputs:
            return f"no list of outputs in {str(body)[:200]}"
        if not all(isinstance(value, (int, float)) and math.isfinite(value) for value in outputs):
            return f"outputs are not all finite numbers: {str(outputs)[:200]}"
        return None

    def relaxed(self) -> HasOutputs:
        """The check on the answer's form only (a build with `--weights`): this one checks nothing more."""
        return self

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        """An engine's (or reduced precision's) answer against the fp32 eager twin's: within 1% of its largest."""
        got, want = body["outputs"], fp32["outputs"]
        tolerance = 0.01 * max(abs(value) for value in want) + 1e-6
        worst = max((abs(a - b) for a, b in zip(got, want)), default=0.0)
        if len(got) != len(want) or worst > tolerance:
            return f"{len(got)} outputs differ from fp32's {len(want)} by up to {worst:.3g} (tolerance {tolerance:.3g})"
        return None


SPEC = ArchiveSpec(
    name="$name",
    version="1.0",
    handler="${name}_handler.py",  # your kind of answer (handlers/${name}_handler.py)
'''
    + NETWORK
    + '''    architecture="resnet18",
    make_weights=lambda dest, inputs: weights.seeded_init("resnet18", dest, seed=0),
'''
    + PREPROCESS
    + '''    labels=None,  # no class names; "imagenet" or an index_to_name.json if your handler names its outputs
    topk=None,  # the handler has no top-k; handler_options={...} for keys of its own config_keys
'''
    + GOLDEN
    + '''    golden=(GoldenCase("chelsea", HasOutputs()), GoldenCase("coffee", HasOutputs())),
    engine="onnxruntime",  # how the forward runs (docs/engines.md): eager, channels_last, onnxruntime or openvino
    description="$name: TODO what it answers (an UNTRAINED ResNet-18's 1000 outputs until your network)",
    serving=Serving(),  # one box; Serving(in_jobs=True) also runs it in jobs that name no models
)
'''
)

JSON_HANDLER = '''"""$name: each photo's answer from the model's output.

Written by `python -m archive_scripts new $name --like json`; yours to edit. The base class (batch_handler.py)
decodes, preprocesses, batches and answers every bad photo with its own 4xx; this class turns a batch of outputs
into one JSON-able dict per photo. Define no other class in this file: the worker loads the only one it finds.
"""

from __future__ import annotations

from typing import Any

import torch
from batch_handler import JSON_ANSWER, BatchImageHandler


class ${class_name}Handler(BatchImageHandler):
    """Answers ``{"outputs": [float, ...]}`` for each image: its row of the model's output."""

    kind = "$name"  # the kind of answer: the catalogue (stack/models.json) and the bridge know models by it
    # Over the Open Inference Protocol (/v2), one JSON text per photo. Typed tensors instead: one OipOutput (from
    # batch_handler) per value of the answer, e.g. (OipOutput("outputs", "FP32", "outputs", -1),): FP32 numbers at
    # "outputs", -1 of them (as many as there are; a number if fixed). batch_handler.OipOutput says what paths take.
    oip_outputs = JSON_ANSWER
    # config_keys = ("my_key",): handler keys of your own (the spec's handler_options), in self.config.extra.
    # param_names = ("my_param",) and item_params(row): request parameters (handlers/similar_handler.py reads k).

    def postprocess_batch(self, outputs: torch.Tensor, params: list[Any]) -> list[dict[str, Any]]:
        """TODO your answer: here each row of the model's output as numbers (``params``: from item_params)."""
        return [{"outputs": [round(value, 6) for value in row]} for row in outputs.tolist()]
'''

TEMPLATES = {
    "classifier": (CLASSIFIER, "an image classifier (top-k labels)", " on an UNTRAINED seeded ResNet-18"),
    "price": (PRICE, "a price with its interval", " on the pretrained backbone and the DEMO price head"),
    "similar": (SIMILAR, "the k nearest catalogue items", " on pretrained EfficientNet-Lite0 and the DEMO catalogue"),
    "json": (JSON_SPEC, "a new kind of answer, its own handler", " on an UNTRAINED seeded ResNet-18"),
}


class Refused(ValueError):
    """The name cannot be used; the message says why and what to do."""


def spec_path(name: str) -> Path:
    """Where the spec of a model of yours lives."""
    return YOUR_SPECS_DIR / f"{name}.py"


def handler_path(name: str) -> Path:
    """Where the handler of a new kind of answer lives."""
    return REPO_ROOT / "handlers" / f"{name}_handler.py"


def check_name(name: str) -> None:
    """Refuse a name that is not valid everywhere it is used, or that is taken."""
    if not MODEL_NAME.fullmatch(name):
        suggestion = "".join(c for c in name.lower() if c.isalnum())
        raise Refused(
            f"{name!r} cannot name a model: use a lowercase letter then lowercase letters or digits, at most 40 (it is "
            "the TorchServe model, its Python files and its Kubernetes objects: Python names allow no '-', "
            "Kubernetes names no '_')" + (f", e.g. {suggestion!r}" if MODEL_NAME.fullmatch(suggestion) else "")
        )
    if name in RESERVED:
        raise Refused(f"{name!r} is a command of `python -m archive_scripts`; choose another name")
    for spec in SPECS:
        if spec.name == name:
            where = spec.spec_file.relative_to(REPO_ROOT) if spec.spec_file else "archive_scripts/specs.py"
            raise Refused(f"a model named {name!r} exists already ({where}); choose another name")
    for path in (spec_path(name), handler_path(name)):
        if path.exists():
            raise Refused(f"{path.relative_to(REPO_ROOT)} exists already; choose another name, or edit that file")


def write(name: str, like: str) -> list[Path]:
    """Write the spec (and, for a new kind of answer, the handler) of model ``name``; the files written."""
    check_name(name)
    template, what, as_written = TEMPLATES[like]
    values = {"name": name, "like": like, "what": what, "as_written": as_written, "class_name": name.capitalize()}
    files = [(spec_path(name), Template(template).substitute(values))]
    if like == "json":
        files.append((handler_path(name), Template(JSON_HANDLER).substitute(values)))
    for path, text in files:
        with open(path, "x", encoding="utf-8") as f:  # never over a file that appeared meanwhile
            f.write(text)
    return [path for path, _ in files]


def next_steps(name: str, written: list[Path]) -> str:
    """What to do after ``new``."""
    edit = " and ".join(str(path.relative_to(REPO_ROOT)) for path in written)
    answer = ", the answer" if len(written) > 1 else ""
    steps = (
        (f"edit {edit}", f"each TODO (the network and its weights, preprocessing, golden photos{answer})"),
        (f".venv/bin/python -m archive_scripts {name}", f"build and gate it (--weights {name}=PATH: your weights)"),
        (".venv/bin/python -m archive_scripts.deploy_config",
         "the catalogue, config.properties, compose, Kubernetes, KServe and README, with it"),
        ("make up", "serve it"),
    )
    width = max(len(command) for command, _ in steps)
    lines = [f"  {number}. {command:{width}}  # {why}" for number, (command, why) in enumerate(steps, 1)]
    return "\n".join([f"Wrote {edit}.", "Next:", *lines])


def main(argv: list[str]) -> int:
    """The ``new`` command."""
    parser = argparse.ArgumentParser(
        prog="python -m archive_scripts new",
        description="Start a model of your own: its spec in archive_scripts/models/ (and, for a new kind of answer, "
        "its handler), to fill in, build and gate.",
    )
    parser.add_argument("name", help="the model's name: lowercase letters and digits, starting with a letter")
    parser.add_argument(
        "--like", choices=KINDS, required=True,
        help="the kind of answer: classifier (top-k labels), price, similar (nearest catalogue items), "
        "or json (a new kind: writes its handler too)",
    )
    args = parser.parse_args(argv)
    try:
        written = write(args.name, args.like)
    except Refused as exc:
        print(exc, file=sys.stderr)
        return 2
    print(next_steps(args.name, written))
    return 0
