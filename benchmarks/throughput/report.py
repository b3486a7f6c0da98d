"""Results of one benchmark run: the limit, the served rows, ratios, goals, the table and the JSON.

Pure data and arithmetic (no timing, no processes, no matplotlib), so it is unit-tested on its own.
Every ratio is taken between figures measured in the same run on the same machine: absolute numbers on
a shared 2-core machine are noisy, ratios much less so.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The rows of the main table, in order, with the label printed for each.
ROWS: dict[str, str] = {
    "limit": "limit: in-process decode+preprocess+forward",
    "prototype": "seed prototype design (baseline)",
    "torchserve_stock": "TorchServe, stock image_classifier",
    "torchserve_eager": "TorchServe, our handler, eager PyTorch (the path served until now)",
    "torchserve_ours": "TorchServe, our handler (direct)",
    "full_stack": "full stack: bridge + recording",
    "oip_binary": "full stack, OIP binary (as tritonclient)",
    "oip_json": "full stack, OIP base64 JSON",
    "oip_binary_x8": "full stack, OIP binary, 8 photos/request",
}
# The full stack's bridge sits in front of the row started just before it: torchserve_ours stays right before it.
SERVED_ROWS = ("prototype", "torchserve_stock", "torchserve_eager", "torchserve_ours", "full_stack")
RESNET_ONLY_ROWS = ("prototype", "torchserve_stock")  # baselines written for ResNet-18
# The same photos through the full stack's bridge as Open Inference Protocol infer requests (no server of their
# own): row → (encoding, photos per request). A row of N photos per request runs where N divides the photos in
# flight, with 1/N as many requests in flight, so every row keeps the same number of photos in flight.
OIP_MODES: dict[str, tuple[str, int]] = {"oip_binary": ("binary", 1), "oip_json": ("json", 1), "oip_binary_x8": ("binary", 8)}
OIP_ROWS = tuple(OIP_MODES)
TABLE_ROWS = (*SERVED_ROWS, *OIP_ROWS)


@dataclass
class Measurement:
    """One bounded run of one row at one load (``concurrency`` requests in flight; None in-process)."""

    row: str
    concurrency: int | None
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_s: float  # CPU time (user + system) of the serving processes over the measured window
    window_s: float
    ok: int
    errors: int = 0
    config: str = ""
    cpu_breakdown: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = 0.0  # the load generator's own CPU over the window (not in cpu_s)
    sent_total: int = 0  # every request the load generator sent, warm-up and drain included
    others_cores: float = math.nan  # cores busy with other users' processes during the window (noise)
    passes: list[float] = field(default_factory=list)  # img/s of each pass, when merged from several
    mean_batch: float = math.nan  # mean batch size the server reported per answer (X-Batch-Size), if it does
    notes: str = ""
    photos_per_request: int = 1  # ok, sent_total and the latencies count requests; images_per_s counts photos
    load: int | None = None  # in-process limit: the served load (photos in flight) a repeat was measured beside

    @property
    def cpu_cores(self) -> float:
        """Average number of cores the serving processes kept busy."""
        return self.cpu_s / self.window_s if self.window_s > 0 else math.nan

    @property
    def cpu_ms_per_image(self) -> float:
        """Serving CPU time per answered image."""
        images = self.images_per_s * self.window_s
        return self.cpu_s * 1000.0 / images if images > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        """Plain dict, with the derived CPU figures."""
        return {**asdict(self), "cpu_cores": _finite(self.cpu_cores), "cpu_ms_per_image": _finite(self.cpu_ms_per_image)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of :meth:`to_json` (derived fields dropped)."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def merge(parts: list[Measurement], latencies_ms: list[float]) -> Measurement:
    """One measurement from several passes of the same row and load (their windows added up).

    ``latencies_ms``: every answer of every pass, for the percentiles. ``passes`` keeps each pass's img/s,
    so the spread that other users' load caused stays visible.
    """
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    window = sum(p.window_s for p in parts)
    ok = sum(p.ok for p in parts)
    breakdown: dict[str, float] = {}
    for p in parts:
        for role, seconds in p.cpu_breakdown.items():
            breakdown[role] = round(breakdown.get(role, 0.0) + seconds, 3)
    others = [p.others_cores * p.window_s for p in parts if not math.isnan(p.others_cores)]
    batched = [(p.mean_batch, p.ok) for p in parts if not math.isnan(p.mean_batch)]
    return Measurement(
        row=first.row, concurrency=first.concurrency,
        images_per_s=ok * first.photos_per_request / window if window > 0 else math.nan,
        p50_ms=percentile(latencies_ms, 50), p95_ms=percentile(latencies_ms, 95), p99_ms=percentile(latencies_ms, 99),
        cpu_s=sum(p.cpu_s for p in parts), window_s=window, ok=ok, errors=sum(p.errors for p in parts),
        config=first.config, cpu_breakdown=breakdown, client_cpu_s=sum(p.client_cpu_s for p in parts),
        sent_total=sum(p.sent_total for p in parts),
        others_cores=sum(others) / window if others and window > 0 else math.nan,
        passes=[round(p.images_per_s, 2) for p in parts], notes=first.notes, photos_per_request=first.photos_per_request,
        mean_batch=sum(b * n for b, n in batched) / sum(n for _, n in batched) if batched and sum(n for _, n in batched) else math.nan,
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Limit:
    """The in-process limit: every candidate layout, the best one, and its repeats between the served rows."""

    candidates: list[Measurement]
    repeats: list[Measurement] = field(default_factory=list)

    @property
    def best(self) -> Measurement:
        """The candidate with the most images/s."""
        if not self.candidates:
            raise ValueError("no limit candidates were measured")
        return max(self.candidates, key=lambda m: m.images_per_s)

    @property
    def cpu_ms_per_image(self) -> float:
        """The least CPU time per image any in-process measurement needed: the efficiency limit."""
        values = [m.cpu_ms_per_image for m in [*self.candidates, *self.repeats] if not math.isnan(m.cpu_ms_per_image)]
        return min(values) if values else math.nan

    @property
    def others_cores(self) -> float:
        """Mean cores other users' processes kept busy while the best layout ran."""
        values = [m.others_cores for m in [self.best, *self.repeats] if not math.isnan(m.others_cores)]
        return statistics.fmean(values) if values else math.nan

    @property
    def images_per_s(self) -> float:
        """The overall limit: the mean of the best candidate and its repeats (see :meth:`images_per_s_at`)."""
        return statistics.fmean([self.best.images_per_s, *(m.images_per_s for m in self.repeats if m.load is None)])

    def best_for(self, load: int | None) -> Measurement:
        """The best layout for ``load`` photos in flight: one that never holds more photos than that at once.

        A candidate's ``concurrency`` is the photos its layout holds (processes × batch). 1 in flight: one
        process, batch 1, with every thread it may use; 8 in flight: a batch of 8 in one process or 4 in each of
        two; 32: any. ``None``: every candidate.
        """
        fitting = [m for m in self.candidates if load is None or (m.concurrency or 1) <= load]
        return max(fitting or self.candidates, key=lambda m: m.images_per_s)

    def images_per_s_at(self, load: int | None) -> float:
        """The limit a row at ``load`` is divided by: the mean of that load's best layout and its repeats.

        The best of several noisy candidates alone would favour a lucky run; the same layout measured again in
        every pass of the served runs at that load pulls the figure towards the layout's typical speed.
        """
        repeats = [m.images_per_s for m in self.repeats if load is not None and m.load == load]
        return statistics.fmean([self.best_for(load).images_per_s, *repeats])

    def p50_ms_at(self, load: int) -> float:
        """The in-process latency of one handle() at ``load``'s best layout (mean over it and its repeats)."""
        samples = [self.best_for(load), *(m for m in self.repeats if m.load == load)]
        return statistics.fmean(m.p50_ms for m in samples)


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when undefined."""
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


def peak(runs: list[Measurement], row: str) -> Measurement | None:
    """The run of ``row`` with the most images/s (its best concurrency)."""
    candidates = [m for m in runs if m.row == row]
    return max(candidates, key=lambda m: m.images_per_s) if candidates else None


def at(runs: list[Measurement], row: str, concurrency: int) -> Measurement | None:
    """The run of ``row`` at ``concurrency``, if measured."""
    return next((m for m in runs if m.row == row and m.concurrency == concurrency), None)


@dataclass
class Goal:
    """One target from the issue, what was measured, and whether it is met (None: not measured)."""

    name: str
    target: str
    measured: str
    met: bool | None
    note: str = ""


NOISY_CORES = 0.3  # other users' processes busier than this during a comparison: its img/s ratio is unreliable


def cpu_efficiency(m: Measurement, limit: Limit) -> float:
    """How close a row's CPU per image is to the in-process limit's (1.0: no overhead at all)."""
    return ratio(limit.cpu_ms_per_image, m.cpu_ms_per_image)


def noise_note(others: list[float]) -> str:
    """A warning when other users' processes used the machine during the compared runs."""
    values = [v for v in others if not math.isnan(v)]
    busy = statistics.fmean(values) if values else math.nan
    if math.isnan(busy) or busy <= NOISY_CORES:
        return ""
    return f"noisy: other processes kept {busy:.1f} of the cores busy meanwhile"


