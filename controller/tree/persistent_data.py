"""Persistent data from a deployment's `.mtree` (design section 5).

The hierarchy is created under `<path>/persistent-data/`, seeded from the
deployment's shipped copy where a node does not exist yet, and every leaf of
the tree in the deployment is replaced by a symlink into it. Persistent data is
never deleted or truncated. The tree is writable by the application's users, so
every step walks it with O_NOFOLLOW directory descriptors: a symlink planted
there is refused, never followed, even when tether runs as root.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from controller import errors, fsutil, nofollow
from controller.manifests import model
from controller.tree import link_targets, mtree, mtree_owners, seeding

log = logging.getLogger(__name__)

SPEC = ".mtree"
# Failures that may pass by themselves: retried with back-off; any other OSError is a permanent error.
TRANSIENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ENOMEM, errno.EAGAIN, errno.EBUSY, errno.EROFS,
                       errno.EMFILE, errno.ENFILE, errno.EINTR})


def root(path: str) -> str:
    return os.path.join(path, "persistent-data")


def read_spec(deployment_path: str) -> list[mtree.Node] | None:
    """The deployment's `.mtree`, parsed, or None when it ships none."""
    return mtree.read(os.path.join(deployment_path, SPEC))


def _kind_matches(node: mtree.Node, st: os.stat_result) -> bool:
    check = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "link": stat.S_ISLNK}[node.type]
    return bool(check(st.st_mode))


def _seed(deployment_path: str, node: mtree.Node) -> tuple[int, str] | None:
    """An open descriptor of the directory holding the deployment's copy of `node`, if it ships one."""
    *parents, name = node.path.split("/")
    try:
        fd = os.open(deployment_path, nofollow.DIR_FLAGS)
        for part in parents:
            child = os.open(part, nofollow.DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError:
        return None
    st = nofollow.exists(name, fd)
    if st is None or not _kind_matches(node, st) or node.type == "link":
        os.close(fd)
        return None
    return fd, name


def _check_link(node: mtree.Node) -> None:
    assert node.link is not None
    target = os.path.normpath(os.path.join(os.path.dirname(node.path), node.link))
    if node.link.startswith("/") or target == ".." or target.startswith("../"):
        raise mtree.MtreeError(node.line, f"link={node.link} points outside persistent data")


def _create(node: mtree.Node, name: str, dir_fd: int, deployment_path: str, owner: tuple[int, int] | None,
            leaf: bool, checkpoint: seeding.Checkpoint) -> bool:
    """Create `node` (seeded whole, or empty); False when it appeared meanwhile and was left as it is."""
    # A directory with children in the .mtree is created empty: its children are seeded one by one, and
    # nothing else the deployment ships there belongs in persistent data.
    seed = _seed(deployment_path, node) if leaf or node.type != "dir" else None
    what = f"{node.type} {node.path}"
    try:
        if node.type == "link":
            assert node.link is not None
            os.symlink(node.link, name, dir_fd=dir_fd)
        elif seed is not None and node.type == "dir":
            if not seeding.seed_dir(seed[0], seed[1], dir_fd, owner, 0o755 if node.mode is None else node.mode, what,
                                    checkpoint):
                return False
        elif seed is not None:
            if not seeding.seed_file(seed[0], seed[1], dir_fd, owner, node.mode, what, checkpoint):
                return False
        elif node.type == "dir":
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dir_fd))
    except FileExistsError:
        log.warning("Persistent %s appeared while tether created it; it is kept as it is.", what)
        return False
    finally:
        if seed is not None:
            os.close(seed[0])
    log.info("Created persistent %s%s.", what, " from the deployment's copy" if seed else "")
    return True


