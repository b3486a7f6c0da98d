"""The bad-input list of ../shared/RELIABILITY.md, each sent through the bridge, straight to TorchServe (with
its token) and inside a batch of good photos: expected status, a message that says what was wrong, never a
5xx from our code, and the good batch-mates still answered.

What TorchServe's own Java frontend answers before our handler sees a request (a body over
``max_request_size``; a binary body declared as a urlencoded form; a multipart type with an empty boundary)
cannot be changed by the project: those rows say so. The bridge, the only public face, answers them properly.
"""

from __future__ import annotations

import http.client
import io
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import requests
from PIL import Image

from archive_scripts.specs import find_spec
from bridge.settings import Settings
from handlers.image_decoding import DecodeLimits
from stack.services import REPO_ROOT, TorchServe
from tests.integration.conftest import LiveStack
from tests.reliability import payloads as p
from tests.reliability.instances import PrivateBridge, private_databases

MODEL = "classifier"  # real weights: the normalisation cases compare real answers
NO_CACHE = {"Cache-Control": "no-cache"}
OCTET = {"Content-Type": "application/octet-stream"}

BRIDGE_LIMIT = Settings.model_fields["max_body_bytes"].default  # the bridge refuses bigger bodies
HANDLER_LIMIT = DecodeLimits().max_bytes  # the handler refuses bigger images
_MAX_REQUEST_SIZE = re.search(r"^max_request_size=(\d+)", (REPO_ROOT / "config.properties").read_text(), re.MULTILINE)
assert _MAX_REQUEST_SIZE, "config.properties sets no max_request_size"
TORCHSERVE_LIMIT = int(_MAX_REQUEST_SIZE[1])  # TorchServe's frontend refuses bigger bodies itself


@dataclass(frozen=True)
class Expect:
    """An expected answer: status, the envelope's ``type`` and a fragment of its ``message``."""

    status: int
    kind: str | None = None
    message: str | None = None


OK = Expect(200)


@dataclass(frozen=True)
class BadInput:
    """One row of the bad-input list and what each route must answer for it."""

    name: str
    body: Callable[[], bytes | Iterator[bytes]]
    bridge: Expect
    torchserve: Expect
    headers: dict[str, str] = field(default_factory=lambda: dict(OCTET))
    same_answer_as: Callable[[], bytes] | None = None  # normalisation: the clean image's top label


def _multipart_headers() -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={p.BOUNDARY}"}


NOT_AN_IMAGE = Expect(400, "InvalidImage", "not a recognised image")
TRUNCATED = Expect(400, "InvalidImage", "truncated or corrupt")
TOO_MANY_PIXELS = Expect(422, "ImageTooLarge", "too large")
TEXT_OR_JSON = Expect(415, "UnsupportedMediaType", "content type made it text or JSON")
BRIDGE_TOO_LARGE_CL = Expect(413, "PayloadTooLarge", f"the limit is {BRIDGE_LIMIT} bytes")
BRIDGE_TOO_LARGE_CHUNKED = Expect(413, "PayloadTooLarge", f"exceeds the limit of {BRIDGE_LIMIT} bytes")
HANDLER_TOO_LARGE = Expect(413, "PayloadTooLarge", f"the limit is {HANDLER_LIMIT} bytes")
# TorchServe's frontend refuses a body over max_request_size itself: 413 with an empty body (no message).
FRONTEND_TOO_LARGE = Expect(413)

