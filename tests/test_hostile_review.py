"""Hostile neighbours of issue 9's classes, found in review: every failure one clear line, nothing touched outside
`path` and the state dir, no hang.

Everything runs through the real command line as root, on a real filesystem, with a real HTTP server on loopback.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

from tests import support

NOBODY = pwd.getpwnam("nobody")


def _site(node: support.Node, http: support.HttpServer, app: Path, **spec: Any) -> None:
    if "/v1.tar.gz" not in http.routes:
        http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}, **spec))


def _one_line_failure(run: subprocess.CompletedProcess[str], *words: str) -> str:
    output = run.stdout + run.stderr
    assert run.returncode in (1, 2), output
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, (word, output)
    return output


def _deployed(node: support.Node, http: support.HttpServer, app: Path) -> None:
    _site(node, http, app)
    run = node.tether("reconcile")
    assert run.returncode == 0, run.stdout + run.stderr


# ---------------------------------------------------------------- bookkeeping that is not what tether wrote


def test_a_record_that_is_a_fifo_does_not_hang_any_command(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deployed(node, http, app)
    os.mkfifo(app / ".tether" / "deployments" / "v0.json")

    for command in (("reconcile",), ("status", "site", "--json"), ("list", "site"), ("plan",)):
        run = node.tether(*command, timeout=30)
        assert "Traceback" not in run.stdout + run.stderr, (command, run.stdout + run.stderr)


def test_a_record_holding_garbage_json_is_no_traceback(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deployed(node, http, app)
    (app / ".tether" / "deployments" / "v0.json").write_bytes(b"{not json\xff")

    for command in (("reconcile",), ("status", "site", "--json"), ("list", "site"), ("plan",)):
        run = node.tether(*command, timeout=30)
        assert "Traceback" not in run.stdout + run.stderr, (command, run.stdout + run.stderr)


def test_a_record_with_fields_of_the_wrong_type_is_no_traceback(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deployed(node, http, app)
    record = app / ".tether" / "deployments" / "v1.json"
    data = json.loads(record.read_text())
    data.update(links=5, state=["complete"], createdAt="yesterday", completedAt={"a": 1}, sequence="9",
                error=17, activationPending="no")
    record.write_text(json.dumps(data))
    (app / ".tether" / "activation.json").write_text('["v1"]')

    for command in (("reconcile",), ("status", "site", "--json"), ("status",), ("list", "site"), ("plan",)):
        run = node.tether(*command, timeout=30)
        assert "Traceback" not in run.stdout + run.stderr, (command, run.stdout + run.stderr)


def test_a_fifo_planted_as_the_running_hook_record_in_a_user_owned_path_does_not_hang_the_refusal(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    (app / ".tether").mkdir(parents=True)
    os.mkfifo(app / ".tether" / "running-hook.json")
    for directory in (app, app / ".tether"):
        os.chown(directory, NOBODY.pw_uid, NOBODY.pw_gid)
    _site(node, http, app)

    _one_line_failure(node.tether("reconcile", timeout=30), "tether refuses to manage")


def test_a_running_hook_record_is_never_removed_through_a_tether_symlink(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    app, outside = node.apps / "site", tmp_path / "outside"
    outside.mkdir()
    (outside / "running-hook.json").write_text("{}")
    app.mkdir()
    (app / ".tether").symlink_to(outside)
    _site(node, http, app)

    _one_line_failure(node.tether("reconcile", timeout=30), "tether refuses to manage")

    assert (outside / "running-hook.json").read_text() == "{}"


def test_current_that_is_a_directory_is_a_one_line_refusal(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    (app / "current").mkdir(parents=True)
    (app / "current" / "keep.txt").write_text("mine")
    _site(node, http, app)

    _one_line_failure(node.tether("reconcile"), "current")

    assert (app / "current" / "keep.txt").read_text() == "mine"


def test_a_lock_file_that_is_a_symlink_is_a_one_line_error(node: support.Node, http: support.HttpServer,
                                                           tmp_path: Path) -> None:
    app = node.apps / "site"
    _site(node, http, app)
    (node.state / "locks").mkdir(parents=True)
    (node.state / "locks" / "site.lock").symlink_to(tmp_path / "elsewhere")

    _one_line_failure(node.tether("reconcile", timeout=30))

    assert not (tmp_path / "elsewhere").exists()
