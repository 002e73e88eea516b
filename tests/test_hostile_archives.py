"""Hostile artifacts and trees: deep trees, header and directory bombs, malformed members (issue 9: 7, 12, 13, 15, 16).

Every case drives the real `tether` command line in a subprocess on a real
filesystem. A refusal is one line naming the problem, exit code 1, never a
traceback, and leaves the application as it was; a tree thousands of levels
deep (from a hook, or left behind) never wedges the application.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import support

NAME = "site"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@pytest.fixture(autouse=True)
def _no_deep_trees_left(tmp_path: Path) -> Iterator[None]:
    """Remove what a test left, at any depth: pytest's own clean-up of old tmp_paths is recursive."""
    yield
    _remove_all(tmp_path)


def _remove_all(top: Path) -> None:
    """Remove everything below `top`, iteratively and without following links (independent of tether's code)."""
    fd, names = os.open(top, DIR_FLAGS), list[str]()
    try:
        while True:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in os.scandir(fd)]
            below = next((name for name, is_dir in entries if is_dir), None)
            if below is not None:
                child = os.open(below, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(below)
                continue
            for name, _ in entries:
                os.unlink(name, dir_fd=fd)
            if not names:
                return
            parent = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- helpers


@dataclasses.dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    max_rss_mib: float


def _measured(node: support.Node, *args: str) -> Measured:
    """Run the real `tether` like Node.tether, and also report the child's peak resident memory (wait4)."""
    command = [sys.executable, "-m", "controller", *args, "--manifests", str(node.manifests),
               "--state-dir", str(node.state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    out, err = node.root / "measured.out", node.root / "measured.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=node.root)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(process.returncode, out.read_text(), err.read_text(), usage.ru_maxrss / 1024)


def _want(node: support.Node, app: Path, deployment: str, url: str, **spec: Any) -> None:
    source = {"url": url, **spec.pop("source", {})}
    support.write_manifest(node.manifests, support.application(NAME, app, deployment=deployment, source=source,
                                                               **spec))


def _deploy(node: support.Node, http: support.HttpServer, app: Path, deployment: str, artifact: bytes,
            **spec: Any) -> subprocess.CompletedProcess[str]:
    _want(node, app, deployment, http.serve(f"/{deployment}.tar.gz", artifact), **spec)
    return node.tether("reconcile")


def _status_error(node: support.Node) -> str:
    return str(json.loads((node.state / "status" / f"{NAME}.json").read_text())["lastError"])


def _assert_one_line_refusal(run: subprocess.CompletedProcess[str] | Measured, *words: str) -> None:
    """Exit code 1, no traceback, a one-line error naming `words`."""
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr
    errors = [line for line in run.stderr.splitlines() if "failed" in line.lower() or "error" in line.lower()]
    assert errors, run.stderr
    for word in words:
        assert word.lower() in run.stderr.lower(), (word, run.stderr)


def _assert_nothing_deployed(app: Path, deployment: str = "v2") -> None:
    assert not (app / deployment).exists()
    assert not (app / ".tether" / "deployments" / f"{deployment}.json").exists()
    staging = app / ".tether" / "staging"
    assert not staging.exists() or os.listdir(staging) == []


def _build_deep(parent: Path | str, depth: int, name: str = "d") -> None:
    """`depth` nested directories `name` below `parent`, with a file at the bottom (paths beyond PATH_MAX)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


DEEP_HOOK = """#!{python}
import os
if os.environ["DEPLOYMENT_NAME"] in {names!r}:
    fd = os.open(os.environ["DEPLOYMENT_PATH"], os.O_RDONLY)
    for _ in range({depth}):
        os.mkdir("deep", dir_fd=fd)
        child = os.open("deep", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    raise SystemExit({code})
"""


def _deep_hook(names: tuple[str, ...], depth: int, code: int = 0) -> str:
    return DEEP_HOOK.format(python=sys.executable, names=names, depth=depth, code=code)


# ---------------------------------------------------------------- item 7: deep trees


def test_an_artifact_1500_levels_deep_is_refused_naming_max_depth(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    deep = "site/" + "d/" * 1499 + "f"
    artifact = support.tar_bytes([support.Member("site/index.html", b"x"), support.Member(deep, b"deep")])

    run = _deploy(node, http, app, "v2", artifact)

    _assert_one_line_refusal(run, "maxDepth", "levels deep")
    assert "maxDepth" in _status_error(node)
    _assert_nothing_deployed(app)


def test_max_depth_is_a_limit_of_the_manifest_that_refuses_deeper_and_admits_shallower_artifacts(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    four = support.tar_bytes([support.Member("site/a/b/f", b"4")])
    five = support.tar_bytes([support.Member("site/a/b/c/f", b"5")])
    zip_five = support.zip_bytes([support.Member("site/a/b/c/f", b"5")])

    assert _deploy(node, http, app, "v1", four, source={"limits": {"maxDepth": 4}}).returncode == 0
    _assert_one_line_refusal(_deploy(node, http, app, "v2", five, source={"limits": {"maxDepth": 4}}), "maxDepth 4")
    _assert_one_line_refusal(_deploy(node, http, app, "v3", zip_five, source={"limits": {"maxDepth": 4}}),
                             "maxDepth 4")
    assert os.readlink(app / "current") == str(app / "v1")
    assert _deploy(node, http, app, "v4", support.tar_bytes([support.Member("site/" + "d/" * 298 + "f", b"x")]),
                   source={"limits": {"maxDepth": 400}}).returncode == 0
    assert os.readlink(app / "current") == str(app / "v4")


def test_a_tree_3000_levels_deep_made_by_an_after_deploy_hook_deploys_verifies_lets_newer_ones_land_and_is_pruned(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    hooks = {"afterDeploy": _deep_hook(("v1",), 3000)}

    first = _deploy(node, http, app, "v1", support.tar_bytes(support.site("1")), hooks=hooks)
    assert first.returncode == 0, first.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    digests = json.loads((app / ".tether" / "digests" / "v1.json").read_text())["entries"]
    assert "deep/" * 2999 + "deep/bottom" in digests
    verify = node.tether("verify", NAME)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    for version in ("v2", "v3"):
        run = _deploy(node, http, app, version, support.tar_bytes(support.site(version)), hooks=hooks)
        assert run.returncode == 0, run.stderr
        assert os.readlink(app / "current") == str(app / version)
    prune = node.tether("prune", NAME, "--keep", "1")

    assert prune.returncode == 0, prune.stderr
    assert not (app / "v1").exists()
    assert os.listdir(app / ".tether" / "staging") == []
    assert sorted(p for p in os.listdir(app) if p.startswith("v")) == ["v2", "v3"]


def test_an_incomplete_deployment_3000_levels_deep_is_removed_and_a_newer_deployment_lands(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    assert _deploy(node, http, app, "v1", support.tar_bytes(support.site("1"))).returncode == 0
    failing = {"afterDeploy": _deep_hook(("v2",), 3000, code=1)}

    assert _deploy(node, http, app, "v2", support.tar_bytes(support.site("2")), hooks=failing).returncode == 1
    assert (app / "v2" / "deep").is_dir()
    again = node.tether("reconcile")  # cleans the incomplete v2, deploys it again, the hook fails again
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    assert "RecursionError" not in again.stderr and "RecursionError" not in _status_error(node)
    newer = _deploy(node, http, app, "v3", support.tar_bytes(support.site("3")))

    assert newer.returncode == 0, newer.stderr
    assert os.readlink(app / "current") == str(app / "v3")
    assert not (app / "v2").exists()
    assert os.listdir(app / ".tether" / "staging") == []


def test_leftovers_5000_levels_deep_in_staging_are_removed_by_the_next_pass_without_following_symlinks(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    assert _deploy(node, http, app, "v1", support.tar_bytes(support.site("1"))).returncode == 0
    outside = node.root / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not tether's")
    staging = app / ".tether" / "staging"
    for leftover in ("v2-killed", "pruned-v0-1234"):
        (staging / leftover).mkdir()
        _build_deep(staging / leftover, 5000)
        os.symlink(outside, staging / leftover / "link-out")
    os.symlink(outside, staging / "a-link")

    run = _measured(node, "reconcile")

    assert run.returncode == 0, run.stderr
    assert os.listdir(staging) == []
    assert (outside / "keep").read_text() == "not tether's"
    assert os.readlink(app / "current") == str(app / "v1")
