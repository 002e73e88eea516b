"""Metrics (design section 8): the series and values a scrape shows for realistic status documents,
`promtool check metrics`, no stale series for a removed application, the atomic textfile for
node_exporter, and a real HTTP endpoint on port 0.

Status documents are plain data shaped as controller/status.py writes them (one test builds one
with status.build itself); the collector is the real one, never a mock.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import prometheus_client
import prometheus_client.openmetrics.exposition
import prometheus_client.openmetrics.parser
import prometheus_client.parser
import pytest

import controller
from controller import errors
from controller.daemon import application_series, exposition, metrics, web_server
from controller.engine import hooks, planning, reconciling, status
from controller.manifests import loading, model
from controller.tree import records

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
NOW = datetime.datetime(2024, 9, 17, 10, 0, 0, tzinfo=datetime.UTC).timestamp()


# ---------------------------------------------------------------- helpers


def condition(kind: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
            "lastTransitionTime": "2024-09-17T09:00:00Z"}


def deployment(name: str, state: str, active: bool = False) -> dict[str, Any]:
    return {"name": name, "state": state, "active": active, "createdAt": "2024-09-16T08:00:00Z",
            "completedAt": "2024-09-16T08:01:00Z" if state == "complete" else None, "sha256": "ab" * 32}


def document(name: str, *, ready: bool = True, reason: str = "Converged", current: str | None = "v1",
             deployments: Sequence[dict[str, Any]] = (), counts: dict[str, int] | None = None,
             **extra: Any) -> dict[str, Any]:
    """A status document as status.build writes it, plus what the daemon adds in `extra`."""
    return {
        "name": name, "application": name, "environment": "production", "path": f"/opt/{name}",
        "file": f"/etc/tether/manifests/{name}.yaml", "observedGeneration": "0" * 64, "desired": current,
        "current": current, "previous": None, "deployments": list(deployments),
        "conditions": [condition("Ready", ready, reason), condition("Reconciling", False, "Idle"),
                       condition("Stalled", False, "None"), condition("Drifted", False, "NotChecked")],
        "lastHookRuns": [], "hookRunCounts": counts or {}, "lastError": None, "nextAttemptAt": None,
        "updatedAt": "2024-09-17T10:00:00Z", **extra,
    }


def three_applications() -> list[dict[str, Any]]:
    """shop is ready; blog is suspended; wiki has content drift in 2 files and failing hooks (retried at 10:05)."""
    return [
        document("shop", current="v1.4.2", kind="rails", lastSuccessAt="2024-09-17T10:00:00Z",
                 deployments=[deployment("v1.4.1", "complete"), deployment("v1.4.2", "complete", True)],
                 counts={"beforeActivate/success": 4, "afterActivate/success": 4}),
        document("blog", ready=False, reason="Suspended", current="v7",
                 deployments=[deployment("v6", "missing"), deployment("v7", "complete", True)]),
        document("wiki", ready=False, reason="Failed", current="2024.09.1", lastSuccessAt="2024-09-16T08:01:00Z",
                 deployments=[deployment("2024.09.1", "complete", True), deployment("2024.09.2", "failed")],
                 counts={"afterActivate/success": 3, "afterActivate/failure": 2, "afterActivate/timeout": 1},
                 nextAttemptAt="2024-09-17T10:05:00Z", healthCheckCounts={"success": 7, "failure": 2},
                 drift={"current": False, "deployment": False, "links": False, "content": True, "driftedFiles": 2}),
    ]


def problems() -> tuple[list[errors.ManifestError], int]:
    bad = "/etc/tether/manifests/broken.yaml"
    return [errors.ManifestError(bad, "spec.path is required", 4, "/spec"),
            errors.ManifestError(bad, "metadata.name is not a valid name", 3, "/metadata/name"),
            errors.ManifestError("/etc/tether/manifests/other.yml", "this is not valid YAML", 1)], 3


def hook_run(phase: str, outcome: str, seconds: float) -> hooks.HookRun:
    return hooks.HookRun(phase, "application", "v1", outcome, 0 if outcome == hooks.SUCCESS else 1, NOW, seconds,
                         "", "/opt/x/.tether/logs/v1/x.log")


def scrape(registry: prometheus_client.CollectorRegistry) -> Series:
    text = prometheus_client.generate_latest(registry).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in prometheus_client.parser.text_string_to_metric_families(text) for s in family.samples}


def value(found: Series, metric: str, **labels: str) -> float | None:
    return found.get((metric, frozenset(labels.items())))


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install the `prometheus` Debian package (apt-get install prometheus); "
                    "CI installs it in .ci/run")
    return found


@pytest.fixture
def observations() -> metrics.Observations:
    seen = metrics.Observations()
    seen.reconciled("shop", "success", 0.4)
    seen.reconciled("blog", "success", 0.003)
    seen.reconciled("wiki", "failure", 12.0)
    seen.reconciled("wiki", "failure", 11.0)
    seen.hook_ran(hook_run("afterActivate", hooks.FAILURE, 0.7), "wiki")
    seen.hook_ran(hook_run("afterActivate", hooks.TIMEOUT, 300.0), "wiki")
    seen.fetched("shop", 85_000_000, 4.2)
    seen.fetch_failed("wiki", "ChecksumMismatch")
    return seen


@pytest.fixture
def registry(observations: metrics.Observations) -> prometheus_client.CollectorRegistry:
    return metrics.registry(metrics.Collector(three_applications, problems, observations))


# ---------------------------------------------------------------- what a scrape shows


def test_a_scrape_of_three_applications_shows_their_state_drift_hooks_and_deployments(
        registry: prometheus_client.CollectorRegistry) -> None:
    found = scrape(registry)
    assert value(found, "tether_application_info", name="shop", application="shop", environment="production",
                 kind="rails", deployment="v1.4.2", revision="") == 1
    assert value(found, "tether_application_info", name="blog", application="blog", environment="production",
                 kind="", deployment="v7", revision="") == 1
    assert {n: value(found, "tether_application_ready", name=n) for n in ("shop", "blog", "wiki")} == \
        {"shop": 1, "blog": 0, "wiki": 0}
    assert {n: value(found, "tether_application_suspended", name=n) for n in ("shop", "blog", "wiki")} == \
        {"shop": 0, "blog": 1, "wiki": 0}
    assert {t: value(found, "tether_drift", name="wiki", type=t) for t in application_series.DRIFT_TYPES} == \
        {"current": 0, "deployment": 0, "links": 0, "content": 1}
    assert value(found, "tether_drifted_files", name="wiki") == 2
    assert value(found, "tether_drifted_files", name="shop") == 0
    assert {o: value(found, "tether_hook_runs_total", name="wiki", hook="afterActivate", outcome=o)
            for o in application_series.HOOK_OUTCOMES} == {"success": 3, "failure": 2, "timeout": 1}
    assert value(found, "tether_hook_runs_total", name="shop", hook="beforeActivate", outcome="failure") == 0
    assert value(found, "tether_hook_runs_total", name="shop", hook="beforeDeploy", outcome="success") is None
    assert {o: value(found, "tether_health_checks_total", name="wiki", outcome=o)
            for o in ("success", "failure", "timeout")} == {"success": 7, "failure": 2, "timeout": 0}
    assert value(found, "tether_health_checks_total", name="shop", outcome="success") is None  # no probe ran
    assert {s: value(found, "tether_deployments", name="wiki", state=s)
            for s in (*application_series.DEPLOYMENT_STATES, "missing")} == {"complete": 1, "incomplete": 0, "failed": 1,
                                                                 "missing": None}
    assert value(found, "tether_deployments", name="blog", state="missing") == 1
    assert value(found, "tether_last_success_timestamp_seconds", name="shop") == NOW
    assert value(found, "tether_last_success_timestamp_seconds", name="wiki") == NOW - 26 * 3600 + 60
    assert value(found, "tether_last_success_timestamp_seconds", name="blog") is None
    assert {n: value(found, "tether_application_stalled", name=n) for n in ("shop", "blog", "wiki")} == \
        {"shop": 0, "blog": 0, "wiki": 0}  # a failing hook is retried: not stalled
    assert {n: value(found, "tether_next_attempt_timestamp_seconds", name=n) for n in ("shop", "blog", "wiki")} == \
        {"shop": None, "blog": None, "wiki": NOW + 300}
    assert value(found, "tether_manifest_errors", file="/etc/tether/manifests/broken.yaml") == 1
    assert value(found, "tether_manifest_errors", file="/etc/tether/manifests/other.yml") == 1
    assert value(found, "tether_manifests", state="valid") == 3
    assert value(found, "tether_manifests", state="invalid") == 2
    assert value(found, "tether_build_info", version=controller.__version__) == 1


def test_a_scrape_shows_passes_hook_durations_and_fetches_since_the_start(
        registry: prometheus_client.CollectorRegistry) -> None:
    found = scrape(registry)
    assert value(found, "tether_reconcile_total", name="wiki", result="failure") == 2
    assert value(found, "tether_reconcile_total", name="wiki", result="success") == 0
    assert value(found, "tether_reconcile_total", name="shop", result="success") == 1
    assert value(found, "tether_reconcile_duration_seconds_count") == 4
    assert value(found, "tether_reconcile_duration_seconds_sum") == pytest.approx(23.403)
    assert value(found, "tether_reconcile_duration_seconds_bucket", le="0.01") == 1
    assert value(found, "tether_reconcile_duration_seconds_bucket", le="0.5") == 2
    assert value(found, "tether_reconcile_duration_seconds_bucket", le="10.0") == 2
    assert value(found, "tether_reconcile_duration_seconds_bucket", le="30.0") == 4
    assert value(found, "tether_reconcile_duration_seconds_bucket", le="+Inf") == 4
    assert value(found, "tether_hook_duration_seconds_count", hook="afterActivate") == 2
    assert value(found, "tether_hook_duration_seconds_bucket", hook="afterActivate", le="1.0") == 1
    assert value(found, "tether_hook_duration_seconds_bucket", hook="afterActivate", le="300.0") == 2
    assert value(found, "tether_hook_duration_seconds_count", hook="beforeDeploy") == 0
    assert value(found, "tether_artifact_fetch_bytes_total") == 85_000_000
    assert value(found, "tether_artifact_fetch_seconds_count") == 1
    assert value(found, "tether_artifact_fetch_seconds_bucket", le="5.0") == 1
    assert value(found, "tether_artifact_fetch_failures_total", name="wiki", reason="ChecksumMismatch") == 1


def test_promtool_check_metrics_passes_on_the_exposition_with_and_without_process_series(
        observations: metrics.Observations) -> None:
    collector = metrics.Collector(three_applications, problems, observations)
    for registry in (metrics.registry(collector), metrics.registry(collector, process=True)):
        text = prometheus_client.generate_latest(registry)
        checked = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
        assert checked.stdout.strip() == b"" and checked.stderr.strip() == b""


def test_the_openmetrics_exposition_that_prometheus_negotiates_parses_strictly(
        registry: prometheus_client.CollectorRegistry) -> None:
    text = prometheus_client.openmetrics.exposition.generate_latest(registry).decode()
    names = {f.name for f in prometheus_client.openmetrics.parser.text_string_to_metric_families(text)}
    assert {"tether_hook_runs", "tether_application_info", "tether_reconcile_duration_seconds"} <= names


def test_a_status_document_made_by_status_build_is_read_as_written() -> None:
    app = loading.parse("/etc/tether/manifests/acme.yaml", "apiVersion: tether/v1\nkind: Application\n"
                        "metadata: {name: acme}\nspec: {path: /opt/acme, environment: staging, deployment: v2}\n")
    assert isinstance(app, model.Application)
    observed = records.Observed("/opt/acme", True, "v2", "/opt/acme/v2", "v1", {
        "v1": records.Deployment("v1", records.COMPLETE, True, NOW - 60, NOW - 50),
        "v2": records.Deployment("v2", records.COMPLETE, True, NOW - 10, NOW - 5)}, "v2", (), ())
    result = reconciling.Result("acme", planning.Plan("acme", "v2", ()), observed,
                                hook_runs=(hook_run("afterActivate", hooks.TIMEOUT, 30.0),))
    built = status.build(app, result, {"hookRunCounts": {"afterActivate/timeout": 2}}, NOW)
    found = scrape(metrics.registry(metrics.Collector(lambda: [built], lambda: ([], 1), metrics.Observations())))
    assert value(found, "tether_application_info", name="acme", application="acme", environment="staging", kind="",
                 deployment="v2", revision="") == 1
    assert value(found, "tether_application_ready", name="acme") == 1
    assert value(found, "tether_hook_runs_total", name="acme", hook="afterActivate", outcome="timeout") == 3
    assert value(found, "tether_deployments", name="acme", state="complete") == 2
    assert value(found, "tether_last_success_timestamp_seconds", name="acme") == NOW
    assert value(found, "tether_drift", name="acme", type="content") == 0


def test_a_document_without_the_optional_fields_shows_no_drift_and_no_last_success_unless_ready() -> None:
    failing = document("api", ready=False, reason="Failed")
    bare = {"name": "new", "deployments": [], "conditions": [condition("Ready", False, "InvalidManifest")]}
    found = scrape(metrics.registry(metrics.Collector(lambda: [failing, bare, {"no": "name"}], lambda: ([], 0),
                                                      metrics.Observations())))
    assert {t: value(found, "tether_drift", name="api", type=t) for t in application_series.DRIFT_TYPES} == \
        dict.fromkeys(application_series.DRIFT_TYPES, 0)
    assert value(found, "tether_last_success_timestamp_seconds", name="api") is None
    assert value(found, "tether_application_info", name="new", application="", environment="", kind="",
                 deployment="", revision="") == 1
    assert not [key for key in found if ("name", "no") in key[1]]


def test_making_the_registry_does_not_call_the_callables() -> None:
    def unavailable() -> Any:
        raise AssertionError("called at registration")

    metrics.registry(metrics.Collector(unavailable, unavailable, metrics.Observations()), process=True)


def test_an_unknown_reconcile_result_is_refused() -> None:
    with pytest.raises(ValueError, match="success or failure"):
        metrics.Observations().reconciled("shop", "ok", 1.0)


def test_observations_from_many_threads_are_all_counted() -> None:
    seen = metrics.Observations()

    def work(index: int) -> None:
        for _ in range(500):
            seen.reconciled(f"app{index % 2}", "success", 0.01)
            seen.fetch_failed("app0", "FetchError")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = seen.snapshot()
    assert state.reconciles[("app0", "success")] == state.reconciles[("app1", "success")] == 2000
    assert state.fetch_failures[("app0", "FetchError")] == 4000
    assert sum(state.reconcile_seconds.counts) == 4000


def test_a_replaced_status_document_is_read_afresh_and_an_unchanged_one_gives_the_same_values(
        observations: metrics.Observations) -> None:
    documents = three_applications()
    registry = metrics.registry(metrics.Collector(lambda: documents, problems, observations))
    first = scrape(registry)
    assert scrape(registry) == first
    documents[2] = document("wiki", current="2024.09.2", lastSuccessAt="2024-09-17T10:05:00Z",
                            deployments=[deployment("2024.09.2", "complete", True)])
    found = scrape(registry)
    assert value(found, "tether_application_ready", name="wiki") == 1
    assert value(found, "tether_drifted_files", name="wiki") == 0
    assert value(found, "tether_deployments", name="wiki", state="failed") == 0
    assert value(found, "tether_last_success_timestamp_seconds", name="wiki") == NOW + 300
    assert value(found, "tether_hook_runs_total", name="wiki", hook="afterActivate", outcome="failure") is None
    assert {k: v for k, v in found.items() if ("name", "wiki") not in k[1]} == \
        {k: v for k, v in first.items() if ("name", "wiki") not in k[1]}


# ---------------------------------------------------------------- stalled, and the next attempt


def passed(name: str, desired: str, error: str | None = None, *, permanent: bool = False,
           next_attempt: float | None = None) -> dict[str, Any]:
    """The status document status.build writes after a pass of `name` (v1 active, `desired` wanted), with
    the nextAttemptAt the daemon adds (a retry time after a failure, else None)."""
    app = loading.parse(f"/etc/tether/manifests/{name}.yaml", "apiVersion: tether/v1\nkind: Application\n"
                        f"metadata: {{name: {name}}}\nspec: {{path: /opt/{name}, deployment: {desired}}}\n")
    assert isinstance(app, model.Application)
    observed = records.Observed(f"/opt/{name}", True, "v1", f"/opt/{name}/v1", None, {
        "v1": records.Deployment("v1", records.COMPLETE, True, NOW - 60, NOW - 50)}, "v1", (), ())
    steps = () if desired == "v1" else (planning.Step(planning.DEPLOY, desired, "it is not complete"),)
    result = reconciling.Result(name, planning.Plan(name, desired, steps), observed, error, permanent)
    document = status.build(app, result, None, NOW)
    document["nextAttemptAt"] = status.timestamp(next_attempt)
    return document


def stalled(document: dict[str, Any]) -> str:
    return str(next(c["status"] for c in document["conditions"] if c["type"] == "Stalled"))


def test_a_permanent_error_or_an_invalid_manifest_is_stalled_1_and_a_ready_or_retried_application_0() -> None:
    documents = [
        passed("shop", "v1"),
        passed("api", "v2", "http://a.example/api/v2.tar.gz answered HTTP 503 Service Unavailable",
               next_attempt=NOW + 60),
        passed("wiki", "v2", "http://a.example/wiki/v2.tar.gz answered HTTP 404 Not Found; check the URL and the "
               "deployment name", permanent=True, next_attempt=NOW + 30),
        status.build_invalid("blog", "/etc/tether/manifests/blog.yaml:3: this is not valid YAML", passed("blog", "v1"),
                             NOW),
        document("paused", ready=False, reason="Suspended"),
    ]
    assert [stalled(d) for d in documents] == ["False", "False", "True", "True", "False"]  # as status.py says
    found = scrape(metrics.registry(metrics.Collector(lambda: documents, lambda: ([], 5), metrics.Observations())))
    assert {n: value(found, "tether_application_stalled", name=n) for n in ("shop", "api", "wiki", "blog", "paused")} \
        == {"shop": 0, "api": 0, "wiki": 1, "blog": 1, "paused": 0}
    assert value(found, "tether_application_ready", name="blog") == 0


def test_the_next_attempt_shows_as_its_time_and_is_absent_while_none_is_scheduled() -> None:
    documents = [passed("api", "v2", "HTTP 503", next_attempt=NOW + 90), passed("shop", "v1"),
                 document("naive", ready=False, reason="Failed", nextAttemptAt="2024-09-17T10:00:30")]  # naive is UTC
    registry = metrics.registry(metrics.Collector(lambda: documents, lambda: ([], 3), metrics.Observations()))
    found = scrape(registry)
    assert documents[0]["nextAttemptAt"] == "2024-09-17T10:01:30Z" and documents[1]["nextAttemptAt"] is None
    assert value(found, "tether_next_attempt_timestamp_seconds", name="api") == NOW + 90
    assert value(found, "tether_next_attempt_timestamp_seconds", name="naive") == NOW + 30
    assert value(found, "tether_next_attempt_timestamp_seconds", name="shop") is None
    documents[0] = passed("api", "v1")  # the retry succeeded: no retry is scheduled any more
    assert value(scrape(registry), "tether_next_attempt_timestamp_seconds", name="api") is None


def test_after_a_stalled_application_disappears_no_stalled_or_next_attempt_series_names_it() -> None:
    documents = [passed("shop", "v1"), passed("wiki", "v2", "HTTP 404", permanent=True, next_attempt=NOW + 30)]
    registry = metrics.registry(metrics.Collector(lambda: documents, lambda: ([], 2), metrics.Observations()))
    before = scrape(registry)
    assert value(before, "tether_application_stalled", name="wiki") == 1
    assert value(before, "tether_next_attempt_timestamp_seconds", name="wiki") == NOW + 30
    documents.pop()
    found = scrape(registry)
    assert not [key for key in found if ("name", "wiki") in key[1]]
    assert value(found, "tether_application_stalled", name="shop") == 0


# ---------------------------------------------------------------- no stale series


def test_after_an_application_disappears_and_is_forgotten_no_series_names_it(
        observations: metrics.Observations) -> None:
    documents = three_applications()
    registry = metrics.registry(metrics.Collector(lambda: documents, problems, observations))
    assert any(("name", "wiki") in labels for _, labels in scrape(registry))
    documents[:] = [d for d in documents if d["name"] != "wiki"]
    observations.forget("wiki")
    found = scrape(registry)
    assert not [key for key in found if any("wiki" in v for _, v in key[1])]
    assert value(found, "tether_reconcile_total", name="shop", result="success") == 1
    assert value(found, "tether_application_ready", name="shop") == 1
    assert value(found, "tether_reconcile_duration_seconds_count") == 4  # process-wide histograms keep their counts


# ---------------------------------------------------------------- textfile


def test_the_textfile_is_replaced_atomically_and_parses(tmp_path: Path,
                                                        observations: metrics.Observations) -> None:
    documents = three_applications()
    registry = metrics.registry(metrics.Collector(lambda: documents, problems, observations))
    path = tmp_path / "tether.prom"
    exposition.write_textfile(str(path), registry)
    first_inode = path.stat().st_ino
    with open(path, "rb") as reader:  # a reader that opened the old file (node_exporter mid-read)
        documents.pop()
        observations.forget("wiki")
        exposition.write_textfile(str(path), registry)
        old = reader.read().decode()
    new = path.read_text()
    assert "wiki" in old and "wiki" not in new  # the reader saw the whole old file, not a mix
    assert path.stat().st_ino != first_inode  # replaced by rename, never rewritten in place
    assert os.listdir(tmp_path) == ["tether.prom"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644
    families = {f.name for f in prometheus_client.parser.text_string_to_metric_families(new)}
    assert {"tether_application_ready", "tether_hook_runs", "tether_manifests"} <= families
    assert not any(name.startswith("process_") for name in families)


# ---------------------------------------------------------------- HTTP


def test_serve_on_port_0_answers_a_real_http_get_with_the_exposition(
        registry: prometheus_client.CollectorRegistry) -> None:
    server = web_server.Server("127.0.0.1:0", registry)
    with contextlib.closing(server):
        assert server.port > 0 and server.host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    families = {f.name: f for f in prometheus_client.parser.text_string_to_metric_families(text)}
    assert [s.value for s in families["tether_drifted_files"].samples if s.labels["name"] == "wiki"] == [2]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass  # closed: the port is released


def test_a_busy_port_or_a_malformed_address_is_an_error_that_says_so(
        registry: prometheus_client.CollectorRegistry) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(errors.TemporaryError, match="cannot serve metrics"):
            web_server.Server(f"127.0.0.1:{busy.getsockname()[1]}", registry)
    for address in ("127.0.0.1", "127.0.0.1:http", "localhost:70000"):
        with pytest.raises(errors.PermanentError, match="not host:port"):
            web_server.Server(address, registry)


def test_rollout_series_exist_only_for_applications_with_a_rollout(observations: metrics.Observations) -> None:
    waiting = {"wave": 1, "inOpenWave": False, "nextWaveAt": None, "waiting": True, "gate": "closed",
               "gateMessage": "ALERTS returned 1 series"}
    nowhere = {"wave": None, "inOpenWave": False, "nextWaveAt": None, "waiting": False, "gate": "unknown",
               "gateMessage": "not asked"}
    documents = [document("acme", rollout=waiting), document("shop"), document("lab", rollout=nowhere)]
    registry = metrics.registry(metrics.Collector(lambda: documents, problems, observations))
    found = scrape(registry)
    assert value(found, "tether_rollout_wave", name="acme") == 1
    assert value(found, "tether_rollout_waiting", name="acme") == 1
    assert value(found, "tether_rollout_gate_open", name="acme") == 0
    assert value(found, "tether_rollout_wave", name="lab") == -1
    assert value(found, "tether_rollout_waiting", name="lab") == 0
    assert not [key for key in found if key[0].startswith("tether_rollout_") and ("name", "shop") in key[1]]
    text = prometheus_client.generate_latest(registry)
    checked = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    documents[0] = document("acme")  # the rollout ended: its series go
    assert not [key for key in scrape(registry) if key[0].startswith("tether_rollout_")
                and ("name", "acme") in key[1]]


def test_deployment_failed_names_the_desired_deployment_while_it_is_failed_and_goes_once_another_is_desired(
        observations: metrics.Observations) -> None:
    rolled_back = [deployment("v1", "complete", True), deployment("v2", "failed")]
    documents = [document("acme", ready=False, reason="Failed", current="v1", deployments=rolled_back, desired="v2"),
                 document("wiki", current="2024.09.1", deployments=[deployment("2024.09.1", "complete", True),
                                                                    deployment("2024.09.0", "failed")]),
                 document("shop", deployments=[deployment("v1", "complete", True)])]
    registry = metrics.registry(metrics.Collector(lambda: documents, problems, observations))
    found = scrape(registry)
    failed = {key: v for key, v in found.items() if key[0] == "tether_deployment_failed"}
    assert failed == {("tether_deployment_failed", frozenset({("name", "acme"), ("deployment", "v2")})): 1.0}
    text = prometheus_client.generate_latest(registry)
    checked = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    documents[0] = document("acme", ready=False, reason="NotConverged", current="v1", desired="v3",
                            deployments=[*rolled_back, deployment("v3", "complete")])  # the fix is committed
    assert not [key for key in scrape(registry) if key[0] == "tether_deployment_failed"]
