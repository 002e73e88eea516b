"""Hostile git sources: submodules pointing elsewhere, symlinks out of the tree, LFS pointers, hooks, huge trees,
manifests that would leak credentials, and the secret of an https source grepped for everywhere tether writes."""

from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller import errors
from controller.artifacts import archives, fetching, git_archive, git_runner, member_writer, members
from controller.engine import reconciling
from controller.manifests import loading
from tests import git_repos, support

LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[git_repos.GitHttpServer]:
    (tmp_path / "served").mkdir()
    made = git_repos.GitHttpServer(tmp_path / "served")
    yield made
    made.close()


def deploy(node: support.Node, deployment: str, git: dict[str, Any], **spec: Any) -> subprocess.CompletedProcess[str]:
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment=deployment, source={"git": git}, **spec))
    return node.tether("reconcile")


def refused_and_untouched(node: support.Node, run: subprocess.CompletedProcess[str], deployment: str,
                          words: str) -> None:
    assert run.returncode != 0
    assert words in run.stderr, run.stderr
    app = node.apps / "site"
    assert not (app / deployment).exists()
    assert not (app / "current").exists() or os.readlink(app / "current") != str(app / deployment)
    assert not list((app / ".tether" / "staging").iterdir()) if (app / ".tether" / "staging").exists() else True


def test_a_submodule_is_skipped_with_a_warning_and_nothing_is_fetched_from_it(
        node: support.Node, tmp_path: Path, server: git_repos.GitHttpServer) -> None:
    other = git_repos.Repo(tmp_path / "served" / "other")
    commit = other.commit({"secret.txt": "from the other repository\n"})
    repo = git_repos.Repo(tmp_path / "served" / "site")
    repo.commit({"index.html": "x\n", ".gitmodules": f'[submodule "lib"]\n\tpath = lib\n\turl = {server.url("other")}\n'})
    git_repos.git(repo.path, "update-index", "--add", "--cacheinfo", f"160000,{commit},lib")
    git_repos.git(repo.path, "commit", "-q", "-m", "submodule")
    repo.tag("v1")

    run = deploy(node, "v1", {"url": server.url("site")})

    assert run.returncode == 0, run.stderr
    assert "submodules" in run.stderr and "'lib'" in run.stderr
    current = node.apps / "site" / "current"
    assert (current / "index.html").read_text() == "x\n"
    assert not (current / "lib").exists() or os.listdir(current / "lib") == []
    assert server.paths and not [path for path in server.paths if "other" in path]


@pytest.mark.parametrize("target", ["../../../../etc/passwd", "/etc/passwd", "inside/../../.."])
def test_a_symlink_out_of_the_tree_is_refused_by_the_extractor(node: support.Node, tmp_path: Path,
                                                               target: str) -> None:
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"index.html": "x\n"})
    os.symlink(target, repo.path / "escape")
    repo.commit({})
    repo.tag("v1")

    refused_and_untouched(node, deploy(node, "v1", {"url": repo.url}), "v1", "escape")


def test_lfs_pointer_files_are_refused_naming_the_path_unless_lfs_is_ignore(node: support.Node,
                                                                            tmp_path: Path) -> None:
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"index.html": "x\n", "assets/video.mp4": LFS_POINTER, "small.txt": "version 1\n"})
    repo.tag("v1")

    refused_and_untouched(node, deploy(node, "v1", {"url": repo.url}), "v1", "'assets/video.mp4'")
    run = deploy(node, "v1", {"url": repo.url, "lfs": "ignore"})
    assert run.returncode == 0, run.stderr
    assert (node.apps / "site" / "current" / "assets" / "video.mp4").read_text() == LFS_POINTER
    assert "LFS pointer" in run.stderr


@pytest.mark.parametrize("others", [0, 3000])
def test_an_lfs_pointer_is_refused_however_long_the_extraction_beside_the_look_takes(
        node: support.Node, tmp_path: Path, others: int) -> None:
    # The look for pointers runs on a thread beside the extraction: it may end before the extraction does (then
    # the next read stops it) or after (then the refusal comes when the thread is joined). Either way: refused.
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"assets/video.mp4": LFS_POINTER, **{f"lib/m{i}.py": f"x = {i}\n" for i in range(others)}})
    repo.tag("v1")

    refused_and_untouched(node, deploy(node, "v1", {"url": repo.url}), "v1", "'assets/video.mp4'")


