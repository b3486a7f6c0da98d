"""Capture (bridge.captures): sampled photos on disk by hash — their bytes only, within a budget, for a retention time."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

from bridge.captures import CaptureStore
from stack.captures import capture_path
from tests.unit.test_bridge_app import PHOTO, FakeTorchServe, bridge_under_test

API_KEY = "k-3f9a1c77e2b04d5aa1"


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def written(store: CaptureStore, *bodies: bytes) -> list[bool]:
    """Offer each body, then stop the store (which writes what is queued)."""
    store.start()
    offered = [store.offer(digest(body), body) for body in bodies]
    store.stop()
    return offered


def test_fraction_zero_never_writes(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 0.0, 2**30, 3600)
    assert written(store, *(bytes([i]) * 100 for i in range(50))) == [False] * 50
    assert not (tmp_path / "captures").exists()
    assert store.stats()["capture_captured"] == 0


def test_a_fraction_samples_about_that_share(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 0.25, 2**30, 3600, queue_photos=1000, sample=random.Random(7))
    offered = written(store, *(i.to_bytes(4, "big") * 10 for i in range(400)))
    assert 60 <= sum(offered) <= 140
    assert len(files_under(tmp_path / "captures")) == sum(offered) == store.captured


def test_fraction_one_keeps_exactly_the_photo_under_its_sha256(tmp_path: Path) -> None:
    with bridge_under_test(tmp_path, FakeTorchServe, headers={"X-API-Key": API_KEY, "X-Client-Id": "shop-42"},
                           api_keys=(API_KEY,), capture_fraction=1.0, capture_dir=tmp_path / "captures") as (client, _, _):
        response = client.post("/predictions/m", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
    # The app has stopped: its capture writer has written what was queued.
    files = files_under(tmp_path / "captures")
    assert files == [capture_path(tmp_path / "captures", digest(PHOTO))]
    assert files[0].read_bytes() == PHOTO
    for path in (tmp_path / "captures").rglob("*"):
        for secret in (API_KEY, "inf-1", "shop-42", request_id, "image/jpeg"):
            assert secret not in path.name
            assert path.is_dir() or secret.encode() not in path.read_bytes()


def test_the_bridge_counts_captures_in_its_metrics(tmp_path: Path) -> None:
    from bridge.app import bridge_stats

    with bridge_under_test(tmp_path, FakeTorchServe, capture_fraction=1.0,
                           capture_dir=tmp_path / "captures") as (client, _, _):
        assert client.post("/predictions/m", content=PHOTO).status_code == 200
        store: CaptureStore = client.app.state.captures
        deadline = time.monotonic() + 5
        while store.stats()["capture_captured"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = client.portal.call(bridge_stats, client.app)
    assert stats["capture_captured"] == 1 and stats["capture_bytes"] == len(PHOTO)
    assert stats["capture_skipped_budget"] == stats["capture_skipped_busy"] == stats["capture_errors"] == 0


def test_requests_with_model_parameters_are_not_captured(tmp_path: Path) -> None:
    with bridge_under_test(tmp_path, FakeTorchServe, capture_fraction=1.0,
                           capture_dir=tmp_path / "captures") as (client, _, _):
        assert client.post("/predictions/m?k=3", content=PHOTO).status_code == 200
    assert files_under(tmp_path / "captures") == []


def test_the_same_photo_is_written_once_and_its_time_refreshed(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 1.0, 2**30, 3600)
    assert written(store, PHOTO) == [True]
    path = capture_path(tmp_path / "captures", digest(PHOTO))
    os.utime(path, (time.time() - 1000, time.time() - 1000))
    inode = path.stat().st_ino
    assert written(store, PHOTO) == [True]
    assert path.stat().st_ino == inode and time.time() - path.stat().st_mtime < 60
    assert store.used_bytes == len(PHOTO)


def test_the_budget_stops_captures(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 1.0, 250, 3600)
    first, second, third = b"a" * 100, b"b" * 100, b"c" * 100
    written(store, first, second, third)
    assert sorted(p.read_bytes() for p in files_under(tmp_path / "captures")) == [first, second]
    assert store.stats()["capture_skipped_budget"] == 1 and store.used_bytes == 200
    # Started again (a restarted bridge): what the directory holds counts from the first sweep on.
    again = CaptureStore(tmp_path / "captures", 1.0, 250, 3600)
    written(again, b"d" * 100)
    assert again.skipped_budget == 1 and len(files_under(tmp_path / "captures")) == 2


def test_the_sweep_deletes_photos_past_retention_and_measures_the_rest(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 1.0, 2**30, retention_s=3600)
    old, recent = b"old photo" * 10, b"recent photo" * 10
    store.write(digest(old), old)
    store.write(digest(recent), recent)
    now = time.time()
    os.utime(capture_path(tmp_path / "captures", digest(old)), (now - 3601, now - 3601))
    leftover = capture_path(tmp_path / "captures", digest(recent)).with_name(".abandoned.tmp")
    leftover.write_bytes(b"half a photo")
    os.utime(leftover, (now - 3600, now - 3600))

    assert store.sweep(now) == 2
    assert files_under(tmp_path / "captures") == [capture_path(tmp_path / "captures", digest(recent))]
    assert store.used_bytes == len(recent)


def test_the_writer_sweeps_by_itself(tmp_path: Path) -> None:
    old = b"old photo" * 10
    path = capture_path(tmp_path / "captures", digest(old))
    path.parent.mkdir(parents=True)
    path.write_bytes(old)
    os.utime(path, (time.time() - 100, time.time() - 100))
    store = CaptureStore(tmp_path / "captures", 1.0, 2**30, retention_s=50, sweep_interval_s=0.05)
    store.start()
    try:
        deadline = time.monotonic() + 5
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not path.exists()
    finally:
        store.stop()


def test_a_full_queue_skips_without_blocking(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 1.0, 2**30, 3600, queue_photos=2)  # no writer started: it stays full
    bodies = [bytes([i]) * 1000 for i in range(5)]
    started = time.perf_counter()
    offered = [store.offer(digest(body), body) for body in bodies]
    assert time.perf_counter() - started < 0.05
    assert offered == [True, True, False, False, False]
    assert store.stats()["capture_skipped_busy"] == 3 and store.stats()["capture_queued"] == 2


def test_queued_bytes_are_bounded_too(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures", 1.0, 2**30, 3600, queue_photos=10, queue_bytes=2500)
    offered = [store.offer(digest(body), body) for body in (b"x" * 1000, b"y" * 1000, b"z" * 1000)]
    assert offered == [True, True, False] and store.skipped_busy == 1


def test_a_failing_disk_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "captures"
    blocker.write_text("a file where the directory should be")
    store = CaptureStore(blocker, 1.0, 2**30, 3600)
    assert store.write(digest(PHOTO), PHOTO) is False
    assert store.stats()["capture_errors"] == 1
