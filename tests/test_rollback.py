"""A failing afterActivate hook rolls back, marks the deployment failed, and is not retried
until the desired state changes or `tether retry`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests import support

# The afterActivate hook fails for deployments named in FAIL_FOR, a file the test controls.
AFTER_ACTIVATE = """#!/bin/sh
echo "afterActivate $DEPLOYMENT_NAME previous=$PREVIOUS_DEPLOYMENT_NAME" >> "$APPLICATION_PATH/../runs.txt"
if grep -qx "$DEPLOYMENT_NAME" "$APPLICATION_PATH/../fail-for.txt"; then
  echo "the health check of $DEPLOYMENT_NAME failed" >&2
  exit 3
fi
"""


def manifest(node: support.Node, http: support.HttpServer, version: str, **spec: Any) -> Path:
    app = node.apps / "site"
    for v in ("1", "2", "3"):
        http.serve(f"/v{v}.tar.gz", support.tar_bytes(support.site(v)))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment=f"v{version}", source={"url": http.url("/{deployment}.tar.gz")},
        hooks={"afterActivate": AFTER_ACTIVATE}, **spec))
    return app


def runs(app: Path) -> list[str]:
    return (app.parent / "runs.txt").read_text().splitlines()


def status(node: support.Node) -> dict[str, Any]:
    return json.loads(node.tether("status", "site", "--json").stdout)


def failing_v2(node: support.Node, http: support.HttpServer) -> Path:
    app = manifest(node, http, "1")
    (app.parent / "fail-for.txt").write_text("v2\n")
    assert node.tether("reconcile").returncode == 0
    manifest(node, http, "2")
    return app


def test_a_failing_after_activate_switches_back_and_marks_the_deployment_failed(
        node: support.Node, http: support.HttpServer) -> None:
    app = failing_v2(node, http)

    run = node.tether("reconcile")

    assert run.returncode == 1
    assert os.readlink(app / "current") == str(app / "v1")
    assert runs(app) == ["afterActivate v1 previous=", "afterActivate v2 previous=v1", "afterActivate v1 previous=v2"]
    record = json.loads((app / ".tether" / "deployments" / "v2.json").read_text())
    assert record["state"] == "failed"
    state = status(node)
    assert "rolled back to v1" in state["lastError"] and "exited with status 3" in state["lastError"]
    failed = [r for r in state["lastHookRuns"] if r["outcome"] == "failure"]
    assert failed[0]["phase"] == "afterActivate" and failed[0]["exitCode"] == 3
    assert "the health check of v2 failed" in failed[0]["outputTail"]
    assert state["current"] == "v1" and state["previous"] is None


def test_the_failed_deployment_is_not_retried_by_the_next_pass(node: support.Node, http: support.HttpServer) -> None:
    app = failing_v2(node, http)
    node.tether("reconcile")

    again = node.tether("reconcile")

    assert again.returncode == 1
    assert "tether retry" in again.stdout + again.stderr
    assert runs(app).count("afterActivate v2 previous=v1") == 1
    assert os.readlink(app / "current") == str(app / "v1")
    conditions = {c["type"]: c for c in status(node)["conditions"]}
    assert conditions["Stalled"]["status"] == "True"


def test_tether_retry_tries_the_failed_deployment_again(node: support.Node, http: support.HttpServer) -> None:
    app = failing_v2(node, http)
    node.tether("reconcile")
    (app.parent / "fail-for.txt").write_text("")

    cleared = node.tether("retry", "site")
    run = node.tether("reconcile")

    assert cleared.returncode == 0 and "v2" in cleared.stdout
    assert run.returncode == 0, run.stderr
    assert runs(app).count("afterActivate v2 previous=v1") == 2
    assert os.readlink(app / "current") == str(app / "v2")


def test_a_new_desired_deployment_is_not_blocked_by_a_failed_one(node: support.Node, http: support.HttpServer) -> None:
    app = failing_v2(node, http)
    node.tether("reconcile")
    manifest(node, http, "3")

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v3")


def test_a_changed_manifest_retries_the_failed_deployment(node: support.Node, http: support.HttpServer) -> None:
    app = failing_v2(node, http)
    node.tether("reconcile")
    (app.parent / "fail-for.txt").write_text("")
    manifest(node, http, "2", environment="staging")

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v2")


def test_without_rollback_current_stays_on_the_new_deployment(node: support.Node, http: support.HttpServer) -> None:
    app = manifest(node, http, "1", rollbackOnFailure=False)
    (app.parent / "fail-for.txt").write_text("v2\n")
    assert node.tether("reconcile").returncode == 0
    manifest(node, http, "2", rollbackOnFailure=False)

    run = node.tether("reconcile")

    assert run.returncode == 1
    assert os.readlink(app / "current") == str(app / "v2")
    assert runs(app)[-1] == "afterActivate v2 previous=v1"


@pytest.mark.parametrize("step", ["switched", "rolled-back"])
def test_a_kill_during_a_failing_activation_still_ends_rolled_back(
        step: str, node: support.Node, http: support.HttpServer) -> None:
    app = failing_v2(node, http)

    killed = node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": step})
    assert killed.returncode == -signal.SIGKILL
    active = Path(os.readlink(app / "current")).name
    record = json.loads((app / ".tether" / "deployments" / f"{active}.json").read_text())
    assert record["state"] == "complete", "current points to a deployment that is not complete"
    node.tether("reconcile")

    assert os.readlink(app / "current") == str(app / "v1")
    assert json.loads((app / ".tether" / "deployments" / "v2.json").read_text())["state"] == "failed"
