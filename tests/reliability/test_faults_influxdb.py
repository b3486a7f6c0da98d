"""Fault: InfluxDB down, frozen and rejecting points (RELIABILITY.md) — inference unaffected.

Three clients predict through a private bridge while the private influxd is

* down (SIGTERM, restarted 6 s later), with a small point buffer (``BRIDGE_INFLUX_BUFFER_POINTS=20``):
  points wait in the bounded buffer, the overflow is dropped and counted, the rest is flushed on recovery;
* frozen (SIGSTOP for 8 s; the client's 3 s timeout fires): nothing dropped, everything flushed after SIGCONT;
* rejecting (database ``rejecting`` whose ``inference.latency_ms`` was first written as a string, so every
  point of the bridge gets 400 "field type conflict"): the points are dropped and counted once, and the
  bridge sends nothing more — no retry loop (InfluxDB's own ``writeReq`` counter stays still).

Every point carries its request id (a field), so what InfluxDB holds is checked point by point.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.reliability.load import Load, Outcome, PingMonitor, between, settled_after, tally, wait_until
from tests.reliability.services import FaultStack, PrivateBridge, PrivateInflux

pytestmark = pytest.mark.reliability

CHECK = "InfluxDB down / frozen / rejecting points"
BUFFER = 20
# A prediction while InfluxDB is away takes no longer than this: one that waited for InfluxDB would take the
# client's 3 s timeout or the outage itself.
SERVING_S = 2.0
FLOWING = 6  # predictions served before the fault
REJECTING_DB = "rejecting"


@dataclass
class Run:
    outcomes: list[Outcome]
    fault_done: float
    recover_at: float
    samples: PingMonitor
    flush_s: float
    stats: dict[str, Any]  # the bridge's recording counters at the end
    stored_ids: list[str]  # request ids of this bridge's points found in InfluxDB
    extra: dict[str, Any]

    def during(self) -> list[Outcome]:
        return between(self.outcomes, self.fault_done, self.recover_at)

    def request_ids(self) -> set[str]:
        return {o.request_id for o in self.outcomes if o.request_id}


def influx_ids(influx: PrivateInflux, database: str, ours: set[str]) -> list[str]:
    return [rid for rid in influx.field_values("request_id", "inference", database) if rid in ours]


def write_requests(influx: PrivateInflux) -> int:
    """InfluxDB's own count of /write requests since it started."""
    for series in influx.query("SHOW STATS")["results"][0]["series"]:
        if series["name"] == "httpd":
            return int(dict(zip(series["columns"], series["values"][0]))["writeReq"])
    raise AssertionError("no httpd statistics")


def outage(stack: FaultStack, photo: bytes, report: Any, name: str, fault: Callable[[], object],
           recover: Callable[[], object], down_s: float, database: str = "serving", **settings: Any) -> Run:
    stack.ensure_healthy()
    bridge: PrivateBridge = stack.bridge(f"influx-{name.split()[0]}", influx_database=database, **settings)
    bridge.start()
    extra: dict[str, Any] = {}
    try:
        load = Load(bridge.url, photo, threads=3, duration_s=60, tag=name)
        with load, PingMonitor(bridge.url, load, period_s=0.25) as monitor:
            wait_until(lambda: load.served() >= FLOWING, 60, "the load served before the fault",
                       "predictions (and their points) are flowing when InfluxDB goes away")
            fault()
            fault_done = load.elapsed()
            time.sleep(down_s)
            recover_at = load.elapsed()
            recover()
            time.sleep(3)  # load after the repair: its points must be written as before
            load.stop()
        flush_s = bridge.wait_recorded(timeout_s=90, points=True)
        stats = bridge.recording()
        if database == REJECTING_DB:
            # Quiet now: any further /write would be the bridge retrying rejected points.
            before = write_requests(stack.influx)
            time.sleep(5)  # a window to show an absence: a retry loop would write within it (no condition to await)
            extra.update(writes_in_5s_after=write_requests(stack.influx) - before,
                         rejected_5s_later=bridge.recording()["points_rejected"])
        ours = {o.request_id for o in load.outcomes if o.request_id}
        stored = influx_ids(stack.influx, database, ours)
    finally:
        bridge.stop()
        stack.ensure_healthy()
    run = Run(load.outcomes, fault_done, recover_at, monitor, flush_s, stats, stored, extra)
    during = run.during()
    report.record(
        __name__, CHECK, scenario=name, **tally(load.outcomes),
        during=len(during), during_max_s=round(max((o.latency_s for o in during), default=0), 2),
        points_submitted=stats["submitted"], points_written=stats["points_written"],
        points_dropped=stats["points_dropped"], points_rejected=stats["points_rejected"],
        buffered_max=max(monitor.recording("points_buffered"), default=None),
        points_in_influxdb=len(stored), lost=stats["submitted"] - len(set(stored)) - stats["points_dropped"]
        - stats["points_rejected"], duplicated=len(stored) - len(set(stored)),
        recovery_s=settled_after(monitor, recover_at, lambda r: r["influxdb"] == "ok"), flush_s=round(flush_s, 2),
        **extra,
    )
    return run