def test_an_error_of_the_look_that_comes_after_the_extraction_failed_does_not_replace_its_error(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tree has a symlink out of it (permanent); the look fails as a timeout would (temporary), but only once
    # the extraction has reached that symlink: the symlink's error is the one reported.
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"a.txt": "a\n"})
    os.symlink("../../../../etc/passwd", repo.path / "evil")
    repo.commit({})
    repo.tag("v1")
    reached = threading.Event()
    add = member_writer.Writer.add

    def add_noted(self: member_writer.Writer, entry: members.Entry) -> None:
        if entry.name == "evil":
            reached.set()
        add(self, entry)

    def look_that_times_out(*args: object) -> None:
        reached.wait(30)
        raise errors.TemporaryError("git cat-file took longer than 600 s and was stopped; it is retried")

    monkeypatch.setattr(member_writer.Writer, "add", add_noted)
    monkeypatch.setattr(git_archive, "check_lfs", look_that_times_out)
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"git": {"url": repo.url}}))
    retries: list[object] = []
    app = loading.load([str(node.manifests)]).applications["site"]
    result = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(sleep=lambda seconds: None),
                                on_retry=lambda *retry: retries.append(retry)).reconcile(app)

    assert not result.ok and "'evil' would link to" in (result.error or ""), result.error
    assert reached.is_set() and not retries  # permanent: not retried as the look's timeout would be


def test_a_refusal_from_beside_the_extraction_stops_its_reading_at_the_next_read() -> None:
    def refuse() -> None:
        raise errors.ArchiveError("an LFS pointer")

    beside = git_archive._Beside(refuse)
    reader = archives.Hashing(io.BytesIO(b"tar data"), beside.check)
    beside.join()
    with pytest.raises(errors.ArchiveError, match="an LFS pointer"):
        beside.check()
    with pytest.raises(errors.ArchiveError, match="an LFS pointer"):
        reader.read(4)
    assert reader.count == 0


def test_hooks_in_the_source_its_tree_or_the_mirror_are_never_run(node: support.Node, tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    hook = f"#!/bin/sh\ntouch {marker}\n"
    repo = git_repos.Repo(tmp_path / "src")
    names = ("reference-transaction", "post-checkout", "post-merge", "pre-push", "post-receive", "update",
             "pre-receive", "post-update", "push-to-checkout", "fsmonitor-watchman")
    files: dict[str, str | bytes] = {f"hooks/{n}": hook for n in names} | {f".githooks/{n}": hook for n in names}
    repo.commit({"index.html": "x\n", **files})
    repo.tag("v1")
    for name in names:  # armed only now: the test's own commits and tags would run them
        (repo.path / ".git" / "hooks" / name).write_text(hook)
        (repo.path / ".git" / "hooks" / name).chmod(0o755)
        (repo.path / "hooks" / name).chmod(0o755)
    git_repos.git(repo.path, "config", "core.hooksPath", str(repo.path / "hooks"))
    git_repos.git(repo.path, "config", "core.fsmonitor", str(repo.path / "hooks" / "fsmonitor-watchman"))
    assert not marker.exists()

    assert deploy(node, "v1", {"url": repo.url}).returncode == 0
    mirror = node.state / "git" / "site.git"
    for name in names:  # even a hook planted in the mirror itself
        (mirror / "hooks" / name).write_text(hook)
        (mirror / "hooks" / name).chmod(0o755)
    (repo.path / "index.html").write_text("y\n")
    quiet = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
    git_repos.git(repo.path, *quiet, "commit", "-q", "-a", "-m", "v2")
    git_repos.git(repo.path, *quiet, "tag", "v2")  # a new ref: fetching it is a reference transaction
    assert not marker.exists()
    run = deploy(node, "v2", {"url": repo.url})

    assert run.returncode == 0, run.stderr
    assert not marker.exists()
    assert (node.apps / "site" / "current" / "index.html").read_text() == "y\n"


@pytest.mark.parametrize(("limits", "words"), [({"maxMembers": 500}, "limits.maxMembers"),
                                               ({"maxBytes": 100_000}, "limits.maxBytes")])
def test_a_tree_over_the_limits_is_refused_before_it_is_extracted(node: support.Node, tmp_path: Path,
                                                                 limits: dict[str, int], words: str) -> None:
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({f"d{i // 100}/f{i}.txt": f"{i}\n" * 30 for i in range(1000)})
    repo.tag("v1")

    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"git": {"url": repo.url}, "limits": limits}))
    refused_and_untouched(node, node.tether("reconcile"), "v1", words)


