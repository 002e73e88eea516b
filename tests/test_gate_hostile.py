"""A hostile Prometheus and hostile rollout times: the gate's answer is bounded and never raises, and a wave that
would open after the year 9999 is refused at validation instead of crashing every command.

The trickling servers are raw TCP servers on loopback that send one byte at a time, so that every socket read
gets something before its timeout: only a deadline for the whole exchange ends it."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from controller.fleet import gate, waves
from controller.manifests import loading, model
from tests import support
from tests.test_rollout_manifests import FILE, GOOD, refused

PACE = 0.2  # seconds between two trickled bytes: far less than any socket timeout here
BOUND = 10.0  # seconds within which a gate of timeoutSeconds 1 must answer (it hung forever before)


class Trickler:
    """Accepts one connection, reads what the client sends, sends `head`, then `byte` every PACE seconds until
    the client hangs up (`hung_up` is set then) or the test stops it."""

    def __init__(self, head: bytes, byte: bytes) -> None:
        self.head, self.byte = head, byte
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hung_up, self.stopped = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            connection, _ = self.listener.accept()
            with connection:
                if self._trickle(connection):
                    self.hung_up.set()

    def _trickle(self, connection: socket.socket) -> bool:
        """True when the client hung up, False when the test stopped first."""
        try:
            connection.recv(65536)
            connection.sendall(self.head)
            while not self.stopped.is_set():
                connection.sendall(self.byte)
                readable, _, _ = select.select([connection], [], [], PACE)
                if readable and not connection.recv(1):
                    return True
        except OSError:  # reset or broken pipe: the client went away
            return True
        return False

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def trickler(request: pytest.FixtureRequest) -> Iterator[Trickler]:
    server = Trickler(*request.param)
    yield server
    server.close()  # also ends a gate that never hung up: its read gets the end of the stream


def ask_bounded(which: model.Gate) -> tuple[gate.Answer | None, float]:
    """gate.ask on a thread of the test's, given BOUND seconds: its answer (None: still asking) and how long."""
    answers: list[gate.Answer] = []
    started = time.monotonic()
    asking = threading.Thread(target=lambda: answers.append(gate.ask(which)), daemon=True)
    asking.start()
    asking.join(BOUND)
    return (answers[0] if answers else None), time.monotonic() - started


TLS_RECORD = b"\x16\x03\x03\x40\x00"  # a TLS handshake record header announcing 16384 bytes, which then trickle


@pytest.mark.parametrize("trickler, scheme", [
    ((b"", b"H"), "http"),
    ((b"HTTP/1.1 200 OK\r\n", b"X"), "http"),
    ((b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n", b"1"), "http"),
    ((TLS_RECORD, b"\x00"), "https"),
], ids=["status-line", "headers", "chunk-size", "tls-handshake"], indirect=["trickler"])
def test_a_prometheus_trickling_its_answer_a_byte_at_a_time_is_closed_at_the_timeout_and_hung_up_on(
        trickler: Trickler, scheme: str) -> None:
    which = model.Gate(prometheus=f"{scheme}://127.0.0.1:{trickler.port}", query="ALERTS", timeout_seconds=1)
    answer, took = ask_bounded(which)
    assert answer == gate.Answer(False, "Prometheus did not answer within 1 s"), f"no answer in {took:.1f} s"
    assert took < BOUND
    assert trickler.hung_up.wait(5), "the gate's connection was left open, with a thread still reading it"


@pytest.fixture(scope="module")
def http() -> Iterator[support.HttpServer]:
    server = support.HttpServer()
    yield server
    server.close()


DEEP = b"[" * 500_000  # under MAX_BYTES, far deeper than Python's recursion limit


@pytest.mark.parametrize("status, expected", [
    (200, "Prometheus answered HTTP 200 with a body that is not a JSON object"),
    (503, "Prometheus answered HTTP 503"),
])
def test_an_answer_nested_too_deeply_to_decode_closes_the_gate_instead_of_raising(
        http: support.HttpServer, status: int, expected: str) -> None:
    http.serve("/api/v1/query", support.Reply(status, DEEP))
    assert gate.ask(model.Gate(prometheus=http.url(""), query="ALERTS", timeout_seconds=5)) == gate.Answer(
        False, expected)


def test_judge_reads_a_deeply_nested_document_as_no_json() -> None:
    assert gate.judge("up", 200, DEEP + b"]" * 500_000) == gate.Answer(
        False, "Prometheus answered HTTP 200 with a body that is not a JSON object")


# ---------------------------------------------------------------- times after the year 9999


@pytest.mark.parametrize("started, after", [
    ("9999-12-31T23:00:00Z", "2h"),
    ("9999-12-31T22:00:00Z", "2h"),
    ("2026-12-01T10:00:00Z", "99999999999h"),
])
def test_a_wave_opening_after_the_year_9999_is_refused_naming_startedat_and_after(started: str, after: str) -> None:
    problem = refused(GOOD.replace("2026-12-01T10:00:00Z", started).replace("after: 2h", f"after: {after}"))
    assert (problem.line, problem.pointer) == (15, "/spec/rollout/waves/2/after")
    assert f"wave 3 would open after the year 9999 (startedAt {started} + after {after})" in problem.detail


def test_a_wave_opening_in_the_last_second_of_the_year_9999_is_accepted() -> None:
    app = loading.parse(FILE, GOOD.replace("2026-12-01T10:00:00Z", "9999-12-31T21:59:59Z"))
    assert isinstance(app, model.Application) and app.rollout is not None
    opens = waves.opens_at(app.rollout, 2)
    assert opens is not None and waves.iso(opens) == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize("seconds, expected", [
    (253402300799.0, "9999-12-31T23:59:59Z"),
    (253402300800.0, "9999-12-31T23:59:59Z"),
    (253402297200.0 + 7200, "9999-12-31T23:59:59Z"),
    (1e300, "9999-12-31T23:59:59Z"),
    (float("inf"), "9999-12-31T23:59:59Z"),
    (float("nan"), "9999-12-31T23:59:59Z"),
    (-62135596800.0, "0001-01-01T00:00:00Z"),
    (-1e300, "0001-01-01T00:00:00Z"),
    (float("-inf"), "0001-01-01T00:00:00Z"),
    (1796119200.5, "2026-12-01T10:00:00.500Z"),
])
def test_iso_never_raises_and_shows_times_out_of_range_as_the_nearest_one_it_can(seconds: float,
                                                                                 expected: str) -> None:
    assert waves.iso(seconds) == expected


def test_a_rollout_opening_after_the_year_9999_that_bypassed_validation_is_decided_without_raising() -> None:
    started = model.timestamp("9999-12-31T23:00:00Z")
    rollout = model.Rollout(from_deployment="v1", id="acme-v2", started_at=started,
                            started_at_text="9999-12-31T23:00:00Z",
                            waves=(model.Wave(percent=100, after_seconds=7200.0, after="2h"),))
    decision = waves.decide(rollout, "v2", "acme", "web-01", {}, time.time(), None, None)
    assert decision.desired == "v1"
    assert "opens at 9999-12-31T23:59:59Z" in decision.reason
