"""One cheap identity of everything a no-op pass reads of an application's tree (design section 9, P4).

A pass that ends Ready with nothing to do has read: the ancestors of the application path (their type,
owner and mode, for path_safety), the path and its `.tether` directories, their listings, `current`, every
file in `.tether/deployments`, the activation and running-hook records, the persistent-data links of the
active deployment, and the application's status file. `take` lstats each of them; while every result is
the same, so is everything the pass read, and the next pass can conclude "still converged" without
reading any of it (controller/daemon/converged.py).

What counts as the same:

- an ancestor: the same device, inode, type, owner, group and mode. Its entries and times may change
  (`/srv` gains a sibling directory, `/tmp` changes all the time): path_safety looks at nothing else, and a
  component renamed or replaced below it is another inode there;
- anything else: device, inode, size, mtime and ctime, as in known_files.py. A directory gains or loses an
  entry, a file is edited in place or replaced, a link is retargeted (a new inode), a chmod or chown moves
  ctime; a process cannot set ctime.

The racy case is known_files.py's: a change within one tick of the filesystem's clock can leave the same
identity. So an identity taken after a pass counts only when every ctime in it is at least
`fsutil.RACY_NS` older than the moment before that pass read the tree (`settled`): any change made
after that moment, even during the pass, has a later ctime. An ancestor that is a symlink makes the path
check follow it: such a fingerprint is never settled, and each pass of its application is a full one.
"""

from __future__ import annotations

import os
import stat

from controller import fsutil
from controller.tree import path_safety, records

Identity = tuple[int, ...] | None  # None: nothing is there


def ancestors(path: str) -> list[str]:
    """The ancestors of `path` as path_safety walks them without a symlink, from "/" down to its parent (a `..`
    on the way is one of them: the directory before it is checked too)."""
    parts = [p for p in os.path.dirname(path).split("/") if p]
    return ["/"] + ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def paths(observed: records.Observed, status_file: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(the ancestors, what the pass read below them) of the tree `observed` and its status file; None when the
    tree is not there."""
    path = observed.path
    if not observed.exists:
        return None
    meta = records.meta_dir(path)
    try:
        listed = sorted(os.listdir(meta + "/deployments"))
    except FileNotFoundError:
        listed = []
    except OSError:
        return None
    below = [path, path + "/current", meta, *(meta + "/" + d for d in path_safety.TETHER_DIRS),
             records.activation_path(path), records.running_hook_path(path),
             *(meta + "/deployments/" + name for name in listed), status_file]
    active = observed.deployments.get(observed.current or "")
    if active is not None:
        below += [os.path.join(path, active.name, leaf) for leaf in active.links]
    return tuple(ancestors(path)), tuple(below)


def take(up: tuple[str, ...], below: tuple[str, ...]) -> tuple[Identity, ...]:
    """The identities of the ancestors `up` and the paths `below` now (see the module's docstring)."""
    found: list[Identity] = []
    lstat, identity = os.lstat, fsutil.identity
    for where in up:
        try:
            st = lstat(where)
        except OSError:
            found.append(None)
        else:
            found.append((st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid))
    for where in below:
        try:
            found.append(identity(lstat(where)))
        except OSError:
            found.append(None)
    return tuple(found)


def settled(up: tuple[str, ...], below: tuple[str, ...], identities: tuple[Identity, ...], before_ns: int) -> bool:
    """Whether the identities `take` gave for `up` and `below` can stand for what a pass that started reading at
    `before_ns` read: every one below the ancestors changed last at least RACY_NS before that, so that a later
    change cannot look the same, and only what sits in a directory of `below` may be missing (a file created
    later changes that directory; one that vanished during the pass would otherwise look the same as before)."""
    limit = before_ns - fsutil.RACY_NS
    for where, found in zip(below, identities[len(up):], strict=True):
        if found is None:
            if os.path.dirname(where) not in below:  # a handful of paths: no set needed
                return False
        elif found[4] >= limit:
            return False
    return all(found is not None and not stat.S_ISLNK(found[2]) for found in identities[: len(up)])
