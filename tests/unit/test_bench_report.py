"""The throughput benchmark's arithmetic and output: percentiles, the limit, ratios, goals, table, JSON (no timing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.throughput import report, shadow_report
from benchmarks.throughput.report import Limit, Measurement


def m(row: str, concurrency: int | None, images_per_s: float, p50: float = 50.0, cpu_s: float = 20.0,
      window_s: float = 10.0, others: float = 0.0, config: str = "") -> Measurement:
    """A measurement with round numbers."""
    return Measurement(row=row, concurrency=concurrency, images_per_s=images_per_s, p50_ms=p50, p95_ms=p50 * 1.5,
                       p99_ms=p50 * 2, cpu_s=cpu_s, window_s=window_s, ok=int(images_per_s * window_s),
                       config=config, others_cores=others)


@pytest.fixture
def limit() -> Limit:
    """At 32 in flight the best candidate runs 100 img/s (20 ms CPU per image), repeated at 80 img/s: the limit is
    their mean, 90. At 1 in flight only the lone-photo layout fits: 40 img/s, 25 ms per photo."""
    return Limit(
        candidates=[m("limit", 1, 40.0, p50=25.0, config="1 proc × 2 threads, batch 1"),
                    m("limit", 2, 60.0, config="2 proc × 1 thread, batch 1"),
                    m("limit", 16, 100.0, config="2 proc × 1 thread, batch 8")],
        repeats=[repeat(80.0, 32, "2 proc × 1 thread, batch 8 (with 32 in flight, pass 1)"),
                 repeat(44.0, 1, "1 proc × 2 threads, batch 1 (with 1 in flight, pass 1)", p50=23.0)],
    )


def repeat(images_per_s: float, load: int, config: str, p50: float = 50.0) -> Measurement:
    """A limit layout measured again beside the served rows at ``load``."""
    run = m("limit", 16 if "batch 8" in config else 1, images_per_s, p50=p50, config=config)
    run.load = load
    return run


def served(full_32: float = 81.0, ours_32: float = 86.0, proto_32: float = 40.0, eager_32: float = 20.0) -> list[Measurement]:
    """Two loads of every served row; the full stack 1 ms slower than TorchServe direct at 1 in flight."""
    return [
        m("prototype", 1, 20.0, p50=50.0), m("prototype", 32, proto_32, p50=800.0),
        m("torchserve_stock", 1, 20.0, p50=50.0), m("torchserve_stock", 32, 60.0, p50=500.0),
        m("torchserve_eager", 1, 15.0, p50=65.0), m("torchserve_eager", 32, eager_32, p50=1500.0),
        m("torchserve_ours", 1, 21.0, p50=27.0), m("torchserve_ours", 32, ours_32, p50=370.0),
        m("full_stack", 1, 20.5, p50=28.0), m("full_stack", 32, full_32, p50=390.0),
    ]


def test_percentile_interpolates_and_handles_edges() -> None:
    assert report.percentile([], 50) != report.percentile([], 50)  # NaN
    assert report.percentile([7.0], 99) == 7.0
    assert report.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert report.percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert report.percentile([5.0, 1.0, 3.0], 0) == 1.0  # unsorted input


def test_measurement_cpu_figures() -> None:
    run = m("full_stack", 8, 50.0, cpu_s=15.0, window_s=10.0)
    assert run.cpu_cores == pytest.approx(1.5)
    assert run.cpu_ms_per_image == pytest.approx(30.0)  # 15 s over 500 images
    empty = m("full_stack", 8, 0.0)
    assert math.isnan(empty.cpu_ms_per_image)
    assert empty.to_json()["cpu_ms_per_image"] is None  # JSON has no NaN
    assert Measurement.from_json(run.to_json()) == run


def test_limit_is_the_best_layout_averaged_with_its_repeats(limit: Limit) -> None:
    assert limit.best.config == "2 proc × 1 thread, batch 8"
    assert limit.images_per_s == pytest.approx(100.0)  # overall: the best candidate (every repeat is a load's)
    # each load: the best layout holding no more photos than it has in flight, with that load's repeats
    assert limit.best_for(32).config == "2 proc × 1 thread, batch 8" and limit.images_per_s_at(32) == pytest.approx(90.0)
    assert limit.best_for(8).config == "2 proc × 1 thread, batch 1" and limit.images_per_s_at(8) == pytest.approx(60.0)
    assert limit.best_for(1).config == "1 proc × 2 threads, batch 1" and limit.images_per_s_at(1) == pytest.approx(42.0)
    assert limit.p50_ms_at(1) == pytest.approx(24.0)
    # CPU per image: the least any in-process run needed (100 img/s for 10 s on 20 CPU-seconds: 20 ms)
    assert limit.cpu_ms_per_image == pytest.approx(20.0)
    assert Limit(candidates=[m("limit", None, 70.0)]).images_per_s == 70.0
    assert Limit(candidates=[m("limit", 16, 70.0)]).images_per_s_at(1) == 70.0  # nothing fits: every layout
    with pytest.raises(ValueError):
        _ = Limit(candidates=[]).best


def test_ratios_and_peaks(limit: Limit) -> None:
    runs = served()
    top, one = report.peak(runs, "full_stack"), report.at(runs, "torchserve_ours", 1)
    assert top is not None and top.concurrency == 32
    assert one is not None and one.images_per_s == 21.0
    assert report.at(runs, "torchserve_ours", 8) is None
    assert report.ratio(81.0, limit.images_per_s_at(32)) == pytest.approx(0.9)
    assert math.isnan(report.ratio(1.0, 0.0))


HANDLER_GOAL = "our TorchServe handler vs limit (its best load)"


def test_serving_goals_met(limit: Limit) -> None:
    goals = {g.name: g for g in report.serving_goals(served(), limit)}
    assert goals["full stack vs limit, 32 in flight"].met is True  # 81 / 90 = 0.90 ≥ 0.85
    assert "0.90×" in goals["full stack vs limit, 32 in flight"].measured
    assert "full stack vs limit, 8 in flight" not in goals  # not measured at 8: no goal drawn from nothing
    eager = goals["full stack vs the eager path served until now"]
    assert eager.met is True and eager.measured.startswith("4.05× (81.0 vs 20.0 img/s")  # ≥ 4
    lone = goals["p50 of a lone photo vs in-process"]
    assert lone.met is True and lone.measured.startswith("1.17× (full stack 28.0 ms, in-process 24.0 ms")  # ≤ 1.3
    assert goals[HANDLER_GOAL].met is True  # 86 / 90 = 0.956 ≥ 0.90
    assert goals["full stack vs seed prototype design"].met is True  # 81 / 40 ≥ 1.5
    assert goals["bridge throughput vs TorchServe direct"].met is False  # 81 / 86 = 0.94 < 0.97
    latency = goals["bridge latency added at p50"]
    assert latency.met is True and "+1.0 ms at 1 in flight" in latency.measured  # ≤ 1.5
    assert goals[HANDLER_GOAL].note.startswith("where the rest went")
    assert all(g.note == "" for name, g in goals.items() if name != HANDLER_GOAL)


def test_serving_goals_unmet_missing_and_noisy(limit: Limit) -> None:
    runs = served(full_32=70.0, ours_32=80.0, proto_32=50.0, eager_32=20.0)
    runs[-2].p50_ms = 40.0  # the lone photo through the full stack: 40 ms vs 24 in-process
    goals = {g.name: g for g in report.serving_goals(runs, limit)}
    assert goals["full stack vs limit, 32 in flight"].met is False  # 0.78
    assert goals[HANDLER_GOAL].met is False  # 80 / 90 = 0.89
    assert goals["full stack vs seed prototype design"].met is False  # 1.4
    assert goals["full stack vs the eager path served until now"].met is False  # 3.5
    assert goals["p50 of a lone photo vs in-process"].met is False  # 1.67

    only_proto = {g.name: g for g in report.serving_goals([m("prototype", 1, 10.0)], limit)}
    assert only_proto["full stack vs the eager path served until now"].met is None
    assert only_proto["bridge latency added at p50"].measured == "n/a"

    noisy = [*served()[:-1], m("full_stack", 32, 81.0, others=1.2)]
    goal = {g.name: g for g in report.serving_goals(noisy, limit)}["full stack vs limit, 32 in flight"]
    assert goal.note.startswith("noisy")
    assert report.goal_lines([goal])[0][3] == "yes?"  # the verdict is flagged, not hidden


def test_recording_goals() -> None:
    recording = {
        "postgres": {"bridge_batch": {"batch": 500, "per_s": 25_000.0}},
        "influxdb": {"bridge_batch": {"batch": 5000, "per_s": 40_000.0}},
        "slow_database": {
            "fast": {"p50_ms": 1.0, "max_ms": 12.0, "store_delay_s": 0.0, "sink_delay_s": 0.0},
            "slow_postgres_and_influxdb": {"p50_ms": 1.4, "max_ms": 30.0, "store_delay_s": 1.0, "sink_delay_s": 1.0},
        },
    }
    goals = report.recording_goals(recording)
    assert [g.met for g in goals] == [True, False, True]
    assert "25,000 results/s" in goals[0].measured
    recording["slow_database"]["slow_postgres_and_influxdb"]["max_ms"] = 1004.0  # one answer waited for a write
    assert report.recording_goals(recording)[2].met is False
    assert [g.met for g in report.recording_goals({})] == [None, None]


def test_table_has_each_loads_limit_first_then_every_run(limit: Limit) -> None:
    lines = report.table_rows(limit, served())
    assert len(lines) == 2 * (1 + len(report.SERVED_ROWS))
    assert all(len(line) == len(report.TABLE_HEADER) for line in lines)
    top = len(report.SERVED_ROWS) + 1  # the 32-in-flight block
    assert lines[0][0].startswith(report.ROWS["limit"]) and lines[0][1] == "1" and lines[0][2] == "42.0"
    assert lines[0][6] == "1"  # the lone photo's layout: batch 1
    assert lines[top][1] == "32" and lines[top][2] == "90.0" and lines[top][9] == "1.00" and lines[top][6] == "8"
    rows_in_order = [line[0] for line in lines[1:top]]
    assert rows_in_order == [report.ROWS[r] for r in report.SERVED_ROWS]
    full_32 = next(line for line in lines if line[0] == report.ROWS["full_stack"] and line[1] == "32")
    assert full_32[2] == "81.0" and full_32[9] == "0.90"
    text = report.render_text(report.TABLE_HEADER, lines)
    widths = {len(line) for line in text.splitlines()}
    assert len(widths) == 1  # every line padded to the same width
    markdown = report.render_markdown(report.TABLE_HEADER, lines)
    assert markdown.splitlines()[1].startswith("|---|---:")
    assert len(markdown.splitlines()) == 2 + len(lines)


def test_side_tables() -> None:
    memory = {"torchserve_ours": [
        {"role": "TorchServe worker", "pid": 1, "rss_mb": 1000.0, "pss_mb": 550.0},
        {"role": "TorchServe worker", "pid": 2, "rss_mb": 1010.0, "pss_mb": 560.0},
        {"role": "TorchServe frontend (Java)", "pid": 3, "rss_mb": 240.0, "pss_mb": 220.0},
    ]}
    lines = report.memory_lines(memory)
    assert lines[0][1:] == ("TorchServe worker", "2", "1005", "555", "1110")
    cold = report.cold_start_lines({"torchserve_ours": {"ready_s": 4.1, "first_prediction_s": 4.25}})
    assert cold == [(report.ROWS["torchserve_ours"], "4.1", "4.2")]


def test_results_document_is_json_without_nan(limit: Limit, tmp_path: Path) -> None:
    runs = served()
    runs.append(m("prototype", 8, 0.0))  # NaN CPU per image
    document = report.results_document({"cpu": "test"}, {"quick": True}, limit, runs, {"cold_start": {}}, None)
    path = tmp_path / "results" / "latest.json"
    report.write_json(document, path)
    loaded = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert loaded["limit"]["by_load"]["32"]["images_per_s"] == pytest.approx(90.0)
    assert [r["row"] for r in loaded["runs"]][:2] == ["prototype", "prototype"]
    full_32 = next(r for r in loaded["runs"] if r["row"] == "full_stack" and r["concurrency"] == 32)
    assert full_32["ratio_to_limit"] == pytest.approx(0.9)
    assert loaded["runs"][-1]["cpu_ms_per_image"] is None
    assert {g["name"] for g in loaded["goals"]} >= {"full stack vs limit, 32 in flight", "bridge latency added at p50"}
    assert not list(path.parent.glob("*.partial"))


def test_merge_adds_passes_up() -> None:
    a = m("full_stack", 8, 20.0, cpu_s=10.0, window_s=10.0, others=1.0)
    b = m("full_stack", 8, 40.0, cpu_s=30.0, window_s=10.0, others=0.0)
    a.cpu_breakdown, b.cpu_breakdown = {"bridge": 1.0}, {"bridge": 2.0, "TorchServe worker": 20.0}
    merged = report.merge([a, b], [10.0, 20.0, 30.0])
    assert merged.images_per_s == pytest.approx(30.0)  # 600 images in 20 s
    assert merged.window_s == 20.0 and merged.ok == 600
    assert merged.cpu_ms_per_image == pytest.approx(40_000 / 600)
    assert merged.others_cores == pytest.approx(0.5)
    assert merged.p50_ms == 20.0
    assert merged.cpu_breakdown == {"bridge": 3.0, "TorchServe worker": 20.0}
    assert merged.passes == [20.0, 40.0]
    with pytest.raises(ValueError):
        report.merge([], [])


def test_cpu_per_request_by_process_and_the_cost_goals() -> None:
    full = m("full_stack", 8, 50.0, window_s=10.0)  # 500 answers
    full.cpu_breakdown = {"bridge": 0.5, "TorchServe frontend (Java)": 1.25, "TorchServe worker": 10.0}
    ours = m("torchserve_ours", 8, 50.0)
    ours.cpu_breakdown = {"TorchServe frontend (Java)": 1.0}
    assert report.role_ms_per_request(full, "bridge") == pytest.approx(1.0)
    lines = report.process_cost_lines([full, ours])
    assert [line[0] for line in lines] == [report.ROWS["torchserve_ours"], report.ROWS["full_stack"]]
    assert lines[1][3:] == ("1.00", "2.50", "20.0", "0.40")
    assert lines[0][3] == "-"  # no bridge in front of TorchServe direct
    cost = {"runs": [{"model": "null", "concurrency": 8, "idle_percent_of_core": {"bridge": 0.4, "frontend": 0.3},
                      "bridge": {"tool": "loadgen", "requests_per_s": 300.0, "p50_ms": 20.0,
                                 "cpu_ms_per_request": {"bridge": 1.2, "frontend": 2.0, "workers": 0.4},
                                 "requests_per_core_s": 250.0, "rss_mib": {"bridge": 70.0, "frontend": 300.0}},
                      "direct_hey": {"tool": "hey", "requests_per_s": 900.0, "p50_ms": None,
                                     "cpu_ms_per_request": {"bridge": None, "frontend": 0.8, "workers": 0.3},
                                     "requests_per_core_s": 900.0, "rss_mib": {"bridge": 70.0, "frontend": 300.0}}}]}
    goals = report.cost_goals([full, ours], cost)
    assert [g.met for g in goals] == [True, True, True]  # 1.0 / 2.5 = 0.40 ≤ 0.5; 1.0 / 20 = 0.05 ≤ 0.1; 0.4 % ≤ 1 %
    assert "0.40×" in goals[0].measured
    assert goals[1].name == "bridge CPU per request vs the model's CPU per image"
    assert goals[1].measured.startswith("0.05× (bridge 1.00 ms, TorchServe workers 20.00 ms per image")
    full.cpu_breakdown["TorchServe worker"] = 4.0  # a model 2.5× cheaper: the bridge is 0.125× of it
    assert report.cost_goals([full, ours], cost)[1].met is False
    assert report.cost_goals([], {})[0].met is None and report.cost_goals([], None)[1].met is None
    path = report.serving_path_lines(cost)
    assert [(line[1], line[2]) for line in path] == [("bridge → TorchServe", "loadgen"), ("TorchServe alone", "hey")]
    assert path[1][5] == "-" and path[1][6] == "-"  # hey's p50 unknown, no bridge
    assert report.idle_lines(cost) == [("bridge", "0.40"), ("frontend", "0.30")]


def with_oip() -> list[Measurement]:
    """``/predictions`` and the three OIP rows at 1 and 8 photos in flight (8 photos/request only at 8)."""
    runs = []
    for row, c, ips, bridge_s in [
        ("full_stack", 1, 20.0, 0.8), ("full_stack", 8, 40.0, 1.6),  # 4.0 ms per photo
        ("oip_binary", 1, 19.8, 0.82), ("oip_binary", 8, 39.0, 1.65),  # 4.23 ms per photo at 8
        ("oip_json", 1, 19.0, 0.9), ("oip_json", 8, 36.0, 1.8),  # 5.0 ms per photo at 8
    ]:
        run = m(row, c, ips)
        run.cpu_breakdown = {"bridge": bridge_s, "TorchServe frontend (Java)": 1.0}
        runs.append(run)
    x8 = m("oip_binary_x8", 8, 44.0)  # 440 photos in 10 s: 55 requests of 8
    x8.photos_per_request, x8.ok = 8, 55
    x8.cpu_breakdown = {"bridge": 1.32, "TorchServe frontend (Java)": 1.0}  # 24 ms per request, 3 ms per photo
    runs.append(x8)
    return runs


def test_oip_rows_follow_the_full_stack_in_the_tables(limit: Limit) -> None:
    runs = served() + with_oip()[2:]
    lines = report.table_rows(limit, runs)
    by_load: dict[str, list[str]] = {}
    for line in lines:
        by_load.setdefault(line[1], []).append(line[0])
    assert [label.split(" [")[0] for label in by_load["1"]] == [
        report.ROWS[r] for r in ("limit", *report.SERVED_ROWS, "oip_binary", "oip_json")]
    assert by_load["8"][0].startswith(report.ROWS["limit"])
    assert by_load["8"][1:] == [report.ROWS[r] for r in ("oip_binary", "oip_json", "oip_binary_x8")]
    x8 = next(line for line in lines if line[0] == report.ROWS["oip_binary_x8"])
    assert x8[1] == "8" and x8[2] == "44.0"  # photos in flight, photos per second
    cost = report.process_cost_lines(with_oip())
    assert [line[0] for line in cost][-1] == report.ROWS["oip_binary_x8"]
    assert cost[-1][3] == "24.00"  # bridge CPU per request of 8 photos


def test_merge_counts_photos_of_multi_photo_requests() -> None:
    a, b = m("oip_binary_x8", 8, 40.0), m("oip_binary_x8", 8, 80.0)
    for part, requests in ((a, 5), (b, 10)):
        part.photos_per_request, part.ok = 8, requests
    merged = report.merge([a, b], [100.0, 200.0])
    assert merged.ok == 15 and merged.photos_per_request == 8
    assert merged.images_per_s == pytest.approx(15 * 8 / 20.0)
    assert report.role_ms_per_request(merged, "bridge") != report.role_ms_per_request(merged, "bridge")  # no breakdown


def test_oip_comparison_and_its_table() -> None:
    runs = with_oip()
    entries = report.oip_comparison(runs)
    assert [(e["row"], e["concurrency"]) for e in entries] == [
        ("full_stack", 1), ("oip_binary", 1), ("oip_json", 1),
        ("full_stack", 8), ("oip_binary", 8), ("oip_json", 8), ("oip_binary_x8", 8)]
    binary8 = entries[4]
    assert binary8["images_per_s_vs_predictions"] == pytest.approx(39.0 / 40.0)
    assert binary8["bridge_cpu_ms_per_image"] == pytest.approx(1650 / 390)
    assert binary8["bridge_cpu_per_image_vs_predictions"] == pytest.approx((1650 / 390) / 4.0)
    x8 = entries[6]
    assert x8["requests_in_flight"] == 1 and x8["photos_per_request"] == 8
    assert x8["bridge_cpu_ms_per_request"] == pytest.approx(24.0) and x8["bridge_cpu_ms_per_image"] == pytest.approx(3.0)
    assert x8["images_per_s_vs_predictions"] == pytest.approx(1.1)
    lines = report.oip_lines(runs)
    assert all(len(line) == len(report.OIP_HEADER) for line in lines)
    assert lines[3][0] == "full stack, /predictions" and lines[3][4] == "1.00"
    assert lines[6][1:5] == ("8", "8", "44.0", "1.10") and lines[6][7:10] == ("24.00", "3.00", "0.75")
    assert report.oip_comparison(served()) == [] and report.oip_lines(served()) == []


def test_oip_goals(limit: Limit) -> None:
    goals = report.oip_goals(with_oip())
    assert [g.name for g in goals] == ["OIP binary vs /predictions, images/s",
                                       "bridge CPU per photo, OIP binary vs /predictions"]
    assert goals[0].met is True and goals[0].measured.startswith("0.97× at 8 in flight (39.0 vs 40.0 img/s")
    assert "base64 JSON 0.90×" in goals[0].measured and "8 photos/request 1.10×" in goals[0].measured
    assert goals[1].met is True  # 4.23 / 4.0 = 1.06 ≤ 1.10
    assert goals[1].measured == ("1.06× at 8 in flight (4.23 vs 4.00 ms; base64 JSON 1.25×, "
                                 "8 photos/request 0.75×)")
    slow = with_oip()
    slow[3].cpu_breakdown["bridge"] = 1.6 * 39.0 / 40.0 * 1.2  # 4.8 ms per photo: 1.2×
    assert report.oip_goals(slow)[1].met is False
    noisy = with_oip()
    noisy[3].others_cores = 1.5
    assert all(g.note.startswith("noisy") for g in report.oip_goals(noisy))
    assert [g.met for g in report.oip_goals(served())] == [None, None]
    document = report.results_document({"cpu": "test"}, {"quick": True}, limit, served()[:6] + with_oip(),
                                       {"cold_start": {}}, None)
    assert len(document["oip_vs_predictions"]) == 7
    assert {g["name"] for g in document["goals"]} >= {g.name for g in goals}
    plain = report.results_document({"cpu": "test"}, {"quick": True}, limit, served(), {"cold_start": {}}, None)
    assert plain["oip_vs_predictions"] == [] and not any(g["name"].startswith("OIP") for g in plain["goals"])


def test_loadgen_oip_bodies_are_what_the_bridge_parses() -> None:
    from benchmarks.throughput import loadgen
    from bridge.oip import HEADER_LENGTH, parse_infer_request

    photos = [b"\xff\xd8one", b"\xff\xd8two", b"\xff\xd8three"]
    body, headers = loadgen.oip_request(photos[:2])
    parsed = parse_infer_request(body, headers[HEADER_LENGTH])
    assert [i.photo for i in parsed.items] == photos[:2] and parsed.binary_output is True
    body, headers = loadgen.oip_request(photos[:1], binary=False)
    assert HEADER_LENGTH not in headers and headers["Content-Type"] == "application/json"
    assert [i.photo for i in parse_infer_request(body, None).items] == photos[:1]
    requests = loadgen.bodies(photos, "binary", 2)
    assert len(requests) == 3  # one per starting photo, wrapping round
    assert [i.photo for i in parse_infer_request(requests[2][0], requests[2][1][HEADER_LENGTH]).items] == \
        [photos[2], photos[0]]
    assert loadgen.bodies(photos, None, 1) == [(p, {}) for p in photos]
    assert loadgen.items_failed(b'{"outputs": [{"name": "status"}]}\x00\x01', "33")
    assert not loadgen.items_failed(b'{"outputs": [{"name": "labels"}]}"status"', "33")


def paired_doc(added: float, low: float, high: float) -> dict[str, object]:
    """What :func:`benchmarks.throughput.paired.measure` returns."""
    return {"pairs": 200, "errors": 0, "bridge_p50_ms": 40.0 + added, "direct_p50_ms": 40.0, "added_p50_ms": added,
            "added_median_of_pairs_ms": added, "added_median_interval_95_ms": [low, high]}


def test_latency_goal_is_judged_on_the_paired_measurement(limit: Limit) -> None:
    # the separate runs say +1.0 ms; the paired measurement (what is judged) says +2.5: not met
    added = {"resnet18": paired_doc(2.5, 2.1, 2.9), "null": paired_doc(0.9, 0.8, 1.0)}
    goal = {g.name: g for g in report.serving_goals(served(), limit, added)}["bridge latency added at p50"]
    assert goal.met is False
    assert goal.measured.startswith("+2.50 ms at 1 in flight, paired over 200 photos")
    assert "null model +0.90 ms" in goal.measured and "separate runs by load: 1: +1.0 ms" in goal.measured
    met = {g.name: g for g in report.serving_goals(served(), limit, {"resnet18": paired_doc(1.5, 1.2, 1.8)})}
    assert met["bridge latency added at p50"].met is True
    idle = {**paired_doc(1.8, 1.7, 1.9), "think_ms": 40.0}
    added["null, idle before each request"] = idle
    goal = {g.name: g for g in report.serving_goals(served(), limit, added)}["bridge latency added at p50"]
    assert "null model +0.90 ms (+1.80 ms idle 40 ms before each request)" in goal.measured
    lines = report.added_latency_lines(added)
    assert [line[:2] for line in lines] == [("resnet18", "0"), ("null", "0"), ("null", "40")]
    assert lines[0][5] == "+2.50"
    extras = {"added_latency": added["resnet18"],
              "serving_path": {"runs": [{"paired": added["null"], "paired_idle": idle}]}}
    assert report.added_latency(extras) == added


def test_handler_gap_splits_the_ratio_into_cores_and_cpu_per_image(limit: Limit) -> None:
    # the limit: 2 cores (20 CPU-s over 10 s) at 20 ms per image (mean of 100 and 80 img/s runs: 20 and 25 ms)
    ours = m("torchserve_ours", 32, 72.0, cpu_s=17.0, window_s=10.0)
    ours.cpu_breakdown = {report.WORKER_ROLE: 15.84, report.FRONTEND_ROLE: 1.16}
    ours.client_cpu_s = 1.0
    ours.others_cores = 0.1
    [gap] = report.handler_gap([ours, m("full_stack", 32, 70.0)], limit, cores=2)
    assert gap["workers_cores"] == pytest.approx(1.584)
    assert gap["frontend_cores"] == pytest.approx(0.116) and gap["load_generator_cores"] == pytest.approx(0.1)
    assert gap["idle_cores"] == pytest.approx(2 - 1.584 - 0.116 - 0.1 - 0.1)
    assert gap["worker_cpu_ms_per_image"] == pytest.approx(22.0)  # 15.84 s over 720 images
    assert gap["limit_cores"] == pytest.approx(2.0) and gap["limit_cpu_ms_per_image"] == pytest.approx(22.5)
    assert gap["ratio_from_cores"] * gap["ratio_from_cpu_per_image"] == pytest.approx(0.81, abs=0.001)
    assert gap["ratio_to_limit"] == pytest.approx(0.8)  # 72 / 90: the product is the ratio, up to the limit's spread
    line = report.handler_gap_lines([gap])[0]
    assert line[0] == "32" and line[3] == "1.58 of the limit's 2.00"
    note = report.gap_note([gap], 32)
    assert "frontend 0.12" in note and "the load generator 0.10" in note and "0.98× its CPU per image" in note
    assert report.gap_note([gap], 8) == ""


def shadow_phase(shadow: bool, p50: float, live: int = 0, answered: int = 0, failed: int = 0,
                 others: float = 0.0) -> shadow_report.Phase:
    """A 10-s phase at 1 in flight whose latencies centre on ``p50`` (±1 ms), 1000 / p50 answers a second."""
    run = m("full_stack", 1, 1000.0 / p50, p50=p50, others=others)
    return shadow_report.Phase(shadow, run, [p50 - 1.0, p50, p50 + 1.0], live, answered, failed)


def shadow_doc(*loads: dict[str, object]) -> dict[str, object]:
    """The shadowing row's document as shadowing.measure writes it."""
    return {"candidate": {"model": "classifier", "version": "1.1", "engine": "openvino"}, "fraction": 1.0,
            "loads": list(loads)}


