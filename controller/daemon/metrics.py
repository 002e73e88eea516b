"""Prometheus metrics (design section 8): per-application series are computed at scrape time from the
status documents, so an application that is no longer managed leaves no stale series;
`Observations` keeps what happened since the process started (passes, hook durations, fetches).
exposition.py renders and serves them."""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import prometheus_client
import prometheus_client.core
import prometheus_client.registry

import controller
from controller import errors
from controller.daemon import application_series, exposition
from controller.engine import hooks
from controller.manifests import model

log = logging.getLogger(__name__)

RESULTS = ("success", "failure")
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HOOK_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

Gauge = prometheus_client.core.GaugeMetricFamily
Counter = prometheus_client.core.CounterMetricFamily
Histogram = prometheus_client.core.HistogramMetricFamily
Metric = prometheus_client.core.Metric
Statuses = Callable[[], Iterable[Mapping[str, Any]]]
ManifestState = Callable[[], tuple[Sequence[errors.ManifestError], int]]


class _Buckets:
    """A histogram: counts per bucket (not cumulative; the last bucket is +Inf) and the sum."""

    def __init__(self, bounds: tuple[float, ...], counts: list[int] | None = None, total: float = 0.0) -> None:
        self.bounds, self.counts, self.total = bounds, counts or [0] * (len(bounds) + 1), total

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # `le` is inclusive
        self.total += value

    def copy(self) -> _Buckets:
        return _Buckets(self.bounds, list(self.counts), self.total)

    def cumulative(self) -> list[tuple[str, float]]:
        return list(zip([*map(repr, self.bounds), "+Inf"], map(float, itertools.accumulate(self.counts)), strict=True))


