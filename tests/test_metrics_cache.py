"""The cached exposition (design section 9, P5) is byte for byte what prometheus-client writes uncached.

`exposition.exposition` formats each application's sample lines itself and reuses them while the fields
they come from say the same; after every step of a sequence of changes (new, changed, removed and odd
documents, a volatile-only change, each field alone, values of another type that Python finds equal, label
values an exposition cannot carry) its output
must equal prometheus-client's own encoders, in the text format and in OpenMetrics, on whichever
prometheus-client version runs the tests (CI runs 0.16 and the current one). Its formatter must write any
label values and numbers as the library does, and an encoder that writes samples another way must get its
own output. The HTTP endpoint must answer as prometheus-client's own WSGI app does.
"""

from __future__ import annotations

import gzip
import logging
import math
import urllib.request
from collections.abc import Callable
from typing import Any

import hypothesis
import prometheus_client
import prometheus_client.exposition
import prometheus_client.openmetrics.exposition
import prometheus_client.registry
import pytest

from controller import errors
from controller.daemon import exposition, metrics, web_server
from tests.test_metrics import deployment, document, problems, three_applications

ACCEPTS = ["", "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
           "application/openmetrics-text", "application/openmetrics-text;version=1.0.0;escaping=dots",
           "text/plain;version=1.0.0;escaping=allow-utf-8"]
# One new value for each field of a status document that a family reads (and a field that none reads).
FIELDS: dict[str, Any] = {
    "application": "other", "environment": "st\\ag\"e", "kind": "static", "current": "v9", "revision": "ab" * 20,
    "conditions": [{"type": "Ready", "status": "False", "reason": "Suspended"},
                   {"type": "Stalled", "status": "True", "reason": "Failed"}],
    "drift": {"links": True, "driftedFiles": 4}, "deployments": [deployment("v9", "failed"), deployment("v8", "odd")],
    "desired": "v9", "lastSuccessAt": "2024-09-17T12:00:00Z", "updatedAt": "2024-09-17T12:30:00+02:00",
    "nextAttemptAt": "2024-09-17T12:05:00Z", "hookRunCounts": {"beforeDeploy/timeout": 2, "x/odd": 1},
    "healthCheckCounts": {"success": 4, "other": 1}, "rollout": {"wave": 2, "waiting": True, "gate": "open"},
    "path": "/opt/elsewhere",
}


def changes() -> list[Callable[[list[dict[str, Any]]], None]]:
    """Steps that change the documents in place (a new list entry, never a mutated document)."""

    def add_many(docs: list[dict[str, Any]]) -> None:
        docs.extend(document(f"app-{i}", counts={"afterActivate/success": i}) for i in range(20))

    def volatile_only(docs: list[dict[str, Any]]) -> None:
        docs[:] = [{**d, "updatedAt": "2024-09-17T11:00:00Z", "lastSuccessAt": "2024-09-17T11:00:00Z"} for d in docs]

    def copies(docs: list[dict[str, Any]]) -> None:
        docs[:] = [dict(d) for d in docs]

    def change_one(docs: list[dict[str, Any]]) -> None:
        docs[5] = {**docs[5], "current": "v9", "hookRunCounts": {"afterActivate/failure": 3}}

    def remove_some(docs: list[dict[str, Any]]) -> None:
        del docs[3:8]

    def odd(docs: list[dict[str, Any]]) -> None:
        docs.append({**document("odd\udcff\x07\n\"\\"), "environment": "st\u2028age"})
        docs.append({"name": "broken", "conditions": "not a list", "deployments": [{"state": 7}]})
        docs.append({**document("fails"), "hookRunCounts": {"a/b": "x"}, "drift": {"driftedFiles": True}})

    def ready_flip(docs: list[dict[str, Any]]) -> None:
        docs[0] = document(docs[0]["name"], ready=False, reason="Failed", lastSuccessAt="2024-09-17T09:00:00Z",
                           deployments=[deployment("v1", "failed")], rollout={"wave": 1, "waiting": True})

    def reorder(docs: list[dict[str, Any]]) -> None:
        docs.reverse()

    def clear(docs: list[dict[str, Any]]) -> None:
        docs.clear()

    def each_field_alone(offset: int) -> Callable[[list[dict[str, Any]]], None]:
        """Each document gets a new value in one field, the next document in the next field, and so on:
        with offsets 0 and 1 one after the other, a document changes two fields, one at a time."""
        fields = list(FIELDS.items())

        def change(docs: list[dict[str, Any]]) -> None:
            docs[:] = [{**d, fields[(i + offset) % len(fields)][0]: fields[(i + offset) % len(fields)][1]}
                       for i, d in enumerate(docs)]
        return change

    def without_fields(docs: list[dict[str, Any]]) -> None:
        docs[:] = [{k: v for k, v in d.items() if k not in FIELDS or k == "name"} for d in docs]

    def retyped(kind: Callable[[int], Any]) -> Callable[[list[dict[str, Any]]], None]:
        """Values that Python finds equal (1, True, 1.0) but that make other series, in new objects."""
        def change(docs: list[dict[str, Any]]) -> None:
            one = kind(1)
            docs[:] = [{**d, "application": one, "drift": {"links": one, "driftedFiles": one},
                        "hookRunCounts": {"afterActivate/success": one}, "healthCheckCounts": {"success": one},
                        "rollout": {"wave": one, "waiting": one}, "deployments": [{"name": "v1", "state": one}]}
                       for d in docs]
        return change

    return [add_many, volatile_only, copies, change_one, remove_some, odd, ready_flip, reorder, volatile_only,
            retyped(int), retyped(bool), retyped(float), retyped(int), retyped(float), retyped(bool),
            each_field_alone(0), each_field_alone(1), without_fields, add_many, each_field_alone(0),
            each_field_alone(1), each_field_alone(5), clear, add_many]