@pytest.fixture(scope="module")
def down(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    influx = fault_stack.influx
    return outage(fault_stack, base_photo, reliability_report, f"down (SIGTERM 6 s, buffer {BUFFER} points)",
                  influx.stop, influx.start, 6, influx_buffer_points=BUFFER)


@pytest.fixture(scope="module")
def frozen(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    influx = fault_stack.influx
    return outage(fault_stack, base_photo, reliability_report, "frozen (SIGSTOP 8 s)", influx.freeze, influx.thaw, 8)


@pytest.fixture(scope="module")
def rejecting(fault_stack: FaultStack, base_photo: bytes, reliability_report: Any) -> Run:
    influx = fault_stack.influx
    influx.create_database(REJECTING_DB)
    seeded = influx.write(f'inference,model=resnet18,version=1.0,status=200,source=sync latency_ms="not a number" '
                          f"{time.time_ns()}", REJECTING_DB)
    assert seeded.status_code == 204, seeded.text
    return outage(fault_stack, base_photo, reliability_report, 'rejecting (400 "field type conflict")',
                  lambda: None, lambda: None, 5, database=REJECTING_DB, telemetry_interval_s=0)


def check_inference_unaffected(run: Run) -> None:
    during = run.during()
    assert during and all(o.acknowledged for o in run.outcomes), Counter(o.label for o in run.outcomes)
    slow = sorted(round(o.latency_s, 1) for o in during if o.latency_s > SERVING_S)
    assert slow == [], f"{len(slow)} predictions took longer than {SERVING_S} s"


@pytest.mark.parametrize("scenario", ["down", "frozen", "rejecting"])
def test_inference_unaffected(scenario: str, request: pytest.FixtureRequest) -> None:
    check_inference_unaffected(request.getfixturevalue(scenario))


def test_down_buffers_within_the_bound_counts_drops_and_flushes_the_rest(down: Run) -> None:
    states = set(down.samples.recording("influxdb", down.fault_done + 3.5, down.recover_at))
    assert states == {"unavailable (buffering)"}, states
    assert max(down.samples.recording("points_buffered")) <= BUFFER
    assert down.stats["points_dropped"] > 0, "the outage never filled the buffer"
    assert down.stats["points_buffered"] == 0 and down.stats["points_rejected"] == 0
    assert len(down.stored_ids) == len(set(down.stored_ids)), "a point stored twice"
    assert len(down.stored_ids) == down.stats["submitted"] - down.stats["points_dropped"], (
        "every point is either in InfluxDB or counted as dropped")


def test_frozen_loses_nothing_and_flushes_everything(frozen: Run) -> None:
    assert max(frozen.samples.recording("points_buffered", frozen.fault_done, frozen.recover_at)) > 0
    assert frozen.stats["points_dropped"] == 0 and frozen.stats["points_buffered"] == 0
    assert sorted(frozen.stored_ids) == sorted(frozen.request_ids()), "every inference's point is in InfluxDB"
    # How long the flush took is a measurement (flush_s on the report); wait_recorded bounds it (90 s).


def test_rejected_points_are_dropped_counted_once_and_never_retried(rejecting: Run) -> None:
    stats = rejecting.stats
    assert stats["points_rejected"] == stats["submitted"] > 0, stats
    assert stats["points_written"] == 0 and stats["points_buffered"] == 0 and stats["points_dropped"] == 0, stats
    assert stats["influxdb"] == "ok", "a rejection is not an outage"
    assert rejecting.stored_ids == []
    assert rejecting.extra["rejected_5s_later"] == stats["points_rejected"]
    assert rejecting.extra["writes_in_5s_after"] == 0, "the bridge kept sending rejected points"
