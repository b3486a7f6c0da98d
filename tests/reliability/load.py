"""Bounded load on loopback for the fault tests, and the ledger that checks what was acknowledged was kept.

``Load`` runs N client threads for at most T seconds (or until stopped), each sending a photo no other
request sends (a JPEG comment makes its bytes, hence its sha256, unique), so every row in PostgreSQL can
be traced to exactly one request: by its request id and by its photo. ``ledger`` then counts, for the
acknowledged requests (2xx with ``X-Request-Id``), how many have their row (lost = acknowledged − found)
and whether any request was recorded twice (duplicated).

``classify`` says what each outcome counts as, so that no client-side trouble passes unseen: an answer
that is served (2xx, its request id, a JSON body), one the test excused on purpose (``Excuse``), or a
failure — a connection refused, reset or closed without an answer, a broken pipe, a timeout, a garbled
answer, and any other status. Nothing is excused by default: a test that kills a worker passes
``NO_WORKER``, a test that overfills a queue ``QUEUE_FULL``, and so on, each for its own scenario.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self

import requests

from bridge.jobs import model_request_id

NO_ANSWER = "no answer"


def unique_photo(base: bytes, n: int, tag: str = "") -> bytes:
    """``base`` (a JPEG) with a COM segment right after SOI carrying ``tag`` and ``n``: same pixels, new bytes."""
    assert base[:2] == b"\xff\xd8", "not a JPEG"
    comment = f"reliability {tag} {n} {time.time_ns()}".encode()
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + base[2:]


@dataclass
class Outcome:
    """One request as the client saw it."""

    kind: str  # "predict" or "job"
    started_s: float  # since the load began
    latency_s: float
    status: int | None  # None: no HTTP answer (refused, reset, client timeout)
    error: str | None
    request_id: str | None
    retry_after: str | None
    sha256: str
    job_id: str | None = None
    body: str = ""  # the start of the body of a non-2xx answer

    @property
    def acknowledged(self) -> bool:
        """A job got its 202 with an id, a prediction a 2xx with its request id and a readable body."""
        if self.error is not None:
            return False
        if self.kind == "job":
            return self.status == 202 and self.job_id is not None
        return self.status is not None and 200 <= self.status < 300 and self.request_id is not None

    @property
    def label(self) -> str:
        if self.status is None:
            return self.error or NO_ANSWER
        return f"{self.status} {self.error}" if self.error else str(self.status)


# --- what counts as what --------------------------------------------------------------------------

GARBLED = "garbled answer"
# The connection-level errors, named after what happened on the wire (see ``connection_error``).
REFUSED, RESET, CLOSED, BROKEN_PIPE, TIMEOUT = (
    "connection refused", "connection reset", "closed without an answer", "broken pipe", "timeout")


def connection_error(exc: BaseException) -> str:
    """What went wrong on the wire, from an exception of requests / urllib3 / http.client / socket."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    found: list[BaseException] = []
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        stack += [c for c in (e.__cause__, e.__context__, getattr(e, "reason", None)) if isinstance(c, BaseException)]
    # Most specific first: RemoteDisconnected is a ConnectionResetError, a read timeout wraps a socket timeout.
    for kind, name in ((http.client.RemoteDisconnected, CLOSED), (ConnectionRefusedError, REFUSED),
                       (BrokenPipeError, BROKEN_PIPE), (ConnectionResetError, RESET),
                       (requests.Timeout, TIMEOUT), (TimeoutError, TIMEOUT), (socket.timeout, TIMEOUT),
                       (requests.exceptions.ChunkedEncodingError, GARBLED), (http.client.IncompleteRead, GARBLED),
                       (http.client.BadStatusLine, GARBLED), (http.client.HTTPException, GARBLED)):
        if any(isinstance(e, kind) for e in found):
            return name
    return type(exc).__name__


def readable(body: bytes | str) -> bool:
    """A 2xx body a client can use: non-empty JSON."""
    try:
        return json.loads(body) not in (None, "", [], {})
    except ValueError:
        return False


