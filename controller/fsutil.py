"""Small filesystem primitives with crash-safe semantics."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from typing import Any

from controller import nofollow


def fsync_dir(path: str) -> None:
    """Make a directory's entries (renames, new names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TEMPORARY_PREFIX = ".tmp-"  # atomic_write's files before their rename: what a writer killed meanwhile leaves


def atomic_write(path: str, data: bytes | Iterable[bytes], mode: int = 0o644, *, durable: bool = True) -> None:
    """Write `data` (bytes, or chunks of it) to `path` so that readers see the old or the new content, never a mix.

    `durable=False` leaves out the fsync of the file and of its directory, for derived data whose writer
    flushes many files with one `sync_filesystem` instead (the rename stays atomic for readers)."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.writelines((data,) if isinstance(data, bytes) else data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def atomic_write_json(path: str, value: Any, mode: int = 0o644, *, durable: bool = True) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode, durable=durable)


MAX_JSON_BYTES = 64 << 20
# A file's identity: what changes with its content, by any writer (tree/known_files.py, manifests/loading.py).
# It stands for the content only when its ctime is RACY_NS older than the moment before the content was read.
RACY_NS = 2_000_000_000  # more than the coarsest timestamp granularity of a Linux filesystem (FAT: 2 s)
Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    """(device, inode, size, mtime, ctime) of `st`."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read_json(path: str, dir_fd: int | None = None) -> Any:
    """The JSON in `path`, or None when the file does not exist or is not a regular file of tether's JSON.

    Bookkeeping may have been planted or damaged: a symlink is not followed, a FIFO or device never blocks
    (O_NONBLOCK, then only a regular file is read), the size is bounded, and garbage (not UTF-8, not JSON,
    nested too deep) reads as None, like a missing file, instead of failing every later pass."""
    return read_json_stat(path, dir_fd)[0]


def read_json_stat(path: str, dir_fd: int | None = None) -> tuple[Any, os.stat_result | None]:
    """`read_json` (`path` relative to `dir_fd` when given), and the stat of what was opened (None: nothing was)."""
    data, st = read_bytes_stat(path, dir_fd)
    try:
        return (None if data is None else json.loads(data.decode("utf-8"))), st
    except (ValueError, RecursionError):
        return None, st


def read_bytes_stat(path: str, dir_fd: int | None = None) -> tuple[bytes | None, os.stat_result | None]:
    """The bytes of `path` (relative to `dir_fd` when given), as `read_json` reads them: None when it is missing,
    a symlink, not a regular file or larger than MAX_JSON_BYTES; and the stat of what was opened (None:
    nothing was), for the caller to check who may write it, say."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR):
            return None, None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_JSON_BYTES:
            return None, st
        return read_at_most(fd, MAX_JSON_BYTES, expected=st.st_size), st
    finally:
        os.close(fd)


KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind(mode: int) -> str:
    """What a file of `mode` is, for a message saying it is not a regular file: "a FIFO", "a directory"..."""
    return next((text for test, text in KINDS if test(mode)), "not a regular file")


def read_at_most(fd: int, limit: int, expected: int = 1 << 16) -> bytes | None:
    """What is left to read from `fd`, or None when that is more than `limit` bytes (a file that grew, say).
    Reads ask for `expected` bytes (the file's size, say) and more only as it turns out there is more: a read of
    `limit` bytes would allocate that much first."""
    data = b""
    size = min(limit, max(expected, 0)) + 1
    while len(data) <= limit and (chunk := os.read(fd, min(size, limit + 1 - len(data)))):
        data += chunk
        size = max(size, len(data))  # doubling: a file that grew is read in a few calls
    return data if len(data) <= limit else None


# The C library, from the symbols the interpreter already has loaded (dlopen(NULL)): ctypes.util.find_library
# runs ldconfig -p, some 0.2 s of every start.
LIBC = ctypes.CDLL(None, use_errno=True)
WRITE_BACK_ERRORS = (errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # syncfs: data did not reach the disk


def sync_filesystem(path: str) -> None:
    """Flush every dirty page of the filesystem holding `path` (syncfs(2), else sync(2)); a symlink is not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        syncfs = getattr(LIBC, "syncfs", None)
        if syncfs is not None and syncfs(fd) == 0:
            return
        code = ctypes.get_errno() if syncfs is not None else 0
        if code in WRITE_BACK_ERRORS:
            raise OSError(code, f"writing the files below {path} to disk failed: {os.strerror(code)}; check the "
                                "disk and the kernel log")
        os.sync()  # no syncfs, or one this filesystem refuses: flush everything
    finally:
        os.close(fd)


class Flusher:
    """syncfs(2) of the filesystem holding `path` on a background thread when asked, one at a time.

    A deployment's files are made durable by one sync_filesystem before it is
    recorded complete. Kicked while the files are still being written (and again
    while the tree is checked), the kernel writes most of them out meanwhile, and
    that last sync has little left to wait for. A kick while a flush runs does
    nothing. A write-back error is reported once per open file, so the one a
    background flush meets would be lost to the last sync: leaving the `with`
    block raises it (unless an exception is leaving it already).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._error: OSError | None = None

    def __enter__(self) -> Flusher:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if kind is None and self._error is not None:
            raise self._error

    def kick(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._flush, name="tether-flush", daemon=True)
        self._thread.start()

    def _flush(self) -> None:
        try:
            sync_filesystem(self.path)
        except OSError as exc:
            self._error = self._error or exc


def remove_tree(path: str) -> None:
    """Remove a directory tree of any depth without following symlinks; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    parent, name = os.path.split(os.path.normpath(path))
    fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree_at(name, fd)
    finally:
        os.close(fd)


def makedirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def remove_tree_at(name: str, dir_fd: int) -> None:
    """Remove `name` inside the open directory `dir_fd`, a tree of any depth, never following a symlink.

    Iterative (nofollow.walk_tree): a tree thousands of levels deep, made by a hook or left by a killed pass,
    is removed like any other. A symlink is removed itself, never what it points to.
    """
    try:
        fd = os.open(name, nofollow.DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=dir_fd)  # a symlink or a file: remove it, not its target
        return
    try:
        nofollow.walk_tree(fd, _empty, leave=_rmdir, refused=_unlink)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _empty(fd: int, parts: list[str]) -> list[str]:
    """Unlink every non-directory in the directory `fd`; return its subdirectories."""
    with os.scandir(fd) as items:
        entries = [(item.name, item.is_dir(follow_symlinks=False)) for item in items]
    subdirs = []
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:  # replaced by a directory meanwhile
            subdirs.append(name)
    return subdirs


def _rmdir(parent: int, name: str) -> None:
    os.rmdir(name, dir_fd=parent)


def _unlink(parent: int, parts: list[str], name: str, error: OSError) -> None:
    if error.errno not in (errno.ELOOP, errno.ENOTDIR):
        raise error
    os.unlink(name, dir_fd=parent)  # a directory swapped for a symlink: remove the link, not its target
