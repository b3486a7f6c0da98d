"""The harness itself: client-side trouble is counted as a failure, never a pass, and the report is not
GREEN unless every test passed. No services: a tiny local server misbehaves on purpose."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.answers import judge, judge_raw, raw_exchange, send
from tests.reliability.load import (
    BRIDGE_WORKER_FAILED,
    CLOSED,
    GARBLED,
    NO_WORKER,
    QUEUE_FULL,
    REFUSED,
    RESET,
    TIMEOUT,
    TORCHSERVE_NO_WORKER,
    Excuse,
    Load,
    Outcome,
    assert_no_failures,
    classify,
    failures,
)
from tests.reliability.report import render

PHOTO = b"\xff\xd8" + b"\x00" * 64
PREDICTION = json.dumps({"tabby": 0.9}).encode()


def http(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return head.encode() + b"\r\n" + body


# What the misbehaving server does, by the last part of the request's path.
ANSWERS = {
    "ok": http(200, PREDICTION, {"X-Request-Id": "r1"}),
    "no-id": http(200, PREDICTION),
    "not-json": http(200, b"<html>oops", {"X-Request-Id": "r1"}),
    "empty": http(200, b"", {"X-Request-Id": "r1"}),
    "cut": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nX-Request-Id: r1\r\n\r\n{\"tabby\"",
    "garbage": b"SSH-2.0-OpenSSH_9.2\r\n",
    "no-worker": http(503, f'{{"message": "Model \\"m\\" {TORCHSERVE_NO_WORKER}"}}'.encode(),
                      {"X-Request-Id": "r1", "Retry-After": "1"}),
    "worker-failed": http(503, f'{{"message": "{BRIDGE_WORKER_FAILED} (Worker died.)"}}'.encode(),
                          {"X-Request-Id": "r1", "Retry-After": "1"}),
    "no-worker-no-retry-after": http(503, TORCHSERVE_NO_WORKER.encode(), {"X-Request-Id": "r1"}),
    "server-error": http(500, b'{"message": "boom"}', {"X-Request-Id": "r1"}),
    "bad-request": http(400, b'{"message": "not an image"}', {"X-Request-Id": "r1"}),
    "job": http(202, b'{"id": "j1"}', {"X-Request-Id": "r1"}),
    "job-garbled": http(202, b"accepted", {"X-Request-Id": "r1"}),
}


class Misbehaving(socketserver.BaseRequestHandler):
    """Reads one request, then answers as its path says, resets, closes, or says nothing."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(5)
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
        path = data.split(b" ", 2)[1].decode() if data.count(b" ") >= 2 else "/"
        mode = path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if path.startswith("/v1/jobs"):
            mode = "job-garbled" if "garbled" in path else "job"
        if mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # an RST now, before socketserver's own shutdown() would send a FIN
        elif mode == "silent":
            with contextlib.suppress(OSError):
                while sock.recv(65536):  # until the client gives up
                    pass
        elif mode in ANSWERS:
            with contextlib.suppress(OSError):
                sock.sendall(ANSWERS[mode])
        # "close" (and anything unknown): close without a word


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Misbehaving) as srv:
        srv.daemon_threads = True
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{srv.server_address[1]}"
        srv.shutdown()


def load_against(url: str, mode: str, **kwargs: object) -> list[Outcome]:
    """A short load whose every request gets ``mode``'s treatment."""
    load = Load(url, PHOTO, model=mode, threads=1, duration_s=0.3, timeout_s=1.0, fail_pause_s=0.05,
                **kwargs)  # type: ignore[arg-type]
    load.start()
    return load.join()


def outcome(status: int | None, error: str | None = None, body: str = "", retry_after: str | None = "1",
            request_id: str | None = "r1", started_s: float = 1.0) -> Outcome:
    return Outcome("predict", started_s, 0.1, status, error, request_id, retry_after, "sha", None, body)


# --- the load generator's classifier --------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("reset", RESET),  # or CLOSED, as the RST races the client's read: a failure either way
        ("close", CLOSED),
        ("silent", TIMEOUT),
        ("garbage", GARBLED),
        ("cut", GARBLED),
        ("not-json", f"200 {GARBLED}"),
        ("empty", f"200 {GARBLED}"),
        ("no-id", "200 without its request id"),
        ("no-worker", "503 not excused"),
        ("worker-failed", "503 not excused"),
        ("server-error", "500 not excused"),
        ("bad-request", "400 unexpected"),
    ],
)
def test_the_load_counts_client_side_trouble_as_failures(server: str, mode: str, why: str) -> None:
    outcomes = load_against(server, mode)
    assert outcomes, "the load sent nothing"
    assert not any(o.acknowledged for o in outcomes)
    reasons = {reason for _, reason in failures(outcomes)}
    assert reasons == {why} or (why == RESET and reasons <= {RESET, CLOSED}), reasons
    with pytest.raises(AssertionError, match="requests failed"):
        assert_no_failures(outcomes)


def test_a_refused_connection_is_a_failure() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcomes = load_against(f"http://127.0.0.1:{port}", "ok")
    assert outcomes and {why for _, why in failures(outcomes)} == {REFUSED}


def test_a_reset_while_sending_a_large_body_is_a_failure(server: str) -> None:
    load = Load(server, PHOTO + b"\x00" * 8_000_000, model="reset", threads=1, duration_s=0.3, timeout_s=2.0)
    outcomes = load.start().join()
    assert outcomes and {why for _, why in failures(outcomes)} <= {RESET, "broken pipe", CLOSED}


def test_a_served_load_has_no_failures(server: str) -> None:
    """Control: the same checks pass when every answer is right."""
    outcomes = load_against(server, "ok")
    assert outcomes and all(o.acknowledged for o in outcomes)
    assert_no_failures(outcomes)


