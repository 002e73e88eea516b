"""Who may write an application's `path`: root (or tether's own user), and nobody else.

tether runs as root and writes below `path`: records, hook logs, digests and
staging in `<path>/.tether`, deployment directories, `current`. Whoever can
change `path`, one of its ancestors or `.tether` could swap a directory for a
symlink while a pass runs and make root write, move or delete files anywhere.
So before anything below `path` changes, `verify` checks, without following a
link it has not checked:

- every ancestor of `path`, on the lexical path and through every symlink on
  the way, is a directory owned by root or tether's user and not writable by
  group or others, except that a root-owned sticky directory (/tmp) may be an
  ancestor (whose entries only their owner can rename); a symlink on the way
  must be owned by root or tether's user, and so must its target's directories;
- `path` itself, when it exists, is a real directory (not a symlink), owned by
  root or tether's user, not writable by group or others;
- `<path>/.tether` and its subdirectories are likewise real directories.

`prepare` also creates what is missing (mode 0755, whatever the umask), then
verifies again. Deployment directories and persistent data stay the
application user's: tether works inside them through O_NOFOLLOW descriptors.
"""

from __future__ import annotations

import os
import pwd
import stat
from typing import NoReturn

from controller import errors

TETHER_DIRS = ("deployments", "staging", "logs", "digests")
MAX_LINKS = 40


class UnsafePath(errors.PermanentError):
    """Someone other than root (or tether's user) can change where tether would write."""


def trusted_uids() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def verify(path: str) -> None:
    """Refuse (UnsafePath) to manage `path` unless only root or tether's user can change it; create nothing."""
    _check(path, create=False)


def prepare(path: str) -> None:
    """Verify `path`, create it, `.tether` and its subdirectories where missing, and verify them.

    Everything that exists is verified first, so a refusal leaves the tree as it was."""
    _check(path, create=False)
    _check(path, create=True)


def _check(path: str, create: bool) -> None:
    uids = trusted_uids()
    resolved, missing = _walk(path, os.path.dirname(path), uids)
    if missing and not create:
        return  # tether creates the rest itself, in a directory only root can write
    for part in missing:
        resolved = os.path.join(resolved, part)
        _make(path, resolved, uids, ancestor=True)
    meta = os.path.join(path, ".tether")
    for directory, role in ((path, "the application path"), (meta, "tether's bookkeeping directory"),
                            *((os.path.join(meta, d), "tether's bookkeeping directory") for d in TETHER_DIRS)):
        st = _lstat(directory)
        if st is None:
            if not create:
                continue
            st = _make(path, directory, uids, ancestor=False)
        _check_entry(path, directory, st, uids, ancestor=False, role=role)


def _make(path: str, directory: str, uids: frozenset[int], ancestor: bool) -> os.stat_result:
    """Create one directory 0755 (someone may have made it meanwhile in a sticky parent: check what is there)."""
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        pass
    else:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o755)  # whatever the umask
        finally:
            os.close(fd)
    st = _lstat(directory)
    if st is None:
        raise UnsafePath(f"{directory} disappeared while tether created it; the next pass tries again")
    _check_entry(path, directory, st, uids, ancestor=ancestor, role="a directory tether created")
    return st


def _walk(path: str, parent: str, uids: frozenset[int]) -> tuple[str, list[str]]:
    """Check every directory and link from / to `parent`; return the deepest existing directory that the way
    resolves to, and the names below it that do not exist yet."""
    resolved = "/"
    _check_entry(path, "/", os.lstat("/"), uids, ancestor=True)
    pending = [p for p in parent.split("/") if p]
    links = 0
    while pending:
        part = pending.pop(0)
        if part in (".", ".."):
            resolved = resolved if part == "." else os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, part)
        st = _lstat(candidate)
        if st is None:
            if "." in pending or ".." in pending:
                _unsafe(path, f"a symlink on the way leads through {candidate}, which does not exist; create it")
            return resolved, [part, *pending]
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                _unsafe(path, f"the way to it passes more than {MAX_LINKS} symlinks")
            _check_entry(path, candidate, st, uids, ancestor=True)
            target = os.readlink(candidate)
            resolved = "/" if target.startswith("/") else resolved
            pending = [p for p in target.split("/") if p] + pending
            continue
        _check_entry(path, candidate, st, uids, ancestor=True)
        resolved = candidate
    return resolved, []


def _check_entry(path: str, where: str, st: os.stat_result, uids: frozenset[int], ancestor: bool,
                 role: str = "an ancestor of the application path") -> None:
    kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "a file"
    if stat.S_ISLNK(st.st_mode) and not ancestor:
        advice = ("set spec.path to the directory it points to" if where == path else
                  "remove the symlink (and move what it points to into its place if that is tether's)")
        _unsafe(path, f"{where} ({role}) is a symlink, which tether does not follow there; {advice}")
    if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
        _unsafe(path, f"{where} ({role}) is {kind}, not a directory; move it away")
    mode = stat.S_IMODE(st.st_mode)
    sticky_root = ancestor and st.st_uid == 0 and mode & stat.S_ISVTX
    if st.st_uid in uids and (not mode & 0o022 or stat.S_ISLNK(st.st_mode) or sticky_root):
        return
    owner = _user(st.st_uid)
    why = "is not root's" if st.st_uid not in uids else "is writable by its group or by others"
    _unsafe(path, f"{where} ({role}) is {kind} owned by {owner} with mode {mode:04o}: it {why}, so someone other "
                  f"than root could make tether write elsewhere; make it root's and writable by root only "
                  f"(chown root:root {where} && chmod go-w {where}), or choose another path")


def _unsafe(path: str, problem: str) -> NoReturn:
    raise UnsafePath(f"tether refuses to manage {path}: {problem}. Only root may be able to change an "
                     "application's path, its ancestors and its .tether directory")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
