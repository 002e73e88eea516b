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
from collections.abc import Iterator

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


def copy_file(src_dir: int, dst_dir: int, name: str) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dir)
        try:
            while chunk := os.read(src, 1024 * 1024):
                os.write(dst, chunk)
            os.fchmod(dst, stat.S_IMODE(os.fstat(src).st_mode) & 0o777)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def copy_tree(src_dir: int, dst_dir: int, owner: tuple[int, int] | None) -> None:
    """Copy the contents of one directory into another; symlinks are copied as links, not followed."""
    for entry in os.scandir(src_dir):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(entry.name, stat.S_IMODE(st.st_mode) & 0o777, dir_fd=dst_dir)
            src = os.open(entry.name, DIR_FLAGS, dir_fd=src_dir)
            dst = os.open(entry.name, DIR_FLAGS, dir_fd=dst_dir)
            try:
                copy_tree(src, dst, owner)
            finally:
                os.close(src)
                os.close(dst)
        elif stat.S_ISREG(st.st_mode):
            copy_file(src_dir, dst_dir, entry.name)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(entry.name, dir_fd=src_dir), entry.name, dir_fd=dst_dir)
        else:
            continue
        if owner is not None:
            os.chown(entry.name, *owner, dir_fd=dst_dir, follow_symlinks=False)