@pytest.mark.parametrize(("limits", "words"), [({"maxMembers": 500}, "limits.maxMembers"),
                                               ({"maxBytes": 100_000}, "limits.maxBytes")])
def test_git_archive_never_starts_on_a_tree_over_the_limits(node: support.Node, tmp_path: Path,
                                                            limits: dict[str, int], words: str) -> None:
    # git archive reads the whole tree into memory before its first byte: on a tree bomb, gigabytes. A `git`
    # first on PATH notes each command tether runs and hands it to the real git.
    bin_dir, commands = tmp_path / "bin", tmp_path / "commands"
    bin_dir.mkdir()
    real = shutil.which("git")
    (bin_dir / "git").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {commands}\nexec {real} \"$@\"\n")
    (bin_dir / "git").chmod(0o755)
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({f"d{i // 100}/f{i}.txt": f"{i}\n" * 30 for i in range(1000)})
    repo.tag("v1")

    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"git": {"url": repo.url}, "limits": limits}))
    refused_and_untouched(node, node.tether("reconcile", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}), "v1",
                          words)

    ran = commands.read_text().splitlines()
    assert any(" ls-tree " in f" {line} " for line in ran), ran  # the wrapper saw tether's commands
    assert not any(" archive " in f" {line} " for line in ran), ran


def wrapped_git(tmp_path: Path, archive: str = 'exec "$real" "$@"') -> tuple[dict[str, str], Path]:
    """A `git` first on PATH that notes each command tether runs, runs `archive` (shell) for git archive and hands
    the rest to the real git; the environment for tether, and the file of commands."""
    bin_dir, commands = tmp_path / "bin", tmp_path / "commands"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(
        f"#!/bin/sh\nreal={shutil.which('git')}\nprintf '%s\\n' \"$*\" >> {commands}\n"
        f"for word in \"$@\"; do if [ \"$word\" = archive ]; then {archive}; fi; done\nexec \"$real\" \"$@\"\n")
    (bin_dir / "git").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, commands


def chain(repo: git_repos.Repo, levels: int, leaf: bool) -> str:
    """A commit of `levels` nested directories, with a file at the bottom or none."""
    tree = git_repos.git(repo.path, "mktree", input=b"")
    if leaf:
        blob = git_repos.git(repo.path, "hash-object", "-w", "--stdin", input=b"deep\n")
        tree = git_repos.git(repo.path, "mktree", input=f"100644 blob {blob}\tf\n".encode())
    for _ in range(levels):
        tree = git_repos.git(repo.path, "mktree", input=f"040000 tree {tree}\td\n".encode())
    return git_repos.git(repo.path, "commit-tree", tree, "-m", "deep")


@pytest.mark.parametrize("leaf", [True, False], ids=["a file at the bottom", "directories only"])
def test_a_tree_deeper_than_the_limit_is_refused_before_git_archive_starts(node: support.Node, tmp_path: Path,
                                                                          leaf: bool) -> None:
    # git archive recurses once per level, and crashed (SIGSEGV) on a tree of 4096 levels here.
    env, commands = wrapped_git(tmp_path)
    repo = git_repos.Repo(tmp_path / "src")
    git_repos.git(repo.path, "tag", "v1", chain(repo, 40, leaf))
    git_repos.git(repo.path, "tag", "v2", chain(repo, 30, leaf))

    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"git": {"url": repo.url}, "limits": {"maxDepth": 32}}))
    refused_and_untouched(node, node.tether("reconcile", env=env), "v1", "levels deep (limits.maxDepth)")
    assert not any(" archive " in f" {line} " for line in commands.read_text().splitlines())

    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v2", source={"git": {"url": repo.url}, "limits": {"maxDepth": 32}}))
    assert node.tether("reconcile", env=env).returncode == 0  # 31 levels with the file (30 directories)
    assert (node.apps / "site" / "v2" / "/".join(["d"] * 30)).is_dir() == leaf  # (git archive skips empty trees)


@pytest.mark.parametrize("archive", ['ulimit -c 0; kill -SEGV $$',
                                     'ulimit -c 0; "$real" "$@" | head -c 30000; kill -SEGV $$'],
                         ids=["before its first byte", "in the middle of the tar"])
