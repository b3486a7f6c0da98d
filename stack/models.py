"""The model catalogue: every model the project builds, as the bridge, servingctl, the deploy files and the tests see it.

Read without torch from ``stack/models.json``, which ``python -m archive_scripts.deploy_config`` writes from the
archive specs (archive_scripts/specs.py and archive_scripts/models/) and their handlers' declared signatures; a
test keeps it current. A model that is not in it (an archive built elsewhere and deployed with servingctl) is
served as the generic ``json`` kind: its answer as one JSON text per item over the Open Inference Protocol.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATALOGUE = Path(__file__).resolve().parent / "models.json"
JSON_KIND = "json"


@dataclass(frozen=True)
class Output:
    """One output tensor of a kind of answer over ``/v2`` and where its values sit in an item's JSON answer.

    ``path``: ``"price"``; ``"predictions[].label"`` (that key of every element); ``"interval.low,interval.high"``
    (several, concatenated); ``""`` the whole answer as one JSON text. ``width``: values per item, -1 when it varies.
    ``asked_by``: an optional output, there only when that request parameter is true.
    """

    name: str
    datatype: str
    path: str
    width: int = -1
    asked_by: str = ""


JSON_OUTPUTS = (Output("answer", "BYTES", "", 1),)


@dataclass(frozen=True)
class Model:
    """One model of the catalogue: its archive, kind of answer and where the stack runs it."""

    name: str
    version: str
    archive: str
    kind: str
    outputs: tuple[Output, ...]
    engine: str
    boxes: int = 1
    in_jobs: bool = False
    benchmark_only: bool = False
    description: str = ""

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Model:
        """An entry of models.json."""
        outputs = tuple(Output(**o) for o in entry["outputs"])
        return cls(**{**entry, "outputs": outputs})

    def to_json(self) -> dict[str, Any]:
        """The entry written to models.json."""
        return {**vars(self), "outputs": [vars(o) for o in self.outputs]}


def json_model(name: str) -> Model:
    """A model the catalogue does not know (built elsewhere): the generic ``json`` kind."""
    return Model(name=name, version="", archive="", kind=JSON_KIND, outputs=JSON_OUTPUTS, engine="")


def read(path: Path = CATALOGUE) -> tuple[Model, ...]:
    """The models of a catalogue file, in its order."""
    try:
        document = json.loads(path.read_text())
        return tuple(Model.from_json(entry) for entry in document["models"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise RuntimeError(
            f"cannot read the model catalogue {path}: {exc}; regenerate it: python -m archive_scripts.deploy_config"
        ) from exc


@functools.cache
def catalogue() -> tuple[Model, ...]:
    """The project's models (stack/models.json), read once."""
    return read()


def names() -> tuple[str, ...]:
    """Every model's name, in the catalogue's order."""
    return tuple(model.name for model in catalogue())


def find(name: str) -> Model | None:
    """The catalogue's entry for ``name``; None for a model it does not know."""
    return next((model for model in catalogue() if model.name == name), None)


def describe(name: str) -> Model:
    """The catalogue's entry for ``name``, or the generic ``json`` kind for a model built elsewhere."""
    return find(name) or json_model(name)


def job_models() -> tuple[str, ...]:
    """What a job runs when it names no models."""
    return tuple(model.name for model in catalogue() if model.in_jobs)
