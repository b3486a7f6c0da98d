"""One HTTP exchange sent exactly as given (the fuzz tests), and what its answer counts as.

Nothing passes by default: a connection reset or closed before any answer, a broken pipe with nothing
said, a timeout and a server error are each a failure. A test that provokes a 5xx on purpose passes it as
an excuse (``judge(..., excused=...)``); the fuzz passes none.
"""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.reliability.load import GARBLED, connection_error


@dataclass
class Answer:
    """One exchange as the client saw it: ``status`` None when no HTTP answer came (``error`` says why)."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    def __repr__(self) -> str:
        return f"{self.status if self.status is not None else self.error} {self.body[:300]!r}"


def send(base: str, method: str, path: str, body: bytes | None, headers: dict[str, str],
         timeout_s: float) -> Answer:
    """Send one request exactly as given; no header is added but Host (and Content-Length for a body)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    sending_failed: OSError | None = None
    try:
        try:
            conn.request(method, path, body=body, headers=headers)
        except (ConnectionResetError, BrokenPipeError) as exc:
            # A server may answer early (e.g. 405, 413) and close before reading the whole body: what it said
            # is still in our receive buffer. Read it; only when there is none is the reset the outcome.
            sending_failed = exc
        try:
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        except (OSError, http.client.HTTPException) as exc:
            return Answer(None, error=connection_error(sending_failed or exc))
    finally:
        conn.close()


def judge(answer: Answer, excused: Callable[[Answer], bool] | None = None) -> str | None:
    """None for an answer that counts as one (any status below 500); otherwise what was wrong.

    ``excused``: the 5xx a test provoked on purpose (none by default).
    """
    if answer.status is None:
        return f"no answer: {answer.error}"
    if answer.status >= 500 and not (excused and excused(answer)):
        return f"server error {answer!r} headers={answer.headers}"
    return None


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@dataclass
class RawExchange:
    """Bytes sent on a fresh socket: the status lines that came back, and how the exchange ended."""

    statuses: list[int]
    received: bytes
    ending: str  # "closed" (FIN), a connection error (reset...), "timeout" before any answer, "quiet" after one


def raw_exchange(base: str, data: bytes, half_close: bool, answer_within_s: float, quiet_s: float) -> RawExchange:
    """Send ``data``, optionally half-close, read until the server closes, or is quiet ``quiet_s`` after its
    first status line, or says nothing within ``answer_within_s``."""
    host, port = base.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=answer_within_s) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered early and closed (e.g. 413): what it said is read below, or the reset is
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if STATUS_LINE.search(received):
                    sock.settimeout(quiet_s)  # answered: the rest may be a server waiting for the next request
            ending = "closed"
        except TimeoutError:
            ending = "quiet" if STATUS_LINE.search(received) else "timeout"
        except OSError as exc:
            ending = connection_error(exc)
    return RawExchange([int(s) for s in STATUS_LINE.findall(received)], received, ending)


def judge_raw(exchange: RawExchange, must_answer: bool) -> str | None:
    """None when acceptable: no 5xx, and a status line whenever ``must_answer`` (the request was complete
    or its framing invalid); a request still missing body bytes may get no answer (the server waits)."""
    if any(s >= 500 for s in exchange.statuses):
        return f"server error: {exchange.received[:500]!r}"
    if must_answer and not exchange.statuses:
        return f"no answer ({exchange.ending}): {exchange.received[:200]!r}"
    if exchange.statuses == [] and exchange.received:
        return f"{GARBLED}: {exchange.received[:200]!r}"
    return None
