"""Persistent data from a deployment's `.mtree` (DESIGN 5).

The hierarchy is created under `<path>/persistent-data/`, seeded from the
deployment's shipped copy where a node does not exist yet, and every leaf of
the tree in the deployment is replaced by a symlink into it. Persistent data is
never deleted or truncated. The tree is writable by the application's users, so
every step walks it with O_NOFOLLOW directory descriptors: a symlink planted
there is refused, never followed, even when tether runs as root.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import stat

from controller import errors, fsutil, manifests, mtree, nofollow, owners

log = logging.getLogger(__name__)

SPEC = ".mtree"
MAX_SPEC_BYTES = 1024 * 1024


def root(path: str) -> str:
    return os.path.join(path, "persistent-data")


@dataclasses.dataclass(frozen=True)
class Owners:
    """Which users and groups the manifest lets a `.mtree` hand out, by name and id."""

    users: dict[str, int]
    groups: dict[str, int]
    default: tuple[int, int] | None  # for nodes without uname/gname; None when not root

    def uid(self, node: mtree.Node, mapping: dict[str, str]) -> int | None:
        return _pick(node.uname, node.uid, self.users, mapping, "user", "userMapping", node.line)

    def gid(self, node: mtree.Node, mapping: dict[str, str]) -> int | None:
        return _pick(node.gname, node.gid, self.groups, mapping, "group", "groupMapping", node.line)


def _pick(name: str | None, number: int | None, allowed: dict[str, int], mapping: dict[str, str], what: str,
          key: str, line: int) -> int | None:
    if name is not None:
        local = mapping.get(name, name)
        if local not in allowed:
            raise mtree.MtreeError(line, f"the .mtree gives files to the {what} {local!r}, which the manifest does not "
                                         f"allow; map {name!r} to an allowed {what} with spec.{key}")
        return allowed[local]
    if number is not None and number not in allowed.values():
        raise mtree.MtreeError(line, f"the .mtree gives files to the {what} id {number}, which the manifest does not "
                                     f"allow; name an allowed {what} instead, or map a name to one with spec.{key}")
    return number


def allowed_owners(app: manifests.Application, euid: int | None = None) -> Owners:
    euid = os.geteuid() if euid is None else euid
    users: dict[str, int] = {}
    groups: dict[str, int] = {}
    me, primary = owners.account(app, euid)
    names = {me.pw_name, *app.user_mapping.values()}
    for name in names:
        try:
            users[name] = pwd.getpwnam(name).pw_uid
        except KeyError as exc:
            raise errors.PermanentError(f"user {name!r} named by {app.name}'s manifest does not exist on this node") from exc
    groups[grp.getgrgid(primary).gr_name] = primary
    for name in app.group_mapping.values():
        try:
            groups[name] = grp.getgrnam(name).gr_gid
        except KeyError as exc:
            raise errors.PermanentError(f"group {name!r} named by {app.name}'s manifest does not exist on this node") from exc
    return Owners(users, groups, (me.pw_uid, primary) if euid == 0 else None)


def read_spec(deployment_path: str) -> list[mtree.Node] | None:
    """The deployment's `.mtree`, parsed, or None when it ships none."""
    try:
        fd = os.open(os.path.join(deployment_path, SPEC), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise errors.PermanentError(f"the deployment's .mtree cannot be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise errors.PermanentError("the deployment's .mtree is not a regular file")
        data = handle.read(MAX_SPEC_BYTES + 1)
    if len(data) > MAX_SPEC_BYTES:
        raise errors.PermanentError("the deployment's .mtree is larger than 1 MiB")
    return mtree.parse(data.decode("utf-8", "surrogateescape"))


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
            leaf: bool) -> None:
    # A directory with children in the .mtree is created empty: its children are seeded one by one, and
    # nothing else the deployment ships there belongs in persistent data.
    seed = _seed(deployment_path, node) if leaf or node.type != "dir" else None
    try:
        if node.type == "link":
            assert node.link is not None
            os.symlink(node.link, name, dir_fd=dir_fd)
        elif node.type == "dir":
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            if seed is not None:
                src = os.open(seed[1], nofollow.DIR_FLAGS, dir_fd=seed[0])
                dst = os.open(name, nofollow.DIR_FLAGS, dir_fd=dir_fd)
                try:
                    nofollow.copy_tree(src, dst, owner)
                finally:
                    os.close(src)
                    os.close(dst)
        elif seed is not None:
            nofollow.copy_file(seed[0], dir_fd, name)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dir_fd))
    finally:
        if seed is not None:
            os.close(seed[0])
    log.info("Created persistent %s %s%s.", node.type, node.path, " from the deployment's copy" if seed else "")


def _set_owner_and_mode(node: mtree.Node, name: str, dir_fd: int, uid: int | None, gid: int | None,
                        is_root: bool) -> None:
    if node.type == "link":
        if is_root and (uid is not None or gid is not None):
            os.chown(name, -1 if uid is None else uid, -1 if gid is None else gid, dir_fd=dir_fd, follow_symlinks=False)
        return
    flags = nofollow.DIR_FLAGS if node.type == "dir" else os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        if is_root and (uid is not None or gid is not None):
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        if node.mode is not None:
            os.fchmod(fd, node.mode)
    finally:
        os.close(fd)


def apply(app: manifests.Application, deployment_path: str, deployment_owner: tuple[int, int] | None,
          euid: int | None = None) -> list[str]:
    """Create persistent data and link the deployment's leaves into it; return the linked paths."""
    nodes = read_spec(deployment_path) if app.persistent_data == "auto" else None
    if not nodes:
        return []
    allowed = allowed_owners(app, euid)
    # Every refusal the spec itself deserves comes before the first change: a refused spec changes nothing.
    ids = {n.path: (allowed.uid(n, dict(app.user_mapping)), allowed.gid(n, dict(app.group_mapping))) for n in nodes}
    for node in nodes:
        if node.type == "link":
            _check_link(node)
    is_root = allowed.default is not None
    base = root(app.path)
    try:
        os.mkdir(base, 0o755)
        if allowed.default is not None:
            os.chown(base, *allowed.default)
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
        *parents, name = node.path.split("/") if node.path else [".."]
        if not node.path:  # the root: persistent-data itself
            with nofollow.walk(base, [], None) as fd:
                if not node.nochange:
                    _set_owner_and_mode(node, ".", fd, uid, gid, is_root)
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
                _create(node, name, parent, deployment_path, new_owner, node.path in leaves)
                new_uid, new_gid = new_owner or (uid, gid)
                _set_owner_and_mode(node, name, parent, new_uid, new_gid, is_root)
            elif not _kind_matches(node, st):
                raise errors.PermanentError(
                    f"{base}/{node.path} exists but is not a {node.type} as the .mtree (line {node.line}) says; "
                    "tether never replaces persistent data: move it away or fix the .mtree"
                )
            elif not node.nochange:
                _set_owner_and_mode(node, name, parent, uid, gid, is_root)
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
