"""Which model server box serves which model: the one routing definition the bridge and servingctl share.

A *box* is one TorchServe (one container, pod or process) with its inference, management and metrics addresses
and the key file its tokens come from. The routes map a model name to its box, or to a list of boxes when the
model is scaled out to several (its *replicas*: the bridge spreads requests over them and fails over between
them; servingctl changes them box by box); ``"*"`` names the box of every model not listed. Without a ``"*"`` entry the component's own single-TorchServe settings are that box when no
model is routed at all (``make up``: one TorchServe for every model), and no box when some are (a model routed
nowhere is unknown). Either way every call goes through :meth:`Routes.box` — one code path.

    BRIDGE_ROUTES / SERVINGCTL_ROUTES = {"classifier": {"url": "http://127.0.0.1:18080",
        "management_url": "http://127.0.0.1:18081", "metrics_url": "http://127.0.0.1:18082/metrics",
        "key_file": "/var/lib/serving/boxes/classifier/key_file.json"}, "price": [{...}, {...}]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ANY_MODEL = "*"


class Box(BaseModel):
    """One model server box: its TorchServe's addresses and key file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(description="the box's inference API")
    management_url: str = Field(description="the box's management API")
    metrics_url: str | None = Field(None, description="the box's Prometheus metrics; None: not scraped")
    key_file: Path = Field(description="the box's TorchServe key file (shared read-only with the bridge and servingctl)")
    required: bool = Field(True, description="readiness waits for this box (false: e.g. a benchmark-only box)")

    @field_validator("url", "management_url", "metrics_url")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url

    @property
    def name(self) -> str:
        """How logs, health and metrics name the box: its inference address."""
        return urlsplit(self.url).netloc or self.url


class Unrouted(LookupError):
    """No box serves this model."""

    def __init__(self, model: str) -> None:
        super().__init__(f"model {model!r} is not routed to any model server")
        self.model = model


class Routes:
    """Model → its boxes (one or more replicas), with the fallback box described above."""

    def __init__(self, routes: Mapping[str, Box | Sequence[Box]], single: Box | None) -> None:
        self.routes: dict[str, tuple[Box, ...]] = {
            model: (boxes,) if isinstance(boxes, Box) else tuple(boxes) for model, boxes in routes.items()
        }
        fallback = self.routes.pop(ANY_MODEL, ())
        self.fallback: tuple[Box, ...] = fallback or ((single,) if single is not None and not self.routes else ())

    def replicas(self, model: str) -> tuple[Box, ...]:
        """Every box serving ``model``, in the order the routes list them; :class:`Unrouted` when none does."""
        boxes = self.routes.get(model, self.fallback)
        if not boxes:
            raise Unrouted(model)
        return boxes

    def box(self, model: str) -> Box:
        """The first box serving ``model``; :class:`Unrouted` when none does."""
        return self.replicas(model)[0]

    def serves(self, box: Box, model: str) -> bool:
        """Whether requests for ``model`` go to ``box`` (a box may load models it is not routed for)."""
        return box in self.routes.get(model, self.fallback)

    def boxes(self) -> list[Box]:
        """Every distinct box, the fallback's first."""
        found: list[Box] = list(self.fallback)
        for replicas in self.routes.values():
            found += [box for box in replicas if box not in found]
        return found

    def models(self, box: Box) -> list[str]:
        """The models routed to ``box`` by name (the fallback box also serves every model not listed)."""
        return sorted(model for model, replicas in self.routes.items() if box in replicas)


def parse_routes(value: Any) -> dict[str, tuple[Box, ...]]:
    """Routes from a settings value: a mapping, or its JSON text (empty: no routes); each model → a box or a list."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, Mapping):
        # ValueError, not TypeError: pydantic reports a validator's ValueError as a bad setting.
        raise ValueError("routes must be a JSON object: model name → {url, management_url, metrics_url, key_file}"  # noqa: TRY004
                         " or a list of them")
    parsed: dict[str, tuple[Box, ...]] = {}
    for model, boxes in value.items():
        listed = [boxes] if isinstance(boxes, Box | Mapping) else list(boxes) if isinstance(boxes, Sequence) else None
        if not listed or isinstance(boxes, str):
            raise ValueError(f"route of {model!r}: a box {{url, management_url, key_file}} or a non-empty list of them")
        replicas = tuple(box if isinstance(box, Box) else Box.model_validate(box) for box in listed)
        if len(set(replicas)) != len(replicas):
            raise ValueError(f"route of {model!r} lists the same box twice")
        parsed[str(model)] = replicas
    return parsed
