"""Prometheus metrics (design section 8): per-application series are computed at scrape time from the
status documents, so an application that is no longer managed leaves no stale series;
`Observations` keeps what happened since the process started (passes, hook durations, fetches)."""

from __future__ import annotations

import bisect
import collections
import copy
import dataclasses
import datetime
import gzip
import itertools
import logging
import re
import threading
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import prometheus_client
import prometheus_client.core
import prometheus_client.exposition
import prometheus_client.registry

import controller
from controller import errors, fsutil
from controller.engine import hooks, status_store
from controller.manifests import model
from controller.tree import records

log = logging.getLogger(__name__)

DRIFT_TYPES = ("current", "deployment", "links", "content")
HOOK_OUTCOMES = (hooks.SUCCESS, hooks.FAILURE, hooks.TIMEOUT)
RESULTS = ("success", "failure")
DEPLOYMENT_STATES = (records.COMPLETE, records.INCOMPLETE, records.FAILED)  # others ("missing") only when present
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HOOK_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

Gauge = prometheus_client.core.GaugeMetricFamily
Counter = prometheus_client.core.CounterMetricFamily
Histogram = prometheus_client.core.HistogramMetricFamily
Metric = prometheus_client.core.Metric
Statuses = Callable[[], Iterable[Mapping[str, Any]]]
ManifestState = Callable[[], tuple[Sequence[errors.ManifestError], int]]
_Families = tuple["_AppGauge", "_AppGauge", "_AppGauge", "_AppGauge", "_AppGauge", "_AppGauge", "_AppGauge",
                  "_AppGauge", "_AppGauge", "_AppGauge", "_AppCounter", "_AppCounter", "_AppGauge", "_AppGauge",
                  "_AppGauge"]


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
    must not change once `statuses` returned it (publish a new dict): its samples are made once, and made
    again only when a new document says something new (`status_store.content`: not for a new updatedAt or
    lastSuccessAt alone, which only tether_last_success_timestamp_seconds shows). `exposition` renders each
    application's samples once per format and reuses the text while they stay the same."""

    def __init__(self, statuses: Statuses, manifest_state: ManifestState, observations: Observations,
                 version: str = controller.__version__, node: Callable[[], str] | None = None) -> None:
        self.statuses, self.manifest_state, self.node = statuses, manifest_state, node
        self.observations, self.version = observations, version
        self._made: dict[str, _Made] = {}

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
        yield from map(_printable, (files, counts, *_observed(self.observations.snapshot())))
        build = Gauge("tether_build_info", "Always 1: the version of tether that runs.", labels=["version"])
        build.add_metric([self.version], 1)
        yield build
        if self.node is not None:
            node = Gauge("tether_node_info", "Always 1: the name of this node (its node file or host name), which "
                         "rollout waves hash.", labels=["node"])
            node.add_metric([self.node()], 1)
            yield _printable(node)

    def _applications(self) -> _Families:
        families, before, made = _families(), self._made, {}
        scratch = Gauge("tether_last_success_timestamp_seconds", "", labels=["name"])  # for `_refreshed`
        parted = typing.cast("list[_AppGauge | _AppCounter]", list(families))
        for document in (d for d in self.statuses() if isinstance(d.get("name"), str)):
            name = document["name"]
            known = before.get(name)
            if known is not None and known.document is not document:
                known = _refreshed(known, document, scratch)
            if known is None:
                known = _made(name, document)
                if known is None:
                    continue
            for family, part in zip(parted, known.parts, strict=True):  # no allocation per series: fewer GC runs
                family.samples.extend(part[0])
                family.parts.append(part)
            made[name] = known  # applications that are gone are dropped
        self._made = made
        return families


Sample = prometheus_client.core.Sample


@dataclasses.dataclass(frozen=True)
class _Made:
    """One application's samples per family, made from `document`, and their text per exposition format
    (content type -> text, filled in by `exposition`)."""

    document: Mapping[str, Any]
    parts: list[tuple[list[Sample], dict[str, str]]]  # per family: (samples, content type -> their text)


SUCCESS_FAMILY = 8  # tether_last_success_timestamp_seconds: the one family that reads updatedAt and lastSuccessAt


def _made(name: str, document: Mapping[str, Any]) -> _Made | None:
    """The samples of one application, or None (logged) when its status document cannot be read."""
    families = _families()
    try:
        _add_application(name, document, *families)
    except Exception:  # one odd document must never break the whole exposition
        log.exception("The metrics of %s are left out of this scrape: its status document could not be read.",
                      errors.printable(str(name)))
        return None
    return _Made(document, [(_printable_samples(f.samples), {}) for f in families])


