"""``servingctl replay MODEL VERSION``: captured photos sent to a candidate version, compared as shadowing compares.

The bridges capture a sampled fraction of the photos sent (bridge.captures, ``BRIDGE_CAPTURE_FRACTION``) by their
sha256 (stack.captures). A replay reads the served requests of MODEL in the window from PostgreSQL — newest
first, those whose photo is in the capture directory, up to ``--limit`` — sends each distinct photo once to VERSION
through TorchServe's inference API, and records the answer once per live request it mirrors: a row of
``inferences`` with ``source='replay'`` and ``shadow_of`` = the live request's id, exactly as a shadowed copy is
recorded. The comparison of those pairs (stack.comparison) is printed, so a version can be judged on real traffic
before any live request reaches it, and recorded in the history (action ``replay``).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2.extensions

from ops.commands import Context, each_box
from ops.errors import NotFound, OpsError, Refused, UsageError
from ops.rollouts import print_comparison
from ops.since import parse_since
from ops.torchserve import CandidateFailure
from stack.answers import summarise_output
from stack.captures import capture_path, is_digest
from stack.database import InferenceRecord, write_inferences
from stack.database.rollouts import candidate_comparison

SOURCE = "replay"
LIVE_SOURCES = ["sync", "job"]
FETCH_ROWS = 1000  # live requests read from PostgreSQL at a time
WRITE_ROWS = 500  # candidate rows per insert
ENABLE_CAPTURE = ("enable capture on the bridges (e.g. BRIDGE_CAPTURE_FRACTION=0.1, and BRIDGE_CAPTURE_DIR on a volume "
                  "they share), let traffic flow, then replay; or widen --since")

LIVE_SQL = """
SELECT request_id::text, input_sha256 FROM inferences
WHERE model = %s AND created_at >= %s AND created_at < %s AND shadow_of IS NULL AND source = ANY(%s)
ORDER BY created_at DESC, request_id DESC
"""


@dataclass(frozen=True)
class LiveRequest:
    """A served request whose photo was captured."""

    request_id: str
    digest: str


@dataclass(frozen=True)
class Found:
    """What the window holds: the requests to replay (newest first) and how many served requests were looked at."""

    requests: list[LiveRequest]
    served: int


def captured_requests(conn: psycopg2.extensions.connection, model: str, since: datetime, until: datetime,
                      capture_dir: Path, limit: int) -> Found:
    """``model``'s served requests in [since, until), newest first, whose photo is in ``capture_dir``, up to ``limit``.

    Read through a server-side cursor, a thousand rows at a time, until ``limit`` are found.
    """
    found: list[LiveRequest] = []
    captured: dict[str, bool] = {}
    served = 0
    with conn.cursor(name="replay_live_requests") as cur:
        cur.itersize = FETCH_ROWS
        cur.execute(LIVE_SQL, (model, since, until, LIVE_SOURCES))
        for request_id, digest in cur:
            served += 1
            digest = str(digest).strip()
            if digest not in captured:
                captured[digest] = is_digest(digest) and capture_path(capture_dir, digest).is_file()
            if captured[digest]:
                found.append(LiveRequest(request_id, digest))
                if len(found) >= limit:
                    break
    return Found(found, served)


@dataclass(frozen=True)
class Answer:
    """The candidate's answer to one photo, as recorded (the fields of its inference rows)."""

    answered_at: datetime
    status: int
    latency_ms: float
    batch_size: int | None
    output: Any
    top_label: str | None
    top_score: float | None
    error: str | None
    input_bytes: int


def ask(ctx: Context, model: str, version: str, photo: bytes) -> Answer:
    """Send ``photo`` to ``version`` (TorchServe's inference API, its inference key), timed."""
    started = time.perf_counter()
    answer = ctx.torchserve.infer(model, version, photo)
    latency_ms = (time.perf_counter() - started) * 1000.0
    if isinstance(answer, CandidateFailure):
        return Answer(datetime.now(UTC), answer.status, latency_ms, None, None, None, None, answer.error, len(photo))
    output, top_label, top_score, error = summarise_output(answer.status, answer.body, answer.content_type)
    return Answer(datetime.now(UTC), answer.status, latency_ms, answer.batch_size, output, top_label, top_score, error,
                  len(photo))


def candidate_record(model: str, version: str, live: LiveRequest, answer: Answer) -> InferenceRecord:
    """The candidate's row for one live request: what shadowing would have recorded beside it."""
    return InferenceRecord(
        request_id=str(uuid.uuid4()), created_at=answer.answered_at, model=model, model_version=version,
        source=SOURCE, status=answer.status, latency_ms=answer.latency_ms, batch_size=answer.batch_size,
        input_sha256=live.digest, input_bytes=answer.input_bytes, top_label=answer.top_label,
        top_score=answer.top_score, output=answer.output, error=answer.error, shadow_of=live.request_id,
    )


