"""The paired measurement of the latency the bridge adds, against two real local HTTP servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from benchmarks.throughput import paired


@contextmanager
def server(delay_s: float, fail_every: int = 0) -> Iterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 keep-alive server answering PUTs after ``delay_s`` (500 on every ``fail_every``-th); its URL."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

        def do_PUT(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(delay_s)
            status = 500 if fail_every and len(bodies) % fail_every == 0 else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/predictions/m", bodies
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_added_latency_is_the_slower_paths_extra_time() -> None:
    photos = [b"a" * 1000, b"b" * 2000]
    with server(0.020) as (slow, slow_bodies), server(0.0) as (fast, fast_bodies):
        doc = paired.measure(paired.Endpoint(slow, "PUT", {}), paired.Endpoint(fast, "PUT", {}), photos, pairs=30,
                             warmup_pairs=2)
    assert doc["pairs"] == 30 and doc["errors"] == 0
    assert slow_bodies == fast_bodies == [photos[i % 2] for i in range(32)]  # the same photo both ways, in order
    assert doc["added_p50_ms"] >= 19.0 and doc["added_median_of_pairs_ms"] >= 19.0  # the 20 ms sleep, at least
    low, high = doc["added_median_interval_95_ms"]
    assert low <= doc["added_median_of_pairs_ms"] <= high
    assert "30 pairs (0 errors)" in paired.render(doc)


def test_think_time_is_spent_before_each_request_and_not_timed() -> None:
    with server(0.0) as (a, _), server(0.0) as (b, _):
        started = time.monotonic()
        doc = paired.measure(paired.Endpoint(a, "PUT", {}), paired.Endpoint(b, "PUT", {}), [b"x"], pairs=10,
                             warmup_pairs=0, think_s=0.02)
        elapsed = time.monotonic() - started
    assert elapsed >= 20 * 0.02 and doc["think_ms"] == 20.0
    assert doc["bridge_p50_ms"] < 20.0 and doc["direct_p50_ms"] < 20.0  # the pause is not in the latency
    assert "20 ms idle before each request" in paired.render(doc)


def test_a_pair_with_a_failed_answer_is_an_error_not_a_sample() -> None:
    with server(0.0, fail_every=5) as (failing, _), server(0.0) as (ok, _):
        doc = paired.measure(paired.Endpoint(failing, "PUT", {}), paired.Endpoint(ok, "PUT", {}), [b"x"], pairs=20,
                             warmup_pairs=0)
    assert doc["errors"] == 4 and doc["pairs"] == 16


def test_nothing_listening_counts_as_errors() -> None:
    with server(0.0) as (ok, _):
        doc = paired.measure(paired.Endpoint("http://127.0.0.1:9/x", "PUT", {}), paired.Endpoint(ok, "PUT", {}),
                             [b"x"], pairs=3, warmup_pairs=0)
    assert doc == {**doc, "pairs": 0, "errors": 3, "added_p50_ms": None, "added_median_of_pairs_ms": None}


def test_median_interval_holds_the_median_and_narrows_with_more_values() -> None:
    values = [float(v) for v in range(101)]
    low, high = paired.median_interval(values)
    assert low < 50.0 < high and (low, high) == (40.0, 60.0)
    wide = paired.median_interval(values[::10])
    assert wide[1] - wide[0] > high - low
    assert paired.median_interval([3.0]) == (3.0, 3.0)
