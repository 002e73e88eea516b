"""Deploys from git sources through the real command line: real repositories made here, served by file:// and by
`git http-backend` on loopback; tags, annotated tags, branches, commit ids, subdirectories, signatures, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import prometheus_client.parser
import pytest

from controller.artifacts import fetching
from controller.daemon import metrics
from controller.engine import reconciling
from controller.engine import status as status_module
from controller.manifests import loading, model
from tests import git_repos, support


@pytest.fixture
def repo(tmp_path: Path) -> git_repos.Repo:
    made = git_repos.Repo(tmp_path / "served" / "site")
    made.commit({"index.html": "<h1>v1</h1>\n", "dist/app.js": "one\n"})
    made.tag("v1")
    made.commit({"index.html": "<h1>v2</h1>\n", "dist/app.js": "two\n"})
    made.tag("v2", annotated=True)
    return made


@pytest.fixture
def server(tmp_path: Path) -> Iterator[git_repos.GitHttpServer]:
    (tmp_path / "served").mkdir(exist_ok=True)
    made = git_repos.GitHttpServer(tmp_path / "served")
    yield made
    made.close()


def deploy(node: support.Node, deployment: str, git: dict[str, Any], name: str = "site",
           **spec: Any) -> subprocess.CompletedProcess[str]:
    support.write_manifest(node.manifests, support.application(
        name, node.apps / name, deployment=deployment, source={"git": git}, **spec))
    return node.tether("reconcile")


def record(node: support.Node, deployment: str, name: str = "site") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((node.apps / name / ".tether" / "deployments" / f"{deployment}.json").read_text())
    return loaded


def test_a_light_tag_from_a_file_url_is_deployed_and_its_commit_recorded_in_list_and_status(
        node: support.Node, repo: git_repos.Repo) -> None:
    run = deploy(node, "v1", {"url": repo.url})

    assert run.returncode == 0, run.stderr
    app = node.apps / "site"
    assert os.readlink(app / "current") == str(app / "v1")
    assert (app / "current" / "index.html").read_text() == "<h1>v1</h1>\n"
    assert (app / "current" / "dist" / "app.js").read_text() == "one\n"
    assert not (app / "current" / ".git").exists()
    assert record(node, "v1")["revision"] == repo.head("v1")
    listed = json.loads(node.tether("list", "site", "--json").stdout)
    assert [(row["name"], row["revision"]) for row in listed] == [("v1", repo.head("v1"))]
    assert repo.head("v1") in node.tether("list", "site").stdout
    shown = json.loads(node.tether("status", "site", "--json").stdout)
    assert shown["revision"] == repo.head("v1") and shown["current"] == "v1"
    assert (node.state / "git" / "site.git" / "HEAD").is_file()


def test_an_annotated_tag_over_http_backend_is_deployed_as_the_commit_it_points_to(
        node: support.Node, repo: git_repos.Repo, server: git_repos.GitHttpServer) -> None:
    run = deploy(node, "v2", {"url": server.url("site")})

    assert run.returncode == 0, run.stderr
    assert (node.apps / "site" / "current" / "index.html").read_text() == "<h1>v2</h1>\n"
    assert record(node, "v2")["revision"] == repo.head("v2")
    assert server.requests


def test_the_revision_is_in_the_metrics_and_empty_for_a_deployment_without_one(
        node: support.Node, repo: git_repos.Repo) -> None:
    assert deploy(node, "v1", {"url": repo.url}).returncode == 0
    document = json.loads((node.state / "status" / "site.json").read_text())
    older = {**document, "name": "old"}
    del older["revision"]
    registry = metrics.registry(metrics.Collector(lambda: [document, older], lambda: ([], 0), metrics.Observations()))
    text = prometheus_client.generate_latest(registry).decode()
    found = {sample.labels["name"]: sample.labels["revision"]
             for family in prometheus_client.parser.text_string_to_metric_families(text)
             if family.name == "tether_application_info" for sample in family.samples}
    assert found == {"site": repo.head("v1"), "old": ""}


def test_a_branch_is_recorded_as_a_commit_and_moves_only_when_the_manifest_names_a_new_deployment(
        node: support.Node, repo: git_repos.Repo, server: git_repos.GitHttpServer) -> None:
    first = repo.head("main")
    assert deploy(node, "build-1", {"url": server.url("site"), "ref": "main"}).returncode == 0
    repo.commit({"index.html": "<h1>v3</h1>\n"})

    again = node.tether("reconcile")  # the same manifest: the branch moved, the desired state did not

    assert again.returncode == 0, again.stderr
    assert record(node, "build-1")["revision"] == first
    assert (node.apps / "site" / "current" / "index.html").read_text() == "<h1>v2</h1>\n"
    assert deploy(node, "build-2", {"url": server.url("site"), "ref": "main"}).returncode == 0
    assert record(node, "build-2")["revision"] == repo.head("main") != first
    assert (node.apps / "site" / "current" / "index.html").read_text() == "<h1>v3</h1>\n"


def test_a_full_commit_id_and_a_subdirectory_deploy_that_commit_s_subtree(
        node: support.Node, repo: git_repos.Repo) -> None:
    commit = repo.head("v1")
    run = deploy(node, "r1", {"url": repo.url, "ref": commit, "subdirectory": "dist"})

    assert run.returncode == 0, run.stderr
    current = node.apps / "site" / "current"
    assert sorted(os.listdir(current)) == ["app.js"]
    assert (current / "app.js").read_text() == "one\n"
    assert record(node, "r1")["revision"] == commit


def test_a_missing_ref_or_subdirectory_is_a_permanent_error_that_leaves_the_tree_as_it_was(
        node: support.Node, repo: git_repos.Repo) -> None:
    assert deploy(node, "v1", {"url": repo.url}).returncode == 0
    before = support.snapshot(node.apps / "site" / "v1")

    for git, words in (({"url": repo.url, "ref": "v9"}, "has no tag, branch or commit v9"),
                       ({"url": repo.url, "ref": "v2", "subdirectory": "nope"}, "has no directory nope"),
                       ({"url": repo.url, "ref": "--upload-pack=touch /tmp/x"}, "not a valid tag")):
        run = deploy(node, "v2", git)
        assert run.returncode != 0
        assert words in run.stderr
        assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
        assert not (node.apps / "site" / "v2").exists()
        assert support.snapshot(node.apps / "site" / "v1") == before
        shown = json.loads(node.tether("status", "site", "--json").stdout)
        assert {c["type"]: c["status"] for c in shown["conditions"]}["Stalled"] == "True"


def test_a_tag_already_in_the_mirror_deploys_with_the_server_gone(
        node: support.Node, repo: git_repos.Repo, server: git_repos.GitHttpServer) -> None:
    assert deploy(node, "v1", {"url": server.url("site")}).returncode == 0
    assert deploy(node, "v2", {"url": server.url("site")}).returncode == 0
    server.close()
    shutil.rmtree(node.apps / "site")

    run = deploy(node, "v1", {"url": server.url("site")})

    assert run.returncode == 0, run.stderr
    assert "from the local mirror" in run.stderr
    assert (node.apps / "site" / "current" / "index.html").read_text() == "<h1>v1</h1>\n"
    assert record(node, "v1")["revision"] == repo.head("v1")


def test_a_ref_not_in_the_mirror_with_the_server_gone_is_a_temporary_error_retried_by_the_fetcher(
        node: support.Node, repo: git_repos.Repo, server: git_repos.GitHttpServer) -> None:
    assert deploy(node, "v1", {"url": server.url("site")}).returncode == 0
    repo.tag("v3")
    server.close()
    manifest = support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v3", source={"git": {"url": server.url("site")}}))
    app = loading.parse(str(manifest), manifest.read_text())
    assert isinstance(app, model.Application)
    waits: list[float] = []
    engine = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(attempts=3, sleep=waits.append))

    result = engine.reconcile(app)

    assert not result.ok and not result.permanent
    assert len(waits) == 2  # three attempts
    assert "127.0.0.1" in (result.error or "")
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
    assert not (node.apps / "site" / "v3").exists()


def test_status_documents_of_older_versions_without_a_revision_read_as_none() -> None:
    from controller.tree import records
    old = records._deployment("v1", {"state": "complete", "createdAt": 1.0}, has_dir=True)
    assert old.revision is None
    assert status_module.deployments(records.Observed("/x", True, "v1", "/x/v1", None, {"v1": old}, "v1", (), ())
                                     )[0]["revision"] is None


def test_repair_restores_drifted_files_of_a_git_deployment_from_the_mirror_with_the_server_gone(
        node: support.Node, repo: git_repos.Repo, server: git_repos.GitHttpServer) -> None:
    assert deploy(node, "v1", {"url": server.url("site")}).returncode == 0
    current = node.apps / "site" / "current"
    before = support.snapshot(node.apps / "site" / "v1")
    server.close()
    (current / "index.html").write_text("defaced\n")
    (current / "dist" / "app.js").unlink()
    (current / "added.php").write_text("<?php evil();\n")

    run = node.tether("repair", "site")

    assert run.returncode == 0, run.stderr
    assert support.snapshot(node.apps / "site" / "v1") == before
    assert not (node.state / "cache" / "site").exists() or not os.listdir(node.state / "cache" / "site")


def test_tether_deploy_with_a_url_replaces_a_git_source_for_that_deployment_only() -> None:
    from controller.manifests import overrides
    app = loading.parse("/etc/tether/manifests/site.yaml", "apiVersion: tether/v1\nkind: Application\n"
                        "metadata: {name: site}\nspec: {path: /srv/site, source: {git: {url: 'https://h/a.git'}}}\n")
    assert isinstance(app, model.Application) and app.source is not None and app.source.git is not None
    override = overrides.Override(deployment="hotfix", url="https://h/hotfix.tar.gz", generation=app.generation)
    changed = overrides.effective(app, override)
    assert changed.source is not None and changed.source.git is None
    assert changed.source.url == "https://h/hotfix.tar.gz"
    kept = overrides.effective(app, overrides.Override(deployment="v2", generation=app.generation))
    assert kept.source == app.source


def test_a_branch_or_tag_the_server_no_longer_has_is_refused_not_deployed_from_the_mirror_s_stale_copy(
        node: support.Node, repo: git_repos.Repo, tmp_path: Path) -> None:
    git_repos.git(repo.path, "branch", "feature", "v1")
    assert deploy(node, "one", {"url": repo.url, "ref": "feature"}).returncode == 0
    assert deploy(node, "tagged", {"url": repo.url, "ref": "v1"}).returncode == 0
    git_repos.git(repo.path, "branch", "-D", "feature")  # withdrawn on the server (a bad build, say)
    git_repos.git(repo.path, "tag", "-d", "v1")
    before = support.snapshot(node.apps / "site")

    for deployment, ref in (("two", "feature"), ("again", "v1")):
        run = deploy(node, deployment, {"url": repo.url, "ref": ref})

        assert run.returncode != 0, (ref, run.stderr)
        assert ref in run.stderr, run.stderr
        assert support.snapshot(node.apps / "site") == before, ref
