"""Replay against the real stack: a bridge of this test's own captures every photo, servingctl replays them.

The bridge (a free port, capture on into a temporary directory, no job workers, no telemetry) serves beside the
shared one and is stopped at the end. Each photo carries a JPEG comment unique to this run, so that only this
test's requests have their photo in its capture directory, however busy the shared stack is.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest
import requests

from ops.cli import main
from stack.captures import capture_path
from stack.services import Bridge
from tests.integration.conftest import PG_DSN, LiveStack

MODEL, VERSION = "classifier", "1.0"


@dataclass(frozen=True)
class CapturingBridge:
    url: str
    captures: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def bridge(live_stack: LiveStack, tmp_path: Path) -> Iterator[CapturingBridge]:
    captures = tmp_path / "captures"
    service = Bridge(name="bridge-replay", state_dir=tmp_path / "bridge", port=free_port(), env={
        "BRIDGE_CAPTURE_FRACTION": "1", "BRIDGE_CAPTURE_DIR": str(captures),
        "BRIDGE_JOB_CONCURRENCY": "0", "BRIDGE_TELEMETRY_INTERVAL_S": "0",
    })
    service.up()
    try:
        yield CapturingBridge(service.url, captures)
    finally:
        service.stop()


def unique(photo: bytes, tag: str) -> bytes:
    """``photo`` (a JPEG) with a comment segment after its start marker: the same picture, another sha256."""
    assert photo[:2] == b"\xff\xd8"
    comment = tag.encode()
    return photo[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + photo[2:]


def wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_replaying_captured_photos_through_the_same_version_agrees_with_the_live_answers(
    bridge: CapturingBridge, photos: dict[str, bytes], live_stack: LiveStack,
) -> None:
    run = uuid.uuid4().hex
    bodies = [unique(photos[name], f"replay-test {run} {name}") for name in ("chelsea", "coffee", "rocket")]
    live_ids = []
    for body in bodies:
        response = requests.put(f"{bridge.url}/predictions/{MODEL}", data=body,
                                headers={"Cache-Control": "no-cache", "Content-Type": "image/jpeg"}, timeout=60)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == VERSION, "the shared stack must serve classifier 1.0 by default"
        live_ids.append(response.headers["X-Request-Id"])
    for request_id in live_ids:
        assert live_stack.row(request_id) is not None, f"{request_id} was not recorded"
    files = [capture_path(bridge.captures, row["input_sha256"]) for row in map(live_stack.row, live_ids) if row]
    wait_for(lambda: all(f.is_file() for f in files), 10, "the bridge to capture the photos")
    assert sorted(f.read_bytes() for f in files) == sorted(bodies)

    out, err = io.StringIO(), io.StringIO()
    code = main(["replay", MODEL, VERSION, "--since", "10m", "--json", "--capture-dir", str(bridge.captures),
                 "--actor", f"it-replay-{run[:8]}"], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    result = json.loads(out.getvalue())

    with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:
        cur.execute("SELECT c.shadow_of::text, c.model_version, c.status, c.input_sha256 = l.input_sha256 FROM inferences c"
                    " JOIN inferences l ON l.request_id = c.shadow_of"
                    " WHERE c.source = 'replay' AND c.shadow_of = ANY(%s::uuid[])", (live_ids,))
        candidates = cur.fetchall()
        cur.execute("SELECT detail FROM model_changes WHERE action = 'replay' AND actor = %s", (f"it-replay-{run[:8]}",))
        changes = [row[0] for row in cur.fetchall()]
    assert sorted(candidates) == sorted((request_id, VERSION, 200, True) for request_id in live_ids)
    assert (result["samples"], result["compared"], result["photos"]) == (3, 3, 3)
    top1 = result["metrics"]["top1_agreement"]
    assert (top1["value"], top1["n"]) == (1.0, 3)
    assert result["metrics"]["top5_overlap"]["value"] == 1.0
    assert result["candidate"]["server_errors"]["value"] == 0.0
    assert [(c["photos"], c["pairs"]) for c in changes] == [(3, 3)]
