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


# ---------------------------------------------------------------- manifests


HEAD = "apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: site\n"
SPEC = "spec:\n  path: /opt/site\n  deployment: v1\n  source: {url: 'https://example.com/a.tar.gz'}\n"
NASTY = {
    "integer keys": HEAD + "  labels: {1: 2, true: x}\n" + SPEC,
    "a date label": HEAD + "  labels: {team: 2024-01-01}\n" + SPEC,
    "a binary value": HEAD + "  labels: {team: !!binary aGVsbG8=}\n" + SPEC,
    "a set": HEAD + SPEC + "  hooks: !!set {a, b}\n",
    "a float key in spec": HEAD + SPEC + "  1.5: x\n",
    "a null key": HEAD + SPEC + "  ~: x\n",
    "nan and inf": HEAD + SPEC + "  hookTimeoutSeconds: .nan\n  retention: {keep: .inf}\n",
    "a huge integer": HEAD + SPEC + "  hookTimeoutSeconds: " + "9" * 5000 + "\n",
    "a complex key": HEAD + SPEC + "  ? [a, b]\n  : x\n",
    "a merge key": HEAD + "base: &b {path: /opt/x}\n" + "spec:\n  <<: *b\n  deployment: v1\n",
    "a python tag": HEAD + SPEC + "  user: !!python/name:os.system\n",
    "a BOM": "\ufeff" + HEAD + SPEC,
    "tabs": HEAD.replace("  name", "\tname") + SPEC,
    "a very long line": HEAD + SPEC + "  environment: " + "x" * 900_000 + "\n",
    "a billion laughs": "a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                        "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
                        "g: [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]\n" + HEAD + SPEC,
    "deep flow nesting": HEAD + SPEC + "  labels: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "deep block nesting": HEAD + SPEC + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(2000)),
    "an anchor cycle in labels": HEAD + "  labels: &l {a: *l}\n" + SPEC,
}


def test_nasty_yaml_is_refused_by_validate_with_one_line_and_no_traceback(node: support.Node) -> None:
    failures = []
    for what, text in NASTY.items():
        file = node.manifests / "site.yaml"  # below the test's own directory, from a file that fails at once
        file.write_text(text.replace("/opt/site", str(node.apps / "site")).replace(
            "https://example.com/a.tar.gz", f"file://{node.root}/missing.tar.gz"), encoding="utf-8")
        run = node.tether("validate", str(node.manifests), timeout=60)
        output = run.stdout + run.stderr
        if run.returncode not in (0, 2) or "Traceback" in output or len(output) > 4000:
            failures.append((what, run.returncode, output[-1500:]))
        if run.returncode != 0:
            continue
        run = node.tether("reconcile", timeout=60)  # what validate accepts, a pass must handle
        output = run.stdout + run.stderr
        if "Traceback" in output:
            failures.append((what, "reconcile", output[-1500:]))
    assert not failures, failures


def test_a_manifest_named_on_the_command_line_that_is_a_fifo_does_not_hang_validate(node: support.Node) -> None:
    fifo = node.root / "site.yaml"
    os.mkfifo(fifo)

    run = node.tether("validate", str(fifo), timeout=30)

    _one_line_failure(run, "site.yaml")


# ---------------------------------------------------------------- a hostile HTTP server


def _fetch_from(node: support.Node, http: support.HttpServer, *replies: support.Reply, **source: Any) -> str:
    app = node.apps / "site"
    url = http.serve("/v1.tar.gz", *replies)
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": url, **source}))
    run = node.tether("reconcile", timeout=60)
    return _one_line_failure(run)


def test_a_redirect_to_an_invalid_port_or_host_is_a_one_line_refusal(node: support.Node,
                                                                    http: support.HttpServer) -> None:
    for location in ("http://127.0.0.1:99999/x", "http://127.0.0.1:port/x", "http://[::1/x",
                     "//[zz]:1/x"):
        output = _fetch_from(node, http, support.Reply(302, headers={"Location": location}))
        assert "redirect" in output or "cannot download" in output or "host" in output, (location, output)


def test_a_redirect_to_another_port_of_the_same_host_does_not_carry_the_secret_header(
        node: support.Node, http: support.HttpServer) -> None:
    other = support.HttpServer()
    try:
        other.serve("/v1.tar.gz", support.tiny_artifact())
        app = node.apps / "site"
        http.serve("/v1.tar.gz", support.Reply(302, headers={"Location": other.url("/v1.tar.gz", host="localhost")}))
        support.write_manifest(node.manifests, support.application(
            "site", app, deployment="v1", source={"url": http.url("/v1.tar.gz"),
                                                   "headers": {"JOB-TOKEN": "s3cr3t-value"}}))

        run = node.tether("reconcile", timeout=60)

        assert run.returncode == 0, run.stdout + run.stderr
        assert http.requests[0][1].get("JOB-TOKEN") == "s3cr3t-value"
        assert all("s3cr3t-value" not in json.dumps(headers) for _, headers in other.requests)
    finally:
        other.close()


def test_a_manifest_url_with_a_port_out_of_range_is_refused_in_one_line(node: support.Node) -> None:
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": "http://127.0.0.1:99999/{deployment}.tar.gz"}))

    for command in ("validate", "reconcile"):
        run = node.tether(command, *([str(node.manifests)] if command == "validate" else []), timeout=60)
        _one_line_failure(run)


# ---------------------------------------------------------------- .mtree from the artifact


