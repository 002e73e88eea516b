"""Which users and groups a deployment's `.mtree` may give persistent data to (design section 5).

The spec is untrusted: it may name only `spec.user`, `spec.group` and the
targets of `spec.userMapping`/`spec.groupMapping`, by name or by number.
"""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd

from controller import errors
from controller.manifests import model
from controller.tree import mtree, owners


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


def allowed(app: model.Application, euid: int | None = None) -> Owners:
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
