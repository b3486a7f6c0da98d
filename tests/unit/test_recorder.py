"""The recorder: nothing lost while PostgreSQL is down, nothing duplicated on replay, InfluxDB bounded."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bridge.app import create_app
from bridge.metrics_sink import event_time_ns, to_point
from bridge.recorder import Policy, Recorder, RecordingFailed, Sink, SinkUnavailable
from bridge.records import InferenceRecord, answered_version, score_map, summarise_output
from bridge.settings import Settings
from bridge.spool import Batch, Spool
from tests.unit.fakes import STOCK_ANSWER, FakeInflux, FlakyStore, as_jsonb, make_record
from tests.unit.test_bridge_app import PHOTO, PREDICTION, FakeTorchServe, write_keys


@pytest.fixture
def parts(tmp_path: Path) -> tuple[FlakyStore, FakeInflux, Spool]:
    return FlakyStore(), FakeInflux(), Spool(tmp_path / "spool")


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition``; ``timeout_s`` is a bound on a busy 2-core machine, not a measurement."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.01)


def make_recorder(parts: tuple[FlakyStore, FakeInflux, Spool]) -> Recorder:
    store, influx, spool = parts
    return Recorder([store, influx], spool, batch_size=50, retry_interval_s=0.05)


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
    # Bound: the writer notices the outage on its next batch (flush interval 0.01 s).
    wait_for(lambda: recorder.stats()["store_failures"] > 0, 10, "the writer noticing PostgreSQL is down")
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
    recorder = Recorder([store, influx], spool, retry_interval_s=10)
    recorder.start()
    records = [make_record() for _ in range(25)]
    for r in records:
        recorder.submit(r)
    recorder.stop()

    on_disk = [r for segment in spool.segments() for r in spool.read(segment)]
    assert sorted(r.request_id for r in on_disk) == sorted(r.request_id for r in records)

    # A new recorder (the bridge restarted) replays them once PostgreSQL is back.
    store.down.clear()
    again = Recorder([store, influx], Spool(tmp_path / "spool"), retry_interval_s=0.05)
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
    # Bound: PostgreSQL's writer is not slowed by InfluxDB being down; 10 s is generous, not a measurement.
    wait_for(lambda: len(store.rows) == 150, 10, "an InfluxDB outage must not touch PostgreSQL recording")
    wait_for(lambda: recorder.health()["points_buffered"] == 100, 10, "the buffer filling to its bound")
    assert recorder.stats()["points_dropped"] == 50

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


def test_a_label_to_score_answer_has_its_highest_label_on_top() -> None:
    body = json.dumps(as_jsonb(STOCK_ANSWER)).encode()  # the stock image_classifier's answer, in any key order
    output, label, score, error = summarise_output(200, body, "application/json")
    assert (label, score, error) == ("warm", 0.875, None) and output == STOCK_ANSWER
    assert summarise_output(200, b'{"b": 1, "a": 2}', None)[1:3] == ("a", 2.0)
    assert summarise_output(200, b'{"a": 0.5, "b": 0.5}', None)[1:3] == ("a", 0.5), "a tie: the first"
    for not_scores in (b"{}", b'{"a": 0.5, "b": "x"}', b'{"a": 0.5, "cached": true}', b'{"a": 1e999}',
                       b'{"a": 0.5, "b": null}', b'[{"a": 0.5}]', b'{"a": {"b": 0.5}}'):
        assert summarise_output(200, not_scores, None)[1:3] == (None, None), not_scores
    assert summarise_output(400, b'{"a": 0.5}', None)[1:3] == (None, None), "an error has no top label"


def test_a_score_map_is_ordered_highest_first_with_its_values_as_they_came() -> None:
    ordered = score_map(as_jsonb(STOCK_ANSWER))
    assert ordered == STOCK_ANSWER and list(ordered or {}) == list(STOCK_ANSWER)
    assert score_map({"a": 1, "b": 3}) == {"b": 3, "a": 1} and isinstance((score_map({"a": 1}) or {})["a"], int)
    assert score_map({"predictions": [], "model": {}}) is None and score_map([1.0]) is None


def test_the_answer_names_its_version_only_when_it_is_a_version_name() -> None:
    assert answered_version({"model": {"name": "m", "version": "2.0"}}) == "2.0"
    for output in (STOCK_ANSWER, {"model": {"version": 2}}, {"model": {"version": "1.0\r\nX-Evil: 1"}},
                   {"model": "2.0"}, [{"model": {"version": "2.0"}}], None):
        assert answered_version(output) is None, output


class DiskFullSpool(Spool):
    def append(self, records: list[InferenceRecord]) -> Batch:
        raise OSError(28, "No space left on device")


def test_journal_failure_falls_back_to_postgres_or_fails_the_ack(tmp_path: Path) -> None:
    store = FlakyStore()
    recorder = Recorder([store, FakeInflux()], DiskFullSpool(tmp_path / "spool"))
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


def test_line_protocol_survives_lone_surrogates_and_line_breaks() -> None:
    from bridge.metrics_sink import to_line

    point = {
        "measurement": "inference",
        "tags": {"model": "m\ud800", "status": "200"},
        "fields": {"request_id": "a\nb\r\udfff"},
        "time": 1,
    }
    line = to_line(point)
    assert "\n" not in line and "\r" not in line, "a line break would end the point and corrupt the batch"
    assert line.encode("utf-8") == b'inference,model=m?,status=200 request_id="a b ?" 1'


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
    recorder = Recorder([store, influx, archive, audit], spool, retry_interval_s=0.05)
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
    # Bound: both lanes act on their next batch (flush interval 0.01 s); 10 s protects only against a hang.
    wait_for(lambda: recorder.stats()["archive_failures"] > 0 and len(store.rows) >= 50, 10,
             "the archive's outage noticed while PostgreSQL keeps storing")
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


# --- the answer never leaves before its record is durable ------------------------------------------------------

def test_the_journal_fsyncs_the_segment_and_its_directory_before_the_future_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []  # ("write" | "sync", what the file descriptor names), in order
    for name in ("fsync", "fdatasync", "write"):
        real = getattr(os, name)

        def counting(fd: int, *args: object, real: Callable[..., object] = real, name: str = name) -> object:
            events.append(("write" if name == "write" else "sync", os.readlink(f"/proc/self/fd/{fd}")))
            return real(fd, *args)

        monkeypatch.setattr(os, name, counting)
    spool = Spool(tmp_path / "spool")
    recorder = Recorder([FlakyStore()], spool)
    record = make_record()
    future = recorder.submit(record)  # before start(): the callback below is attached before it can resolve
    seen_at_resolution: list[list[tuple[str, str]]] = []
    future.add_done_callback(lambda _: seen_at_resolution.append(list(events)))
    recorder.start()
    try:
        future.result(timeout=5)
    finally:
        recorder.stop()

    (then,) = seen_at_resolution
    directory = str(spool.directory.resolve())
    in_segment = [i for i, (_, path) in enumerate(then) if Path(path).parent == Path(directory)
                  and path.endswith(".jsonl")]
    writes = [i for i in in_segment if then[i][0] == "write"]
    assert writes, f"the record was not written to a segment before the answer could leave: {then}"
    segment = then[writes[-1]][1]
    assert ("sync", segment) in then[writes[-1]:], "the segment's data fsync'd after its last write"
    assert ("sync", directory) in then[:writes[0]], "the new segment's name (its directory) fsync'd before use"


def test_batches_share_the_open_segment_with_one_sync_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def counting(fd: int, real: Callable[[int], None] = real) -> None:
            synced.append(os.readlink(f"/proc/self/fd/{fd}"))
            real(fd)

        monkeypatch.setattr(os, name, counting)
    spool = Spool(tmp_path / "spool", segment_age_s=0.3)
    first = spool.append([make_record()])
    second = spool.append([make_record(), make_record()])
    assert second.segment == first.segment and second.end > first.end
    directory = str(spool.directory.resolve())
    assert synced == [directory, str(first.segment), str(first.segment)], "one directory sync per segment only"
    assert [len(spool.read(first.segment))] == [3]
    time.sleep(0.35)
    third = spool.append([make_record()])
    assert third.segment != first.segment, "a segment is sealed once it reaches its age"
    assert synced[-2:] == [directory, str(third.segment)], "a new segment's name is synced before it is used"
    assert spool.sealed(first.segment) and not spool.sealed(third.segment)
    spool.close()


def test_an_idle_journal_seals_its_segment_and_deletes_it_once_stored(tmp_path: Path) -> None:
    store, spool = FlakyStore(), Spool(tmp_path / "spool", segment_age_s=0.2)
    recorder = Recorder([store], spool)
    recorder.start()
    try:
        record = make_record()
        recorder.submit(record).result(timeout=5)
        assert recorder.wait_idle(5)
        wait_for(lambda: not spool.segments(), 5, "the idle segment sealed and deleted")
        assert record.request_id in store.rows and not spool.is_open()
    finally:
        recorder.stop()


def test_a_live_writers_open_segment_is_never_adopted(tmp_path: Path) -> None:
    shared = tmp_path / "shared-spool"
    writer = Spool(shared, segment_age_s=60)
    segment = writer.append([make_record()]).segment
    adopter_store = FlakyStore()
    adopter = Recorder([adopter_store], Spool(shared), retry_interval_s=0.05, adopt_after_s=0.1)
    adopter.start()
    try:
        time.sleep(0.5)  # well past adopt_after_s: the segment is old, but its writer still appends to it
        assert segment.exists() and not adopter_store.rows, "a segment still being appended to was adopted"
        later = make_record()
        assert writer.append([later]).segment == segment
        writer.close()
        wait_for(lambda: later.request_id in adopter_store.rows, 5, "the segment adopted once its writer is gone")
    finally:
        adopter.stop()


def test_a_failed_append_is_never_replayed_nor_appended_after(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    kept = make_record()
    first = spool.append([kept])
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        spool.append([make_record()])
    monkeypatch.setattr(os, "fdatasync", real)
    assert first.segment.stat().st_size == first.end, "the unacknowledged batch was cut off the segment"
    assert spool.sealed(first.segment)
    after = spool.append([make_record()])
    assert after.segment != first.segment, "nothing is appended to a segment after a failed write"
    assert [r.request_id for r in spool.read(first.segment)] == [kept.request_id]
    spool.close()


class GatedSpool(Spool):
    """A journal that takes as long as the test says."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, records: list[InferenceRecord]) -> Batch:
        self.entered.set()
        self.release.wait(30)
        return super().append(records)