def test_shadowing_summary_ratios_noise_and_copies() -> None:
    # off/on/on/off: off at 20 and 21 ms (noise 1/20.5 = 4.9 %), on at 30 ms; 150 copies offered in each on phase
    phases = [shadow_phase(False, 20.0), shadow_phase(True, 30.0, live=150, answered=100, failed=2),
              shadow_phase(True, 30.0, live=150, answered=150), shadow_phase(False, 21.0)]
    load = shadow_report.summarise(1, phases)
    assert load["off"]["p50_ms"] == pytest.approx(20.5) and load["on"]["p50_ms"] == pytest.approx(30.0)
    assert load["p50_ratio"] == pytest.approx(30.0 / 20.5)
    assert load["noise"] == pytest.approx(1.0 / 20.5) and load["on"]["p50_spread"] == 0.0
    assert load["within_noise"] is False  # +46 % against ±4.9 %
    assert load["on"]["copies"] == {"offered": 300, "answered": 250, "failed": 2, "dropped": 48}
    assert load["off"]["copies"] is None and [p["dropped"] for p in load["phases"]] == [0, 48, 0, 0]
    assert load["images_per_s_ratio"] == pytest.approx(20.5 / 30.0, rel=0.01)
    quiet = shadow_report.summarise(1, [shadow_phase(False, 20.0), shadow_phase(True, 20.5, live=10, answered=10),
                                        shadow_phase(True, 20.0, live=10, answered=10), shadow_phase(False, 21.0)])
    assert quiet["within_noise"] is True  # 20.25 vs 20.5 ms: −1.2 % within ±4.9 %
    with pytest.raises(ValueError):
        shadow_report.summarise(1, [shadow_phase(False, 20.0)])