def _fmt_ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}×"


def added_latency(extras: dict[str, Any]) -> dict[str, Any]:
    """The paired 1-in-flight measurements by model: the run's model first, null from the serving path's."""
    path = next((d for d in extras.get("serving_path", {}).get("runs", []) if "paired" in d), {})
    return {extras.get("model", "resnet18"): extras.get("added_latency"), "null": path.get("paired"),
            "null, idle before each request": path.get("paired_idle")}


EAGER_GAIN_GOAL = 4.0  # issue 21: the full stack at the top load ≥ 4× the eager path served until now
LIMIT_GOALS = {32: 0.85, 8: 0.80}  # issue 21: the full stack ≥ this × the best-engine limit at this load
LONE_PHOTO_GOAL = 1.3  # issue 21: p50 at 1 in flight ≤ this × the in-process latency of one photo


def serving_goals(runs: list[Measurement], limit: Limit, added: dict[str, Any] | None = None) -> list[Goal]:
    """The goals about the served rows: against the limit at each load, the eager path, the prototype, direct.

    Met or not is judged on images/s, as the issues state them; the CPU-per-image ratio beside it says
    the same thing with much less noise from other users of the machine.
    """
    goals: list[Goal] = []
    ours, proto = peak(runs, "torchserve_ours"), peak(runs, "prototype")
    loads = sorted({m.concurrency for m in runs if m.row == "full_stack" and m.concurrency is not None})
    top = loads[-1] if loads else None
    full = at(runs, "full_stack", top) if top else None
    eager = at(runs, "torchserve_eager", top) if top else None
    value = ratio(full.images_per_s, eager.images_per_s) if full and eager else math.nan
    goals.append(Goal(
        "full stack vs the eager path served until now", f"≥ {EAGER_GAIN_GOAL:.1f}× eager at {top} in flight",
        "n/a" if math.isnan(value) or not full or not eager else
        f"{_fmt_ratio(value)} ({full.images_per_s:.1f} vs {eager.images_per_s:.1f} img/s; by CPU per image "
        f"{_fmt_ratio(ratio(eager.cpu_ms_per_image, full.cpu_ms_per_image))})",
        None if math.isnan(value) else value >= EAGER_GAIN_GOAL,
        noise_note([full.others_cores, eager.others_cores]) if full and eager else "",
    ))

    def vs_limit(m: Measurement | None, name: str, target: float, load: int) -> Goal:
        if m is None:
            return Goal(name, f"≥ {target:.2f}× limit at {load} in flight", "n/a", None)
        limit_value = limit.images_per_s_at(load)
        value = ratio(m.images_per_s, limit_value)
        measured = (f"{_fmt_ratio(value)} ({m.images_per_s:.1f} of {limit_value:.1f} img/s, the limit's "
                    f"{limit.best_for(load).config}; by CPU per image {_fmt_ratio(cpu_efficiency(m, limit))})")
        return Goal(name, f"≥ {target:.2f}× limit at {load} in flight", measured,
                    None if math.isnan(value) else value >= target, noise_note([m.others_cores, limit.others_cores]))

    for load, target in sorted(LIMIT_GOALS.items(), reverse=True):
        if load in loads:
            goals.append(vs_limit(at(runs, "full_stack", load), f"full stack vs limit, {load} in flight", target, load))
    if ours is not None and ours.concurrency is not None:
        handler = vs_limit(ours, "our TorchServe handler vs limit (its best load)", 0.90, ours.concurrency)
        why = gap_note(handler_gap(runs, limit), ours.concurrency)
        handler.note = "; ".join(n for n in (handler.note, why) if n)
        goals.append(handler)
    lone = at(runs, "full_stack", 1)
    if lone is not None:
        in_process = limit.p50_ms_at(1)
        value = ratio(lone.p50_ms, in_process)
        goals.append(Goal(
            "p50 of a lone photo vs in-process", f"≤ {LONE_PHOTO_GOAL:.1f}× in-process",
            f"{_fmt_ratio(value)} (full stack {lone.p50_ms:.1f} ms, in-process {in_process:.1f} ms with "
            f"{limit.best_for(1).config})",
            None if math.isnan(value) else value <= LONE_PHOTO_GOAL, noise_note([lone.others_cores]),
        ))
    full_peak = peak(runs, "full_stack")
    if proto is not None and full_peak is not None:
        value = ratio(full_peak.images_per_s, proto.images_per_s)
        goals.append(Goal(
            "full stack vs seed prototype design", "≥ 1.50× prototype",
            f"{_fmt_ratio(value)} (peak vs peak; by CPU per image "
            f"{_fmt_ratio(ratio(proto.cpu_ms_per_image, full_peak.cpu_ms_per_image))})",
            None if math.isnan(value) else value >= 1.5, noise_note([full_peak.others_cores, proto.others_cores]),
        ))
    per_c = []
    for c in loads:
        b, d = at(runs, "full_stack", c), at(runs, "torchserve_ours", c)
        if b and d:
            per_c.append((c, ratio(b.images_per_s, d.images_per_s), b.p50_ms - d.p50_ms, b, d))
    if per_c:
        top_c, top_ratio, _, b, d = per_c[-1]
        listed = ", ".join(f"{c}: {r:.2f}×" for c, r, *_ in per_c)
        goals.append(Goal(
            "bridge throughput vs TorchServe direct", "≥ 0.97× direct",
            f"{_fmt_ratio(top_ratio)} at {top_c} in flight (by load: {listed}; by CPU per image "
            f"{_fmt_ratio(ratio(d.cpu_ms_per_image, b.cpu_ms_per_image))})",
            None if math.isnan(top_ratio) else top_ratio >= 0.97,
            noise_note([b.others_cores, d.others_cores]),
        ))
        goals.append(latency_goal(per_c, added))
    else:
        goals.append(Goal("bridge throughput vs TorchServe direct", "≥ 0.97× direct", "n/a", None))
        goals.append(latency_goal([], added))
    return goals


