"""A pass that fails in a way tether does not expect (a bug, an OSError nobody foresaw) fails like any other:
its status says so, the metrics count it, it is retried on the back-off, and the other applications and the
workers go on. The faults go in through the engine's side-effect parameters (tests/faults.py) and real files."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests import test_daemon as daemons

BACKOFF = 0.3  # seconds: the back-off's base in these daemons (its cap is four times that)
WORKERS = 2


def gated(http: support.HttpServer) -> dict[str, Any]:
    """spec of "gating": v2 through a rollout whose second wave (this node's) is due and waits on the gate."""
    return {"deployment": "v2", "rollout": {
        "from": "v1", "startedAt": "2020-01-01T00:00:00Z", "gate": {"prometheus": http.url(""), "query": "gating"},
        "waves": [{"selector": {"canary": "true"}}, {"percent": 100}]}}


class FaultyDaemon(daemons.Daemon):
    """A real `tether run` (tests/faults.py) whose passes raise while the files in `faults` say so."""

    def __init__(self, node: support.Node, faults: Path) -> None:
        self.node = node
        command = [sys.executable, "-m", "tests.faults", str(faults), str(BACKOFF), "run",
                   "--manifests", str(node.manifests), "--state-dir", str(node.state),
                   "--metrics-address", "127.0.0.1:0", "--resync-interval", "3600", "--workers", str(WORKERS)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "WATCHDOG_"))}
        env["PYTHONPATH"] = os.pathsep.join([str(support.REPO), *filter(None, [env.get("PYTHONPATH")])])
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=node.root)
        self.pid = self.process.pid
        assert self.process.stderr is not None
        self.stderr = support.LogLines(self.process.stderr)
        self.mark, self.log, self.wait_for_log = self.stderr.mark, self.stderr.text, self.stderr.wait_for
        self._port: int | None = None


@pytest.fixture
def faults(node: support.Node) -> Path:
    directory = node.root / "faults"
    directory.mkdir()
    return directory


def raised(faults: Path, name: str, point: str, at_least: int) -> list[float]:
    """Wait until the fault at `point` of `name` was raised `at_least` times; when it was (monotonic)."""
    file = faults / f"{name}.{point}.raised"

    def times() -> list[float]:
        found = [float(t) for t in file.read_text().split()] if file.exists() else []
        return found if len(found) >= at_least else []

    return daemons.wait_until(times, message=f"{name} was not retried {at_least} times")


def says_unexpected(node: support.Node, name: str, error: str) -> dict[str, object]:
    """The status of `name` once it says that its pass failed with an unexpected `error`, retried."""
    def failed() -> dict[str, object] | None:
        document = daemons.read_status(node, name)
        ready, stalled = daemons.condition(document), daemons.condition(document, "Stalled")
        return document if (document and ready.get("status") == "False" and ready.get("reason") == "Failed"
                            and stalled.get("reason") == "UnexpectedError" and document.get("nextAttemptAt")
                            and daemons.condition(document, "Reconciling").get("status") == "False"
                            and f"unexpected {error}: " in ready["message"] and "injected at" in ready["message"]
                            ) else None
    document = daemons.wait_until(failed, message=lambda: f"{name}: {daemons.read_status(node, name)}")
    assert "a bug in tether" in str(document["lastError"]) and "traceback" in str(document["lastError"])
    return document


