"""The cached exposition (design section 9, P5) is byte for byte what prometheus-client writes uncached.

`metrics.exposition` reuses each application's rendered lines while its status says the same; after every
step of a sequence of changes (new, changed, removed and odd documents, a volatile-only change, label values
an exposition cannot carry) its output must equal prometheus-client's own `generate_latest`, in the text
format and in OpenMetrics, on whichever prometheus-client version runs the tests (CI runs 0.16 and the
current one). The HTTP endpoint must answer as prometheus-client's own WSGI app does.
"""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Callable
from typing import Any

import prometheus_client
import prometheus_client.exposition
import prometheus_client.openmetrics.exposition

from controller.daemon import metrics, web_server
from tests.test_metrics import deployment, document, problems, three_applications

ACCEPTS = ["", "text/plain;version=0.0.4", "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
           "application/openmetrics-text"]


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

    return [add_many, volatile_only, copies, change_one, remove_some, odd, ready_flip, reorder, volatile_only,
            clear, add_many]


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
            encoder, content_type = prometheus_client.exposition.choose_encoder(accept)
            for _ in range(2):  # rendered afresh, then from the cache
                assert metrics.exposition(registry, encoder, content_type) == encoder(uncached), (step, accept)
        assert metrics.exposition(registry) == prometheus_client.generate_latest(uncached)
        assert prometheus_client.generate_latest(registry) == prometheus_client.generate_latest(uncached)


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