CASES = [
    BadInput(
        "zero-bytes", p.zero_bytes, Expect(400, "EmptyBody", "empty body"), Expect(400, "EmptyImage", "empty body")
    ),
    BadInput("text", p.text, NOT_AN_IMAGE, NOT_AN_IMAGE),
    BadInput("text-as-text-plain", p.text, TEXT_OR_JSON, TEXT_OR_JSON, {"Content-Type": "text/plain"}),
    BadInput("truncated-jpeg", p.truncated_jpeg, TRUNCATED, TRUNCATED),
    BadInput("decompression-bomb", p.decompression_bomb, TOO_MANY_PIXELS, TOO_MANY_PIXELS),
    BadInput("pillow-bomb-header", p.pillow_bomb_header, TOO_MANY_PIXELS, TOO_MANY_PIXELS),
    BadInput(
        "huge-dimensions-png",
        p.huge_dimensions_png,
        Expect(422, "ImageTooLarge", "16384 pixels per side"),
        Expect(422, "ImageTooLarge", "16384 pixels per side"),
    ),
    BadInput("huge-dimensions-jpeg", p.huge_dimensions_jpeg, TOO_MANY_PIXELS, TOO_MANY_PIXELS),
    # Body limits, just under and just over, by Content-Length and chunked.
    BadInput("size-just-under-limit", lambda: p.padded_jpeg(BRIDGE_LIMIT), OK, OK),
    BadInput("size-just-under-limit-chunked", lambda: p.chunked(p.padded_jpeg(BRIDGE_LIMIT)), OK, OK),
    BadInput("size-just-over-limit", lambda: p.padded_jpeg(BRIDGE_LIMIT + 1), BRIDGE_TOO_LARGE_CL, HANDLER_TOO_LARGE),
    BadInput(
        "size-just-over-limit-chunked",
        lambda: p.chunked(p.padded_jpeg(BRIDGE_LIMIT + 1)),
        BRIDGE_TOO_LARGE_CHUNKED,
        HANDLER_TOO_LARGE,
    ),
    BadInput(
        "size-torchserve-max-request", lambda: p.padded_jpeg(TORCHSERVE_LIMIT), BRIDGE_TOO_LARGE_CL, HANDLER_TOO_LARGE
    ),
    BadInput(
        "size-over-torchserve-max-request",
        lambda: p.padded_jpeg(TORCHSERVE_LIMIT + 1),
        BRIDGE_TOO_LARGE_CL,
        FRONTEND_TOO_LARGE,
    ),
    BadInput(
        "size-over-torchserve-max-request-chunked",
        lambda: p.chunked(p.padded_jpeg(TORCHSERVE_LIMIT + 1)),
        BRIDGE_TOO_LARGE_CHUNKED,
        FRONTEND_TOO_LARGE,
    ),
    # Modes converted to RGB; the answer must be the clean image's.
    BadInput("cmyk-jpeg", p.cmyk_jpeg, OK, OK, same_answer_as=p.clean_jpeg),
    BadInput("grey-L-png", p.grey_png, OK, OK, same_answer_as=p.clean_jpeg),
    BadInput("palette-P-png", p.palette_png, OK, OK, same_answer_as=p.clean_jpeg),
    BadInput("rgba-png", p.rgba_png, OK, OK, same_answer_as=p.clean_jpeg),
    BadInput("grey-16-bit-png", p.grey16_png, OK, OK, same_answer_as=p.grey_png),
    BadInput("exif-orientation-6", lambda: p.exif_rotated_jpeg(6), OK, OK, same_answer_as=p.upright_jpeg),
    BadInput("exif-orientation-8", lambda: p.exif_rotated_jpeg(8), OK, OK, same_answer_as=p.upright_jpeg),
    BadInput("animated-gif", p.animated_gif, OK, OK, same_answer_as=p.single_frame_gif),
    BadInput("animated-png", p.animated_png, OK, OK, same_answer_as=p.single_frame_png),
    BadInput("gif-2000-frames", p.many_frame_gif, OK, OK),
    # JPEG bytes declared as something else: TorchServe tries to decode JSON / text, fails, and hands the
    # handler the raw bytes, so the photo is served (handled explicitly, not a 415).
    BadInput("jpeg-as-json", p.photo, OK, OK, {"Content-Type": "application/json"}, same_answer_as=p.photo),
    BadInput("jpeg-as-text", p.photo, OK, OK, {"Content-Type": "text/plain"}, same_answer_as=p.photo),
    BadInput("jpeg-as-text-utf8", p.photo, OK, OK, {"Content-Type": "text/html; charset=utf-8"}),
    # curl --data-binary's default type: the bridge treats the body as the photo; TorchServe's frontend
    # tries to parse a form and fails in Java (500 ErrorDataDecoderException) before any handler runs.
    BadInput(
        "jpeg-as-urlencoded-form",
        p.photo,
        OK,
        Expect(500, "ErrorDataDecoderException"),
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    BadInput("multipart-one-file", lambda: p.multipart_one_file()[0], OK, OK, _multipart_headers()),
    BadInput(
        "multipart-no-file",
        lambda: p.multipart_no_file()[0],
        Expect(400, "BadRequest", "exactly one file; it carried 0"),
        NOT_AN_IMAGE,
        _multipart_headers(),
    ),
    BadInput(
        "multipart-two-files",
        lambda: p.multipart_two_files()[0],
        Expect(400, "BadRequest", "exactly one file; it carried 2"),
        Expect(400, "InvalidImage", "exactly one image"),
        _multipart_headers(),
    ),
    BadInput(
        "multipart-no-boundary",
        p.text,
        Expect(400, "BadRequest", "malformed multipart form"),
        NOT_AN_IMAGE,
        {"Content-Type": "multipart/form-data"},
    ),
    # An empty boundary: TorchServe's frontend fails in Java (500) before any handler; the bridge parses it.
    BadInput(
        "multipart-empty-boundary",
        p.photo,
        Expect(400, "BadRequest", "malformed multipart form"),
        Expect(500, "StringIndexOutOfBoundsException"),
        {"Content-Type": "multipart/form-data; boundary="},
    ),
    # JSON is accepted (base64 in {"data": ...}); nesting deeper than Python's recursion limit fails
    # TorchServe's json.loads, which then hands over the raw bytes: not an image. Shallower nesting is
    # decoded JSON without an image in it: 415.
    BadInput(
        "json-nested-100000",
        lambda: p.nested_json(100_000),
        NOT_AN_IMAGE,
        NOT_AN_IMAGE,
        {"Content-Type": "application/json"},
    ),
    BadInput(
        "json-nested-5000",
        lambda: p.nested_json(5_000),
        NOT_AN_IMAGE,
        NOT_AN_IMAGE,
        {"Content-Type": "application/json"},
    ),
    BadInput(
        "json-nested-500", lambda: p.nested_json(500), TEXT_OR_JSON, TEXT_OR_JSON, {"Content-Type": "application/json"}
    ),
]
CASE_IDS = [c.name for c in CASES]
# Rejected by the bridge itself, so they never reach TorchServe (no batch to share).
BRIDGE_ONLY = {
    "zero-bytes",
    "size-just-over-limit",
    "size-just-over-limit-chunked",
    "size-torchserve-max-request",
    "size-over-torchserve-max-request",
    "size-over-torchserve-max-request-chunked",
    "multipart-no-file",
    "multipart-two-files",
    "multipart-no-boundary",
    "multipart-empty-boundary",
}


def check(response: requests.Response, expect: Expect, where: str) -> None:
    """Status, then the error envelope's code, type and message."""
    shown = f"{where}: {response.status_code} {response.text[:300]!r}"
    assert response.status_code == expect.status, shown
    if expect.status == 200:
        assert response.json()["predictions"], shown
        return
    if expect.kind is None and expect.message is None:
        return
    body = response.json()
    assert body["code"] == expect.status, shown
    if expect.kind:
        assert body["type"] == expect.kind, shown
    if expect.message:
        assert expect.message in body["message"], shown


def top_label(response: requests.Response) -> str:
    """The model's top-1 label."""
    return response.json()["predictions"][0]["label"]


_reference: dict[Callable[[], bytes], str] = {}


def reference_label(stack: LiveStack, make: Callable[[], bytes]) -> str:
    """The top label the clean image gets straight from TorchServe (cached per session)."""
    if make not in _reference:
        response = requests.post(
            f"{stack.torchserve}/predictions/{MODEL}",
            data=make(),
            headers={**stack.inference_headers(), **OCTET},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        _reference[make] = top_label(response)
    return _reference[make]


def post(url: str, case: BadInput, headers: dict[str, str]) -> requests.Response:
    """Send the case's body with its headers plus ``headers``."""
    return requests.post(url, data=case.body(), headers={**case.headers, **headers}, timeout=120)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_through_the_bridge(live_stack: LiveStack, case: BadInput) -> None:
    response = post(f"{live_stack.bridge}/predictions/{MODEL}", case, NO_CACHE)

    check(response, case.bridge, "bridge")
    assert response.headers.get("x-request-id"), "every answer of the bridge carries its request id"
    if case.same_answer_as is not None:
        assert top_label(response) == reference_label(live_stack, case.same_answer_as), response.text[:300]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_straight_to_torchserve(live_stack: LiveStack, case: BadInput) -> None:
    response = post(f"{live_stack.torchserve}/predictions/{MODEL}", case, live_stack.inference_headers())

    check(response, case.torchserve, "TorchServe")
    if case.same_answer_as is not None:
        assert top_label(response) == reference_label(live_stack, case.same_answer_as), response.text[:300]


GOOD = p.GOOD_PHOTOS
# Good-photo senders: one and a half of TorchServe's batches of them, so some wait in the queue whatever the
# worker is doing and the bad input finds company there. With fewer senders than a batch, all of them could be
# inside the running batch (or on their way back through the bridge) when the bad input is taken: a batch of 1.
BATCH_SIZE = find_spec(MODEL).workers.batch_size
SENDERS = BATCH_SIZE * 3 // 2


def send_together(
    url: str, case: BadInput, headers: dict[str, str]
) -> tuple[list[requests.Response], requests.Response]:
    """The bad input amid a stream of good photos, so TorchServe batches it with some of them.

    The ``SENDERS`` good-photo senders start first; the bad input is sent once a batch of good photos has been
    answered (a steady stream with a backlog: sent amid the starting burst, it could be first and alone in
    TorchServe's 10 ms batch window). Each sender keeps sending until the bad input is answered (bounded by
    time, not by a count: on a slow machine a multi-megabyte body reaches TorchServe seconds later than the
    batch window, and a count ran out first).
    """
    senders = [GOOD[i % len(GOOD)] for i in range(SENDERS)]
    answered = itertools.count(1)  # next() on it is atomic under the GIL
    flowing = threading.Event()
    done = threading.Event()

    def good(name: str) -> list[requests.Response]:
        answers: list[requests.Response] = []
        until = time.monotonic() + 60
        while not answers or (not done.is_set() and time.monotonic() < until):
            answers.append(requests.post(url, data=p.photo(name), headers={**OCTET, **headers}, timeout=120))
            if next(answered) >= BATCH_SIZE:
                flowing.set()
        return answers

    def bad() -> requests.Response:
        body = case.body()
        flowing.wait(60)
        try:
            return requests.post(url, data=body, headers={**case.headers, **headers}, timeout=120)
        finally:
            done.set()

    with ThreadPoolExecutor(len(senders) + 1) as pool:
        goods = [pool.submit(good, name) for name in senders]
        odd = pool.submit(bad)
        return [r for f in goods for r in f.result()], odd.result()


@pytest.mark.parametrize("route", ["bridge", "torchserve"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_inside_a_batch_of_good_photos(live_stack: LiveStack, case: BadInput, route: str) -> None:
    if route == "bridge":
        url, headers, expect = f"{live_stack.bridge}/predictions/{MODEL}", NO_CACHE, case.bridge
    else:
        url, headers, expect = (
            f"{live_stack.torchserve}/predictions/{MODEL}",
            live_stack.inference_headers(),
            case.torchserve,
        )
    reaches_torchserve = route == "torchserve" or case.name not in BRIDGE_ONLY
    shares_a_batch = not reaches_torchserve or expect == FRONTEND_TOO_LARGE or expect.status == 500
    batch_sizes = []
    for _attempt in range(4):  # a loaded machine may not batch every time; one shared batch is the proof
        goods, odd = send_together(url, case, headers)
        for response in goods:
            assert response.status_code == 200, f"a good photo beside {case.name}: {response.text[:300]}"
        check(odd, expect, f"{route}, inside a batch")
        batch_sizes.append(int(odd.headers.get("x-batch-size", 0)))
        if shares_a_batch or batch_sizes[-1] > 1:
            shares_a_batch = True
            break
    assert shares_a_batch, f"{case.name} never shared a TorchServe batch with the good photos: {batch_sizes}"


def test_normalisation_checks_would_catch_a_wrong_conversion(live_stack: LiveStack) -> None:
    """Controls: what ignoring EXIF, clipping 16 bits or using another frame would look like gets another answer."""
    headers = {**live_stack.inference_headers(), **OCTET}
    url = f"{live_stack.torchserve}/predictions/{MODEL}"
    upright = reference_label(live_stack, p.upright_jpeg)
    for orientation in (6, 8):
        sideways = requests.post(url, data=p.sideways_jpeg(orientation), headers=headers, timeout=60)
        assert top_label(sideways) != upright, "the orientation photo is not orientation-sensitive: pick another"
    grey = np.asarray(Image.open(io.BytesIO(p.grey16_png())), dtype=np.uint16)
    clipped = io.BytesIO()
    Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).save(clipped, format="PNG")
    answer = requests.post(url, data=clipped.getvalue(), headers=headers, timeout=60)
    assert top_label(answer) != reference_label(live_stack, p.grey_png)
    first_frame_only = requests.post(url, data=p.encode(p.photo_image("china"), "GIF"), headers=headers, timeout=60)
    assert top_label(first_frame_only) != reference_label(live_stack, p.single_frame_gif)


def post_raw(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with http.client, which sends str header values as Latin-1 (as browsers do; requests refuses)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()[:300]
    finally:
        conn.close()


@pytest.mark.parametrize("where", ["header", "multipart-part"])
def test_non_ascii_content_type_is_a_client_error(live_stack: LiveStack, where: str) -> None:
    if where == "header":
        body, headers = p.photo(), {"Content-Type": "image/jpeg; name=caf\xe9"}
    else:
        body, headers = p.multipart([("file", "a.jpg", "image/j\xe9pg", p.photo())])
    port = int(live_stack.bridge.rsplit(":", 1)[1])
    status, text = post_raw(port, f"/predictions/{MODEL}", body, {**headers, **NO_CACHE})
    assert status == 200 or 400 <= status < 500, f"{status} {text!r}"


# --- slow and idle connections ------------------------------------------------------------------------

IDLE_CONNECTIONS = 1000
# uvicorn's keep-alive timeout in bridge/__main__.py is 5 s; a request head or body may take at most
# 10 s more (the proposed deadline), so every idle connection must be gone well within this.
CLOSE_DEADLINE_S = 30.0


def _idle_openers(port: int) -> list[Callable[[], socket.socket]]:
    """Ways to hold a connection without finishing a request."""
    head = f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()

    def nothing() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=10)

    def half_a_head() -> socket.socket:
        sock = nothing()
        sock.sendall(head)  # request line and one header, then silence
        return sock

    def half_a_body() -> socket.socket:
        sock = nothing()
        sock.sendall(head + b"Content-Type: image/jpeg\r\nContent-Length: 50000\r\n\r\n" + p.photo()[:1000])
        return sock

    return [nothing, half_a_head, half_a_body]


def open_idle_connections(port: int, count: int) -> list[tuple[str, socket.socket]]:
    """``count`` connections, a third of each kind."""
    openers = _idle_openers(port)
    sockets = []
    for i in range(count):
        opener = openers[i % len(openers)]
        sockets.append((opener.__name__, opener()))
    return sockets


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server closed (EOF or reset); False while it still holds the connection."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True  # EOF (a response, if any, was read first)
    except BlockingIOError:
        return False
    except OSError:
        return True


def serve_normal_clients(stack: LiveStack, count: int = 12) -> list[tuple[int, float]]:
    """(status, seconds) of pings and predictions sent while the idle connections are held."""

    def one(i: int) -> tuple[int, float]:
        started = time.monotonic()
        if i % 2:
            r = requests.get(f"{stack.bridge}/ping", timeout=30)
        else:
            r = requests.post(
                f"{stack.bridge}/predictions/{MODEL}",
                data=p.photo(GOOD[i % len(GOOD)]),
                headers={**NO_CACHE, **OCTET},
                timeout=30,
            )
        return r.status_code, time.monotonic() - started

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(count)))


def test_normal_clients_are_served_while_a_thousand_connections_idle(live_stack: LiveStack) -> None:
    port = int(live_stack.bridge.rsplit(":", 1)[1])
    sockets = open_idle_connections(port, IDLE_CONNECTIONS)
    try:
        served = serve_normal_clients(live_stack)
        assert [s for s, _ in served] == [200] * len(served), served
        assert max(t for _, t in served) < 15, f"normal clients were slowed down: {served}"
    finally:
        for _, sock in sockets:
            sock.close()


def test_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(live_stack: LiveStack) -> None:
    port = int(live_stack.bridge.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(f"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        while not closed_by_peer(sock) and time.monotonic() - started < CLOSE_DEADLINE_S:
            time.sleep(0.25)
        waited = time.monotonic() - started
        assert waited < CLOSE_DEADLINE_S, "an idle keep-alive connection was never closed"
        assert waited >= 4, f"closed after {waited:.1f} s, sooner than the 5 s keep-alive timeout"
    finally:
        sock.close()


def test_idle_and_stalled_connections_are_closed_after_a_deadline(live_stack: LiveStack) -> None:
    port = int(live_stack.bridge.rsplit(":", 1)[1])
    sockets = open_idle_connections(port, IDLE_CONNECTIONS)
    try:
        started = time.monotonic()
        still_open = sockets
        while still_open and time.monotonic() - started < CLOSE_DEADLINE_S:
            time.sleep(1.0)
            still_open = [(kind, sock) for kind, sock in still_open if not closed_by_peer(sock)]
        served = serve_normal_clients(live_stack, count=4)
        assert [s for s, _ in served] == [200] * len(served), served
        kinds = sorted({kind for kind, _ in still_open})
        assert not still_open, (
            f"{len(still_open)} of {len(sockets)} connections still open after {CLOSE_DEADLINE_S:.0f} s ({kinds})"
        )
    finally:
        for _, sock in sockets:
            sock.close()


# --- a client that goes away mid-body -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_bridge(tmp_path_factory: pytest.TempPathFactory, live_stack: LiveStack) -> Iterator[PrivateBridge]:
    """A private bridge with its own log (to read) and databases; pointed at the shared TorchServe."""
    home = tmp_path_factory.mktemp("bare-bridge")
    with private_databases("serving_reliability_inputs") as (dsn, influx_db):
        bridge = PrivateBridge(
            home=home,
            torchserve_url=live_stack.torchserve,
            management_url="http://127.0.0.1:8081",
            metrics_url="http://127.0.0.1:8082/metrics",
            key_file=TorchServe().key_file,
            pg_dsn=dsn,
            influx_database=influx_db,
            env={"BRIDGE_JOB_CONCURRENCY": "0"},
        )
        try:
            bridge.start()
            yield bridge
        finally:
            bridge.stop()


def test_client_gone_mid_body_is_not_a_server_error(bare_bridge: PrivateBridge) -> None:
    log_before = len(bare_bridge.log_text())
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", bare_bridge.port), timeout=10)
        sock.sendall(
            f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n".encode()
            + p.photo()[:1000]
        )
        time.sleep(0.2)
        sock.close()
    time.sleep(1.0)
    log = bare_bridge.log_text()[log_before:]
    assert "ClientDisconnect" not in log and "unhandled error" not in log, log[-2000:]


def test_job_with_non_ascii_content_type_is_refused_at_submission(bare_bridge: PrivateBridge) -> None:
    status, text = post_raw(
        bare_bridge.port, "/v1/jobs?models=classifier", p.photo(), {"Content-Type": "image/jpeg; name=caf\xe9"}
    )
    assert 400 <= status < 500, f"{status} {text!r}"