def test_a_garbled_job_answer_is_a_failure_and_the_job_client_keeps_going(server: str) -> None:
    outcomes = load_against(server, "ok", jobs_every_s=0.05, job_models="garbled")
    jobs = [o for o in outcomes if o.kind == "job"]
    assert len(jobs) >= 2, "the job client stopped at the first garbled answer"
    assert {why for _, why in failures(outcomes, kind="job")} == {f"202 {GARBLED}"}


def test_no_worker_is_excused_only_where_the_test_says_so(server: str) -> None:
    no_worker = load_against(server, "no-worker")
    worker_failed = load_against(server, "worker-failed")
    assert failures(no_worker) and failures(worker_failed), "nothing is excused by default"
    assert_no_failures(no_worker, [NO_WORKER])
    assert_no_failures(worker_failed, [NO_WORKER])
    assert_no_failures(no_worker, [QUEUE_FULL])
    assert failures(worker_failed, [QUEUE_FULL]), "a full queue does not excuse a dead worker"


@pytest.mark.parametrize(
    "unexcused",
    [
        outcome(503, body=TORCHSERVE_NO_WORKER, retry_after=None),  # no Retry-After: not a retryable 503
        outcome(500, body=f"Worker died. {TORCHSERVE_NO_WORKER}"),  # another status
        outcome(503, body="TorchServe is not reachable; retry shortly"),  # another reason
        outcome(None, error=RESET),
        outcome(None, error=TIMEOUT),
        outcome(503, error=GARBLED, body=TORCHSERVE_NO_WORKER),
        outcome(503, body=TORCHSERVE_NO_WORKER, started_s=9.0),  # outside the excuse's window
    ],
    ids=["no-retry-after", "500", "other-503", "reset", "timeout", "garbled", "outside-window"],
)
def test_an_excuse_covers_only_what_it_names(unexcused: Outcome) -> None:
    assert classify(unexcused, [NO_WORKER.during(0.0, 5.0)]).kind == "failure"


def test_an_excuse_for_no_answer_names_the_errors_it_covers() -> None:
    bridge_down = Excuse("the bridge was killed on purpose", None, errors=(REFUSED,), start=1.0, end=2.0)
    assert classify(outcome(None, error=REFUSED, started_s=1.5), [bridge_down]).kind == "excused"
    assert classify(outcome(None, error=TIMEOUT, started_s=1.5), [bridge_down]).kind == "failure"
    assert classify(outcome(None, error=REFUSED, started_s=2.5), [bridge_down]).kind == "failure"


# --- the fuzz's exchanges -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reset", "close", "silent", "garbage", "no-worker", "server-error"])
def test_the_fuzz_counts_no_answer_and_server_errors_as_failures(server: str, mode: str) -> None:
    answer = send(server, "POST", f"/predictions/{mode}", b"x" * 100, {}, timeout_s=1.0)
    assert judge(answer) is not None, answer


def test_the_fuzz_accepts_an_answer_below_500(server: str) -> None:
    assert judge(send(server, "POST", "/predictions/bad-request", b"x", {}, timeout_s=1.0)) is None


def test_a_5xx_passes_the_fuzz_only_when_the_test_excuses_it(server: str) -> None:
    answer = send(server, "POST", "/predictions/no-worker", b"x", {}, timeout_s=1.0)
    assert judge(answer) is not None
    assert judge(answer, excused=lambda a: a.status == 503) is None


@pytest.mark.parametrize("mode", ["reset", "close", "silent"])
def test_a_complete_raw_request_without_an_answer_is_a_failure(server: str, mode: str) -> None:
    exchange = raw_exchange(server, f"POST /predictions/{mode} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), False,
                            answer_within_s=1.0, quiet_s=0.5)
    assert exchange.statuses == []
    assert judge_raw(exchange, must_answer=True) is not None, exchange
    assert judge_raw(exchange, must_answer=False) is None, "a request still missing bytes may get no answer"


def test_a_raw_garbled_answer_or_server_error_is_a_failure(server: str) -> None:
    for mode in ("garbage", "server-error"):
        exchange = raw_exchange(server, f"GET /x/{mode} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), False, 1.0, 0.5)
        assert judge_raw(exchange, must_answer=False) is not None, exchange


# --- the report's verdict -------------------------------------------------------------------------


def junit(tmp_path: Path, *cases: str) -> Path:
    body = "".join(f'<testcase classname="tests.reliability.test_x" name="test_{i}" time="0.1">{c}</testcase>'
                   for i, c in enumerate(cases))
    (tmp_path / "junit.xml").write_text(f'<testsuites><testsuite name="pytest" time="1">{body}</testsuite></testsuites>')
    return tmp_path


def test_the_report_is_green_when_every_test_passed(tmp_path: Path) -> None:
    page, ok = render(junit(tmp_path, "", ""))
    assert ok and "·  GREEN  ·" in page


@pytest.mark.parametrize(
    ("case", "outcome_name"),
    [
        ('<skipped type="pytest.skip" message="model_store/x.mar is missing"/>', "SKIP"),
        ('<error message="fixture failed"/>', "ERROR"),
        ('<failure message="assert 1 == 2"/>', "FAIL"),
        ('<skipped type="pytest.xfail" message="known bug"/>', "XFAIL"),
    ],
)
def test_the_report_is_not_green_when_a_test_did_not_pass(tmp_path: Path, case: str, outcome_name: str) -> None:
    page, ok = render(junit(tmp_path, "", case))
    assert not ok and "NOT GREEN" in page
    assert f"{outcome_name} test_x::test_1" in page, page


def test_the_report_is_not_green_without_results(tmp_path: Path) -> None:
    page, ok = render(tmp_path)
    assert not ok and "no test results" in page
