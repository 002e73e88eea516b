"""Drift (design section 6): what is on disk no longer matches what tether last made.

Structural drift (`current`, the active deployment, its persistent-data links)
is cheap and checked every pass. Content drift compares a deployment's tree with
the digest list recorded when it became complete,
`<path>/.tether/digests/<deployment>.json`; `repair_content` restores drifted
paths from the cached artifact (a git source's from its mirror). The trees are writable by the application's
users, so every walk and every change goes through O_NOFOLLOW descriptors.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Collection, Sequence

from controller import errors, formats, fsutil, nofollow
from controller.artifacts import archives, extracting
from controller.artifacts import cache as artifact_cache
from controller.manifests import model
from controller.tree import digests, persistent_data, records

log = logging.getLogger(__name__)

Owner = tuple[int, int] | None


@dataclasses.dataclass(frozen=True)
class Structural:
    current: str | None = None  # why `current` is wrong, or None
    deployment: str | None = None  # why the active deployment is missing or incomplete, or None
    links: list[str] = dataclasses.field(default_factory=list)  # persistent-data leaves missing or re-pointed

    @property
    def types(self) -> list[str]:
        """The drift types found, as the `type` label of `tether_drift`."""
        return [t for t, found in (("current", self.current), ("deployment", self.deployment),
                                   ("links", self.links)) if found]


@dataclasses.dataclass(frozen=True)
class Content:
    changed: list[str] = dataclasses.field(default_factory=list)
    added: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return sorted([*self.changed, *self.added, *self.removed])


def record_digests(path: str, deployment: str, links: Collection[str], extracted: extracting.Made | None = None,
                   hooks_ran: bool = True, synced_next: bool = False) -> None:
    """Record the deployment's tree for content drift; call it just before marking the deployment complete.
    `extracted`: what extraction made, files with their digests (see digests.record for `hooks_ran` and
    `synced_next`)."""
    digests.record(path, deployment, links, extracted, hooks_ran, synced_next)


def wrong_links(path: str, deployment: str, links: Collection[str]) -> list[str]:
    """Persistent-data leaves of a deployment that are not links to `<path>/persistent-data/<leaf>`."""
    wrong = []
    for leaf in links:
        try:
            target: str | None = os.readlink(os.path.join(path, deployment, leaf))
        except OSError:
            target = None
        if target != os.path.join(persistent_data.root(path), leaf):
            wrong.append(leaf)
    return sorted(wrong)


def _listed_dir(observed: records.Observed, name: str | None) -> bool:
    """Whether the snapshot listed `name` as a directory (not a symlink) of the tree: no stat needed to know."""
    if name is None:
        return False
    deployment = observed.deployments.get(name)
    return deployment.has_dir if deployment is not None else name in observed.foreign


def check_structure(path: str, observed: records.Observed, desired: str | None) -> Structural:
    """Structural drift against `desired` (the deployment that should be active); no content is read."""
    link, active = os.path.join(path, "current"), desired if desired is not None else observed.current
    current = None
    if observed.current_target is None:
        if os.path.lexists(link):
            current = f"{link} is not a symlink"
        elif active is not None:
            current = f"{link} is missing"
    elif not _listed_dir(observed, observed.current) and not os.path.isdir(link):
        current = f"{link} is dangling: {observed.current_target} does not exist"
    elif desired is not None and observed.current != desired:
        current = f"{link} points to {observed.current_target}, not to {os.path.join(path, desired)}"
    if active is None:
        return Structural(current)
    record, directory = observed.deployments.get(active), os.path.join(path, active)
    if not _listed_dir(observed, active) and (not os.path.isdir(directory) or os.path.islink(directory)):
        return Structural(current, f"the active deployment {directory} is missing or not a directory")
    if record is None:
        return Structural(current, f"the active deployment {active} has no record; tether did not make it")
    state = None if record.state == records.COMPLETE else f"the active deployment {active} is {record.state}"
    return Structural(current, state, wrong_links(path, active, record.links))


def _matcher(ignore: Sequence[str]) -> Callable[[str], bool]:
    patterns = [p.removeprefix("./").strip("/") for p in ignore]
    if not patterns:
        return lambda rel: False
    compiled = re.compile("|".join(fnmatch.translate(p) for p in patterns))
    return lambda rel: compiled.match(rel) is not None


def check_content(path: str, deployment: str, ignore: Sequence[str]) -> Content:
    """Files of the deployment changed, added or removed since its digests were recorded."""
    recorded = digests.read(path, deployment)
    match = _matcher(ignore)
    root = os.path.join(path, deployment)
    try:
        found = digests.scan(root, match, {})
    except OSError as exc:
        raise errors.PermanentError(f"{root} cannot be checked: {exc.strerror}; it is missing or not a directory") from exc

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        return any(match("/".join(parts[:i])) for i in range(1, len(parts) + 1))

    return Content(changed=sorted(p for p, e in found.items() if p in recorded and recorded[p] != e),
                   added=sorted(p for p in found if p not in recorded),
                   removed=sorted(p for p in recorded if p not in found and not ignored(p)))


def record_links(path: str, deployment: str) -> list[str]:
    record = formats.read(records.record_path(path, deployment))
    links = record.get("links") if isinstance(record, dict) else None
    return [link for link in links if isinstance(link, str)] if isinstance(links, list) else []


def relink(app: model.Application, deployment: str, owner: Owner) -> list[str]:
    """Restore the deployment's missing or re-pointed persistent-data links; return them.

    `persistent_data.apply` is idempotent: it never re-seeds or rewrites existing persistent data (it
    re-applies the `.mtree` ownership and mode, as every deployment does) and replaces each leaf by its link.
    """
    wrong = wrong_links(app.path, deployment, record_links(app.path, deployment))
    if not wrong:
        return []
    persistent_data.apply(app, os.path.join(app.path, deployment), owner)
    still = wrong_links(app.path, deployment, wrong)
    if still:
        raise errors.PermanentError(
            f"{app.name}: the persistent-data links {', '.join(still)} of {deployment} could not be restored from its "
            ".mtree (is it gone, or persistentData off?); run `tether repair` to restore the .mtree, or redeploy")
    log.info("%s: restored the persistent-data links %s of %s.", app.name, ", ".join(wrong), deployment)
    return wrong


def _extract_cached(app: model.Application, deployment: str, state_dir: str, owner: Owner, stage: str) -> str:
    """Extract the deployment's cached artifact (for a git source: its recorded commit from the mirror) into
    `stage`; return the root of the tree."""
    revision = records.observe(app.path).deployments.get(deployment)
    if app.source is not None and app.source.git is not None and revision is not None and revision.revision:
        from controller.artifacts import git_source  # the git modules only for a git source

        os.mkdir(os.path.join(stage, "tree"), 0o700)
        return git_source.restore(state_dir, app, revision.revision, os.path.join(stage, "tree"), owner=owner,
                                  spool_dir=stage)
    cache = artifact_cache.Entry(state_dir, app.name, deployment)
    try:
        opened = cache.open()
    except OSError as exc:
        missing = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc.strerror})"
        raise errors.PermanentError(
            f"{app.name}: the cached artifact of {deployment} ({cache.path}) is {missing}, so its files cannot be "
            "restored; redeploy it to fetch the artifact again") from None
    source = app.source or model.Source(url="")  # deployed imperatively: format and limits by default
    record = formats.read(records.record_path(app.path, deployment))
    sha256 = record.get("sha256") if isinstance(record, dict) and isinstance(record.get("sha256"), str) else None
    os.mkdir(os.path.join(stage, "tree"), 0o700)
    with opened as handle:
        reader = archives.Hashing(handle)
        try:
            root = extracting.extract(reader, os.path.join(stage, "tree"), fmt=source.format,
                                      strip=source.strip_components, owner=owner, spool_dir=stage,
                                      budget=archives.Budget(source.limits, lambda: reader.count),
                                      deb_root=source.deb_root)
        except errors.ArchiveError as exc:  # a copy a power cut tore (it has no fsync of its own), or a damaged one
            raise errors.PermanentError(f"{app.name}: the cached artifact {cache.path} cannot be extracted ({exc}); "
                                        "redeploy it to fetch the artifact again") from exc
        while reader.read(digests.CHUNK):
            pass
    if sha256 is not None and reader.digest.hexdigest() != sha256:
        raise errors.PermanentError(f"{app.name}: the cached artifact {cache.path} does not have the sha256 {deployment} "
                                    "was deployed from; redeploy it to fetch the artifact again")
    return root


def repair_content(app: model.Application, deployment: str, state_dir: str, owner: Owner,
                   content: Content) -> list[str]:
    """Restore drifted paths from the cached artifact and remove added ones; return the repaired paths.

    The caller holds the application's lock. Files come from the artifact only when they have the recorded
    digest; directories and links are restored as recorded. A path that cannot be restored (a file a hook
    made) is named in an error after the others are repaired, and the digests are then left as they were.
    """
    if not content.paths:
        return []
    path, target = app.path, os.path.join(app.path, deployment)
    recorded, links = digests.read(path, deployment), set(record_links(path, deployment))
    fsutil.makedirs(records.staging_dir(path))
    stage = tempfile.mkdtemp(prefix=f"repair-{deployment}-", dir=records.staging_dir(path))
    repaired, failed, gone = list[str](), list[str](), set[str]()
    try:
        tree = _extract_cached(app, deployment, state_dir, owner, stage)
        os.mkdir(os.path.join(stage, "new"), 0o700)
        with nofollow.walk(stage, ["new"], None, make=False) as new, \
                nofollow.walk(stage, [], None, make=False) as aside:
            for rel in sorted(content.paths, key=lambda p: p.split("/")):
                if any(rel.startswith(g + "/") for g in gone) and rel not in recorded:
                    repaired.append(rel)  # below an added or replaced directory, moved away with it
                    continue
                try:
                    done = _repair_one(rel, recorded.get(rel), rel in links, path, target, tree, new, aside, owner, gone)
                except (OSError, errors.TetherError) as exc:
                    log.warning("%s: %s/%s cannot be repaired: %s", app.name, deployment, rel, exc)
                    done = False
                (repaired if done else failed).append(rel)
        fsutil.sync_filesystem(target)
    finally:
        fsutil.remove_tree(stage)
    if failed:
        raise errors.PermanentError(
            f"{app.name}: {len(failed)} paths of {deployment} were not restored because the artifact does not ship "
            f"them as they were recorded (made by a hook?): {', '.join(failed[:20])}; redeploy to restore them")
    digests.record(path, deployment, links)
    log.info("%s: repaired %d drifted paths of %s.", app.name, len(repaired), deployment)
    return repaired


def _repair_one(rel: str, entry: digests.Entry | None, linked: bool, path: str, target: str, tree: str, new: int,
                aside: int, owner: Owner, gone: set[str]) -> bool:
    """Put one path back as recorded (None: remove it); False when the artifact does not ship it so."""
    *parents, name = rel.split("/")
    with nofollow.walk(target, parents, None, make=False) as parent:
        current = nofollow.exists(name, parent)
        is_dir = current is not None and stat.S_ISDIR(current.st_mode)
        if entry is None:  # added: remove it (a directory is moved away whole, never followed)
            if is_dir:
                os.rename(name, f"aside-{secrets.token_hex(6)}", src_dir_fd=parent, dst_dir_fd=aside)
                gone.add(rel)
            elif current is not None:
                os.unlink(name, dir_fd=parent)
            return True
        temp, kind = secrets.token_hex(6), entry["type"]
        if kind == "dir" and is_dir:
            fd = os.open(name, nofollow.DIR_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, int(entry["mode"], 8))
            finally:
                os.close(fd)
            return True
        if kind == "dir":
            os.mkdir(temp, 0o700, dir_fd=new)
            os.chmod(temp, int(entry["mode"], 8), dir_fd=new)
        elif kind == "link":
            link = os.path.join(persistent_data.root(path), rel) if linked else entry["target"]
            os.symlink(link, temp, dir_fd=new)
        else:
            with nofollow.walk(tree, parents, None, make=False) as staged:
                os.rename(name, temp, src_dir_fd=staged, dst_dir_fd=new)
            _, digest = digests.sha256(temp, new, bytearray(digests.CHUNK))
            if kind != "file" or digest != entry.get("sha256"):
                return False
            os.chmod(temp, int(entry["mode"], 8), dir_fd=new)
        if owner is not None:
            os.chown(temp, *owner, dir_fd=new, follow_symlinks=False)
        if current is not None and (is_dir or kind == "dir"):  # rename(2) cannot replace a directory or by one
            os.rename(name, f"aside-{temp}", src_dir_fd=parent, dst_dir_fd=aside)
            gone.add(rel)
        os.rename(temp, name, src_dir_fd=new, dst_dir_fd=parent)
        return True
