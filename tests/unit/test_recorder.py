"""The recorder: nothing lost while PostgreSQL is down, nothing duplicated on replay, InfluxDB bounded."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from bridge.metrics_sink import event_time_ns, to_point
from bridge.recorder import Policy, Recorder, RecordingFailed, Sink, SinkUnavailable
from bridge.records import InferenceRecord, summarise_output
from bridge.spool import Spool
from tests.unit.fakes import FakeInflux, FlakyStore, make_record


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FlakyStore, FakeInflux, Spool]:
    return FlakyStore(), FakeInflux(), Spool(tmp_path / "spool")


def make_recorder(parts: tuple[FlakyStore, FakeInflux, Spool]) -> Recorder:
    store, influx, spool = parts
    return Recorder([store, influx], spool, batch_size=50, flush_interval_s=0.01, retry_interval_s=0.05)


def test_records_reach_both_sinks(parts: tuple[FlakyStore, FakeInflux, Spool]) -> None:
    store, influx, _ = parts
    recorder = make_recorder(parts)
    recorder.start()
    records = [make_record() for _ in range(120)]
    for r in records:
        recorder.submit(r)
    assert recorder.wait_idle(5)
    recorder.stop()
    assert set(store.rows) == {r.request_id for r in records}
    assert len(influx.points) == 120


def test_postgres_outage_spools_then_replays_exactly_once(parts: tuple[FlakyStore, FakeInflux, Spool]) -> None:
    store, _, spool = parts
    recorder = make_recorder(parts)
    recorder.start()
    before = [make_record() for _ in range(30)]
    for r in before:
        recorder.submit(r)
    assert recorder.wait_idle(5)

    store.down.set()
    during = [make_record() for _ in range(200)]
    futures = [recorder.submit(r) for r in during]
    for future in futures:
        future.result(timeout=5)  # acknowledged: durable on disk although PostgreSQL is down
    on_disk = {r.request_id for segment in spool.segments() for r in spool.read(segment)}
    assert {r.request_id for r in during} <= on_disk
    deadline = 50
    while recorder.stats()["store_failures"] == 0 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    assert str(recorder.health()["postgres"]).startswith("unavailable")

    store.down.clear()
    assert recorder.wait_idle(10), recorder.health()
    recorder.stop()
    assert set(store.rows) == {r.request_id for r in before + during}
    assert spool.backlog() == (0, 0)
    assert recorder.stats()["replayed"] == 200


def test_stop_while_postgres_is_down_keeps_records_on_disk(tmp_path: Path) -> None:
    store, influx, spool = FlakyStore(), FakeInflux(), Spool(tmp_path / "spool")
    store.down.set()
    recorder = Recorder([store, influx], spool, flush_interval_s=0.01, retry_interval_s=10)
    recorder.start()
    records = [make_record() for _ in range(25)]
    for r in records:
        recorder.submit(r)
    recorder.stop()

    on_disk = [r for segment in spool.segments() for r in spool.read(segment)]
    assert sorted(r.request_id for r in on_disk) == sorted(r.request_id for r in records)

    # A new recorder (the bridge restarted) replays them once PostgreSQL is back.
    store.down.clear()
    again = Recorder([store, influx], Spool(tmp_path / "spool"), flush_interval_s=0.01, retry_interval_s=0.05)
    again.start()
    assert again.wait_idle(5)
    again.stop()
    assert set(store.rows) == {r.request_id for r in records}


def test_influx_outage_buffers_within_bound_and_counts_drops(parts: tuple[FlakyStore, FakeInflux, Spool]) -> None:
    store, influx, _ = parts
    influx.down.set()
    influx.buffer_limit = 100
    recorder = make_recorder(parts)
    recorder.start()
    for _ in range(150):
        recorder.submit(make_record())
    threading.Event().wait(0.3)
    assert recorder.stats()["points_dropped"] == 50
    assert len(store.rows) == 150, "an InfluxDB outage must not touch PostgreSQL recording"

    influx.down.clear()
    assert recorder.wait_idle(5)
    recorder.stop()
    assert len(influx.points) == 100


def test_rejected_points_are_dropped_and_counted_not_retried(parts: tuple[FlakyStore, FakeInflux, Spool]) -> None:
    _, influx, _ = parts
    influx.reject = True
    recorder = make_recorder(parts)
    recorder.start()
    for _ in range(10):
        recorder.submit(make_record())
    assert recorder.wait_idle(5)
    recorder.stop()
    assert recorder.stats()["points_rejected"] == 10
    assert influx.points == []


def test_spool_skips_a_torn_last_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    records = [make_record() for _ in range(3)]
    spool.append(records)
    segment = spool.segments()[0]
    segment.write_text(segment.read_text() + '{"request_id": "torn')
    assert [r.request_id for r in spool.read(segment)] == [r.request_id for r in records]


def test_replayed_point_lands_on_the_same_timestamp() -> None:
    record = make_record()
    assert to_point(record)["time"] == to_point(record)["time"] == event_time_ns(record)
    other = InferenceRecord(**{**record.__dict__, "request_id": str(uuid.uuid4())})
    assert event_time_ns(other) // 1000 == event_time_ns(record) // 1000
    assert "request_id" not in to_point(record)["tags"], "a request id tag would explode series cardinality"


def test_summarise_output() -> None:
    ok = b'{"predictions": [{"label": "tabby", "score": 0.7}], "model": {"name": "m", "version": "2.0"}}'
    output, label, score, error = summarise_output(200, ok, "application/json")
    assert (label, score, error) == ("tabby", 0.7, None) and output["model"]["version"] == "2.0"
    _, label, _, error = summarise_output(400, b'{"code": 400, "message": "not an image"}', "application/json")
    assert label is None and error == "not an image"
    output, _, _, error = summarise_output(503, b"upstream exploded", None)
    assert output == {"raw": "upstream exploded"} and error == "upstream exploded"


class DiskFullSpool(Spool):
    def append(self, records: list[InferenceRecord]) -> Path:
        raise OSError(28, "No space left on device")


def test_journal_failure_falls_back_to_postgres_or_fails_the_ack(tmp_path: Path) -> None:
    store = FlakyStore()
    recorder = Recorder([store, FakeInflux()], DiskFullSpool(tmp_path / "spool"), flush_interval_s=0.01)
    recorder.start()
    try:
        ok = make_record()
        recorder.submit(ok).result(timeout=5)
        assert ok.request_id in store.rows, "with the journal failing, PostgreSQL must have taken the record"
        store.down.set()
        with pytest.raises(RecordingFailed):
            recorder.submit(make_record()).result(timeout=5)
        assert recorder.stats()["journal_failures"] == 2
    finally:
        store.down.clear()
        recorder.stop()


def test_line_protocol_escapes_and_keeps_field_types() -> None:
    from bridge.metrics_sink import to_line

    point = {
        "measurement": "inference",
        "tags": {"model": "my model,v=1", "version": "", "status": "200"},
        "fields": {"latency_ms": 1.5, "count": 1, "request_id": 'a"b\\c', "ok": True},
        "time": 123,
    }
    assert to_line(point) == (
        'inference,model=my\\ model\\,v\\=1,status=200 latency_ms=1.5,count=1i,request_id="a\\"b\\\\c",ok=true 123'
    )


class ArchiveSink(Sink):
    """A second durable sink, added as a new one would be: a name, a policy, ``write``."""

    name, policy = "archive", Policy.DURABLE

    def __init__(self) -> None:
        self.rows: dict[str, InferenceRecord] = {}
        self.down = threading.Event()

    def write(self, records: list[InferenceRecord]) -> None:
        if self.down.is_set():
            raise SinkUnavailable("archive is down")
        for r in records:
            self.rows.setdefault(r.request_id, r)


class AuditSink(Sink):
    name, policy = "audit", Policy.BEST_EFFORT

    def __init__(self) -> None:
        self.seen: list[str] = []

    def write(self, records: list[InferenceRecord]) -> None:
        self.seen.extend(r.request_id for r in records)


def test_an_added_sink_gets_its_thread_health_and_counters_from_its_class(tmp_path: Path) -> None:
    store, influx, archive, audit = FlakyStore(), FakeInflux(), ArchiveSink(), AuditSink()
    spool = Spool(tmp_path / "spool")
    recorder = Recorder([store, influx, archive, audit], spool, flush_interval_s=0.01, retry_interval_s=0.05)
    recorder.start()
    assert {"recorder-postgres", "recorder-influxdb", "recorder-archive", "recorder-audit"} <= {
        t.name for t in threading.enumerate()
    }
    before = [make_record() for _ in range(20)]
    for r in before:
        recorder.submit(r)
    assert recorder.wait_idle(5)

    archive.down.set()
    during = [make_record() for _ in range(30)]
    for r in during:
        recorder.submit(r).result(timeout=5)
    deadline = 50
    while (recorder.stats()["archive_failures"] == 0 or len(store.rows) < 50) and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    health = recorder.health()
    assert str(health["archive"]).startswith("unavailable") and health["postgres"] == "ok"
    assert spool.segments(), "a segment stays until every durable sink has it"
    assert {r.request_id for r in during} <= set(store.rows), "one durable sink down must not hold up another"

    archive.down.clear()
    assert recorder.wait_idle(10), recorder.health()
    recorder.stop()
    everything = {r.request_id for r in before + during}
    assert set(archive.rows) == set(store.rows) == everything
    assert store.inserts == len(everything), "the healthy durable sink got each record once"
    assert sorted(audit.seen) == sorted(everything)
    health = recorder.health()
    assert health["audit"] == "ok" and health["audit_written"] == 50 and health["audit_buffered"] == 0
    assert health["archive_replayed"] == 30 and health["stored"] == 50


def test_sink_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        Recorder([FlakyStore(), FlakyStore()], Spool(tmp_path))


def test_a_segment_left_by_a_removed_bridge_on_a_shared_spool_is_adopted(tmp_path: Path) -> None:
    shared = tmp_path / "shared-spool"
    survivor_store = FlakyStore()
    survivor = Recorder([survivor_store], Spool(shared), flush_interval_s=0.01, retry_interval_s=0.05,
                        adopt_after_s=0.3)
    survivor.start()
    try:
        # What a bridge killed after acknowledging (journaling) but before its PostgreSQL insert leaves behind.
        orphans = [make_record() for _ in range(3)]
        segment = Spool(shared).append(orphans)
        time.sleep(0.1)
        assert segment.exists(), "a young segment may be its live writer's: not adopted yet"
        deadline = time.monotonic() + 5
        while segment.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert {r.request_id for r in orphans} <= set(survivor_store.rows)
        assert not segment.exists() and survivor.stats()["replayed"] == 3
    finally:
        survivor.stop()


def test_two_bridges_on_one_spool_write_every_record_once_each(tmp_path: Path) -> None:
    shared = tmp_path / "shared-spool"
    store = FlakyStore()
    bridges = [Recorder([store], Spool(shared), flush_interval_s=0.01, retry_interval_s=0.05, adopt_after_s=0.2)
               for _ in range(2)]
    for bridge in bridges:
        bridge.start()
    records = [make_record() for _ in range(200)]
    futures = [bridges[i % 2].submit(r) for i, r in enumerate(records)]
    for future in futures:
        future.result(5)
    assert all(bridge.wait_idle(5) for bridge in bridges)
    for bridge in bridges:
        bridge.stop()
    assert set(store.rows) == {r.request_id for r in records} and not Spool(shared).segments()
