"""The same photos through ``/predictions`` and through the Open Inference Protocol, on one running bridge.

    .venv/bin/python -m benchmarks.throughput.oip --bridge http://127.0.0.1:PORT --bridge-pid PID
                                                  [--model resnet18] [--concurrency 8] [--duration 10]

Rows: ``predictions`` (raw JPEG body), ``oip_binary`` (tritonclient's way: JSON header + BYTES tensor, binary
outputs), ``oip_json`` (base64 in JSON, JSON outputs) and ``oip_binary_x8`` (8 photos per request). For each:
images/s, p50/p95 latency per request, and the bridge's CPU seconds per image (its process, from psutil).
Every request says ``Cache-Control: no-cache`` so every image reaches the model (and is recorded).
A row of ``make bench`` (benchmarks/throughput/__main__.py) can call ``oip_request`` the same way.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from benchmarks.throughput.photos import load_photos, make_photos

Request = tuple[str, bytes, dict[str, str]]  # path, body, headers


def predictions_request(model: str, photos: list[bytes]) -> Request:
    """One photo as ``/predictions`` takes it."""
    return f"/predictions/{model}", photos[0], {"Content-Type": "application/octet-stream"}


def oip_request(model: str, photos: list[bytes], binary: bool = True) -> Request:
    """``photos`` as one OIP infer request: binary tensor data (as tritonclient sends), or base64 JSON."""
    tensor: dict[str, object] = {"name": "image", "datatype": "BYTES", "shape": [len(photos), 1]}
    path = f"/v2/models/{model}/infer"
    if not binary:
        tensor["parameters"] = {"content_type": "base64"}
        tensor["data"] = [base64.b64encode(p).decode() for p in photos]
        return path, json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    raw = b"".join(struct.pack("<I", len(p)) + p for p in photos)
    tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return path, header + raw, {"Inference-Header-Content-Length": str(len(header)),
                                "Content-Type": "application/octet-stream"}


def drive(host: str, port: int, requests: list[Request], concurrency: int, duration_s: float) -> list[tuple[float, int]]:
    """Send ``requests`` round robin from ``concurrency`` connections for ``duration_s``: (latency s, status)."""
    counter = itertools.count()
    deadline = time.monotonic() + duration_s
    samples: list[tuple[float, int]] = []
    lock = threading.Lock()

    def slot() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while time.monotonic() < deadline:
            path, body, headers = requests[next(counter) % len(requests)]
            started = time.monotonic()
            conn.request("POST", path, body=body, headers={**headers, "Cache-Control": "no-cache"})
            response = conn.getresponse()
            response.read()
            with lock:
                samples.append((time.monotonic() - started, response.status))
        conn.close()

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def measure(bridge: str, pid: int, row: str, make: Callable[[list[bytes]], Request], per_request: int,
            photos: list[bytes], concurrency: int, duration_s: float) -> dict[str, object]:
    """One row: throughput, latency and the bridge's CPU per image."""
    url = urlsplit(bridge)
    groups = [photos[i:i + per_request] for i in range(len(photos))]
    requests = [make((g + photos)[:per_request]) for g in groups]
    drive(url.hostname or "127.0.0.1", url.port or 80, requests[:2], 2, 1.0)  # warm connections and workers
    process = psutil.Process(pid)
    cpu_before = sum(process.cpu_times()[:2])
    started = time.monotonic()
    samples = drive(url.hostname or "127.0.0.1", url.port or 80, requests, concurrency, duration_s)
    elapsed = time.monotonic() - started
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    ok = sorted(s for s, status in samples if status == 200)
    images = len(ok) * per_request
    return {
        "row": row, "images_per_s": round(images / elapsed, 1), "requests": len(samples),
        "errors": len(samples) - len(ok),
        "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "p95_ms": round(ok[int(len(ok) * 0.95) - 1] * 1000, 1) if ok else None,
        "bridge_cpu_ms_per_image": round(cpu / images * 1000, 2) if images else None,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every row and print them as JSON lines."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bridge", required=True, help="the bridge's URL, e.g. http://127.0.0.1:18000")
    p.add_argument("--bridge-pid", type=int, required=True, help="the bridge's process id (for its CPU time)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        make_photos(Path(tmp))
        photos = load_photos(Path(tmp))
    rows: list[tuple[str, Callable[[list[bytes]], Request], int]] = [
        ("predictions", lambda ps: predictions_request(args.model, ps), 1),
        ("oip_binary", lambda ps: oip_request(args.model, ps), 1),
        ("oip_json", lambda ps: oip_request(args.model, ps, binary=False), 1),
        ("oip_binary_x8", lambda ps: oip_request(args.model, ps), 8),
    ]
    for row, make, per_request in rows:
        result = measure(args.bridge, args.bridge_pid, row, make, per_request, photos, args.concurrency, args.duration)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
