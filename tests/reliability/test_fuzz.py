"""Property-based fuzz (hypothesis) of image bytes and of request headers against the live bridge and
TorchServe: every request gets an HTTP answer, and never a 5xx.

What counts as what is ``answers.judge``: a connection reset or closed before any answer, a broken pipe with
nothing said, a timeout and every 5xx are failures. No 503 is excused here — TorchServe's "no worker" 503 is
excused only in the tests that kill a worker or overfill a queue on purpose (test_faults_worker.py,
test_faults_burst.py), and these requests are sent one at a time.

Deterministic (``derandomize=True``, no example database) and bounded (example counts, per-example
deadline, socket timeouts), so CI runs the same few hundred requests in a couple of minutes.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import LiveStack
from tests.reliability import payloads as p
from tests.reliability.answers import Answer, judge, judge_raw, raw_exchange, send

MODEL = "classifier"
# Long enough for a prediction on a busy 2-core machine: a slower answer is a timeout, hence a failure.
TIMEOUT_S = 20.0
# The statuses an image can legitimately get: served, or refused with a reason.
IMAGE_STATUSES = {200, 400, 413, 415, 422}


def fuzz_settings(examples: int) -> Any:
    """Same examples on every run, bounded in number and time."""
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=45),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def bridge_predict(stack: LiveStack, body: bytes, content_type: str | None = "application/octet-stream") -> Answer:
    headers = {"Cache-Control": "no-cache"} | ({"Content-Type": content_type} if content_type is not None else {})
    return send(stack.bridge, "POST", f"/predictions/{MODEL}", body, headers, TIMEOUT_S)


def torchserve_predict(stack: LiveStack, body: bytes, content_type: str | None = "application/octet-stream") -> Answer:
    headers = stack.inference_headers() | ({"Content-Type": content_type} if content_type is not None else {})
    return send(stack.torchserve, "POST", f"/predictions/{MODEL}", body, headers, TIMEOUT_S)


# --- image bytes --------------------------------------------------------------------------------------

SEEDS = p.fuzz_seeds()
SEED_NAMES = sorted(SEEDS)
FRACTION = st.floats(0.0, 1.0, exclude_max=True)


def _at(data: bytes | bytearray, where: float) -> int:
    return int(where * len(data))


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """Real images of every accepted format, truncated, bit-flipped, overwritten, spliced; or random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "splice", "magic+random", "random", "photo"]))
    seed = SEEDS[draw(st.sampled_from(SEED_NAMES))]
    if kind == "truncate":
        return seed[: _at(seed, draw(FRACTION))]
    if kind in ("flip", "overwrite"):
        data = bytearray(seed)
        for where, value in draw(st.lists(st.tuples(FRACTION, st.integers(0, 255)), min_size=1, max_size=16)):
            data[_at(data, where)] = data[_at(data, where)] ^ (1 << (value % 8)) if kind == "flip" else value
        return bytes(data)
    if kind == "splice":  # the head of one format glued to the tail of another
        other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
        return seed[: _at(seed, draw(FRACTION))] + other[_at(other, draw(FRACTION)) :]
    if kind == "magic+random":
        return p.MAGIC[draw(st.sampled_from(sorted(p.MAGIC)))] + draw(st.binary(max_size=4096))
    if kind == "photo":  # a full-size real JPEG with a few flipped bits, then cut
        data = bytearray(p.photo("chelsea"))
        for where in draw(st.lists(FRACTION, min_size=1, max_size=4)):
            data[_at(data, where)] ^= 0x10
        return bytes(data[: max(1, _at(data, draw(st.floats(0.5, 1.0))))])
    return draw(st.binary(max_size=4096))


@fuzz_settings(150)
@given(body=mutated_images())
def test_mutated_images_never_get_a_server_error(live_stack: LiveStack, body: bytes) -> None:
    via_bridge = bridge_predict(live_stack, body)
    direct = torchserve_predict(live_stack, body)
    event(f"bridge {via_bridge.status}, TorchServe {direct.status}")  # --hypothesis-show-statistics

    assert judge(via_bridge) is None, f"bridge: {judge(via_bridge)}"
    assert judge(direct) is None, f"TorchServe: {judge(direct)}"
    assert via_bridge.status in IMAGE_STATUSES, via_bridge
    # The bridge passes TorchServe's answer through; only an empty body is refused by the bridge first.
    assert via_bridge.status == direct.status, f"bridge {via_bridge!r} vs TorchServe {direct!r}"


# --- headers ------------------------------------------------------------------------------------------

