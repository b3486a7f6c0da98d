"""The job queue and runner on a real PostgreSQL (a database of this module's own), TorchServe scripted.

What is checked: a job waits out outages with backoff (full jitter, within bounds) and then succeeds; it
gives up at its deadline with the reason per model; a 4xx is final at once; a per-submission deadline is
honoured; a job longer than its lease keeps it; two runners sharing the queue run each job once; an idle
runner does not poll yet starts a submitted job at once (LISTEN/NOTIFY); Idempotency-Key gives the job
back in every state; a bridge given SIGTERM drains (answers in flight, records flushed, job never lost nor
run twice). Needs only PostgreSQL on 127.0.0.1:5432 (user postgres): no TorchServe, no shared stack.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from fastapi.testclient import TestClient

from bridge.app import create_app
from bridge.db import Database
from bridge.errors import Conflict, UpstreamTimeout, UpstreamUnavailable
from bridge.job_runner import JobRunner
from bridge.jobs import JobStatus, JobStore, model_request_id
from bridge.recorder import Recorder
from bridge.service import PredictionService
from bridge.settings import Settings
from bridge.spool import Spool
from bridge.storage import PostgresSink
from stack.services import REPO_ROOT
from stack.torchserve import Answer
from tests.databases import fresh_database

PHOTO = b"\xff\xd8\xff\xe0job-queue-test-photo"
OK_BODY = {"predictions": [{"label": "tabby", "index": 281, "score": 0.8}], "model": {"name": "m", "version": "1.0"}}


# --- a database of this module's own ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    """A fresh database ``jobs_test_<random>``, migrated; dropped afterwards."""
    with fresh_database("jobs_test", migrated=True) as dsn:
        yield dsn


@pytest.fixture(autouse=True)
def empty_queue(dsn: str) -> None:
    """Each test starts with no pending job (one left waiting by an earlier test would be claimed here)."""
    query(dsn, "UPDATE jobs SET status = 'failed', error = 'left by an earlier test', lease_until = NULL"
               " WHERE status IN ('queued', 'running')")


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else []


def rows_per_request(dsn: str, job_id: str) -> dict[str, int]:
    """Inference rows of one job by request id (a job's rows all derive their id from the job id)."""
    ids = [model_request_id(job_id, m) for m in ("classifier", "price", "similar", "slow")]
    return dict(query(dsn, "SELECT request_id::text, count(*) FROM inferences WHERE request_id = ANY(%s::uuid[])"
                           " GROUP BY request_id", (ids,)))


# --- TorchServe, scripted -----------------------------------------------------------------------------------


class ScriptedTorchServe:
    """Stands in for the TorchServe client: per model, a script of answers ("outage", "timeout", 4xx, "ok")."""

    def __init__(self, default: object = "ok", delay_s: float = 0.0) -> None:
        self.scripts: dict[str, list[object]] = defaultdict(list)
        self.default = default
        self.delay_s = delay_s
        self.calls: list[tuple[str, float]] = []

    async def predict(self, model: str, version: str | None, body: bytes, content_type: str,
                      params: dict[str, str] | None = None) -> Answer:
        self.calls.append((model, time.monotonic()))
        answer = self.scripts[model].pop(0) if self.scripts[model] else self.default
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if answer == "outage":
            raise UpstreamUnavailable("TorchServe is unavailable (connection refused)")
        if answer == "timeout":
            raise UpstreamTimeout("TorchServe did not answer in time")
        if isinstance(answer, int):
            body_json = {"code": answer, "type": "InvalidImage", "message": "image is truncated or corrupt"}
            return Answer(answer, json.dumps(body_json).encode(), "application/json", None)
        return Answer(200, json.dumps(OK_BODY).encode(), "application/json", 1)

    async def default_version(self, model: str) -> str | None:
        """The version an answer that names none was served by (the router's lookup)."""
        return "1.0"


class Harness:
    """One bridge's job machinery (store, runner, recorder into PostgreSQL) without HTTP."""

    def __init__(self, dsn: str, tmp: Path, torchserve: ScriptedTorchServe, **runner: Any) -> None:
        self.db = Database(dsn)
        self.store = JobStore(self.db)
        self.recorder = Recorder([PostgresSink.connect(dsn)], Spool(tmp / f"spool-{uuid.uuid4().hex[:6]}"))
        self.recorder.start()
        predictions = PredictionService(torchserve, self.recorder)  # type: ignore[arg-type]
        options: dict[str, Any] = {"lease_s": 30.0, "backoff_base_s": 0.2, "backoff_cap_s": 1.0, "idle_check_s": 5.0,
                                   "drain_s": 5.0, "listen_dsn": dsn, **runner}
        self.runner = JobRunner(self.db, self.store, predictions, options.pop("concurrency", 2), **options)

    def submit(self, models: list[str], deadline_s: float = 600.0, photo: bytes = PHOTO,
               key: str | None = None) -> str:
        photo = photo + uuid.uuid4().bytes if key is None else photo
        job, _ = self.store.submit(photo, "image/jpeg", models, hashlib.sha256(photo).hexdigest(), key, deadline_s)
        return job.id

    async def wait(self, job_id: str, timeout_s: float = 30.0,
                   until: Callable[[Any], bool] = lambda job: job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED),
                   ) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = await self.db.call(self.store.get, job_id)
            if until(job):
                return job
            await asyncio.sleep(0.05)
        pytest.fail(f"job {job_id} did not get there in {timeout_s} s: {job}")

    async def close(self) -> None:
        await self.runner.stop()
        assert self.recorder.wait_idle(10)
        self.recorder.stop()
        self.db.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- waiting out outages ------------------------------------------------------------------------------------