def _with_mtree(node: support.Node, http: support.HttpServer, mtree: str | bytes) -> subprocess.CompletedProcess[str]:
    data = mtree.encode() if isinstance(mtree, str) else mtree
    http.serve("/v1.tar.gz", support.tar_bytes([*support.site("1"), support.Member("site/.mtree", data)]))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    return node.tether("reconcile", timeout=120)


def test_an_mtree_nested_thousands_of_levels_deep_is_refused_or_applied_without_a_traceback(
        node: support.Node, http: support.HttpServer) -> None:
    depth = 3000
    text = "/set type=dir mode=0755\n.\n" + "".join(f"d{i}\n" for i in range(depth)) + "..\n" * (depth + 1)

    run = _with_mtree(node, http, text)

    assert "Traceback" not in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]


def test_mtree_escapes_that_decode_to_a_slash_dot_dot_or_nul_are_refused(node: support.Node,
                                                                         http: support.HttpServer) -> None:
    for name in (r"a\057..\057..\057..\057etc", r"\056\056", r"x\000y", r"\057etc", r"a\134"):
        run = _with_mtree(node, http, f"/set type=file mode=0644\n.\n{name}\n..\n")
        _one_line_failure(run)
        assert not (node.apps / "etc").exists()


# ---------------------------------------------------------------- hostile archive members


M = support.Member
TARS = {
    "a hardlink to an earlier symlink": [M("s/", type="dir"), M("s/l", type="symlink", target="x"),
                                         M("s/h", type="hardlink", target="s/l")],
    "a directory over an earlier symlink": [M("s/", type="dir"), M("s/l", type="symlink", target="."),
                                            M("s/l/", type="dir"), M("s/l/x", b"x")],
    "a file below an earlier file": [M("s/", type="dir"), M("s/a", b"a"), M("s/a/b", b"b")],
    "a hardlink to itself": [M("s/", type="dir"), M("s/h", type="hardlink", target="s/h")],
    "a hardlink to a directory": [M("s/", type="dir"), M("s/d/", type="dir"), M("s/h", type="hardlink", target="s/d")],
    "a hardlink outside": [M("s/", type="dir"), M("s/h", type="hardlink", target="../../etc/passwd")],
    "a hardlink with an absolute target": [M("s/", type="dir"), M("s/h", type="hardlink", target="/etc/passwd")],
    "a symlink chain out": [M("s/", type="dir"), M("s/a", type="symlink", target="b/../.."),
                            M("s/b", type="symlink", target=".")],
    "a symlink to itself": [M("s/", type="dir"), M("s/a", type="symlink", target="a")],
    "a symlink with a long target": [M("s/", type="dir"), M("s/a", type="symlink", target="x/" * 3000)],
    "a device": [M("s/", type="dir"), M("s/dev", type="chr")],
    "a fifo": [M("s/", type="dir"), M("s/fifo", type="fifo")],
    "a setuid file": [M("s/", type="dir"), M("s/su", b"#!/bin/sh\n", mode=0o4755)],
    "a name of many long components": [M("s/", type="dir"), M("s/" + "/".join(["d" * 250] * 20), b"x")],
    "only a root directory": [M("./", type="dir")],
    "an empty name": [M("", b"x")],
    "a .mtree that is a symlink": [*support.site(), M("site/.mtree", type="symlink", target="index.html")],
    "a .mtree that is a directory": [*support.site(), M("site/.mtree/", type="dir")],
}
ZIPS = {
    "a zip symlink to an absolute path": [M("s/l", type="symlink", target="/etc")],
    "a zip member with dot dot": [M("s/../../x", b"x")],
    "a zip with the same name twice": [M("s/a", b"1"), M("s/a", b"2")],
    "a zip with a file and a directory of one name": [M("s/a", b"1"), M("s/a/", type="dir")],
    "a zip file below its own symlink": [M("s/l", type="symlink", target="."), M("s/l/x", b"x")],
}


def test_hostile_archive_members_are_refused_in_one_line_and_nothing_lands_outside(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    cases = [*TARS.items(), *ZIPS.items()]
    for index, (what, members) in enumerate(cases):
        body = support.zip_bytes(members) if what.startswith("a zip") else support.tar_bytes(members)
        support.write_manifest(node.manifests, support.application(
            f"a{index}", node.apps / f"a{index}", deployment="v1", source={"url": http.serve(f"/{index}", body)}))

    run = node.tether("reconcile", timeout=300)  # every case in one pass, one line each

    output = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in output, output[-3000:]
    lines = {line.split(":")[0]: line for line in run.stdout.splitlines()}
    assert len(lines) == len(cases), run.stdout
    for found in support.walk_files(node.apps):
        assert not found.lstat().st_mode & 0o6000, f"{found} is setuid or setgid"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apps", "manifests", "state"]


def test_current_pointing_outside_path_is_replaced_and_its_target_left_alone(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    app, outside = node.apps / "site", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    _deployed(node, http, app)
    (app / "current").unlink()
    (app / "current").symlink_to(outside)

    run = node.tether("reconcile", timeout=60)

    assert run.returncode == 0, run.stdout + run.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    assert sorted(os.listdir(outside)) == ["keep.txt"]


def test_a_status_file_that_is_a_fifo_or_garbage_does_not_hang_or_break_status(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deployed(node, http, app)
    status_file = node.state / "status" / "site.json"
    status_file.unlink()
    os.mkfifo(status_file)
    (node.state / "status" / "other.json").write_bytes(b"\xff[[[")

    for command in (("status",), ("status", "site", "--json"), ("reconcile",)):
        run = node.tether(*command, timeout=30)
        assert "Traceback" not in run.stdout + run.stderr, (command, run.stdout + run.stderr)
