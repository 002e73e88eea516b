"""Upgrades keep every node's state: a node set up by an earlier release, reconciled by this code.

For each release in FROM, its source is materialised with `git archive` into a temporary directory and run
with this venv's Python (the dependencies are the same), as root: it deploys applications in every state an
operator leaves them (hooks, persistent data from a `.mtree`, a failed deployment with its mark, a pinned
rollback, a suspension, a `tether deploy` override, content digests). Then this code runs a one-shot
`tether reconcile` and a daemon's first pass over the same state: nothing is redeployed, no hook runs again,
every mark, pin, override and suspension holds, and drift checks and new manifests still work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import support
from tests.test_daemon import Daemon, wait_until

# (commit, the entry point of its `tether` command): the release before the last wave, and the last release.
FROM = [("2470a03", "controller.cli:main"), ("0720c65", "controller.cli.main:main")]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="tether runs as root on a node; the upgrade test too")



def counting_kind(counter: Path) -> dict[str, Any]:
    """A kind whose every hook appends a line to `counter` (hooks get a clean environment: the path is in the text)."""
    return {"apiVersion": "tether/v1", "kind": "ApplicationKind", "metadata": {"name": "counted"},
            "spec": {"hooks": {phase: f'#!/bin/sh\necho "$APPLICATION_NAME {phase} $DEPLOYMENT_NAME" >> {counter}\n'
                               for phase in ("beforeDeploy", "afterDeploy", "beforeActivate", "afterActivate")}}}

MTREE = "/set type=dir mode=0755\n.\n\tdata\n\t\tcounter.txt type=file mode=0644\n\t\t..\n\t..\n\tlogs\n\t..\n..\n"
NAMES = ("web", "broken", "pinned", "paused", "imperative")


def old_source(commit: str, into: Path) -> Path:
    """The source of `commit`, as `git archive` gives it, with `controller/schemas` as the package installs it."""
    found = subprocess.run(["git", "-C", str(support.REPO), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        pytest.fail(f"the upgrade test needs the release {commit}, which is not in the clone {support.REPO}: fetch "
                    "the full history (CI: a checkout with fetch-depth 0)")
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(support.REPO), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "x", "-C", str(into)], input=archive.stdout, check=True)
    if not (into / "controller" / "schemas").exists():
        (into / "controller" / "schemas").symlink_to("../schemas")
    return into


class Versions:
    """`tether` of an old release (from its source directory) and of this checkout, on one node."""

    def __init__(self, node: support.Node, source: Path, entry: str) -> None:
        self.node, self.source, self.entry = node, source, entry

    def env(self, old: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "PYTHON"))}
        if old:
            env["PYTHONPATH"] = str(self.source)
        return env

    def old(self, *args: str) -> subprocess.CompletedProcess[str]:
        module, function = self.entry.split(":")
        code = f"import sys, {module}; sys.argv[0] = 'tether'; sys.exit({module}.{function}())"
        return self._run([sys.executable, "-c", code, *args], old=True)

    def new(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, "-m", "controller", *args], old=False)

    def _run(self, command: list[str], old: bool) -> subprocess.CompletedProcess[str]:
        if len(command) > 3 and command[3] not in ("schema", "--version"):
            command += ["--manifests", str(self.node.manifests), "--state-dir", str(self.node.state)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=self.env(old),
                              cwd=self.node.root)

    def where(self, old: bool) -> str:
        """The `controller` package that a run imports."""
        return subprocess.run([sys.executable, "-c", "import controller; print(controller.__file__)"],
                              capture_output=True, text=True, check=True, env=self.env(old),
                              cwd=self.node.root).stdout.strip()


def ok(run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert run.returncode == 0, f"{run.args[3:5]} exited {run.returncode}: {run.stdout}{run.stderr}"
    return run


def manifest(node: support.Node, http: support.HttpServer, name: str, deployment: str | None,
             **spec: Any) -> None:
    fields: dict[str, Any] = {"kind": "counted",
                              "source": {"url": http.url(f"/{name}/{{deployment}}.tar.gz")}, **spec}
    if deployment is not None:
        fields["deployment"] = deployment
    support.write_manifest(node.manifests, support.application(name, node.apps / name, **fields))


def release(http: support.HttpServer, name: str, deployment: str) -> None:
    members = [support.Member(".mtree", MTREE.encode()), support.Member("index.html", f"{name} {deployment}\n".encode()),
               support.Member("data/", type="dir"), support.Member("data/counter.txt", b"0\n")]
    http.routes[f"/{name}/{deployment}.tar.gz"] = [support.Reply(body=support.tar_bytes(members))]


def by_name(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in documents}


def ready(document: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in document["conditions"] if c["type"] == "Ready")


def identities(node: support.Node) -> dict[str, Any]:
    """What an upgrade must not change: every deployment directory (inode, mtime), `current`, persistent data,
    the hooks' counter file."""
    found: dict[str, Any] = {"counter": (node.root / "counter").read_text(),
                             "data": (node.apps / "web" / "persistent-data" / "data" / "counter.txt").read_text()}
    for name in NAMES:
        root = node.apps / name
        found[f"{name}/current"] = os.readlink(root / "current")
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and entry.name != ".tether":
                for dirpath, dirnames, filenames in os.walk(entry.path):
                    for leaf in sorted(dirnames + filenames):
                        st = os.lstat(os.path.join(dirpath, leaf))
                        found[os.path.relpath(os.path.join(dirpath, leaf), node.apps)] = (st.st_ino, st.st_mtime_ns)
                st = os.lstat(entry.path)
                found[f"{name}/{entry.name}"] = (st.st_ino, st.st_mtime_ns)
    return found