def _refuse_links(where: str, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
        raise errors.PermanentError(
            f"{where} has {st.st_nlink} hard links; tether does not change the owner or mode of a file linked "
            f"elsewhere: remove the extra links (find them with `find / -xdev -samefile {where}`)"
        )


def _check_existing(base: str, node: mtree.Node, st: os.stat_result) -> None:
    """Refuse an existing node that tether must not touch: another type, or (unless nochange) hard-linked."""
    if not _kind_matches(node, st):
        raise errors.PermanentError(
            f"{base}/{node.path} exists but is not a {node.type} as the .mtree (line {node.line}) says; "
            "tether never replaces persistent data: move it away or fix the .mtree"
        )
    if not node.nochange:
        _refuse_links(f"{base}/{node.path}", st)


def _remove_leftovers(base: str, nodes: list[mtree.Node]) -> None:
    """What interrupted seeds left in persistent-data and the directories of the spec that exist."""
    for path in [""] + [n.path for n in nodes if n.type == "dir" and n.path]:
        try:
            with nofollow.walk(base, path.split("/") if path else [], None, make=False) as fd:
                seeding.remove_leftovers(fd, os.path.join(base, path) if path else base)
        except (FileNotFoundError, errors.PermanentError):  # gone, or not a directory: the checks say so
            continue


def _existing(base: str, path: str) -> os.stat_result | None:
    *parents, name = path.split("/")
    try:
        with nofollow.walk(base, parents, None, make=False) as fd:
            return nofollow.exists(name, fd)
    except FileNotFoundError:
        return None


def _set_owner_and_mode(node: mtree.Node, name: str, dir_fd: int, uid: int | None, gid: int | None,
                        is_root: bool, where: str) -> None:
    """Owner and mode through a descriptor opened O_NOFOLLOW, after checking (on it) its type and link count."""
    if node.type == "link":
        if is_root and (uid is not None or gid is not None):
            # No descriptor of a symlink can be chowned: check it, then lchown it relative to its directory.
            st = os.lstat(name, dir_fd=dir_fd)
            if not stat.S_ISLNK(st.st_mode):
                raise errors.PermanentError(f"{where} is no longer a link; tether leaves it alone, run it again")
            _refuse_links(where, st)
            os.chown(name, -1 if uid is None else uid, -1 if gid is None else gid, dir_fd=dir_fd, follow_symlinks=False)
        return
    flags = nofollow.DIR_FLAGS if node.type == "dir" else \
        os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise errors.PermanentError(f"{where} was replaced by a symlink or another type while tether worked; "
                                        "tether does not follow it: move it away") from exc
        raise
    try:
        st = os.fstat(fd)
        if not _kind_matches(node, st):
            raise errors.PermanentError(f"{where} is not a {node.type} as the .mtree (line {node.line}) says; "
                                        "tether never replaces persistent data: move it away or fix the .mtree")
        _refuse_links(where, st)
        if is_root and (uid is not None or gid is not None):
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        if node.mode is not None:
            os.fchmod(fd, node.mode)
    finally:
        os.close(fd)


def _os_error(exc: OSError) -> errors.TetherError:
    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno in TRANSIENT:
        return errors.TemporaryError(f"persistent data could not be set up: {where}{exc.strerror}; the next pass "
                                     "tries again")
    return errors.PermanentError(f"persistent data could not be set up: {where}{exc.strerror}; fix it (or the .mtree) "
                                 "and run tether again")


def apply(app: model.Application, deployment_path: str, deployment_owner: tuple[int, int] | None,
          euid: int | None = None, checkpoint: seeding.Checkpoint = lambda step: None) -> list[str]:
    """Create persistent data and link the deployment's leaves into it; return the linked paths."""
    nodes = read_spec(deployment_path) if app.persistent_data == "auto" else None
    if not nodes:
        return []
    try:
        return _apply(app, nodes, deployment_path, deployment_owner, mtree_owners.allowed(app, euid), checkpoint)
    except OSError as exc:
        raise _os_error(exc) from exc


def _apply(app: model.Application, nodes: list[mtree.Node], deployment_path: str,
           deployment_owner: tuple[int, int] | None, allowed: mtree_owners.Owners, checkpoint: seeding.Checkpoint) -> list[str]:
    base = root(app.path)
    # Every refusal the spec, or what exists already, deserves comes before the first change: a refused spec
    # changes nothing.
    ids = {n.path: (allowed.uid(n, dict(app.user_mapping)), allowed.gid(n, dict(app.group_mapping))) for n in nodes}
    for node in nodes:
        if node.type == "link":
            _check_link(node)
    if os.path.lexists(base) and not stat.S_ISDIR(os.lstat(base).st_mode):
        raise errors.PermanentError(
            f"{base} is a symlink or not a directory; tether does not follow links to persistent data: move it "
            "away and put the data in a real directory of that name"
        )
    if os.path.lexists(base):
        _remove_leftovers(base, nodes)  # (before the checks: a seed killed after its link(2) left two links)
        for node in nodes:
            st = _existing(base, node.path) if node.path else None
            if st is not None:
                _check_existing(base, node, st)
    link_targets.check(nodes, base)
    is_root = allowed.default is not None
    try:
        os.mkdir(base, 0o755)
        if allowed.default is not None:
            with nofollow.walk(base, [], None) as fd:
                os.fchown(fd, *allowed.default)
    except FileExistsError:
        pass
    if not stat.S_ISDIR(os.lstat(base).st_mode):
        raise errors.PermanentError(
            f"{base} is a symlink or not a directory; tether does not follow links to persistent data: move it "
            "away and put the data in a real directory of that name"
        )
    leaves = {leaf.path for leaf in mtree.leaves(nodes)}
    skipped: set[str] = set()
    for node in sorted(nodes, key=lambda n: n.path.count("/") if n.path else -1):
        uid, gid = ids[node.path]
        where = f"{base}/{node.path}" if node.path else base
        *parents, name = node.path.split("/") if node.path else [".."]
        if not node.path:  # the root: persistent-data itself
            with nofollow.walk(base, [], None) as fd:
                if not node.nochange:
                    _set_owner_and_mode(node, ".", fd, uid, gid, is_root, where)
            continue
        if any(node.path.startswith(s + "/") for s in skipped):
            skipped.add(node.path)
            continue
        new_owner = None
        if allowed.default is not None:
            new_owner = (allowed.default[0] if uid is None else uid, allowed.default[1] if gid is None else gid)
        with nofollow.walk(base, parents, allowed.default) as parent:
            st = nofollow.exists(name, parent)
            if st is None:
                if node.optional and _seed(deployment_path, node) is None:
                    skipped.add(node.path)
                    continue
                if _create(node, name, parent, deployment_path, new_owner, node.path in leaves, checkpoint):
                    new_uid, new_gid = new_owner or (uid, gid)
                    _set_owner_and_mode(node, name, parent, new_uid, new_gid, is_root, where)
                    continue
                st = os.lstat(name, dir_fd=parent)
            _check_existing(base, node, st)
            if not node.nochange:
                _set_owner_and_mode(node, name, parent, uid, gid, is_root, where)
    return _link_leaves(nodes, skipped, base, deployment_path, deployment_owner)


def _link_leaves(nodes: list[mtree.Node], skipped: set[str], base: str, deployment_path: str,
                 deployment_owner: tuple[int, int] | None) -> list[str]:
    linked = []
    for leaf in mtree.leaves(nodes):
        if leaf.path in skipped:
            continue
        *parents, name = leaf.path.split("/")
        with nofollow.walk(deployment_path, parents, deployment_owner) as parent:
            st = nofollow.exists(name, parent)
            if st is not None and stat.S_ISDIR(st.st_mode):
                fsutil.remove_tree_at(name, parent)
            elif st is not None:
                os.unlink(name, dir_fd=parent)
            os.symlink(os.path.join(base, leaf.path), name, dir_fd=parent)
            if deployment_owner is not None:
                os.chown(name, *deployment_owner, dir_fd=parent, follow_symlinks=False)
        linked.append(leaf.path)
    return linked
