"""Reliability and security checks against the real stack (../shared/RELIABILITY.md).

The shared stack comes from the integration tier's ``live_stack`` fixture (started when not running, never
reconfigured); checks that need another configuration start private instances (tests/reliability/instances.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The integration tier's fixtures, imported (not re-declared) so both tiers use the same stack handling.
from tests.integration.conftest import LiveStack, json_body, live_stack, photos  # noqa: F401

RELIABILITY_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if RELIABILITY_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


# --- Faults under load (test_faults_*.py): a private stack, started and stopped here ------------------
# PostgreSQL, InfluxDB and TorchServe of their own on free ports (tests/reliability/services.py), so
# stopping, killing and freezing them never touches the shared stack; bridges are started per scenario.

import shutil
from collections.abc import Callable, Iterator

from tests.reliability.report import REPORT_DIR, ReliabilityReport
from tests.reliability.services import FaultStack, make_root


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    """Private PostgreSQL (database ``serving``), InfluxDB and TorchServe (resnet18 + the slow archives)."""
    root = make_root()
    stack = FaultStack(root)
    try:
        stack.start()
        yield stack
    finally:
        stack.close()
        stack.keep_logs(REPORT_DIR / "logs")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def base_photo() -> bytes:
    """A real photo (JPEG); the load makes every request's bytes unique from it."""
    from archive_scripts.photos import sample_photo

    return sample_photo("chelsea")


@pytest.fixture(scope="session")
def reliability_report() -> ReliabilityReport:
    """Figures for ``make reliability``'s page (``.state/reliability/figures.jsonl``)."""
    return ReliabilityReport(REPORT_DIR)


@pytest.fixture
def report(reliability_report: ReliabilityReport, request: pytest.FixtureRequest) -> Callable[..., None]:
    """``report(check, **figures)``: figures of this one test on the reliability page."""

    def record(check: str, **figures: object) -> None:
        reliability_report.record(request.module.__name__, check, test=request.node.name, **figures)

    return record
