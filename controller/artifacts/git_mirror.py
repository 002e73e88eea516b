"""The bare mirror of an application's git source, and what a ref names in it.

Each application has its own bare repository, `<state-dir>/git/<name>.git`,
made with `git init --bare` by tether (never cloned, so no remote and no
credential is ever written to its config). A fetch asks only for the tags and
the one ref being deployed, prunes tags that are gone and never recurses into
submodules. When git's checks (transfer.fsckObjects) refuse what some tag
reaches, only the ref being deployed is fetched: one bad tag elsewhere blocks
nothing, and a bad ref is refused by name, never retried. When the server
cannot be reached (a transient failure) and the ref is already in the mirror,
the deploy goes on from the mirror with a warning: a tag fetched once deploys
offline, as deploykit's local mirrors did.
A tag or branch the server answers it no longer has is dropped from the mirror
(tags by the prune, a branch when its fetch finds no such ref), never deployed
from the mirror's stale copy.

A ref resolves to a full commit id, in this order: a full 40-hex commit id, a
tag (light or annotated), a branch. A branch is looked up when the deployment
is made and its commit recorded; the deployment keeps that commit, so a moving
branch becomes a new desired commit only when the manifest names a new
deployment.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets as token
import shutil

from controller import errors, fsutil
from controller.artifacts import git_runner

log = logging.getLogger(__name__)
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
TAGS = "+refs/tags/*:refs/tags/*"
NEUTRAL_ATTRIBUTES = (b"# Written by tether: files are deployed as committed (git_mirror.py).\n"
                      b"* -export-subst -ident -text -eol -crlf -working-tree-encoding -filter\n")


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a ref named: the commit to deploy and, for an annotated tag, the tag object carrying its signature."""

    ref: str
    commit: str
    kind: str  # "commit", "tag" or "branch"
    tag_object: str | None = None  # an annotated tag's object id
    offline: bool = False  # the server could not be reached; resolved from the mirror


def mirror_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "git", name + ".git")


