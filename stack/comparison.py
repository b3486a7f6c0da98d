"""A candidate version's answers beside the live version's, per kind of answer: the one comparison of rollouts.

Shadowing and replay record a candidate's answer to the same photo a live request carried (``shadow_of``); each
such pair is compared here, by the kind the catalogue gives the model (stack/models.json):

=============  ====================================================================================================
classifier     ``top1_agreement`` (same top label), ``top5_overlap`` (shared labels of the two top-5s / 5)
price          ``relative_difference`` (|candidate − live| / |live|), ``live_in_candidate_interval``
similar        ``jaccard_at_k`` (shared ids / ids of either among the k nearest)
anything else  ``answer_agreement``: the same answer, its ``model`` and ``batch_size`` aside (JSON kinds, yours)
=============  ====================================================================================================

and, for every kind, server errors (5xx) and latency of both sides. Each figure carries its sample count and a 95 %
confidence interval (Wilson's for rates, the normal approximation for means). The bridge's
``GET /v1/reports/compare``, ``servingctl compare|promote|replay`` and the dashboards all come from here, so one
photo compared anywhere gives the same numbers. Torch-free, like the rest of ``stack``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from stack.answers import essence, finite, item_ids, top_labels

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95 % interval

# What each kind's pair metrics are called; "higher is better" unless listed in LOWER_IS_BETTER.
KIND_METRICS: dict[str, tuple[str, ...]] = {
    "classifier": ("top1_agreement", "top5_overlap"),
    "price": ("relative_difference", "live_in_candidate_interval"),
    "similar": ("jaccard_at_k",),
}
GENERIC_METRICS = ("answer_agreement",)
LOWER_IS_BETTER = frozenset({"relative_difference"})
RATES = frozenset({"top1_agreement", "live_in_candidate_interval", "answer_agreement"})  # each pair 0 or 1


def metric_names(kind: str) -> tuple[str, ...]:
    """The pair metrics of ``kind``."""
    return KIND_METRICS.get(kind, GENERIC_METRICS)


@dataclass(frozen=True)
class Pair:
    """One photo answered by both: the live request's answer and the candidate's."""

    live_status: int
    live_output: Any
    live_latency_ms: float
    candidate_status: int
    candidate_output: Any
    candidate_latency_ms: float

    @property
    def both_answered(self) -> bool:
        """Both answered 200: their answers can be compared."""
        return self.live_status == 200 and self.candidate_status == 200


def pair_metrics(kind: str, live: Any, candidate: Any) -> dict[str, float]:
    """The metrics of one pair of 200 answers (a metric the answers cannot give is left out)."""
    if kind == "classifier":
        live_labels, candidate_labels = top_labels(live), top_labels(candidate)
        if not live_labels:
            return {}
        overlap = len(set(live_labels) & set(candidate_labels)) / len(live_labels)
        top1 = bool(candidate_labels) and live_labels[0] == candidate_labels[0]
        return {"top1_agreement": float(top1), "top5_overlap": overlap}
    if kind == "price":
        live_price = finite(live.get("price")) if isinstance(live, dict) else None
        candidate_price = finite(candidate.get("price")) if isinstance(candidate, dict) else None
        if live_price is None:
            return {}
        metrics: dict[str, float] = {}
        if candidate_price is not None and live_price != 0:
            metrics["relative_difference"] = abs(candidate_price - live_price) / abs(live_price)
        interval = candidate.get("interval") if isinstance(candidate, dict) else None
        low = finite(interval.get("low")) if isinstance(interval, dict) else None
        high = finite(interval.get("high")) if isinstance(interval, dict) else None
        metrics["live_in_candidate_interval"] = float(low is not None and high is not None and low <= live_price <= high)
        return metrics
    if kind == "similar":
        live_ids, candidate_ids = set(item_ids(live)), set(item_ids(candidate))
        either = live_ids | candidate_ids
        return {"jaccard_at_k": len(live_ids & candidate_ids) / len(either)} if either else {}
    return {"answer_agreement": float(essence(live) == essence(candidate))}


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` samples with its 95 % confidence interval (``None`` when there is no sample)."""

    value: float | None
    low: float | None
    high: float | None
    n: int


def rate(successes: int, n: int) -> Estimate:
    """A proportion with Wilson's score interval (sound at 0 %, 100 % and small n)."""
    if n == 0:
        return Estimate(None, None, None, 0)
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not 1e-17 off
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, low, high, n)


def mean(values: Sequence[float]) -> Estimate:
    """A mean with the normal-approximation interval (mean ± 1.96·s/√n)."""
    n = len(values)
    if n == 0:
        return Estimate(None, None, None, 0)
    average = sum(values) / n
    if n == 1:
        return Estimate(average, None, None, 1)
    spread = math.sqrt(sum((v - average) ** 2 for v in values) / (n - 1))
    half = Z95 * spread / math.sqrt(n)
    return Estimate(average, average - half, average + half, n)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile by linear interpolation, as PostgreSQL's ``percentile_cont``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True)
class Side:
    """One version's errors and latency over the pairs."""

    server_errors: Estimate  # 5xx rate
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Comparison:
    """A candidate against the live version over ``samples`` pairs."""

    kind: str
    samples: int
    compared: int  # pairs both answered with 200 (the metrics' n, at most)
    metrics: dict[str, Estimate]
    live: Side
    candidate: Side
    error_rate_delta: float | None  # candidate − live
    p50_ratio: float | None  # candidate / live
    p99_ratio: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def _side(statuses: list[int], latencies: list[float]) -> Side:
    return Side(rate(sum(s >= 500 for s in statuses), len(statuses)), percentile(latencies, 0.5),
                percentile(latencies, 0.99))