class Observations:
    """Events since the process started, recorded from any thread. Hook runs are counted from the
    status documents (`hookRunCounts` survives restarts): `hook_ran` feeds the duration histogram only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reconciles: dict[tuple[str, str], int] = {}
        self.reconcile_seconds = _Buckets(RECONCILE_BUCKETS)
        self.hook_seconds = {phase: _Buckets(HOOK_BUCKETS) for phase in model.HOOK_PHASES}
        self.fetch_bytes = 0
        self.fetch_seconds = _Buckets(FETCH_BUCKETS)
        self.fetch_failures: dict[tuple[str, str], int] = {}

    def reconciled(self, name: str, result: str, seconds: float) -> None:
        """A pass of `name` ended with `result` ("success" or "failure") after `seconds`."""
        if result not in RESULTS:
            raise ValueError(f"a reconcile result is success or failure, not {result!r}")
        with self._lock:
            for other in RESULTS:  # both series exist from the first pass, so increase() sees a first failure
                self.reconciles.setdefault((name, other), 0)
            self.reconciles[(name, result)] += 1
            self.reconcile_seconds.observe(seconds)

    def hook_ran(self, run: hooks.HookRun, name: str) -> None:
        """A hook of application `name` ended: its duration goes to the histogram of its phase."""
        with self._lock:
            self.hook_seconds.setdefault(run.phase, _Buckets(HOOK_BUCKETS)).observe(run.duration_seconds)

    def fetched(self, name: str, bytes_: int, seconds: float) -> None:
        """An artifact of `name` was downloaded: `bytes_` bytes in `seconds`."""
        with self._lock:
            self.fetch_bytes += bytes_
            self.fetch_seconds.observe(seconds)

    def fetch_failed(self, name: str, reason: str) -> None:
        """A download for `name` failed; `reason` is one of a few words (e.g. the error's class name)."""
        with self._lock:
            self.fetch_failures[(name, reason)] = self.fetch_failures.get((name, reason), 0) + 1

    def forget(self, name: str) -> None:
        """Drop every per-application series of `name`, which is no longer managed."""
        with self._lock:
            self.reconciles = {k: v for k, v in self.reconciles.items() if k[0] != name}
            self.fetch_failures = {k: v for k, v in self.fetch_failures.items() if k[0] != name}

    def snapshot(self) -> Observations:
        copy = Observations()  # that no other thread changes, for one scrape
        with self._lock:
            copy.reconciles, copy.fetch_failures = dict(self.reconciles), dict(self.fetch_failures)
            copy.reconcile_seconds, copy.fetch_seconds = self.reconcile_seconds.copy(), self.fetch_seconds.copy()
            copy.hook_seconds, copy.fetch_bytes = {k: v.copy() for k, v in self.hook_seconds.items()}, self.fetch_bytes
        return copy


class Collector(prometheus_client.registry.Collector):
    """Every tether series, computed when Prometheus (or the textfile writer) asks. A status document
    must not change once `statuses` returned it (publish a new dict): its rows (and their lines, see
    exposition.py) are made once, and made again only for a new document, whose families that say the
    same as before (most of them after a pass that changed nothing) keep their lines."""

    def __init__(self, statuses: Statuses, manifest_state: ManifestState, observations: Observations,
                 version: str = controller.__version__, node: Callable[[], str] | None = None) -> None:
        self.statuses, self.manifest_state, self.node = statuses, manifest_state, node
        self.observations, self.version = observations, version
        self._made: dict[str, application_series.Made] = {}

    def collect(self) -> Iterator[Metric]:
        yield from self._applications()
        problems, valid = self.manifest_state()
        files = Gauge("tether_manifest_errors", "1 for each invalid manifest file; tether keeps the last good state "
                      "of its application.", labels=["file"])
        for file in sorted({errors.shown_path(problem.file) for problem in problems}):
            files.add_metric([file], 1)
        counts = Gauge("tether_manifests", "Manifest files by state (valid or invalid).", labels=["state"])
        counts.add_metric(["valid"], valid)
        counts.add_metric(["invalid"], len(files.samples))
        yield from map(_printable, (files, counts))
        yield from _observed(self.observations.snapshot())
        build = Gauge("tether_build_info", "Always 1: the version of tether that runs.", labels=["version"])
        build.add_metric([self.version], 1)
        yield build
        if self.node is not None:
            node = Gauge("tether_node_info", "Always 1: the name of this node (its node file or host name), which "
                         "rollout waves hash.", labels=["node"])
            node.add_metric([self.node()], 1)
            yield _printable(node)

    def _applications(self) -> list[exposition.Family]:
        before, made, applications = self._made, {}, []
        for document in self.statuses():
            name = document.get("name")
            if not isinstance(name, str):
                continue
            known = before.get(name)
            if known is None or known.document is not document:
                known = application_series.made(name, document, known)
                if known is None:
                    continue
            made[name] = known  # applications that are gone are dropped
            applications.append(known)
        self._made = made
        count = len(application_series.SERIES)
        rows = list(zip(*(application.rows for application in applications), strict=True)) or [()] * count
        lines = list(zip(*(application.lines for application in applications), strict=True)) or [()] * count
        return [series.family(rows[index], lines[index]) for index, series in enumerate(application_series.SERIES)]


Row = exposition.Row
Series = exposition.Series
RECONCILES = Series("tether_reconcile_total", "Reconcile passes since tether started, by result.", "counter",
                    ["name", "result"])
FETCH_FAILURES = Series("tether_artifact_fetch_failures_total", "Failed artifact downloads since tether started, "
                        "by reason.", "counter", ["name", "reason"])


def _observed(seen: Observations) -> Iterator[Metric]:
    passes: list[Row] = [((name, result), count) for (name, result), count in sorted(seen.reconciles.items())]
    yield _family(RECONCILES, passes)
    yield Histogram("tether_reconcile_duration_seconds", "How long reconcile passes took.",
                    buckets=seen.reconcile_seconds.cumulative(), sum_value=seen.reconcile_seconds.total)
    durations = Histogram("tether_hook_duration_seconds", "How long hooks ran, by phase.", labels=["hook"])
    for phase, buckets in sorted(seen.hook_seconds.items()):
        durations.add_metric([phase], buckets.cumulative(), buckets.total)
    yield _printable(durations)
    yield Counter("tether_artifact_fetch_bytes_total", "Artifact bytes downloaded since tether started.",
                  value=seen.fetch_bytes)
    yield Histogram("tether_artifact_fetch_seconds", "How long artifact downloads took.",
                    buckets=seen.fetch_seconds.cumulative(), sum_value=seen.fetch_seconds.total)
    failures: list[Row] = [((name, reason), count) for (name, reason), count in sorted(seen.fetch_failures.items())]
    yield _family(FETCH_FAILURES, failures)


def _family(series: Series, rows: list[Row]) -> exposition.Family:
    (rows,), escape, shown = exposition.carried([rows])
    if shown:
        log.warning("Some label values of %s hold characters an exposition cannot carry; they are shown as "
                    "escapes.", series.name)
    return series.family([rows], [series.lines(rows, escape)])


def _printable(family: Metric) -> Metric:
    """`family` with every label value that an exposition cannot carry shown as escapes instead."""
    if any(errors.CONTROL.search(value) for sample in family.samples for value in sample.labels.values()):
        log.warning("Some label values of %s hold characters an exposition cannot carry; they are shown as "
                    "escapes.", family.name)
        family.samples = [sample._replace(labels={key: errors.printable(value)
                                                  for key, value in sample.labels.items()})
                          for sample in family.samples]
    return family


def registry(collector: Collector, *, process: bool = False) -> prometheus_client.CollectorRegistry:
    """A fresh registry with tether's collector; `process` adds process_* (never for the textfile:
    node_exporter has process_* series of its own and would refuse the file)."""
    fresh = prometheus_client.CollectorRegistry(auto_describe=False)  # registering must not call the callables
    fresh.register(collector)
    if process:
        prometheus_client.ProcessCollector(registry=fresh)
    return fresh
