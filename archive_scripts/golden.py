"""Golden inputs and what a correct archive must answer for them.

A golden case is a bundled real photo (see photos.py), optional request parameters, and an expectation
that inspects the JSON answer and returns what is wrong with it (None when it is right).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

TIE = 0.01  # fp32 scores this close to the top-1 are a tie that reduced precision may break either way


class Expectation(Protocol):
    """Checks one answer body."""

    def failure(self, body: dict[str, Any]) -> str | None: ...

    def relaxed(self) -> Expectation:
        """The same check on the answer's form only: used when a user's weights or catalogue replace ours."""
        ...

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        """How ``body`` (reduced precision or compiled) disagrees with the fp32 answer ``fp32``; None if it agrees."""
        ...


@dataclass(frozen=True)
class TopLabelIn:
    """Top-1 label is one of ``labels``; an empty tuple only requires well-formed top-k predictions."""

    labels: tuple[str, ...] = ()

    def failure(self, body: dict[str, Any]) -> str | None:
        predictions = body.get("predictions") or []
        if not predictions or "label" not in predictions[0] or "score" not in predictions[0]:
            return f"no predictions in {str(body)[:200]}"
        scores = [p["score"] for p in predictions]
        if scores != sorted(scores, reverse=True) or not all(0.0 <= s <= 1.0 for s in scores):
            return f"scores not sorted probabilities: {scores}"
        top1 = predictions[0]["label"]
        if self.labels and top1 not in self.labels:
            return f"top-1 {top1!r}, expected one of {list(self.labels)}"
        return None

    def relaxed(self) -> TopLabelIn:
        return TopLabelIn()

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        """The same top-1 label, or one fp32 scored within ``TIE`` of its own top-1 (a near tie may flip)."""
        got = body["predictions"][0]["label"]
        scores = {p["label"]: p["score"] for p in fp32["predictions"]}
        want, best = fp32["predictions"][0]["label"], fp32["predictions"][0]["score"]
        if got == want or scores.get(got, -1.0) >= best - TIE:
            return None
        return f"top-1 {got!r}, fp32 says {want!r} ({best}; {got!r} {scores.get(got, 'not in its top-k')})"


@dataclass(frozen=True)
class NearestItemIs:
    """The nearest catalogue item is ``item_id`` (e.g. a catalogue photo finds itself); None: any items."""

    item_id: str | None
    max_distance: float = 0.5

    def failure(self, body: dict[str, Any]) -> str | None:
        items = body.get("items") or []
        if not items:
            return f"no items in {str(body)[:200]}"
        first = items[0]
        if self.item_id is not None and first.get("id") != self.item_id:
            return f"nearest item {first.get('id')!r}, expected {self.item_id!r}"
        if self.item_id is not None and first.get("distance", 1e9) > self.max_distance:
            return f"distance {first.get('distance')} above {self.max_distance}"
        distances = [i["distance"] for i in items]
        if distances != sorted(distances) or not all(0.0 <= d <= 2.0 for d in distances):
            return f"distances not sorted within [0, 2] (unit vectors): {distances}"
        return None

    def relaxed(self) -> NearestItemIs:
        return NearestItemIs(None)

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        """The same nearest item."""
        got, want = body["items"][0]["id"], fp32["items"][0]["id"]
        return None if got == want else f"nearest item {got!r}, fp32 says {want!r}"


@dataclass(frozen=True)
class PriceWithin:
    """The price estimate lies in [low, high] and inside its own interval."""

    low: float
    high: float

    def failure(self, body: dict[str, Any]) -> str | None:
        price = body.get("price")
        interval = body.get("interval") or {}
        if not isinstance(price, (int, float)):
            return f"no price in {str(body)[:200]}"
        if not self.low <= price <= self.high:
            return f"price {price} outside [{self.low}, {self.high}]"
        if not interval.get("low", price) <= price <= interval.get("high", price):
            return f"price {price} outside its own interval {interval}"
        return None

    def relaxed(self) -> PriceWithin:
        return PriceWithin(0.0, float("inf"))

    def agrees(self, body: dict[str, Any], fp32: dict[str, Any]) -> str | None:
        """A price inside the fp32 answer's interval."""
        low, high = fp32["interval"]["low"], fp32["interval"]["high"]
        price = body["price"]
        return None if low <= price <= high else f"price {price} outside the fp32 interval [{low}, {high}]"


@dataclass(frozen=True)
class GoldenCase:
    """One golden photo, the request parameters to send with it, and the expected answer."""

    photo: str
    expect: Expectation = field(default_factory=TopLabelIn)
    params: tuple[tuple[str, str], ...] = ()

    def relaxed(self) -> GoldenCase:
        """This case checking only the answer's form."""
        return GoldenCase(self.photo, self.expect.relaxed(), self.params)