def set_up_with_the_old_release(versions: Versions, node: support.Node, http: support.HttpServer) -> None:
    support.write_manifest(node.manifests, counting_kind(node.root / "counter"))
    for name in NAMES:
        for deployment in ("v1", "v2", "v3"):
            release(http, name, deployment)
    manifest(node, http, "web", "v1")
    manifest(node, http, "broken", "v1", hooks={"afterActivate": '#!/bin/sh\ntest "$DEPLOYMENT_NAME" != v2\n'})
    manifest(node, http, "pinned", "v1")
    manifest(node, http, "paused", "v1")
    manifest(node, http, "imperative", "v1")
    for name in NAMES:  # one at a time: hook scripts written while another worker forks can be "Text file busy"
        ok(versions.old("reconcile", name))
    for name in ("web", "broken", "pinned"):
        manifest(node, http, name, "v2", **({"hooks": {"afterActivate": '#!/bin/sh\ntest "$DEPLOYMENT_NAME" != v2\n'}}
                                            if name == "broken" else {}))
    ok(versions.old("suspend", "paused"))
    manifest(node, http, "paused", "v2")  # suspended: the old release does not deploy it
    ok(versions.old("deploy", "imperative", "--deployment", "v2"))
    assert versions.old("reconcile", "broken").returncode == 1  # its v2 fails and rolls back
    for name in ("web", "pinned", "paused"):
        ok(versions.old("reconcile", name))
    ok(versions.old("rollback", "pinned"))
    # What the old release says it left, by its own `tether status`.
    old = by_name(json.loads(ok(versions.old("status", "--json")).stdout))
    assert {n: old[n]["current"] for n in NAMES} == {"web": "v2", "broken": "v1", "pinned": "v1", "paused": "v1",
                                                     "imperative": "v2"}, old
    assert {d["name"]: d["state"] for d in old["broken"]["deployments"]}["v2"] == "failed"
    assert ready(old["paused"])["reason"] == "Suspended"
    assert old["pinned"]["desired"] == "v1" and old["imperative"]["desired"] == "v2"
    assert "fail" in (old["broken"]["lastError"] or ""), old["broken"]
    for deployment in ("v1", "v2"):  # persistent data from the .mtree, linked into each deployment
        link = node.apps / "web" / deployment / "data" / "counter.txt"
        assert os.readlink(link) == str(node.apps / "web" / "persistent-data" / "data" / "counter.txt")
    (node.apps / "web" / "persistent-data" / "data" / "counter.txt").write_text("41\n")  # what the application wrote


