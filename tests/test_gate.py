"""The rollout gate against a real HTTP server on loopback: every answer shape, and the per-application cache."""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from controller.fleet import gate
from controller.manifests import model
from tests import support

QUERY = 'ALERTS{alertstate="firing", application="acme"}'


def answer_of(http: support.HttpServer, *replies: support.Reply | bytes, timeout: float = 2.0,
              query: str = QUERY) -> gate.Answer:
    http.serve("/api/v1/query", *replies)
    return gate.ask(model.Gate(prometheus=http.url(""), query=query, timeout_seconds=timeout))


def body(result_type: str, result: object, status: str = "success") -> bytes:
    return json.dumps({"status": status, "data": {"resultType": result_type, "result": result}}).encode()


@pytest.fixture(scope="module")
def http() -> Iterator[support.HttpServer]:
    """One server for the module (each test serves its own replies): stopping one takes half a second."""
    server = support.HttpServer()
    yield server
    server.close()


SERIES = {"metric": {"__name__": "ALERTS", "alertname": "AcmeDown"}, "value": [1, "1"]}


def test_an_empty_vector_opens_the_gate_and_the_query_is_sent_url_encoded(http: support.HttpServer) -> None:
    answer = answer_of(http, body("vector", []))
    assert answer == gate.Answer(True, "ALERTS returned no series")
    path, headers = http.requests[-1]
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(path).query) == {"query": [QUERY]}
    assert "Authorization" not in headers


def test_an_empty_matrix_opens_the_gate_too(http: support.HttpServer) -> None:
    assert answer_of(http, body("matrix", [])).open


def test_series_in_the_result_close_the_gate_and_the_message_counts_them(http: support.HttpServer) -> None:
    assert answer_of(http, body("vector", [SERIES])) == gate.Answer(False, "ALERTS returned 1 series")
    answer = answer_of(http, body("vector", [SERIES, SERIES]), query="sum(rate(errors[5m])) > 1")
    assert answer == gate.Answer(False, "the query returned 2 series")


@pytest.mark.parametrize("reply, expected", [
    (support.Reply(503, b"unavailable"), "Prometheus answered HTTP 503"),
    (support.Reply(400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}).encode()),
     "Prometheus answered HTTP 400: parse error"),
    (support.Reply(200, json.dumps({"status": "error", "error": "query timed out"}).encode()),
     "the query failed (status 'error'): query timed out"),
    (support.Reply(200, b"<html>not json</html>"), "not a JSON object"),
    (support.Reply(200, b"[]"), "not a JSON object"),
    (support.Reply(200, json.dumps({"status": "success", "data": {}}).encode()), "no data.result list"),
    (support.Reply(200, body("scalar", [1, "0"])), "returned a scalar, not series"),
    (support.Reply(200, body("string", [1, "x"])), "returned a string, not series"),
    (support.Reply(404, b"not found"), "HTTP 404"),
], ids=["503", "400-error", "status-error", "html", "array", "no-result", "scalar", "string", "404"])
def test_no_data_never_passes(http: support.HttpServer, reply: support.Reply, expected: str) -> None:
    answer = answer_of(http, reply)
    assert not answer.open
    assert expected in answer.message


def test_an_unreachable_prometheus_is_closed_with_the_reason() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody listens there
    answer = gate.ask(model.Gate(prometheus=f"http://user:secret@127.0.0.1:{port}", query="up"))
    assert not answer.open
    assert f"Prometheus at http://127.0.0.1:{port} cannot be asked" in answer.message
    assert "secret" not in answer.message


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_a_prometheus_that_does_not_answer_in_time_is_closed_within_the_timeout(silent_port: int) -> None:
    started = time.monotonic()
    answer = gate.ask(model.Gate(prometheus=f"http://127.0.0.1:{silent_port}", query="up", timeout_seconds=0.3))
    took = time.monotonic() - started
    assert answer == gate.Answer(False, "Prometheus did not answer within 0.3 s")
    assert took < 1.5


def test_an_answer_larger_than_the_bound_is_closed(http: support.HttpServer) -> None:
    answer = answer_of(http, b"{" + b" " * (gate.MAX_BYTES + 10) + b"}")
    assert not answer.open
    assert "larger than" in answer.message


def test_a_redirect_to_another_host_is_refused_and_one_on_the_same_host_is_followed(http: support.HttpServer) -> None:
    http.serve("/moved/api/v1/query", body("vector", []))
    elsewhere = support.Reply(302, headers={"Location": http.url("/api/v1/query", host="localhost")})
    answer = answer_of(http, elsewhere)
    assert not answer.open and "another host" in answer.message
    same = support.Reply(307, headers={"Location": "/moved/api/v1/query?query=up"})
    assert answer_of(http, same).open


def test_the_cache_asks_once_per_interval_and_again_when_the_gate_changes() -> None:
    asked: list[model.Gate] = []
    now = [100.0]

    def ask(which: model.Gate) -> gate.Answer:
        asked.append(which)
        return gate.Answer(len(asked) % 2 == 0, f"answer {len(asked)}")

    cache = gate.Cache(ask, lambda: now[0])
    first = model.Gate(prometheus="http://p", query="ALERTS", interval_seconds=30)
    assert cache.answer("acme", first) == gate.Answer(False, "answer 1")
    now[0] += 29.9
    assert cache.answer("acme", first) == gate.Answer(False, "answer 1")
    assert cache.expires("acme") == 130.0
    now[0] += 0.1
    assert cache.answer("acme", first) == gate.Answer(True, "answer 2")
    changed = model.Gate(prometheus="http://p", query="ALERTS{x=\"y\"}", interval_seconds=30)
    assert cache.answer("acme", changed).message == "answer 3"
    assert cache.answer("other", first).message == "answer 4"
    assert cache.asked == 4
    cache.forget("acme")
    assert cache.expires("acme") is None