def test_unexpected_exceptions_in_a_pass_fail_it_with_back_off_while_the_others_and_the_workers_go_on(
        node: support.Node, http: support.HttpServer, faults: Path) -> None:
    names = ("good", "fetching", "activating", "writing", "gating")
    for name in names:
        daemons.serve(http, name, "v1", "v2")
        spec = gated(http) if name == "gating" else {"deployment": "v1"}
        daemons.put(node.manifests, daemons.app_manifest(node, http, name, **spec))
    http.serve("/api/v1/query", json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}})
               .encode())  # an open gate, once asking it no longer raises
    (faults / "gating.gate").write_text("TypeError")  # in the daemon: asking the gate, before the engine
    (faults / "fetching.fetch").write_text("RuntimeError")  # in the engine: downloading and extracting
    (faults / "activating.afterActivate").write_text("KeyError")  # in the engine: after current switched
    (node.state / "status" / "writing.json").mkdir(parents=True)  # in the daemon: IsADirectoryError, an OSError
    daemon = FaultyDaemon(node, faults)
    try:
        daemon.wait_for_log(r"tether is running")
        daemons.wait_converged(node, "good", "v1")

        for name, point, error in (("fetching", "fetch", "RuntimeError"), ("activating", "afterActivate", "KeyError"),
                                   ("gating", "gate", "TypeError")):
            times = raised(faults, name, point, at_least=3)
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            assert min(gaps) >= BACKOFF / 2, f"{name} was retried in a tight loop: {gaps}"
            says_unexpected(node, name, error)
        assert daemons.current(node.apps / "fetching") is None
        assert daemons.current(node.apps / "activating") == "v1", "the switch before the fault stays"
        daemons.wait_until(lambda: daemon.samples("tether_reconcile_total", name="writing", result="failure") >= 3,
                           message="the pass of writing is not retried")
        assert daemons.current(node.apps / "gating") is None
        for name in ("fetching", "activating", "writing", "gating"):
            assert daemon.samples("tether_reconcile_total", name=name, result="failure") >= 2
            assert daemon.samples("tether_application_ready", name=name) == 0
            assert f'tether_next_attempt_timestamp_seconds{{name="{name}"}}' in daemon.scrape()
        assert daemon.samples("tether_artifact_fetch_failures_total", name="fetching", reason="RuntimeError") >= 2
        assert daemon.samples("tether_reconcile_total", name="good", result="failure") == 0
        daemons.put(node.manifests, daemons.app_manifest(node, http, "good", deployment="v2"))
        daemons.wait_converged(node, "good", "v2")  # while the others still fail
        text = daemon.log()
        assert "The pass of writing failed unexpectedly" in text and "IsADirectoryError" in text
        assert "Traceback" in text and "KeyError: 'injected at afterActivate of activating'" in text
        assert "The pass of gating failed unexpectedly" in text and "TypeError: injected at gate of gating" in text

        for fault in ("fetching.fetch", "activating.afterActivate", "gating.gate"):
            (faults / fault).unlink()
        (node.state / "status" / "writing.json").rmdir()
        for name in names:
            daemons.wait_converged(node, name, "v2" if name in ("good", "gating") else "v1")
        for name in ("fetching", "activating", "writing", "gating"):
            assert daemons.condition(daemons.status_of(node, name), "Stalled")["reason"] == "NoError"

        # Every worker is still there: WORKERS passes run at once, each waiting in a hook for the others.
        started, release = node.root / "started", node.root / "release"
        started.mkdir()
        busy = names[1:1 + WORKERS]
        for name in busy:
            hook = (f"#!/bin/sh\ntouch {started / name}\ni=0\nwhile [ ! -e {release} ] && [ $i -lt 600 ]; do "
                    "sleep 0.1; i=$((i + 1)); done\n")
            daemons.put(node.manifests, daemons.app_manifest(node, http, name, deployment="v2",
                                                             hooks={"beforeDeploy": hook}))
        daemons.wait_until(lambda: len(os.listdir(started)) == WORKERS,
                           message=lambda: f"only {os.listdir(started)} of {busy} run at once")
        release.touch()
        for name in busy:
            daemons.wait_converged(node, name, "v2")
    finally:
        daemon.stop()


def test_an_application_whose_pass_raises_fails_alone_in_tether_reconcile(
        node: support.Node, http: support.HttpServer) -> None:
    for name in ("good", "writing", "locking"):
        daemons.serve(http, name, "v1")
        daemons.put(node.manifests, daemons.app_manifest(node, http, name))
    (node.state / "status" / "writing.json").mkdir(parents=True)  # the status write: IsADirectoryError
    (node.state / "locks" / "locking.lock").mkdir(parents=True)  # the lock: tether's own PermanentError

    run = node.tether("reconcile")

    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert "good: converged" in lines, run.stdout
    assert any(line.startswith("writing: failed: ") and "Is a directory" in line for line in lines), run.stdout
    assert any(line.startswith("locking: failed: ") and "lock file" in line for line in lines), run.stdout
    assert daemons.converged(node, "good", "v1")
    assert daemons.current(node.apps / "writing") == "v1", "the pass did its work; only the status write failed"

    again = node.tether("reconcile", "--json")
    assert again.returncode == 1, again.stderr
    outcomes = {entry["name"]: entry for entry in json.loads(again.stdout)}
    assert outcomes["good"] == {"name": "good", "converged": True, "error": None}
    assert not outcomes["writing"]["converged"] and "Is a directory" in outcomes["writing"]["error"]
    assert not outcomes["locking"]["converged"] and "lock file" in outcomes["locking"]["error"]

    (node.state / "status" / "writing.json").rmdir()
    refused = node.tether("reconcile")
    assert refused.returncode == 2, "tether's own refusal alone is invalid input, as it was"
    assert {"good: converged", "writing: converged"} <= set(refused.stdout.splitlines()), refused.stdout
    assert daemons.converged(node, "writing", "v1")
