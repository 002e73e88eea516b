"""A rollback survives a SIGKILL at each of its steps: the failed deployment is never activated again, its hooks run
no more often than without the kill (+ the one the kill interrupted), and `previous` ends as without the kill.

d0, d1 are active in turn; d2's afterActivate fails (or its health check does), so tether rolls back to d1. Without a
kill that leaves `.tether/activation.json` at {"active": "d1", "previous": "d0"}; `tether rollback` then goes to d0.
The kill is the test-only seam TETHER_TEST_CRASH_AT (tests/test_crash_safety.py)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests import support

# Every hook appends "<phase> <deployment> previous=<previous>" beside the application path; afterActivate fails
# for the deployments named in fail-for.txt.
HOOK = 'echo "$HOOK_NAME $DEPLOYMENT_NAME previous=$PREVIOUS_DEPLOYMENT_NAME" >> "$APPLICATION_PATH/../runs.txt"\n'
FAILING = HOOK + 'if grep -qx "$DEPLOYMENT_NAME" "$APPLICATION_PATH/../fail-for.txt"; then exit 3; fi\n'
# In the order a rollback takes them: the hook failed; d2 marked failed; the new link made; `current` back on d1;
# activation.json restored (then d1's afterActivate runs).
ROLLBACK_STEPS = ["activation-failed", "marked-failed", "back-linked", "switched-back", "rolled-back"]


def manifest(node: support.Node, http: support.HttpServer, version: str, **spec: Any) -> Path:
    app = node.apps / "site"
    http.serve(f"/{version}.tar.gz", support.tar_bytes(support.site(version)))
    hooks = {"beforeActivate": HOOK, "afterActivate": FAILING}
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment=version, retention={"keep": 5}, source={"url": http.url("/{deployment}.tar.gz")},
        hooks=hooks, **spec))
    return app


def d0_d1_then_failing_d2(node: support.Node, http: support.HttpServer) -> Path:
    app = manifest(node, http, "d0")
    (app.parent / "fail-for.txt").write_text("d2\n")
    assert node.tether("reconcile").returncode == 0
    manifest(node, http, "d1")
    assert node.tether("reconcile").returncode == 0
    manifest(node, http, "d2")
    return app


def runs(app: Path) -> list[str]:
    path = app.parent / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def activation(app: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((app / ".tether" / "activation.json").read_text())
    return {k: loaded.get(k) for k in ("active", "previous")}


def record(app: Path, deployment: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((app / ".tether" / "deployments" / f"{deployment}.json").read_text())
    return loaded


def current(app: Path) -> str:
    return Path(os.readlink(app / "current")).name


def assert_rolled_back_to_d1(node: support.Node, app: Path, before: int, after_activate_d2: int) -> None:
    """What an uninterrupted rollback of d2 leaves, and that nothing brings d2 back."""
    assert current(app) == "d1"
    assert activation(app) == {"active": "d1", "previous": "d0"}, "previous is not what a run without a kill leaves"
    failed = record(app, "d2")
    assert failed["state"] == "failed" and "rollback" not in failed and "activationPending" not in failed, failed
    tried = runs(app)[before:]
    assert tried.count("beforeActivate d2 previous=d1") == 1, f"the failed d2 was activated again: {tried}"
    assert tried.count("afterActivate d2 previous=d1") == after_activate_d2, tried
    assert tried.count("afterActivate d1 previous=d2") == 1, f"d1's afterActivate after the rollback: {tried}"
    assert [r for r in tried if r.split()[1] == "d0"] == []

    again = node.tether("reconcile")
    assert again.returncode == 1 and "tether retry" in again.stdout + again.stderr, again.stdout + again.stderr
    assert runs(app)[before + len(tried):] == [] and current(app) == "d1"

    back = node.tether("rollback", "site")
    assert back.returncode == 0, back.stdout + back.stderr
    assert current(app) == "d0"
    assert [r for r in runs(app)[before + len(tried):] if r.split()[1] == "d2"] == []


def test_an_uninterrupted_rollback_keeps_d0_as_previous(node: support.Node, http: support.HttpServer) -> None:
    app = d0_d1_then_failing_d2(node, http)
    before = len(runs(app))

    run = node.tether("reconcile")

    assert run.returncode == 1 and "rolled back to d1" in run.stdout + run.stderr
    assert_rolled_back_to_d1(node, app, before, after_activate_d2=1)


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_a_kill_at_any_step_of_a_rollback_never_activates_the_failed_deployment_again_and_keeps_previous(
        step: str, node: support.Node, http: support.HttpServer) -> None:
    app = d0_d1_then_failing_d2(node, http)
    before = len(runs(app))

    killed = node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": step})
    assert killed.returncode == -signal.SIGKILL, f"the step {step!r} was never reached: {killed.stderr}"
    assert activation(app)["previous"] != activation(app)["active"]
    assert record(app, current(app))["state"] == "complete", "current points to a deployment that is not complete"

    recovery = node.tether("reconcile")

    assert recovery.returncode == 1, recovery.stdout + recovery.stderr
    # Killed after d2's afterActivate failed but before that was recorded, the next pass runs it again: the one
    # interrupted run. From the moment d2 is marked failed on, never again.
    assert_rolled_back_to_d1(node, app, before, after_activate_d2=2 if step == "activation-failed" else 1)


def test_a_kill_after_current_moved_back_leaves_d2_marked_and_plans_to_finish_the_rollback(
        node: support.Node, http: support.HttpServer) -> None:
    app = d0_d1_then_failing_d2(node, http)
    assert node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "switched-back"}).returncode == -signal.SIGKILL

    assert current(app) == "d1"
    marked = record(app, "d2")  # complete (it was current a moment ago), but with where its rollback goes
    assert marked["rollback"] == {"to": "d1", "previous": "d0"} and "failedGeneration" in marked, \
        "the failure was not durable before current moved back"
    steps = json.loads(node.tether("plan", "--json").stdout)[0]["steps"]
    assert [(s["action"], s["deployment"]) for s in steps] == [("finish-rollback", "d2"), ("blocked", "d2")], steps


def test_a_record_of_an_older_version_pending_without_a_rollback_field_rolls_back_as_before(
        node: support.Node, http: support.HttpServer) -> None:
    # A tether of an earlier version was killed during d2's afterActivate: its pending record has no `rollback`.
    app = d0_d1_then_failing_d2(node, http)
    assert node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "activation-failed"}).returncode == -signal.SIGKILL
    old = {k: v for k, v in record(app, "d2").items() if k != "rollback"}
    (app / ".tether" / "deployments" / "d2.json").write_text(json.dumps(old))

    assert node.tether("reconcile").returncode == 1

    assert current(app) == "d1" and record(app, "d2")["state"] == "failed"
    assert activation(app) == {"active": "d1", "previous": None}


# ---------------------------------------------------------------- a deployment replaced while it probes


def check(http: support.HttpServer, version: str, deadline: float) -> dict[str, Any]:
    return {"http": {"url": http.url(f"/health/{version}")}, "intervalSeconds": 0.1, "timeoutSeconds": 1,
            "healthySeconds": 0.3, "deadlineSeconds": deadline}


def test_a_deployment_replaced_while_it_probes_is_no_rollback_target_and_is_not_left_pending(
        node: support.Node, http: support.HttpServer) -> None:
    (node.apps / "fail-for.txt").write_text("")
    http.serve("/health/d0", b"ok")
    http.serve("/health/d1", b"ok")
    http.serve("/health/d2", support.Reply(503))
    http.serve("/health/d3", support.Reply(503))
    app = manifest(node, http, "d0", healthCheck=check(http, "d0", 5))
    assert node.tether("reconcile").returncode == 0
    manifest(node, http, "d1", healthCheck=check(http, "d1", 5))
    assert node.tether("reconcile").returncode == 0
    manifest(node, http, "d2", healthCheck=check(http, "d2", 60))
    killed = node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "probed"})  # d2 probes, never proved healthy
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert current(app) == "d2" and record(app, "d2")["activationPending"] is True
    manifest(node, http, "d3", healthCheck=check(http, "d3", 1))

    run = node.tether("reconcile")

    assert run.returncode == 1, run.stdout + run.stderr
    assert current(app) == "d1", "rolled back to a deployment that never proved healthy"
    assert activation(app) == {"active": "d1", "previous": "d0"}
    assert record(app, "d3")["state"] == "failed"
    assert "activationPending" not in record(app, "d2") and "probingSince" not in record(app, "d2")
    assert runs(app)[-1] == "afterActivate d1 previous=d3"
    http.serve("/health/d3", b"ok")  # the manifest's check URL, which probes whatever `tether rollback` activates
    assert node.tether("rollback", "site").returncode == 0 and current(app) == "d0"
