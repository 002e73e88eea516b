"""Who owns a deployment: `spec.user`/`spec.group` as numeric ids."""

from __future__ import annotations

import grp
import os
import pwd

from controller import errors
from controller.manifests import model

Owner = tuple[int, int] | None


def account(app: model.Application, euid: int | None = None) -> tuple[pwd.struct_passwd, int]:
    """The user that owns `app`'s deployments and runs its hooks (spec.user, else tether's own), and its
    group id (spec.group, else that user's primary group)."""
    euid = os.geteuid() if euid is None else euid
    try:
        user = pwd.getpwnam(app.user) if app.user is not None else pwd.getpwuid(euid)
    except KeyError as exc:
        raise errors.PermanentError(f"user {app.user!r} does not exist on this node; create it or fix spec.user") from exc
    try:
        gid = grp.getgrnam(app.group).gr_gid if app.group is not None else user.pw_gid
    except KeyError as exc:
        raise errors.PermanentError(f"group {app.group!r} does not exist on this node; create it or fix spec.group") from exc
    return user, gid


def resolve(app: model.Application, euid: int | None = None) -> Owner:
    """(uid, gid) to give every extracted file, or None to leave the process's own."""
    euid = os.geteuid() if euid is None else euid
    if app.user is None and app.group is None:
        return None
    user, gid = account(app, euid)
    if euid != 0:
        if user.pw_uid != euid or gid not in [*os.getgroups(), os.getegid()]:
            raise errors.PermanentError(
                f"tether runs as uid {euid}, not root, so it cannot give files to {app.user}:{app.group}; "
                "leave spec.user and spec.group unset or run tether as root"
            )
        return None
    return user.pw_uid, gid
