"""Seeding persistent data from a deployment's copy without ever leaving half a file.

A seed is written under a temporary name in the directory it belongs to
(`.tether-seed-<16 hex digits>`, created O_EXCL|O_NOFOLLOW, mode 0600 until it
is complete), given its owner and mode, fsynced, and only then put in place:
a file with link(2), a directory with renameat2(RENAME_NOREPLACE). Neither ever
replaces a node that exists, so data the application wrote meanwhile is kept
and the seed is dropped. A pass killed or out of space in the middle leaves at
most a temporary name, which the next pass removes (`remove_leftovers`), and
the persistent node absent, so it is seeded again in full; or, killed between
a file's link(2) and the unlink of its temporary name, both names, of which
the next pass removes the temporary one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable

from controller import errors, fsutil, nofollow

log = logging.getLogger(__name__)

PREFIX = ".tether-seed-"
LEFTOVER = re.compile(re.escape(PREFIX) + "[0-9a-f]{16}")
CHUNK = 1024 * 1024
FULL = (errno.ENOSPC, errno.EDQUOT)
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100

Checkpoint = Callable[[str], None]


def _temp_name() -> str:
    return PREFIX + secrets.token_hex(8)


def _full(exc: OSError, what: str) -> errors.TemporaryError:
    return errors.TemporaryError(
        f"the filesystem of persistent data is full ({exc.strerror}) while seeding {what} from the deployment's copy; "
        "nothing was left in its place: free some space and the next pass seeds it again"
    )


def seed_file(src_dir: int, name: str, dst_dir: int, owner: tuple[int, int] | None, mode: int | None, what: str,
              checkpoint: Checkpoint = lambda step: None) -> bool:
    """Copy `name` from `src_dir` into `dst_dir` whole or not at all; False when `name` appeared meanwhile."""
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_dir)
    temp, created = _temp_name(), False
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode):
            raise errors.PermanentError(f"the deployment's copy of {what} is not a regular file")
        dst = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dir)
        created = True
        try:
            first = True
            while chunk := os.read(src, CHUNK):
                nofollow.write_all(dst, chunk)
                if first:
                    checkpoint("seeding")
                    first = False
            if owner is not None:
                os.fchown(dst, *owner)
            os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o777 if mode is None else mode)
            os.fsync(dst)
        finally:
            os.close(dst)
        try:
            os.link(temp, name, src_dir_fd=dst_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        except FileExistsError:
            log.warning("Persistent %s appeared while tether seeded it; the application's copy is kept, the seed "
                        "dropped.", what)
            return False
        return True
    except OSError as exc:
        if exc.errno in FULL:
            raise _full(exc, what) from exc
        raise
    finally:
        os.close(src)
        if created:
            _unlink_quietly(temp, dst_dir)
            os.fsync(dst_dir)


def seed_dir(src_dir: int, name: str, dst_dir: int, owner: tuple[int, int] | None, mode: int, what: str,
             checkpoint: Checkpoint = lambda step: None) -> bool:
    """Copy the directory `name` into `dst_dir` whole or not at all; False when `name` appeared meanwhile."""
    temp = _temp_name()
    os.mkdir(temp, 0o700, dir_fd=dst_dir)
    done = False
    try:
        src = os.open(name, nofollow.DIR_FLAGS, dir_fd=src_dir)
        try:
            dst = os.open(temp, nofollow.DIR_FLAGS, dir_fd=dst_dir)
            try:
                nofollow.copy_tree(src, dst, owner)
                if owner is not None:
                    os.fchown(dst, *owner)
                os.fchmod(dst, mode)
                os.fsync(dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        checkpoint("seeding")
        done = _rename_noreplace(temp, name, dst_dir)
        if not done:
            log.warning("Persistent %s appeared while tether seeded it; the application's copy is kept, the seed "
                        "dropped.", what)
        return done
    except OSError as exc:
        if exc.errno in FULL:
            raise _full(exc, what) from exc
        raise
    finally:
        if not done:
            fsutil.remove_tree_at(temp, dst_dir)
        os.fsync(dst_dir)


def _rename_noreplace(old: str, new: str, dir_fd: int) -> bool:
    """rename(2) that never replaces `new`: renameat2(RENAME_NOREPLACE), else plain rename(2), which can replace
    only an empty directory (no data lost); False when `new` exists."""
    renameat2 = getattr(fsutil.LIBC, "renameat2", None)
    if renameat2 is not None:
        if renameat2(dir_fd, os.fsencode(old), dir_fd, os.fsencode(new), _RENAME_NOREPLACE) == 0:
            return True
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            return False
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), new)
    try:
        os.rename(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            return False
        raise
    return True


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _named_beside(st: os.stat_result, entries: list[os.DirEntry[str]]) -> bool:
    """Whether the file of `st` has a name among `entries` that is not a temporary one."""
    return any(e.inode() == st.st_ino and not LEFTOVER.fullmatch(e.name) and e.stat(follow_symlinks=False).st_dev
               == st.st_dev for e in entries)


def remove_leftovers(dir_fd: int, where: str) -> None:
    """Remove what an interrupted seed left in a directory: tether's temporary names only, a regular file with
    a single link, or with one other in this directory (a seed killed between its link(2) and its unlink), or a
    real directory; never a symlink or a file linked elsewhere."""
    entries = list(os.scandir(dir_fd))
    for entry in entries:
        if not LEFTOVER.fullmatch(entry.name):
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode) and (st.st_nlink == 1 or (st.st_nlink == 2 and _named_beside(st, entries))):
            _unlink_quietly(entry.name, dir_fd)
        elif stat.S_ISDIR(st.st_mode):
            fsutil.remove_tree_at(entry.name, dir_fd)
        else:
            continue
        log.info("Removed %s/%s, left by an interrupted seed.", where, entry.name)