LATENCY_GOAL_MS = 1.5  # issue 21: ≤ 1.5 ms added at p50 with 1 in flight


def latency_goal(per_c: list[tuple[int, float, float, Measurement, Measurement]],
                 added: dict[str, Any] | None) -> Goal:
    """Judged on the paired measurement (the run's model, 1 in flight, alternating) when there is one, else on the runs.

    The runs' p50s come from separate windows of a busy machine; they are listed beside it for reference.
    """
    name, target = "bridge latency added at p50", f"≤ {LATENCY_GOAL_MS:g} ms"
    by_load = ", ".join(f"{c}: {a:+.1f} ms" for c, _, a, *_ in per_c)
    model = next(iter((added or {}).values()), None)  # the run's own model comes first
    if model and model.get("added_p50_ms") is not None:
        value = float(model["added_p50_ms"])
        low, high = model["added_median_interval_95_ms"]
        null, idle = (added or {}).get("null"), (added or {}).get("null, idle before each request")
        measured = (f"{value:+.2f} ms at 1 in flight, paired over {model['pairs']} photos (p50 "
                    f"{model['bridge_p50_ms']:.1f} vs {model['direct_p50_ms']:.1f} ms; median of the pairs' differences "
                    f"{model['added_median_of_pairs_ms']:+.2f} ms, 95 % interval {low:+.2f} to {high:+.2f})"
                    + (f"; null model {null['added_p50_ms']:+.2f} ms" if null and null.get("added_p50_ms") is not None
                       else "")
                    + (f" ({idle['added_p50_ms']:+.2f} ms idle {idle['think_ms']:g} ms before each request)"
                       if idle and idle.get("added_p50_ms") is not None else "")
                    + (f"; separate runs by load: {by_load}" if by_load else ""))
        return Goal(name, target, measured, value <= LATENCY_GOAL_MS)
    if not per_c:
        return Goal(name, target, "n/a", None)
    low_c, _, value, b, d = per_c[0]
    return Goal(name, target, f"{value:+.1f} ms at {low_c} in flight (by load: {by_load})",
                None if math.isnan(value) else value <= LATENCY_GOAL_MS, noise_note([b.others_cores, d.others_cores]))


