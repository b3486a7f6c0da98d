"""Where and when a benchmark's figures were measured: one description for every results file."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(load_start: float) -> dict[str, Any]:
    """CPU, cores, date and the load average at the start (``load_start``) and now, the end."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_start": round(load_start, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
    }


def write_results(out: str | Path, report: dict[str, Any], markdown: str) -> None:
    """``OUT.json`` (the report) and ``OUT.md`` (its table) beside each other; says where they went."""
    base = Path(out)
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown)
    print(f"\nwrote {base.with_suffix('.json')} and {base.with_suffix('.md')}")
