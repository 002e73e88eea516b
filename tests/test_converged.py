"""A pass that finds nothing changed since its last no-op pass (controller/daemon/converged.py), and every
kind of change that must make the next pass a full one (design sections 6, 7 and 9).

The Daemon object runs against a real tree deployed from a real HTTP server; the changes are made the way
an operator or a command makes them: the real `tether` command line, renames, links, edits in place. The
fingerprint's racy margin (two seconds) is what keeps a change within one tick of the filesystem's clock
from looking old; most tests here give the daemon a clock ten seconds ahead, so that they need not wait
two seconds for the tree to age, and one test checks the margin with the real clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller import formats, fsutil
from controller.daemon import converged, loop, passes
from controller.engine import reconciling
from controller.tree import fingerprint, known_files, locking, records
from tests import support
from tests import test_daemon as daemons
from tests import test_drift as drifts
from tests.test_daemon import start

__all__ = ["start"]  # the fixture, used by name

AHEAD_NS = 10_000_000_000


class Site:
    """`site`, deployed v1 then v2 by one Daemon object; `daemon()` makes a fresh one on the same tree."""

    def __init__(self, node: support.Node, http: support.HttpServer) -> None:
        self.node, self.http = node, http
        self.path = node.apps / "site"
        self.now = [time.time()]
        for version in ("v1", "v2", "v3"):
            http.serve(f"/site/{version}.tar.gz", drifts.artifact(version))
        self.runner = self.daemon()
        for version in ("v1", "v2"):
            self.want(version)
            self.runner.scan()
            self.work()
        assert self.document()["current"] == "v2"

    def want(self, deployment: str, **spec: Any) -> None:
        support.write_manifest(self.node.manifests, support.application(
            "site", self.path, deployment=deployment, source={"url": self.http.url("/site/{deployment}.tar.gz")},
            retention={"keep": 3}, **spec))

    def daemon(self, clock_ns: Callable[[], int] = lambda: time.time_ns() + AHEAD_NS) -> loop.Daemon:
        config = loop.Config(str(self.node.manifests), str(self.node.state), content_check_seconds=600,
                             node_config=str(self.node.root / "etc" / "node.yaml"))
        runner = loop.Daemon(config, reconciling.Engine(str(self.node.state)), clock=lambda: self.now[0])
        runner.converged = converged.Converged(clock_ns)
        return runner

    def document(self) -> dict[str, Any]:
        return self.runner.statuses["site"]

    def status_file(self) -> Path:
        return self.node.state / "status" / "site.json"

    def ready(self) -> bool:
        ready = [c for c in self.document()["conditions"] if c["type"] == "Ready"]
        return bool(ready) and ready[0]["status"] == "True"

    def still_converged(self) -> bool:
        """One pass (after a rescan); whether it concluded "still converged"."""
        skipped = self.runner.converged.skipped
        self.runner.scan()
        self.work()
        return self.runner.converged.skipped == skipped + 1

    def work(self) -> None:
        """One pass of `site`: the one the scan queued, as a worker takes it, or else one now."""
        name = self.runner.queue.get() if not self.runner.queue.idle() else "site"
        self.runner.process(str(name))
        self.runner.queue.done(str(name))
        assert self.runner.queue.idle()

    def tether(self, *args: str) -> None:
        run = self.node.tether(*args)
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture
def site(node: support.Node, http: support.HttpServer) -> Site:
    found = Site(node, http)
    assert not found.still_converged(), "the pass after the deploy must be a full one: it remembers"
    assert found.ready()
    assert found.still_converged(), "a pass with nothing changed since the last no-op pass"
    return found


def test_a_pass_with_nothing_changed_reads_no_bookkeeping_writes_nothing_and_serves_fresh_times(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    observed: list[str] = []
    real = records.observe
    monkeypatch.setattr(records, "observe", lambda path, known=known_files.KNOWN: observed.append(path) or real(path))
    before, on_disk = site.document(), site.status_file().stat()
    site.now[0] += 30
    reads = known_files.KNOWN.reads

    assert site.still_converged()
    assert observed == [] and known_files.KNOWN.reads == reads, "the tree was read"
    after = site.document()
    assert after["updatedAt"] > before["updatedAt"] and after["lastSuccessAt"] == after["updatedAt"]
    assert {k: v for k, v in after.items() if k not in ("updatedAt", "lastSuccessAt")} == \
        {k: v for k, v in before.items() if k not in ("updatedAt", "lastSuccessAt")}
    assert fsutil.identity(site.status_file().stat()) == fsutil.identity(on_disk), "the status was written"
    assert site.runner.observations.reconciles[("site", "success")] >= 4


def write_in_place(file: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit a JSON file in place (the same inode), as an editor that does not rename would."""
    data = json.loads(file.read_text())
    change(data)
    with open(file, "r+") as handle:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(data))