def test_git_archive_dying_is_reported_as_git_s_failure_not_as_a_bad_archive(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, archive: str) -> None:
    env, _ = wrapped_git(tmp_path, archive)
    monkeypatch.setenv("PATH", env["PATH"])
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({f"f{i}.txt": f"{i}\n" * 500 for i in range(40)})
    repo.tag("v1")
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"git": {"url": repo.url}}))

    retries: list[object] = []
    app = loading.load([str(node.manifests)]).applications["site"]
    result = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(sleep=lambda seconds: None),
                                on_retry=lambda *retry: retries.append(retry)).reconcile(app)

    assert not result.ok and "git archive of v1 failed: git was killed by signal 11" in (result.error or ""), \
        result.error
    assert "tar" not in (result.error or "").lower()
    assert retries, "a crash (an out-of-memory kill, say) is retried"
    assert not (node.apps / "site" / "v1").exists() and not (node.apps / "site" / "current").exists()


@pytest.mark.parametrize("files", [{}, {".gitattributes": "* export-ignore\n", "index.html": "x\n"}],
                         ids=["an empty commit", "every file export-ignore"])
def test_a_commit_with_nothing_to_deploy_deploys_an_empty_directory(node: support.Node, tmp_path: Path,
                                                                   files: dict[str, str]) -> None:
    repo = git_repos.Repo(tmp_path / "src")
    if files:
        repo.commit(files)
        repo.tag("v1")
    else:
        empty = git_repos.git(repo.path, "mktree", input=b"")
        git_repos.git(repo.path, "tag", "v1", git_repos.git(repo.path, "commit-tree", empty, "-m", "empty"))

    run = deploy(node, "v1", {"url": repo.url})
    assert run.returncode == 0, run.stderr
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
    assert list((node.apps / "site" / "v1").iterdir()) == []


def test_an_https_secret_never_reaches_a_file_tether_wrote_or_its_output(node: support.Node, tmp_path: Path) -> None:
    token = "Bearer t0ken-that-must-never-leak-8d1f"
    secret_file = tmp_path / "secrets" / "git-token"
    secret_file.parent.mkdir()
    secret_file.write_text(token + "\n")
    repo = git_repos.Repo(tmp_path / "served" / "site")
    repo.commit({"index.html": "x\n"})
    repo.tag("v1")
    repo.tag("v2")
    server = git_repos.GitHttpServer(tmp_path / "served", secret=token)
    outputs: list[str] = []
    try:
        git = {"url": server.url("site"), "headers": {"Authorization": {"fromFile": str(secret_file)}}}
        for deployment, ref in (("v1", "v1"), ("v2", "v2"), ("v3", "v9")):
            run = deploy(node, deployment, {**git, "ref": ref})
            outputs += [run.stdout, run.stderr]
            assert (run.returncode == 0) == (ref != "v9"), run.stderr
        secret_file.write_text("Bearer wrong\n")  # refused by the server: its error must not echo a secret
        run = deploy(node, "v4", {**git, "ref": "v1"})
        outputs += [run.stdout, run.stderr]
        assert run.returncode != 0
        for command in (("status", "site", "--json"), ("list", "site"), ("list", "site", "--json")):
            shown = node.tether(*command)
            outputs += [shown.stdout, shown.stderr]
    finally:
        server.close()
    assert any(r.get("Authorization") == token for r in server.requests)
    assert not git_repos.git(node.state / "git" / "site.git", "config", "--list").count("extraheader")
    forms = [token, token.split()[1], token.split()[1][:16]]
    for path in [*support.walk_files(node.state), *support.walk_files(node.apps)]:
        data = path.read_bytes()
        assert not [form for form in forms if form.encode() in data], path
    for text in outputs:
        assert not [form for form in forms if form in text], text


