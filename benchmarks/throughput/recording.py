"""The recording path alone: how fast the bridge's writers go, and what a slow database adds to a prediction.

- PostgreSQL: :class:`bridge.storage.PostgresSink.insert` in batches (the recorder's batch size, 500, and a
  larger one), into the benchmark's own database.
- InfluxDB: :class:`bridge.metrics_sink.InfluxSink.write` in batches of 5,000 (what the recorder's points
  thread sends), into the benchmark's own database.
- The journal: :meth:`bridge.spool.Spool.append` (one segment per batch, fsync'd with its directory) for
  batch sizes 1, 32 and 500, on the same file system as the stack's spool.
- A slow database: the bridge's :class:`bridge.recorder.Recorder` with a durable sink whose ``write`` sleeps 1 s
  (and a best-effort sink that does too), records submitted at a steady rate; the time from ``submit()`` to its
  future resolving (the moment a prediction may be answered) compared with instant writers.
"""

from __future__ import annotations

import hashlib
import statistics
import threading
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.throughput.report import percentile
from bridge.metrics_sink import InfluxSink
from bridge.recorder import Policy, Recorder, Sink
from bridge.records import InferenceRecord
from bridge.spool import Spool
from bridge.storage import PostgresSink
from stack.services import log

LABELS = ("tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat")


def make_records(count: int, start: datetime | None = None) -> list[InferenceRecord]:
    """``count`` realistic inference records (unique ids, top-5 output JSON like a classifier's)."""
    start = start or datetime.now(UTC)
    records = []
    for i in range(count):
        predictions = [{"label": label, "index": 281 + k, "score": round(0.5 / (k + 1), 6)} for k, label in enumerate(LABELS)]
        records.append(InferenceRecord(
            request_id=str(uuid.uuid4()), created_at=start + timedelta(microseconds=i), model="resnet18",
            model_version="1.0", source="sync", status=200, latency_ms=40.0 + (i % 50), batch_size=1 + i % 8,
            input_sha256=hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), input_bytes=70_000 + i % 200_000,
            top_label=LABELS[0], top_score=0.5,
            output={"predictions": predictions, "model": {"name": "resnet18", "version": "1.0"}, "batch_size": 1 + i % 8},
            error=None,
        ))
    return records


def _chunks(records: list[InferenceRecord], size: int) -> list[list[InferenceRecord]]:
    return [records[i:i + size] for i in range(0, len(records), size)]


def bench_postgres(dsn: str, count: int, batch: int) -> dict[str, Any]:
    """Results/s through PostgresSink.insert in batches of ``batch`` (table emptied first)."""
    import psycopg2

    records = make_records(count)
    store = PostgresSink.connect(dsn)
    store.start()
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.execute("TRUNCATE inferences")
    started = time.perf_counter()
    inserted = sum(store.insert(chunk) for chunk in _chunks(records, batch))
    elapsed = time.perf_counter() - started
    store.close()
    return {"batch": batch, "records": count, "inserted": inserted, "seconds": elapsed, "per_s": count / elapsed}


def bench_influx(host: str, port: int, database: str, count: int, batch: int = 5000) -> dict[str, Any]:
    """Points/s through InfluxSink.write in batches of ``batch``."""
    records = make_records(count)
    sink = InfluxSink(host, port, database, timeout_s=30.0)
    sink.write(make_records(10))  # creates the database, opens the HTTP session
    started = time.perf_counter()
    for chunk in _chunks(records, batch):
        sink.write(chunk)
    elapsed = time.perf_counter() - started
    sink.close()
    return {"batch": batch, "points": count, "seconds": elapsed, "per_s": count / elapsed}


def bench_spool(directory: Path, count: int, batch: int) -> dict[str, Any]:
    """Records/s and ms per append through Spool.append (one fdatasync per batch into an open segment)."""
    spool = Spool(directory)
    records = make_records(count)
    times = []
    started = time.perf_counter()
    for chunk in _chunks(records, batch):
        t0 = time.perf_counter()
        spool.append(chunk)
        times.append((time.perf_counter() - t0) * 1000.0)
    elapsed = time.perf_counter() - started
    spool.close()
    for segment in spool.segments():
        segment.unlink()
    return {
        "batch": batch, "records": count, "seconds": elapsed, "per_s": count / elapsed,
        "append_p50_ms": percentile(times, 50), "append_p99_ms": percentile(times, 99),
    }