def _ratio(candidate: float | None, live: float | None) -> float | None:
    return None if candidate is None or not live else candidate / live


def compare(kind: str, pairs: Iterable[Pair]) -> Comparison:
    """Compare every pair; latency over each side's 200 answers."""
    pairs = list(pairs)
    names = metric_names(kind)
    values: dict[str, list[float]] = {name: [] for name in names}
    for pair in pairs:
        if pair.both_answered:
            for name, value in pair_metrics(kind, pair.live_output, pair.candidate_output).items():
                values.setdefault(name, []).append(value)
    metrics = {
        name: rate(int(sum(v)), len(v)) if name in RATES else mean(v) for name, v in values.items()
    }
    live = _side([p.live_status for p in pairs], [p.live_latency_ms for p in pairs if p.live_status == 200])
    candidate = _side([p.candidate_status for p in pairs],
                      [p.candidate_latency_ms for p in pairs if p.candidate_status == 200])
    delta = (None if live.server_errors.value is None or candidate.server_errors.value is None
             else candidate.server_errors.value - live.server_errors.value)
    return Comparison(
        kind=kind, samples=len(pairs), compared=sum(p.both_answered for p in pairs), metrics=metrics,
        live=live, candidate=candidate, error_rate_delta=delta,
        p50_ratio=_ratio(candidate.p50_ms, live.p50_ms), p99_ratio=_ratio(candidate.p99_ms, live.p99_ms),
    )


@dataclass(frozen=True)
class Gate:
    """What a candidate must show before it may become the default (servingctl promote)."""

    min_samples: int = 200
    max_error_rate_delta: float = 0.01
    max_p99_ratio: float = 2.0
    # Per kind: metric → its bound (a minimum, or a maximum for LOWER_IS_BETTER metrics); "*": every other kind.
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: {
        "classifier": {"top1_agreement": 0.9, "top5_overlap": 0.8},
        "price": {"relative_difference": 0.15, "live_in_candidate_interval": 0.8},
        "similar": {"jaccard_at_k": 0.7},
        "*": {"answer_agreement": 0.95},
    })

    def bounds(self, kind: str) -> Mapping[str, float]:
        """The metric bounds of ``kind``."""
        return self.metrics.get(kind, self.metrics.get("*", {}))

    def failures(self, comparison: Comparison) -> list[str]:
        """Why ``comparison`` does not pass (empty: it passes). Judged on the point estimates over the samples."""
        reasons: list[str] = []
        if comparison.samples < self.min_samples:
            reasons.append(f"{comparison.samples} samples compared, at least {self.min_samples} needed "
                           "(shadow longer, or replay captured photos)")
            return reasons
        if comparison.error_rate_delta is not None and comparison.error_rate_delta > self.max_error_rate_delta:
            reasons.append(f"server errors {_pct(comparison.candidate.server_errors.value)} against "
                           f"{_pct(comparison.live.server_errors.value)} live (at most +{_pct(self.max_error_rate_delta)})")
        if comparison.p99_ratio is not None and comparison.p99_ratio > self.max_p99_ratio:
            reasons.append(f"p99 latency {comparison.p99_ratio:.2f}× the live version's (at most {self.max_p99_ratio}×)")
        for name, bound in self.bounds(comparison.kind).items():
            estimate = comparison.metrics.get(name)
            if estimate is None or estimate.value is None:
                reasons.append(f"{name}: no pair of answers to compare (both must answer 200)")
            elif name in LOWER_IS_BETTER and estimate.value > bound:
                reasons.append(f"{name} {estimate.value:.4f} above {bound}")
            elif name not in LOWER_IS_BETTER and estimate.value < bound:
                reasons.append(f"{name} {estimate.value:.4f} below {bound}")
        return reasons


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.2f} %"


def describe(comparison: Comparison) -> list[str]:
    """The comparison as lines of text (servingctl)."""
    lines = [f"kind {comparison.kind}: {comparison.samples} pairs, {comparison.compared} with both answers 200"]
    for name, estimate in comparison.metrics.items():
        lines.append(f"  {name:<28} {_interval(estimate)}")
    for label, side in (("live", comparison.live), ("candidate", comparison.candidate)):
        lines.append(f"  {label + ' server errors':<28} {_interval(side.server_errors, percent=True)}")
        lines.append(f"  {label + ' latency p50 / p99':<28} {_ms(side.p50_ms)} / {_ms(side.p99_ms)}")
    if comparison.p50_ratio is not None and comparison.p99_ratio is not None:
        lines.append(f"  {'candidate / live latency':<28} p50 {comparison.p50_ratio:.2f}×, p99 {comparison.p99_ratio:.2f}×")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _interval(estimate: Estimate, percent: bool = False) -> str:
    if estimate.value is None:
        return "no samples"
    scale, unit = (100.0, " %") if percent else (1.0, "")
    text = f"{scale * estimate.value:.4g}{unit}"
    if estimate.low is not None and estimate.high is not None:
        text += f"  [{scale * estimate.low:.4g}, {scale * estimate.high:.4g}]"
    return f"{text}  n={estimate.n}"