def test_a_manifest_that_would_leak_or_skip_host_key_checks_is_invalid(node: support.Node) -> None:
    cases = {
        "user": {"url": "https://deploy:hunter2@git.example.com/acme.git"},
        "nohosts": {"url": "ssh://git@git.example.com/acme.git"},
        "plainhttp": {"url": "http://git.example.com/acme.git"},
        "keyonhttps": {"url": "https://git.example.com/acme.git", "sshKey": {"fromFile": "/etc/key"}},
        "unknown": {"url": "https://git.example.com/acme.git", "ref": "{branch}"},
        "twoverify": {"url": "https://git.example.com/acme.git", "verify": {"allowedSigners": "/a", "gpgKeyring": "/b"}},
    }
    for name, git in cases.items():
        support.write_manifest(node.manifests, support.application(name, node.apps / name, source={"git": git}))
    support.write_manifest(node.manifests, support.application(
        "both", node.apps / "both", source={"url": "https://h/a.tar.gz", "git": {"url": "https://h/a.git"}}))
    support.write_manifest(node.manifests, support.application(
        "fine", node.apps / "fine", source={"git": {"url": "ssh://git@git.example.com/acme.git",
                                                    "knownHosts": "/etc/tether/known_hosts",
                                                    "sshKey": {"fromFile": "/etc/tether/key"}}}))

    found = json.loads(node.tether("validate", str(node.manifests), "--json").stdout)

    bad = {Path(p["file"]).stem for p in found["problems"]}
    assert bad == {*cases, "both"}
    assert "fine" in found["applications"]
    assert "hunter2" not in json.dumps(found)


def test_the_ssh_command_pins_the_key_and_the_known_hosts_and_keeps_the_key_out_of_argv(tmp_path: Path) -> None:
    key_text = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n" \
               "-----END OPENSSH PRIVATE KEY-----"
    access = git_runner.Access(url="ssh://git@git.example.com/acme.git", ssh_key=key_text,
                               known_hosts="/etc/tether/known hosts")
    with git_runner.Git(str(tmp_path / "mirror.git"), access) as git:
        env = git.environment(network=True)
        words = git.arguments(["fetch"])
        key_file = Path(git.private_dir) / "key"
        assert key_file.read_text() == key_text + "\n"
        assert key_file.stat().st_mode & 0o777 == 0o600
        command = env["GIT_SSH_COMMAND"]
        for option in ("IdentitiesOnly=yes", "StrictHostKeyChecking=yes", "'UserKnownHostsFile=/etc/tether/known hosts'",
                       "BatchMode=yes", "-F /dev/null", f"-i {key_file}"):
            assert option in command
        assert "protocol.allow=never" in words and "protocol.ssh.allow=always" in words
        assert "core.hooksPath=/dev/null" in words and "credential.helper=" in words
        assert not [w for w in words if "OPENSSH" in w or "b3BlbnNzaC1rZXkt" in w]
        assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"
        assert env["GIT_TERMINAL_PROMPT"] == "0"
        private = git.private_dir
        assert "b3BlbnNzaC1rZXkt" not in git.clean.text("ssh said b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ here")
    assert not os.path.exists(private)
    https = git_runner.Git(str(tmp_path / "m.git"), git_runner.Access(url="https://h/a.git",
                                                                        headers={"Authorization": "Bearer abcdefgh"}))
    with https:
        assert not [w for w in https.arguments(["fetch"]) if "abcdefgh" in w]
        assert https.environment(network=True)["GIT_CONFIG_VALUE_0"] == "Authorization: Bearer abcdefgh"
        assert "GIT_CONFIG_COUNT" not in https.environment(network=False)


