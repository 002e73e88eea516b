"""A deployment from a git source, end to end: mirror, resolve, verify, extract.

The engine calls :func:`deploy` for one attempt (it retries temporary errors
as it retries downloads) and :func:`restore` to read a recorded commit's tree
back from the mirror when `tether repair` restores drifted files.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping

from controller import errors
from controller.artifacts import extracting, git_archive, git_mirror, git_runner, git_verify, member_writer
from controller.manifests import model, secrets

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Deployed:
    root: str  # the root of the extracted tree
    sha256: str  # of the `git archive` stream
    size: int
    commit: str
    ref: str
    kind: str  # commit, tag or branch


def access(source: model.GitSource, environ: Mapping[str, str], headers: Mapping[str, str] | None = None
           ) -> git_runner.Access:
    """The URL and credentials of `source`, read from the manifest's secrets now (never stored)."""
    resolved = {**secrets.resolve(source.headers, environ), **(headers or {})}
    key = None
    if source.ssh_key is not None:
        key = secrets.read_file("source.git.sshKey", source.ssh_key)  # a key has line breaks: no header rules
    return git_runner.Access(url=source.url, headers=resolved, ssh_key=key, known_hosts=source.known_hosts)


def runner(state_dir: str, name: str, source: model.GitSource, reach: git_runner.Access,
           cancel: threading.Event | None = None) -> git_runner.Git:
    return git_runner.Git(git_mirror.mirror_path(state_dir, name), reach, cancel=cancel,
                          timeout_seconds=source.timeout_seconds)


def deploy(state_dir: str, app: model.Application, deployment: str, dest: str, *, owner: member_writer.Owner,
           spool_dir: str, headers: Mapping[str, str] | None = None, environ: Mapping[str, str],
           cancel: threading.Event | None = None, checkpoint: Callable[[str], None] = lambda step: None,
           extracted: extracting.Made | None = None, flush: Callable[[], None] = lambda: None) -> Deployed:
    """One attempt: fetch into the mirror, resolve the ref, verify it, extract its tree into the empty `dest`
    (`extracted` and `flush` as extracting.extract's `made` and `flush`)."""
    assert app.source is not None and app.source.git is not None
    source = app.source.git
    ref = model.expand_url(source.ref, app, deployment)
    reach = access(source, environ, headers)
    with runner(state_dir, app.name, source, reach, cancel) as git, git.clean.errors():
        git_mirror.ensure(state_dir, app.name, git)
        resolved = git_mirror.fetch_and_resolve(git, ref)
        log.info("%s: %s %s is commit %s.", app.name, resolved.kind, ref, resolved.commit)
        git_verify.verify(git, source, resolved)
        root, digest, size = git_archive.materialise(git, source, resolved, dest, limits=app.source.limits,
                                                     owner=owner, spool_dir=spool_dir, checkpoint=checkpoint,
                                                     extracted=extracted, flush=flush)
    return Deployed(root, digest, size, resolved.commit, ref, resolved.kind)


def restore(state_dir: str, app: model.Application, commit: str, dest: str, *, owner: member_writer.Owner,
            spool_dir: str) -> str:
    """Extract the tree of `commit` (recorded at deploy time) from the mirror into `dest`, with no network."""
    assert app.source is not None and app.source.git is not None
    source = app.source.git
    with runner(state_dir, app.name, source, git_runner.Access(url=source.url)) as git, git.clean.errors():
        found = git_mirror.lookup(git, commit) if git_mirror.COMMIT_ID.fullmatch(commit) else None
        if found is None:
            raise errors.PermanentError(f"{app.name}: commit {commit} is not in the mirror "
                                        f"{git_mirror.mirror_path(state_dir, app.name)}, so its files cannot be "
                                        "restored; redeploy it to fetch it again")
        root, _, _ = git_archive.materialise(git, source, found, dest, limits=app.source.limits, owner=owner,
                                             spool_dir=spool_dir)
    return root
