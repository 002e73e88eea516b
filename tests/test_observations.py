"""How often one pass reads an application's tree (`records.observe`), measured, not mocked.

A pass observes the tree once at its start and threads that snapshot through its steps; it reads
the tree again only after hooks ran (a hook can change the tree). The daemon's drift checks use
the pass's snapshots. The real `observe` does the work here; the wrapper only counts the calls.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from controller.daemon import loop
from controller.engine import reconciling
from controller.tree import records
from tests import support

HOOKS = {phase: "#!/bin/sh\ntrue\n" for phase in ("beforeDeploy", "afterDeploy", "beforeActivate", "afterActivate")}


@dataclasses.dataclass
class Counter:
    calls: int = 0

    def take(self) -> int:
        calls, self.calls = self.calls, 0
        return calls


@pytest.fixture
def observations(monkeypatch: pytest.MonkeyPatch) -> Counter:
    counter, real = Counter(), records.observe

    def counting(path: str) -> records.Observed:
        counter.calls += 1
        return real(path)

    monkeypatch.setattr(records, "observe", counting)
    return counter


def daemon(node: support.Node, http: support.HttpServer, app: Path, deployment: str) -> loop.Daemon:
    http.serve(f"/{deployment}.tar.gz", support.tar_bytes(support.site(deployment)))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment=deployment, source={"url": http.url("/{deployment}.tar.gz")}, hooks=HOOKS))
    runner = loop.Daemon(loop.Config(str(node.manifests), str(node.state)), reconciling.Engine(str(node.state)))
    runner.scan(everything=True)
    return runner


def test_a_no_op_pass_observes_the_tree_once(node: support.Node, http: support.HttpServer,
                                             observations: Counter) -> None:
    app = node.apps / "site"
    runner = daemon(node, http, app, "v1")
    runner.process("site")
    assert runner.statuses["site"]["current"] == "v1"
    observations.take()

    result = runner.engine.reconcile(runner.apps["site"])
    assert result.ok and not result.hook_runs
    assert observations.take() == 1, "a no-op pass of the engine"

    runner.process("site")
    assert runner.statuses["site"]["current"] == "v1"
    assert observations.take() == 1, "a no-op pass of the daemon, drift checks included"


def test_a_deploy_pass_observes_the_tree_again_only_after_hooks_ran(
        node: support.Node, http: support.HttpServer, observations: Counter) -> None:
    app = node.apps / "site"
    daemon(node, http, app, "v1").process("site")
    runner = daemon(node, http, app, "v2")
    observations.take()

    runner.process("site")
    assert runner.statuses["site"]["current"] == "v2"
    assert len(runner.statuses["site"]["deployments"]) == 2
    assert observations.take() == 3, "a deploy pass of the daemon: once, after the deploy and the activate hooks"

    result = runner.engine.reconcile(dataclasses.replace(runner.apps["site"], deployment="v1"))
    assert result.ok and result.observed.current == "v1" and len(result.hook_runs) == 2
    assert observations.take() == 2, "an activate pass of the engine: once, after the activate hooks"
