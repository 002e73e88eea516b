"""Scrape speed with 1000 applications: design section 9, target P5 (<= 100 ms).

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/scrape_speed.py [--applications 1000] [--scrapes 50] [--hook-phases 4]

It builds realistic status documents (three deployments, conditions, drift, times,
hook counts in every phase by default: the worst case) and the observations of a
daemon that has made a few passes for each, then times, after a warm-up:

  library  prometheus-client's own `generate_latest` of the registry, uncached
           (what every scrape cost before the cache), documents unchanged
  changed  `exposition.exposition` (what the daemon serves) when every status
           document says something new (every application changed since the
           last scrape: one hook count of each is bumped; every document
           is a new object throughout, as the daemon's passes build them)
  rebuilt  the same when every status document is new in every field the
           series read (but nextAttemptAt): the worst case
  fresh    `exposition.exposition` when every status document is a new dict that
           says the same apart from updatedAt/lastSuccessAt (as right after a
           full no-op resync); the replacement itself is not timed
  steady   `exposition.exposition` when the documents are the ones of the last scrape
  http     a GET of /metrics from `web_server.Server` on 127.0.0.1, text format
  http-om  the same GET as Prometheus makes it (OpenMetrics, gzip)

and prints p50/p99/max in ms of wall time, and the median CPU time of the
process (both threads: the client's share is small) per scrape, with the number
of series and the body size. On a shared machine the CPU times are the figures
to trust.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import prometheus_client

from controller import errors
from controller.daemon import application_series, exposition, metrics, web_server
from controller.engine import hooks, status
from controller.manifests import model

EPOCH = 1_726_567_200.0  # 2024-09-17T10:00:00Z
PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"


def document(index: int, phases: int = 4, generation: int = 0) -> dict[str, Any]:
    """A status document; a later `generation` differs in every field the metrics read but nextAttemptAt."""
    name = f"app-{index:04d}"
    ready, suspended = index % 10 != 0, index % 50 == 0
    versions = [f"v1.{index % 7}.{n + generation}" for n in range(3)]
    reason = "Suspended" if suspended else "Converged" if ready else "Failed"
    conditions = (("Ready", ready and not suspended, reason), ("Reconciling", False, "Idle"),
                  ("Stalled", False, "None"), ("Drifted", index % 20 == 0, "ContentChanged"))
    return {
        "name": name, "application": name, "environment": ("production", "staging")[index % 2],
        "kind": ("rails", "static", "")[index % 3], "path": f"/srv/{name}",
        "file": f"/etc/tether/manifests/{name}.yaml", "observedGeneration": f"{index:064x}",
        "desired": versions[-1], "current": versions[-1], "previous": versions[-2],
        "deployments": [{"name": v, "state": "failed" if not ready and n == 2 else "complete", "active": n == 2,
                         "createdAt": status.timestamp(EPOCH - 3600 * (3 - n)),
                         "completedAt": status.timestamp(EPOCH - 3600 * (3 - n) + 30), "sha256": "ab" * 32}
                        for n, v in enumerate(versions)],
        "conditions": [{"type": kind, "status": "True" if ok else "False", "reason": why, "message": "",
                        "lastTransitionTime": status.timestamp(EPOCH - 600 + generation)}
                       for kind, ok, why in conditions],
        "lastHookRuns": [], "lastError": None if ready else "the afterActivate hook exited with status 1",
        "hookRunCounts": {f"{phase}/{outcome}": (index + n + generation) % 9
                          for n, phase in enumerate(model.HOOK_PHASES[:phases])
                          for outcome in application_series.HOOK_OUTCOMES if outcome == hooks.SUCCESS or index % 10 == 0},
        "drift": {"current": False, "deployment": False, "links": index % 40 == 0, "content": index % 20 == 0,
                  "driftedFiles": (3 if index % 20 == 0 else 0) + generation},
        "nextAttemptAt": None, "updatedAt": status.timestamp(EPOCH + generation),
        "lastSuccessAt": status.timestamp(EPOCH - 60 + generation),
    }


def observations(count: int) -> metrics.Observations:
    seen = metrics.Observations()
    for index in range(count):
        name = f"app-{index:04d}"
        for attempt in range(5):
            seen.reconciled(name, "failure" if index % 10 == 0 and attempt else "success", 0.02 * (attempt + 1))
        seen.hook_ran(hooks.HookRun("afterActivate", "application", "v1", hooks.SUCCESS, 0, EPOCH, 1.5, "", ""), name)
        seen.fetched(name, 5_000_000, 0.4)
        if index % 25 == 0:
            seen.fetch_failed(name, "FetchError")
    return seen


def timed(action: Callable[[], object], scrapes: int,
          prepare: Callable[[], object] = lambda: None) -> tuple[list[float], list[float]]:
    times, cpu = [], []
    for index in range(scrapes + 3):  # the first three warm up
        prepare()
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        if index >= 3:
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
    return times, cpu


def report(label: str, measured: tuple[list[float], list[float]]) -> None:
    times, cpu = measured
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    print(f"{label:8} p50 {statistics.median(ordered):6.1f} ms   p99 {p99:6.1f} ms   max {ordered[-1]:6.1f} ms"
          f"   CPU p50 {statistics.median(cpu):6.1f} ms   (n={len(ordered)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--applications", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50)
    parser.add_argument("--hook-phases", type=int, default=4, choices=range(5),
                        help="hook phases that have run in each application (4: the worst case)")
    args = parser.parse_args()
    documents = [document(i, args.hook_phases) for i in range(args.applications)]
    problems = [errors.ManifestError(f"/etc/tether/manifests/broken-{i}.yaml", "spec.path is required")
                for i in range(5)]
    registry = metrics.registry(metrics.Collector(lambda: documents, lambda: (problems, len(documents)),
                                                  observations(args.applications)))
    body = prometheus_client.generate_latest(registry)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(f"P5: {args.applications} applications, {args.hook_phases} hook phases each: {series} series, "
          f"{len(body) / 1024:.0f} KiB; Python {platform.python_version()}, "
          f"prometheus-client {importlib.metadata.version('prometheus-client')}, {platform.machine()}")

    stamp = iter(range(1, 1 << 30))

    def renew() -> None:  # every document and everything in it new, as each pass of the daemon builds it
        moment = status.timestamp(EPOCH + next(stamp))
        documents[:] = [json.loads(json.dumps({**d, "updatedAt": moment, "lastSuccessAt": moment}))
                        for d in documents]

    def change() -> None:
        bump = next(stamp)
        documents[:] = [json.loads(json.dumps({**d, "hookRunCounts": {**d["hookRunCounts"],
                                                                       "afterActivate/success": bump}}))
                        for d in documents]

    def rebuild() -> None:
        generation = next(stamp)
        documents[:] = [document(i, args.hook_phases, generation) for i in range(args.applications)]

    report("library", timed(lambda: prometheus_client.generate_latest(registry), args.scrapes))
    report("changed", timed(lambda: exposition.exposition(registry), args.scrapes, change))
    report("rebuilt", timed(lambda: exposition.exposition(registry), args.scrapes, rebuild))
    report("fresh", timed(lambda: exposition.exposition(registry), args.scrapes, renew))
    report("steady", timed(lambda: exposition.exposition(registry), args.scrapes))
    server = web_server.Server("127.0.0.1:0", registry)
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        negotiated = urllib.request.Request(url, headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        report("http", timed(lambda: urllib.request.urlopen(url, timeout=30).read(), args.scrapes))
        report("http-om", timed(lambda: urllib.request.urlopen(negotiated, timeout=30).read(), args.scrapes))
    finally:
        server.close()
    print("target: <= 100 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