KNOWN_TYPES = [
    "application/octet-stream",
    "image/jpeg",
    "image/png",
    "image/*",
    "application/json",
    "text/plain",
    "text/html; charset=utf-8",
    "application/json; charset=latin-1",
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "multipart/form-data; boundary=",
    "multipart/mixed; boundary=x",
    "application/x-www-form-urlencoded",
    "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
    "application/xml",
    "",
    ";",
    "image/jpeg; q=0.5; boundary=",
    "*/*",
    "application/x-www-form-urlencoded2",
]
# Printable ASCII. A non-ASCII Content-Type is a known bridge 500 (httpx cannot forward it), pinned by
# test_bad_inputs.py::test_non_ascii_content_type_is_a_client_error until the bridge refuses it itself.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


def content_types() -> st.SearchStrategy[str]:
    """Known-tricky content types, and random ones built from type/subtype/parameters."""
    token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-+.*/"), min_size=0, max_size=20)
    built = st.builds(
        lambda t, s, params: f"{t}/{s}" + "".join(f"; {k}={v}" for k, v in params),
        token,
        token,
        st.lists(st.tuples(token, HEADER_TEXT), max_size=3),
    )
    return st.one_of(st.sampled_from(KNOWN_TYPES), built, HEADER_TEXT)


def is_form_type(content_type: str) -> bool:
    """Types TorchServe's Java frontend parses as a form itself (see test_torchserve_frontend_form_errors)."""
    lowered = content_type.lower()
    return "application/x-www-form-urlencoded" in lowered or "multipart/form-data" in lowered


BODIES = {
    "photo": p.photo("coffee"),
    "text": p.TEXT,
    "form": b"a=b&c=%zz&d",
    "multipart": p.multipart_one_file()[0],
    "empty": b"",
    "binary": bytes(range(256)),
}


@fuzz_settings(100)
@given(content_type=content_types(), body_name=st.sampled_from(sorted(BODIES)))
def test_content_types_never_get_a_server_error(live_stack: LiveStack, content_type: str, body_name: str) -> None:
    body = BODIES[body_name]
    via_bridge = bridge_predict(live_stack, body, content_type)
    event(f"bridge {via_bridge.status}")
    assert judge(via_bridge) is None, f"bridge, {content_type!r}: {judge(via_bridge)}"
    if not is_form_type(content_type):
        direct = torchserve_predict(live_stack, body, content_type)
        event(f"TorchServe {direct.status}")
        assert judge(direct) is None, f"TorchServe, {content_type!r}: {judge(direct)}"


@pytest.mark.parametrize(
    ("content_type", "body", "java_exception"),
    [
        ("application/x-www-form-urlencoded", p.photo("coffee"), "ErrorDataDecoderException"),
        ("multipart/form-data; boundary=", p.photo("coffee"), "StringIndexOutOfBoundsException"),
        ("multipart/form-data; boundary=", b"a=b", "StringIndexOutOfBoundsException"),
    ],
    ids=["urlencoded-binary", "multipart-empty-boundary-photo", "multipart-empty-boundary-text"],
)
def test_torchserve_frontend_form_errors_are_shielded_by_the_bridge(
    live_stack: LiveStack, content_type: str, body: bytes, java_exception: str
) -> None:
    """TorchServe 0.12's Java frontend parses form bodies before any handler and answers these with a 500
    naming a Java exception; the project cannot change that (TorchServe is archived), so TorchServe stays
    on loopback and the bridge — which parses forms itself — answers 200 or a 4xx for the same request."""
    direct = torchserve_predict(live_stack, body, content_type)
    assert direct.status == 500 and java_exception in direct.body.decode("utf-8", "replace"), direct
    via_bridge = bridge_predict(live_stack, body, content_type)
    assert via_bridge.status in (200, 400), via_bridge


# A server still waiting for a promised body after this long will not answer (slow bodies: test_bad_inputs).
RAW_QUIET_S = 1.5


