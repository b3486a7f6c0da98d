"""Which model server box serves which model: the one routing definition the bridge and servingctl share.

A *box* is one TorchServe (one container, pod or process) with its inference, management and metrics addresses
and the key file its tokens come from. The routes map a model name to its box; ``"*"`` names the box of every
model not listed. Without a ``"*"`` entry the component's own single-TorchServe settings are that box when no
model is routed at all (``make up``: one TorchServe for every model), and no box when some are (a model routed
nowhere is unknown). Either way every call goes through :meth:`Routes.box` — one code path.

    BRIDGE_ROUTES / SERVINGCTL_ROUTES = {"classifier": {"url": "http://127.0.0.1:18080",
        "management_url": "http://127.0.0.1:18081", "metrics_url": "http://127.0.0.1:18082/metrics",
        "key_file": "/var/lib/serving/boxes/classifier/key_file.json"}, "price": {...}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
    """Model → box, with the fallback box described above."""

    def __init__(self, routes: Mapping[str, Box], single: Box | None) -> None:
        self.routes = dict(routes)
        self.fallback = self.routes.pop(ANY_MODEL, None) or (single if not self.routes else None)

    def box(self, model: str) -> Box:
        """The box serving ``model``; :class:`Unrouted` when none does."""
        box = self.routes.get(model, self.fallback)
        if box is None:
            raise Unrouted(model)
        return box

    def serves(self, box: Box, model: str) -> bool:
        """Whether requests for ``model`` go to ``box`` (a box may load models it is not routed for)."""
        return self.routes.get(model, self.fallback) == box

    def boxes(self) -> list[Box]:
        """Every distinct box, the fallback first."""
        found: list[Box] = [self.fallback] if self.fallback is not None else []
        for box in self.routes.values():
            if box not in found:
                found.append(box)
        return found

    def models(self, box: Box) -> list[str]:
        """The models routed to ``box`` by name (the fallback box also serves every model not listed)."""
        return sorted(model for model, routed in self.routes.items() if routed == box)


def parse_routes(value: Any) -> dict[str, Box]:
    """Routes from a settings value: a mapping, or its JSON text (empty: no routes)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, Mapping):
        # ValueError, not TypeError: pydantic reports a validator's ValueError as a bad setting.
        raise ValueError("routes must be a JSON object: model name → {url, management_url, metrics_url, key_file}")  # noqa: TRY004
    return {str(model): box if isinstance(box, Box) else Box.model_validate(box) for model, box in value.items()}