def test_the_cached_exposition_equals_prometheus_clients_after_every_change_in_every_format() -> None:
    documents = three_applications()
    seen = metrics.Observations()
    seen.reconciled("shop", "success", 0.4)

    def collector() -> metrics.Collector:
        return metrics.Collector(lambda: documents, problems, seen, node=lambda: "node-1")

    registry = metrics.registry(collector())  # keeps its caches from step to step
    for step in [lambda docs: None, *changes()]:
        step(documents)
        seen.reconciled("shop", "failure", 1.0)  # the observed families change at every step too
        uncached = metrics.registry(collector())  # a new collector: nothing made or rendered before
        for accept in ACCEPTS:
            encoder, _ = prometheus_client.exposition.choose_encoder(accept)
            for _ in range(2):  # rendered afresh, then from the cache
                assert exposition.exposition(registry, encoder) == encoder(uncached), (step, accept)
        for encoder in own_ways():
            assert exposition.exposition(registry, encoder) == encoder(uncached), step
        assert exposition.exposition(registry) == prometheus_client.generate_latest(uncached)
        assert prometheus_client.generate_latest(registry) == prometheus_client.generate_latest(uncached)


def own_ways() -> list[Callable[[Any], bytes]]:
    """Encoders that write samples in other ways than prometheus-client's (a later version might)."""

    def integers(registry: Any) -> bytes:
        return prometheus_client.generate_latest(registry).replace(b".0\n", b"\n")

    def spaced(registry: Any) -> bytes:
        return prometheus_client.openmetrics.exposition.generate_latest(registry).replace(b'",', b'", ')

    return [integers, spaced]


LABEL_VALUES = hypothesis.strategies.text(hypothesis.strategies.characters(exclude_categories=("Cs",)), max_size=8)
NUMBERS = hypothesis.strategies.one_of(hypothesis.strategies.integers(-2, 2000),
                                       hypothesis.strategies.integers(-2**70, 2**70),
                                       hypothesis.strategies.floats(allow_nan=True, allow_infinity=True))


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(hypothesis.strategies.lists(hypothesis.strategies.tuples(
    hypothesis.strategies.tuples(LABEL_VALUES, LABEL_VALUES, LABEL_VALUES), NUMBERS), max_size=6),
    hypothesis.strategies.sampled_from(ACCEPTS))
