"""Drift (design section 6): deployments made through the real command line, then drift made by hand.

Until the engine records digests when a deployment completes, `Site.deploy`
records them itself right after the reconcile, as the engine will.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller import errors
from controller.cli import drift_commands
from controller.manifests import loading, model
from controller.tree import digests, drift, owners, records
from tests import support

MTREE = """\
/set type=dir mode=0755
.
\tlog
\t\tproduction.log type=file mode=0640
\t\t..
\t..
\ttmp
\t..
..
"""
LEAVES = ["log/production.log", "tmp"]
SHIPPED_LOG = b"shipped with the release\n"


def artifact(version: str) -> bytes:
    """A release below one top-level directory (stripComponents: auto) with persistent data and odd modes."""
    return support.tar_bytes([
        support.Member("release/", type="dir"),
        support.Member("release/.mtree", MTREE.encode()),
        support.Member("release/index.html", f"<h1>{version}</h1>\n".encode()),
        support.Member("release/home.html", type="symlink", target="index.html"),
        support.Member("release/bin/", type="dir"),
        support.Member("release/bin/run", b"#!/bin/sh\necho run\n", mode=0o755),
        support.Member("release/css/", type="dir"),
        support.Member("release/css/site.css", b"body { color: black }\n"),
        support.Member("release/secret.conf", b"password = hunter2\n", mode=0o600),
        support.Member("release/log/", type="dir"),
        support.Member("release/log/production.log", SHIPPED_LOG),
        support.Member("release/tmp/", type="dir"),
        support.Member("release/tmp/.keep", b""),
    ])


class Site:
    """One application `site`, deployed from the HTTP fixture through `tether reconcile`."""

    def __init__(self, node: support.Node, http: support.HttpServer) -> None:
        self.node, self.http = node, http
        self.path = node.apps / "site"
        self.data = self.path / "persistent-data"

    def want(self, deployment: str, **spec: Any) -> None:
        self.http.serve(f"/site/{deployment}.tar.gz", artifact(deployment))
        support.write_manifest(self.node.manifests, support.application(
            "site", self.path, deployment=deployment, source={"url": self.http.url("/site/{deployment}.tar.gz")},
            **spec))

    def deploy(self, deployment: str, **spec: Any) -> None:
        self.want(deployment, **spec)
        run = self.node.tether("reconcile")
        assert run.returncode == 0, run.stdout + run.stderr
        assert os.readlink(self.path / "current") == str(self.path / deployment)
        if not os.path.exists(digests.digests_path(str(self.path), deployment)):
            drift.record_digests(str(self.path), deployment, self.record(deployment)["links"])

    def record(self, deployment: str) -> dict[str, Any]:
        return dict(json.loads((self.path / ".tether" / "deployments" / f"{deployment}.json").read_text()))

    def app(self) -> model.Application:
        return loading.load([str(self.node.manifests)], secure=True).applications["site"]

    def structure(self, desired: str | None = "v1") -> drift.Structural:
        return drift.check_structure(str(self.path), records.observe(str(self.path)), desired)

    def content(self, deployment: str = "v1") -> drift.Content:
        return drift.check_content(str(self.path), deployment, self.app().drift_ignore)

    def repair(self, content: drift.Content, deployment: str = "v1") -> list[str]:
        app = self.app()
        return drift.repair_content(app, deployment, str(self.node.state), owners.resolve(app), content)

    def args(self, *, json: bool = False) -> argparse.Namespace:
        return argparse.Namespace(manifests=str(self.node.manifests), state_dir=str(self.node.state),
                                  insecure_manifests=False, name="site", json=json)


@pytest.fixture
def site(node: support.Node, http: support.HttpServer) -> Site:
    return Site(node, http)


def identities(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """(inode, size, mtime, content) of every file below `root`: equal means nothing was rewritten."""
    found = {}
    for path in support.walk_files(root):
        st = path.lstat()
        found[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, path.read_bytes())
    return found


# ---------------------------------------------------------------- structure


def test_a_freshly_deployed_application_has_no_drift(site: Site) -> None:
    site.deploy("v1")

    assert site.structure() == drift.Structural()
    assert site.structure().types == []
    assert site.content() == drift.Content()


def test_current_switched_by_hand_to_an_old_deployment_is_current_drift(site: Site) -> None:
    site.deploy("v1")
    site.deploy("v2")
    subprocess.run(["ln", "-sfn", str(site.path / "v1"), str(site.path / "current")], check=True)

    found = site.structure("v2")

    assert found.current == f"{site.path}/current points to {site.path}/v1, not to {site.path}/v2"
    assert found.types == ["current"]


def test_a_deleted_current_is_current_drift(site: Site) -> None:
    site.deploy("v1")
    (site.path / "current").unlink()

    assert site.structure().current == f"{site.path}/current is missing"
    assert site.structure().types == ["current"]


def test_a_dangling_current_is_current_drift(site: Site) -> None:
    site.deploy("v1")
    subprocess.run(["ln", "-sfn", str(site.path / "gone"), str(site.path / "current")], check=True)

    assert site.structure().current == f"{site.path}/current is dangling: {site.path}/gone does not exist"


def test_a_removed_active_deployment_directory_is_deployment_drift(site: Site) -> None:
    site.deploy("v1")
    subprocess.run(["rm", "-rf", str(site.path / "v1")], check=True)

    found = site.structure()

    assert found.deployment == f"the active deployment {site.path}/v1 is missing or not a directory"
    assert found.current is not None and "dangling" in found.current
    assert found.links == []


def test_an_active_deployment_whose_record_is_not_complete_is_deployment_drift(site: Site) -> None:
    site.deploy("v1")
    records.write_record(str(site.path), "v1", records.INCOMPLETE)

    assert site.structure().deployment == "the active deployment v1 is incomplete"


@pytest.mark.parametrize("damage", ["delete", "repoint"])
def test_a_deleted_or_repointed_persistent_link_is_links_drift_and_relink_restores_it_without_touching_data(
        site: Site, damage: str) -> None:
    site.deploy("v1")
    (site.path / "current" / "log" / "production.log").open("ab").write(b"written while v1 ran\n")
    (site.path / "current" / "tmp" / "session").write_bytes(b"a session")
    data = identities(site.data)
    link = site.path / "v1" / "log" / "production.log"
    link.unlink()
    if damage == "repoint":
        link.symlink_to(site.path / "v1" / "index.html")

    assert site.structure().links == ["log/production.log"]
    assert site.structure().types == ["links"]

    restored = drift.relink(site.app(), "v1", None)

    assert restored == ["log/production.log"]
    assert os.readlink(link) == str(site.data / "log" / "production.log")
    assert site.structure() == drift.Structural()
    assert identities(site.data) == data, "relinking re-seeded or rewrote persistent data"
    assert (site.data / "log" / "production.log").read_bytes() == SHIPPED_LOG + b"written while v1 ran\n"
    assert site.content() == drift.Content()
    assert drift.relink(site.app(), "v1", None) == []


# ---------------------------------------------------------------- content


def test_an_edited_an_added_and_a_removed_file_are_content_drift_naming_exactly_them(site: Site) -> None:
    site.deploy("v1")
    (site.path / "v1" / "index.html").write_text("<h1>defaced</h1>\n")
    (site.path / "v1" / "css" / "extra.css").write_text("body { color: red }\n")
    (site.path / "v1" / "secret.conf").unlink()

    assert site.content() == drift.Content(changed=["index.html"], added=["css/extra.css"], removed=["secret.conf"])
    assert site.content().paths == ["css/extra.css", "index.html", "secret.conf"]


def test_a_changed_mode_and_a_retargeted_symlink_are_content_drift(site: Site) -> None:
    site.deploy("v1")
    (site.path / "v1" / "bin" / "run").chmod(0o777)
    (site.path / "v1" / "home.html").unlink()
    (site.path / "v1" / "home.html").symlink_to("secret.conf")

    assert site.content() == drift.Content(changed=["bin/run", "home.html"])


def test_drift_ignore_globs_exempt_paths_and_everything_below_a_matching_directory(site: Site) -> None:
    site.deploy("v1", driftIgnore=["*.pyc", "cache", "css"])
    v1 = site.path / "v1"
    (v1 / "module.pyc").write_bytes(b"\x00")
    (v1 / "bin" / "deep.pyc").write_bytes(b"\x00")
    (v1 / "cache").mkdir()
    (v1 / "cache" / "page.html").write_text("cached")
    (v1 / "css" / "site.css").unlink()
    (v1 / "css" / "new.css").write_text("new")
    (v1 / "index.html").write_text("still checked")

    assert site.content() == drift.Content(changed=["index.html"])


def test_repair_restores_exactly_the_original_bytes_and_modes_and_removes_added_files(site: Site) -> None:
    site.deploy("v1")
    v1 = site.path / "v1"
    (site.path / "current" / "log" / "production.log").open("ab").write(b"written while v1 ran\n")
    before, data = support.snapshot(v1), identities(site.data)
    (v1 / "index.html").write_text("<h1>defaced</h1>\n")
    (v1 / "bin" / "run").chmod(0o777)
    (v1 / "bin").chmod(0o777)
    (v1 / "secret.conf").unlink()
    (v1 / "backdoor.php").write_text("<?php system($_GET['c']);")
    subprocess.run(["rm", "-rf", str(v1 / "css")], check=True)
    (v1 / "css").write_text("a file where a directory was")
    (v1 / "home.html").unlink()
    (v1 / "home.html").mkdir()
    (v1 / "home.html" / "inside").write_text("below a path that was a link")
    (v1 / "tmp").unlink()
    (v1 / "tmp").mkdir()
    (v1 / "tmp" / "session").write_text("written where the persistent link was")
    content = site.content()
    assert content == drift.Content(changed=["bin", "bin/run", "css", "home.html", "index.html", "tmp"],
                                    added=["backdoor.php", "home.html/inside", "tmp/session"],
                                    removed=["css/site.css", "secret.conf"])

    repaired = site.repair(content)

    assert repaired == sorted(content.paths, key=lambda p: p.split("/"))
    assert support.snapshot(v1) == before
    assert os.readlink(v1 / "tmp") == str(site.data / "tmp")
    assert identities(site.data) == data, "repair touched persistent data"
    assert site.content() == drift.Content()
    assert site.structure() == drift.Structural()
    assert os.listdir(site.path / ".tether" / "staging") == []


def test_repair_never_writes_through_a_directory_replaced_by_a_symlink(site: Site) -> None:
    site.deploy("v1")
    elsewhere = site.node.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "site.css").write_text("not the application's")
    outside = support.snapshot(elsewhere)
    subprocess.run(["rm", "-rf", str(site.path / "v1" / "css")], check=True)
    (site.path / "v1" / "css").symlink_to(elsewhere)
    content = site.content()
    assert content == drift.Content(changed=["css"], removed=["css/site.css"])

    site.repair(content)

    assert support.snapshot(elsewhere) == outside
    assert (site.path / "v1" / "css" / "site.css").read_text() == "body { color: black }\n"
    assert site.content() == drift.Content()


def test_a_file_the_artifact_does_not_ship_is_named_and_left_unrepaired(site: Site) -> None:
    site.deploy("v1")
    (site.path / "v1" / "assets.js").write_text("compiled by an afterDeploy hook")
    drift.record_digests(str(site.path), "v1", LEAVES)
    (site.path / "v1" / "assets.js").write_text("edited")
    (site.path / "v1" / "index.html").write_text("edited")
    recorded = Path(digests.digests_path(str(site.path), "v1")).read_bytes()

    with pytest.raises(errors.PermanentError, match=r"1 paths of v1 were not restored .*: assets\.js; redeploy"):
        site.repair(site.content())

    assert (site.path / "v1" / "index.html").read_text() == "<h1>v1</h1>\n"
    assert Path(digests.digests_path(str(site.path), "v1")).read_bytes() == recorded
    assert site.content() == drift.Content(changed=["assets.js"])


def test_repair_without_the_cached_artifact_says_to_redeploy(site: Site) -> None:
    site.deploy("v1")
    (site.node.state / "cache" / "site" / "v1.artifact").unlink()
    (site.path / "v1" / "index.html").write_text("edited")

    with pytest.raises(errors.PermanentError, match=r"the cached artifact of v1 \(.*\) is missing.*redeploy it"):
        site.repair(site.content())


@pytest.mark.parametrize("damage", ["empty", "torn", "other bytes"])
def test_repair_from_a_damaged_cached_artifact_says_to_redeploy_and_changes_nothing(site: Site, damage: str) -> None:
    # The copy is written without an fsync of its own (artifacts/cache.py): a power cut can leave it like this.
    site.deploy("v1")
    cached = site.node.state / "cache" / "site" / "v1.artifact"
    data = cached.read_bytes()
    cached.write_bytes({"empty": b"", "torn": data[: len(data) // 2],
                        "other bytes": support.tar_bytes(support.site("2"))}[damage])
    (site.path / "v1" / "index.html").write_text("edited")

    with pytest.raises(errors.PermanentError, match=r"the cached artifact .*v1\.artifact.*redeploy it"):
        site.repair(site.content())
    assert (site.path / "v1" / "index.html").read_text() == "edited"


def test_a_deployment_without_digests_is_a_clear_error_and_tether_repair_records_them(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.deploy("v1")
    os.unlink(digests.digests_path(str(site.path), "v1"))

    with pytest.raises(digests.NoDigests, match=r"predates content digests.*`tether repair` records them.*redeploy"):
        site.content()
    assert drift_commands.cmd_verify(site.args()) == 2

    assert drift_commands.cmd_repair(site.args()) == 0
    assert "predates content digests; recorded them" in capsys.readouterr().out
    assert site.content() == drift.Content()


def test_record_digests_records_symlinks_and_persistent_links_as_links(site: Site) -> None:
    site.deploy("v1")

    entries = json.loads(Path(digests.digests_path(str(site.path), "v1")).read_text())["entries"]

    assert site.record("v1")["links"] == LEAVES
    assert entries["home.html"] == {"type": "link", "mode": "0777", "target": "index.html"}
    assert entries["log/production.log"] == {"type": "link", "mode": "0777",
                                             "target": str(site.data / "log" / "production.log")}
    assert entries["tmp"] == {"type": "link", "mode": "0777", "target": str(site.data / "tmp")}
    assert not any(p.startswith("tmp/") for p in entries)
    assert entries["bin"] == {"type": "dir", "mode": "0755"}
    assert entries["bin/run"] == {"type": "file", "mode": "0755", "sha256": support.sha256(b"#!/bin/sh\necho run\n")}
    assert sorted(entries) == sorted(str(p.relative_to(site.path / "v1")) for p in (site.path / "v1").rglob("*"))


# ---------------------------------------------------------------- commands


def test_verify_exits_0_when_clean_and_1_naming_the_drift_as_json(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.deploy("v1")
    assert drift_commands.cmd_verify(site.args()) == 0
    assert "v1 matches what tether made" in capsys.readouterr().out
    (site.path / "v1" / "index.html").write_text("edited")
    (site.path / "v1" / "tmp").unlink()

    assert drift_commands.cmd_verify(site.args(json=True)) == 1

    report = json.loads(capsys.readouterr().out)
    assert report["drifted"] is True and report["deployment"] == "v1"
    assert report["drift"] == {"types": ["links", "content"], "current": None, "deployment": None, "links": ["tmp"],
                               "content": {"changed": ["index.html"], "added": [], "removed": ["tmp"]}}


def test_repair_restores_content_and_links_and_verify_is_clean_again(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.deploy("v1")
    (site.path / "v1" / "index.html").write_text("edited")
    (site.path / "v1" / "extra").write_text("added")
    (site.path / "v1" / "log" / "production.log").unlink()

    assert drift_commands.cmd_repair(site.args()) == 0

    assert "restored 3 paths of v1" in capsys.readouterr().out
    assert drift_commands.cmd_verify(site.args()) == 0


def test_repair_leaves_current_to_reconcile_and_says_so(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.deploy("v1")
    (site.path / "current").unlink()

    assert drift_commands.cmd_repair(site.args(json=True)) == 1

    captured = capsys.readouterr()
    assert json.loads(captured.out)["remaining"] == ["current"]
    assert "`tether reconcile site` switches it back" in captured.err


def test_an_unknown_application_is_invalid_input(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.deploy("v1")
    args = site.args()
    args.name = "nope"

    assert drift_commands.cmd_verify(args) == 2
    assert drift_commands.cmd_repair(args) == 2
    assert "no valid manifest for an application named 'nope'" in capsys.readouterr().err


# ---------------------------------------------------------------- plain data


def test_drift_types_and_paths_are_listed_in_a_stable_order() -> None:
    assert drift.Structural(current="x", links=["a"]).types == ["current", "links"]
    assert drift.Content(changed=["b"], added=["c"], removed=["a"]).paths == ["a", "b", "c"]