@pytest.mark.parametrize("with_key", [True, False], ids=["the manifest's key", "no key"])
def test_ssh_offers_only_the_manifest_s_key_never_root_s_own_identities(node: support.Node, tmp_path: Path,
                                                                       with_key: bool) -> None:
    # An `ssh` first on PATH that asks the real ssh what it would do with the options tether gives (ssh -G).
    bin_dir, seen = tmp_path / "bin", tmp_path / "ssh-config"
    bin_dir.mkdir()
    # Then it fails as the real one does for a key the server refuses: a permanent error, not retried.
    (bin_dir / "ssh").write_text(f"#!/bin/sh\n/usr/bin/ssh -G \"$@\" > {seen} 2>&1 </dev/null\n"
                                 "echo 'git@git.example.com: Permission denied (publickey).' >&2\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    (tmp_path / "known_hosts").write_text("")
    git: dict[str, Any] = {"url": "ssh://git@git.example.com/acme.git", "ref": "v1",
                           "knownHosts": str(tmp_path / "known_hosts")}
    if with_key:
        key, _ = git_repos.ssh_key(tmp_path, "deploy")
        git["sshKey"] = {"fromFile": str(key)}
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"git": git}))

    run = node.tether("reconcile", env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert seen.exists(), run.stderr

    config = seen.read_text()
    identities = [line.split(" ", 1)[1] for line in config.splitlines() if line.startswith("identityfile ")]
    assert identities, config
    assert not [i for i in identities if i.startswith("~") or "/.ssh/" in i], identities
    assert "identitiesonly yes" in config and "identityagent none" in config


def test_a_tree_bomb_is_refused_at_the_limit_without_listing_it_to_the_end(node: support.Node, tmp_path: Path) -> None:
    # Three levels of 1000 entries each: a few kB of trees that name 10**9 files. Listing them all would write
    # some 100 GB and run until the time limit, and then be retried forever as a temporary error.
    repo = git_repos.Repo(tmp_path / "src")
    level = git_repos.git(repo.path, "hash-object", "-w", "--stdin", input=b"boom\n")
    kind, mode = "blob", "100644"
    for _ in range(3):
        entries = "".join(f"{mode} {kind} {level}\tf{i}\n" for i in range(1000))
        level = git_repos.git(repo.path, "mktree", input=entries.encode())
        kind, mode = "tree", "040000"
    commit = git_repos.git(repo.path, "commit-tree", level, "-m", "bomb")
    git_repos.git(repo.path, "tag", "v1", commit)
    started = time.monotonic()

    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"git": {"url": repo.url, "timeoutSeconds": 120}}))
    refused_and_untouched(node, node.tether("reconcile"), "v1", "limits.maxMembers")

    assert time.monotonic() - started < 60
    status = json.loads(node.tether("status", "site", "--json").stdout)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Stalled"] == "True"


def test_a_redirect_does_not_carry_the_https_secret_to_another_server(node: support.Node, tmp_path: Path) -> None:
    token = "Bearer redirected-t0ken-9f3a"
    secret_file = tmp_path / "token"
    secret_file.write_text(token + "\n")
    repo = git_repos.Repo(tmp_path / "elsewhere" / "site")
    repo.commit({"index.html": "x\n"})
    repo.tag("v1")
    other = git_repos.GitHttpServer(tmp_path / "elsewhere")

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{other.port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=redirector.serve_forever, daemon=True)
    thread.start()
    try:
        run = deploy(node, "v1", {"url": f"http://127.0.0.1:{redirector.server_address[1]}/site",
                                  "headers": {"Authorization": {"fromFile": str(secret_file)}}})
    finally:
        redirector.shutdown()
        redirector.server_close()
        other.close()

    assert run.returncode != 0
    assert "returned error: 302" in run.stderr and "set source.git.url to the repository's own URL" in run.stderr
    assert "retrying" not in run.stderr  # the same redirect every time: not retried
    assert not [r for r in other.requests if "Authorization" in r], other.requests
    assert token.split()[1] not in run.stdout + run.stderr


@pytest.mark.parametrize("attributes, committed", [
    ("export-subst", "commit $Format:%H$ says $Format:%B$\n"),
    ("ident", "id $Id$\n"),
    ("text eol=crlf", "one\ntwo\n"),
    ("working-tree-encoding=UTF-16LE", "encoded\n".encode("utf-16-le")),  # (stored as UTF-8)
    ("filter=run", "filtered\n"),
])
def test_the_tree_s_attributes_never_rewrite_a_file_and_export_ignore_still_applies(
        node: support.Node, tmp_path: Path, attributes: str, committed: str | bytes) -> None:
    """export-subst and ident expand in memory before git archive writes a byte ($Format:%B$ repeated in a few kB
    grows to gigabytes; %G? starts a signature check per occurrence); the others change the bytes or run programs.
    The mirror's info/attributes turns them off, in a mirror an older tether made too."""
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"index.html": "v1\n"})
    repo.tag("v1")
    assert deploy(node, "v1", {"url": repo.url}).returncode == 0
    info = node.state / "git" / "site.git" / "info" / "attributes"
    info.unlink()  # as a mirror made before tether wrote it
    repo.commit({".gitattributes": f"page.txt {attributes}\nsecret.txt export-ignore\n", "page.txt": committed,
                 "secret.txt": "left out\n"})
    git_repos.git(repo.path, "config", "filter.run.smudge", f"touch {tmp_path / 'ran'}; cat")
    repo.tag("v2")

    run = deploy(node, "v2", {"url": repo.url})

    assert run.returncode == 0, run.stderr
    current = node.apps / "site" / "current"
    stored = subprocess.run(["git", "-C", str(repo.path), "cat-file", "blob", "v2:page.txt"], capture_output=True,
                            check=True).stdout
    assert (current / "page.txt").read_bytes() == stored, "a file was rewritten by an attribute"
    assert not (current / "secret.txt").exists() and not (tmp_path / "ran").exists()
    assert info.is_file()


