"""source.git.verify: ssh-signed tags and commits with keys from ssh-keygen, a gpg-signed tag when gpg exists;
unsigned, unknown-key and bad signatures refused before any file is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import git_repos, support


def deploy(node: support.Node, deployment: str, git: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment=deployment, source={"git": git}))
    return node.tether("reconcile")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "keys").mkdir()
    trusted, trusted_public = git_repos.ssh_key(tmp_path / "keys", "release")
    stranger, _ = git_repos.ssh_key(tmp_path / "keys", "stranger")
    signers = git_repos.allowed_signers(tmp_path / "keys" / "allowed_signers", trusted_public)
    return {"trusted": trusted, "stranger": stranger, "signers": signers}


@pytest.fixture
def repo(tmp_path: Path, keys: dict[str, Any]) -> git_repos.Repo:
    made = git_repos.Repo(tmp_path / "src")
    made.commit({"index.html": "signed\n"})
    made.tag("v1", sign_key=keys["trusted"])
    made.tag("plain", annotated=True)
    made.tag("light")
    made.tag("foreign", sign_key=keys["stranger"])
    return made


def forged_tag(repo: git_repos.Repo, name: str, source: str) -> None:
    """A tag object with `source`'s signature over a changed message: a bad signature."""
    body = git_repos.git(repo.path, "cat-file", "tag", source)
    changed = body.replace(f"\ntag {source}\n", f"\ntag {name}\n", 1).replace(f"\n\n{source}\n", "\n\nforged\n", 1)
    assert changed.count("forged") == 2 and "BEGIN SSH SIGNATURE" in changed
    obj = git_repos.git(repo.path, "hash-object", "-t", "tag", "-w", "--stdin", input=(changed + "\n").encode())
    git_repos.git(repo.path, "update-ref", f"refs/tags/{name}", obj)


def test_a_tag_signed_with_a_key_from_the_allowed_signers_file_is_deployed(
        node: support.Node, repo: git_repos.Repo, keys: dict[str, Any]) -> None:
    run = deploy(node, "v1", {"url": repo.url, "verify": {"allowedSigners": str(keys["signers"])}})

    assert run.returncode == 0, run.stderr
    assert (node.apps / "site" / "current" / "index.html").read_text() == "signed\n"


def test_unsigned_unknown_key_and_bad_signatures_are_refused_before_any_file_is_written(
        node: support.Node, repo: git_repos.Repo, keys: dict[str, Any]) -> None:
    forged_tag(repo, "forged", "v1")
    verify = {"allowedSigners": str(keys["signers"])}
    assert deploy(node, "v1", {"url": repo.url, "verify": verify}).returncode == 0
    before = support.snapshot(node.apps / "site")

    for ref in ("plain", "light", "foreign", "forged"):
        run = deploy(node, "next", {"url": repo.url, "ref": ref, "verify": verify})

        assert run.returncode != 0, ref
        assert ref in run.stderr and str(keys["signers"]) in run.stderr, run.stderr
        assert support.snapshot(node.apps / "site") == before, ref
        shown = json.loads(node.tether("status", "site", "--json").stdout)
        assert {c["type"]: c["status"] for c in shown["conditions"]}["Stalled"] == "True", ref


def test_a_light_tag_on_a_signed_commit_is_checked_by_the_commit_s_signature(
        node: support.Node, tmp_path: Path, keys: dict[str, Any]) -> None:
    repo = git_repos.Repo(tmp_path / "commits")
    (repo.path / "f").write_text("x\n")
    git_repos.git(repo.path, "add", "f")
    git_repos.git(repo.path, "-c", "gpg.format=ssh", "-c", f"user.signingkey={keys['trusted']}", "commit", "-q",
                  "-S", "-m", "signed")
    repo.tag("good")
    repo.commit({"f": "y\n"})
    repo.tag("unsigned-commit")
    verify = {"allowedSigners": str(keys["signers"])}

    assert deploy(node, "good", {"url": repo.url, "verify": verify}).returncode == 0
    refused = deploy(node, "unsigned-commit", {"url": repo.url, "verify": verify})
    assert refused.returncode != 0 and "is not signed" in refused.stderr
    assert not (node.apps / "site" / "unsigned-commit").exists()


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed (DEBIAN_PACKAGES has it for CI)")
def test_a_gpg_signed_tag_is_accepted_with_its_keyring_and_refused_with_another(
        node: support.Node, tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(home)}

    def gpg(*args: str) -> bytes:
        return subprocess.run(["gpg", "--batch", "--no-tty", "--passphrase", "", "--pinentry-mode", "loopback",
                               *args], check=True, capture_output=True, env={**os.environ, **env}).stdout

    gpg("--quick-gen-key", "Release <release@example.com>", "ed25519", "sign", "never")
    gpg("--quick-gen-key", "Other <other@example.com>", "ed25519", "sign", "never")
    (tmp_path / "release.gpg").write_bytes(gpg("--export", "release@example.com"))
    (tmp_path / "other.gpg").write_bytes(gpg("--export", "other@example.com"))
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"index.html": "gpg\n"})
    git_repos.git(repo.path, "-c", "user.signingkey=release@example.com", "tag", "-s", "-m", "v1", "v1",
                  env={**env, "GNUPGHOME": str(home)})

    good = deploy(node, "v1", {"url": repo.url, "verify": {"gpgKeyring": str(tmp_path / "release.gpg")}})
    assert good.returncode == 0, good.stderr
    shutil.rmtree(node.apps / "site")
    bad = deploy(node, "v1", {"url": repo.url, "verify": {"gpgKeyring": str(tmp_path / "other.gpg")}})
    assert bad.returncode != 0 and str(tmp_path / "other.gpg") in bad.stderr
    assert not (node.apps / "site" / "v1").exists()


def test_a_signed_tag_served_under_another_name_is_refused_so_a_server_cannot_swap_in_an_older_release(
        node: support.Node, repo: git_repos.Repo, keys: dict[str, Any]) -> None:
    verify = {"allowedSigners": str(keys["signers"])}
    repo.commit({"index.html": "new and fixed\n"})
    repo.tag("v2", sign_key=keys["trusted"])
    old = git_repos.git(repo.path, "rev-parse", "refs/tags/v1")
    assert deploy(node, "v2", {"url": repo.url, "verify": verify}).returncode == 0
    before = support.snapshot(node.apps / "site")
    # The server (or whoever took it over) moves v2, and makes up v3, to v1's signed tag object: a good
    # signature by the trusted key, over a tag that says it is v1.
    git_repos.git(repo.path, "update-ref", "refs/tags/v2", old)
    git_repos.git(repo.path, "update-ref", "refs/tags/v3", old)

    for ref in ("v2", "v3"):
        run = deploy(node, f"again-{ref}", {"url": repo.url, "ref": ref, "verify": verify})

        assert run.returncode != 0, ref
        assert ref in run.stderr and "v1" in run.stderr and str(keys["signers"]) in run.stderr, run.stderr
        assert support.snapshot(node.apps / "site") == before, ref