def ensure(state_dir: str, name: str, git: git_runner.Git) -> str:
    """The application's bare mirror, made if missing (in a temporary directory, then renamed into place), with
    the attributes that keep `git archive` from rewriting files (those of mirrors made by older tethers too)."""
    path = mirror_path(state_dir, name)
    if os.path.isfile(os.path.join(path, "HEAD")):
        _neutral_attributes(path)
        return path
    parent = os.path.dirname(path)
    fsutil.makedirs(parent)
    os.chmod(parent, 0o700)
    temporary = os.path.join(parent, f".{name}-{token.token_hex(4)}.git")
    try:
        git.run("init", "--bare", "--quiet", what="git init", extra_env={"GIT_DIR": temporary})
        _neutral_attributes(temporary)
        if os.path.lexists(path):  # a half-made mirror of an older pass: start again
            shutil.rmtree(path)
        os.rename(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return path


def _neutral_attributes(path: str) -> None:
    """`info/attributes`, which outranks the tree's own .gitattributes: the files are deployed as committed.
    `export-subst` and `ident` expand in memory before `git archive` writes a byte (a few kB of `$Format:%B$`
    grow to gigabytes, and `%G?` starts a signature check per occurrence), eol conversion and encodings change
    the bytes, filters run programs. `export-ignore` still leaves files out."""
    attributes = os.path.join(path, "info", "attributes")
    try:
        with open(attributes, "rb") as handle:
            if handle.read() == NEUTRAL_ATTRIBUTES:
                return
    except FileNotFoundError:
        pass
    fsutil.makedirs(os.path.dirname(attributes))
    fsutil.atomic_write(attributes, NEUTRAL_ATTRIBUTES)


def check_ref(ref: str, git: git_runner.Git) -> None:
    """Refuse a ref that is not a valid git reference name (and so could be an option or a revision expression)."""
    if COMMIT_ID.fullmatch(ref):
        return
    code, _, _ = git.run("check-ref-format", f"refs/tags/{ref}", check=False, what="git check-ref-format")
    if code != 0 or ref.startswith("-") or ref.startswith("refs/"):
        raise errors.PermanentError(f"the git ref {ref!r} is not a valid tag, branch or full commit id; "
                                    "fix source.git.ref or the deployment name")


def _object(git: git_runner.Git, revision: str) -> str | None:
    code, out, _ = git.run("rev-parse", "--verify", "--quiet", "--end-of-options", revision, check=False,
                           what="git rev-parse")
    text = out.decode("ascii", "replace").strip()
    return text if code == 0 and COMMIT_ID.fullmatch(text) else None


def lookup(git: git_runner.Git, ref: str) -> Resolved | None:
    """What `ref` names in the mirror as it is now, or None."""
    if COMMIT_ID.fullmatch(ref):
        commit = _object(git, f"{ref}^{{commit}}")
        return Resolved(ref, commit, "commit") if commit == ref else None
    tag = _object(git, f"refs/tags/{ref}")
    if tag is not None:
        commit = _object(git, f"refs/tags/{ref}^{{commit}}")
        if commit is None:
            raise errors.PermanentError(f"the tag {ref} does not point to a commit; tether deploys commits only")
        _, kind, _ = git.run("cat-file", "-t", tag, what="git cat-file")
        annotated = kind.strip() == b"tag"
        return Resolved(ref, commit, "tag", tag_object=tag if annotated else None)
    commit = _object(git, f"refs/heads/{ref}^{{commit}}")
    return Resolved(ref, commit, "branch") if commit is not None else None


def _fetch(git: git_runner.Git, url: str, refspecs: list[str], what: str) -> None:
    git.run("fetch", "--quiet", "--prune", "--no-tags", "--no-recurse-submodules", "--no-write-fetch-head",
            "--no-auto-gc", "--end-of-options", url, *refspecs, network=True, what=what)


def _fetch_tags(git: git_runner.Git, url: str, ref: str, shown: str) -> None:
    """The tags (pruned), and the commit `ref` names if it is a commit id. A tag reaching an object that git's
    checks refuse fails the whole fetch: then only what `ref` needs is fetched, so that one bad tag elsewhere in
    the repository blocks no deployment (and a bad `ref` is refused by name)."""
    commit = [f"{ref}:refs/commits/{ref}"] if COMMIT_ID.fullmatch(ref) else []
    try:
        _fetch(git, url, [TAGS, *commit], f"fetching tags from {shown}")
        return
    except git_runner.BadObject as exc:
        log.warning("Fetching every tag from %s was refused (%s); fetching %s alone.", shown, exc, ref)
    if commit:
        _fetch(git, url, commit, f"fetching {ref} from {shown}")
        return
    try:
        _fetch(git, url, [f"+refs/tags/{ref}:refs/tags/{ref}"], f"fetching the tag {ref} from {shown}")
    except errors.PermanentError as exc:
        if isinstance(exc, git_runner.BadObject) or "remote ref" not in str(exc).lower():
            raise
        git.run("update-ref", "-d", f"refs/tags/{ref}", what="git update-ref")  # no such tag there (any more)


def fetch_and_resolve(git: git_runner.Git, ref: str) -> Resolved:
    """Fetch the tags and `ref` from the source into the mirror and resolve `ref` to a commit.

    A transient failure with `ref` already in the mirror is logged and the mirror's answer used; a commit id
    already in the mirror needs no fetch at all (it cannot change)."""
    check_ref(ref, git)
    url = git.access.url
    shown = git_runner.shown_url(url)
    if COMMIT_ID.fullmatch(ref) and (known := lookup(git, ref)) is not None:
        return known
    try:
        _fetch_tags(git, url, ref, shown)
        found = lookup(git, ref)
        if (found is None or found.kind == "branch") and not COMMIT_ID.fullmatch(ref):  # a branch may have moved
            try:
                _fetch(git, url, [f"+refs/heads/{ref}:refs/heads/{ref}"], f"fetching {ref} from {shown}")
            except errors.PermanentError as exc:
                if "remote ref" not in str(exc).lower():
                    raise
                # The server answered that it has no such branch (deleted, or the URL changed): the mirror's copy
                # is stale and must not be deployed as if the server still had it.
                git.run("update-ref", "-d", f"refs/heads/{ref}", what="git update-ref")
            found = lookup(git, ref)
    except errors.Cancelled:
        raise
    except errors.TemporaryError as exc:
        found = lookup(git, ref)
        if found is None:
            raise
        log.warning("The git server %s could not be reached (%s); deploying %s (commit %s) from the local mirror.",
                    shown, exc, ref, found.commit)
        return dataclasses.replace(found, offline=True)
    if found is None:
        raise errors.PermanentError(f"{shown} has no tag, branch or commit {ref}; check source.git.ref and the "
                                    "deployment name")
    return found
