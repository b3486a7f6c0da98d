"""The archives we build, declared: handler, code, weights, preprocessing, worker settings, golden inputs.

One spec per model is the one place its settings live: model-config.yaml is written from it, and the deploy
configs that repeat its worker settings are generated from it (archive_scripts.deploy_config).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archive_scripts import catalogue, price_model, weights
from archive_scripts.golden import GoldenCase, NearestItemIs, PriceWithin, TopLabelIn
from archive_scripts.weights import LITE0_FEATURES, LITE0_INPUT, WeightsInfo, input_config
from handlers.engines import check_engine
from handlers.image_decoding import TensorSpec
from handlers.model_architectures import ARCHITECTURES

# Handler modules every image archive carries (imported by bare name inside the worker).
SHARED_MODULES = (
    "batch_handler.py", "box_load.py", "image_decoding.py", "device_preprocess.py", "engines.py", "model_architectures.py",
)
PRICE_HEAD_FILE = "price_head.pt"
REPO_ROOT = Path(__file__).resolve().parent.parent  # a spec's model_file and serialized_file are relative to it
# A model's name is its TorchServe name, its archive's file name, its spec module and handler file (Python names: no
# '-') and its Kubernetes and KServe names (DNS labels: no '_', at most 63 characters with their prefixes).
MODEL_NAME = re.compile(r"[a-z][a-z0-9]{0,39}")
IMAGENET_INPUT = TensorSpec()  # resize 256, crop 224, ImageNet's mean and std: the handler's defaults too

CAT_LABELS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


@dataclass(frozen=True)
class Workers:
    """How TorchServe runs a model (model-config.yaml's top level) and each worker's threads.

    The defaults adapt to the load (docs/engines.md, measured with benchmarks.throughput on 2 cores): two workers,
    each batch run on its share of the box's cores among the workers busy at that moment (handlers/box_load.py).
    A lone photo gets every core; 8 in flight fill both workers with batches of 4 on one core each, the best
    in-process layout at that load. The exported engines gain nothing from batches on one thread, so the delay
    that fills them is 1 ms (10 ms added 10 ms to a lone photo; TorchServe 0.12 treats 0 as about 100 ms).
    """

    min_workers: int = 2
    max_workers: int = 2
    batch_size: int = 4
    max_batch_delay_ms: int = 1
    response_timeout_s: int = 30
    # The most threads a worker uses (its engine's and its decoding's); 0: every core the worker may use (its CPU
    # affinity, capped by its container's CPU limit). Each batch gets its share among the busy workers.
    threads: int = 0

    def model_config(self) -> dict[str, int]:
        """The top-level keys of model-config.yaml (and of a TorchServe model snapshot entry)."""
        return {
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
        }


@dataclass(frozen=True)
class Serving:
    """Where the stack runs a model beside its archive: boxes, jobs, profile (the catalogue, stack/models.json).

    Every spec's archive is loaded at start by the local stack (config.properties load_models) and gets a box of
    its own in the container topology and in Kubernetes (archive_scripts.deploy_config writes them).
    """

    boxes: int = 1  # model-server boxes in deploy/compose.yaml (replicas of the same archive, the bridge spreads)
    in_jobs: bool = False  # run by a job that names no models (BRIDGE_JOB_MODELS' default)
    benchmark_only: bool = False  # compose profile `benchmark`, deploy/k8s/overlays/benchmark; not in the base

    def __post_init__(self) -> None:
        if self.boxes < 1:
            raise ValueError(f"a model needs at least one box, got boxes={self.boxes}")


@dataclass(frozen=True)
class Accelerator:
    """How the forward pass runs (model-config.yaml's handler section): autocast precision and engine.

    The cpu flavour (the default) writes fp32 and the spec's ``engine``; the ``gpu`` flavour
    (``python -m archive_scripts --flavour gpu``) writes each spec's ``gpu`` setting instead. Anything but fp32
    eager makes the golden gate also check that the answers agree with the fp32 eager twin (archive_scripts.gate).
    """

    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast)
    engine: str = "eager"  # handlers/engines.py: eager | channels_last | compile | onnxruntime | openvino

    def __post_init__(self) -> None:
        check_engine(self.engine)

    def handler_config(self) -> dict[str, Any]:
        """The handler-section keys."""
        return {"precision": self.precision, "engine": self.engine}


FLAVOURS = ("cpu", "gpu")
GPU_DEFAULT = Accelerator(precision="fp16", engine="compile")
GPU_TORCHSCRIPT = Accelerator(precision="fp16", engine="channels_last")  # the default for TorchScript: no compile
# TorchServe's per-model worker start-up limit (model-config.yaml startupTimeout) when the model is compiled:
# several workers compiling at once on a pod's few CPU cores take minutes, not TorchServe's default 120 s.
COMPILE_STARTUP_TIMEOUT_S = 600


@dataclass(frozen=True)
class BuildInputs:
    """What a user supplies for one build: their weights, their catalogue (each optional)."""

    weights: Path | None = None
    catalogue: Path | None = None


@dataclass(frozen=True)
class Extras:
    """Extra files a spec adds to its archive, and what to say about them in metadata and manifest."""

    files: tuple[Path, ...]
    metadata: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ArchiveSpec:
    """Everything that goes into one ``.mar``; the defaults are what most models use.

    The network comes from exactly one of: ``architecture`` (a name in handlers/model_architectures.py, with
    ``make_weights`` its default state_dict); ``model_file`` + ``serialized_file`` (torch-model-archiver's own: a .py
    file defining one ``nn.Module`` subclass built with no arguments, and its state_dict); ``serialized_file`` alone
    (a TorchScript file, ``torch.jit.save``). Paths are relative to the repository root, or absolute. ``--weights
    NAME=PATH`` replaces the weights for one build: a state_dict for the architecture or model file, or a TorchScript
    file (unless ``user_weights`` says they are something else).
    """

    name: str
    version: str
    handler: str
    golden: tuple[GoldenCase, ...]
    architecture: str = ""
    make_weights: Callable[[Path, BuildInputs], WeightsInfo] | None = None
    model_file: Path | str | None = None
    serialized_file: Path | str | None = None
    # The cpu flavour's engine (docs/engines.md). Our specs name the fastest that agreed with eager PyTorch in the
    # committed measurement benchmarks/results/engines.json (`make bench-engines`; a unit test holds them equal).
    engine: str = "onnxruntime"
    workers: Workers = Workers()
    serving: Serving = Serving()
    accelerator: Accelerator = Accelerator()  # what this build writes (see flavoured())
    gpu: Accelerator = GPU_DEFAULT  # the gpu flavour's setting (by default GPU_TORCHSCRIPT for a TorchScript file)
    preprocess: TensorSpec = IMAGENET_INPUT
    topk: int | None = 5  # None: the handler has no top-k (the key is left out of model-config.yaml)
    handler_options: dict[str, Any] = field(default_factory=dict)  # keys of the handler's own config_keys
    modules: tuple[str, ...] = SHARED_MODULES
    # The class names the handler reads (index_to_name.json, {"0": "name", ...}): "imagenet" (ImageNet-1k's), the
    # path of your own index_to_name.json (relative to the repository root, or absolute), or None for none.
    labels: str | None = "imagenet"
    description: str = ""
    make_extras: Callable[[Path, BuildInputs], Extras] | None = None
    user_weights: str = ""  # what `--weights NAME=PATH` gives when not a state_dict for the architecture
    accepts_catalogue: bool = False  # whether `--catalogue PATH` feeds this spec's make_extras
    spec_file: Path | None = None  # the module declaring a spec of archive_scripts/models/ (in the build's fingerprint)

    def __post_init__(self) -> None:
        if not MODEL_NAME.fullmatch(self.name):
            raise ValueError(
                f"model name {self.name!r} must be a lowercase letter then lowercase letters or digits, at most 40 "
                "(it names the TorchServe model, its files, and its Kubernetes objects, where '_' is not allowed)"
            )
        self._check_network()
        if self.torchscript and "compile" in (self.engine, self.accelerator.engine):
            raise ValueError(
                f"spec {self.name}: engine compile cannot take a TorchScript model (torch.compile does not compile "
                "torch.jit modules): choose eager, channels_last, onnxruntime or openvino, or give model_file + "
                "serialized_file (its Python class and state_dict) instead of the TorchScript file"
            )

    def _check_network(self) -> None:
        """Exactly one source of the network, each with its weights; a ValueError saying what to give otherwise."""
        sources = (
            "architecture=NAME (handlers/model_architectures.py) with make_weights, model_file= + serialized_file= "
            "(torch-model-archiver's convention), or serialized_file= alone (a TorchScript file)"
        )
        given = self.serialized_file is not None
        if self.architecture and (self.model_file is not None or given):
            raise ValueError(f"spec {self.name} names more than one network: give exactly one of {sources}")
        if self.architecture:
            if self.architecture not in ARCHITECTURES:
                known = ", ".join(sorted(ARCHITECTURES))
                raise ValueError(
                    f"spec {self.name}: unknown architecture {self.architecture!r} (known: {known}); add it to "
                    "handlers/model_architectures.py ARCHITECTURES, or give model_file + serialized_file instead"
                )
            if self.make_weights is None:
                raise ValueError(
                    f"spec {self.name} needs make_weights: the architecture's default weights, built when no "
                    f"`--weights {self.name}=PATH` is given (e.g. lambda dest, inputs: weights.seeded_init(...))"
                )
            return
        if not given:
            raise ValueError(f"spec {self.name} names no network: give exactly one of {sources}")
        if self.make_weights is not None:
            raise ValueError(f"spec {self.name}: serialized_file is its weights; drop make_weights")
        if self.model_file is not None:
            name = Path(self.model_file).name
            if not name.endswith(".py"):
                raise ValueError(f"spec {self.name}: model_file must be a .py file, got {self.model_file}")
            if name in (self.handler, *self.modules):
                raise ValueError(
                    f"spec {self.name}: model_file {name} has the name of one of the archive's handler files "
                    "(an archive is one flat folder): rename it"
                )

    @property
    def model_path(self) -> Path | None:
        """The absolute path of ``model_file``, if the spec gives one."""
        return None if self.model_file is None else REPO_ROOT / self.model_file

    @property
    def serialized_path(self) -> Path | None:
        """The absolute path of ``serialized_file``, if the spec gives one."""
        return None if self.serialized_file is None else REPO_ROOT / self.serialized_file

    @property
    def labels_path(self) -> Path | None:
        """The absolute path of the spec's own labels file, if it gives one (not ImageNet's)."""
        return None if self.labels in (None, "imagenet") else REPO_ROOT / str(self.labels)

    @property
    def torchscript(self) -> bool:
        """Whether the network is a TorchScript file (``serialized_file`` alone)."""
        return self.serialized_file is not None and self.model_file is None

    @property
    def archive_name(self) -> str:
        """File name in the model store: one file per version, so versions sit side by side."""
        return f"{self.name}_v{self.version}.mar"

    @property
    def model_config(self) -> dict[str, int]:
        """model-config.yaml's top-level keys: TorchServe's worker and batching settings."""
        if self.accelerator.engine == "compile":  # compiling and warming up before the worker is ready takes minutes
            return {**self.workers.model_config(), "startupTimeout": COMPILE_STARTUP_TIMEOUT_S}
        return self.workers.model_config()

    @property
    def handler_config(self) -> dict[str, Any]:
        """model-config.yaml's handler section, less the architecture."""
        topk = {} if self.topk is None else {"topk": self.topk}
        return {
            "threads": self.workers.threads,
            **topk,
            **input_config(self.preprocess),
            **self.accelerator.handler_config(),
            **self.handler_options,
        }

    def flavoured(self, flavour: str, engine: str | None = None) -> ArchiveSpec:
        """This spec as the ``cpu`` (fp32, the spec's engine: the default) or ``gpu`` flavour builds it.

        ``engine`` replaces the flavour's engine (e.g. ``eager`` for the benchmark's row of the eager path).
        """
        if flavour not in FLAVOURS:
            raise KeyError(f"no flavour {flavour!r}; known: {', '.join(FLAVOURS)}")
        accelerator = self.gpu if flavour == "gpu" else Accelerator(engine=self.engine)
        if self.torchscript and accelerator == GPU_DEFAULT:
            accelerator = GPU_TORCHSCRIPT
        if engine is not None:
            accelerator = replace(accelerator, engine=check_engine(engine))
        return replace(self, accelerator=accelerator)


def _weights_or(
    architecture: str, default: Callable[[Path], WeightsInfo]
) -> Callable[[Path, BuildInputs], WeightsInfo]:
    """The user's weights for ``architecture`` when given, ``default`` otherwise."""

    def make(dest: Path, inputs: BuildInputs) -> WeightsInfo:
        if inputs.weights is not None:
            return weights.from_user_file(architecture, inputs.weights, dest)
        return default(dest)

    return make


def _catalogue_index(workdir: Path, inputs: BuildInputs) -> Extras:
    """The similarity index of the catalogue (ours: a labelled demo; or the user's), embedded by this model."""
    info = catalogue.archive_index(workdir, inputs.catalogue)  # embeds with workdir/weights.pt
    return Extras(files=(info.path,), metadata=info.summary())


def _price_head(workdir: Path, inputs: BuildInputs) -> Extras:
    """The price head: the user's (``--weights price=PATH``), validated, or the demo head trained here."""
    info = price_model.build_price_head(workdir / PRICE_HEAD_FILE, inputs.weights, currency=price_model.CURRENCY)
    return Extras(
        files=(info.path,),
        metadata={
            "price_head": info.source,
            "price_head_trained_on": info.trained_on,
            "price_head_heldout_mae_log": info.heldout_mae_log,
            "price_head_interval_coverage": info.coverage,
        },
    )


def _pretrained_backbone(dest: Path, inputs: BuildInputs) -> WeightsInfo:
    """The pretrained EfficientNet-Lite0 backbone, whatever the user gives (their file is for the head)."""
    return weights.efficientnet_lite0_imagenet(dest)


OUR_SPECS: tuple[ArchiveSpec, ...] = (
    ArchiveSpec(
        name="classifier",
        version="1.0",
        engine="onnxruntime",
        handler="classifier_handler.py",
        architecture="efficientnet_lite0",
        make_weights=_weights_or("efficientnet_lite0", weights.efficientnet_lite0_imagenet),
        preprocess=LITE0_INPUT,
        golden=(
            GoldenCase("chelsea", TopLabelIn(CAT_LABELS)),
            GoldenCase("coffee", TopLabelIn(("espresso", "cup", "coffee mug"))),
            GoldenCase("flower", TopLabelIn(("daisy",))),
        ),
        description="EfficientNet-Lite0, ImageNet-1k, top-5 labels",
        serving=Serving(boxes=2, in_jobs=True),
    ),
    ArchiveSpec(
        name="resnet18",
        version="1.0",
        engine="openvino",
        handler="classifier_handler.py",
        architecture="resnet18",
        make_weights=_weights_or("resnet18", lambda dest: weights.seeded_init("resnet18", dest, seed=0)),
        golden=(GoldenCase("chelsea"), GoldenCase("rocket")),
        description="torchvision ResNet-18 at 224x224, the throughput model (untrained unless weights are given)",
        serving=Serving(benchmark_only=True),
    ),
    ArchiveSpec(
        name="similar",
        version="1.0",
        engine="onnxruntime",
        handler="similar_handler.py",
        architecture="efficientnet_lite0",
        make_weights=_weights_or("efficientnet_lite0", weights.efficientnet_lite0_imagenet),
        preprocess=LITE0_INPUT,  # the catalogue is embedded with it too (archive_scripts.catalogue)
        # topk is the default k; a request may ask for up to max_k (parameter k), and for its embedding.
        handler_options={"index_file": catalogue.INDEX_FILE, "max_k": 50, "embedding_dim": LITE0_FEATURES},
        golden=(
            GoldenCase("coffee", NearestItemIs("coffee-01", max_distance=0.01)),
            GoldenCase("chelsea", NearestItemIs("chelsea-01", max_distance=0.01), params=(("k", "3"),)),
            GoldenCase("flower", NearestItemIs("flower-01", max_distance=0.01), params=(("embedding", "true"),)),
        ),
        modules=(*SHARED_MODULES, "similarity_index.py"),
        labels=None,
        description=(
            f"EfficientNet-Lite0 ImageNet features ({LITE0_FEATURES}-d, L2-normalised): the k nearest catalogue items"
        ),
        make_extras=_catalogue_index,
        accepts_catalogue=True,
        serving=Serving(in_jobs=True),
    ),
    ArchiveSpec(
        name="price",
        version="1.0",
        engine="onnxruntime",
        handler="price_handler.py",
        architecture="efficientnet_lite0",
        make_weights=_pretrained_backbone,
        preprocess=LITE0_INPUT,  # the demo head is trained on it too (archive_scripts.price_model)
        topk=None,
        handler_options={
            "price_head_file": PRICE_HEAD_FILE, "currency": price_model.CURRENCY, "interval": price_model.COVERAGE,
        },
        # A correct build answers coffee ~11.9, chelsea ~86, flower ~8.2 EUR; ImageNet normalisation, an
        # untrained backbone or an empty head all fall outside these ranges.
        golden=(
            GoldenCase("coffee", PriceWithin(8.0, 18.0)),
            GoldenCase("chelsea", PriceWithin(45.0, 180.0)),
            GoldenCase("flower", PriceWithin(5.0, 13.5)),
        ),
        modules=(*SHARED_MODULES, "price_head.py"),
        labels=None,
        description=(
            "EfficientNet-Lite0 embedding + price head: price, currency, 80% interval "
            "(the default head is a DEMO trained on reference prices, not market data)"
        ),
        make_extras=_price_head,
        user_weights="its price head; the backbone stays the pretrained one",
        serving=Serving(in_jobs=True),
    ),
)

# Your own models: one module per model in archive_scripts/models/ (`python -m archive_scripts new NAME` writes
# one), each declaring `SPEC = ArchiveSpec(...)`. They follow ours in the catalogue, by file name.
YOUR_SPECS_DIR = Path(__file__).resolve().parent / "models"


def your_specs(directory: Path = YOUR_SPECS_DIR) -> tuple[ArchiveSpec, ...]:
    """The specs declared in ``directory`` (``SPEC`` in each module), each knowing its file for the build's fingerprint."""
    found = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module = importlib.import_module(f"archive_scripts.models.{path.stem}")
        spec = getattr(module, "SPEC", None)
        if not isinstance(spec, ArchiveSpec):
            raise TypeError(f"{path} must declare SPEC = ArchiveSpec(...) (see docs/adding-a-model.md)")
        found.append(replace(spec, spec_file=path))
    return tuple(found)


def _unique(specs: tuple[ArchiveSpec, ...]) -> tuple[ArchiveSpec, ...]:
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"more than one spec is named {', '.join(repeated)}: a model's name is its only key")
    return specs


# Every model, ours then yours: the catalogue's order (the boxes' ports in deploy/compose.yaml follow it).
# Versions served at start are these; other versions built here sit beside them in model_store/ for the management
# API to register (e.g. `python -m archive_scripts resnet18 --version 2.0 --weights resnet18=PATH`).
@functools.cache
def all_specs() -> tuple[ArchiveSpec, ...]:
    """Ours, then yours; found on first use, so a spec module may import this one (and be imported first)."""
    return _unique(OUR_SPECS + your_specs())


if TYPE_CHECKING:
    SPECS: tuple[ArchiveSpec, ...]


def __getattr__(name: str) -> Any:
    """``SPECS``: every spec (all_specs())."""
    if name == "SPECS":
        return all_specs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def find_spec(name: str, version: str | None = None, flavour: str = "cpu", engine: str | None = None) -> ArchiveSpec:
    """The spec called ``name`` (as ``version``, ``flavour`` and ``engine`` when given); a clear error if unknown."""
    for spec in all_specs():
        if spec.name == name:
            return (replace(spec, version=version) if version else spec).flavoured(flavour, engine)
    raise KeyError(f"no archive spec named {name!r}; known: {', '.join(s.name for s in all_specs())}")
