"""The PNG the README shows: images/s and latency against requests in flight, the limit at each load as a line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.throughput.report import ROWS, TABLE_ROWS

COLOURS = {"prototype": "#9e9e9e", "torchserve_stock": "#ff9800", "torchserve_eager": "#6d4c41",
           "torchserve_ours": "#1e88e5", "full_stack": "#43a047",
           "oip_binary": "#8e24aa", "oip_json": "#e53935", "oip_binary_x8": "#00897b"}


def draw(document: dict[str, Any], path: Path) -> None:
    """Two panels from the results document: throughput (with the limit) and p50/p99 latency."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = document["runs"]
    by_load = document["limit"].get("by_load") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for row in TABLE_ROWS:
        mine = sorted((r for r in runs if r["row"] == row), key=lambda r: r["concurrency"])
        if not mine:
            continue
        xs = [r["concurrency"] for r in mine]
        left.plot(xs, [r["images_per_s"] for r in mine], marker="o", color=COLOURS[row], label=ROWS[row])
        right.plot(xs, [r["p50_ms"] for r in mine], marker="o", color=COLOURS[row], label=f"{ROWS[row]} p50")
        right.plot(xs, [r["p99_ms"] for r in mine], marker="x", linestyle="--", color=COLOURS[row], alpha=0.7)
    if by_load:  # the best engine in-process, each load's best layout
        loads = sorted(by_load, key=int)
        left.plot([int(c) for c in loads], [by_load[c]["images_per_s"] for c in loads], color="black", linestyle=":",
                  marker=".", label="limit (in-process, best layout per load)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["concurrency"] for r in runs}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("requests in flight (photos, for the OIP row of 8 photos per request)")
        ax.grid(True, alpha=0.3)
    left.set_ylabel("images/s")
    left.set_ylim(bottom=0)
    left.set_title(f"throughput ({document.get('settings', {}).get('model_name', 'resnet18')})")
    left.legend(fontsize=8, loc="lower right")
    right.set_yscale("log")
    right.set_ylabel("latency, ms (o p50, x p99)")
    right.set_title("latency")
    machine = document.get("machine", {})
    others = [r["others_cores"] for r in runs if r.get("others_cores") is not None]
    noise = f"; other users' processes kept {sum(others) / len(others):.1f} cores busy on average" if others else ""
    fig.suptitle(
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('date', '')} "
        f"(load average at start {machine.get('load_average_start', '?')}{noise})",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