def _refreshed(known: _Made, document: Mapping[str, Any], success: Gauge) -> _Made | None:
    """`known` for a new document of the same application: reused when the new one says the same apart from
    the times every pass moves (only the last-success sample is made again), else None."""
    try:
        same = status_store.content(known.document) == status_store.content(document)
    except Exception:
        return None
    if not same:
        return None
    success.samples = []
    try:
        _add_last_success(str(document["name"]), document, _ready(document), success)
    except Exception:
        return None
    fresh = _printable_samples(success.samples)
    if fresh == known.parts[SUCCESS_FAMILY][0]:
        return _Made(document, known.parts)
    parts = list(known.parts)
    parts[SUCCESS_FAMILY] = (fresh, {})
    return _Made(document, parts)


def _printable_samples(samples: list[prometheus_client.core.Sample]) -> list[prometheus_client.core.Sample]:
    """The samples with every label value that an exposition cannot carry as it is (a lone surrogate, which
    is not UTF-8; a control character) shown as escapes instead, such as \\udcff."""
    if not any(errors.CONTROL.search(value) for sample in samples for value in sample.labels.values()):
        return samples
    log.warning("Some label values of %s hold characters an exposition cannot carry; they are shown as escapes.",
                samples[0].name)
    return [sample._replace(labels={key: errors.printable(value) for key, value in sample.labels.items()})
            for sample in samples]


def _printable(family: Metric) -> Metric:
    family.samples = _printable_samples(family.samples)
    return family


class _AppGauge(Gauge):
    """A gauge of per-application series; `parts` holds each application's samples and their text."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, labels=labels)
        self.parts: list[tuple[list[Sample], dict[str, str]]] = []


class _AppCounter(Counter):
    """A counter of per-application series, like `_AppGauge`."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, labels=labels)
        self.parts: list[tuple[list[Sample], dict[str, str]]] = []


