"""Shadowing under load, the arithmetic: live latency with a candidate shadowing 100 % beside the same load without.

Pure (no timing, no processes), like :mod:`benchmarks.throughput.report`. Each load is measured in phases, shadowing
off and on in the order off, on, on, off (a linear drift of the machine falls on both states alike); a state's
figures merge its two phases. Noise: how far apart the two phases of the same state are at p50 (the larger of the
two states' spreads); the live p50 is within noise when on ÷ off differs from 1 by no more than that.
A copy the candidate had no room for is dropped at the bridge's bounded queue and never waited for: that is the
design working, counted here as "dropped", not an error.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from benchmarks.throughput.report import Goal, Measurement, merge, noise_note, percentile, ratio

DESCRIPTION = (
    "Shadowing under load: a candidate version (a changed archive, one worker on the same TorchServe and cores) gets a "
    "copy of every live request that names no version, off the request path; the live latency through the bridge with "
    "shadowing off and at 100 %, in phases off/on/on/off. Noise: the p50 spread between the two phases of one state. "
    "Copies the candidate had no room for are dropped at the bridge's queue, by design (never waited for):"
)


@dataclass
class Phase:
    """One measured phase of the live load, and (shadowing on) what became of its copies."""

    shadow: bool
    run: Measurement
    latencies_ms: list[float]
    live: int = 0  # live requests the bridge recorded in the measured window: each was offered to the candidate
    answered: int = 0  # their copies the candidate answered (recorded with status 200)
    failed: int = 0  # their copies recorded with another status (a candidate timeout is its 504)

    @property
    def dropped(self) -> int:
        """Copies never recorded: dropped at the bridge's full queue."""
        return max(0, self.live - self.answered - self.failed) if self.shadow else 0


def spread(phases: list[Phase]) -> float:
    """|p50 of the first − p50 of the last| ÷ their mean, over the phases of one state; NaN with fewer than two."""
    p50s = [percentile(p.latencies_ms, 50) for p in phases]
    if len(p50s) < 2 or any(math.isnan(v) for v in p50s):
        return math.nan
    return ratio(abs(p50s[0] - p50s[-1]), statistics.fmean(p50s))


def _state(phases: list[Phase]) -> dict[str, Any]:
    m = merge([p.run for p in phases], [x for p in phases for x in p.latencies_ms])
    live, answered, failed = (sum(p.live for p in phases), sum(p.answered for p in phases),
                              sum(p.failed for p in phases))
    dropped = sum(p.dropped for p in phases)
    return {
        "p50_ms": m.p50_ms, "p99_ms": m.p99_ms, "images_per_s": m.images_per_s, "requests": m.ok, "errors": m.errors,
        "cpu_cores": m.cpu_cores, "others_cores": m.others_cores, "p50_spread": spread(phases),
        "copies": {"offered": live, "answered": answered, "failed": failed, "dropped": dropped} if phases[0].shadow
        else None,
    }


def summarise(concurrency: int, phases: list[Phase]) -> dict[str, Any]:
    """One load's off and on states, the ratios on ÷ off and whether the live p50 stayed within noise."""
    off, on = [p for p in phases if not p.shadow], [p for p in phases if p.shadow]
    if not off or not on:
        raise ValueError("a load needs phases with shadowing off and on")
    a, b = _state(off), _state(on)
    p50_ratio = ratio(b["p50_ms"], a["p50_ms"])
    noise = max((v for v in (a["p50_spread"], b["p50_spread"]) if not math.isnan(v)), default=math.nan)
    return {
        "concurrency": concurrency, "off": a, "on": b, "p50_ratio": p50_ratio,
        "p99_ratio": ratio(b["p99_ms"], a["p99_ms"]), "images_per_s_ratio": ratio(b["images_per_s"], a["images_per_s"]),
        "noise": noise,
        "within_noise": None if math.isnan(p50_ratio) or math.isnan(noise) else abs(p50_ratio - 1) <= noise,
        "phases": [{"shadow": p.shadow, "p50_ms": percentile(p.latencies_ms, 50), "p99_ms": percentile(p.latencies_ms, 99),
                    "images_per_s": p.run.images_per_s, "others_cores": p.run.others_cores, "live": p.live,
                    "answered": p.answered, "failed": p.failed, "dropped": p.dropped} for p in phases],
    }


SHADOW_HEADER = ("in flight", "shadowing", "live img/s", "live p50 ms", "live p99 ms", "p50 × off", "p99 × off",
                 "p50 spread of its 2 phases", "copies offered", "answered", "failed", "dropped (queue full)",
                 "serving CPU cores", "others' cores")


def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"±{100 * value:.1f} %"


def shadow_lines(doc: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """Two lines per load: shadowing off, then on (with the ratios to off and what became of the copies)."""
    if not doc:
        return []
    label = f"{100 * doc['fraction']:g} % → {doc['candidate']['version']}"
    lines: list[tuple[str, ...]] = []
    for load in doc["loads"]:
        for state in ("off", "on"):
            s, on = load[state], state == "on"
            copies = s["copies"] or {}
            lines.append((
                str(load["concurrency"]), label if on else "off", _num(s["images_per_s"]), _num(s["p50_ms"]),
                _num(s["p99_ms"]), f"{_num(load['p50_ratio'], 2)}×" if on else "1.00×",
                f"{_num(load['p99_ratio'], 2)}×" if on else "1.00×", _pct(s["p50_spread"]),
                *(str(copies.get(k, "-")) if on else "-" for k in ("offered", "answered", "failed", "dropped")),
                _num(s["cpu_cores"], 2), _num(s["others_cores"], 2),
            ))
    return lines


def shadow_goals(doc: dict[str, Any] | None) -> list[Goal]:
    """Issue 23: a changed archive shadowed at 100 % under load while the live p50 stays within noise."""
    if not doc:
        return []
    c = doc["candidate"]
    name = f"live p50 while {c['model']} {c['version']} shadows {100 * doc['fraction']:g} %"
    target = "within noise of shadowing off"
    loads = doc["loads"]
    if not loads:
        return [Goal(name, target, "n/a", None)]
    parts = []
    for load in loads:
        off, on, copies = load["off"], load["on"], load["on"]["copies"]
        parts.append(
            f"{load['concurrency']} in flight {_num(load['p50_ratio'], 2)}× ({_num(off['p50_ms'])} → "
            f"{_num(on['p50_ms'])} ms, noise {_pct(load['noise'])}; img/s {_num(load['images_per_s_ratio'], 2)}×; "
            f"copies answered {copies['answered']} of {copies['offered']}, dropped {copies['dropped']}"
            + (f", failed {copies['failed']}" if copies["failed"] else "") + ")")
    verdicts = [load["within_noise"] for load in loads]
    met = None if any(v is None for v in verdicts) else all(verdicts)
    busiest = max((p["others_cores"] for load in loads for p in load["phases"] if p["others_cores"] is not None
                   and not math.isnan(p["others_cores"])), default=math.nan)  # one disturbed phase is enough
    return [Goal(name, target, "; ".join(parts), met, noise_note([busiest]))]
