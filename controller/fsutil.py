"""Small filesystem primitives with crash-safe semantics."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import tempfile
from typing import Any


def fsync_dir(path: str) -> None:
    """Make a directory's entries (renames, new names) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old or the new content, never a mix."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def atomic_write_json(path: str, value: Any, mode: int = 0o644) -> None:
    atomic_write(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), mode)


def read_json(path: str) -> Any:
    """The JSON in `path`, or None when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def sync_filesystem(path: str) -> None:
    """Flush every dirty page of the filesystem holding `path` (syncfs(2), else sync(2)); a symlink is not followed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        syncfs = getattr(_libc, "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    """Remove a directory tree without following symlinks; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif st:
        os.unlink(path)


def makedirs(path: str, mode: int = 0o755) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)


def remove_tree_at(name: str, dir_fd: int) -> None:
    """Remove the directory `name` inside the open directory `dir_fd`, not following symlinks."""
    shutil.rmtree(name, dir_fd=dir_fd)