ADDED_HEADER = ("model", "idle before each request ms", "pairs", "bridge p50 ms", "direct p50 ms", "added at p50 ms",
                "median of pair differences ms", "95 % interval ms", "errors")


def added_latency_lines(added: dict[str, Any]) -> list[tuple[str, ...]]:
    """The paired 1-in-flight measurements, one line per model."""
    lines: list[tuple[str, ...]] = []
    for model, doc in added.items():
        if not doc:
            continue
        low, high = doc["added_median_interval_95_ms"]
        lines.append((model.split(",")[0], f"{doc.get('think_ms', 0):g}", str(doc["pairs"]), _num(doc["bridge_p50_ms"], 2),
                      _num(doc["direct_p50_ms"], 2), signed(doc["added_p50_ms"]), signed(doc["added_median_of_pairs_ms"]),
                      f"{signed(low)} to {signed(high)}", str(doc["errors"])))
    return lines


def signed(value: float | None, missing: str = "-") -> str:
    """``value`` in ms with its sign (``+1.93``), ``missing`` when there is none."""
    return missing if value is None else f"{value:+.2f}"


def recording_goals(recording: dict[str, Any]) -> list[Goal]:
    """The goals about the recording path (see :mod:`benchmarks.throughput.recording`)."""
    goals = []
    pg = recording.get("postgres", {}).get("bridge_batch")
    goals.append(Goal(
        "results into PostgreSQL (PostgresSink.insert)", "≥ 20,000 results/s",
        f"{pg['per_s']:,.0f} results/s (batches of {pg['batch']})" if pg else "n/a",
        None if not pg else pg["per_s"] >= 20_000,
    ))
    influx = recording.get("influxdb", {}).get("bridge_batch")
    goals.append(Goal(
        "points into InfluxDB (InfluxSink.write)", "≥ 50,000 points/s",
        f"{influx['per_s']:,.0f} points/s (batches of {influx['batch']})" if influx else "n/a",
        None if not influx else influx["per_s"] >= 50_000,
    ))
    slow = recording.get("slow_database")
    if slow:
        fast, slowest = slow["fast"], slow["slow_postgres_and_influxdb"] if "slow_postgres_and_influxdb" in slow else slow["slow_postgres"]
        added = slowest["p50_ms"] - fast["p50_ms"]
        delay_ms = 1000.0 * max(slowest["store_delay_s"], slowest["sink_delay_s"])
        goals.append(Goal(
            "latency a slow database adds to a prediction", "none: no wait for a write (+≤ 2 ms p50)",
            f"{added:+.1f} ms at p50, slowest answer {slowest['max_ms']:.0f} ms while every write took "
            f"{delay_ms:.0f} ms (instant writers: p50 {fast['p50_ms']:.1f} ms, max {fast['max_ms']:.0f} ms)",
            added <= 2.0 and slowest["max_ms"] < delay_ms / 2,
        ))
    return goals


# --- rendering -------------------------------------------------------------------------------------------------