@dataclass(frozen=True)
class Excuse:
    """An answer a test provoked on purpose, so not a failure there: ``status`` (None: no HTTP answer, with one of
    ``errors``), whose body contains one of ``says`` (any body when empty), with Retry-After when ``retry_after``,
    for a request sent within [``start``, ``end``) of load time."""

    why: str
    status: int | None
    says: tuple[str, ...] = ()
    retry_after: bool = True
    errors: tuple[str, ...] = ()
    start: float = 0.0
    end: float = float("inf")

    def covers(self, outcome: Outcome) -> bool:
        """Whether this excuse applies to ``outcome``."""
        if not self.start <= outcome.started_s < self.end or outcome.status != self.status:
            return False
        if self.status is None:
            return outcome.error in self.errors
        if outcome.error is not None or (self.retry_after and not outcome.retry_after):
            return False
        return not self.says or any(text in outcome.body for text in self.says)

    def during(self, start: float, end: float) -> Excuse:
        """The same excuse for requests sent within [start, end) only."""
        return Excuse(self.why, self.status, self.says, self.retry_after, self.errors, start, end)


# TorchServe's text when a model has no free worker — after a worker died, and also when its queue is full.
TORCHSERVE_NO_WORKER = "has no worker to serve inference request"
# The bridge's 503 for a worker that failed mid-batch (stack/torchserve/errors.py WorkerFailed).
BRIDGE_WORKER_FAILED = "the model's worker failed"
# Only for tests that kill a worker on purpose.
NO_WORKER = Excuse("a worker was killed on purpose", 503, (TORCHSERVE_NO_WORKER, BRIDGE_WORKER_FAILED))
# Only for tests that overfill a model's queue on purpose (TorchServe says "no worker" then too).
QUEUE_FULL = Excuse("the queue was overfilled on purpose", 503, (TORCHSERVE_NO_WORKER,))


class Verdict(NamedTuple):
    """What one outcome counts as: ``kind`` "served", "excused" or "failure", and why."""

    kind: str
    why: str


def classify(outcome: Outcome, excuses: tuple[Excuse, ...] | list[Excuse] = ()) -> Verdict:
    """Served, excused by one of this test's ``excuses``, or a failure (everything else, a 4xx included)."""
    if outcome.acknowledged:
        return Verdict("served", str(outcome.status))
    for excuse in excuses:
        if excuse.covers(outcome):
            return Verdict("excused", excuse.why)
    if outcome.status is None:
        return Verdict("failure", outcome.error or NO_ANSWER)
    if outcome.error is not None:
        return Verdict("failure", f"{outcome.status} {outcome.error}")
    if 200 <= outcome.status < 300:
        return Verdict("failure", f"{outcome.status} without its request id")
    return Verdict("failure", f"{outcome.status} {'not excused' if outcome.status >= 500 else 'unexpected'}")


def failures(outcomes: list[Outcome], excuses: tuple[Excuse, ...] | list[Excuse] = (),
             kind: str | None = None) -> list[tuple[Outcome, str]]:
    """The outcomes (of ``kind``, or all) that count as failures, each with why."""
    verdicts = ((o, classify(o, excuses)) for o in outcomes if kind is None or o.kind == kind)
    return [(o, v.why) for o, v in verdicts if v.kind == "failure"]


def verdicts(outcomes: list[Outcome], excuses: tuple[Excuse, ...] | list[Excuse] = ()) -> dict[str, int]:
    """Counts of served / excused / failure for the report."""
    return dict(sorted(Counter(classify(o, excuses).kind for o in outcomes).items()))


def assert_no_failures(outcomes: list[Outcome], excuses: tuple[Excuse, ...] | list[Excuse] = (),
                       kind: str | None = None) -> None:
    """Every outcome was served or excused by this test on purpose; the failures are listed otherwise."""
    bad = failures(outcomes, excuses, kind)
    assert not bad, (f"{len(bad)} requests failed: {dict(Counter(why for _, why in bad))}; first: "
                     f"{[(round(o.started_s, 2), o.label, o.body[:80]) for o, _ in bad[:5]]}")


