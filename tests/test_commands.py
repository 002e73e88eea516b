"""Imperative commands without a daemon: they do the pass themselves, under the application's lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests import support


def three_versions(node: support.Node, http: support.HttpServer) -> Path:
    app = node.apps / "site"
    for version in ("1", "2", "3"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    assert node.tether("reconcile").returncode == 0
    return app


def test_deploy_sets_the_desired_deployment_and_sends_its_header_only_for_that_deploy(
        node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)

    run = node.tether("deploy", "site", "--deployment", "v2", "--header", "JOB-TOKEN: short-lived-token")

    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v2")
    assert http.requests[-1][1].get("JOB-TOKEN") == "short-lived-token"
    for root in (node.state, app):
        for file in support.walk_files(root):
            assert b"short-lived-token" not in file.read_bytes(), file
    again = node.tether("reconcile")
    assert again.returncode == 0 and os.readlink(app / "current") == str(app / "v2")


def test_a_deploy_holds_until_the_manifest_changes(node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)
    assert node.tether("deploy", "site", "--deployment", "v3").returncode == 0
    assert os.readlink(app / "current") == str(app / "v3")

    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v2", source={"url": http.url("/{deployment}.tar.gz")}))
    assert node.tether("reconcile").returncode == 0

    assert os.readlink(app / "current") == str(app / "v2")


def test_rollback_and_activate_pin_existing_deployments(node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)
    assert node.tether("deploy", "site", "--deployment", "v2").returncode == 0

    assert node.tether("rollback", "site").returncode == 0
    assert os.readlink(app / "current") == str(app / "v1")
    assert node.tether("activate", "site", "v2").returncode == 0
    assert os.readlink(app / "current") == str(app / "v2")
    refused = node.tether("activate", "site", "v9")
    assert refused.returncode == 2 and "no complete deployment v9" in refused.stderr


def test_remove_refuses_the_active_deployment_and_prune_keeps_what_it_must(
        node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)
    node.tether("deploy", "site", "--deployment", "v2")
    node.tether("deploy", "site", "--deployment", "v3")

    refused = node.tether("remove", "site", "v3")
    assert refused.returncode == 2 and "activate another one first" in refused.stderr
    assert node.tether("prune", "site", "--keep", "1").returncode == 0
    assert sorted(p.name for p in app.iterdir() if p.name.startswith("v")) == ["v2", "v3"]
    assert node.tether("remove", "site", "v2").returncode == 0
    assert sorted(p.name for p in app.iterdir() if p.name.startswith("v")) == ["v3"]


def test_a_suspended_application_is_left_alone_until_resumed(node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)
    assert node.tether("suspend", "site").returncode == 0
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v2", source={"url": http.url("/{deployment}.tar.gz")}))

    node.tether("reconcile")
    assert os.readlink(app / "current") == str(app / "v1")
    reason = {c["type"]: c for c in json.loads(node.tether("status", "site", "--json").stdout)["conditions"]}
    assert reason["Ready"]["reason"] == "Suspended"

    assert node.tether("resume", "site").returncode == 0
    assert node.tether("reconcile").returncode == 0
    assert os.readlink(app / "current") == str(app / "v2")


def test_deploy_reads_headers_from_stdin_so_no_secret_is_on_its_command_line(
        node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)

    run = node.tether("deploy", "site", "--deployment", "v2", "--headers-from-stdin",
                      input="JOB-TOKEN: token-from-stdin\n\nX-Trace: 7\n")

    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v2")
    assert {k: http.requests[-1][1].get(k) for k in ("JOB-TOKEN", "X-Trace")} == {
        "JOB-TOKEN": "token-from-stdin", "X-Trace": "7"}


def test_a_malformed_header_is_refused_without_showing_its_text(node: support.Node, http: support.HttpServer) -> None:
    three_versions(node, http)
    for args, stdin in ((["--header", ": s3cret-value"], None), (["--header", "s3cret-value"], None),
                        (["--headers-from-stdin"], "JOB-TOKEN: fine\nBad Name: s3cret-value\n")):
        run = node.tether("deploy", "site", "--deployment", "v2", "--json", *args, input=stdin)

        assert run.returncode == 2 and "must look like 'Name: value'" in run.stderr, run.stderr
        assert "s3cret" not in run.stdout + run.stderr


def test_deploy_refuses_bad_input_before_changing_anything(node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)
    before = support.snapshot(app)
    for args, words in ((["--deployment", "../x"], "not a valid deployment name"),
                        (["--deployment", "v2", "--url", "ftp://x"], "--url must be"),
                        (["--deployment", "v2", "--sha256", "abc"], "64 hexadecimal"),
                        (["--deployment", "v2", "--header", "no colon"], "--header number 1 must look like")):
        run = node.tether("deploy", "site", *args)
        assert run.returncode == 2 and words in run.stderr, (args, run.stderr)
    assert support.snapshot(app) == before


def test_imperative_commands_print_their_outcome_and_the_status_as_json(
        node: support.Node, http: support.HttpServer) -> None:
    app = three_versions(node, http)

    deployed = node.tether("deploy", "site", "--deployment", "v2", "--wait", "--json")
    rolled_back = node.tether("rollback", "site", "--json")
    failed = node.tether("deploy", "site", "--deployment", "v9", "--wait", "--json")
    refused = node.tether("activate", "site", "v9", "--json")

    assert deployed.returncode == 0, deployed.stderr
    answer = json.loads(deployed.stdout)
    assert (answer["name"], answer["ok"], answer["message"]) == ("site", True, "converged")
    assert (answer["status"]["current"], answer["status"]["desired"]) == ("v2", "v2")
    answer = json.loads(rolled_back.stdout)
    assert answer["ok"] and answer["status"]["current"] == "v1"
    assert os.readlink(app / "current") == str(app / "v1")
    assert failed.returncode == 1
    answer = json.loads(failed.stdout)
    assert not answer["ok"] and "404" in answer["message"] and answer["status"]["current"] == "v1"
    assert refused.returncode == 2
    assert json.loads(refused.stdout) == {"ok": False, "error": refused.stderr.removeprefix("tether: ").strip()}
