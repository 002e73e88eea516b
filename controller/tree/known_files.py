"""Bookkeeping files and directory listings read again only when they changed (design section 9, P4).

A no-op pass of an application reads its deployment records, its activation record and the listings
of its directories; with 1000 applications on a node that was most of a full no-op pass. `Known`
remembers what each file held, and what each directory listed, with the identity the file or directory
had when it was read: device, inode, size, mtime and ctime (one stat, relative to a directory
descriptor). The next read stats it again and returns the remembered value when the identity is the
same; anything else (a record rewritten by `tether deploy`, a file an operator edited in place, a
directory entry added or removed) reads the disk again.

An identity alone proves nothing about a file changed within one tick of the filesystem's clock: two
writes in the same tick can leave the same identity, and an atomic replace can reuse a freed inode
number. So a value is remembered only when the file's ctime is at least `fsutil.RACY_NS` older than the moment
before it was read (as git treats "racily clean" index entries). Any later change, in place or by
rename, gets a ctime after that moment, which no remembered identity has; a process cannot set ctime
(utime sets mtime). Only a step of the system clock backwards by more than the margin could make a
change look old, and the next change after it is seen again.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from controller import fsutil

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
Entry = tuple[str, bool]  # (name, is a directory and not a symlink)
T = TypeVar("T")


class Known:
    """What files and directories held when last read, keyed by a name the caller chooses (its path)."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns
        self._values: dict[str, dict[str, tuple[fsutil.Identity, Any]]] = {}  # where -> name -> (identity, value)
        self._guard = threading.Lock()
        self.reads = 0  # files and directories read from disk so far (for tests and benchmarks)

    def _recall(self, key: tuple[str, str], st: os.stat_result) -> tuple[bool, Any]:
        with self._guard:
            known = self._values.get(key[0], {}).get(key[1])
        if known is not None and known[0] == fsutil.identity(st):
            return True, known[1]
        return False, None

    def _remember(self, key: tuple[str, str], st: os.stat_result, before_ns: int, value: Any) -> None:
        with self._guard:
            self.reads += 1
            if st.st_ctime_ns < before_ns - fsutil.RACY_NS:
                self._values.setdefault(key[0], {})[key[1]] = (fsutil.identity(st), value)
            else:  # changed too recently for its identity to tell a later change apart
                self._values.get(key[0], {}).pop(key[1], None)

    def retain(self, where: str, names: set[str]) -> None:
        """Forget what was read below `where` other than `names` (what is gone from the disk: a pruned
        deployment's record, say), so that a long-running daemon keeps only what is there."""
        with self._guard:
            inner = self._values.get(where)
            if inner is None:
                return
            for name in [name for name in inner if name not in names]:
                del inner[name]
            if not inner:
                del self._values[where]

    def __len__(self) -> int:
        with self._guard:
            return sum(len(inner) for inner in self._values.values())

    def json(self, where: str, name: str, dir_fd: int) -> Any:
        """The JSON in `name` below the directory `dir_fd` (`where` names that directory in the cache), or None
        when it is missing or not a regular file of JSON (as fsutil.read_json: a symlink is not followed)."""
        return self._read(where, name, dir_fd, stat.S_ISREG, fsutil.read_json_stat)

    def listing(self, where: str, name: str, dir_fd: int) -> tuple[Entry, ...] | None:
        """The entries of the directory `name` below `dir_fd`, sorted by name; None when it is missing or not a
        real directory (a symlink to one is not followed)."""
        return self._read(where, name, dir_fd, stat.S_ISDIR, _listing)

    def _read(self, where: str, name: str, dir_fd: int, is_kind: Callable[[int], bool],
              read: Callable[[str, int], tuple[T | None, os.stat_result | None]]) -> T | None:
        """What `read` gives for `name` below `dir_fd` (with the stat of what it read, None: nothing was), or
        what it gave last while the identity is the same; None when `name` is missing or not of the kind
        `is_kind` accepts (a mode of stat: a symlink is not followed)."""
        key = (where, name)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not is_kind(st.st_mode):
            return None
        found, value = self._recall(key, st)
        if found:
            return value  # type: ignore[no-any-return]
        before = self._clock_ns()
        value, read_st = read(name, dir_fd)
        if read_st is not None:
            self._remember(key, read_st, before, value)
        return value


def _listing(name: str, dir_fd: int) -> tuple[tuple[Entry, ...] | None, os.stat_result | None]:
    """The entries of the directory `name` below `dir_fd`, sorted by name, and its stat; (None, None) when it is
    no longer a real directory."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None, None  # replaced meanwhile
        raise
    try:
        read_st = os.fstat(fd)
        with os.scandir(fd) as entries:
            return tuple(sorted((e.name, e.is_dir(follow_symlinks=False)) for e in entries)), read_st
    finally:
        os.close(fd)


KNOWN = Known()
