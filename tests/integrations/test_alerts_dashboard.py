"""The Prometheus alerts and the Grafana dashboard in packaging/: the real promtool checks and unit-tests
the rules, and a real Prometheus scraping a real `tether run` answers every query of the dashboard and
evaluates the rules."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests import support
from tests import test_prometheus as scraping

PROMETHEUS = support.REPO / "packaging" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
SCRAPE = PROMETHEUS / "scrape.yml"
DASHBOARD = support.REPO / "packaging" / "grafana" / "tether.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GATE = 'ALERTS{{alertname="TetherRolloutDeploymentFailed", alertstate="firing", application="{application}"}}'
GRAFANA_VARIABLE = re.compile(r"\$(?:__rate_interval|__interval|__range|\{?job\}?|\{?instance\}?)(?![\w])")


@pytest.fixture
def promtool() -> str:
    return scraping.required("promtool", "promtool, which comes with Prometheus")


@pytest.fixture
def prometheus_binary() -> str:
    return scraping.required("prometheus", "a real Prometheus server")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=support.REPO)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) of every target of every panel."""
    return [(panel["title"], target["refId"], target["expr"])
            for panel in dashboard()["panels"] if panel["type"] != "row" for target in panel["targets"]]


def concrete(expression: str, values: dict[str, str]) -> str:
    """The expression as Grafana sends it, its variables replaced by `values` (keys without `$`, braces)."""
    return GRAFANA_VARIABLE.sub(lambda match: values[match.group(0).strip("${}")], expression)


def api(port: int, path: str, **parameters: str) -> Any:
    url = f"http://127.0.0.1:{port}/api/v1/{path}?" + urllib.parse.urlencode(parameters)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)["data"]
    except urllib.error.HTTPError as exc:  # e.g. 400 for an expression that is not PromQL
        raise AssertionError(f"Prometheus refused {parameters}: {exc.read().decode(errors='replace')}") from exc
    except OSError:
        return None  # not listening yet


# ---------------------------------------------------------------- the rules with promtool