def test_outage_outage_success_waits_with_jittered_backoff_then_succeeds(dsn: str, tmp_path: Path) -> None:
    torchserve = ScriptedTorchServe()
    torchserve.scripts["classifier"] = ["outage", "timeout", "outage"]

    async def scenario() -> None:
        h = Harness(dsn, tmp_path, torchserve, backoff_base_s=0.5, backoff_cap_s=2.0)
        h.runner.start()
        try:
            job_id = h.submit(["classifier", "price"])
            seen: list[tuple[datetime, datetime]] = []  # (updated_at, next_attempt_at) of each wait
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                job = await h.db.call(h.store.get, job_id)
                if job.status is JobStatus.QUEUED and job.attempts > 0 and (job.updated_at, job.next_attempt_at) \
                        not in seen:
                    seen.append((job.updated_at, job.next_attempt_at))
                    assert job.deadline_at is not None and "classifier" in job.error
                if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
                    break
                await asyncio.sleep(0.01)
            assert job.status is JobStatus.SUCCEEDED, job
            assert job.attempts == 4 and job.next_attempt_at is None
            assert job.results["classifier"]["status"] == 200 and job.results["price"]["status"] == 200
            # Full jitter: the n-th wait lies in [0, min(cap, base · 2^(n-1))] (+ scheduling slack).
            for n, (updated, next_at) in enumerate(seen, start=1):
                wait_s = (next_at - updated).total_seconds()
                assert -0.01 <= wait_s <= min(2.0, 0.5 * 2 ** (n - 1)) + 0.05, (n, wait_s)
            assert len(seen) >= 2, "the runner never showed the job waiting"
        finally:
            await h.close()
        calls = [m for m, _ in torchserve.calls]
        assert calls.count("classifier") == 4 and calls.count("price") == 1, "an answered model is not run again"
        # One row per outage attempt, one for the final answer of each model.
        counts = {(m, s): c for m, s, c in query(
            dsn, "SELECT model, status, count(*) FROM inferences WHERE request_id::text = ANY(%s) GROUP BY 1, 2",
            ([model_request_id(job_id, "classifier"), model_request_id(job_id, "price")]
             + [str(uuid.uuid5(uuid.UUID(job_id), f"classifier#attempt-{a}")) for a in (1, 2, 3)],))}
        assert counts == {("classifier", 503): 2, ("classifier", 504): 1, ("classifier", 200): 1, ("price", 200): 1}

    run(scenario())