def test_tethers_lines_are_the_librarys_for_any_label_values_and_numbers_in_every_format(
        rows: list[tuple[tuple[str, str, str], float]], accept: str) -> None:
    encoder, _ = prometheus_client.exposition.choose_encoder(accept)
    for series in (exposition.Series("tether_hook_runs_total", "Hook \\ runs\n\"by\" phase.", "counter",
                                     ["name", "hook", "outcome"]),
                   exposition.Series("tether_application_info", "Always 1.", "gauge", ["revision", "name", "kind"])):
        library = series.metric(rows)
        uncached = exposition.Family(series, [rows], [""]).samples  # the samples a Family gives the library
        assert uncached == library.samples
        escaped = any(mark in value for values, _ in rows for value in values for mark in '\\"\n')
        wanted = encoder(prometheus_client.CollectorRegistry()).decode()  # the trailer alone
        header = encoder(Only(series.metric([]))).decode().removesuffix(wanted)
        text = encoder(Only(library)).decode().removesuffix(wanted)
        if "escaping=dots" not in accept:  # prometheus-client 0.26 writes tether_ as tether__ then: its own way
            assert header + series.lines(rows) == text
            if not escaped:
                assert header + series.lines(rows, escape=False) == text
        family = series.family([rows[:1], rows[1:]], [series.lines(rows[:1]), series.lines(rows[1:])])
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(Only(family))
        assert exposition.exposition(registry, encoder) == encoder(Only(library))


class Only(prometheus_client.registry.Collector):
    def __init__(self, metric: prometheus_client.core.Metric) -> None:
        self.metric = metric

    def collect(self) -> list[prometheus_client.core.Metric]:
        return [self.metric]


def test_a_nan_row_keeps_no_stale_lines() -> None:
    """NaN is not equal to itself: a row holding one is formatted again, never mistaken for an old one."""
    series = exposition.Series("tether_rollout_wave", "x", "gauge", ["name"])
    assert series.lines([(("a",), math.nan)]) == 'tether_rollout_wave{name="a"} NaN\n'


def test_the_metrics_endpoint_answers_as_prometheus_clients_own_app_with_and_without_gzip() -> None:
    documents = three_applications() + [document(f"app-{i}") for i in range(50)]
    registry = metrics.registry(metrics.Collector(lambda: documents, problems, metrics.Observations()))
    library = prometheus_client.make_wsgi_app(registry)
    server = web_server.Server("127.0.0.1:0", registry)
    try:
        for accept in ACCEPTS:
            for encoding in ("", "gzip"):
                request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics",
                                                 headers={"Accept": accept, "Accept-Encoding": encoding})
                with urllib.request.urlopen(request, timeout=10) as answer:
                    body, headers = answer.read(), answer.headers
                expected: dict[str, Any] = {}

                def start_response(status: str, found: list[tuple[str, str]], into: dict[str, Any] = expected) -> None:
                    into.update(status=status, headers=dict(found))

                wanted = b"".join(library({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "", "HTTP_ACCEPT": accept,
                                           "HTTP_ACCEPT_ENCODING": encoding}, start_response))
                assert headers["Content-Type"] == expected["headers"]["Content-Type"]
                assert headers.get("Content-Encoding") == expected["headers"].get("Content-Encoding")
                if encoding:
                    body, wanted = gzip.decompress(body), gzip.decompress(wanted)
                assert body == wanted, accept
    finally:
        server.close()


def test_observed_label_values_an_exposition_cannot_carry_are_written_as_escapes_as_the_library_writes_them(
        caplog: pytest.LogCaptureFixture) -> None:
    seen = metrics.Observations()
    for name in ["odd\udcff", "bell\x07", "new\nline", "para\u2028graph", "del\x7f", 'quo"te\\back']:
        seen.reconciled(name, "failure", 1.0)  # values it cannot carry, and ones its lines escape, in one family
    seen.fetch_failed("shop", 'Quoted"Reason')  # only ones its lines escape: shown as they are
    seen.fetch_failed("blog", "Back\\slash")
    registry = metrics.registry(metrics.Collector(lambda: [], problems, seen))
    with caplog.at_level(logging.WARNING):
        for accept in ACCEPTS:
            encoder, _ = prometheus_client.exposition.choose_encoder(accept)
            body = exposition.exposition(registry, encoder)
            assert body == encoder(registry), accept
            assert not errors.CONTROL.search(body.decode("utf-8").replace("\n", "")), accept
    assert b'name="odd\\\\udcff"' in body and b'reason="Quoted\\"Reason"' in body
    warned = [record.getMessage() for record in caplog.records]
    assert any("of tether_reconcile hold" in message for message in warned)
    assert not any("tether_artifact_fetch_failures" in message for message in warned)