def test_promtool_accepts_the_alert_rules_and_the_example_scrape_configuration(promtool: str) -> None:
    rules = run(promtool, "check", "rules", str(ALERTS))
    config = run(promtool, "check", "config", str(SCRAPE))

    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_fires_exactly_when_its_unit_tests_say(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(ALERT_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case["exp_alerts"]}
    silent = {case["alertname"] for case in cases if not case["exp_alerts"]}
    names = {rule["alert"] for rule in alert_rules()}

    assert names == firing == silent


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


# ---------------------------------------------------------------- the dashboard's structure


def test_the_dashboard_queries_prometheus_through_its_datasource_variable_from_panels_with_unique_ids() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    panels = [panel for panel in board["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in board["panels"]]

    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"]
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["datasource"] == DATASOURCE and variables["job"]["datasource"] == DATASOURCE
    assert len(ids) == len(set(ids))
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert 'job=~"$job", instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


def test_the_dashboard_shows_every_tether_metric() -> None:
    expressions = " ".join(expression for _, _, expression in queries())
    metrics = ["tether_application_info", "tether_application_ready", "tether_application_suspended",
               "tether_application_stalled", "tether_drift{", "tether_drifted_files", "tether_hook_runs_total",
               "tether_hook_duration_seconds_bucket", "tether_reconcile_total", "tether_reconcile_duration_seconds_bucket",
               "tether_deployments", "tether_last_success_timestamp_seconds", "tether_next_attempt_timestamp_seconds",
               "tether_manifest_errors", "tether_manifests{",
               "tether_artifact_fetch_bytes_total", "tether_artifact_fetch_seconds_bucket",
               "tether_artifact_fetch_failures_total", "tether_build_info",
               "tether_deployment_failed", "tether_rollout_wave", "tether_rollout_waiting", "tether_rollout_gate_open"]

    assert [metric for metric in metrics if metric not in expressions] == []


# ---------------------------------------------------------------- against a real Prometheus and daemon


def status_of(node: support.Node, name: str) -> dict[str, Any]:
    try:
        document = json.loads((node.state / "status" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def rollout(prometheus: str, application: str, waves: list[dict[str, Any]]) -> dict[str, Any]:
    """A rollout of v2 from v1 started now, gated on the documented query for its application."""
    return {"from": "v1", "startedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "waves": waves, "gate": {"prometheus": prometheus, "query": GATE.format(application=application),
                                     "intervalSeconds": 1, "timeoutSeconds": 1}}


@pytest.fixture
def scraped(tmp_path: Path, node: support.Node, http: support.HttpServer, prometheus_binary: str) -> Iterator[int]:
    """A real Prometheus, loaded with alerts.yml, scraping a real daemon every second. The daemon has every
    kind of data the dashboard shows: "site" deployed with a succeeding hook and then changed on disk
    (content drift), "broken" with a failing hook, "missing" whose artifact is not there (fetch failures),
    "paused" suspended, an invalid manifest file, and two rollouts of v2 from v1: "acme-production"
    (application acme), in the first wave, whose health check fails so that v2 is rolled back and marked
    failed, and "held", in the second wave, whose gate (a Prometheus that does not answer) keeps it waiting
    on v1. Yields the port of Prometheus."""
    url = http.url("/missing/{deployment}.tar.gz")  # the server answers 404
    http.serve("/health", support.Reply(503, b"down"))
    support.write_manifest(node.manifests, support.application("missing", node.apps / "missing", deployment="v1",
                                                               source={"url": url}))
    support.write_manifest(node.manifests, support.application("paused", node.apps / "paused", deployment="v1",
                                                               suspend=True, source={"url": url}))
    support.write_manifest(node.manifests, "apiVersion: tether/v1\nkind: Application\nspec: [not, a, mapping\n",
                           "bad.yaml")
    acme = support.application("acme-production", node.apps / "acme", application="acme", deployment="v1",
                               source={"url": http.url("/{deployment}.tar.gz")})
    support.write_manifest(node.manifests, acme)
    with scraping.running_daemon(node, http) as daemon:
        site = node.apps / "site"
        scraping.wait_for("site to be deployed", lambda: (site / "current").is_dir())
        (site / "current" / "index.html").write_text("defaced\n")
        scraping.wait_for("acme-production on v1", lambda: status_of(node, "acme-production").get("current") == "v1")
        nowhere = f"http://127.0.0.1:{scraping.free_port()}"
        spec = cast(dict[str, Any], acme["spec"])
        spec.update(deployment="v2", rollout=rollout(nowhere, "acme", [{"percent": 100}]), healthCheck={
            "http": {"url": http.url("/health")}, "intervalSeconds": 0.2, "healthySeconds": 0.5, "deadlineSeconds": 1})
        support.write_manifest(node.manifests, acme)
        support.write_manifest(node.manifests, support.application(
            "held", node.apps / "held", deployment="v2", source={"url": http.url("/{deployment}.tar.gz")},
            rollout=rollout(nowhere, "held", [{"selector": {"canary": "true"}}, {"percent": 100}])))
        scraping.wait_for("v2 of acme-production marked failed", lambda: {
            d["name"]: d["state"] for d in status_of(node, "acme-production").get("deployments", [])}.get("v2")
            == "failed")
        with scraping.running_prometheus(prometheus_binary, tmp_path, daemon, rule_files=[ALERTS]) as web:
            yield web


def test_every_dashboard_query_returns_data_from_prometheus_scraping_a_real_daemon(
        scraped: int, node: support.Node) -> None:
    instance = cast(list[str], scraping.wait_for("the daemon's instance in the instance variable", lambda: api(
        scraped, "label/instance/values", **{"match[]": 'tether_build_info{job=~"tether"}'})))
    jobs = api(scraped, "label/job/values", **{"match[]": "tether_build_info"})
    # What Grafana would send: $__rate_interval is at least four scrape intervals (here 1 s each).
    values = {"job": "tether", "instance": instance[0], "__rate_interval": "5s", "__interval": "1s",
              "__range": "1m"}
    sent = {(title, ref): concrete(expression, values) for title, ref, expression in queries()}
    # The fleet's stats once the daemon has passed over every application: "broken", "missing" and
    # "acme-production" (back on v1, not v2) are not ready; "missing" (its 404) and "acme-production" (its
    # failed v2 is not tried again) are stalled, broken's failing hook is retried; "held" runs `from` as
    # asked; bad.yaml was never valid, so it has no application to stall.
    stats = {("Applications", "A"): 6.0, ("Not ready", "A"): 3.0, ("Stalled", "A"): 2.0, ("Suspended", "A"): 1.0,
             ("Invalid manifests", "A"): 1.0, ("Daemons up", "A"): 1.0}
    waiting, answers = dict(sent), dict[tuple[str, str], list[dict[str, Any]]]()
    deadline = time.monotonic() + 90
    while waiting and time.monotonic() < deadline:  # the rate()s need two scrapes, the drift a content check
        for key, expression in list(waiting.items()):
            found = api(scraped, "query", query=expression)
            result = found["result"] if found is not None else []
            if result and (key not in stats or float(result[0]["value"][1]) == stats[key]):
                answers[key] = result
                del waiting[key]
        time.sleep(0.2)

    assert [expression for expression in sent.values() if "$" in expression] == []
    assert jobs == ["tether"]
    assert waiting == {}, "these dashboard queries returned nothing (or not the expected stat) from a real daemon"
    drifted = {(r["metric"]["name"], r["metric"]["type"]) for r in answers[("Drifted applications", "A")]}
    assert ("site", "content") in drifted
    assert [r["metric"]["file"] for r in answers[("Invalid manifest files", "A")]] == [str(node.manifests / "bad.yaml")]
    failures = {r["metric"]["name"] for r in answers[("Fetch failures", "A")]}
    assert failures == {"missing"}
    assert {r["metric"]["name"] for r in answers[("Next retry of failed passes", "A")]} <= {"broken", "missing",
                                                                                          "acme-production"}
    on = {(r["metric"]["application"], r["metric"]["deployment"]): r["value"][1]
          for r in answers[("Nodes by deployment", "A")]}
    assert on == {("acme", "v1"): "1", ("held", "v1"): "1"}
    assert {r["metric"]["name"]: r["value"][1] for r in answers[("Nodes waiting on the gate", "A")]} == {
        "acme-production": "0", "held": "1"}
    assert {(r["metric"]["name"], r["metric"]["wave"]) for r in answers[("Nodes per wave", "A")]} == {
        ("acme-production", "0"), ("held", "1")}
    assert {r["metric"]["name"]: r["value"][1] for r in answers[("Gate state", "A")]}["held"] == "0"
    assert [(r["metric"]["name"], r["metric"]["deployment"]) for r in answers[("Nodes with a failed deployment", "A")]] \
        == [("acme-production", "v2")]


def test_prometheus_loads_the_alert_rules_and_fires_for_the_failing_hook_of_a_real_daemon(scraped: int) -> None:
    def healthy_rules() -> list[dict[str, Any]] | None:
        found = api(scraped, "rules", type="alert")
        rules = [rule for group in (found or {"groups": []})["groups"] for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

    def alert(alertname: str, state: str, **labels: str) -> list[dict[str, Any]]:
        found = api(scraped, "alerts") or {"alerts": []}
        return [a for a in found["alerts"] if a["labels"]["alertname"] == alertname and a["state"] == state
                and labels.items() <= a["labels"].items()]

    rules = cast(list[dict[str, Any]], scraping.wait_for("every alert rule evaluated without error", healthy_rules))
    hook = cast(list[dict[str, Any]], scraping.wait_for("TetherHookFailing for broken", lambda: alert(
        "TetherHookFailing", "firing", name="broken", hook="beforeActivate", outcome="failure")))
    drift = cast(list[dict[str, Any]], scraping.wait_for("TetherDrift pending for site", lambda: alert(
        "TetherDrift", "pending", name="site", type="content")))

    failed = cast(list[dict[str, Any]], scraping.wait_for("TetherRolloutDeploymentFailed for acme v2", lambda: alert(
        "TetherRolloutDeploymentFailed", "firing", application="acme", deployment="v2")))
    stuck = cast(list[dict[str, Any]], scraping.wait_for("TetherRolloutStuck pending for held", lambda: alert(
        "TetherRolloutStuck", "pending", application="held", name="held")))
    # The gate query the operator guide documents: closed (a series) for acme, open (none) for held.
    gate_of_acme = api(scraped, "query", query=GATE.format(application="acme"))["result"]
    gate_of_held = api(scraped, "query", query=GATE.format(application="held"))["result"]

    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
    assert failed[0]["labels"]["name"] == "acme-production" and failed[0]["labels"]["severity"] == "critical"
    assert failed[0]["annotations"]["summary"] == "v2 of acme failed on 1 node(s)"
    assert stuck[0]["annotations"]["summary"].startswith("1 node(s) have waited on the closed rollout gate of held")
    assert [(r["metric"]["application"], r["metric"]["deployment"]) for r in gate_of_acme] == [("acme", "v2")]
    assert gate_of_held == []
    assert hook[0]["labels"]["severity"] == "warning"
    assert hook[0]["annotations"]["summary"].startswith("beforeActivate hooks of broken ended with failure")
    assert drift[0]["annotations"]["summary"].startswith("site has content drift")
    assert alert("TetherHookFailing", "firing", name="site") == []