def retarget_current(site: Site) -> None:
    link = site.path / "current.new"
    link.symlink_to(site.path / "v1")
    os.replace(link, site.path / "current")


def repoint_link(site: Site) -> None:
    leaf = site.path / "v2" / "tmp"
    leaf.unlink()
    leaf.symlink_to(site.path / "v1" / "tmp")


def record(site: Site, deployment: str) -> Path:
    return site.path / ".tether" / "deployments" / f"{deployment}.json"


def node_file(site: Site) -> None:
    target = site.node.root / "etc" / "node.yaml"
    target.parent.mkdir(mode=0o755, exist_ok=True)
    target.write_text("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n  labels: {role: web}\n")
    target.chmod(0o644)


def override_by_hand(site: Site) -> None:
    target = site.node.state / "overrides" / "site.json"
    target.parent.mkdir(mode=0o700, exist_ok=True)
    target.write_text(json.dumps({formats.KEY: formats.CURRENT, "suspended": True}))


def foreign_status(site: Site) -> None:
    write_in_place(site.status_file(), lambda data: data.update(lastError="written by someone else"))


def reason(site: Site) -> str:
    return str(next(c["reason"] for c in site.document()["conditions"] if c["type"] == "Ready"))


def current(site: Site) -> str:
    return os.readlink(site.path / "current")


CHANGES: dict[str, tuple[Callable[[Site], object], Callable[[Site], bool]]] = {
    "`tether deploy` of another deployment": (
        lambda s: s.tether("deploy", "site", "--deployment", "v3", "--wait"), lambda s: s.document()["current"] == "v3"),
    "`tether deploy` without waiting": (
        lambda s: s.tether("deploy", "site", "--deployment", "v3"), lambda s: s.document()["current"] == "v3"),
    "`tether rollback`": (lambda s: s.tether("rollback", "site"), lambda s: s.document()["current"] == "v1"),
    "`tether activate` (a pin)": (lambda s: s.tether("activate", "site", "v1"),
                                  lambda s: s.document()["current"] == "v1"),
    "`tether suspend`": (lambda s: s.tether("suspend", "site"), lambda s: reason(s) == "Suspended"),
    "an override written by hand": (override_by_hand, lambda s: reason(s) == "Suspended"),
    "the manifest asks for another deployment": (lambda s: s.want("v1"), lambda s: s.document()["current"] == "v1"),
    "this node's identity changed": (node_file, lambda s: s.document()["node"]["name"] == "web-07"),
    "the active deployment deleted": (lambda s: shutil.rmtree(s.path / "v2"), lambda s: (s.path / "v2").is_dir()),
    "the active deployment renamed": (lambda s: os.rename(s.path / "v2", s.path / "moved"),
                                      lambda s: (s.path / "v2").is_dir() and (s.path / "moved").is_dir()),
    "an older deployment deleted": (lambda s: shutil.rmtree(s.path / "v1"),
                                    lambda s: "v1" not in [d["name"] for d in s.document()["deployments"]]),
    "`current` retargeted": (retarget_current, lambda s: current(s) == str(s.path / "v2")),
    "`current` removed": (lambda s: (s.path / "current").unlink(), lambda s: current(s) == str(s.path / "v2")),
    "`current` replaced by a directory": (
        lambda s: ((s.path / "current").unlink(), (s.path / "current").mkdir()),
        lambda s: not s.ready() and s.document()["drift"]["current"]),
    "the active record edited in place": (
        lambda s: write_in_place(record(s, "v2"), lambda data: data.update(revision="abc123")),
        lambda s: s.document()["revision"] == "abc123"),
    "a record added": (
        lambda s: record(s, "v0").write_text(json.dumps({"name": "v0", "state": "complete", "format": 1})),
        lambda s: not record(s, "v0").exists()),
    "the activation record edited in place": (
        lambda s: write_in_place(s.path / ".tether" / "activation.json", lambda data: data.update(previous="v0")),
        lambda s: s.document()["previous"] == "v0"),
    "a staging leftover": (lambda s: (s.path / ".tether" / "staging" / "v3-x").mkdir(),
                           lambda s: not (s.path / ".tether" / "staging" / "v3-x").exists()),
    "a temporary link beside `current`": (lambda s: (s.path / ".current-x").symlink_to(s.path / "v1"),
                                          lambda s: not os.path.lexists(s.path / ".current-x")),
    "a persistent-data link repointed": (
        repoint_link, lambda s: os.readlink(s.path / "v2" / "tmp") == str(s.path / "persistent-data" / "tmp")),
    "the application path made group-writable": (lambda s: s.path.chmod(0o775), lambda s: reason(s) == "Failed"),
    "an ancestor made group-writable": (lambda s: s.node.apps.chmod(0o775), lambda s: reason(s) == "Failed"),
    "a bookkeeping directory made group-writable": (lambda s: (s.path / ".tether" / "staging").chmod(0o775),
                                                    lambda s: reason(s) == "Failed"),
    "the status file rewritten by another process": (
        foreign_status, lambda s: json.loads(s.status_file().read_text())["lastError"] is None),
    "a file of the active deployment changed, when its content check is due": (
        lambda s: ((s.path / "v2" / "index.html").write_text("changed\n"), s.now.__setitem__(0, s.now[0] + 601)),
        lambda s: s.document()["drift"]["driftedFiles"] == 1),
}