def _families() -> _Families:
    return (
        _AppGauge("tether_application_info", "Always 1: each managed application, the deployment current points to and "
              "its revision (the commit id of a git source; empty otherwise).",
              labels=["name", "application", "environment", "kind", "deployment", "revision"]),
        _AppGauge("tether_application_ready", "1 when the last pass converged (condition Ready).", labels=["name"]),
        _AppGauge("tether_application_suspended", "1 when spec.suspend is true: nothing changes.", labels=["name"]),
        _AppGauge("tether_application_stalled", "1 when tether cannot make progress without a person (condition "
              "Stalled): the last pass failed with a permanent error, or the manifest is invalid.", labels=["name"]),
        _AppGauge("tether_drift", "1 when the last check found drift of this type (current, deployment, links, content).",
              labels=["name", "type"]),
        _AppGauge("tether_drifted_files", "Files of the active deployment changed, added or removed since it became "
              "complete.", labels=["name"]),
        _AppGauge("tether_deployments", "Deployments by state.", labels=["name", "state"]),
        _AppGauge("tether_deployment_failed", "1 while the deployment the manifest asks this node for is marked failed "
              "(a rollout's canary rolled it back); absent otherwise.", labels=["name", "deployment"]),
        _AppGauge("tether_last_success_timestamp_seconds", "When a pass last ended Ready.", labels=["name"]),
        _AppGauge("tether_next_attempt_timestamp_seconds", "When tether next retries a failed pass (nextAttemptAt); "
              "absent while no retry is scheduled.", labels=["name"]),
        _AppCounter("tether_hook_runs_total", "Hook runs by phase and outcome.", labels=["name", "hook", "outcome"]),
        _AppCounter("tether_health_checks_total", "Health check probes (spec.healthCheck) by outcome.",
                labels=["name", "outcome"]),
        _AppGauge("tether_rollout_wave", "The index of this node's wave in spec.rollout.waves, from 0; -1 in no wave "
              "(absent without a rollout).", labels=["name"]),
        _AppGauge("tether_rollout_waiting", "1 while this node's wave time has come but the gate keeps it shut.",
              labels=["name"]),
        _AppGauge("tether_rollout_gate_open", "1 when the rollout gate's last answer was open (or there is no gate); 0 "
              "when closed or not asked.", labels=["name"]),
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _timestamp(value: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time as status.py writes it (naive means UTC), or None."""
    try:
        moment = datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return None if moment is None else (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def _revision(value: Any) -> str:
    """A commit id from a status document, or "" (none, or not a commit id)."""
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", value) else ""


def _add_application(name: str, document: Mapping[str, Any], info: Gauge, ready: Gauge, suspended: Gauge,
                     stalled: Gauge, drift: Gauge, drifted: Gauge, deployments: Gauge, failed: Gauge, success: Gauge,
                     next_attempt: Gauge, runs: Counter, probes: Counter, wave: Gauge, waiting: Gauge,
                     gate_open: Gauge) -> None:
    conditions = {c.get("type"): c for c in reversed(_list(document.get("conditions")))}  # the first of a type
    condition = conditions.get("Ready", {})
    is_ready = _ready(document)
    info.add_metric([name, str(document.get("application") or ""), str(document.get("environment") or ""),
                     str(document.get("kind") or ""), str(document.get("current") or ""),
                     _revision(document.get("revision"))], 1)
    ready.add_metric([name], 1 if is_ready else 0)
    suspended.add_metric([name], 1 if condition.get("reason") == "Suspended" else 0)
    stalled.add_metric([name], 1 if conditions.get("Stalled", {}).get("status") == "True" else 0)
    found = _mapping(document.get("drift"))
    for kind in DRIFT_TYPES:
        drift.add_metric([name, kind], 1 if found.get(kind) is True else 0)
    files = found.get("driftedFiles")
    drifted.add_metric([name], files if isinstance(files, int) and not isinstance(files, bool) else 0)
    states = collections.Counter(str(d.get("state") or "") for d in _list(document.get("deployments")))
    for state in (*DEPLOYMENT_STATES, *sorted(set(states) - set(DEPLOYMENT_STATES))):
        deployments.add_metric([name, state], states[state])
    desired = document.get("desired")
    if isinstance(desired, str) and any(d.get("name") == desired and d.get("state") == records.FAILED
                                        for d in _list(document.get("deployments"))):
        failed.add_metric([name, desired], 1)  # only the desired one: a fix (a new deployment) ends the series
    _add_last_success(name, document, is_ready, success)
    retry = _timestamp(document.get("nextAttemptAt"))
    if retry is not None:
        next_attempt.add_metric([name], retry)
    counts = {tuple(k.split("/", 1)): v for k, v in _mapping(document.get("hookRunCounts")).items()
              if isinstance(k, str) and "/" in k and isinstance(v, int)}
    for phase in sorted({phase for phase, _ in counts}):
        extra = sorted({outcome for p, outcome in counts if p == phase} - set(HOOK_OUTCOMES))
        for outcome in (*HOOK_OUTCOMES, *extra):  # every outcome once a phase has run, 0 included
            runs.add_metric([name, phase, outcome], counts.get((phase, outcome), 0))
    probed = {k: v for k, v in _mapping(document.get("healthCheckCounts")).items()
              if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}
    if probed:  # every outcome once a probe has run, 0 included
        for outcome in (*HOOK_OUTCOMES, *sorted(set(probed) - set(HOOK_OUTCOMES))):
            probes.add_metric([name, outcome], probed.get(outcome, 0))
    rollout = document.get("rollout")
    if isinstance(rollout, Mapping):  # only while the manifest has a rollout: no stale series after it
        index = rollout.get("wave")
        wave.add_metric([name], index if isinstance(index, int) and not isinstance(index, bool) else -1)
        waiting.add_metric([name], 1 if rollout.get("waiting") is True else 0)
        gate_open.add_metric([name], 1 if rollout.get("gate") == "open" else 0)


def _ready(document: Mapping[str, Any]) -> bool:
    conditions = {c.get("type"): c for c in reversed(_list(document.get("conditions")))}  # the first of a type
    return bool(conditions.get("Ready", {}).get("status") == "True")


def _add_last_success(name: str, document: Mapping[str, Any], is_ready: bool, success: Gauge) -> None:
    last = _timestamp(document.get("lastSuccessAt"))
    if last is None and is_ready:
        last = _timestamp(document.get("updatedAt"))
    if last is not None:
        success.add_metric([name], last)


def _observed(seen: Observations) -> Iterator[Metric]:
    passes = Counter("tether_reconcile_total", "Reconcile passes since tether started, by result.",
                     labels=["name", "result"])
    for (name, result), count in sorted(seen.reconciles.items()):
        passes.add_metric([name, result], count)
    yield passes
    yield Histogram("tether_reconcile_duration_seconds", "How long reconcile passes took.",
                    buckets=seen.reconcile_seconds.cumulative(), sum_value=seen.reconcile_seconds.total)
    durations = Histogram("tether_hook_duration_seconds", "How long hooks ran, by phase.", labels=["hook"])
    for phase, buckets in sorted(seen.hook_seconds.items()):
        durations.add_metric([phase], buckets.cumulative(), buckets.total)
    yield durations
    yield Counter("tether_artifact_fetch_bytes_total", "Artifact bytes downloaded since tether started.",
                  value=seen.fetch_bytes)
    yield Histogram("tether_artifact_fetch_seconds", "How long artifact downloads took.",
                    buckets=seen.fetch_seconds.cumulative(), sum_value=seen.fetch_seconds.total)
    failures = Counter("tether_artifact_fetch_failures_total", "Failed artifact downloads since tether started, "
                       "by reason.", labels=["name", "reason"])
    for (name, reason), count in sorted(seen.fetch_failures.items()):
        failures.add_metric([name, reason], count)
    yield failures


def registry(collector: Collector, *, process: bool = False) -> prometheus_client.CollectorRegistry:
    """A fresh registry with tether's collector; `process` adds process_* (never for the textfile:
    node_exporter has process_* series of its own and would refuse the file)."""
    fresh = prometheus_client.CollectorRegistry(auto_describe=False)  # registering must not call the callables
    fresh.register(collector)
    if process:
        prometheus_client.ProcessCollector(registry=fresh)
    return fresh


Encoder = Callable[[Any], bytes]


class _Only:
    """A registry-like holder of some metrics, for an encoder to render just those."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def _alone(metric: Metric, encoder: Encoder, trailer: str) -> str:
    """What `encoder` writes for `metric`, without the trailer it ends every exposition with."""
    return encoder(_Only([metric])).decode("utf-8").removesuffix(trailer)


def _parted(family: _AppGauge | _AppCounter, encoder: Encoder, content_type: str, trailer: str) -> str:
    """The text of a per-application family: its header, then each application's lines, rendered by `encoder`
    only for the applications whose samples have no text in this format yet. A family whose lines are not
    one per sample (nothing tether makes) is rendered whole, uncached."""
    empty = copy.copy(family)
    empty.samples = []
    header = _alone(empty, encoder, trailer)
    missing = [(samples, rendered) for samples, rendered in family.parts if content_type not in rendered]
    if missing:
        batch = copy.copy(family)
        batch.samples = [sample for samples, _ in missing for sample in samples]
        text = _alone(batch, encoder, trailer)
        lines = text.removeprefix(header).split("\n")
        if not text.startswith(header) or lines[-1] != "" or len(lines) - 1 != len(batch.samples):
            return _alone(family, encoder, trailer)
        start = 0
        for samples, rendered in missing:
            rendered[content_type] = "".join(line + "\n" for line in lines[start:start + len(samples)])
            start += len(samples)
    return header + "".join(rendered[content_type] for _, rendered in family.parts)


def exposition(registry: prometheus_client.CollectorRegistry, encoder: Encoder = prometheus_client.generate_latest,
               content_type: str = prometheus_client.exposition.CONTENT_TYPE_LATEST) -> bytes:
    """What `encoder` (a prometheus_client format, as `choose_encoder` gives it with its `content_type`)
    writes for `registry`, byte for byte, with each application's lines reused from earlier scrapes while
    its status says the same (P5: most of a scrape's time is the library formatting series)."""
    trailer = encoder(_Only([])).decode("utf-8")  # "# EOF\n" for OpenMetrics, nothing for the text format
    parts = []
    for metric in registry.collect():
        if isinstance(metric, _AppGauge | _AppCounter):
            parts.append(_parted(metric, encoder, content_type, trailer))
        else:
            parts.append(_alone(metric, encoder, trailer))
    return ("".join(parts) + trailer).encode("utf-8")


def wsgi_app(registry: prometheus_client.CollectorRegistry) -> Callable[..., list[bytes]]:
    """prometheus_client.make_wsgi_app(registry), answering a plain scrape through `exposition`: the same
    format negotiation (Accept), the same headers and gzip (Accept-Encoding), the same body."""
    library = prometheus_client.make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD", "GET") != "GET" or environ.get("PATH_INFO") == "/favicon.ico" or \
                "name[]" in urllib.parse.parse_qs(
                environ.get("QUERY_STRING", "")):
            return list(library(environ, start_response))
        encoder, content_type = prometheus_client.exposition.choose_encoder(environ.get("HTTP_ACCEPT", ""))
        output = exposition(registry, encoder, content_type)
        headers = [("Content-Type", content_type)]
        if prometheus_client.exposition.gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            output = gzip.compress(output)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    return app


def write_textfile(path: str, registry: prometheus_client.CollectorRegistry) -> None:
    """Write the exposition for node_exporter's textfile collector; readers see the old file or the new one.
    A failure is logged, never raised: the daemon goes on, and writes the file again at the next change."""
    try:
        fsutil.atomic_write(path, exposition(registry), 0o644)
    except OSError as exc:
        log.error("tether could not write the metrics textfile %s: %s; it tries again at the next change.",
                  errors.shown_path(path), exc.strerror or exc)
    except Exception:
        log.exception("tether could not make the metrics for the textfile %s; it tries again at the next change.",
                      errors.shown_path(path))