def test_backoff_bounds() -> None:
    import random

    from bridge.job_runner import backoff_s

    rng = random.Random(7)
    for failures in range(1, 12):
        ceiling = min(30.0, 1.0 * 2 ** (failures - 1))
        samples = [backoff_s(failures, 1.0, 30.0, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > 0.8 * ceiling and min(samples) < 0.2 * ceiling, "full jitter spans the whole range"


def test_gives_up_at_the_deadline_with_the_reason_per_model(dsn: str, tmp_path: Path) -> None:
    torchserve = ScriptedTorchServe()
    torchserve.scripts["classifier"] = ["outage"] * 1000
    torchserve.scripts["price"] = ["timeout"] * 1000

    async def scenario() -> None:
        h = Harness(dsn, tmp_path, torchserve, backoff_base_s=0.2, backoff_cap_s=0.5)
        h.runner.start()
        try:
            submitted = time.monotonic()
            job_id = h.submit(["classifier", "price", "similar"], deadline_s=3.0)
            job = await h.wait(job_id, 20)
            took = time.monotonic() - submitted
        finally:
            await h.close()
        assert job.status is JobStatus.FAILED, job
        # Not before the deadline; soon after it (the last attempt is due at the deadline itself).
        assert 3.0 <= took < 3.0 + 2.5, took
        assert "deadline passed" in job.error and "classifier (503" in job.error and "price (504" in job.error
        assert job.results["classifier"]["status"] == 503 and job.results["price"]["status"] == 504
        assert job.results["similar"]["status"] == 200, "the model that answered keeps its answer"
        assert 3 <= job.attempts <= 40, job.attempts

    run(scenario())


def test_a_4xx_is_final_at_once(dsn: str, tmp_path: Path) -> None:
    torchserve = ScriptedTorchServe(default=400)

    async def scenario() -> None:
        h = Harness(dsn, tmp_path, torchserve)
        h.runner.start()
        try:
            job_id = h.submit(["classifier", "price"])
            job = await h.wait(job_id, 10)
        finally:
            await h.close()
        assert job.status is JobStatus.FAILED and job.attempts == 1
        assert "every model refused the photo" in job.error
        assert job.results["classifier"]["status"] == 400 and "truncated" in job.results["classifier"]["error"]
        assert len(torchserve.calls) == 2, "a 4xx is never retried"

    run(scenario())


def test_a_per_submission_deadline_is_honoured(dsn: str, tmp_path: Path) -> None:
    torchserve = ScriptedTorchServe(default="outage")

    async def scenario() -> None:
        h = Harness(dsn, tmp_path, torchserve, backoff_base_s=0.2, backoff_cap_s=0.4)
        h.runner.start()
        try:
            short = h.submit(["classifier"], deadline_s=1.5)
            long = h.submit(["classifier"], deadline_s=120)
            started = time.monotonic()
            job = await h.wait(short, 15)
            took = time.monotonic() - started
            other = await h.db.call(h.store.get, long)
        finally:
            await h.close()
        assert job.status is JobStatus.FAILED and 1.5 <= took < 4.0, (job, took)
        assert (job.deadline_at - job.created_at).total_seconds() == pytest.approx(1.5, abs=0.01)
        assert other.status in (JobStatus.QUEUED, JobStatus.RUNNING), "the other job still waits"
        assert (other.deadline_at - other.created_at).total_seconds() == pytest.approx(120, abs=0.01)

    run(scenario())


# --- leases and sharing the queue ---------------------------------------------------------------------------


def test_a_job_longer_than_its_lease_keeps_it(dsn: str, tmp_path: Path) -> None:
    slow = ScriptedTorchServe(delay_s=4.0)
    fast = ScriptedTorchServe()

    async def scenario() -> None:
        a = Harness(dsn, tmp_path, slow, lease_s=1.0, concurrency=1)
        b = Harness(dsn, tmp_path, fast, lease_s=1.0, concurrency=1, idle_check_s=0.3)
        a.runner.start()
        try:
            job_id = a.submit(["slow"])
            await a.wait(job_id, 10, until=lambda job: job.status is JobStatus.RUNNING)
            b.runner.start()  # looks at the queue every ≤ 0.3 s while the slow job runs 4 s on a 1 s lease
            job = await a.wait(job_id, 20)
        finally:
            await b.close()
            await a.close()
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 1, job
        assert fast.calls == [], "no second runner took the job"
        assert b.runner.claims >= 5, "runner b did look at the queue meanwhile"

    run(scenario())


def test_two_runners_sharing_the_queue_run_each_job_once(dsn: str, tmp_path: Path) -> None:
    torchserve = ScriptedTorchServe(delay_s=0.02)
    models = ["classifier", "price"]

    async def scenario() -> list[str]:
        a = Harness(dsn, tmp_path, torchserve, concurrency=3)
        b = Harness(dsn, tmp_path, torchserve, concurrency=3)
        a.runner.start()
        b.runner.start()
        try:
            ids = [a.submit(models) if i % 2 else b.submit(models) for i in range(40)]
            done = [await a.wait(job_id, 60) for job_id in ids]
        finally:
            await a.close()
            await b.close()
        assert [job.status for job in done] == [JobStatus.SUCCEEDED] * len(ids)
        assert [job.attempts for job in done] == [1] * len(ids), "each job claimed once"
        return ids

    ids = run(scenario())
    calls = defaultdict(int)
    for model, _ in torchserve.calls:
        calls[model] += 1
    assert calls == {"classifier": 40, "price": 40}, "each model of each job ran once"
    expected = [model_request_id(j, m) for j in ids for m in models]
    rows = query(dsn, "SELECT count(*), count(DISTINCT request_id) FROM inferences WHERE request_id = ANY(%s::uuid[])",
                 (expected,))[0]
    assert rows == (80, 80)


def test_an_idle_runner_does_not_poll_and_a_submission_wakes_it(dsn: str, tmp_path: Path) -> None:
    torchserve = ScriptedTorchServe()

    async def scenario() -> None:
        runner_side = Harness(dsn, tmp_path, torchserve, concurrency=4, idle_check_s=5.0)
        other_bridge = Harness(dsn, tmp_path, torchserve)  # submits only: its runner never starts
        runner_side.runner.start()
        try:
            await asyncio.wait_for(runner_side.runner._listener.connected.wait(), 10)  # type: ignore[union-attr]
            await asyncio.sleep(0.5)
            before = runner_side.runner.claims
            await asyncio.sleep(4.0)
            idle_claims = runner_side.runner.claims - before
            # 4 workers, each looking at most every 2.5–5 s: ≤ 8 in 4 s (0.2 s polling would make 80).
            assert idle_claims <= 8, idle_claims
            submitted = time.monotonic()
            job_id = await runner_side.db.call(other_bridge.submit, ["classifier"])
            await runner_side.wait(job_id, 10, until=lambda job: job.status is not JobStatus.QUEUED)
            started_after = time.monotonic() - submitted
            # Claimed (running) comes a moment before the call to TorchServe: wait for the end to see the call.
            job = await runner_side.wait(job_id, 10)
            assert job.status is JobStatus.SUCCEEDED and [m for m, _ in torchserve.calls] == ["classifier"], job
            # The NOTIFY from another bridge's submission wakes a worker: well under the 2.5 s safety net.
            assert started_after < 1.5, started_after
            print(f"idle claims in 4 s: {idle_claims}; job started {started_after * 1000:.0f} ms after submission")
        finally:
            await runner_side.close()
            await other_bridge.close()

    run(scenario())


# --- Idempotency-Key through the API ------------------------------------------------------------------------


@pytest.fixture
def api(dsn: str, tmp_path: Path) -> Iterator[TestClient]:
    """The bridge app on this module's database, TorchServe faked, jobs not run (their state is set by hand)."""
    key_file = tmp_path / "key_file.json"
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    key_file.write_text(json.dumps({"management": {"key": "m", "expiration time": expires},
                                    "inference": {"key": "i", "expiration time": expires}, "API": {"key": "a"}}))
    recorder = Recorder([], Spool(tmp_path / "spool"))
    settings = Settings(pg_dsn=dsn, torchserve_key_file=key_file, spool_dir=tmp_path / "spool", cache=False,
                        telemetry_interval_s=0)
    app = create_app(settings, recorder=recorder,
                     torchserve_transport=httpx.MockTransport(lambda r: httpx.Response(503)), run_jobs=False)
    with TestClient(app) as client:
        yield client


def set_status(dsn: str, job_id: str, status: str) -> None:
    query(dsn, "UPDATE jobs SET status = %s, attempts = attempts + 1 WHERE id = %s", (status, job_id))


def test_same_key_gives_the_job_back_in_every_state(api: TestClient, dsn: str) -> None:
    key = f"order-{uuid.uuid4()}"
    photo = PHOTO + uuid.uuid4().bytes
    first = api.post("/v1/jobs", params={"models": "classifier,price"}, content=photo,
                     headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    job_id = first.json()["id"]
    assert first.headers["location"] == f"/v1/jobs/{job_id}"
    assert first.json()["deadline"] is not None and first.json()["next_attempt_at"] is not None
    for status in ("queued", "running", "succeeded", "failed"):
        if status != "queued":
            set_status(dsn, job_id, status)
        again = api.post("/v1/jobs", params={"models": "price,classifier"}, content=photo,
                         headers={"Idempotency-Key": key})
        assert again.status_code == 200, (status, again.text)
        assert again.json()["id"] == job_id and again.json()["status"] == status
        assert again.headers["location"] == f"/v1/jobs/{job_id}"

    other_photo = api.post("/v1/jobs", params={"models": "classifier,price"}, content=photo + b"x",
                           headers={"Idempotency-Key": key})
    assert other_photo.status_code == 422 and key in other_photo.json()["message"]
    other_models = api.post("/v1/jobs", params={"models": "classifier"}, content=photo,
                            headers={"Idempotency-Key": key})
    assert other_models.status_code == 422
    assert query(dsn, "SELECT count(*) FROM jobs WHERE idempotency_key = %s", (key,))[0][0] == 1


def test_deadline_parameter_is_stored_and_bounded(api: TestClient) -> None:
    response = api.post("/v1/jobs", params={"models": "classifier", "deadline": 90}, content=PHOTO)
    assert response.status_code == 202
    body = response.json()
    created = datetime.fromisoformat(body["created_at"])
    deadline = datetime.fromisoformat(body["deadline"])
    assert (deadline - created).total_seconds() == pytest.approx(90, abs=0.01)
    got = api.get(f"/v1/jobs/{body['id']}").json()
    assert got["deadline"] == body["deadline"] and got["next_attempt_at"] is not None
    assert api.post("/v1/jobs", params={"models": "classifier", "deadline": 99999}, content=PHOTO).status_code == 400
    assert api.post("/v1/jobs", params={"models": "classifier", "deadline": 0}, content=PHOTO).status_code == 400


def test_concurrent_same_key_posts_make_one_job(api: TestClient, dsn: str) -> None:
    key = f"race-{uuid.uuid4()}"
    photo = PHOTO + uuid.uuid4().bytes

    def post(_: int) -> httpx.Response:
        return api.post("/v1/jobs", params={"models": "classifier"}, content=photo, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(16)))
    codes = [r.status_code for r in responses]
    assert codes.count(202) == 1, codes
    assert set(codes) <= {200, 202, 409}, codes
    ids = {r.json()["id"] for r in responses if r.status_code in (200, 202)}
    assert len(ids) == 1
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 409)
    assert query(dsn, "SELECT count(*) FROM jobs WHERE idempotency_key = %s", (key,))[0][0] == 1


def test_same_key_while_the_first_insert_is_uncommitted_is_a_409(dsn: str) -> None:
    """409 exactly while the first POST's job is still being stored: its INSERT not committed yet."""
    key = f"storing-{uuid.uuid4()}"
    photo = PHOTO + uuid.uuid4().bytes
    digest = hashlib.sha256(photo).hexdigest()
    holder = psycopg2.connect(dsn)
    db = Database(dsn)
    try:
        with holder.cursor() as cur:  # a first POST stuck between its INSERT and its COMMIT
            cur.execute("INSERT INTO jobs (id, status, models, input_sha256, input_bytes, content_type, photo,"
                        " idempotency_key, deadline_at) VALUES (%s, 'queued', %s, %s, 1, 'image/jpeg', '', %s,"
                        " now() + interval '1 minute')", (str(uuid.uuid4()), ["classifier"], digest, key))
        started = time.monotonic()
        with pytest.raises(Conflict):
            JobStore(db).submit(photo, "image/jpeg", ["classifier"], digest, key, 600)
        assert time.monotonic() - started < 3, "a 409 at once, not a wait"
        holder.commit()
        job, created = JobStore(db).submit(photo, "image/jpeg", ["classifier"], digest, key, 600)
        assert not created and job.status is JobStatus.QUEUED, "once committed: the job back"
    finally:
        holder.close()
        db.close()


# --- SIGTERM drains -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlowTorchServe(http.server.ThreadingHTTPServer):
    """A TorchServe stand-in: /ping, /predictions/<model> answering after ``delay_s`` (``slow``) or at once."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.predictions: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer({"status": "Healthy"})

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.predictions.append(self.path)
                if self.path.startswith("/predictions/slow"):
                    time.sleep(server.delay_s)
                elif self.path.startswith("/predictions/medium"):
                    time.sleep(2.0)
                self._answer(OK_BODY)

        server = self
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def start_bridge(dsn: str, tmp: Path, name: str, torchserve_url: str, **settings: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    key_file = tmp / "key_file.json"
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    key_file.write_text(json.dumps({"management": {"key": "m", "expiration time": expires},
                                    "inference": {"key": "i", "expiration time": expires}, "API": {"key": "a"}}))
    env = {**os.environ, "BRIDGE_PORT": str(port), "BRIDGE_PG_DSN": dsn, "BRIDGE_TORCHSERVE_URL": torchserve_url,
           "BRIDGE_TORCHSERVE_MANAGEMENT_URL": torchserve_url, "BRIDGE_TORCHSERVE_KEY_FILE": str(key_file),
           "BRIDGE_SPOOL_DIR": str(tmp / f"spool-{name}"), "BRIDGE_STATE_DIR": str(tmp / name),
           "BRIDGE_TELEMETRY_INTERVAL_S": "0", "BRIDGE_CACHE": "false", "BRIDGE_INFLUX_PORT": str(free_port()),
           **{f"BRIDGE_{k.upper()}": v for k, v in settings.items()}}
    with open(tmp / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/ping", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp / f"{name}.log").read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize("drain_s", ["10", "0.5"], ids=["finishes-in-drain", "given-back"])
def test_sigterm_drains(dsn: str, tmp_path: Path, drain_s: str) -> None:
    """SIGTERM with a job in flight: requests in flight answered, records flushed, the job finished here or
    given back and finished by another bridge — each model's answer recorded once, never lost."""
    upstream = SlowTorchServe(delay_s=8.0)
    first, first_url = start_bridge(dsn, tmp_path, "first", upstream.url, job_drain_s=drain_s, job_concurrency="1")
    second: subprocess.Popen | None = None
    try:
        submitted = httpx.post(f"{first_url}/v1/jobs", params={"models": "slow,classifier"}, content=PHOTO + os.urandom(8),
                               timeout=10)
        assert submitted.status_code == 202
        job_id = submitted.json()["id"]
        deadline = time.monotonic() + 10
        while httpx.get(f"{first_url}/v1/jobs/{job_id}", timeout=5).json()["status"] != "running":
            assert time.monotonic() < deadline, "the job was never claimed"
            time.sleep(0.05)
        # A sync prediction in flight too (answered in 2 s): answered despite the SIGTERM.
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{first_url}/predictions/medium", content=PHOTO, timeout=30)
            time.sleep(0.5)
            first.send_signal(signal.SIGTERM)
            assert in_flight.result().status_code == 200
        # uvicorn re-raises the signal once its graceful shutdown is complete.
        assert first.wait(40) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in (tmp_path / "first.log").read_text()
        job = query(dsn, "SELECT status, attempts FROM jobs WHERE id = %s", (job_id,))[0]
        if drain_s == "10":
            assert job == ("succeeded", 1), job
        else:
            assert job[0] == "queued", "given back to the queue at once, not left leased"
            second, second_url = start_bridge(dsn, tmp_path, "second", upstream.url)
            done = httpx.get(f"{second_url}/v1/jobs/{job_id}", params={"wait": 20}, timeout=30).json()
            assert done["status"] == "succeeded" and done["attempts"] == 2, done
        log = (tmp_path / "first.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        # While the bridges still run: an answer is acknowledged once journaled, and reaches PostgreSQL
        # moments later (a bridge killed before that would leave it in its journal for its next start).
        deadline = time.monotonic() + 10
        while sum(rows_per_request(dsn, job_id).values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        upstream.shutdown()
    rows = rows_per_request(dsn, job_id)
    assert rows == {model_request_id(job_id, "slow"): 1, model_request_id(job_id, "classifier"): 1}, rows
