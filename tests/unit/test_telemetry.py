"""Scraping TorchServe's Prometheus text and deriving per-request figures."""

from __future__ import annotations

import pytest

from bridge.telemetry import ModelCounters, deltas, derived_fields, parse_prometheus, tags_of

TEXT = """
# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="resnet18",model_version="default",hostname="vm",} 43.0
ts_queue_latency_microseconds{model_name="resnet18",model_version="default",hostname="vm",} 5992628.833
HandlerBatches{ModelVersion="1.0",ModelName="resnet18",Level="Model",Hostname="vm",} 9.0
MemoryUsed{Level="Host",Hostname="vm",} 5.0817E3
garbage line without a value
Weird{label="with \\"quotes\\", and commas",} NaN
"""


def test_parse_prometheus_text() -> None:
    samples = {s.name: s for s in parse_prometheus(TEXT)}
    assert samples["ts_inference_requests_total"].value == 43.0
    assert samples["ts_inference_requests_total"].labels == {"model_name": "resnet18", "model_version": "default", "hostname": "vm"}
    assert samples["MemoryUsed"].value == pytest.approx(5081.7)
    assert samples["Weird"].labels["label"] == 'with \\"quotes\\", and commas'
    assert "garbage" not in samples


def test_tags_use_one_spelling_for_model_and_version() -> None:
    assert tags_of({"ModelName": "m", "ModelVersion": "2.0", "Level": "Model"}) == {"model": "m", "version": "2.0", "level": "Model"}
    assert tags_of({"model_name": "m", "model_version": "default"}) == {"model": "m", "version": "default"}


def test_derived_figures_between_two_scrapes() -> None:
    first = ModelCounters(100.0, {"requests": 10, "inference_us": 500_000, "queue_us": 100_000, "batches": 5, "items": 10})
    second = ModelCounters(110.0, {"requests": 30, "inference_us": 1_500_000, "queue_us": 300_000, "batches": 10, "items": 30})
    delta = deltas(first, second)
    assert delta == {"requests": 20, "inference_us": 1_000_000, "queue_us": 200_000, "batches": 5, "items": 20}
    fields = derived_fields(delta, 10.0)
    assert fields == {"requests_per_s": 2.0, "batches_per_s": 0.5, "inference_ms_per_request": 50.0,
                      "queue_ms_per_request": 10.0, "mean_batch_size": 4.0}


def test_no_figures_on_the_first_scrape_or_after_a_restart() -> None:
    assert deltas(None, ModelCounters(1.0, {"requests": 5})) is None
    assert deltas(ModelCounters(1.0, {"requests": 50}), ModelCounters(2.0, {"requests": 3})) is None
    assert "inference_ms_per_request" not in derived_fields(dict.fromkeys(("requests", "inference_us", "queue_us", "batches", "items"), 0.0), 10)