@pytest.mark.parametrize("change", CHANGES)
def test_the_pass_after_a_change_behind_the_daemons_back_is_a_full_one_and_acts_on_it(site: Site, change: str) -> None:
    make, noticed = CHANGES[change]
    make(site)
    assert not site.still_converged(), f"the pass after {change} concluded that nothing changed"
    assert noticed(site), f"the pass did not act on {change}: {site.document()}"


def test_a_file_changed_before_its_content_check_is_due_waits_for_it_as_before(site: Site) -> None:
    (site.path / "v2" / "index.html").write_text("changed\n")
    assert site.still_converged()
    site.now[0] += 601
    assert not site.still_converged()
    assert site.document()["drift"]["driftedFiles"] == 1


def test_what_changed_within_the_racy_margin_before_a_pass_is_not_remembered(site: Site) -> None:
    site.runner = site.daemon(clock_ns=time.time_ns)  # the real clock: the tree was written just now
    assert not site.still_converged()
    assert not site.still_converged(), "a pass remembered a tree whose ctimes are within the racy margin"
    site.runner = site.daemon(clock_ns=lambda: time.time_ns() + fsutil.RACY_NS + 1_000_000_000)
    assert not site.still_converged()  # a new daemon: this pass lstats what it read, for the next
    assert not site.still_converged()  # which remembers
    assert site.still_converged()


def test_an_application_path_below_a_symlink_is_never_remembered(node: support.Node, http: support.HttpServer) -> None:
    (node.root / "link").symlink_to(node.apps)
    http.serve("/v1.tar.gz", support.tiny_artifact())
    support.write_manifest(node.manifests, support.application(
        "site", node.root / "link" / "site", deployment="v1", source={"url": http.url("/v1.tar.gz")}))
    runner = loop.Daemon(loop.Config(str(node.manifests), str(node.state)), reconciling.Engine(str(node.state)))
    runner.converged = converged.Converged(lambda: time.time_ns() + AHEAD_NS)
    runner.scan(everything=True)
    runner.process("site")  # the deploy, which asks for a read-back
    runner.read_backs.clear()
    for _ in range(2):
        runner.process("site")
    assert runner.statuses["site"]["current"] == "v1"
    assert runner.converged.skipped == 0
    assert "site" not in runner.read_backs, "a no-op pass that can never be remembered asked for another"


