"""The reliability report: figures the tests record, and the one page ``make reliability`` prints.

Tests record figures through the ``report`` fixture (one test) or ``reliability_report`` (a scenario
shared by a module's tests); each record is one JSON line in ``<dir>/figures.jsonl``. Pass or fail comes
from pytest's JUnit XML (``<dir>/junit.xml``), so a test that records nothing still has its line.

    python -m tests.reliability.report [DIR]      # DIR: .state/reliability by default; exit 1 unless GREEN
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
REPORT_DIR = Path(os.environ.get("RELIABILITY_REPORT_DIR", REPO_ROOT / ".state" / "reliability"))
WIDTH = 118

# Figures shown first, in this order, with these names; any other figure follows as name=value.
ORDER = ("inputs", "sent", "acknowledged", "failed", "lost", "duplicated", "recovery_s")
NAMES = {"recovery_s": "recovery", "ack_max_s": "slowest ack"}


class ReliabilityReport:
    """Appends figure records (one JSON object per line); safe to share between tests of one session."""

    def __init__(self, directory: Path = REPORT_DIR) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "figures.jsonl"

    def record(self, module: str, check: str, test: str | None = None, **figures: Any) -> None:
        """One check's figures: ``module`` groups them with the module's tests, ``test`` with one test."""
        line = {"module": module, "test": test, "check": check, "figures": figures, "at": time.time()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=str) + "\n")


@dataclass
class TestResult:
    name: str
    outcome: str  # PASS, FAIL, ERROR, XFAIL, SKIP
    seconds: float
    message: str = ""


@dataclass
class Module:
    name: str
    tests: list[TestResult] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # module-level figure records
    test_figures: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


def read_junit(path: Path) -> tuple[dict[str, Module], float]:
    modules: dict[str, Module] = {}
    if not path.exists():
        return modules, 0.0
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(float(s.get("time", 0)) for s in suites)
    for case in root.iter("testcase"):
        module = case.get("classname", "?")
        outcome, message = "PASS", ""
        for child in case:
            if child.tag == "failure":
                outcome, message = "FAIL", child.get("message", "")
            elif child.tag == "error":
                outcome, message = "ERROR", child.get("message", "")
            elif child.tag == "skipped":
                xfail = child.get("type") == "pytest.xfail"
                outcome, message = ("XFAIL" if xfail else "SKIP"), child.get("message", "")
        modules.setdefault(module, Module(module)).tests.append(
            TestResult(case.get("name", "?"), outcome, float(case.get("time", 0)), message)
        )
    return modules, total


def read_figures(path: Path, modules: dict[str, Module]) -> None:
    if not path.exists():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        module = modules.setdefault(record["module"], Module(record["module"]))
        if record.get("test"):
            module.test_figures[record["test"]].append(record)
        else:
            module.checks.append(record)


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return re.sub(r"/(?:tmp|work|var|home|root)/[^\s;,)]+", "<path>", value)  # temp dirs: noise
    if isinstance(value, dict):
        return ", ".join(f"{k}×{v}" for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.0f}"
    return "–" if value is None else str(value)


def format_figures(figures: dict[str, Any]) -> str:
    keys = [k for k in ORDER if k in figures] + [k for k in figures if k not in ORDER]
    parts = []
    for key in keys:
        value = format_value(figures[key])
        timed = key.endswith("_s")
        suffix = " s" if timed and figures[key] is not None else ""
        name = NAMES.get(key, (key[:-2] if timed else key).replace("_", " "))
        parts.append(f"{name} {value}{suffix}")
    return " · ".join(parts)


def wrap(text: str, indent: str) -> list[str]:
    more = " " * (len(indent) + 2)
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=more) or [indent]


def humanise(test_name: str) -> str:
    name, _, param = test_name.partition("[")
    words = name.removeprefix("test_").replace("_", " ")
    return f"{words} [{param}" if param else words


def grouped(tests: list[TestResult]) -> list[list[TestResult]]:
    """Tests in order, the parameters of one test function together."""
    groups: dict[str, list[TestResult]] = {}
    for test in tests:
        groups.setdefault(test.name.partition("[")[0], []).append(test)
    return list(groups.values())


def render_group(group: list[TestResult], module: Module) -> list[str]:
    """One line per test; a parametrized test on one line (plus its cases that did not pass when mixed)."""
    lines: list[str] = []
    outcomes = {t.outcome for t in group}
    if len(group) > 1:
        params = ", ".join(t.name.partition("[")[2].rstrip("]") for t in group)
        passed = sum(t.outcome == "PASS" for t in group)
        outcome = outcomes.pop() if len(outcomes) == 1 else "MIXED"
        detail = f"{passed}/{len(group)} cases passed" + (f": {params}" if len(params) <= 70 else "")
        name = humanise(group[0].name.partition("[")[0])
        lines += wrap(f"{name} — {detail}  ({sum(t.seconds for t in group):.1f} s)", f"  {outcome:<5} ")
        listed = [t for t in group if outcome == "MIXED" and t.outcome != "PASS"]
    else:
        listed = group
    shown: set[str] = set()
    for test in group:
        if test in listed:
            lines += wrap(f"{humanise(test.name)}  ({test.seconds:.1f} s)", f"  {test.outcome:<5} ")
        for record in module.test_figures.get(test.name, []):
            lines += wrap(format_figures(record["figures"]), "          ")
        message = test.message.splitlines()[0][:300] if test.message else ""
        if test.outcome != "PASS" and message and message not in shown:
            shown.add(message)
            lines += wrap(message, "          ↳ ")
    return lines


def verdict(modules: dict[str, Module]) -> tuple[bool, list[str]]:
    """GREEN only when there are results and every test passed; otherwise why not, one line per test.

    A skipped test checked nothing, an error means the check never ran, an xfail is a known product bug:
    none of them is a pass, so each keeps the page from being GREEN and is named here.
    """
    why = [f"{t.outcome} {name.rsplit('.', 1)[-1]}::{t.name}" + (f" — {t.message.splitlines()[0][:120]}"
                                                                 if t.message else "")
           for name in sorted(modules) for t in modules[name].tests if t.outcome != "PASS"]
    ran = any(m.tests for m in modules.values())
    return ran and not why, why if ran else ["no test results (junit.xml missing or empty)"]


def render(directory: Path) -> tuple[str, bool]:
    """The page, and whether it is GREEN (every test passed: no failure, error, skip or xfail)."""
    modules, total_s = read_junit(directory / "junit.xml")
    read_figures(directory / "figures.jsonl", modules)
    counts: dict[str, int] = defaultdict(int)
    for module in modules.values():
        for test in module.tests:
            counts[test.outcome] += 1
    ok, not_green = verdict(modules)
    summary = ", ".join(f"{n} {o.lower()}" for o, n in sorted(counts.items()) if n)
    lines = [
        "=" * WIDTH,
        (f"RELIABILITY REPORT  {time.strftime('%Y-%m-%d %H:%M')}  ·  {'GREEN' if ok else 'NOT GREEN'}  ·  "
         f"{summary or 'no results'}  ·  {total_s / 60:.1f} min"),
        "sent / acknowledged / failed: requests as the clients saw them (acknowledged = 2xx with X-Request-Id);",
        "lost / duplicated: acknowledged results missing from / repeated in PostgreSQL (or InfluxDB for points);",
        "recovery: seconds from the repair to service again (or to an empty backlog)."
        + ("  XFAIL: a known product bug, reason given." if counts["XFAIL"] else ""),
        "=" * WIDTH,
    ]
    if not ok:
        lines.append("NOT GREEN because:")
        for reason in not_green:
            lines += wrap(reason, "  ")
        lines += ["=" * WIDTH]
    for name in sorted(modules):
        module = modules[name]
        title = name.rsplit(".", 1)[-1].removeprefix("test_").replace("_", " ")
        doc = module.checks[0]["check"] if module.checks else title
        passed = sum(t.outcome == "PASS" for t in module.tests)
        lines.append(f"{doc}  [{name.rsplit('.', 1)[-1]}.py: {passed}/{len(module.tests)} passed]")
        for check in module.checks:
            label = check["figures"].pop("scenario", None)
            if label:
                lines.append(f"    {label}:")
            lines += wrap(format_figures(check["figures"]), "      " if label else "    ")
        for group in grouped(module.tests):
            lines += render_group(group, module)
        lines.append("")
    return "\n".join(lines), ok


def main(argv: list[str] | None = None) -> int:
    """Print the page; exit status 0 only when it is GREEN, 1 otherwise (a skip, xfail or error is no pass)."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else REPORT_DIR
    page, ok = render(directory)
    print(page)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