def bridge_with(spool: Spool, store: FlakyStore, tmp_path: Path) -> tuple[TestClient, FakeTorchServe, Recorder]:
    """The bridge's app with a fake TorchServe, ``store`` as PostgreSQL and ``spool`` as its journal."""
    key_file = tmp_path / "key_file.json"
    write_keys(key_file)
    fake = FakeTorchServe(key_file)
    recorder = Recorder([store, FakeInflux()], spool)
    settings = Settings(torchserve_key_file=key_file, spool_dir=spool.directory, cache=False, telemetry_interval_s=0)
    app = create_app(settings, recorder=recorder, torchserve_transport=httpx.MockTransport(fake), run_jobs=False)
    return TestClient(app), fake, recorder


def test_a_slow_journal_holds_the_answer_until_the_record_is_on_disk(tmp_path: Path) -> None:
    spool, store = GatedSpool(tmp_path / "spool"), FlakyStore()
    client, fake, _ = bridge_with(spool, store, tmp_path)
    with client:
        answered = threading.Event()
        responses: list[httpx.Response] = []

        def send() -> None:
            responses.append(client.put("/predictions/m", content=PHOTO))
            answered.set()

        sender = threading.Thread(target=send)
        sender.start()
        assert spool.entered.wait(10), "the record never reached the journal"
        assert len(fake.requests) == 1, "the model ran"
        # How long we watch the answer being held: any answer before the journal returns is a broken promise.
        assert not answered.wait(0.5), "the answer left before its record was journaled"
        spool.release.set()
        assert answered.wait(10)
        sender.join()
        (response,) = responses
        assert response.status_code == 200 and response.json() == PREDICTION
        # Segments first: one is deleted only once PostgreSQL has its records.
        on_disk = {r.request_id for segment in spool.segments() for r in spool.read(segment)}
        assert response.headers["x-request-id"] in on_disk | set(store.rows)


