"""Durable async jobs against the real stack: submit, poll, idempotency, a bridge killed mid-way."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
import requests

from bridge.db import Database
from bridge.jobs import JobStatus, JobStore, model_request_id
from stack.services import REPO_ROOT, TorchServe, http_status
from tests.integration.conftest import PG_DSN, LiveStack, json_body

MODELS = "classifier,resnet18"


def submit(stack: LiveStack, photo: bytes, models: str = MODELS, key: str | None = None) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return requests.post(f"{stack.bridge}/v1/jobs", params={"models": models}, data=photo, headers=headers, timeout=30)


def wait_for_job(base: str, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = requests.get(f"{base}/v1/jobs/{job_id}", params={"wait": 5}, timeout=30).json()
        if job["status"] in ("succeeded", "failed"):
            return job
    pytest.fail(f"job {job_id} did not finish in {timeout_s} s")


def test_submit_then_poll_gives_one_result_per_model_recorded_once(
    live_stack: LiveStack, photos: dict[str, bytes]
) -> None:
    response = submit(live_stack, photos["chelsea"], "classifier,resnet18,no-such-model")
    assert response.status_code == 202, response.text
    job = json_body(response)
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running", "succeeded")

    done = wait_for_job(live_stack.bridge, job["id"])
    assert done["status"] == "succeeded"
    results = done["results"]
    assert results["classifier"]["status"] == 200
    assert results["classifier"]["output"]["predictions"][0]["label"] in {"tabby", "tiger cat", "Egyptian cat"}
    assert results["resnet18"]["status"] == 200 and results["resnet18"]["model_version"] == "1.0"
    assert results["no-such-model"]["status"] == 404, "a failed model is reported per model"
    for model in ("classifier", "resnet18", "no-such-model"):
        request_id = model_request_id(job["id"], model)
        assert results[model]["request_id"] == request_id
        row = live_stack.row(request_id)
        assert row is not None and row["source"] == "job" and row["model"] == model
        assert row["input_sha256"] == hashlib.sha256(photos["chelsea"]).hexdigest()


def test_long_poll_returns_as_soon_as_the_job_is_done(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    job = json_body(submit(live_stack, photos["coffee"], "classifier"))
    started = time.monotonic()
    done = requests.get(f"{live_stack.bridge}/v1/jobs/{job['id']}", params={"wait": 20}, timeout=30).json()
    assert done["status"] == "succeeded"
    assert time.monotonic() - started < 15


def test_idempotency_key(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    key = f"test-{time.time_ns()}"
    first = submit(live_stack, photos["flower"], "classifier", key)
    assert first.status_code == 202
    wait_for_job(live_stack.bridge, first.json()["id"])

    again = submit(live_stack, photos["flower"], "classifier", key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "succeeded"

    other_photo = submit(live_stack, photos["rocket"], "classifier", key)
    assert other_photo.status_code == 422
    assert key in other_photo.json()["message"]


def test_same_key_while_the_job_is_pending_gives_the_job_back(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    """The client that retries is usually one that lost its 202: it gets its job back (issue 12, was a 409)."""
    key = f"pending-{time.time_ns()}"
    photo = photos["flower"]
    job_id = str(uuid.uuid4())
    # A job held by a worker (running, leased for a minute), inserted as one statement so no live
    # worker can take it first.
    with psycopg2.connect(PG_DSN) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO jobs (id, status, models, input_sha256, input_bytes, content_type, photo, idempotency_key,"
            " attempts, lease_until) VALUES (%s, 'running', %s, %s, %s, 'image/jpeg', %s, %s, 1,"
            " now() + interval '60 seconds')",
            (job_id, ["classifier"], hashlib.sha256(photo).hexdigest(), len(photo), psycopg2.Binary(photo), key),
        )
    database = Database(PG_DSN)
    try:
        response = submit(live_stack, photo, "classifier", key)
        assert response.status_code == 200 and response.json()["id"] == job_id, response.text
        assert response.json()["status"] == "running" and response.headers["location"] == f"/v1/jobs/{job_id}"
    finally:
        JobStore(database).finish(job_id, 1, JobStatus.FAILED, {}, "finished by a test")
        database.close()


def test_bad_submissions_and_unknown_jobs(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    assert submit(live_stack, photos["flower"], "bad name!").status_code == 400
    assert submit(live_stack, b"").status_code == 400
    assert requests.get(f"{live_stack.bridge}/v1/jobs/00000000-0000-0000-0000-000000000000", timeout=10).status_code == 404
    assert requests.get(f"{live_stack.bridge}/v1/jobs/not-a-uuid", timeout=10).status_code == 400
    assert requests.get(f"{live_stack.bridge}/v1/jobs/{'0' * 36}", params={"wait": 99}, timeout=10).status_code == 400


def test_jobs_survive_a_bridge_killed_with_sigkill(live_stack: LiveStack, photos: dict[str, bytes], tmp_path: Path) -> None:
    """Jobs accepted by a bridge that is then kill -9'd all finish, each model's answer recorded once."""
    port = 8011
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BRIDGE_PORT": str(port),
        "BRIDGE_JOB_LEASE_S": "5",  # jobs held by the killed bridge are free again 5 s later
        "BRIDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "BRIDGE_TORCHSERVE_KEY_FILE": str(TorchServe().key_file),
    }

    def start() -> subprocess.Popen:
        with open(tmp_path / "bridge.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while http_status(f"{base}/ping") != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "bridge.log").read_text()[-2000:]
            time.sleep(0.2)
        return proc

    proc = start()
    try:
        bodies = [photos[name] for name in ("chelsea", "coffee", "flower", "rocket", "china")] * 3
        job_ids = []
        for body in bodies:
            response = requests.post(f"{base}/v1/jobs", params={"models": MODELS}, data=body, timeout=30)
            assert response.status_code == 202
            job_ids.append(response.json()["id"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = start()  # jobs it held are taken again once their lease runs out (or by the main bridge)

        finished = [wait_for_job(base, job_id, timeout_s=120) for job_id in job_ids]
        assert [job["status"] for job in finished] == ["succeeded"] * len(job_ids)
        # Counted while the second bridge still runs: killed right after a job finished, it could leave that
        # job's last answers journaled in its spool (on disk, written once a bridge on that spool runs again)
        # but not yet in PostgreSQL.
        expected = [model_request_id(job_id, model) for job_id in job_ids for model in MODELS.split(",")]
        deadline = time.monotonic() + 20
        while live_stack.rows_count(expected) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait(10)

    assert live_stack.rows_count(expected) == len(expected)


def test_one_photo_gets_a_category_a_price_and_similar_items(live_stack: LiveStack, photos: dict[str, bytes]) -> None:
    """The product's promise: the default job runs the three product models on one upload."""
    response = requests.post(f"{live_stack.bridge}/v1/jobs", data=photos["coffee"], timeout=30)
    assert response.status_code == 202
    done = wait_for_job(live_stack.bridge, response.json()["id"])
    assert done["status"] == "succeeded" and set(done["models"]) == {"classifier", "price", "similar"}
    results = done["results"]
    assert results["classifier"]["output"]["predictions"][0]["label"] in {"espresso", "cup", "coffee mug"}
    price = results["price"]["output"]
    assert price["currency"] == "EUR" and price["interval"]["low"] <= price["price"] <= price["interval"]["high"]
    items = results["similar"]["output"]["items"]
    assert items[0]["id"].startswith("coffee-") and items[0]["distance"] < 0.05