# Framing headers: ("delta", n) is a Content-Length n bytes off the body's length; ("raw", header, must_answer)
# is sent as is. An invalid Content-Length must get its 400 (RFC 9112 §6.3); a chunked body that is not chunked,
# or a length larger than the body, may leave the server waiting for bytes that never come.
LENGTH_HEADERS = st.one_of(
    st.integers(-100, 100).map(lambda delta: ("delta", delta)),
    st.sampled_from(
        [
            ("raw", b"Content-Length: abc\r\n", True),
            ("raw", b"Content-Length: -1\r\n", True),
            ("raw", b"Content-Length: 10\r\nContent-Length: 20\r\n", True),
            ("raw", b"Content-Length: 99999999999999999999\r\n", False),
            ("raw", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", False),
            ("raw", b"Transfer-Encoding: chunked\r\n", False),
            ("raw", b"Transfer-Encoding: gzip, chunked\r\n", False),
            ("raw", b"Content-Length: 0x10\r\n", True),
            ("raw", b"Content-Length:  12 \r\n", True),
            ("raw", b"", True),  # no body at all: a complete request
        ]
    ),
)


def framing_of(length: tuple[Any, ...], body: bytes) -> tuple[bytes, bool]:
    """The framing header bytes, and whether the request is complete (so an answer is owed)."""
    if length[0] == "delta":
        declared = max(0, len(body) + length[1])
        return f"Content-Length: {declared}\r\n".encode(), declared <= len(body)
    return length[1], length[2]


@fuzz_settings(60)
@given(length=LENGTH_HEADERS, body_name=st.sampled_from(["photo", "text", "binary"]), half_close=st.booleans())
def test_content_length_mismatches_never_get_a_server_error(
    live_stack: LiveStack, length: tuple[Any, ...], body_name: str, half_close: bool
) -> None:
    body = BODIES[body_name]
    framing, complete = framing_of(length, body)
    for base, auth in (
        (live_stack.bridge, {"Cache-Control": "no-cache"}),
        (live_stack.torchserve, live_stack.inference_headers()),
    ):
        head = (
            (
                f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: {base.removeprefix('http://')}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in auth.items())
            ).encode()
            + b"Content-Type: image/jpeg\r\n"
            + framing
            + b"\r\n"
        )
        exchange = raw_exchange(base, head + body, half_close, TIMEOUT_S, RAW_QUIET_S)
        to_torchserve = base == live_stack.torchserve
        event(f"{'TorchServe' if to_torchserve else 'bridge'} {exchange.statuses or exchange.ending}")
        # TorchServe's Netty closes a connection whose client shut its sending side (half-closure off) and
        # drops the request unanswered; the bridge, TorchServe's only public face, must answer it.
        must_answer = complete and not (half_close and to_torchserve)
        problem = judge_raw(exchange, must_answer)
        assert problem is None, f"{base} {framing!r} half_close={half_close}: {problem}"


BRIDGE_ROUTES = [
    f"/predictions/{MODEL}",
    f"/predictions/{MODEL}/1.0",
    "/predictions/no-such-model",
    "/v1/jobs",
    "/v1/jobs/00000000-0000-0000-0000-000000000000",
    "/v1/jobs/not-a-uuid",
    "/v1/results",
    f"/v1/results?model={MODEL}&limit=1",
    f"/v1/reports/labels?model={MODEL}",
    "/v1/reports/nope",
    "/ping",
    "/openapi.json",
    "/docs",
    "/no/such/route",
    "/predictions/..%2f..%2fetc%2fpasswd",
    "/predictions/%00",
    "//predictions/classifier",
    f"/predictions/{MODEL}?x=" + "a" * 8000,
]
TORCHSERVE_ROUTES = [
    f"/predictions/{MODEL}",
    f"/predictions/{MODEL}/1.0",
    "/predictions/no-such-model",
    "/ping",
    "/api-description",
    "/models",
    f"/explanations/{MODEL}",
    f"/v1/models/{MODEL}:predict",
    f"/v2/models/{MODEL}/infer",
    "/no/such/route",
    "/predictions/..%2f..%2fetc",
    f"/predictions/{MODEL}?x=" + "a" * 8000,
]
METHODS = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "MKCOL"]),
    st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ_-"), min_size=1, max_size=12),
)


@fuzz_settings(120)
@given(method=METHODS, route=st.integers(0, 10_000), body=st.one_of(st.none(), st.binary(max_size=64)))
def test_odd_methods_on_every_route_never_get_a_server_error(
    live_stack: LiveStack, method: str, route: int, body: bytes | None
) -> None:
    bridge_path = BRIDGE_ROUTES[route % len(BRIDGE_ROUTES)]
    if not (method == "POST" and bridge_path == "/v1/jobs"):  # would queue real jobs on the shared stack
        answer = send(live_stack.bridge, method, bridge_path, body, {"Cache-Control": "no-cache"}, TIMEOUT_S)
        event(f"bridge {answer.status}")
        assert judge(answer) is None, f"bridge {method} {bridge_path[:80]}: {judge(answer)}"
    ts_path = TORCHSERVE_ROUTES[route % len(TORCHSERVE_ROUTES)]
    answer = send(live_stack.torchserve, method, ts_path, body, live_stack.inference_headers(), TIMEOUT_S)
    event(f"TorchServe {answer.status}")
    assert judge(answer) is None, f"TorchServe {method} {ts_path[:80]}: {judge(answer)}"
