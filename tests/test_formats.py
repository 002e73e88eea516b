"""Format versions of the files tether writes (controller/formats.py), through the real command line.

For every format: a file without a version (written before formats were versioned) reads as it always did, a
file of the current version reads, and a file of a newer version leaves its application alone, says so in its
status, and is never rewritten or removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller import formats
from tests import support

# format -> (its file on a node after `prepare`, what makes it exist)
Prepare = Callable[[support.Node], None]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _running_hook(node: support.Node) -> None:
    file = node.apps / "site" / ".tether" / "running-hook.json"  # left by a tether that died; its hook is gone
    file.write_text(json.dumps({"format": formats.CURRENT, "pid": _dead_pid(), "pgid": 2, "startTime": 5,
                                "bootId": "another boot", "phase": "afterActivate"}))


FORMATS: dict[str, tuple[Callable[[support.Node], Path], Prepare]] = {
    "deployment record": (lambda node: node.apps / "site" / ".tether" / "deployments" / "v1.json", lambda node: None),
    "activation record": (lambda node: node.apps / "site" / ".tether" / "activation.json", lambda node: None),
    "running-hook file": (lambda node: node.apps / "site" / ".tether" / "running-hook.json", _running_hook),
    "status document": (lambda node: node.state / "status" / "site.json", lambda node: None),
    "override": (lambda node: node.state / "overrides" / "site.json",
                 lambda node: ok(node.tether("deploy", "site", "--deployment", "v1"))),
}


def ok(run: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def deployed(node: support.Node, http: support.HttpServer) -> None:
    for version in ("v1", "v2"):
        http.serve(f"/site/{version}.tar.gz", support.tar_bytes(support.site(version)))
    manifest(node, http, "v1")
    ok(node.tether("reconcile"))


def manifest(node: support.Node, http: support.HttpServer, deployment: str) -> None:
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment=deployment, source={"url": http.url("/site/{deployment}.tar.gz")}))


def rewrite(file: Path, change: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(file.read_text())
    change(document)
    file.write_text(json.dumps(document))


def status_of(node: support.Node) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(ok(node.tether("status", "site", "--json")).stdout)
    return document


@pytest.mark.parametrize("which", FORMATS)
def test_a_file_of_the_current_format_carries_its_version_and_reads(
        which: str, node: support.Node, http: support.HttpServer) -> None:
    locate, prepare = FORMATS[which]
    deployed(node, http)
    prepare(node)
    assert json.loads(locate(node).read_text())["format"] == formats.CURRENT
    manifest(node, http, "v2")
    ok(node.tether("reconcile"))
    assert status_of(node)["current"] == "v2"
    if locate(node).exists():
        assert json.loads(locate(node).read_text())["format"] == formats.CURRENT


@pytest.mark.parametrize("which", FORMATS)
def test_a_file_written_before_formats_were_versioned_reads_as_it_always_did(
        which: str, node: support.Node, http: support.HttpServer) -> None:
    locate, prepare = FORMATS[which]
    deployed(node, http)
    prepare(node)
    rewrite(locate(node), lambda document: document.pop("format"))
    before = support.snapshot(node.apps / "site" / "v1")
    ok(node.tether("reconcile"))  # nothing to do: the unversioned file meant what it means now
    assert support.snapshot(node.apps / "site" / "v1") == before
    assert status_of(node)["current"] == "v1" and not status_of(node)["lastError"]
    manifest(node, http, "v2")
    ok(node.tether("reconcile"))
    assert status_of(node)["current"] == "v2"


@pytest.mark.parametrize("newer", [formats.CURRENT + 1, 99, "2", None, 0, True, 1.5, [1]])
def test_a_format_this_tether_does_not_know_is_refused_and_one_it_knows_passes(newer: object) -> None:
    with pytest.raises(formats.NewerFormat) as refused:
        formats.check({"format": newer, "state": "complete"}, "/opt/site/.tether/deployments/v1.json")
    assert str(refused.value).startswith("written by a newer tether (format ")
    assert str(refused.value).endswith("; upgrade tether or remove /opt/site/.tether/deployments/v1.json")
    for known in ({"format": formats.CURRENT}, {"state": "complete"}, None, [], "text"):
        assert formats.check(known, "f") == known


@pytest.mark.parametrize("which", FORMATS)
def test_a_file_of_a_newer_format_leaves_its_application_alone_and_is_never_rewritten(
        which: str, node: support.Node, http: support.HttpServer) -> None:
    newer = formats.CURRENT + 1
    locate, prepare = FORMATS[which]
    deployed(node, http)
    prepare(node)
    file = locate(node)
    rewrite(file, lambda document: document.update(format=newer))
    written = file.read_bytes()
    manifest(node, http, "v2")  # a change this tether would act on, were it allowed to
    before = support.snapshot(node.apps / "site")
    run = node.tether("reconcile", "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    (result,) = json.loads(run.stdout)
    assert f"written by a newer tether (format {newer};" in result["error"]
    assert f"upgrade tether or remove {file}" in result["error"]
    assert support.snapshot(node.apps / "site") == before
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
    assert file.read_bytes() == written
    document = status_of(node)
    assert "written by a newer tether" in document["lastError"]
    assert next(c for c in document["conditions"] if c["type"] == "Ready")["reason"] in ("NewerFormat", "Failed")
    assert "written by a newer tether" in node.tether("status").stdout
    assert file.read_bytes() == written


@pytest.mark.parametrize("which", ["deployment record", "status document", "override"])
def test_imperative_commands_refuse_an_application_with_a_file_of_a_newer_format(
        which: str, node: support.Node, http: support.HttpServer) -> None:
    locate, _ = FORMATS[which]
    deployed(node, http)
    manifest(node, http, "v2")
    ok(node.tether("reconcile"))
    ok(node.tether("deploy", "site", "--deployment", "v2"))
    file = locate(node)
    rewrite(file, lambda document: document.update(format=formats.CURRENT + 1))
    written, before = file.read_bytes(), support.snapshot(node.root)
    for command in (("suspend", "site"), ("deploy", "site", "--deployment", "v1"), ("rollback", "site"),
                    ("activate", "site", "v1"), ("retry", "site"), ("remove", "site", "v1"), ("prune", "site"),
                    ("repair", "site")):
        run = node.tether(*command)
        assert run.returncode != 0 and "written by a newer tether" in run.stdout + run.stderr, (command, run.stderr)
    assert file.read_bytes() == written
    assert support.snapshot(node.root) == before


def test_a_digest_list_of_a_newer_format_is_not_used_for_a_content_check_and_stays(
        node: support.Node, http: support.HttpServer) -> None:
    deployed(node, http)
    file = node.apps / "site" / ".tether" / "digests" / "v1.json"
    assert json.loads(file.read_text())["format"] == formats.CURRENT
    ok(node.tether("verify", "site"))
    rewrite(file, lambda document: document.pop("format"))
    ok(node.tether("verify", "site"))  # unversioned: read as before
    rewrite(file, lambda document: document.update(format=formats.CURRENT + 1))
    written = file.read_bytes()
    for command in ("verify", "repair"):
        run = node.tether(command, "site", "--json")
        assert run.returncode != 0 and "written by a newer tether" in run.stdout + run.stderr, run.stdout
    assert file.read_bytes() == written


def test_a_file_understood_once_is_read_again_when_it_changes_even_in_place(tmp_path: Path) -> None:
    file, known = tmp_path / "site.json", formats.Understood()
    file.write_text('{"format": 1, "name": "site"}')
    assert known.refusal(str(file)) is None and known.refusal(str(file)) is None
    with open(file, "r+") as handle:  # same inode, same size
        handle.write('{"format": 2')
    assert "written by a newer tether (format 2;" in (known.refusal(str(file)) or "")
    file.unlink()
    assert known.refusal(str(file)) is None
    (tmp_path / "other.json").write_text('{"format": 3}')
    os.replace(tmp_path / "other.json", file)
    assert "(format 3;" in (known.refusal(str(file)) or "")