def test_no_signature_program_runs_but_the_one_verify_configures(node: support.Node, tmp_path: Path) -> None:
    """git picks the program by the signature's own format: an X.509 signature would run gpgsm (which trusts the
    node's system trust list) although the manifest trusts ssh keys only."""
    repo = git_repos.Repo(tmp_path / "src")
    commit = repo.commit({"index.html": "v1\n"})
    tag = git_repos.git(repo.path, "mktag", input=(
        f"object {commit}\ntype commit\ntag v1\ntagger T <t@example.com> 0 +0000\n\nrelease\n"
        "-----BEGIN SIGNED MESSAGE-----\nMIIB\n-----END SIGNED MESSAGE-----\n").encode())
    git_repos.git(repo.path, "update-ref", "refs/tags/v1", tag)
    programs = tmp_path / "bin"
    programs.mkdir()
    for name in ("gpgsm", "gpg"):  # first on PATH: they say every signature is good, and leave a mark
        (programs / name).write_text(f"#!/bin/sh\ntouch {tmp_path / name}.ran\n"
                                     "echo '[GNUPG:] GOODSIG 0 T' >&2; echo '[GNUPG:] VALIDSIG 0' >&2; exit 0\n")
        (programs / name).chmod(0o755)
    _, public = git_repos.ssh_key(tmp_path, "trusted")
    signers = git_repos.allowed_signers(tmp_path / "allowed_signers", public)

    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1",
        source={"git": {"url": repo.url, "verify": {"allowedSigners": str(signers)}}}))
    run = node.tether("reconcile", env={"PATH": f"{programs}:{os.environ['PATH']}"})

    refused_and_untouched(node, run, "v1", "has no good signature by a trusted key")
    assert not list(tmp_path.glob("*.ran")), "a signature program the manifest did not ask for ran"


def _bad_tag(repo: git_repos.Repo, name: str) -> None:
    """A tag whose tree names a file `.git`, which git's checks (transfer.fsckObjects) refuse."""
    blob = git_repos.git(repo.path, "hash-object", "-w", "--stdin", input=b"x\n")
    tree = subprocess.run(["git", "-C", str(repo.path), "hash-object", "-w", "-t", "tree", "--literally", "--stdin"],
                          input=b"100644 .git\0" + bytes.fromhex(blob), capture_output=True, check=True)
    bad = git_repos.git(repo.path, "commit-tree", tree.stdout.decode().strip(), "-m", "junk")
    git_repos.git(repo.path, "tag", name, bad)


@pytest.mark.parametrize("ref", ["{deployment}", "main"])
def test_one_bad_tag_elsewhere_blocks_no_deploy_and_a_bad_ref_is_refused_by_name(
        node: support.Node, tmp_path: Path, ref: str) -> None:
    repo = git_repos.Repo(tmp_path / "src")
    repo.commit({"index.html": "v1\n"})
    repo.tag("v1")
    assert deploy(node, "v1", {"url": repo.url, "ref": ref}).returncode == 0
    _bad_tag(repo, "old-experiment")
    fixed = repo.commit({"index.html": "v2\n"})
    repo.tag("v2")

    run = deploy(node, "v2", {"url": repo.url, "ref": ref})

    assert run.returncode == 0, run.stderr
    assert (node.apps / "site" / "current" / "index.html").read_text() == "v2\n"
    assert "local mirror" not in run.stderr, "a refusal taken for an unreachable server: the mirror's old commit"
    assert json.loads(node.tether("status", "site", "--json").stdout)["revision"] == fixed
    if ref == "main":
        return
    run = deploy(node, "old-experiment", {"url": repo.url})  # the bad one itself: permanent, said, not retried
    refused_and_untouched(node, run, "old-experiment", "git's checks refuse")
    assert "Attempt" not in run.stderr and "hasDotgit" in run.stderr
