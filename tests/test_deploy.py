"""End-to-end deploys through the real command line, from a real HTTP server on loopback."""

from __future__ import annotations

import json
import os

from tests import support


def test_a_deployment_is_fetched_extracted_and_activated(node: support.Node, http: support.HttpServer) -> None:
    archive = support.tar_bytes(support.site("1"))
    url = http.serve("/site/v1.tar.gz", archive)
    app = node.apps / "site"
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": url.replace("v1", "{deployment}"), "sha256": support.sha256(archive)}))

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    assert (app / "current" / "index.html").read_text() == "<h1>version 1</h1>\n"
    assert os.readlink(app / "v1" / "home.html") == "index.html"
    record = json.loads((app / ".tether" / "deployments" / "v1.json").read_text())
    assert record["state"] == "complete" and record["sha256"] == support.sha256(archive)
    status = json.loads((node.state / "status" / "site.json").read_text())
    assert status["current"] == "v1" and status["desired"] == "v1"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    assert (node.state / "cache" / "site" / "v1.artifact").read_bytes() == archive


def test_a_new_version_switches_current_and_keeps_the_previous_one(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    for version in ("1", "2", "3"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    for version in ("1", "2", "3"):
        support.write_manifest(node.manifests, support.application(
            "site", app, deployment=f"v{version}", retention={"keep": 2},
            source={"url": http.url("/{deployment}.tar.gz")}))
        run = node.tether("reconcile")
        assert run.returncode == 0, run.stderr

    assert os.readlink(app / "current") == str(app / "v3")
    assert sorted(p.name for p in app.iterdir() if not p.name.startswith(".")) == ["current", "v2", "v3"]
    status = json.loads(node.tether("status", "site", "--json").stdout)
    assert status["previous"] == "v2"
    assert sorted(os.listdir(node.state / "cache" / "site")) == ["v2.artifact", "v3.artifact"]


def test_a_second_pass_changes_nothing(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    url = http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1", source={"url": url}))
    assert node.tether("reconcile").returncode == 0
    before = support.snapshot(app)
    requests = len(http.requests)

    run = node.tether("reconcile")

    assert run.returncode == 0
    assert support.snapshot(app) == before
    assert len(http.requests) == requests
    assert "nothing to do" in node.tether("plan").stdout


def test_a_current_that_is_not_a_symlink_is_left_alone_with_advice(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    app.mkdir()
    (app / "current").write_text("an operator's notes\n")
    url = http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1", source={"url": url}))

    run = node.tether("reconcile")

    assert run.returncode == 1
    assert "current is not a symlink; move it away" in run.stdout + run.stderr
    assert (app / "current").read_text() == "an operator's notes\n"