class SleepyStore(Sink):
    """A durable sink whose every write takes ``delay_s`` (a slow or overloaded PostgreSQL)."""

    name, policy = "postgres", Policy.DURABLE

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.written = 0

    def write(self, records: list[InferenceRecord]) -> None:
        """Sleep, then pretend to have inserted everything."""
        time.sleep(self.delay_s)
        self.written += len(records)


class SleepySink(Sink):
    """A best-effort sink whose every write takes ``delay_s`` (a slow InfluxDB)."""

    name, policy = "influxdb", Policy.BEST_EFFORT

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def write(self, records: list[InferenceRecord]) -> None:
        """Sleep."""
        time.sleep(self.delay_s)


def durable_latency(directory: Path, store_delay_s: float, sink_delay_s: float, rate: float, duration_s: float) -> dict[str, Any]:
    """Submit records at ``rate``/s for ``duration_s``; submit → durable (future resolved) latency in ms."""
    store, sink = SleepyStore(store_delay_s), SleepySink(sink_delay_s)
    recorder = Recorder([store, sink], Spool(directory))
    recorder.start()
    latencies: list[float] = []
    lock = threading.Lock()
    records = make_records(int(rate * duration_s))
    started = time.perf_counter()
    futures = []
    for i, record in enumerate(records):
        # steady arrivals, as predictions finishing one after another
        time.sleep(max(0.0, started + i / rate - time.perf_counter()))
        t0 = time.perf_counter()
        future = recorder.submit(record)

        def done(_: object, t0: float = t0) -> None:
            with lock:
                latencies.append((time.perf_counter() - t0) * 1000.0)

        future.add_done_callback(done)
        futures.append(future)
    for future in futures:
        future.result(timeout=30)
    stored_during = store.written
    # let the backlog drain quickly: a stop() must not wait a second per segment
    store.delay_s = sink.delay_s = 0.0
    recorder.stop(timeout_s=10)
    return {
        "store_delay_s": store_delay_s, "sink_delay_s": sink_delay_s, "records": len(records), "rate_per_s": rate,
        "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies), "mean_ms": statistics.fmean(latencies),
        "stored_while_submitting": stored_during,
    }


def run(dsn: str, influx_host: str, influx_port: int, influx_database: str, work_dir: Path, quick: bool) -> dict[str, Any]:
    """The whole recording benchmark; progress lines as it goes."""
    n_pg, n_influx, n_spool = (20_000, 50_000, 2_000) if quick else (100_000, 200_000, 10_000)
    results: dict[str, Any] = {"postgres": {}, "influxdb": {}, "spool": {}}
    for name, batch in (("bridge_batch", 500), ("large_batch", 5000)):
        log(f"recording: PostgresSink.insert, {n_pg:,} records in batches of {batch} ...")
        results["postgres"][name] = bench_postgres(dsn, n_pg, batch)
        log(f"  {results['postgres'][name]['per_s']:,.0f} results/s")
    log(f"recording: InfluxSink.write, {n_influx:,} points in batches of 5000 ...")
    results["influxdb"]["bridge_batch"] = bench_influx(influx_host, influx_port, influx_database, n_influx, 5000)
    log(f"  {results['influxdb']['bridge_batch']['per_s']:,.0f} points/s")
    for batch in (1, 32, 500):
        count = min(n_spool, 500 if batch == 1 else n_spool)
        log(f"recording: Spool.append (fdatasync), {count:,} records in batches of {batch} ...")
        results["spool"][f"batch_{batch}"] = bench_spool(work_dir / "spool-bench", count, batch)
        r = results["spool"][f"batch_{batch}"]
        log(f"  {r['per_s']:,.0f} records/s, {r['append_p50_ms']:.2f} ms per append (p50)")
    rate, duration = (100.0, 3.0) if quick else (100.0, 8.0)
    slow: dict[str, Any] = {}
    for name, store_delay, sink_delay in (("fast", 0.0, 0.0), ("slow_postgres", 1.0, 0.0), ("slow_postgres_and_influxdb", 1.0, 1.0)):
        log(f"recording: Recorder submit → durable, {name.replace('_', ' ')} ({rate:.0f} records/s for {duration:.0f} s) ...")
        slow[name] = durable_latency(work_dir / f"spool-{name}", store_delay, sink_delay, rate, duration)
        log(f"  p50 {slow[name]['p50_ms']:.1f} ms, p99 {slow[name]['p99_ms']:.1f} ms, max {slow[name]['max_ms']:.1f} ms")
    results["slow_database"] = slow
    return results