def test_shadowing_table_and_goal() -> None:
    over = shadow_report.summarise(1, [shadow_phase(False, 20.0), shadow_phase(True, 30.0, live=150, answered=100),
                                       shadow_phase(True, 30.0, live=150, answered=150), shadow_phase(False, 21.0)])
    within = shadow_report.summarise(2, [shadow_phase(False, 40.0), shadow_phase(True, 40.5, live=20, answered=20),
                                         shadow_phase(True, 40.0, live=20, answered=20), shadow_phase(False, 42.0)])
    doc = shadow_doc(over, within)
    lines = shadow_report.shadow_lines(doc)
    assert all(len(line) == len(shadow_report.SHADOW_HEADER) for line in lines)
    assert [line[:2] for line in lines] == [("1", "off"), ("1", "100 % → 1.1"), ("2", "off"), ("2", "100 % → 1.1")]
    assert lines[0][5] == "1.00×" and lines[0][8:12] == ("-", "-", "-", "-")
    assert lines[1][3:8] == ("30.0", "31.0", "1.46×", "1.41×", "±0.0 %") and lines[1][8:12] == ("300", "250", "0", "50")
    assert lines[2][7] == "±4.9 %"
    (goal,) = shadow_report.shadow_goals(doc)
    assert goal.name == "live p50 while classifier 1.1 shadows 100 %" and goal.met is False  # 1 in flight is over
    assert goal.measured.startswith("1 in flight 1.46× (20.5 → 30.0 ms, noise ±4.9 %")
    assert "copies answered 250 of 300, dropped 50)" in goal.measured and "2 in flight 0.98×" in goal.measured
    assert goal.note == ""
    (alone,) = shadow_report.shadow_goals(shadow_doc(within))
    assert alone.met is True
    noisy = shadow_report.summarise(1, [shadow_phase(False, 20.0, others=1.0), *over_phases()])
    assert shadow_report.shadow_goals(shadow_doc(noisy))[0].note.startswith("noisy")
    assert shadow_report.shadow_lines(None) == [] and shadow_report.shadow_goals(None) == []
    document = report.results_document({"cpu": "test"}, {"quick": True}, Limit([m("limit", 1, 40.0)]), served(),
                                       {"cold_start": {}, "shadowing": doc}, None, shadow_report.shadow_goals(doc))
    loaded = json.loads(json.dumps(document), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert loaded["shadowing"]["loads"][0]["on"]["copies"]["dropped"] == 50
    assert "live p50 while classifier 1.1 shadows 100 %" in {g["name"] for g in loaded["goals"]}


def over_phases() -> list[shadow_report.Phase]:
    """On, on, off: the rest of a load whose live p50 rose by half."""
    return [shadow_phase(True, 30.0, live=10, answered=10), shadow_phase(True, 30.0, live=10, answered=10),
            shadow_phase(False, 21.0)]


def test_shadowing_plan_by_mode() -> None:
    from benchmarks.throughput.__main__ import parse_args

    quick, _ = parse_args(["--quick"])
    assert quick.shadow and quick.shadow_loads == (1,) and quick.shadow_phase_s == 5.0
    full, _ = parse_args([])
    assert full.shadow and full.shadow_loads == (1, 2) and full.shadow_phase_s == pytest.approx(10.5)
    assert full.estimate_s() - parse_args(["--no-shadow"])[0].estimate_s() > 100  # four phases at each of 2 loads
    assert not parse_args(["--model", "resnet18"])[0].shadow  # a candidate is defined for the classifier only
    assert not parse_args(["--rows", "torchserve_ours"])[0].shadow  # no bridge, no shadowing
