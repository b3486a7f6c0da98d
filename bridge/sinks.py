"""The recorder's sinks: adding one is a :class:`bridge.recorder.Sink` subclass and one line in build_sinks."""

from __future__ import annotations

from bridge.metrics_sink import InfluxSink
from bridge.recorder import Recorder, Sink
from bridge.settings import Settings
from bridge.spool import Spool
from bridge.storage import PostgresSink


def build_sinks(settings: Settings) -> list[Sink]:
    """Every sink records go to after the journal, each with its own policy (durable or best effort)."""
    return [
        PostgresSink.connect(settings.pg_dsn, settings.pg_connect_timeout_s),
        InfluxSink(settings.influx_host, settings.influx_port, settings.influx_database, settings.influx_timeout_s,
                   buffer_limit=settings.influx_buffer_points),
    ]


def build_recorder(settings: Settings) -> Recorder:
    """The recorder with the real sinks and the local spool."""
    return Recorder(
        build_sinks(settings),
        Spool(settings.spool_dir),
        batch_size=settings.record_batch_size,
        retry_interval_s=settings.record_retry_interval_s,
        adopt_after_s=settings.record_adopt_after_s or None,
    )
