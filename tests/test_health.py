"""spec.healthCheck (design section 11): probes after afterActivate decide whether an activation stands.

Integration tests drive the real `tether` command line against a real HTTP server on loopback as the health
endpoint (its replies are scripted: served in order, the last repeats) and real hooks; unit tests drive the
prober with a fake clock."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.daemon import metrics
from controller.engine import health, hooks
from controller.manifests import loading, model
from tests import support
from tests.test_metrics import scrape, value

# Every afterActivate appends "<deployment>" to runs.txt beside the application path.
AFTER_ACTIVATE = 'echo "$DEPLOYMENT_NAME" >> "$APPLICATION_PATH/../runs.txt"\n'
SECRET = "Bearer s3cret-token"


def check(url: str, **times: float) -> dict[str, Any]:
    return {"http": {"url": url}, "intervalSeconds": 0.1, "timeoutSeconds": 1, "healthySeconds": 0.3,
            "deadlineSeconds": 2, **times}


def manifest(node: support.Node, http: support.HttpServer, version: str, health_check: dict[str, Any],
             app: Path | None = None, **spec: Any) -> Path:
    app = app or node.apps / "site"
    http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment=f"v{version}", hooks={"afterActivate": AFTER_ACTIVATE}, healthCheck=health_check,
        source={"url": http.url("/{deployment}.tar.gz"), "headers": {"Authorization": SECRET}}, **spec))
    return app


def healthy_v1_then_v2(node: support.Node, http: support.HttpServer, **times: float) -> Path:
    """v1 active and healthy; the manifest now asks for v2 (the caller scripts /health for it)."""
    http.serve("/health", b"ok")
    app = manifest(node, http, "1", check(http.url("/health"), **times))
    first = node.tether("reconcile")
    assert first.returncode == 0, first.stdout + first.stderr
    manifest(node, http, "2", check(http.url("/health"), **times))
    return app


def runs(app: Path) -> list[str]:
    return (app.parent / "runs.txt").read_text().splitlines()


def record(app: Path, deployment: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((app / ".tether" / "deployments" / f"{deployment}.json").read_text())
    return loaded


def status(node: support.Node) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(node.tether("status", "site", "--json").stdout)
    return loaded


def condition(document: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in document["conditions"] if c["type"] == kind)


def probes_since(http: support.HttpServer, mark: int) -> list[dict[str, str]]:
    return [headers for path, headers in http.requests[mark:] if path == "/health"]


# ---------------------------------------------------------------- through the command line


def test_a_healthy_endpoint_lets_v2_become_current_healthy_and_ready_without_sending_the_source_secret(
        node: support.Node, http: support.HttpServer) -> None:
    app = healthy_v1_then_v2(node, http)
    mark = len(http.requests)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    assert os.readlink(app / "current") == str(app / "v2")
    document = status(node)
    healthy, ready = condition(document, "Healthy"), condition(document, "Ready")
    assert (healthy["status"], healthy["reason"]) == ("True", "Healthy")
    assert "probes passed over" in healthy["message"] and healthy["message"].startswith("v2: ")
    assert ready["status"] == "True"
    done = record(app, "v2")
    assert done["state"] == "complete" and "activationPending" not in done and "probingSince" not in done
    assert "healthyAt" in done
    probes = probes_since(http, mark)
    assert len(probes) >= 4  # 0.3 s of passes at 0.1 s intervals
    assert not any("Authorization" in headers for headers in probes), "a probe carried the source's secret"
    assert runs(app) == ["v1", "v2"]
    assert document["healthCheckCounts"]["success"] >= 8  # v1's and v2's probes


def test_an_endpoint_failing_until_the_deadline_rolls_back_to_v1_marks_v2_failed_and_reruns_v1s_after_activate(
        node: support.Node, http: support.HttpServer) -> None:
    app = healthy_v1_then_v2(node, http, deadlineSeconds=1)
    http.serve("/health", support.Reply(503, b"down"))

    run = node.tether("reconcile")

    assert run.returncode == 1
    assert "v2 was not healthy within deadlineSeconds (1 s)" in run.stdout, run.stdout
    assert f"GET {http.url('/health')} answered 503" in run.stdout and "rolled back to v1" in run.stdout
    assert os.readlink(app / "current") == str(app / "v1")
    assert record(app, "v2")["state"] == "failed"
    assert runs(app) == ["v1", "v2", "v1"]
    document = status(node)
    assert (condition(document, "Healthy")["status"], condition(document, "Healthy")["reason"]) == ("False",
                                                                                                   "Unhealthy")
    assert condition(document, "Ready")["status"] == "False"
    assert document["healthCheckCounts"]["failure"] >= 5


def test_a_failure_in_the_middle_of_passing_probes_starts_the_healthy_time_again(
        node: support.Node, http: support.HttpServer) -> None:
    app = healthy_v1_then_v2(node, http, healthySeconds=0.35)
    http.serve("/health", b"ok", b"ok", support.Reply(503), b"ok")
    mark = len(http.requests)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    assert os.readlink(app / "current") == str(app / "v2")
    message = condition(status(node), "Healthy")["message"]
    passed = int(message.split()[1])
    total = len(probes_since(http, mark))
    assert passed == total - 3, f"the passes before the failure counted: {message}, {total} probes"
    assert passed >= 4  # 0.35 s of passes at 0.1 s intervals, counted from after the failure


def test_a_redirect_to_another_host_is_a_failed_probe_and_is_never_followed(
        node: support.Node, http: support.HttpServer) -> None:
    other = support.HttpServer()
    try:
        other.serve("/health", b"ok")
        app = healthy_v1_then_v2(node, http, deadlineSeconds=0.6, healthySeconds=0.1)
        http.serve("/health", support.Reply(302, headers={"Location": other.url("/health", host="localhost")}))

        run = node.tether("reconcile")

        assert run.returncode == 1
        assert "answered 302 (a redirect, which tether never follows)" in run.stdout, run.stdout
        assert os.readlink(app / "current") == str(app / "v1")
        assert other.requests == [], "the redirect was followed"
    finally:
        other.close()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own temporary directory is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tether-health-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


PROBE = """#!/bin/sh
echo "probe of $DEPLOYMENT_NAME by $(id -un) in $(pwd) as $HOOK_NAME"
env | cut -d= -f1 | sort | tr '\\n' ' '
echo
"""


def test_the_command_form_runs_as_the_manifest_user_with_a_clean_environment_and_appends_to_its_log(
        node: support.Node, http: support.HttpServer, open_dir: Path) -> None:
    app = open_dir / "site"
    (open_dir / "runs.txt").touch(0o666)
    (open_dir / "runs.txt").chmod(0o666)  # afterActivate runs as nobody too
    manifest(node, http, "1", {"command": PROBE, "intervalSeconds": 0.1, "timeoutSeconds": 2,
                               "healthySeconds": 0.2, "deadlineSeconds": 5}, app=app, user="nobody")

    run = node.tether("reconcile", env={"TETHER_SECRET": "x", "NOTIFY_SOCKET": "/tmp/x"})

    assert run.returncode == 0, run.stdout + run.stderr
    text = (app / ".tether" / "logs" / "v1" / "healthCheck.log").read_text()
    assert text.count(f"probe of v1 by nobody in {app}/v1 as healthCheck") >= 3, text  # appended, probe by probe
    names = set(text.splitlines()[2].split())
    assert names <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "PWD", "APPLICATION_NAME",
                     "APPLICATION_PATH", "ENVIRONMENT", "DEPLOYMENT_NAME", "DEPLOYMENT_PATH",
                     "PREVIOUS_DEPLOYMENT_NAME", "HOOK_NAME"} | {n for n in names if n.startswith("LC_")}, names
    assert condition(status(node), "Healthy")["status"] == "True"


def test_a_probe_command_leaves_no_process_behind_and_a_signal_that_ended_it_is_named(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    probe = f'sleep 300 >/dev/null 2>&1 &\necho $! >> {pids}\nexit 0\n'
    manifest(node, http, "1", {"command": probe, "intervalSeconds": 0.1, "timeoutSeconds": 2,
                               "healthySeconds": 0.2, "deadlineSeconds": 5})
    assert node.tether("reconcile").returncode == 0
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) >= 2
    alive = []
    for pid in started:
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
                alive.append(pid)
    assert alive == [], "the probes' background processes outlived them"

    manifest(node, http, "2", {"command": "kill -KILL $$\n", "intervalSeconds": 0.1, "timeoutSeconds": 2,
                               "healthySeconds": 0.2, "deadlineSeconds": 0.5})
    run = node.tether("reconcile")
    assert run.returncode == 1 and "the health check command was killed by signal 9 (Killed)" in run.stdout, \
        run.stdout


def test_a_kill_during_probing_is_resumed_by_the_next_pass_without_running_after_activate_again(
        node: support.Node, http: support.HttpServer) -> None:
    app = healthy_v1_then_v2(node, http, deadlineSeconds=5)

    killed = node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "probed"})

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    pending = record(app, "v2")
    assert pending["activationPending"] is True and "probingSince" in pending
    assert node.tether("plan", "--json").stdout.count("finish-activation") == 1
    again = node.tether("reconcile")
    assert again.returncode == 0, again.stdout + again.stderr
    assert runs(app) == ["v1", "v2"], "afterActivate ran twice"
    assert os.readlink(app / "current") == str(app / "v2")
    done = record(app, "v2")
    assert "activationPending" not in done and "probingSince" not in done and "healthyAt" in done
    assert condition(status(node), "Healthy")["status"] == "True"


def test_a_kill_during_probing_whose_deadline_passed_meanwhile_rolls_back_at_once_without_probing(
        node: support.Node, http: support.HttpServer) -> None:
    app = healthy_v1_then_v2(node, http, deadlineSeconds=1)
    http.serve("/health", support.Reply(503))
    killed = node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "probed"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    deadline = record(app, "v2")["probingSince"] + 1
    time.sleep(max(0.0, deadline - time.time()))  # tether stays down until the deadline has passed
    mark = len(http.requests)

    run = node.tether("reconcile")

    assert run.returncode == 1
    assert "the deadline passed before a probe could run" in run.stdout, run.stdout
    assert probes_since(http, mark) == []
    assert os.readlink(app / "current") == str(app / "v1")
    assert record(app, "v2")["state"] == "failed"
    assert runs(app) == ["v1", "v2", "v1"]


def test_probes_are_counted_by_outcome_in_tether_health_checks_total(
        node: support.Node, http: support.HttpServer) -> None:
    http.serve("/health", support.Reply(500), b"ok")
    manifest(node, http, "1", check(http.url("/health"), healthySeconds=0.1))
    assert node.tether("reconcile").returncode == 0
    documents = [json.loads((node.state / "status" / "site.json").read_text())]

    found = scrape(metrics.registry(metrics.Collector(lambda: documents, lambda: ([], 1), metrics.Observations())))

    successes = len([p for p, _ in http.requests if p == "/health"]) - 1
    assert value(found, "tether_health_checks_total", name="site", outcome="failure") == 1
    assert value(found, "tether_health_checks_total", name="site", outcome="success") == successes
    assert value(found, "tether_health_checks_total", name="site", outcome="timeout") == 0


@pytest.mark.parametrize("first", [False, True], ids=["rollbackOnFailure false", "nothing to roll back to"])
def test_an_unhealthy_deployment_kept_active_counts_as_failed_and_reconcile_never_says_converged(
        node: support.Node, http: support.HttpServer, first: bool) -> None:
    # The default rollout gate asks whether a canary's deployment failed: one kept unhealthy failed too.
    if first:
        http.serve("/health", support.Reply(503, b"down"))
        manifest(node, http, "1", check(http.url("/health"), deadlineSeconds=1))
        deployment = "v1"
    else:
        healthy_v1_then_v2(node, http, deadlineSeconds=1)
        http.serve("/health", support.Reply(503, b"down"))
        manifest(node, http, "2", check(http.url("/health"), deadlineSeconds=1), rollbackOnFailure=False)
        deployment = "v2"
    assert node.tether("reconcile").returncode == 1  # the pass that found it unhealthy

    again = node.tether("reconcile")

    assert again.returncode == 1 and f"site: failed: not healthy: {deployment}: " in again.stdout, again.stdout
    document = status(node)
    assert document["current"] == deployment and condition(document, "Ready")["reason"] == "NotHealthy"
    found = scrape(metrics.registry(metrics.Collector(lambda: [document], lambda: ([], 1), metrics.Observations())))
    assert value(found, "tether_deployment_failed", name="site", deployment=deployment) == 1


def test_an_application_without_a_health_check_is_healthy_with_reason_no_health_check(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1",
                                                               source={"url": http.url("/v1.tar.gz")}))
    assert node.tether("reconcile").returncode == 0
    healthy = condition(status(node), "Healthy")
    assert (healthy["status"], healthy["reason"]) == ("True", "NoHealthCheck")


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("health_check", "key", "message"), [
    ({"http": {"url": "http://127.0.0.1/h"}, "command": "true"}, "healthCheck:", "give exactly one of 'http', 'command'"),
    ({"intervalSeconds": 1}, "healthCheck:", "give exactly one of 'http', 'command'"),
    ({"http": {"url": "http://127.0.0.1/h"}, "healthySeconds": 30, "deadlineSeconds": 20}, "healthySeconds:",
     "healthySeconds (30) must be less than deadlineSeconds (20)"),
    ({"http": {"url": "http://user:pw@127.0.0.1/h"}}, "url:", "does not have the required form"),
    ({"http": {"url": "http://127.0.0.1/h", "expectStatus": []}}, "expectStatus:", "/spec/healthCheck/http/expectStatus"),
])
def test_a_bad_health_check_is_refused_with_its_file_and_line(
        node: support.Node, health_check: dict[str, Any], key: str, message: str) -> None:
    written = support.write_manifest(node.manifests, support.application("site", "/srv/site",
                                                                         healthCheck=health_check))
    line = next(n for n, text in enumerate(written.read_text().splitlines(), 1) if text.strip().startswith(key))

    run = node.tether("validate", str(written))

    assert run.returncode == 2
    assert f"{written}:{line}:" in run.stdout and message in run.stdout, run.stdout


def test_a_health_check_is_read_with_its_defaults() -> None:
    app = loading.parse("/etc/tether/manifests/site.yaml", "apiVersion: tether/v1\nkind: Application\n"
                        "metadata: {name: site}\nspec:\n  path: /srv/site\n  healthCheck:\n"
                        "    http: {url: 'http://127.0.0.1:8080/health'}\n")
    assert isinstance(app, model.Application)
    assert app.health_check == model.HealthCheck(url="http://127.0.0.1:8080/health", expect_status=(200,),
                                                 interval_seconds=2, timeout_seconds=5, healthy_seconds=10,
                                                 deadline_seconds=120)


# ---------------------------------------------------------------- the prober, with a fake clock


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def wait(self, cancel: threading.Event | None, seconds: float) -> bool:
        self.now += max(0.0, seconds)
        return False


def prober(answers: list[int | BaseException], seconds_per_probe: float = 0.0) -> tuple[health.Prober, FakeTime]:
    fake = FakeTime()

    def get(url: str, timeout: float) -> int:
        fake.now += seconds_per_probe
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return health.Prober(get=get, clock=fake.clock, wall_clock=fake.clock, wait=fake.wait), fake


def application(**times: float) -> model.Application:
    check = model.HealthCheck(url="http://127.0.0.1:1/health", **{"interval_seconds": 2, "timeout_seconds": 5,
                                                                 "healthy_seconds": 10, "deadline_seconds": 120,
                                                                 **times})
    return model.Application("site", "site.yaml", "0", "site", "production", "/srv/site", health_check=check)


def test_probes_passing_for_healthy_seconds_make_the_deployment_healthy() -> None:
    probe, _ = prober([200])
    seen: list[health.Probe] = []
    report = probe.prove(application(), hooks.Runner(), "v2", "v1", 1000.0, seen.append)
    assert report == health.Report("v2", True, "6 probes passed over 10.0 s")
    assert [p.outcome for p in seen] == ["success"] * 6


def test_a_timeout_and_an_unreachable_server_are_failed_probes_with_their_own_outcomes() -> None:
    probe, _ = prober([TimeoutError(), ConnectionRefusedError("refused"), 200], seconds_per_probe=0.5)
    seen: list[health.Probe] = []
    probe.prove(application(healthy_seconds=0), hooks.Runner(), "v2", None, 1000.0, seen.append)
    assert [p.outcome for p in seen] == ["timeout", "failure", "success"]


def test_the_deadline_counts_from_when_probing_started_not_from_when_this_pass_resumed_it() -> None:
    probe, fake = prober([503])
    seen: list[health.Probe] = []
    with pytest.raises(health.Unhealthy, match="answered 503"):
        probe.prove(application(deadline_seconds=10), hooks.Runner(), "v2", None, 995.0, seen.append, resumed=True)
    assert fake.now == 1005.0 and len(seen) == 3  # probes at 1000, 1002 and 1004; the deadline at 1005


def test_an_expected_redirect_status_passes_and_an_unexpected_one_fails() -> None:
    app = application(healthy_seconds=0)
    listed = model.Application(**{**app.__dict__, "health_check": model.HealthCheck(
        url="http://127.0.0.1:1/health", expect_status=(200, 301), healthy_seconds=0)})
    probe, _ = prober([301])
    assert probe.prove(listed, hooks.Runner(), "v2", None, 1000.0, lambda p: None).healthy
    probe, _ = prober([301])
    with pytest.raises(health.Unhealthy, match="a redirect, which tether never follows"):
        probe.prove(application(healthy_seconds=0, deadline_seconds=3), hooks.Runner(), "v2", None, 1000.0,
                    lambda p: None)
