"""Walking and copying directory trees through O_NOFOLLOW descriptors.

Trees that an application's users can write (persistent data, deployments)
are handled only through directory descriptors opened with O_NOFOLLOW, so a
symlink planted in them is refused or copied as a link, never followed, even
when tether runs as root.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from controller import errors

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def walk(base: str, parts: list[str], create: tuple[int, int] | None, make: bool = True) -> Iterator[int]:
    """A descriptor of base/parts..., each step O_NOFOLLOW; missing directories are created."""
    fd = os.open(base, DIR_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
                if create is not None:
                    os.fchown(child, *create)
            except OSError as exc:
                raise errors.PermanentError(
                    f"{os.path.join(base, *parts)}: {part!r} is a symlink or not a directory; tether does not follow "
                    "links inside persistent data or deployments"
                ) from exc
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def exists(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data`: a nearly full disk takes part of a write and says so only by its return value (the
    next write then fails with ENOSPC)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def copy_file(src_dir: int, dst_dir: int, name: str) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dir)
        try:
            while chunk := os.read(src, 1024 * 1024):
                write_all(dst, chunk)
            os.fchmod(dst, stat.S_IMODE(os.fstat(src).st_mode) & 0o777)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def copy_tree(src_dir: int, dst_dir: int, owner: tuple[int, int] | None) -> None:
    """Copy the contents of one directory into another; symlinks are copied as links, not followed.

    Iterative at any depth (see `walk_tree`): the destination is followed one directory at a time beside
    the source, and checked like it on the way back up.
    """
    dst = [os.open(".", DIR_FLAGS, dir_fd=dst_dir)]  # [0]: the destination directory matching the source's
    above: list[tuple[int, int]] = []  # identities of the destination directories above it

    def visit(src: int, parts: list[str]) -> list[str]:
        if parts:
            child = os.open(parts[-1], DIR_FLAGS, dir_fd=dst[0])
            above.append(_identity(dst[0]))
            os.close(dst[0])
            dst[0] = child
        subdirs = []
        with os.scandir(src) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.mkdir(entry.name, stat.S_IMODE(st.st_mode) & 0o777, dir_fd=dst[0])
                    subdirs.append(entry.name)
                elif stat.S_ISREG(st.st_mode):
                    copy_file(src, dst[0], entry.name)
                elif stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(entry.name, dir_fd=src), entry.name, dir_fd=dst[0])
                else:
                    continue
                if owner is not None:
                    os.chown(entry.name, *owner, dir_fd=dst[0], follow_symlinks=False)
        return subdirs

    def leave(src_parent: int, name: str) -> None:
        fd, dst[0] = dst[0], -1
        dst[0] = up(fd, above.pop())

    try:
        walk_tree(src_dir, visit, leave)
    finally:
        if dst[0] >= 0:
            os.close(dst[0])


Visit = Callable[[int, list[str]], Iterable[str]]


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def up(fd: int, expected: tuple[int, int]) -> int:
    """A descriptor of the parent of the directory `fd` (closed), which must be the directory `expected`."""
    try:
        parent = os.open("..", DIR_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)
    if _identity(parent) != expected:
        os.close(parent)
        raise errors.PermanentError(
            "a directory was moved while tether walked the tree holding it; nothing outside the tree was touched, "
            "and the next pass walks it again"
        )
    return parent


def walk_tree(root_fd: int, visit: Visit, leave: Callable[[int, str], None] = lambda fd, name: None,
              refused: Callable[[int, list[str], str, OSError], None] | None = None) -> None:
    """Walk the tree below the open directory `root_fd` depth first, at any depth, never following a symlink.

    `visit(fd, parts)` is called once for every directory, the root first (`parts` is its path below the root
    as components, [] for the root; neither `fd` nor `parts` may be kept after the call) and returns the
    names of the subdirectories to enter. Each is opened O_NOFOLLOW relative to its parent: one gone
    meanwhile is skipped, one that is no longer a directory (a symlink swapped in) goes to
    `refused(parent_fd, parts, name, error)` (default: raise). `leave(parent_fd, name)` is called once a
    subdirectory and everything below it is done, e.g. to remove it.

    Iterative, with one directory descriptor open at a time (a 5000-deep tree needs neither recursion nor
    5000 descriptors): the way back up re-opens '..' and checks it is the very directory left (device and
    inode), so a directory moved elsewhere meanwhile stops the walk instead of leading it out of the tree.
    """
    fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    parts: list[str] = []
    try:
        stack = [(_identity(fd), list(visit(fd, parts))[::-1])]
        while stack:
            pending = stack[-1][1]
            if pending:
                name = pending.pop()
                try:
                    child = os.open(name, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if refused is None:
                        raise
                    refused(fd, parts, name, exc)
                    continue
                os.close(fd)
                fd = child
                parts.append(name)
                stack.append((_identity(fd), list(visit(fd, parts))[::-1]))
                continue
            stack.pop()
            if stack:
                old, fd = fd, -1
                fd = up(old, stack[-1][0])
                leave(fd, parts.pop())
    finally:
        if fd >= 0:
            os.close(fd)