@dataclass
class Load:
    """``threads`` clients PUTting unique photos to ``/predictions/{model}`` for at most ``duration_s``.

    With ``jobs_every_s`` one more thread submits a job (``POST /v1/jobs?models=...``) at that period.
    ``url`` is read before every request, so a bridge restarted on another port can be followed.
    """

    url: Callable[[], str] | str
    base_photo: bytes
    model: str = "resnet18"
    threads: int = 4
    duration_s: float = 10.0
    timeout_s: float = 35.0
    jobs_every_s: float | None = None
    job_models: str = "resnet18"
    think_s: float = 0.0  # pause between a client's requests
    fail_pause_s: float = 0.2  # pause after a failed request (clients back off a little; Retry-After is 1 s)
    tag: str = ""
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0

    def _base(self) -> str:
        return self.url() if callable(self.url) else self.url

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> Self:
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._predict_loop, daemon=True) for _ in range(self.threads)]
        if self.jobs_every_s:
            self._threads.append(threading.Thread(target=self._job_loop, daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self) -> list[Outcome]:
        """Wait for every client (each stops at ``duration_s`` by itself); returns the outcomes."""
        for t in self._threads:
            t.join(self.duration_s + self.timeout_s + 10)
        return self.outcomes

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.join()

    def served(self, kind: str = "predict") -> int:
        """How many requests of ``kind`` were acknowledged so far."""
        with self._lock:
            return sum(o.kind == kind and o.acknowledged for o in self.outcomes)

    def _running(self) -> bool:
        return not self._stop.is_set() and self.elapsed() < self.duration_s

    def _photo(self) -> bytes:
        return unique_photo(self.base_photo, next(self._counter), self.tag)

    def _send(self, kind: str, method: str, path: str, photo: bytes) -> Outcome:
        outcome = observe(kind, method, self._base() + path, photo, self.timeout_s, self.elapsed)
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def _predict_loop(self) -> None:
        while self._running():
            outcome = self._send("predict", "PUT", f"/predictions/{self.model}", self._photo())
            pause = self.think_s if outcome.acknowledged else max(self.think_s, self.fail_pause_s)
            if pause:
                self._stop.wait(pause)

    def _job_loop(self) -> None:
        while self._running():
            self._send("job", "POST", f"/v1/jobs?models={self.job_models}", self._photo())
            self._stop.wait(self.jobs_every_s or 1.0)


def observe(kind: str, method: str, url: str, photo: bytes, timeout_s: float, clock: Callable[[], float]) -> Outcome:
    """Send one photo and keep what the client saw, whatever happens (``clock``: the load's time, in s)."""
    started = clock()
    status = request_id = retry_after = error = job_id = None
    body = ""
    try:
        response = requests.request(method, url, data=photo, timeout=timeout_s,
                                    headers={"Content-Type": "application/octet-stream"})
        status = response.status_code
        request_id = response.headers.get("X-Request-Id")
        retry_after = response.headers.get("Retry-After")
        if kind == "job" and status == 202:
            job_id = _job_id(response.content)
            error = None if job_id else GARBLED
        elif 200 <= status < 300:
            error = None if readable(response.content) else GARBLED
        if status >= 300 or error:
            body = response.text[:300]
    except requests.RequestException as exc:
        error = connection_error(exc)
    return Outcome(kind, started, clock() - started, status, error, request_id, retry_after,
                   hashlib.sha256(photo).hexdigest(), job_id, body)


def _job_id(body: bytes) -> str | None:
    """The id of a 202's job, None when the body is not a job."""
    try:
        job = json.loads(body)
    except ValueError:
        return None
    return str(job["id"]) if isinstance(job, dict) and job.get("id") else None


def wait_until(check: Callable[[], bool], within_s: float, what: str, why: str, poll_s: float = 0.1) -> float:
    """Poll ``check`` until true; seconds it took. ``within_s`` is a bound that protects ``why``: past it, the
    test fails saying so (never a fixed sleep that hopes the condition holds by then)."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within_s:
            raise AssertionError(f"{what}: not within {within_s:g} s (the bound protects: {why})")
        time.sleep(poll_s)
    return time.monotonic() - began


# --- figures ------------------------------------------------------------------------------------


def tally(outcomes: list[Outcome], kind: str = "predict") -> dict[str, Any]:
    """sent / acknowledged / failed by status, and the slowest acknowledged answer (s)."""
    mine = [o for o in outcomes if o.kind == kind]
    acked = [o for o in mine if o.acknowledged]
    failed = [o for o in mine if not o.acknowledged]
    return {
        "sent": len(mine),
        "acknowledged": len(acked),
        "failed": dict(sorted(Counter(o.label for o in failed).items())),
        "ack_max_s": _round(max((o.latency_s for o in acked), default=None)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass
class Ledger:
    """What PostgreSQL holds for the requests of a load."""

    acknowledged: int
    rows_for_acknowledged: int  # count(*) over the acknowledged request ids
    distinct_for_acknowledged: int  # count(DISTINCT request_id) over them
    lost: int
    duplicated: int  # requests (photos) recorded under more than one final row
    recorded_unacknowledged: int  # rows for requests whose client got no 2xx (errors are recorded too)

    def figures(self) -> dict[str, int]:
        return {"lost": self.lost, "duplicated": self.duplicated, "rows": self.rows_for_acknowledged,
                "recorded_not_acknowledged": self.recorded_unacknowledged}


def ledger(query: Callable[..., list[tuple[Any, ...]]], outcomes: list[Outcome]) -> Ledger:
    """Compare the acknowledged synchronous predictions with the ``inferences`` rows of their photos."""
    sync = [o for o in outcomes if o.kind == "predict"]
    acked_ids = [o.request_id for o in sync if o.acknowledged]
    count, distinct = query(
        "SELECT count(*), count(DISTINCT request_id) FROM inferences WHERE request_id = ANY(%s::uuid[])",
        (acked_ids,),
    )[0]
    rows = query(
        "SELECT request_id::text, input_sha256 FROM inferences WHERE source <> 'job' AND input_sha256 = ANY(%s)",
        ([o.sha256 for o in sync],),
    )
    per_photo = Counter(sha for _, sha in rows)
    duplicated = sum(n - 1 for n in per_photo.values() if n > 1)
    recorded_ids = {rid for rid, _ in rows}
    acked_set = set(acked_ids)
    return Ledger(
        acknowledged=len(acked_ids),
        rows_for_acknowledged=count,
        distinct_for_acknowledged=distinct,
        lost=len(acked_set - recorded_ids),
        duplicated=duplicated,
        recorded_unacknowledged=len(recorded_ids - acked_set),
    )


def assert_nothing_lost(book: Ledger) -> None:
    """count(*) by request id = acknowledged, no request recorded twice."""
    assert book.lost == 0, f"{book.lost} acknowledged predictions have no row in PostgreSQL"
    assert book.rows_for_acknowledged == book.acknowledged == book.distinct_for_acknowledged, book
    assert book.duplicated == 0, f"{book.duplicated} requests were recorded more than once"


@dataclass
class JobLedger:
    """The jobs that got a 202: their final states and their rows."""

    accepted: int
    states: dict[str, int]
    rows: int  # final-answer rows, by model_request_id(job, model)
    lost: int  # accepted jobs × models without their final row
    duplicated: int  # photos with more than one final-answer (status < 500) row
    attempts_max: int

    def figures(self) -> dict[str, Any]:
        return {"jobs_accepted": self.accepted, "job_states": self.states, "job_rows": self.rows,
                "jobs_lost": self.lost, "jobs_duplicated": self.duplicated, "job_attempts_max": self.attempts_max}


def wait_jobs(url: Callable[[], str] | str, outcomes: list[Outcome], timeout_s: float = 120) -> dict[str, dict[str, Any]]:
    """Long-poll every accepted job until it is succeeded or failed (or the timeout); job id → job."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, dict[str, Any]] = {}
    pending = [o.job_id for o in outcomes if o.kind == "job" and o.acknowledged and o.job_id]
    while pending and time.monotonic() < deadline:
        job_id = pending[0]
        base = url() if callable(url) else url
        try:
            job = requests.get(f"{base}/v1/jobs/{job_id}", params={"wait": 5}, timeout=30).json()
        except (requests.RequestException, ValueError):
            time.sleep(0.5)
            continue
        if job.get("status") in ("succeeded", "failed"):
            done[job_id] = job
            pending.pop(0)
    for job_id in pending:
        done[job_id] = {"status": "unfinished"}
    return done


def job_ledger(query: Callable[..., list[tuple[Any, ...]]], outcomes: list[Outcome], jobs: dict[str, dict[str, Any]],
               models: list[str]) -> JobLedger:
    """Each accepted job × model has exactly one final row, under its stable request id."""
    accepted = [o for o in outcomes if o.kind == "job" and o.acknowledged]
    expected = [model_request_id(o.job_id, m) for o in accepted for m in models]  # type: ignore[arg-type]
    found = query("SELECT count(DISTINCT request_id) FROM inferences WHERE request_id = ANY(%s::uuid[])",
                  (expected,))[0][0]
    rows = query(
        "SELECT input_sha256, model, count(*) FROM inferences WHERE source = 'job' AND status < 500"
        " AND input_sha256 = ANY(%s) GROUP BY 1, 2",
        ([o.sha256 for o in accepted],),
    )
    return JobLedger(
        accepted=len(accepted),
        states=dict(Counter(j.get("status", "?") for j in jobs.values())),
        rows=found,
        lost=len(expected) - found,
        duplicated=sum(n - 1 for _, _, n in rows if n > 1),
        attempts_max=max((int(j.get("attempts", 0)) for j in jobs.values()), default=0),
    )


def first_success_after(outcomes: list[Outcome], t: float, kind: str = "predict") -> float | None:
    """Seconds from ``t`` (load time) to the first acknowledged answer to a request sent at or after ``t``."""
    done = [o.started_s + o.latency_s for o in outcomes if o.kind == kind and o.acknowledged and o.started_s >= t]
    return round(min(done) - t, 2) if done else None


def between(outcomes: list[Outcome], start: float, end: float, kind: str = "predict") -> list[Outcome]:
    """Requests sent within [start, end) of load time."""
    return [o for o in outcomes if o.kind == kind and start <= o.started_s < end]


class PingMonitor:
    """Polls a bridge's ``/ping`` in the background; keeps (load time, body) samples."""

    def __init__(self, url: str, load: Load, period_s: float = 0.5) -> None:
        self.url, self.load, self.period_s = url, load, period_s
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(40)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = requests.get(f"{self.url}/ping", timeout=30).json()
                self.samples.append((self.load.elapsed(), body))
            except (requests.RequestException, ValueError):
                pass
            self._stop.wait(self.period_s)

    def recording(self, key: str, start: float = 0.0, end: float = float("inf")) -> list[Any]:
        """Values of ``recording[key]`` sampled within [start, end) of load time."""
        return [body["recording"][key] for t, body in self.samples if start <= t < end and "recording" in body]


def settled_after(monitor: PingMonitor, t: float, done: Callable[[dict[str, Any]], bool]) -> float | None:
    """Seconds from ``t`` (load time) to the first /ping sample at or after it whose recording satisfies ``done``."""
    for at, body in monitor.samples:
        if at >= t and "recording" in body and done(body["recording"]):
            return round(at - t, 2)
    return None