def _num(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


TABLE_HEADER = ("row", "in flight", "img/s", "p50 ms", "p95 ms", "p99 ms", "batch", "CPU cores", "CPU ms/img", "× limit",
                "× limit by CPU", "errors", "others' cores")


def table_rows(limit: Limit, runs: list[Measurement]) -> list[tuple[str, ...]]:
    """One tuple of cells per line of the main table: at each load, the limit's best layout for it, then each row."""
    loads = sorted({m.concurrency for m in runs if m.concurrency is not None}) or [None]
    lines: list[tuple[str, ...]] = []
    for load in loads:
        best = limit.best_for(load)
        samples = [best, *(m for m in limit.repeats if load is not None and m.load == load)]
        value = limit.images_per_s_at(load)
        lines.append((
            f"{ROWS['limit']} [{best.config}, mean of {len(samples)}]", "-" if load is None else str(load), _num(value),
            _num(statistics.fmean(m.p50_ms for m in samples)), _num(statistics.fmean(m.p95_ms for m in samples)),
            _num(statistics.fmean(m.p99_ms for m in samples)),
            best.config.split("batch ")[-1].split()[0] if "batch " in best.config else "-",
            _num(statistics.fmean(m.cpu_cores for m in samples), 2),
            _num(statistics.fmean(m.cpu_ms_per_image for m in samples)), "1.00", "1.00",
            str(sum(m.errors for m in samples)), _num(statistics.fmean(m.others_cores for m in samples), 2),
        ))
        for row in TABLE_ROWS:
            for m in (m for m in runs if m.row == row and m.concurrency == load):
                lines.append((
                    ROWS[row], str(m.concurrency), _num(m.images_per_s), _num(m.p50_ms), _num(m.p95_ms), _num(m.p99_ms),
                    _num(m.mean_batch), _num(m.cpu_cores, 2), _num(m.cpu_ms_per_image),
                    _num(ratio(m.images_per_s, limit.images_per_s_at(m.concurrency)), 2),
                    _num(cpu_efficiency(m, limit), 2), str(m.errors), _num(m.others_cores, 2),
                ))
    return lines


def render_text(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    """A fixed-width table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) if lines else len(header[i]) for i in range(len(header))]

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *(fmt(line) for line in lines)])


def render_markdown(header: tuple[str, ...], lines: list[tuple[str, ...]]) -> str:
    """The same table in Markdown (for the README)."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def limit_lines(limit: Limit) -> list[tuple[str, ...]]:
    """The limit's candidate layouts, then the best one's repeats, for the limit sub-table."""
    best = limit.best
    marked = [(m, "best" if m is best else "") for m in limit.candidates] + [(m, "repeat") for m in limit.repeats]
    return [
        (m.config, _num(m.images_per_s), _num(m.p50_ms), _num(m.p99_ms), _num(m.cpu_cores, 2), _num(m.others_cores, 2), mark)
        for m, mark in marked
    ]


LIMIT_HEADER = ("in-process layout", "img/s", "batch p50 ms", "batch p99 ms", "CPU cores", "others' cores", "")
GOAL_HEADER = ("goal", "target", "measured", "met", "note")


def goal_lines(goals: list[Goal]) -> list[tuple[str, ...]]:
    """One line per goal; a verdict drawn from noisy runs carries a question mark."""
    lines: list[tuple[str, ...]] = []
    for g in goals:
        verdict = {True: "yes", False: "NO", None: "n/a"}[g.met]
        if g.met is not None and g.note.startswith("noisy"):
            verdict += "?"
        lines.append((g.name, g.target, g.measured, verdict, g.note))
    return lines


def _finite(value: Any) -> Any:
    """JSON has no NaN: None instead."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def results_document(
    machine: dict[str, Any],
    settings: dict[str, Any],
    limit: Limit,
    runs: list[Measurement],
    extras: dict[str, Any],
    recording: dict[str, Any] | None,
    more_goals: list[Goal] | None = None,
) -> dict[str, Any]:
    """Everything measured, as one JSON-able document (ratios and goals included; ``more_goals`` after the served
    rows', e.g. the shadowing row's)."""
    value = limit.images_per_s
    goals = (serving_goals(runs, limit, added_latency(extras)) + cost_goals(runs, extras.get("serving_path"))
             + (oip_goals(runs) if any(m.row in OIP_MODES for m in runs) else []) + (more_goals or [])
             + (recording_goals(recording) if recording else []))
    return _finite({
        "machine": machine,
        "settings": settings,
        "limit": {
            "images_per_s": value,
            "by_load": {str(c): {"images_per_s": limit.images_per_s_at(c), "layout": limit.best_for(c).config,
                                 "p50_ms": limit.p50_ms_at(c)}
                        for c in sorted({m.concurrency for m in runs if m.concurrency is not None})},
            "cpu_ms_per_image": limit.cpu_ms_per_image,
            "others_cores": limit.others_cores,
            "best": limit.best.to_json(),
            "candidates": [m.to_json() for m in limit.candidates],
            "repeats": [m.to_json() for m in limit.repeats],
        },
        "runs": [{**m.to_json(), "ratio_to_limit": ratio(m.images_per_s, limit.images_per_s_at(m.concurrency)),
                  "ratio_to_limit_by_cpu": cpu_efficiency(m, limit)} for m in runs],
        "oip_vs_predictions": oip_comparison(runs),
        "handler_gap": handler_gap(runs, limit),
        **extras,
        "recording": recording,
        "goals": [asdict(g) for g in goals],
    })


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write the document atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".partial")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


COLD_HEADER = ("server", "start → ready s", "start → first prediction s")


def cold_start_lines(cold: dict[str, dict[str, float]]) -> list[tuple[str, ...]]:
    """One line per server started: from spawning its processes to healthy, and to the first 200."""
    return [(ROWS.get(row, row), _num(c.get("ready_s", math.nan)), _num(c.get("first_prediction_s", math.nan)))
            for row, c in cold.items()]


MEMORY_HEADER = ("server", "process", "count", "RSS MiB each", "PSS MiB each", "PSS MiB total")


def memory_lines(memory: dict[str, list[dict[str, Any]]]) -> list[tuple[str, ...]]:
    """Memory per kind of process of each server (mean per process when there are several)."""
    lines: list[tuple[str, ...]] = []
    for row, processes in memory.items():
        by_role: dict[str, list[dict[str, Any]]] = {}
        for p in processes:
            by_role.setdefault(p["role"], []).append(p)
        for role, items in by_role.items():
            rss = statistics.fmean(p["rss_mb"] for p in items)
            pss = statistics.fmean(p["pss_mb"] for p in items)
            lines.append((ROWS.get(row, row), role, str(len(items)), _num(rss, 0), _num(pss, 0),
                          _num(sum(p["pss_mb"] for p in items), 0)))
    return lines


RECORDING_HEADER = ("recording path", "batch", "per second", "notes")


def recording_lines(recording: dict[str, Any]) -> list[tuple[str, ...]]:
    """The recording benchmark's figures, one line each."""
    lines: list[tuple[str, ...]] = []
    for name, r in recording.get("postgres", {}).items():
        lines.append(("PostgreSQL: PostgresSink.insert", str(r["batch"]), f"{r['per_s']:,.0f} results",
                      f"{r['records']:,} rows in {r['seconds']:.2f} s"))
    for name, r in recording.get("influxdb", {}).items():
        lines.append(("InfluxDB: InfluxSink.write", str(r["batch"]), f"{r['per_s']:,.0f} points",
                      f"{r['points']:,} points in {r['seconds']:.2f} s"))
    for name, r in recording.get("spool", {}).items():
        lines.append(("journal: Spool.append (fdatasync)", str(r["batch"]), f"{r['per_s']:,.0f} records",
                      f"{r['append_p50_ms']:.2f} ms per append (p50), {r['append_p99_ms']:.2f} ms (p99)"))
    for name, r in recording.get("slow_database", {}).items():
        lines.append((
            f"Recorder submit → durable, {name.replace('_', ' ')}", "-", f"{r['rate_per_s']:.0f} records",
            (f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms "
             f"(PostgreSQL write {r['store_delay_s']:g} s, InfluxDB write {r['sink_delay_s']:g} s)"),
        ))
    return lines


# --- the serving path's own cost (CPU per request by process, idle, null model, hey) -------------------------------

BRIDGE_ROLE = "bridge"
FRONTEND_ROLE = "TorchServe frontend (Java)"
WORKER_ROLE = "TorchServe worker"
COST_GOAL_CONCURRENCY = 8  # the load for the bridge-vs-frontend CPU goal


def role_ms_per_request(m: Measurement, role: str) -> float:
    """CPU ms per answered request of one kind of process (from the /proc breakdown of ``m``'s window)."""
    seconds = m.cpu_breakdown.get(role)
    return seconds * 1000.0 / m.ok if seconds is not None and m.ok else math.nan


PROCESS_COST_HEADER = ("row", "in flight", "img/s", "bridge CPU ms/req", "frontend CPU ms/req",
                       "workers CPU ms/req", "bridge ÷ frontend")


def handler_gap(runs: list[Measurement], limit: Limit, cores: int | None = None) -> list[dict[str, float]]:
    """Where our handler's gap to the limit goes, at each load: the machine's cores, and CPU per image.

    images/s = cores the workers kept busy ÷ worker CPU per image, and the limit's images/s likewise; so
    × limit = (workers' cores ÷ the limit's cores) × (the limit's CPU per image ÷ the workers'). The cores the
    workers did not get went to TorchServe's frontend, the load generator (the limit has none), other users'
    processes, or stayed idle (nothing for a worker to do: batches not overlapping).
    """
    total = float(cores or os.cpu_count() or 1)
    out = []
    for m in sorted((m for m in runs if m.row == "torchserve_ours"), key=lambda m: m.concurrency or 0):
        measured = [limit.best_for(m.concurrency), *(r for r in limit.repeats if r.load == m.concurrency)]
        limit_cores = statistics.fmean(r.cpu_cores for r in measured)
        limit_ms = statistics.fmean(r.cpu_ms_per_image for r in measured)
        images = m.images_per_s * m.window_s
        worker_s = m.cpu_breakdown.get(WORKER_ROLE, math.nan)
        workers = worker_s / m.window_s
        frontend = m.cpu_breakdown.get(FRONTEND_ROLE, math.nan) / m.window_s
        client = m.client_cpu_s / m.window_s
        others = 0.0 if math.isnan(m.others_cores) else m.others_cores
        worker_ms = 1000.0 * worker_s / images if images else math.nan
        out.append({
            "concurrency": float(m.concurrency or 0), "images_per_s": m.images_per_s,
            "ratio_to_limit": ratio(m.images_per_s, limit.images_per_s_at(m.concurrency)),
            "workers_cores": workers, "frontend_cores": frontend, "load_generator_cores": client,
            "others_cores": others, "idle_cores": max(0.0, total - workers - frontend - client - others),
            "limit_cores": limit_cores, "worker_cpu_ms_per_image": worker_ms, "limit_cpu_ms_per_image": limit_ms,
            "ratio_from_cores": ratio(workers, limit_cores), "ratio_from_cpu_per_image": ratio(limit_ms, worker_ms),
        })
    return out


GAP_HEADER = ("in flight", "img/s", "× limit", "workers' cores", "frontend cores", "load generator cores",
              "others' cores", "idle cores", "worker CPU ms/img", "limit CPU ms/img", "× from cores",
              "× from CPU per image")


def handler_gap_lines(gap: list[dict[str, float]]) -> list[tuple[str, ...]]:
    """:func:`handler_gap` as table lines."""
    return [(f"{g['concurrency']:.0f}", _num(g["images_per_s"]), _fmt_ratio(g["ratio_to_limit"]),
             f"{_num(g['workers_cores'], 2)} of the limit's {_num(g['limit_cores'], 2)}", _num(g["frontend_cores"], 2),
             _num(g["load_generator_cores"], 2), _num(g["others_cores"], 2), _num(g["idle_cores"], 2),
             _num(g["worker_cpu_ms_per_image"]), _num(g["limit_cpu_ms_per_image"]), _fmt_ratio(g["ratio_from_cores"]),
             _fmt_ratio(g["ratio_from_cpu_per_image"])) for g in gap]


def gap_note(gap: list[dict[str, float]], concurrency: int | None) -> str:
    """One sentence for the goal line: where the peak's gap went."""
    g = next((g for g in gap if g["concurrency"] == (concurrency or 0)), None)
    if g is None:
        return ""
    return (f"where the rest went: the workers had {g['workers_cores']:.2f} of the limit's {g['limit_cores']:.2f} cores "
            f"(TorchServe's frontend {g['frontend_cores']:.2f}, the load generator {g['load_generator_cores']:.2f}, "
            f"others {g['others_cores']:.2f}, idle {g['idle_cores']:.2f}) and spent "
            f"{_fmt_ratio(ratio(g['worker_cpu_ms_per_image'], g['limit_cpu_ms_per_image']))} its CPU per image")


def process_cost_lines(runs: list[Measurement]) -> list[tuple[str, ...]]:
    """CPU per request of the bridge, TorchServe's frontend and its workers, for the rows that have them."""
    lines: list[tuple[str, ...]] = []
    for row in ("torchserve_stock", "torchserve_ours", "full_stack", *OIP_ROWS):
        for m in sorted((m for m in runs if m.row == row), key=lambda m: m.concurrency or 0):
            bridge, frontend = role_ms_per_request(m, BRIDGE_ROLE), role_ms_per_request(m, FRONTEND_ROLE)
            lines.append((ROWS[row], str(m.concurrency), _num(m.images_per_s), _num(bridge, 2), _num(frontend, 2),
                          _num(role_ms_per_request(m, WORKER_ROLE), 1), _num(ratio(bridge, frontend), 2)))
    return lines


SERVING_PATH_HEADER = ("model", "path", "load generator", "in flight", "req/s", "p50 ms", "bridge CPU ms/req",
                       "frontend CPU ms/req", "workers CPU ms/req", "req per CPU-second", "bridge RSS MiB",
                       "frontend RSS MiB")
PATHS = {"bridge": "bridge → TorchServe", "bridge_hey": "bridge → TorchServe", "direct": "TorchServe alone",
         "direct_hey": "TorchServe alone"}


def serving_path_lines(cost: dict[str, Any]) -> list[tuple[str, ...]]:
    """One line per run of the serving-path measurements (``bridge_cost`` documents and hey runs)."""
    lines: list[tuple[str, ...]] = []
    for doc in cost.get("runs", []):
        for name, path in PATHS.items():
            run = doc.get(name)
            if not run:
                continue
            per, rss = run["cpu_ms_per_request"], run["rss_mib"]
            lines.append((doc["model"], path, run["tool"], str(doc["concurrency"]), _num(run["requests_per_s"]),
                          _num(_nan_none(run.get("p50_ms"))), _num(_nan_none(per.get("bridge")), 2),
                          _num(_nan_none(per.get("frontend")), 2), _num(_nan_none(per.get("workers")), 2),
                          _num(_nan_none(run.get("requests_per_core_s")), 0), _num(_nan_none(rss.get("bridge")), 0),
                          _num(_nan_none(rss.get("frontend")), 0)))
    return lines


IDLE_HEADER = ("process (no traffic)", "% of a core")


def idle_lines(cost: dict[str, Any]) -> list[tuple[str, ...]]:
    """Idle CPU of each process of the serving path."""
    idle: dict[str, float] = next((d["idle_percent_of_core"] for d in cost.get("runs", []) if "idle_percent_of_core" in d), {})
    return [(role, _num(value, 2)) for role, value in idle.items()]


def _nan_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def cost_goals(runs: list[Measurement], cost: dict[str, Any] | None) -> list[Goal]:
    """Bridge CPU per request ≤ 0.5× the frontend's (same run, 8 in flight, uncached); idle bridge ≤ 1 % of a core."""
    goals: list[Goal] = []
    full = at(runs, "full_stack", COST_GOAL_CONCURRENCY) or peak(runs, "full_stack")
    if full is None:
        goals.append(Goal("bridge CPU per request vs TorchServe's frontend", "≤ 0.50× frontend", "n/a", None))
    else:
        bridge, frontend = role_ms_per_request(full, BRIDGE_ROLE), role_ms_per_request(full, FRONTEND_ROLE)
        value = ratio(bridge, frontend)
        goals.append(Goal(
            "bridge CPU per request vs TorchServe's frontend", "≤ 0.50× frontend",
            f"{_fmt_ratio(value)} (bridge {_num(bridge, 2)} ms, frontend {_num(frontend, 2)} ms per request; "
            f"{full.concurrency} in flight, uncached, same run)",
            None if math.isnan(value) else value <= 0.5, noise_note([full.others_cores]),
        ))
        # issue 21: the bridge must stay small beside a model that got 5-10× cheaper
        model = role_ms_per_request(full, WORKER_ROLE) / max(1, full.photos_per_request)
        value = ratio(bridge, model)
        goals.append(Goal(
            "bridge CPU per request vs the model's CPU per image", "≤ 0.10× the model's",
            f"{_fmt_ratio(value)} (bridge {_num(bridge, 2)} ms, TorchServe workers {_num(model, 2)} ms per image; "
            f"{full.concurrency} in flight, same run)",
            None if math.isnan(value) else value <= 0.10, noise_note([full.others_cores]),
        ))
    idle: dict[str, float] | None = next((d["idle_percent_of_core"] for d in (cost or {}).get("runs", []) if "idle_percent_of_core" in d), None)
    if idle is None or "bridge" not in idle:
        goals.append(Goal("idle bridge", "≤ 1 % of a core", "n/a", None))
    else:
        goals.append(Goal("idle bridge", "≤ 1 % of a core",
                          f"{idle['bridge']:.2f} % (TorchServe's frontend {idle.get('frontend', math.nan):.2f} %)",
                          idle["bridge"] <= 1.0))
    return goals


# --- the Open Inference Protocol beside /predictions (same bridge, same photos, same run) --------------------------

OIP_GOAL_THROUGHPUT = 0.95  # OIP binary images/s ≥ this × /predictions' at the same load
OIP_GOAL_CPU = 1.10  # bridge CPU per photo, OIP binary ≤ this × /predictions'


def oip_comparison(runs: list[Measurement]) -> list[dict[str, Any]]:
    """``/predictions`` (the full stack row) and each OIP row at every load: images/s, latency, bridge CPU.

    Per request and per photo (they differ for the rows of several photos per request); the ratios are to the
    ``/predictions`` row at the same load, measured in the same passes. Empty when no OIP row ran.
    """
    out: list[dict[str, Any]] = []
    if not any(m.row in OIP_MODES for m in runs):
        return out
    for c in sorted({m.concurrency or 0 for m in runs if m.row in ("full_stack", *OIP_ROWS)}):
        base = at(runs, "full_stack", c)
        base_cpu = role_ms_per_request(base, BRIDGE_ROLE) if base else math.nan
        for row in ("full_stack", *OIP_ROWS):
            m = at(runs, row, c)
            if m is None:
                continue
            per_request = role_ms_per_request(m, BRIDGE_ROLE)
            per_image = per_request / m.photos_per_request
            out.append({
                "row": row, "concurrency": c, "photos_per_request": m.photos_per_request,
                "requests_in_flight": max(1, c // m.photos_per_request), "images_per_s": m.images_per_s,
                "p50_ms": m.p50_ms, "p99_ms": m.p99_ms, "bridge_cpu_ms_per_request": per_request,
                "bridge_cpu_ms_per_image": per_image,
                "images_per_s_vs_predictions": ratio(m.images_per_s, base.images_per_s) if base else math.nan,
                "bridge_cpu_per_image_vs_predictions": ratio(per_image, base_cpu),
                "errors": m.errors, "others_cores": m.others_cores,
            })
    return out


OIP_HEADER = ("row", "photos in flight", "photos/req", "img/s", "× /predictions", "p50 ms/req", "p99 ms/req",
              "bridge CPU ms/req", "bridge CPU ms/photo", "× /predictions (CPU/photo)", "errors", "others' cores")


def oip_lines(runs: list[Measurement]) -> list[tuple[str, ...]]:
    """The OIP comparison as table lines, ``/predictions`` first at each load."""
    return [(
        "full stack, /predictions" if e["row"] == "full_stack" else ROWS[e["row"]], str(e["concurrency"]),
        str(e["photos_per_request"]), _num(e["images_per_s"]), _num(e["images_per_s_vs_predictions"], 2),
        _num(e["p50_ms"]), _num(e["p99_ms"]), _num(e["bridge_cpu_ms_per_request"], 2),
        _num(e["bridge_cpu_ms_per_image"], 2), _num(e["bridge_cpu_per_image_vs_predictions"], 2), str(e["errors"]),
        _num(e["others_cores"], 2),
    ) for e in oip_comparison(runs)]


def oip_goals(runs: list[Measurement]) -> list[Goal]:
    """OIP binary (tritonclient's way) as fast as ``/predictions`` and about as cheap for the bridge."""
    names = ("OIP binary vs /predictions, images/s", "bridge CPU per photo, OIP binary vs /predictions")
    targets = (f"≥ {OIP_GOAL_THROUGHPUT:.2f}× /predictions", f"≤ {OIP_GOAL_CPU:.2f}× /predictions")
    common = sorted({m.concurrency or 0 for m in runs if m.row == "oip_binary"}
                    & {m.concurrency or 0 for m in runs if m.row == "full_stack"})
    if not common:
        return [Goal(n, t, "n/a", None) for n, t in zip(names, targets)]
    c = COST_GOAL_CONCURRENCY if COST_GOAL_CONCURRENCY in common else common[-1]
    entries = {e["row"]: e for e in oip_comparison(runs) if e["concurrency"] == c}
    binary, base = entries["oip_binary"], entries["full_stack"]
    others = [binary["others_cores"], base["others_cores"]]

    def also(key: str) -> str:
        parts = [f"{label} {_fmt_ratio(entries[row][key])}" for row, label in
                 (("oip_json", "base64 JSON"), ("oip_binary_x8", "8 photos/request")) if row in entries]
        return f"; {', '.join(parts)}" if parts else ""

    speed = binary["images_per_s_vs_predictions"]
    cpu = binary["bridge_cpu_per_image_vs_predictions"]
    return [
        Goal(names[0], targets[0],
             f"{_fmt_ratio(speed)} at {c} in flight ({_num(binary['images_per_s'])} vs {_num(base['images_per_s'])} "
             f"img/s{also('images_per_s_vs_predictions')})",
             None if math.isnan(speed) else speed >= OIP_GOAL_THROUGHPUT, noise_note(others)),
        Goal(names[1], targets[1],
             f"{_fmt_ratio(cpu)} at {c} in flight ({_num(binary['bridge_cpu_ms_per_image'], 2)} vs "
             f"{_num(base['bridge_cpu_ms_per_image'], 2)} ms{also('bridge_cpu_per_image_vs_predictions')})",
             None if math.isnan(cpu) else cpu <= OIP_GOAL_CPU, noise_note(others)),
    ]
