"""A real `tether reconcile` is killed with SIGKILL at every named step; the next run repairs.

The seam is the test-only environment variable TETHER_TEST_CRASH_AT: when the
engine reports the named step, the process sends itself SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests import support

STEPS = ["recorded", "created", "extracting", "extracted", "linked-data", "completed", "recorded-previous",
         "linked", "switched", "pruning", "pruned"]
# Every hook appends "<phase> <deployment>" to this file, outside the application path.
HOOK = 'echo "$HOOK_NAME $DEPLOYMENT_NAME" >> "$APPLICATION_PATH/../hook-runs.txt"\n'


def hook_runs(app: Path) -> list[str]:
    runs = app.parent / "hook-runs.txt"
    return runs.read_text().splitlines() if runs.exists() else []


def outside(node: support.Node, app: Path) -> dict[str, tuple[str, str]]:
    """Everything below the sandbox except the application path and the state dir."""
    return {k: v for k, v in support.snapshot(node.root).items()
            if not k.startswith((str(app.relative_to(node.root)), "state", "apps/hook-runs.txt"))}


def assert_invariants(app: Path) -> None:
    current = app / "current"
    if os.path.lexists(current):
        target = Path(os.readlink(current))
        assert target.parent == app, f"current points outside the application: {target}"
        record = json.loads((app / ".tether" / "deployments" / f"{target.name}.json").read_text())
        assert record["state"] == "complete", f"current points to a {record['state']} deployment"
        assert (target / "index.html").is_file(), "current points to a deployment without its content"


def prepare(node: support.Node, http: support.HttpServer) -> Path:
    app = node.apps / "site"
    for version in ("0", "1", "2"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    for version in ("0", "1"):
        deploy(node, http, app, version)
        assert node.tether("reconcile").returncode == 0
    deploy(node, http, app, "2")
    return app


def deploy(node: support.Node, http: support.HttpServer, app: Path, version: str) -> None:
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment=f"v{version}", retention={"keep": 1}, source={"url": http.url("/{deployment}.tar.gz")},
        hooks={phase: HOOK for phase in ("beforeDeploy", "afterDeploy", "beforeActivate", "afterActivate")}))


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_any_step_leaves_a_safe_tree_that_the_next_run_converges(
        step: str, node: support.Node, http: support.HttpServer) -> None:
    app = prepare(node, http)
    before_outside = outside(node, app)

    killed = node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": step})

    assert killed.returncode == -signal.SIGKILL, f"the step {step!r} was never reached: {killed.stderr}"
    assert_invariants(app)
    again = node.tether("reconcile")
    assert again.returncode == 0, again.stderr
    assert_invariants(app)
    assert os.readlink(app / "current") == str(app / "v2")
    assert (app / "current" / "index.html").read_text() == "<h1>version 2</h1>\n"
    assert sorted(p.name for p in app.iterdir()) == [".tether", "current", "v1", "v2"]
    assert os.listdir(app / ".tether" / "staging") == []
    assert sorted(os.listdir(app / ".tether" / "deployments")) == ["v1.json", "v2.json"]
    assert json.loads(node.tether("status", "site", "--json").stdout)["previous"] == "v1"
    assert "nothing to do" in node.tether("plan").stdout
    assert outside(node, app) == before_outside
    assert hook_runs(app).count("afterActivate v2") == 1, "afterActivate must run exactly once, even across a kill"
    assert hook_runs(app)[-1] == "afterActivate v2"


def test_a_kill_while_cleaning_up_an_interrupted_pass_is_safe_too(node: support.Node, http: support.HttpServer) -> None:
    app = prepare(node, http)
    assert node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "extracting"}).returncode == -signal.SIGKILL
    assert os.listdir(app / ".tether" / "staging"), "the interrupted extraction left no staging directory"

    assert node.tether("reconcile", env={"TETHER_TEST_CRASH_AT": "cleaned"}).returncode == -signal.SIGKILL
    assert_invariants(app)

    assert node.tether("reconcile").returncode == 0
    assert os.readlink(app / "current") == str(app / "v2")
    assert os.listdir(app / ".tether" / "staging") == []


def test_the_files_a_killed_write_or_hook_left_in_the_bookkeeping_are_removed_by_the_next_pass(
        node: support.Node, http: support.HttpServer) -> None:
    # atomic_write's temporary file before its rename, and an inline hook's script, are all a SIGKILL leaves
    # there; nothing else ever removes them.
    app = prepare(node, http)
    assert node.tether("reconcile").returncode == 0
    meta = app / ".tether"
    left = [meta / ".tmp-k1ll3d", meta / "deployments" / ".tmp-abc123", meta / "digests" / ".tmp-def456",
            meta / ".hook-afterActivate-x1y2z3"]
    for path in left:
        path.write_text("half written\n")
    kept = meta / "deployments" / "notes.txt"  # not a name tether makes: left alone
    kept.write_text("an operator's\n")
    runs = hook_runs(app)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stderr
    assert [p for p in left if os.path.lexists(p)] == []
    assert kept.exists() and os.readlink(app / "current") == str(app / "v2") and hook_runs(app) == runs
    assert_invariants(app)
