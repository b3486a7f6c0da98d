"""The load generator: a separate process that keeps a fixed number of requests in flight for a bounded time.

    python -m benchmarks.throughput.loadgen --url http://127.0.0.1:18080/predictions/resnet18 \\
        --photos DIR --concurrency 8 --warmup 3 --duration 15 [--header 'Authorization: Bearer KEY'] [--method PUT]
        [--oip binary|json [--per-request N]]

``concurrency`` threads each hold one keep-alive HTTP/1.1 connection (reopened when the server closes it) and
send the next photo as soon as the previous answer is in, so exactly ``concurrency`` requests are in flight
(closed loop). After ``warmup`` seconds it prints ``START`` and after ``duration`` more ``END`` (the parent
samples the servers' CPU time at those two lines), waits for the requests still in flight, and prints one
``RESULT {json}`` line: answers that completed inside the window, their latency percentiles, errors.
It stops by itself: every loop is bounded by the deadline and every request by ``--timeout``.

``--oip`` sends each photo as an Open Inference Protocol infer request instead (the URL is then
``.../v2/models/{model}/infer``): ``binary`` as tritonclient sends it (JSON header, the BYTES tensor after it,
binary outputs asked for), ``json`` as base64 in JSON with JSON outputs; ``--per-request N`` puts N consecutive
photos in one request (a BYTES tensor of shape [N, 1]). Bodies are built once, before the load starts, with the
bridge's own BYTES codec (:func:`bridge.oip.encode_bytes_elements`). A 200 whose ``status`` output says some
photos failed counts as an error (status 207 in ``statuses``).
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import itertools
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.throughput.photos import load_photos
from benchmarks.throughput.report import percentile
from bridge.oip import HEADER_LENGTH, INPUT_NAME, encode_bytes_elements

PARTIAL = 207  # a 200 whose per-photo ``status`` output says some photos of the request failed


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="full URL to send each photo to")
    p.add_argument("--photos", type=Path, required=True, help="folder of .jpg photos, sent round-robin")
    p.add_argument("--concurrency", type=int, required=True, help="requests kept in flight")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the measured window")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of the measured window")
    p.add_argument("--method", default="POST", choices=("POST", "PUT"))
    p.add_argument("--header", action="append", default=[], help="extra header 'Name: value' (repeatable)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    p.add_argument("--oip", choices=("binary", "json"), help="send OIP infer requests (binary tensor data or base64 JSON)")
    p.add_argument("--per-request", type=int, default=1, help="photos per OIP request (default 1)")
    return p.parse_args(argv)


def oip_request(photos: Sequence[bytes], binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """``photos`` as one OIP infer request body and its headers: binary tensor data (as tritonclient), or base64 JSON."""
    tensor: dict[str, object] = {"name": INPUT_NAME, "datatype": "BYTES", "shape": [len(photos), 1]}
    if not binary:
        tensor["parameters"] = {"content_type": "base64"}
        tensor["data"] = [base64.b64encode(p).decode() for p in photos]
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    raw = encode_bytes_elements(photos)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"}


def bodies(photos: list[bytes], oip: str | None, per_request: int) -> list[tuple[bytes, dict[str, str]]]:
    """What each request sends, round robin: the photo itself, or an OIP request of ``per_request`` photos."""
    if oip is None:
        return [(photo, {}) for photo in photos]
    n = len(photos)
    return [oip_request([photos[(i + j) % n] for j in range(per_request)], oip == "binary") for i in range(n)]


def items_failed(payload: bytes, header_length: str | None) -> bool:
    """Whether an OIP 200 carries the ``status`` output, which the bridge adds only when some photo failed."""
    head = payload[:int(header_length)] if header_length and header_length.isdigit() else payload
    return b'"status"' in head


def run(args: argparse.Namespace, emit: Any = print) -> dict[str, Any]:
    """Drive the load; ``emit`` receives the START/END marker lines as they happen."""
    per_request = args.per_request if args.oip else 1
    url = urlsplit(args.url)
    if url.scheme != "http" or url.hostname is None:
        raise SystemExit(f"only http:// URLs are supported, got {args.url!r}")
    path = url.path + (f"?{url.query}" if url.query else "")
    headers = {"Content-Type": "application/octet-stream"}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep:
            raise SystemExit(f"--header must look like 'Name: value', got {item!r}")
        headers[name.strip()] = value.strip()
    requests = [(body, {**headers, **extra}) for body, extra in bodies(load_photos(args.photos), args.oip, per_request)]

    counter = itertools.count()
    started = time.monotonic()
    window_start = started + args.warmup
    window_end = window_start + args.duration
    # (sent, answered, status, batch size the server reported in X-Batch-Size or 0)
    samples: list[list[tuple[float, float, int, int]]] = [[] for _ in range(args.concurrency)]
    failures: collections.Counter[str] = collections.Counter()
    error_bodies: list[str] = []

    def slot(index: int) -> None:
        conn: http.client.HTTPConnection | None = None
        out = samples[index]
        while time.monotonic() < window_end:
            body, request_headers = requests[next(counter) % len(requests)]
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=args.timeout)
                conn.request(args.method, path, body=body, headers=request_headers)
                response = conn.getresponse()
                payload = response.read()
                status = response.status
                batch = int(response.getheader("X-Batch-Size") or 0)
                if status == 200 and args.oip and items_failed(payload, response.getheader(HEADER_LENGTH)):
                    status = PARTIAL
                if response.will_close:
                    conn.close()
                    conn = None
                if status != 200 and len(error_bodies) < 5:
                    error_bodies.append(f"{status}: {payload[:300].decode('utf-8', 'replace')}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                status = batch = 0
                failures[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)  # a refused connection must not spin
            out.append((t0, time.monotonic(), status, batch))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(args.concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu_start = time.process_time()
    emit("START", flush=True)
    time.sleep(max(0.0, window_end - time.monotonic()))
    cpu_end = time.process_time()
    emit("END", flush=True)
    deadline = time.monotonic() + args.timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))

    all_samples = [s for per_slot in samples for s in per_slot]
    in_window = [s for s in all_samples if window_start <= s[1] <= window_end]
    ok = [(t1 - t0) * 1000.0 for t0, t1, status, _ in in_window if status == 200]
    batches = [b for _, _, status, b in in_window if status == 200 and b > 0]
    statuses = collections.Counter(status for _, _, status, _ in in_window)
    return {
        "concurrency": args.concurrency,
        "window_s": window_end - window_start,
        "ok": len(ok),
        "errors": len(in_window) - len(ok),
        "photos_per_request": per_request,
        "images_per_s": len(ok) * per_request / (window_end - window_start),
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
        "mean_ms": sum(ok) / len(ok) if ok else None,
        "mean_batch": sum(batches) / len(batches) if batches else None,
        "statuses": {str(k): v for k, v in statuses.items()},
        "failures": dict(failures),
        "error_samples": error_bodies,
        "sent_total": len(all_samples),
        "client_cpu_s": cpu_end - cpu_start,
        "latencies_ms": [round(x, 3) for x in ok],
    }


def main(argv: list[str] | None = None) -> int:
    """Run once and print the RESULT line."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.concurrency < 1 or args.duration <= 0 or args.per_request < 1:
        print("--concurrency and --per-request must be ≥ 1 and --duration > 0", file=sys.stderr)
        return 2
    result = run(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