def test_a_failing_journal_with_postgres_down_is_a_503_and_no_prediction(tmp_path: Path) -> None:
    store = FlakyStore()
    store.down.set()
    client, fake, recorder = bridge_with(DiskFullSpool(tmp_path / "spool"), store, tmp_path)
    with client:
        response = client.put("/predictions/m", content=PHOTO)
        assert len(fake.requests) == 1, "the model ran; its answer must still not leave unrecorded"
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        body = response.json()
        assert body["type"] == "RecordingUnavailable" and "predictions" not in body and "tabby" not in response.text
        assert recorder.stats()["journal_failures"] == 1
    assert store.rows == {}


def test_a_failing_journal_without_a_durable_sink_fails_the_ack(tmp_path: Path) -> None:
    recorder = Recorder([FakeInflux()], DiskFullSpool(tmp_path / "spool"))
    recorder.start()
    try:
        with pytest.raises(RecordingFailed):
            recorder.submit(make_record()).result(timeout=5)
    finally:
        recorder.stop()


def test_a_segment_left_by_a_removed_bridge_on_a_shared_spool_is_adopted(tmp_path: Path) -> None:
    shared = tmp_path / "shared-spool"
    survivor_store = FlakyStore()
    survivor = Recorder([survivor_store], Spool(shared), retry_interval_s=0.05,
                        adopt_after_s=0.3)
    survivor.start()
    try:
        # What a bridge killed after acknowledging (journaling) but before its PostgreSQL insert leaves behind.
        orphans = [make_record() for _ in range(3)]
        removed = Spool(shared)
        segment = removed.append(orphans).segment
        removed.close()  # the bridge is gone, and with it its lock on the segment it was appending to
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
    bridges = [Recorder([store], Spool(shared), retry_interval_s=0.05, adopt_after_s=0.2)
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