def read_photo(capture_dir: Path, digest: str) -> bytes | None:
    """The captured photo, if it is still there and still the photo its name says (None otherwise)."""
    try:
        photo = capture_path(capture_dir, digest).read_bytes()
    except FileNotFoundError:
        return None  # swept since it was found
    except OSError as exc:
        raise OpsError(f"cannot read the captured photo {digest} in {capture_dir}: {exc.strerror or exc}; check the "
                       "directory's permissions (--capture-dir / SERVINGCTL_CAPTURE_DIR)") from exc
    return photo if hashlib.sha256(photo).hexdigest() == digest else None


def candidate_boxes(ctx: Context, model: str, version: str) -> list[Context]:
    """The boxes where ``version`` is registered with a READY worker (photos are spread over them)."""
    views = each_box(ctx, model)
    ready, registered = [], []
    known: list[str] = []
    for view in views:
        info = view.torchserve.describe(model)
        known += [v.version for v in info.versions if v.version not in known]
        found = info.version(version)
        if found is not None:
            registered.append(view.box or "the box")
            if found.ready:
                ready.append(view)
    if not registered:
        raise NotFound(f"model {model!r} has no version {version!r}; registered versions: {', '.join(known)} "
                       f"(deploy it first: `servingctl deploy {model}_v{version}.mar`)")
    if not ready:
        raise Refused(f"{model} {version} has no READY worker ({', '.join(registered)}): "
                      f"`servingctl scale {model} --version {version} --min 1 --max 1` first")
    return ready


def replay(ctx: Context, model: str, version: str, since_text: str, limit: int, as_json: bool = False) -> int:
    """Send the photos captured since ``since_text`` to ``version``, record its answers, print the comparison."""
    if limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}")
    started = datetime.now(UTC)
    since = parse_since(since_text, started)
    history = ctx.history()  # PostgreSQL first: nothing is sent that could not be recorded
    boxes = candidate_boxes(ctx, model, version)
    capture_dir = ctx.settings.capture_dir
    found: Found = history.transaction(captured_requests, model, since, started, capture_dir, limit)
    if not found.requests:
        what = (f"none of the {found.served} requests {model} served since {since:%Y-%m-%d %H:%M:%S %Z} has its "
                f"photo in {capture_dir}" if found.served else
                f"{model} served no request since {since:%Y-%m-%d %H:%M:%S %Z}")
        raise Refused(f"nothing captured to replay: {what}; {ENABLE_CAPTURE}")
    photos = list(dict.fromkeys(live.digest for live in found.requests))  # newest first, each once
    if not as_json:
        ctx.say(f"replaying {len(photos)} captured photo(s) of {len(found.requests)} request(s) since "
                f"{since:%Y-%m-%d %H:%M:%S %Z} through {model} {version} ...")
    answers: dict[str, Answer] = {}
    clock = time.monotonic()
    for number, digest in enumerate(photos):
        photo = read_photo(capture_dir, digest)
        if photo is None:
            ctx.warn(f"captured photo {digest} is gone or damaged; skipped")
            continue
        answers[digest] = ask(boxes[number % len(boxes)], model, version, photo)
    records = [candidate_record(model, version, live, answers[live.digest])
               for live in found.requests if live.digest in answers]
    if not records:
        raise OpsError(f"none of the {len(photos)} captured photos could be read from {capture_dir}; nothing replayed")
    for first in range(0, len(records), WRITE_ROWS):
        history.transaction(write_inferences, records[first:first + WRITE_ROWS])
    result = history.transaction(candidate_comparison, model, version, started,
                                 datetime.now(UTC) + timedelta(seconds=1), SOURCE)
    statuses = Counter(answer.status for answer in answers.values())
    ctx.record(ctx.change(model, version, "replay", None, None, detail={
        "photos": len(answers), "pairs": result.samples, "since": since.isoformat(), "limit": limit,
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        **{name: estimate.value for name, estimate in result.metrics.items()},
    }))
    if as_json:
        ctx.say(json.dumps({"model": model, "version": version, "since": since.isoformat(), "photos": len(answers),
                            **result.as_dict()}, indent=2))
        return 0
    seconds = time.monotonic() - clock
    ctx.say(f"  {len(answers)} photo(s) answered in {seconds:.1f} s: "
            + ", ".join(f"{n} × {status}" for status, n in sorted(statuses.items())))
    print_comparison(ctx, f"{model} {version} against the live answers to the same photos (replayed "
                          f"{started:%Y-%m-%d %H:%M:%S %Z}):", result)
    return 0