def check_state_is_kept(versions: Versions, node: support.Node, before: dict[str, Any]) -> None:
    assert identities(node) == before, "the upgrade redeployed, ran a hook again or moved `current`"
    documents = by_name(json.loads(ok(versions.new("status", "--json")).stdout))
    assert {n: documents[n]["current"] for n in NAMES} == {"web": "v2", "broken": "v1", "pinned": "v1",
                                                           "paused": "v1", "imperative": "v2"}
    assert {n: documents[n]["desired"] for n in NAMES} == {"web": "v2", "broken": "v2", "pinned": "v1",
                                                           "paused": "v2", "imperative": "v2"}
    assert ready(documents["paused"])["reason"] == "Suspended"
    assert all(ready(documents[n])["status"] == "True" for n in ("web", "pinned", "imperative")), documents
    assert ready(documents["broken"])["status"] == "False" and "retry" in documents["broken"]["lastError"]
    listed = {d["name"]: d for d in json.loads(ok(versions.new("list", "broken", "--json")).stdout)}
    assert listed["v2"]["state"] == "failed" and listed["v1"]["active"] and not listed["v2"]["active"]
    assert not any(documents[n].get("drift", {}).get("content") for n in ("web", "pinned", "imperative")), documents


@pytest.fixture(params=FROM, ids=[commit for commit, _ in FROM])
def upgraded(request: pytest.FixtureRequest, tmp_path: Path, http: support.HttpServer) -> Iterator[Versions]:
    commit, entry = request.param
    node = support.make_node(tmp_path / "node")
    versions = Versions(node, old_source(commit, tmp_path / "old"), entry)
    assert versions.where(old=True) == str(tmp_path / "old" / "controller" / "__init__.py")
    assert versions.where(old=False) == str(support.REPO / "controller" / "__init__.py")
    (node.root / "counter").write_text("")
    set_up_with_the_old_release(versions, node, http)
    yield versions


def test_an_upgrade_keeps_every_deployment_mark_pin_override_and_suspension(
        upgraded: Versions, http: support.HttpServer) -> None:
    versions, node = upgraded, upgraded.node
    before = identities(node)
    assert before["counter"].count(" afterActivate ") == 11, before["counter"]  # 5 v1, 4 v2, broken v1 again, pinned v1
    reconciled = by_name(json.loads(versions.new("reconcile", "--json").stdout))
    assert {n: reconciled[n]["converged"] for n in NAMES} == {"web": True, "broken": False, "pinned": True,
                                                              "paused": False, "imperative": True}, reconciled
    check_state_is_kept(versions, node, before)

    daemon = Daemon(node, ("--content-check-interval", "3600"), versions.env(old=False))
    try:
        wait_until(lambda: all(daemon.passes(n) >= 1 for n in NAMES), 60,
                   message=lambda: f"the daemon's first pass did not end: {daemon.log()}")
        check_state_is_kept(versions, node, before)
        # Drift checks still work on what the old release recorded...
        assert not json.loads(ok(versions.new("verify", "web", "--json")).stdout)["drifted"]
        (node.apps / "web" / "v2" / "index.html").write_text("changed after the upgrade\n")
        verified = versions.new("verify", "web", "--json")
        assert verified.returncode == 1, verified.stdout
        assert json.loads(verified.stdout)["drift"]["content"]["changed"] == ["index.html"], verified.stdout
        # ...and a manifest change still deploys, with its hooks.
        manifest(node, http, "pinned", "v3")
        wait_until(lambda: "pinned afterActivate v3" in (node.root / "counter").read_text(), 30,
                   message=lambda: f"pinned did not take v3: {daemon.log()}")
        assert os.readlink(node.apps / "pinned" / "current") == str(node.apps / "pinned" / "v3")
    finally:
        daemon.stop()