def test_a_fingerprint_is_settled_only_when_all_it_saw_is_old_and_nothing_vanished_from_an_untracked_place(
        tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_text("x")
    up, below = (str(tmp_path),), (str(tmp_path / "dir"), str(tmp_path / "dir" / "file"))
    taken = fingerprint.take(up, below)
    now = time.time_ns()
    assert not fingerprint.settled(up, below, taken, now), "just written: within the racy margin"
    assert fingerprint.settled(up, below, taken, now + fsutil.RACY_NS + 1_000_000_000)
    later = now + fsutil.RACY_NS + 1_000_000_000
    missing = (str(tmp_path / "dir"), str(tmp_path / "dir" / "gone"))
    assert fingerprint.settled(up, missing, fingerprint.take(up, missing), later), "its directory is tracked"
    untracked = (str(tmp_path / "elsewhere" / "gone"),)
    assert not fingerprint.settled(up, untracked, fingerprint.take(up, untracked), later)
    gone = (*up, str(tmp_path / "nothing"))
    assert not fingerprint.settled(gone, below, fingerprint.take(gone, below), later), "an ancestor is missing"
    assert fingerprint.ancestors("/srv/www/site") == ["/", "/srv", "/srv/www"]


def test_a_full_resync_concludes_still_converged_in_the_scan_and_queues_only_what_it_cannot(site: Site) -> None:
    skipped = site.runner.converged.skipped
    site.runner.scan(everything=True)
    assert site.runner.queue.idle(), "a converged application was handed to a worker"
    assert site.runner.converged.skipped == skipped + 1

    (site.path / "current").unlink()
    site.runner.scan(everything=True)
    assert not site.runner.queue.idle(), "a changed application was not queued"
    site.work()
    assert current(site) == str(site.path / "v2")


def test_a_full_resync_queues_an_application_whose_lock_another_holds_instead_of_waiting(site: Site) -> None:
    assert site.still_converged()
    with locking.application_lock(str(site.node.state), "site"):  # a command working on it
        site.runner.scan(everything=True)
        assert not site.runner.queue.idle(), "the scan waited for the lock or skipped the application"
    assert site.runner.queue.get() == "site"


def test_a_real_daemon_acts_on_changes_made_after_its_resyncs_found_nothing_changed(
        node: support.Node, http: support.HttpServer, start: daemons.Start) -> None:
    daemon, app = daemons.running_site(node, http, start, "v2")
    daemons.put(node.manifests, daemons.app_manifest(node, http, deployment="v2"))
    daemons.wait_converged(node, "site", "v2")
    time.sleep(fsutil.RACY_NS / 1e9 + 0.2)  # not a synchronisation: the tree must be older than the margin

    def resync() -> None:
        passes = daemon.passes("site")
        daemon.signal(signal.SIGHUP)
        daemons.wait_until(lambda: daemon.passes("site") > passes)

    for _ in range(2):  # the first remembers the tree, the second finds it unchanged
        resync()
    status = daemons.status_of(node, "site")
    assert daemons.condition(status)["status"] == "True" and status["current"] == "v2"

    link = app / "current.new"
    link.symlink_to(app / "v1")
    os.replace(link, app / "current")
    resync()
    daemons.wait_until(lambda: os.readlink(app / "current") == str(app / "v2"), message="current was not restored")
    (app / ".tether" / "deployments" / "v0.json").write_text(json.dumps({"name": "v0", "state": "incomplete"}))
    daemon.signal(signal.SIGHUP)
    daemons.wait_until(lambda: not (app / ".tether" / "deployments" / "v0.json").exists(),
                       message="the added record was not cleaned")


def test_a_pass_that_changed_the_tree_is_read_back_once_it_settled_and_the_read_back_is_remembered(
        node: support.Node, http: support.HttpServer) -> None:
    site = Site(node, http)  # v1, then v2: each pass deployed
    runner = site.runner
    due, _ = runner.read_backs["site"]
    assert 0 < due - runner.monotonic() <= passes.READ_BACK_SECONDS
    assert runner.queue_due(due - 0.01) == [due] and runner.queue.idle(), "queued before it was due"
    assert runner.queue_due(due) == [] and not runner.queue.idle(), "not queued when due"
    site.work()  # the read-back: a full pass that changes nothing...
    assert site.ready() and "site" not in runner.read_backs, "a pass that changed nothing asked for a read-back"
    assert site.still_converged(), "...and is remembered: the pass after it (a resync's, say) reads nothing"


def test_after_a_restart_the_first_no_op_pass_asks_for_one_more_so_that_a_resync_is_cheap(site: Site) -> None:
    site.runner = site.daemon()  # a daemon started on the deployed tree: nothing read before its first pass
    assert not site.still_converged(), "the first pass of a daemon has nothing to compare with: a full one"
    assert site.ready() and "site" in site.runner.read_backs, "the resync after a restart would be a full pass"
    site.runner.queue_due(due_now(site.runner, "site"))
    site.work()  # the read-back: a full pass that changes nothing, and is remembered...
    assert "site" not in site.runner.read_backs, "the read-back asked for another"
    assert site.still_converged(), "...so the pass after it (a resync's) reads nothing"
    assert site.still_converged() and "site" not in site.runner.read_backs


def test_a_real_daemon_reads_back_a_deployment_without_being_asked(
        node: support.Node, http: support.HttpServer, start: daemons.Start) -> None:
    daemon, _ = daemons.running_site(node, http, start)  # its first pass deployed v1
    assert daemons.read_back(daemon, "site") >= 2
    assert daemons.converged(node, "site", "v1")


def due_now(runner: loop.Daemon, name: str) -> float:
    """Make the pending read-back of `name` due now; when that is."""
    _, key = runner.read_backs[name]
    runner.read_backs[name] = now, key = runner.monotonic(), key
    return now


def test_a_pass_that_failed_asks_for_no_read_back_and_drops_the_one_pending(site: Site) -> None:
    assert "site" in site.runner.read_backs  # the deploy of v2's
    site.want("v9")  # not served: the download fails
    site.runner.scan()
    site.work()
    assert not site.ready() and "site" not in site.runner.read_backs, "the retry would run as a read-back"


def test_a_changed_manifest_queued_with_a_read_back_is_a_deploy_that_asks_for_its_own(site: Site) -> None:
    site.runner.queue_due(due_now(site.runner, "site"))  # v2's read-back, queued...
    site.want("v3")  # ...and a change of the manifest, queued with it (one pass)
    site.runner.scan()
    site.work()
    assert current(site) == str(site.path / "v3")
    assert "site" in site.runner.read_backs, "the deploy of v3 ran as v2's read-back, and asked for none"
    assert site.runner.read_backs["site"][1] == site.runner.seen["site"], "asked for under its own manifest"


def test_a_pass_that_left_its_steps_undone_asks_for_no_read_back(site: Site) -> None:
    site.want("v2", drift="report")
    site.runner.scan()
    site.work()
    site.runner.read_backs.clear()
    shutil.rmtree(site.path / "v2")  # the active deployment, gone: a redeploy that spec.drift: report leaves undone
    site.runner.scan(everything=True)
    site.work()
    assert site.runner.engine.plan(site.runner.apps["site"], records.observe(str(site.path))).steps
    ready = daemons.condition(site.document())
    assert (ready["status"], ready["reason"]) == ("False", "DriftReported"), "its directory is gone: not Ready"
    assert str(site.path / "v2") in ready["message"] and "spec.drift is report" in ready["message"]
    assert "site" not in site.runner.read_backs, "every pass would ask for another, 2.5 s apart, forever"


def test_a_read_back_that_changed_the_tree_again_asks_for_no_other(site: Site) -> None:
    (site.path / "current").unlink()  # changed behind the daemon's back before its read-back
    site.runner.queue_due(due_now(site.runner, "site"))
    site.work()  # the read-back puts current back...
    assert current(site) == str(site.path / "v2")
    assert "site" not in site.runner.read_backs, "...and asked for another"
    (site.path / "current").unlink()  # a pass that changes the tree, not a read-back, asks for one as before
    site.runner.scan(everything=True)
    site.work()
    assert "site" in site.runner.read_backs
